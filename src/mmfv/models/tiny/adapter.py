"""mmfv-tiny behind the LMM protocol: load (package data or a folder), encode, run, score."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from mmfv.io import read_json
from mmfv.models.base import LMM, Batch, FeatureCache, LastSteps, Prefix
from mmfv.models.tiny.image_kv import KVStore, text_forward
from mmfv.models.tiny.modeling import MmfvTinyConfig, MmfvTinyForCausalLM, image_groups_of, rope_angles
from mmfv.models.tiny.tokenizer import BOS, PAD, TinyTokenizer
from mmfv.models.tiny.batches import pixels_of
from mmfv.prompts import FLAMINGO, Prompt

REQUIRED_FILES = ("config.json", "model.safetensors", "vocab.json")
KV_IMAGES = 2048
"""Images whose per-layer keys/values are kept (LRU; ~150 KB each for the shipped model)."""
FIX = "restore the model folder (copy it again, or retrain with mmfv train-tiny)"


def packaged_weights() -> Path:
    """Folder of the shipped mmfv-tiny checkpoint."""
    return Path(str(resources.files("mmfv.models.tiny") / "weights"))


def check_folder(folder: Path) -> None:
    """One-line errors for a folder that is not a complete mmfv-tiny checkpoint."""
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist: pass --model tiny or a checkpoint folder")
    missing = [f for f in REQUIRED_FILES if not (folder / f).exists()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a complete mmfv-tiny checkpoint: missing {', '.join(missing)}")
    cfg = read_json(folder / "config.json", FIX)
    mt = cfg.get("model_type") if isinstance(cfg, dict) else None
    if mt != MmfvTinyConfig.model_type:
        raise ValueError(f"{folder} holds a {mt!r} model, not mmfv_tiny: load it as an HF model instead")
    try:
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            f.keys()
    except Exception as e:  # noqa: BLE001 - a damaged or truncated file reads the same to the user
        raise ValueError(f"{folder / 'model.safetensors'} is damaged or truncated ({type(e).__name__}): {FIX}") from None


def _hooked(module: nn.Module) -> bool:
    """Whether any forward hook (on ``module``'s tree, or global) would see this forward."""
    from torch.nn.modules import module as M

    if M._global_forward_hooks or M._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


class TinyLMM(LMM):
    """mmfv-tiny as an :class:`LMM`. Image features are cached per image id (LRU)."""

    def __init__(self, model: MmfvTinyForCausalLM, tokenizer: TinyTokenizer, model_id: str = "mmfv-tiny", card: dict | None = None, cache_images: int = 4096,
                 image_kv: bool = True) -> None:
        self.module = model.eval()
        self.tok = tokenizer
        self.model_id = model_id
        self.template = FLAMINGO
        self.card = card or {}
        self._feat_cache = FeatureCache(cache_images)  # image id -> (grid², D)
        self.image_kv = image_kv
        """Plain forwards without hooks or gradients run only the text tokens over per-image cached
        keys/values (models/tiny/image_kv.py; local image attention only). False: the full forward, the reference."""
        self._kv = KVStore(min(cache_images, KV_IMAGES))

    @classmethod
    def load(cls, path: str | Path = "tiny") -> "TinyLMM":
        folder = packaged_weights() if str(path) in ("tiny", "mmfv-tiny") else Path(path)
        check_folder(folder)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        model = MmfvTinyForCausalLM.from_pretrained(folder)
        card = read_json(folder / "card.json", FIX) if (folder / "card.json").exists() else {}
        if not isinstance(card, dict):
            raise ValueError(f"{folder / 'card.json'} is damaged (not a JSON object): {FIX}")
        return cls(model, TinyTokenizer.load(folder), "mmfv-tiny" if str(path) in ("tiny", "mmfv-tiny") else str(path), card)

    @property
    def config(self) -> MmfvTinyConfig:
        return self.module.config

    @property
    def n_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def head_dim(self) -> int:
        return self.module.model.layers[0].self_attn.head_dim

    def o_proj(self, layer: int, head_set: str = "self") -> nn.Linear:
        if head_set != "self":
            raise KeyError(f"mmfv-tiny has only the 'self' head set, not {head_set!r}")
        return self.module.model.layers[layer].self_attn.o_proj

    def decoder_layer(self, layer: int) -> nn.Module:
        return self.module.model.layers[layer]

    def scene_config(self):
        """The scene config mmfv-tiny was trained on (its images must look like these)."""
        from mmfv.data.scenes import SceneConfig

        sc = self.card.get("scene_config")
        return SceneConfig(**sc) if sc else SceneConfig(grid=self.config.grid, cell_px=self.config.cell_px)

    # --- encoding -----------------------------------------------------------------------------
    def image_features(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        """(n_images, grid², D) for every image of ``prompts`` in order, each encoded once."""
        need = self._feat_cache.missing(it for p in prompts for it in p.items)
        if need:
            with torch.no_grad():
                feats = self.module.encode_images(pixels_of([it.load_image() for it in need.values()]))
            for iid, f in zip(need, feats):
                self._feat_cache.put(iid, f)
        return torch.stack([self._feat_cache[it.image_id] for p in prompts for it in p.items])

    def encode(self, prompts: Sequence[Prompt]) -> Batch:
        if not prompts:
            raise ValueError("no prompts to encode")
        seqs = [self.tok.encode(self.template.render(p)) for p in prompts]
        T = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), T), PAD, dtype=torch.long)
        mask = torch.zeros((len(seqs), T), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, T - len(s) :] = torch.tensor(s)
            mask[i, T - len(s) :] = 1
        answers = torch.tensor([self.answer_token_id(p.answer) for p in prompts])
        feats = self.image_features(prompts)
        return Batch({"input_ids": ids, "attention_mask": mask, "image_features": feats}, answers, list(prompts))

    def answer_token_id(self, answer_text: str) -> int:
        return self.tok.token_id(answer_text)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)

    # --- running ------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> torch.Tensor:
        return self.module(**batch.inputs)["logits"]

    def last_logits(self, batch: Batch) -> torch.Tensor:
        """Logits (B, V) of the last position only (the LM head skips the others)."""
        if self._reuse_images(batch):
            h, _ = text_forward(self.module, batch.inputs["input_ids"], batch.inputs["attention_mask"], *self._images_kv(batch))
            return self.module.unembed(h)
        return self.module(**batch.inputs, logits_to_keep=1)["logits"][:, -1]

    def prefix(self, batch: Batch) -> Prefix:
        inp = batch.inputs
        ids, mask = inp["input_ids"], inp["attention_mask"]
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        if self._reuse_images(batch) and ids.shape[1] > 1:
            _, cache = text_forward(self.module, ids[:, :-1], mask[:, :-1], *self._images_kv(batch), keep_cache=True)
            last = {"inputs_embeds": self.module.model.embed_tokens(ids[:, -1:]), "attention_mask": mask, "position_ids": pos[:, -1:]}
            return Prefix(cache, last, batch.size)
        embeds = self.module.model.embed(ids, inp["image_features"])  # (B, T, D)
        groups = image_groups_of(ids[:, :-1], self.config.image_token_id)
        out = self.module(inputs_embeds=embeds[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1], use_cache=True, image_groups=groups)
        last = {"inputs_embeds": embeds[:, -1:], "attention_mask": mask, "position_ids": pos[:, -1:]}
        return Prefix(out["past_key_values"], last, batch.size)

    def _reuse_images(self, batch: Batch) -> bool:
        """Whether this call may take the image-KV path: switched on, local image attention, no
        gradients and no hooks (which expect every position), images known by id, prompts ending
        with a text token (the last position is never a patch)."""
        if not (self.image_kv and self.config.image_attention == "local") or torch.is_grad_enabled() or _hooked(self.module) or not batch.prompts:
            return False
        is_img = batch.inputs["input_ids"] == self.config.image_token_id
        n = sum(len(p.items) for p in batch.prompts)
        return "image_features" in batch.inputs and int(is_img.sum()) == n * self.config.patches_per_image and not bool(is_img[:, -1].any())

    def _images_kv(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The image key/value buffer and the rows (n,) of the batch's n images in slot order."""
        order = [it.image_id for p in batch.prompts for it in p.items]
        rows = self._kv.rows(self.module, order, batch.inputs["image_features"])
        return self._kv.buf, rows

    def last(self, prefix: Prefix, repeats: int) -> torch.Tensor:
        # The cache stays (N, H, P, d): the attention reads it once per prompt for all its rows.
        rep = lambda t: t.repeat_interleave(repeats, dim=0)  # noqa: E731
        li = prefix.last_inputs
        cache = prefix.cache
        if repeats == 1:
            cache = [(k, v) for k, v in cache]
        out = self.module(inputs_embeds=rep(li["inputs_embeds"]), attention_mask=rep(li["attention_mask"]), position_ids=rep(li["position_ids"]), past_key_values=cache)
        return out["logits"][:, -1]

    def last_steps(self, prefix: Prefix) -> LastSteps:
        return _TinySteps(self.module, prefix)

    def forward_with_suffix(self, batch: Batch, suffix_ids: list[int]) -> torch.Tensor:
        inp = dict(batch.inputs)
        if suffix_ids:
            s = torch.tensor([suffix_ids]).expand(batch.size, -1)
            inp["input_ids"] = torch.cat([inp["input_ids"], s], 1)
            inp["attention_mask"] = torch.cat([inp["attention_mask"], torch.ones_like(s)], 1)
        return self.module(**inp)["logits"]


class _TinySteps(LastSteps):
    """mmfv-tiny's last token layer by layer: the same layer calls, mask and positions as
    :meth:`TinyLMM.last` (one decoder layer at a time instead of the whole stack)."""

    def __init__(self, model: MmfvTinyForCausalLM, prefix: Prefix) -> None:
        li = prefix.last_inputs
        self.size = prefix.size
        self._model, self._cache = model, prefix.cache  # per layer (k, v), each (N, H, P, d)
        self._x = li["inputs_embeds"][:, 0]  # (N, D)
        pos = li["position_ids"]  # (N, 1)
        P = self._cache[0][0].shape[2]
        mask = model.model.build_mask(self.size, 1, P, self._x.device, li["attention_mask"])  # (N, 1, 1, P+1)
        rope = rope_angles(pos, model.config.head_dim, model.config.rope_theta, self._x.dtype)  # shared by every layer
        self._rows = {1: (pos, mask, rope)}  # repeats -> the row-repeated (positions, mask, rope angles)

    def embed(self) -> torch.Tensor:
        return self._x

    def layer(self, layer: int, hidden: torch.Tensor, repeats: int = 1) -> torch.Tensor:
        if repeats not in self._rows:
            pos, mask, (cos, sin) = self._rows[1]
            rep = lambda t: t.repeat_interleave(repeats, dim=0)  # noqa: E731
            self._rows[repeats] = (rep(pos), rep(mask), (rep(cos), rep(sin)))
        pos, mask, rope = self._rows[repeats]
        x, _ = self._model.model.layers[layer](hidden[:, None], pos, mask, self._cache[layer], rope)
        return x[:, 0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._model.unembed(self._model.model.norm(hidden))
