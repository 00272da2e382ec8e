"""Image-local key/value reuse for mmfv-tiny with ``image_attention = "local"``.

Why: with local image attention an image's patch tokens attend only to earlier patches of the same
image, and RoPE makes attention depend on relative positions only; so every layer's patch hidden
states — and their keys before RoPE and their values — are a function of the image alone, wherever
and in whichever prompt it stands. Patch tokens are ~80% of an 8-shot prompt (25 per image, ~6 text
tokens per demonstration): computing them once per image (like an HF vision tower's cached
features) and running only the text tokens through the decoder cuts a plain forward ~4-5x.

How: :func:`image_kv` runs one image's patches alone (positions 0..P-1, causal) and keeps each
layer's pre-RoPE keys and values; :func:`text_forward` runs a batch's text tokens only and, at each
layer, attends over the whole prompt: its own keys beside the images' cached keys, RoPE applied at
their positions in this prompt. Exact in real arithmetic; in floats it agrees with the full forward
to rounding (RoPE angles of absolute vs relative positions; tests hold the two within 1e-4). The
full forward (``TinyLMM(image_kv=False)``, and any call with hooks or gradients) is the reference.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F

from mmfv.models.tiny.modeling import MmfvTinyForCausalLM, rope_angles


@torch.no_grad()
def image_kv(model: MmfvTinyForCausalLM, features: torch.Tensor) -> torch.Tensor:
    """(L, 2, N, P, H, d): every layer's pre-RoPE keys and values of N images' patch tokens,
    each image run alone. features: (N, P, D) from ``encode_images``."""
    m = model.model
    N, P, _ = features.shape
    pos = torch.arange(P, device=features.device).expand(N, P)  # (N, P)
    mask = torch.ones(P, P, dtype=torch.bool, device=features.device).tril()[None, None].expand(N, 1, P, P)
    x, out = features, []
    for layer in m.layers:
        att = layer.self_attn
        h = layer.input_layernorm(x)
        k = att.k_proj(h).view(N, P, att.num_heads, att.head_dim)  # (N, P, H, d)
        v = att.v_proj(h).view(N, P, att.num_heads, att.head_dim)
        out.append(torch.stack([k, v]))
        x, _ = layer(x, pos, mask)
    return torch.stack(out)


class KVStore:
    """Per-image keys/values (:func:`image_kv`) in one growing buffer (L, 2, cap, P, H, d), at
    most ``max_images`` images, least recently used replaced first; rows are looked up by image id."""

    def __init__(self, max_images: int) -> None:
        self.max_images = max_images
        self.buf: torch.Tensor | None = None
        self._row: OrderedDict[str, int] = OrderedDict()

    def rows(self, model: MmfvTinyForCausalLM, image_ids: list[str], features: torch.Tensor) -> torch.Tensor:
        """(n,) buffer rows of ``image_ids`` (in order), computing the missing ones from
        ``features`` (n, P, D), row i being image_ids[i]'s."""
        first = {iid: i for i, iid in reversed(list(enumerate(image_ids)))}
        need = [iid for iid in first if iid not in self._row]
        if len(first) > self.max_images:
            raise ValueError(f"a batch of {len(first)} distinct images exceeds the image key/value store of {self.max_images}: use smaller batches")
        for iid in first:
            if iid in self._row:
                self._row.move_to_end(iid)
        if need:
            kv = image_kv(model, features[[first[iid] for iid in need]])  # (L, 2, m, P, H, d)
            self._grow(kv, len(self._row) + len(need))
            for j, iid in enumerate(need):
                if len(self._row) < self.max_images:
                    r = len(self._row)
                else:
                    _, r = self._row.popitem(last=False)
                self.buf[:, :, r] = kv[:, :, j]
                self._row[iid] = r
        return torch.tensor([self._row[iid] for iid in image_ids], dtype=torch.long, device=features.device)

    def _grow(self, kv: torch.Tensor, want: int) -> None:
        cap = 0 if self.buf is None else self.buf.shape[2]
        if want <= cap or cap >= self.max_images:
            return
        new = kv.new_empty(*kv.shape[:2], min(self.max_images, max(want, 2 * cap, 256)), *kv.shape[3:])
        if self.buf is not None:
            new[:, :, :cap] = self.buf
        self.buf = new


def _turns(pos: torch.Tensor, d: int, theta: float) -> torch.Tensor:
    """RoPE as unit complex numbers (B, T, 1, d/2) for integer positions pos (B, T): modeling.rope_angles' angles."""
    cos, sin = rope_angles(pos, d, theta, torch.float32)  # (B, 1, T, d/2)
    return torch.complex(cos, sin).transpose(1, 2)


