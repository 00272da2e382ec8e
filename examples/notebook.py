# %% [markdown]
# # mmfv in a notebook
# Figures are matplotlib `Figure` objects made without pyplot: importing mmfv never switches your
# backend, so `%matplotlib inline` (or any other) keeps working and each figure shows inline when it
# is the cell's value. Tables come as pandas DataFrames. Run as a script it saves the figures instead.
# Usage: python examples/notebook.py RUN_FOLDER [OUT_FOLDER]   (RUN_FOLDER from `mmfv run`)

# %%
import sys

import matplotlib

import mmfv

backend = matplotlib.get_backend()
run = mmfv.Run(sys.argv[1] if len(sys.argv) > 1 else "runs/default")
print(run)

# %% ICL by shots, from the tidy table
icl = run.table("icl")
means = [r for r in icl if r["relation"] == "mean" and r["kind"] == "clean"]
fig_icl = mmfv.plots.curves({"clean (mean)": [r["acc"] for r in means]}, [r["k"] for r in means], "demonstrations (k)", "accuracy", "ICL")
fig_icl  # in a notebook: shown inline

# %% every relation's heads on one colour scale
cma = run.results("cma")
import torch  # noqa: E402

aies = {r: torch.tensor(v["aie"]) for r, v in cma["relations"].items()}
tops = {r: [(l, h) for l, h, _ in v["top_heads"]] for r, v in cma["relations"].items()}
fig_heads = mmfv.plots.heatmap_grid(aies, tops, title="AIE per head")
fig_heads

# %% as a script: write the figures, and show that the backend was never touched
assert matplotlib.get_backend() == backend, (backend, matplotlib.get_backend())
if __name__ == "__main__" and "ipykernel" not in sys.modules:
    out = sys.argv[2] if len(sys.argv) > 2 else "."
    for name, fig in (("icl", fig_icl), ("heads", fig_heads)):
        print(mmfv.plots.save(fig, f"{out}/{name}.png", formats=("png", "svg")))
