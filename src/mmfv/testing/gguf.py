"""GGUF files of the tiny random text models, written offline (needs the ``gguf`` package): the
``gguf:<path>`` loading path is tested on them without any downloaded checkpoint.

The layout is llama.cpp's: llama.cpp tensor names, the rows of q and k permuted per head the way
its converter does (transformers undoes it when reading), float32 data, the byte-level BPE
tokenizer's tokens and merges. ``truncate`` and ``arch`` make bad files for the error tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order: within each head, the two rotary halves interleaved."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama(lmm: Any, path: str | Path, arch: str = "llama", truncate: int | None = None) -> Path:
    """Write the Llama-family ``lmm`` (an HFLMM, e.g. ``hf_tiny("llama")``) as a GGUF file at ``path``.

    ``arch``: the ``general.architecture`` written (another value makes an unsupported file);
    ``truncate``: keep only the first that many bytes (a cut download)."""
    import gguf

    cfg, tok = lmm.module.config, lmm.tok
    path = Path(path)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("mmfv tiny random llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    special = set(tok.all_special_tokens)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])  # 3: control, 1: normal
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in model["merges"]])
    for name in ("bos", "eos", "pad"):
        tid = getattr(tok, f"{name}_token_id", None)
        if tid is not None:
            getattr(w, f"add_{name}_token_id")(tid)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for hf_name, p in lmm.module.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"no GGUF name for {hf_name}")
        data = p.detach().float().numpy().copy()
        if ".attn_q." in name:
            data = _permute(data, cfg.num_attention_heads)
        elif ".attn_k." in name:
            data = _permute(data, cfg.num_key_value_heads)
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if truncate is not None:
        data = path.read_bytes()[:truncate]
        path.write_bytes(data)
    return path
