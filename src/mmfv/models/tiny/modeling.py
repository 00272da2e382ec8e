"""mmfv-tiny architecture: a decoder-only transformer with images as patch tokens (early fusion).

Each image is a ``grid × grid`` board; each cell becomes one patch token = Linear(cell pixels) +
a learned 2-D (row, col) embedding, placed inside the token sequence like LLaVA / Qwen-VL do.
Attention is standard multi-head attention with a separate output projection ``o_proj``, so head
outputs are the o_proj input exactly as in HF models. Module paths mirror HF Llama:
``model.layers[i].self_attn.o_proj``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel


class MmfvTinyConfig(PretrainedConfig):
    model_type = "mmfv_tiny"

    def __init__(
        self,
        vocab_size: int = 64,
        hidden_size: int = 128,
        num_hidden_layers: int = 6,
        num_attention_heads: int = 8,
        intermediate_size: int = 512,
        max_position_embeddings: int = 512,
        grid: int = 5,
        cell_px: int = 10,
        image_token_id: int = 2,
        num_aux_relations: int = 0,
        rope_theta: float = 10000.0,
        tie_embeddings: bool = True,
        image_attention: str = "causal",
        **kwargs,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.grid = grid
        self.cell_px = cell_px
        self.image_token_id = image_token_id
        self.num_aux_relations = num_aux_relations
        self.rope_theta = rope_theta
        self.tie_embeddings = tie_embeddings
        # "local": an image's patch tokens attend only to patches of the same image (as if encoded by
        # a separate vision encoder), so everything relational happens at text positions.
        self.image_attention = image_attention
        super().__init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def patches_per_image(self) -> int:
        return self.grid * self.grid

    @property
    def patch_dim(self) -> int:
        return 3 * self.cell_px * self.cell_px


def rope_angles(pos: torch.Tensor, d: int, theta: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (B, 1, T, d/2) of the rotary angles for integer positions pos (B, T): computed once
    per forward (or per prepared last token) and shared by every layer's queries and keys."""
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, device=pos.device, dtype=torch.float32) / d))  # (d/2,)
    ang = pos.to(torch.float32)[:, None, :, None] * inv  # (B, 1, T, d/2)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x (B, H, T, d) by :func:`rope_angles`' cos/sin, adjacent pairs rotated."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


def image_groups_of(input_ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """(B, T) image number (1, 2, …) of each image-patch token, 0 for text tokens."""
    is_img = input_ids == image_token_id
    start = is_img & ~torch.cat([torch.zeros_like(is_img[:, :1]), is_img[:, :-1]], dim=1)
    return start.long().cumsum(-1) * is_img.long()


class Attention(nn.Module):
    def __init__(self, cfg: MmfvTinyConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.head_dim
        self.theta = cfg.rope_theta
        d = cfg.hidden_size
        self.q_proj = nn.Linear(d, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.num_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.num_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, d, bias=False)

    def forward(self, x, pos, mask, past=None, rope=None):
        # x: (B, T, D); pos: (B, T); mask: (B, 1, T, S) bool, True = attend; past: (k, v) (B, H, P, d);
        # rope: rope_angles(pos) when the caller computed them once for every layer
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        cos, sin = rope if rope is not None else rope_angles(pos, self.head_dim, self.theta, q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past is not None and past[0].shape[0] != B:
            return self._shared_prefix(q, k, v, past, mask), None
        if past is not None:
            pk, pv = past
            k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, d)
        out = out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)
        return self.o_proj(out), (k, v)


    def _shared_prefix(self, q, k, v, past, mask):
        """One new token per row, R rows per cached prompt, without copying the cache.

        q, k, v: (N*R, H, 1, d) for the new tokens; past: (k, v) each (N, H, P, d);
        mask: (N*R, 1, 1, P+1). Each row attends to its prompt's prefix and to itself.
        """
        pk, pv = past
        N, H, P, d = pk.shape
        B = q.shape[0]
        if q.shape[2] != 1 or B % N:
            raise ValueError(f"a shared KV prefix of {N} prompts takes one new token per row and a multiple of {N} rows, got {B} rows x {q.shape[2]} tokens")
        R = B // N
        q = q * (1.0 / math.sqrt(d))  # scaled once here: (B, H, 1, d) is smaller than the scores
        w = q.new_empty(N, H, R, P + 1)  # scores over the prompt's prefix keys, then the row's own key
        w[..., :P] = q.view(N, R, H, d).transpose(1, 2) @ pk.transpose(-1, -2)  # (N, H, R, P)
        w[..., P] = (q * k).sum(-1).view(N, R, H).transpose(1, 2)  # (N, H, R)
        hidden = ~mask.view(N, R, 1, 1, P + 1)[:, 0, :, :, :P]  # (N, 1, 1, P) prefix keys not visible
        w[..., :P].masked_fill_(hidden, float("-inf"))
        w = w.softmax(-1)
        out = w[..., :P] @ pv + w[..., P:] * v.view(N, R, H, d).transpose(1, 2)  # (N, H, R, d)
        return self.o_proj(out.transpose(1, 2).reshape(B, 1, H * d))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: MmfvTinyConfig) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = nn.LayerNorm(cfg.hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.hidden_size, cfg.intermediate_size),
            nn.GELU(),
            nn.Linear(cfg.intermediate_size, cfg.hidden_size),
        )

    def forward(self, x, pos, mask, past=None, rope=None):
        a, kv = self.self_attn(self.input_layernorm(x), pos, mask, past, rope)
        x = x + a
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, kv


