"""mmfv in 15 lines: find the heads that carry "left" in mmfv-tiny, build its function vector,
steer zero-shot prompts with it, save/load it and draw the heads. (CI runs this file.)"""
import sys

import mmfv

lmm = mmfv.load_model("tiny")  # the shipped model; or an HF hub id / folder, gguf:<file>, smollm2-135m
data = mmfv.items(lmm, "eval", n_scenes=300)  # relation -> items, drawn in the model's scene style
clean = mmfv.build_prompts("clean", data, "left", k=5, n=40)
corrupt = mmfv.build_prompts("corrupted", data, "left", k=5, n=8, seed=1)
res = mmfv.causal_mediation(lmm, clean, corrupt)  # mean head outputs, then every head's indirect effect
fv = mmfv.function_vector(lmm, res, k=10)  # Σ over the top-10 heads of W_O · mean
val = mmfv.build_prompts("zero-shot", mmfv.items(lmm, "val", n_scenes=200), "left", n=60)
fv = fv.at(mmfv.best_layer(lmm, val, fv))  # the injection layer, chosen on val
test = mmfv.build_prompts("zero-shot", mmfv.items(lmm, "test", n_scenes=300), "left", n=100)
print(f"top heads {res.top_heads(3)}; zero-shot {mmfv.accuracy(lmm, test):.2f} -> with FV {mmfv.accuracy(lmm, test, fv):.2f} (layer {fv.layer})")
out = sys.argv[1] if len(sys.argv) > 1 else "."
fv.save(f"{out}/left.safetensors") and mmfv.FunctionVector.load(f"{out}/left.safetensors", lmm)
mmfv.plots.aie_heatmap(res.aie, res.top_heads(10), "AIE, left (mmfv-tiny)", f"{out}/aie_left.png")
