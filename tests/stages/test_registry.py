"""The stage registry: a new stage is one file plus one registry line, and then the runner, the CLI
verb, the config section and the report all have it."""

from __future__ import annotations

import json
import shutil

import pytest
from pydantic import Field, PositiveInt

from mmfv import config as C
from mmfv import prompts as P
from mmfv import runner, stages
from mmfv.report import html as H
from mmfv.settings import Section
from mmfv.stages.base import Context, ReportSection, Stage


# --- the "new file": a trivial stage that records how many prompts each relation would give -----
class CountSettings(Section):
    shots: PositiveInt = Field(2, description="demonstrations per counted prompt")


def count_prompts(ctx: Context) -> dict:
    items = ctx.items("eval")
    out = {r: len(P.build("clean", items[r], items, ctx.cfg.count.shots, len(items[r]), ctx.seed)) for r in ctx.relations}
    ctx.write("count", {"prompts": out})
    return out


def count_section(res: H.Results, out) -> str:
    if (why := res.why_missing("count")) is not None:
        return why
    return H.table(["relation", "prompts"], list(res.json("count")["prompts"].items()))


COUNT = Stage("count", "count the clean eval prompts per relation", count_prompts, needs=("means",), section="count", settings=CountSettings,
              report=(ReportSection("count", "Prompt counts", count_section),))


@pytest.fixture
def registered():
    stages.register(COUNT, after="means")  # the "one registry line"
    yield
    stages.unregister("count")


def test_a_new_stage_reaches_runner_config_cli_and_report(registered, tiny_model_dir, tmp_path):
    from mmfv.cli import main
    from tests.test_runner import SMALL

    assert runner.STAGES[:4] == ("data", "icl", "means", "count")
    cfg = C.from_dict({**SMALL, "model": {"name": str(tiny_model_dir)}, "count": {"shots": 3}})
    assert cfg.count.shots == 3 and "[count]" in cfg.to_toml()
    out = tmp_path / "run"
    assert list(runner.run(cfg, out, until="count", quiet=True)) == ["means", "count"]
    got = json.loads((out / "count" / "results.json").read_text())["prompts"]
    assert set(got) == set(cfg.data.relations) and all(n > 0 for n in got.values())
    assert main(["count", "--model", str(tiny_model_dir), "--out", str(tmp_path / "cli"), "--shots", "3", "--quiet",
                 *[f"--set={s}.{k}={json.dumps(v)}" for s, kv in SMALL.items() for k, v in kv.items() if s in ("data", "cma", "run")]]) == 0
    assert json.loads((tmp_path / "cli" / "count" / "results.json").read_text())["prompts"] == got
    from mmfv.stages.report import build_report

    page = build_report(out).read_text()
    assert "Prompt counts" in page and f"<td>{cfg.data.relations[0]}</td>" in page


def test_registry_refuses_duplicates_and_unknown_needs(registered):
    with pytest.raises(ValueError, match="exists already"):
        stages.register(COUNT)
    with pytest.raises(ValueError, match="unknown stage"):
        stages.register(Stage("x", "x", count_prompts, needs=("nope",)))
    assert C.Config().count.shots == 2  # its settings class is the only source of its defaults