class MmfvTinyModel(nn.Module):
    """The decoder stack (``layers``) plus token, patch and 2-D position embeddings."""

    def __init__(self, cfg: MmfvTinyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.patch_embed = nn.Linear(cfg.patch_dim, cfg.hidden_size)
        self.row_embed = nn.Embedding(cfg.grid, cfg.hidden_size)
        self.col_embed = nn.Embedding(cfg.grid, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = nn.LayerNorm(cfg.hidden_size)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Image features, computed once per image and reusable.

        pixel_values: (N, 3, grid*cell_px, grid*cell_px) in [0, 1] -> (N, grid*grid, D).
        """
        cfg = self.cfg
        N, C, Hpx, Wpx = pixel_values.shape
        if C != 3 or Hpx != cfg.grid * cfg.cell_px or Wpx != cfg.grid * cfg.cell_px:
            side = cfg.grid * cfg.cell_px
            raise ValueError(f"mmfv-tiny takes 3x{side}x{side} images, got {C}x{Hpx}x{Wpx}: render scenes with grid={cfg.grid}, cell_px={cfg.cell_px}")
        g, c = cfg.grid, cfg.cell_px
        patches = pixel_values.reshape(N, 3, g, c, g, c).permute(0, 2, 4, 1, 3, 5).reshape(N, g * g, 3 * c * c)
        rows = torch.arange(g, device=pixel_values.device).repeat_interleave(g)
        cols = torch.arange(g, device=pixel_values.device).repeat(g)
        return self.patch_embed(patches) + self.row_embed(rows) + self.col_embed(cols)

    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with image features scattered into the image-token positions, in order.

        input_ids: (B, T); image_features: (n_images_total, P, D) in the order the images occur.
        """
        x = self.embed_tokens(input_ids)  # (B, T, D)
        is_img = input_ids == self.cfg.image_token_id
        n_slots = int(is_img.sum())
        if n_slots:
            if image_features is None or image_features.shape[0] * image_features.shape[1] != n_slots:
                have = 0 if image_features is None else image_features.shape[0] * image_features.shape[1]
                raise ValueError(f"prompt has {n_slots} image-patch slots but {have} image features were given")
            x = x.masked_scatter(is_img[..., None], image_features.reshape(-1, x.shape[-1]).to(x.dtype))
        return x

    @staticmethod
    def build_mask(B: int, T: int, P: int, device, attention_mask=None, image_groups=None) -> torch.Tensor:
        """(B, 1, T, P+T) bool, True = attend: T new tokens after P cached ones (see :meth:`forward`)."""
        S = P + T
        causal = torch.ones(T, S, dtype=torch.bool, device=device).tril(P)
        mask = causal[None, None].expand(B, 1, T, S)
        if image_groups is not None:
            gq = image_groups[:, P:S]  # (B, T) groups of the new tokens
            same = gq[:, :, None] == image_groups[:, None, :S]  # (B, T, S)
            mask = mask & (same | (gq[:, :, None] == 0))[:, None]
        if attention_mask is not None:
            # Padding keys are hidden; every token still sees itself so padded rows stay finite.
            self_ = torch.zeros(T, S, dtype=torch.bool, device=device)
            self_[torch.arange(T), torch.arange(P, S)] = True
            mask = (mask & attention_mask[:, None, None, :S].bool()) | self_
        return mask

    def forward(self, inputs_embeds, position_ids, attention_mask=None, past_key_values=None, image_groups=None):
        """inputs_embeds: (B, T, D); position_ids: (B, T); attention_mask: (B, S) 1 = real token;
        image_groups: (B, S) image number (1, 2, …) of each patch token, 0 for text (for "local"
        image attention; the new tokens are the last T of S).

        Returns the final hidden states (B, T, D) and the new per-layer (k, v) cache.
        """
        B, T, _ = inputs_embeds.shape
        P = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        mask = self.build_mask(B, T, P, inputs_embeds.device, attention_mask, image_groups)
        x = inputs_embeds
        rope = rope_angles(position_ids, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        cache = []
        for i, layer in enumerate(self.layers):
            x, kv = layer(x, position_ids, mask, None if past_key_values is None else past_key_values[i], rope)
            cache.append(kv)
        return self.norm(x), cache


class MmfvTinyForCausalLM(PreTrainedModel):
    """mmfv-tiny with its LM head; ``model.layers[i].self_attn.o_proj`` as in HF decoders."""

    config_class = MmfvTinyConfig
    base_model_prefix = "model"
    _no_split_modules = ["DecoderLayer"]

    def __init__(self, config: MmfvTinyConfig) -> None:
        super().__init__(config)
        self.model = MmfvTinyModel(config)
        # With tie_embeddings the unembedding is the token embedding itself (no separate weight), so
        # an object's name token and its image patches share one direction in the residual stream.
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.relation_head = nn.Linear(config.hidden_size, config.num_aux_relations) if config.num_aux_relations else None
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool = False,
        return_hidden: bool = False,
        image_groups: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ):
        """Logits (B, T, V) for ``input_ids`` (B, T).

        Images come as ``pixel_values`` (N, 3, H, W) or, reused, as ``image_features``
        (N, grid², D) from :meth:`encode_images`. With ``past_key_values`` (from a call with
        ``use_cache=True``) only the new tokens are given; position_ids continue from the cache.
        ``logits_to_keep`` = n > 0: logits of the last n positions only (B, n, V).
        """
        if inputs_embeds is None:
            if image_features is None and pixel_values is not None:
                image_features = self.model.encode_images(pixel_values)
            inputs_embeds = self.model.embed(input_ids, image_features)
        B, T, _ = inputs_embeds.shape
        if position_ids is None:
            P = 0 if past_key_values is None else past_key_values[0][0].shape[2]
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, P : P + T]
            else:
                position_ids = torch.arange(P, P + T, device=inputs_embeds.device)[None].expand(B, T)
        if int(position_ids.max()) >= self.config.max_position_embeddings:
            raise ValueError(f"prompt of {int(position_ids.max()) + 1} tokens exceeds mmfv-tiny's context of {self.config.max_position_embeddings}: use fewer demonstrations")
        groups = None
        if self.config.image_attention == "local":
            if image_groups is None and input_ids is not None:
                image_groups = image_groups_of(input_ids, self.config.image_token_id)
            if image_groups is None and T > 1:
                raise ValueError("local image attention needs input_ids or image_groups for multi-token inputs")
            groups = image_groups
        h, cache = self.model(inputs_embeds, position_ids, attention_mask, past_key_values, groups)
        logits = self.unembed(h[:, -logits_to_keep:] if logits_to_keep else h)
        out = {"logits": logits}
        if use_cache:
            out["past_key_values"] = cache
        if return_hidden:
            out["hidden"] = h
        return out

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_images(pixel_values)

    def unembed(self, h: torch.Tensor) -> torch.Tensor:
        """Final hidden states (..., D) -> logits (..., V)."""
        if self.lm_head is None:
            return F.linear(h, self.model.embed_tokens.weight)
        return self.lm_head(h)