def _rotate(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """RoPE on (..., H, d) with adjacent pairs as complex numbers (modeling.apply_rope's pairing)."""
    return torch.view_as_real(torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2)) * turns).flatten(-2)


def _queries(is_text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's text positions, left-filled to the longest row with the row's first one:
    index (B, Tq) and which entries are real (B, Tq)."""
    B, T = is_text.shape
    n = is_text.sum(1)  # (B,)
    Tq = int(n.max())
    ar = torch.arange(T, device=is_text.device).expand(B, T)
    s = torch.where(is_text, ar, -1).sort(dim=1).values[:, T - Tq:]  # (B, Tq), -1 on the left
    first = s.gather(1, (Tq - n).clamp(max=Tq - 1)[:, None])  # (B, 1)
    return torch.where(s < 0, first, s), s >= 0


@torch.no_grad()
def text_forward(model: MmfvTinyForCausalLM, input_ids: torch.Tensor, attention_mask: torch.Tensor, kv: torch.Tensor, rows: torch.Tensor,
                 keep_cache: bool = False) -> tuple[torch.Tensor | None, list[tuple[torch.Tensor, torch.Tensor]] | None]:
    """The final hidden state (B, D) at the last position (after the final norm; None where a row
    ends with an image token), and with ``keep_cache`` every layer's (keys, values), each (B, H, T,
    d), as the full forward's cache.

    input_ids, attention_mask: (B, T), left-padded; kv: (L, 2, m, P, H, d), e.g. :class:`KVStore`'s
    buffer; rows: (n,) the rows of kv holding the batch's n images in slot order."""
    cfg, m = model.config, model.model
    B, T = input_ids.shape
    dev = input_ids.device
    is_img = input_ids == cfg.image_token_id
    pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T), as the full forward
    idx, real = _queries(~is_img)  # (B, Tq)
    Tq = idx.shape[1]
    ar = torch.arange(T, device=dev)
    keys_seen = attention_mask.bool()[:, None, :] | (ar[None, None, :] == idx[:, :, None])  # padding hidden, itself seen
    mask = ((ar[None, None, :] <= idx[:, :, None]) & keys_seen)[:, None]  # (B, 1, Tq, T)
    img_flat = is_img.flatten().nonzero()[:, 0]  # (n*P,) flat positions of patch tokens, slot order
    txt_flat = (idx + (torch.arange(B, device=dev) * T)[:, None])[real]  # (n_text,)
    H, d = m.layers[0].self_attn.num_heads, m.layers[0].self_attn.head_dim
    turns_q = _turns(pos.gather(1, idx), d, cfg.rope_theta)  # (B, Tq, 1, d/2)
    turns_k = _turns(pos.flatten()[img_flat][None], d, cfg.rope_theta)[0]  # (n*P, 1, d/2)
    x = m.embed_tokens(input_ids.gather(1, idx))  # (B, Tq, D)
    cache = [] if keep_cache else None
    for l, layer in enumerate(m.layers):
        att = layer.self_attn
        h = layer.input_layernorm(x)
        q = _rotate(att.q_proj(h).view(B, Tq, H, d), turns_q).transpose(1, 2)  # (B, H, Tq, d)
        k = _rotate(att.k_proj(h).view(B, Tq, H, d), turns_q)  # (B, Tq, H, d)
        v = att.v_proj(h).view(B, Tq, H, d)
        K, V = k.new_empty(B * T, H, d), v.new_empty(B * T, H, d)
        if img_flat.numel():
            K.index_copy_(0, img_flat, _rotate(kv[l, 0].index_select(0, rows).reshape(-1, H, d), turns_k))
            V.index_copy_(0, img_flat, kv[l, 1].index_select(0, rows).reshape(-1, H, d))
        K.index_copy_(0, txt_flat, k[real])
        V.index_copy_(0, txt_flat, v[real])
        K, V = K.view(B, T, H, d).transpose(1, 2), V.view(B, T, H, d).transpose(1, 2)  # (B, H, T, d)
        o = F.scaled_dot_product_attention(q, K, V, attn_mask=mask).transpose(1, 2).reshape(B, Tq, H * d)
        x = x + att.o_proj(o)
        x = x + layer.mlp(layer.post_attention_layernorm(x))
        if cache is not None:
            cache.append((K, V))
    return (None if bool(is_img[:, -1].any()) else m.norm(x[:, -1])), cache
