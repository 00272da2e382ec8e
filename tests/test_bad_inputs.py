"""Bad inputs, tried one by one: each is caught before any work with a one-line error naming the
key or the file (exit code 2 on the command line). Checkpoint payloads, two writers and
byte-identical reruns: tests/test_reliability.py.

The table :data:`CASES` holds every case: how it is tried (a config file through ``mmfv config
check``, a command line, or a Python call), what is wrong, and a piece of the expected message."""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import mmfv
import mmfv.cma
import mmfv.data.gqa
import mmfv.data.gqa_fu
import mmfv.data.tasks
import mmfv.data.vsr
import mmfv.evaluate
import mmfv.io
import mmfv.models
import mmfv.prompts
import mmfv.vectors
from mmfv import config as C
from mmfv import runner
from mmfv.cli import main
from mmfv.models.tiny import train as T

SMALL: dict[str, dict[str, Any]] = {
    "data": {"relations": ["left", "above"], "eval_scenes": 40, "train_scenes": 40, "val_scenes": 30, "test_scenes": 40},
    "icl": {"shots": [0, 1], "n": 4},
    "cma": {"n_mean": 4, "n_cma": 2, "shots": 1, "top_k": 2, "batch_size": 2},
    "eval": {"n": 4, "head_counts": [1, 2]},
    "finetune": {"sizes": [8], "headline_size": 8, "epochs": 1, "shots": [1], "n": 4, "batch_size": 8},
    "compose": {"grid": [1.0], "shots": [1], "n": 4},
    "run": {"batch_size": 16, "threads": 1},
}
"""A tiny valid config for the random tiny model (2 layers x 4 heads): every case changes one thing."""


def toml(d: dict[str, dict[str, Any]]) -> str:
    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float) and not math.isfinite(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {val(x)}" for k, x in v.items()) + "}"
        return json.dumps(v) if isinstance(v, str) else repr(v)

    return "\n".join(f"[{s}]\n" + "".join(f"{k} = {val(v)}\n" for k, v in kv.items()) for s, kv in d.items())


def merged(model: Path, change: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    d = {"model": {"name": str(model)}, **{s: dict(kv) for s, kv in SMALL.items()}}
    for s, kv in change.items():
        d[s] = {**d.get(s, {}), **kv}
    return d


# --- shared fixtures: the model, a second model, a small finished run ---------------------------------
@pytest.fixture(scope="module")
def lmm(tiny_model_dir):
    from mmfv.models import load_model

    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory) -> Path:
    """Same architecture as ``tiny_model_dir``, other weights: another model all the same."""
    from mmfv.testing import random_tiny

    d = tmp_path_factory.mktemp("other-tiny")
    m = random_tiny(seed=7)
    m.module.save_pretrained(d)
    m.tok.save(d)
    (d / "card.json").write_text(json.dumps({"scene_config": m.card["scene_config"]}))
    return d


@pytest.fixture(scope="module")
def small_run(tiny_model_dir, tmp_path_factory) -> Path:
    """means, cma, vectors and icl of :data:`SMALL`, finished."""
    out = tmp_path_factory.mktemp("small-run")
    cfg = C.from_dict(merged(tiny_model_dir, {}))
    runner.run(cfg, out, until="vectors", quiet=True)
    runner.run(cfg, out, only="icl", quiet=True)
    return out


@pytest.fixture(scope="module")
def items():
    from mmfv.data import synthetic
    from mmfv.testing.tiny import SCENE

    return synthetic.items("test", 40, ("left", "right", "above", "below"), seed=0, config=SCENE)


class Env:
    """What a case may use: the model folder, the loaded model, items, a finished run, a scratch folder."""

    def __init__(self, model: Path, other: Path, lmm: Any, items: dict, run: Path | None, tmp: Path) -> None:
        self.model, self.other, self.lmm, self.items, self.tmp = model, other, lmm, items, tmp
        self._run = run

    @property
    def run(self) -> Path:
        """A private copy of the finished small run (cases may damage it)."""
        dst = self.tmp / "run"
        if not dst.exists():
            shutil.copytree(self._run, dst)
        return dst

    def model_copy(self, damage: Callable[[Path], None]) -> Path:
        dst = self.tmp / "model"
        shutil.copytree(self.model, dst)
        damage(dst)
        return dst

    def prompts(self, kind: str = "zero-shot", k: int = 0, n: int = 4) -> list:
        from mmfv import prompts as P

        return P.build(kind, self.items["left"], self.items, k, n, 0)

    def vector(self, scale: float = 1.0) -> Any:
        from mmfv.vectors import FunctionVector

        v = torch.randn(self.lmm.hidden_size, generator=torch.Generator().manual_seed(0)) * scale
        return FunctionVector(v, "left", self.lmm.model_id, self.lmm.config_hash(), self.lmm.n_layers, self.lmm.hidden_size)


