"""The OpenFlamingo model (the paper's model), written for mmfv on plain torch and transformers.

The ``open-flamingo`` package pins torch 2.0.1 and pulls ``open_clip`` + torchvision, so it cannot be
installed beside mmfv. This package re-implements the architecture of OpenFlamingo v2
(e.g. ``OpenFlamingo-4B-vitl-rpj3b``) and loads the released checkpoints' key layout
(:mod:`.checkpoint`); ``tests/models/test_openflamingo.py`` proves logit equality with the
package's own ``Flamingo`` class built from the same random parts.

Architecture (shapes for 4B-vitl-rpj3b in brackets):

- ``vision_encoder``: a CLIP ViT in open_clip's module layout (OpenAI ViT-L/14: 224 px, patch 14,
  width 1024, 24 layers, 16 heads, QuickGELU). OpenFlamingo uses its *patch tokens* (the CLS token
  dropped) [256 × 1024]. open_clip < 2.23 (OpenFlamingo v2's training time) returns them straight
  from the last block; open_clip >= 2.23 applies ``ln_post`` first — ``tokens_after_ln_post``
  selects the behaviour (default: the one OpenFlamingo was trained with). Any module mapping
  ``(N, 3, H, W)`` pixels to ``(N, v, vis_dim)`` tokens can stand in.
- ``perceiver``: a Perceiver resampler: ``num_latents`` learned latents [64 × 1024] attend
  (``depth`` [6] blocks of ``heads`` [8] × ``dim_head`` [64]) to the image tokens *and* themselves,
  each block followed by a LayerNorm-first GELU MLP, then a final LayerNorm. Images are resampled
  independently (OpenFlamingo v2 has no frame / media-time embeddings), so features can be cached
  per image.
- ``lang_encoder``: a transformers ``GPTNeoXForCausalLM`` (RedPajama-INCITE-3B: 32 layers, hidden
  2560, 32 heads of 80). Every ``cross_attn_every_n_layers``-th decoder layer (layers i with
  ``(i + 1) % n == 0``; n = 2 → 16 blocks) is preceded by a gated cross-attention block: tanh-gated
  masked cross-attention (text queries, image-latent keys/values; ``heads`` [8] × ``dim_head``
  [64]) and a tanh-gated MLP. ``lang_encoder.gpt_neox.layers[i]`` becomes a
  :class:`FlamingoDecoderLayer` holding ``gated_cross_attn_layer`` (or None) and the original
  ``decoder_layer``; its output is the residual stream after layer i.

Media masking: ``text_time[b, t]`` = number of ``<image>`` tokens at positions <= t. A token
attends only to the latents of image number ``text_time`` (``only_attend_immediate_media``, the
released models) or to every image up to it; a token before any image gets a zero cross-attention
output (immediate mode). ``text_time`` is computed on the whole row, so a suffix run on a KV cache
(the last prompt token alone) still sees the right image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

# --------------------------------------------------------------------------------------------------
# Perceiver resampler and gated cross-attention
# --------------------------------------------------------------------------------------------------


class FeedForward(nn.Module):
    """LayerNorm → Linear(dim, mult·dim) → GELU → Linear(mult·dim, dim), no biases."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc_in = nn.Linear(dim, dim * mult, bias=False)
        self.act = nn.GELU()
        self.fc_out = nn.Linear(dim * mult, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.act(self.fc_in(self.norm(x))))


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., N, heads·d) → (..., heads, N, d)."""
    *lead, n, hd = x.shape
    return x.view(*lead, n, heads, hd // heads).transpose(-3, -2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(..., heads, N, d) → (..., N, heads·d)."""
    x = x.transpose(-3, -2)
    return x.reshape(*x.shape[:-2], -1)


class PerceiverAttention(nn.Module):
    """Latents attend to [image tokens; latents] (keys and values from both)."""

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = heads * dim_head
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """media (N, v, D), latents (N, n, D) → (N, n, D)."""
        media, latents = self.norm_media(media), self.norm_latents(latents)
        q = _split_heads(self.to_q(latents), self.heads)
        k, v = (_split_heads(t, self.heads) for t in self.to_kv(torch.cat([media, latents], dim=-2)).chunk(2, dim=-1))
        w = ((q * self.dim_head**-0.5) @ k.transpose(-1, -2)).softmax(dim=-1)
        return self.to_out(_merge_heads(w @ v))


class PerceiverBlock(nn.Module):
    def __init__(self, dim: int, dim_head: int, heads: int, ff_mult: int) -> None:
        super().__init__()
        self.attn = PerceiverAttention(dim, dim_head, heads)
        self.ff = FeedForward(dim, ff_mult)


