"""Config: defaults round-trip through TOML; unknown keys, wrong types and bad values name the key."""

from __future__ import annotations

import tomllib

import pytest

from mmfv import config as C
from mmfv.cli import main


def test_default_round_trips_through_toml():
    cfg = C.Config()
    assert C.from_dict(tomllib.loads(cfg.to_toml())) == cfg


@pytest.mark.parametrize(
    "text, key",
    [
        ("[cma]\nn_means = 3", "cma.n_means"),
        ("[cma]\nn_mean = 'x'", "cma.n_mean"),
        ("[cma]\nn_mean = true", "cma.n_mean"),
        ("[nope]\na = 1", "[nope]"),
        ("[icl]\nshots = [0, 'a']", "icl.shots[1]"),
        ("[data]\nrelations = ['above', 'up']", "data.relations"),
        ("[model]\nname = ''", "model.name"),
        ("[cma]\nengine = 'turbo'", "cma.engine"),
        ("[finetune]\nheadline_size = 7", "finetune.headline_size"),
        ("[eval]\nn = 0", "eval.n"),
        ("[model]\ndtype = 'float8'", "model.dtype"),
        ("[model]\ndevice = 'cuda'\ndevice_map = 'auto'", "model.device_map"),
        ("[cma]\nhead_set = 'mlp'", "cma.head_set"),
    ],
)
def test_bad_configs_name_the_key(text, key, tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(C.ConfigError) as e:
        C.load(p)
    assert key in str(e.value) and "\n" not in str(e.value)


def test_ints_are_accepted_for_floats_and_hash_ignores_out():
    cfg = C.from_dict({"finetune": {"lr": 1}, "run": {"out": "a"}})
    assert cfg.finetune.lr == 1.0 and isinstance(cfg.finetune.lr, float)
    assert cfg.hash() == C.from_dict({"finetune": {"lr": 1}, "run": {"out": "b"}}).hash()
    assert cfg.hash() != C.Config().hash()


def test_cli_config_show_and_bad_file(tmp_path, capsys):
    assert main(["config", "show"]) == 0
    assert C.from_dict(tomllib.loads(capsys.readouterr().out)) == C.Config()
    p = tmp_path / "bad.toml"
    p.write_text("[run]\nbatch_size = 'big'")
    assert main(["run", str(p)]) == 2
    err = capsys.readouterr().err
    assert "run.batch_size" in err and err.count("\n") == 1