# --- the cases ---------------------------------------------------------------------------------------
def cfg(change: dict | str) -> tuple:
    """A config file checked by `mmfv config check` (the model loaded, so layers and heads are checked too)."""
    return ("config", change)


def cli(*argv: str, prep: Callable[[Env], dict] | None = None, nothing_ran: bool = False) -> tuple:
    """A command line; ``{model}``, ``{other}``, ``{out}``, ``{run}`` and keys ``prep`` returns are filled in."""
    return ("cli", (argv, prep, nothing_ran))


def api(fn: Callable[[Env], Any]) -> tuple:
    """A Python call that must raise."""
    return ("api", fn)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _truncate(path: Path) -> None:
    b = path.read_bytes()
    path.write_bytes(b[: len(b) // 2])


def _damaged_vector(e: Env, meta: Any, scale: float = 1.0) -> Path:
    from mmfv.io import write_safetensors

    fv = e.vector()
    return write_safetensors(e.tmp / "v.safetensors", {"vector": fv.vector * scale}, {"mmfv": json.dumps(meta)})


def _png(e: Env, data: Callable[[bytes], bytes]) -> Path:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "white").save(buf, format="PNG")
    return _write(e.tmp / "img.png", data(buf.getvalue()))


def _finetune(e: Env, ck: Path | None = None, **settings: Any) -> Any:
    from mmfv.finetune import FinetuneSettings, finetune

    s = FinetuneSettings(**{"epochs": 1, "batch_size": 8, **settings})
    return finetune(e.lmm, e.vector().vector, 0, e.prompts(n=8), e.prompts(n=4), s, str(ck) if ck else None)


def _other_checkpoint(e: Env) -> Path:
    from mmfv.execution import Checkpoint

    path = e.tmp / "ck.safetensors"
    Checkpoint(path, {"other": "work"}).save({"x": torch.zeros(2)})
    return path


def _offline_hub(e: Env) -> Any:
    """A hub id that is not cached while the hub cannot be reached: refused at once, not after retries."""
    from huggingface_hub import constants

    from mmfv.models import load_model

    saved, env = (constants.ENDPOINT, constants.HF_HUB_OFFLINE), dict(os.environ)
    for k in [k for k in os.environ if k.upper() in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")]:
        del os.environ[k]
    constants.ENDPOINT, constants.HF_HUB_OFFLINE = "http://127.0.0.1:9", False  # the discard port: refused at once
    try:
        return load_model("nosuch-owner/nosuch-model")
    finally:
        constants.ENDPOINT, constants.HF_HUB_OFFLINE = saved
        os.environ.update(env)


M, O, OUT = "{model}", "{other}", "{out}"
CASES: dict[str, tuple[tuple, str]] = {
    # 3. silent wrong results, config side
    "icl.shots=[-1]": (cfg({"icl": {"shots": [-1]}}), "icl.shots[0]"),
    "cma.shots=0": (cfg({"cma": {"shots": 0}}), "cma.shots"),
    # 4. config checked too late
    "data.relations=[]": (cfg({"data": {"relations": []}}), "data.relations"),
    "finetune.layers=[99] (search_layers)": (cfg({"finetune": {"layers": [99], "search_layers": True}}), "finetune.layers"),
    "cma.top_k=1000": (cfg({"cma": {"top_k": 1000}}), "cma.top_k"),
    "eval.head_counts=[0,100]": (cfg({"eval": {"head_counts": [0, 100]}}), "eval.head_counts[0]"),
    "eval.head_counts=[1,100]": (cfg({"eval": {"head_counts": [1, 100]}}), "eval.head_counts"),
    "compose.grid=[]": (cfg({"compose": {"grid": []}}), "compose.grid"),
    "run.threads=-2": (cfg({"run": {"threads": -2}}), "run.threads"),
    "finetune.lr=-1": (cfg({"finetune": {"lr": -1}}), "finetune.lr"),
    "icl.n=10^20": (cfg({"icl": {"n": 10**20}}), "icl.n"),
    "finetune headline 20 not in sizes [10]": (cfg({"finetune": {"sizes": [10], "headline_size": 20}}), "finetune.headline_size"),
    # added: bounds, empties, non-finite numbers, types, cross-section checks
    "finetune.lr=inf": (cfg({"finetune": {"lr": math.inf}}), "finetune.lr"),
    "compose.grid=[nan]": (cfg({"compose": {"grid": [math.nan]}}), "compose.grid[0]"),
    "data.eval_scenes=10^9": (cfg({"data": {"eval_scenes": 10**9}}), "data.eval_scenes"),
    "cma.n_mean=10^8": (cfg({"cma": {"n_mean": 10**8}}), "cma.n_mean"),
    "cma.shots=5000": (cfg({"cma": {"shots": 5000}}), "cma.shots"),
    "finetune.epochs=10^9": (cfg({"finetune": {"epochs": 10**9}}), "finetune.epochs"),
    "data.seed=2^70": (cfg({"data": {"seed": 2**70}}), "data.seed"),
    "run.batch_size=0": (cfg({"run": {"batch_size": 0}}), "run.batch_size"),
    "run.threads=10^6": (cfg({"run": {"threads": 10**6}}), "run.threads"),
    "icl.shots=[]": (cfg({"icl": {"shots": []}}), "icl.shots"),
    "finetune.shots=[]": (cfg({"finetune": {"shots": []}}), "finetune.shots"),
    "compose.shots=[]": (cfg({"compose": {"shots": []}}), "compose.shots"),
    "eval.head_counts=[]": (cfg({"eval": {"head_counts": []}}), "eval.head_counts"),
    "cma.head_set=cross on a self-attention model": (cfg({"cma": {"head_set": "cross"}}), "cma.head_set"),
    "run.use unknown stage": (cfg({"run": {"use": {"nope": "x"}}}), "run.use"),
    "run.use folder without results": (cfg({"run": {"use": {"cma": "/nonexistent/cma"}}}), "run.use"),
    "unknown key": (cfg({"cma": {"nope": 1}}), "cma.nope"),
    "unknown section": (cfg({"nope": {"a": 1}}), "[nope]"),
    "string for a count": (cfg({"icl": {"n": "400"}}), "icl.n"),
    "int for a bool": (cfg({"finetune": {"search_layers": 1}}), "finetune.search_layers"),
    "empty model name": (cfg({"model": {"name": ""}}), "model.name"),
    "device and device_map": (cfg({"model": {"device": "cpu", "device_map": "auto"}}), "model.device_map"),
    "unknown relation": (cfg({"data": {"relations": ["up"]}}), "data.relations"),
    "gqa without files": (cfg({"data": {"dataset": "gqa", "relations": ["left"]}}), "data.files"),
    "fu2025 with 8 shots": (cfg({"run": {"protocol": "fu2025"}, "icl": {"shots": [8]}}), "icl.shots"),
    "not TOML": (cfg("[icl\nn = 4"), "not valid TOML"),
    "config file missing": (cli("config", "check", "/nonexistent/cfg.toml"), "does not exist"),
    # the same checks on the command line: refused before any stage runs
    "finetune --sizes 10 --headline-size 20": (cli("finetune", "--model", M, "--sizes", "10", "--headline-size", "20", nothing_ran=True),
                                               "finetune.headline_size"),
    "cma --top-k 1000": (cli("cma", "--model", M, "--top-k", "1000", nothing_ran=True), "cma.top_k"),
    "run: finetune.layers=[99]": (cli("run", "--model", M, "--set", "finetune.search_layers=true", "--set", "finetune.layers=[99]",
                                      nothing_ran=True), "finetune.layers"),
    "eval --head-counts 1,100": (cli("eval", "--model", M, "--head-counts", "1,100", nothing_ran=True), "eval.head_counts"),
    "--set without a dot": (cli("run", "--model", M, "--set", "cma=1"), "expected SECTION.KEY=VALUE"),
    "train-tiny --minutes -1": (cli("train-tiny", "--out", OUT, "--minutes", "-1"), "minutes must be positive"),
    "train-tiny --set lr=abc": (cli("train-tiny", "--out", OUT, "--set", "lr=abc"), "--set lr=abc"),
    "train-tiny --set steps=-5": (cli("train-tiny", "--out", OUT, "--set", "steps=-5"), "steps must be positive"),
    # 5. tracebacks and unnamed files
    "--model is a file": (cli("icl", "--model", "{file}", prep=lambda e: {"file": str(_write(e.tmp / "weights.bin", b"x"))}), "is a file"),
    "--model not a hub id": (cli("icl", "--model", "bad name!!"), "not 'tiny'"),
    "--model not cached, offline": (cli("icl", "--model", "nosuch-owner/nosuch-model"), "nosuch-owner/nosuch-model"),
    "truncated model.safetensors": (cli("icl", "--model", "{m}", prep=lambda e: {"m": str(e.model_copy(lambda d: _truncate(d / "model.safetensors")))}),
                                    "model.safetensors"),
    "0-byte model.safetensors": (cli("icl", "--model", "{m}", prep=lambda e: {"m": str(e.model_copy(lambda d: _write(d / "model.safetensors", b"")))}),
                                 "model.safetensors"),
    "damaged model config.json": (cli("icl", "--model", "{m}", prep=lambda e: {"m": str(e.model_copy(lambda d: _write(d / "config.json", b"{bad")))}),
                                  "config.json"),
    "binary vocab.json": (cli("icl", "--model", "{m}", prep=lambda e: {"m": str(e.model_copy(lambda d: _write(d / "vocab.json", b"\xff\xfe\x00")))}),
                          "vocab.json"),
    "vocab.json without its keys": (cli("icl", "--model", "{m}", prep=lambda e: {"m": str(e.model_copy(lambda d: _write(d / "vocab.json", b"[]")))}),
                                    "vocab.json"),
    "damaged card.json": (cli("icl", "--model", "{m}", prep=lambda e: {"m": str(e.model_copy(lambda d: _write(d / "card.json", b"[1,")))}),
                          "card.json"),
    "missing vocab.json": (cli("icl", "--model", "{m}", prep=lambda e: {"m": str(e.model_copy(lambda d: (d / "vocab.json").unlink()))}),
                           "vocab.json"),
    "vectors from another model's CMA": (cli("vectors", "--model", O, "--use", "cma={run}/cma"), "another model"),
    "cma from another model's means": (cli("cma", "--model", O, "--use", "means={run}/means"), "another model"),
    "damaged CMA file": (cli("vectors", "--model", M, "--use", "cma={run}/cma",
                             prep=lambda e: {"x": _truncate(e.run / "cma" / "left.safetensors")}), "left.safetensors"),
    "damaged means file": (cli("cma", "--model", M, "--use", "means={run}/means",
                               prep=lambda e: {"x": _write(e.run / "means" / "left.safetensors", b"\x00" * 64)}), "left.safetensors"),
    "damaged results.json": (cli("eval", "--model", M, "--out", "{run}", prep=lambda e: {"x": _write(e.run / "icl" / "results.json", b"{")}),
                             "results.json"),
    "damaged run.json": (cli("icl", "--model", M, "--out", "{run}", prep=lambda e: {"x": _write(e.run / "run.json", b"\x00garbage")}),
                         "run.json"),
    # 3. silent wrong results, API side
    "accuracy(batch_size=-1)": (api(lambda e: mmfv.evaluate.accuracy(e.lmm, e.prompts(), batch_size=-1)), "batch_size"),
    "accuracy(batch_size=0)": (api(lambda e: mmfv.evaluate.accuracy(e.lmm, e.prompts(), batch_size=0)), "batch_size"),
    "FunctionVector from a list": (api(lambda e: mmfv.vectors.FunctionVector([0.0] * 32, "left", "m", "h", 2, 32)), "tensor of shape"),
    "FunctionVector with NaN": (api(lambda e: mmfv.vectors.FunctionVector(torch.full((32,), math.nan), "left", "m", "h", 2, 32)), "NaN"),
    "FunctionVector with inf": (api(lambda e: mmfv.vectors.FunctionVector(torch.full((32,), math.inf), "left", "m", "h", 2, 32)), "infinite"),
    "FunctionVector * nan": (api(lambda e: e.vector() * math.nan), "NaN"),
    "FunctionVector + list": (api(lambda e: e.vector() + [1.0] * 32), "unsupported operand"),
    "vector x1e30 injected": (api(lambda e: mmfv.evaluate.accuracy(e.lmm, e.prompts(), e.vector(1e30), 0)), "NaN or infinite"),
    "vector at layer 99": (api(lambda e: mmfv.evaluate.accuracy(e.lmm, e.prompts(), e.vector(), 99)), "layer 99"),
    "vector of another size": (api(lambda e: mmfv.evaluate.accuracy(e.lmm, e.prompts(), torch.zeros(7), 0)), "shape"),
    "finetune lr=-1": (api(lambda e: _finetune(e, lr=-1.0)), "learning rate"),
    "finetune epochs=0": (api(lambda e: _finetune(e, epochs=0)), "epochs"),
    "0-byte finetune checkpoint": (api(lambda e: _finetune(e, _write(e.tmp / "ck.safetensors", b""))), "ck.safetensors"),
    "truncated finetune checkpoint": (api(lambda e: (_finetune(e, e.tmp / "ck.safetensors"), _truncate(e.tmp / "ck.safetensors"),
                                                     _finetune(e, e.tmp / "ck.safetensors"))), "ck.safetensors"),
    "checkpoint of other work": (api(lambda e: _finetune(e, _other_checkpoint(e))), "belongs to other work"),
    "train-tiny minutes=-1": (api(lambda e: T.train(T.TrainConfig(), e.tmp, minutes=-1)), "minutes"),
    "TrainConfig(steps=0)": (api(lambda e: T.TrainConfig(steps=0)), "steps"),
    "TrainConfig(lr=nan)": (api(lambda e: T.TrainConfig(lr=math.nan)), "lr"),
    "indirect_effects(batch_size=0)": (api(lambda e: mmfv.cma.indirect_effects(e.lmm, e.prompts("corrupted", 1, 2), torch.zeros(2, 4, 8), "fast", 0)),
                                       "batch_size"),
    "indirect_effects with another model's means": (api(lambda e: mmfv.cma.indirect_effects(e.lmm, e.prompts("corrupted", 1, 2), torch.zeros(3, 4, 8))),
                                                    "do not fit"),
    "mean_activations(batch_size=0)": (api(lambda e: mmfv.cma.mean_activations(e.lmm, e.prompts("clean", 1, 2), 0)), "batch_size"),
    "prompts with k=-1": (api(lambda e: e.prompts("clean", -1)), "k must be"),
    "prompts with n=0": (api(lambda e: e.prompts("clean", 1, 0)), "number of prompts"),
    "vector heads out of range": (api(lambda e: mmfv.vectors.build(e.lmm, torch.zeros(2, 4, 8), [(5, 0)], "left")), "out of range"),
    "vector metadata without relation": (api(lambda e: mmfv.vectors.FunctionVector.load(_damaged_vector(
        e, {k: v for k, v in e.vector().provenance.items() if k != "relation"}))), "v.safetensors"),
    "vector metadata not a dict": (api(lambda e: mmfv.vectors.FunctionVector.load(_damaged_vector(e, [1, 2]))), "v.safetensors"),
    "vector metadata heads not a list": (api(lambda e: mmfv.vectors.FunctionVector.load(_damaged_vector(e, {**e.vector().provenance, "heads": 5}))),
                                         "v.safetensors"),
    "vector file with NaN": (api(lambda e: mmfv.vectors.FunctionVector.load(_damaged_vector(e, e.vector().provenance, math.nan))), "v.safetensors"),
    "0-byte vector file": (api(lambda e: mmfv.vectors.FunctionVector.load(_write(e.tmp / "v.safetensors", b""))), "v.safetensors"),
    "vector of another model": (api(lambda e: mmfv.vectors.FunctionVector.load(_damaged_vector(e, {**e.vector().provenance, "config_hash": "x"}),
                                                                                e.lmm)), "not from this model"),
    "truncated PNG": (api(lambda e: mmfv.prompts.Item("i", "cat", "dog", "left", str(_png(e, lambda b: b[: len(b) // 2]))).load_image()), "img.png"),
    "not a PNG": (api(lambda e: mmfv.prompts.Item("i", "cat", "dog", "left", str(_png(e, lambda b: b"GIF89a junk"))).load_image()), "img.png"),
    "corrupt PNG through the model": (api(lambda e: e.lmm.encode([mmfv.prompts.Prompt(
        (), replace(e.items["left"][0], image_id="damaged", image=str(_png(e, lambda b: b[:40]))), "zero-shot")])), "img.png"),
    "binary GQA scene graphs": (api(lambda e: mmfv.data.gqa.load_scene_graphs(_write(e.tmp / "sg.json", b"\xff\xd8\xff\xe0JFIF"))), "sg.json"),
    "latin-1 GQA scene graphs": (api(lambda e: mmfv.data.gqa.load_scene_graphs(_write(e.tmp / "sg.json", '{"1": "caf\xe9"}'.encode("latin-1")))),
                                 "sg.json"),
    "binary processed GQA (fu2025)": (api(lambda e: mmfv.data.gqa_fu.load(_write(e.tmp / "fu.json", b"\x89PNG\r\n\x1a\n"))), "fu.json"),
    "latin-1 VSR file": (api(lambda e: mmfv.data.vsr.load_rows(_write(e.tmp / "vsr.jsonl", b"\n" + '{"caption": "caf\xe9"}\n'.encode("latin-1")))),
                         "vsr.jsonl:2"),
    "binary task file": (api(lambda e: mmfv.data.tasks.load_jsonl(_write(e.tmp / "t.jsonl", b"\x00\x01\xff\xfe"))), "t.jsonl:1"),
    "latin-1 Todd task file": (api(lambda e: mmfv.data.tasks.load_todd(_write(e.tmp / "antonym.json", '[{"input": "caf\xe9"}]'.encode("latin-1")))),
                               "antonym.json"),
    "config dict: icl.n=10^20": (api(lambda e: C.from_dict({"icl": {"n": 10**20}})), "icl.n"),
    "config replace: cma.top_k=-1": (api(lambda e: C.from_dict({}).replace(cma={"top_k": -1})), "cma.top_k"),
    "load_model of a file": (api(lambda e: mmfv.models.load_model(str(_write(e.tmp / "w.bin", b"x")))), "is a file"),
    "load_model of a bad name": (api(lambda e: mmfv.models.load_model("a b/c")), "not 'tiny'"),
    "load_model, hub unreachable": (api(_offline_hub), "cannot be reached"),
    "damaged results JSON": (api(lambda e: mmfv.io.read_json(_write(e.tmp / "results.json", b"\xff"))), "results.json"),
}


def _one_line(msg: str) -> bool:
    return bool(msg.strip()) and "\n" not in msg.strip() and "Traceback" not in msg


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, tiny_model_dir, other_model_dir, lmm, items, request, tmp_path, capsys, monkeypatch):
    (how, spec), needle = CASES[case]
    monkeypatch.chdir(tmp_path)
    needs_run = how == "cli" and "{run}" in " ".join(spec[0])
    e = Env(tiny_model_dir, other_model_dir, lmm, items, request.getfixturevalue("small_run") if needs_run else None, tmp_path)
    if how == "api":
        with pytest.raises((ValueError, OSError, TypeError)) as info:
            spec(e)
        msg = str(info.value)
        assert _one_line(msg), msg
        assert needle in msg, msg
        return
    out = tmp_path / "out"
    if how == "config":
        path = tmp_path / "cfg.toml"
        path.write_text(spec if isinstance(spec, str) else toml(merged(tiny_model_dir, spec)))
        argv, nothing_ran = ["config", "check", str(path)], False
    else:
        argv, prep, nothing_ran = spec
        fill = {"model": str(tiny_model_dir), "other": str(other_model_dir), "out": str(out), **(prep(e) if prep else {})}
        if needs_run:
            fill["run"] = str(e.run)
        argv = [a.format(**fill) for a in argv]
        if argv[0] not in ("config", "train-tiny"):
            cfg_path = tmp_path / "small.toml"
            cfg_path.write_text(toml({s: kv for s, kv in merged(tiny_model_dir, {}).items() if s != "model"}))
            argv = [argv[0], str(cfg_path), *argv[1:], "--quiet"] + ([] if "--out" in argv else ["--out", str(out)])
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert _one_line(err), err
    assert needle in err, err
    if nothing_ran:  # refused before the first stage: no stage folder, no results
        assert [p.name for p in out.iterdir() if p.is_dir()] == [] if out.exists() else True

