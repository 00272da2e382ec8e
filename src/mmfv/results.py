"""Read a finished run from Python: each stage's results, as nested dicts or as tidy tables.

    run = mmfv.results.Run("runs/default")
    run.results("eval")["mean"]          # the stage's results.json
    run.table("cma")                     # list of row dicts (also written as <stage>/results.csv)
    run.to_frame("icl")                  # a pandas DataFrame (pip install "mmfv[pandas]")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmfv.io import read_json


class Run:
    """A results folder written by `mmfv run` or a stage verb."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not (self.folder / "run.json").exists():
            raise FileNotFoundError(f"{self.folder} holds no mmfv run (no run.json): run `mmfv run --out {self.folder}` first")

    @property
    def stages(self) -> list[str]:
        """The stages with results in this folder, in pipeline order."""
        from mmfv.stages import NAMES

        return [s for s in NAMES if (self.folder / s / "results.json").exists()]

    def results(self, stage: str) -> dict[str, Any]:
        path = self.folder / stage / "results.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: the {stage} stage has not run in {self.folder} (it has {', '.join(self.stages) or 'none'})")
        return read_json(path)

    def table(self, stage: str) -> list[dict[str, Any]]:
        """The stage's results as tidy rows (one observation each)."""
        from mmfv.stages import get

        st = get(stage)
        if st.table is None:
            raise ValueError(f"the {stage} stage has no table form: read run.results({stage!r})")
        return st.table(self.results(stage))

    def to_frame(self, stage: str) -> Any:
        """The stage's table as a pandas DataFrame."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError('to_frame needs pandas: pip install "mmfv[pandas]" (or read run.table(stage), a list of dicts)') from None
        return pd.DataFrame(self.table(stage))

    def __repr__(self) -> str:
        return f"Run({str(self.folder)!r}; stages: {', '.join(self.stages) or 'none'})"