class PerceiverResampler(nn.Module):
    """Resample each image's ``v`` tokens to ``num_latents`` latents of the same width."""

    def __init__(self, dim: int, depth: int = 6, dim_head: int = 64, heads: int = 8, num_latents: int = 64, ff_mult: int = 4) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.layers = nn.ModuleList(PerceiverBlock(dim, dim_head, heads, ff_mult) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (N, v, D) → (N, num_latents, D)."""
        x = self.latents.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        for blk in self.layers:
            x = x + blk.attn(tokens, x)
            x = x + blk.ff(x)
        return self.norm(x)


def media_text_time(input_ids: torch.Tensor, media_token_id: int) -> torch.Tensor:
    """(B, T) → for each position, how many ``<image>`` tokens occur at or before it."""
    return (input_ids == media_token_id).long().cumsum(dim=-1)


class MaskedCrossAttention(nn.Module):
    """Text queries attend to image latents, each token only to the image(s) ``text_time`` allows.

    ``to_out`` is the output projection: its input is the ``heads`` × ``dim_head`` head outputs,
    head-major (mmfv's "cross" head set).
    """

    def __init__(self, dim: int, dim_visual: int, dim_head: int = 64, heads: int = 8, only_attend_immediate_media: bool = True) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.only_attend_immediate_media = only_attend_immediate_media
        inner = heads * dim_head
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim_visual, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, media: torch.Tensor, text_time: torch.Tensor) -> torch.Tensor:
        """x (B, T, D); media (B/R, M, n, Dv) — each media row serves R consecutive text rows
        (prompts repeated for patching share one copy); text_time (B, T) (1-based image index, 0 =
        no image yet). Returns (B, T, D)."""
        B, T, _ = x.shape
        Bm, M, n, _ = media.shape
        if B % Bm:
            raise ValueError(f"{B} text rows cannot share {Bm} media rows")
        q = _split_heads(self.to_q(self.norm(x)), self.heads) * self.dim_head**-0.5  # (B, h, T, d)
        if M == 0:  # no image anywhere: every token has nothing to attend to
            return self.to_out(torch.zeros_like(_merge_heads(q)))
        k, v = (_split_heads(t, self.heads) for t in self.to_kv(media.flatten(1, 2)).chunk(2, dim=-1))  # (Bm, h, M·n, d)
        if Bm != B:
            k, v = k.repeat_interleave(B // Bm, dim=0), v.repeat_interleave(B // Bm, dim=0)
        scores = q @ k.transpose(-1, -2)  # (B, h, T, M·n)
        image_of_key = torch.arange(1, M + 1, device=x.device).repeat_interleave(n)  # (M·n,)
        tt = text_time.to(x.device)[:, None, :, None]
        allowed = tt == image_of_key if self.only_attend_immediate_media else tt >= image_of_key
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=-1)
        if self.only_attend_immediate_media:
            weights = weights * (tt > 0).to(weights.dtype)
        return self.to_out(_merge_heads(weights @ v))


class GatedCrossAttentionBlock(nn.Module):
    """x + tanh(attn_gate)·xattn(x, media); then x + tanh(ff_gate)·ff(x). Gates start at 0."""

    def __init__(self, dim: int, dim_visual: int, dim_head: int = 64, heads: int = 8, ff_mult: int = 4, only_attend_immediate_media: bool = True) -> None:
        super().__init__()
        self.attn = MaskedCrossAttention(dim, dim_visual, dim_head, heads, only_attend_immediate_media)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff = FeedForward(dim, ff_mult)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, media: torch.Tensor, text_time: torch.Tensor) -> torch.Tensor:
        x = x + self.attn_gate.tanh() * self.attn(x, media, text_time)
        return x + self.ff_gate.tanh() * self.ff(x)


class FlamingoDecoderLayer(nn.Module):
    """A language-model decoder layer, preceded by a gated cross-attention block (or not).

    Media and text times arrive as the keyword arguments ``flamingo_media`` / ``flamingo_text_time``
    that transformers passes through to every decoder layer; they are not forwarded further.
    """

    def __init__(self, gated_cross_attn_layer: GatedCrossAttentionBlock | None, decoder_layer: nn.Module) -> None:
        super().__init__()
        self.gated_cross_attn_layer = gated_cross_attn_layer
        self.decoder_layer = decoder_layer

    def forward(self, hidden_states: torch.Tensor, *args: Any, flamingo_media: torch.Tensor | None = None, flamingo_text_time: torch.Tensor | None = None, **kwargs: Any):
        if self.gated_cross_attn_layer is not None:
            if flamingo_media is None or flamingo_text_time is None:
                raise ValueError("OpenFlamingo's cross-attention layers need media and text times: call the OpenFlamingo module, not its lang_encoder")
            hidden_states = self.gated_cross_attn_layer(hidden_states, flamingo_media, flamingo_text_time)
        return self.decoder_layer(hidden_states, *args, **kwargs)


# --------------------------------------------------------------------------------------------------
# The whole model
# --------------------------------------------------------------------------------------------------


@dataclass
class FlamingoConfig:
    """The Flamingo-specific sizes; defaults are OpenFlamingo v2's (its code does not expose them)."""

    cross_attn_every_n_layers: int = 1
    perceiver_depth: int = 6
    perceiver_heads: int = 8
    perceiver_dim_head: int = 64
    num_latents: int = 64
    cross_heads: int = 8
    cross_dim_head: int = 64
    ff_mult: int = 4
    only_attend_immediate_media: bool = True
    media_token_id: int = -1
    eoc_token_id: int = -1
    decoder_layers_attr: str = "gpt_neox.layers"
    vision: dict = field(default_factory=dict)


class _ConfigView:
    """``module.config``: the LMM base class hashes ``config.to_dict()`` to identify the model."""

    def __init__(self, model: "OpenFlamingo") -> None:
        self._model = model

    def to_dict(self) -> dict:
        lang = self._model.lang_encoder.config.to_dict()
        lang = {k: v for k, v in lang.items() if k not in ("_name_or_path", "transformers_version", "torch_dtype", "dtype")}
        return {"model_type": "openflamingo", **asdict(self._model.flamingo_config), "lang_encoder": lang}


def _get_attr(obj: Any, path: str) -> Any:
    for p in path.split("."):
        obj = getattr(obj, p)
    return obj


class OpenFlamingo(nn.Module):
    """Vision encoder → Perceiver resampler → a causal LM with gated cross-attention blocks.

    ``vision_encoder(pixels (N, 3, S, S)) -> (N, v, vis_dim)``; ``lang_encoder`` a transformers
    ``GPTNeoXForCausalLM`` (its decoder layers are wrapped in place). ``cfg.media_token_id`` is the
    id of ``<image>`` in the tokenizer.
    """

    def __init__(self, vision_encoder: nn.Module, lang_encoder: nn.Module, vis_dim: int, cfg: FlamingoConfig) -> None:
        super().__init__()
        if cfg.media_token_id < 0:
            raise ValueError("FlamingoConfig.media_token_id must be the tokenizer's id of <image>")
        self.flamingo_config = cfg
        self.vis_dim = vis_dim
        self.vision_encoder = vision_encoder
        self.perceiver = PerceiverResampler(vis_dim, cfg.perceiver_depth, cfg.perceiver_dim_head, cfg.perceiver_heads, cfg.num_latents, cfg.ff_mult)
        self.lang_encoder = lang_encoder
        D = lang_encoder.config.hidden_size
        n = cfg.cross_attn_every_n_layers
        parent_path, _, name = cfg.decoder_layers_attr.rpartition(".")
        parent = _get_attr(lang_encoder, parent_path) if parent_path else lang_encoder
        layers = getattr(parent, name)
        if layers and isinstance(layers[0], FlamingoDecoderLayer):
            raise ValueError("this language model already carries Flamingo layers")
        wrapped = [
            FlamingoDecoderLayer(
                GatedCrossAttentionBlock(D, vis_dim, cfg.cross_dim_head, cfg.cross_heads, cfg.ff_mult, cfg.only_attend_immediate_media) if (i + 1) % n == 0 else None,
                layer,
            )
            for i, layer in enumerate(layers)
        ]
        setattr(parent, name, nn.ModuleList(wrapped))
        self.config = _ConfigView(self)

    # --- structure ----------------------------------------------------------------------------
    @property
    def decoder_layers(self) -> nn.ModuleList:
        return _get_attr(self.lang_encoder, self.flamingo_config.decoder_layers_attr)

    @property
    def cross_layer_indices(self) -> list[int]:
        """Decoder layers that carry a gated cross-attention block, in order."""
        return [i for i, l in enumerate(self.decoder_layers) if l.gated_cross_attn_layer is not None]

    # --- running ------------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) pixels → (N, num_latents, vis_dim) resampled features, one row per image."""
        tokens = self.vision_encoder(pixel_values)
        if isinstance(tokens, (tuple, list)):  # an open_clip VisionTransformer with output_tokens
            tokens = tokens[1]
        return self.perceiver(tokens)

    def text_time(self, input_ids: torch.Tensor) -> torch.Tensor:
        return media_text_time(input_ids, self.flamingo_config.media_token_id)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        media: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        text_time: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
        use_cache: bool = False,
        labels: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ):
        """Causal-LM output (``.logits`` (B, T, V), ``.cache``).

        Images: ``media`` (B', M, num_latents, vis_dim) already resampled (B' = B, or B / R when
        each prompt's text row is repeated R times), or ``pixel_values`` (B, M, 3, S, S); the m-th
        ``<image>`` token of a row refers to its m-th image (rows with fewer images are
        zero-padded). ``text_time`` (B, T) defaults to the ``<image>`` count of ``input_ids``; pass
        it when ``input_ids`` is only the tail of a prompt whose head is in ``cache``.
        ``logits_to_keep`` = n > 0: logits of the last n positions only.
        """
        if media is None:
            if pixel_values is None:
                raise ValueError("OpenFlamingo needs images: pass media or pixel_values")
            B, M = pixel_values.shape[:2]
            media = self.encode_images(pixel_values.flatten(0, 1)).unflatten(0, (B, M))
        if text_time is None:
            text_time = self.text_time(input_ids)
        return self.lang_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            labels=labels,
            flamingo_media=media,
            flamingo_text_time=text_time,
            **({"logits_to_keep": logits_to_keep} if logits_to_keep else {}),
        )
