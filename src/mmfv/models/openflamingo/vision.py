"""OpenFlamingo's vision side: a CLIP ViT in open_clip's module layout, and its image preprocessing.

OpenFlamingo uses the ViT's *patch tokens* (the CLS token dropped). open_clip < 2.23 (OpenFlamingo
v2's training time) returns them straight from the last block; open_clip >= 2.23 applies
``ln_post`` first; ``VisionConfig.tokens_after_ln_post`` selects the behaviour (default: the one
OpenFlamingo was trained with).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class VisionConfig:
    """A CLIP ViT; the defaults are OpenAI ViT-L/14 as OpenFlamingo v2 uses it."""

    image_size: int = 224
    patch_size: int = 14
    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_ratio: float = 4.0
    output_dim: int = 768
    act: str = "quick_gelu"  # OpenAI CLIP weights; "gelu" for LAION-trained open_clip models
    tokens_after_ln_post: bool = False  # open_clip >= 2.23 behaviour; OpenFlamingo v2 trained without
    layer_norm_eps: float = 1e-5
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


class QuickGELU(nn.Module):
    """x · sigmoid(1.702 x), the activation OpenAI's CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def _activation(name: str) -> nn.Module:
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown vision activation {name!r}: use 'quick_gelu' or 'gelu'")


class _ClipMLP(nn.Module):
    def __init__(self, width: int, hidden: int, act: str) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = _activation(act)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class _ClipBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.attn = nn.MultiheadAttention(cfg.width, cfg.heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.mlp = _ClipMLP(cfg.width, int(cfg.width * cfg.mlp_ratio), cfg.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _ClipBlocks(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(_ClipBlock(cfg) for _ in range(cfg.layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.resblocks:
            x = blk(x)
        return x


class ClipVisionEncoder(nn.Module):
    """CLIP ViT returning the patch tokens ``(N, grid², width)`` of ``(N, 3, S, S)`` pixels.

    Parameter names are open_clip's ``VisionTransformer`` (``conv1``, ``class_embedding``,
    ``positional_embedding``, ``ln_pre``, ``transformer.resblocks.{i}.{ln_1,attn,ln_2,mlp.c_fc,
    mlp.c_proj}``, ``ln_post``, ``proj``), so open_clip / OpenAI state dicts load directly
    (``ln_post`` and ``proj`` only serve :meth:`pooled`).
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.conv1 = nn.Conv2d(3, w, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(w) * w**-0.5)
        self.positional_embedding = nn.Parameter(torch.randn(cfg.grid**2 + 1, w) * w**-0.5)
        self.ln_pre = nn.LayerNorm(w, eps=cfg.layer_norm_eps)
        self.transformer = _ClipBlocks(cfg)
        self.ln_post = nn.LayerNorm(w, eps=cfg.layer_norm_eps)
        self.proj = nn.Parameter(torch.randn(w, cfg.output_dim) * w**-0.5)

    @property
    def out_dim(self) -> int:
        return self.cfg.width

    def _hidden(self, pixel_values: torch.Tensor) -> torch.Tensor:
        S = self.cfg.image_size
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (3, S, S):
            raise ValueError(f"the vision encoder takes (N, 3, {S}, {S}) pixels, got {tuple(pixel_values.shape)}")
        x = self.conv1(pixel_values.to(self.conv1.weight.dtype)).flatten(2).transpose(1, 2)  # (N, g², w)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.transformer(self.ln_pre(x))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self._hidden(pixel_values)
        if self.cfg.tokens_after_ln_post:
            x = self.ln_post(x)
        return x[:, 1:]

    def pooled(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The CLIP image embedding (CLS token → ln_post → proj); not used by Flamingo."""
        return self.ln_post(self._hidden(pixel_values)[:, 0]) @ self.proj


class ClipImageProcessor:
    """open_clip's eval transform without torchvision: shorter side to ``size`` (bicubic), centre
    crop ``size``², RGB, [0, 1], normalise. Matches torchvision's Resize/CenterCrop on PIL images."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    @classmethod
    def for_vision(cls, cfg: VisionConfig) -> "ClipImageProcessor":
        return cls(cfg.image_size, cfg.mean, cfg.std)

    def one(self, image: Image.Image) -> torch.Tensor:
        s = self.size
        w, h = image.size
        if (w, h) != (s, s):
            if w <= h:
                nw, nh = s, int(s * h / w)
            else:
                nw, nh = int(s * w / h), s
            if (nw, nh) != (w, h):
                image = image.resize((nw, nh), Image.BICUBIC)
            top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
            image = image.crop((left, top, left + s, top + s))
        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1)
        return (x - self.mean) / self.std

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.one(im) for im in images])
