"""The Hugging Face processor side of models/hf.py: loading a family's processor (with a fallback
when a sub-processor cannot load) and running it on one image.

Running it on one image gives that image's pixel inputs and the text its placeholder expands to,
recorded from the processor's own call to its tokenizer, so the expansion is exactly the
processor's. The adapter caches both per image.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from pathlib import Path
from typing import Any, Iterator

import torch
from PIL import Image

from mmfv.models.specs.spec import Spec


@contextlib.contextmanager
def lenient_subprocessors() -> Iterator[None]:
    """Let a processor be built with a sub-processor set to None (e.g. no video processor).

    Video processors need torchvision; image-only use never touches them, but ProcessorMixin checks
    every sub-processor's class, and that check fails for None when torchvision is missing.
    """
    from transformers.processing_utils import ProcessorMixin

    orig = ProcessorMixin.check_argument_for_proper_class

    def check(self, name, arg):
        return None if arg is None else orig(self, name, arg)

    ProcessorMixin.check_argument_for_proper_class = check
    try:
        yield
    finally:
        ProcessorMixin.check_argument_for_proper_class = orig


def load_processor(name: str, spec: Spec, gguf_file: str | None = None) -> Any:
    """AutoProcessor, or (when a sub-processor cannot load, e.g. video without torchvision) the spec's
    processor class built from its image processor and tokenizer with the rest left None. A
    text-only family's processor is its tokenizer (from the GGUF file when ``gguf_file`` is given)."""
    import transformers
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    if not spec.images:
        return AutoTokenizer.from_pretrained(name, **({"gguf_file": gguf_file} if gguf_file else {}))
    try:
        return AutoProcessor.from_pretrained(name)
    except (ImportError, ValueError, AttributeError, TypeError, OSError) as e:
        if spec.processor_class is None:
            raise
        first = e
    cls = getattr(transformers, spec.processor_class)
    params = inspect.signature(cls.__init__).parameters
    parts = {"image_processor": AutoImageProcessor.from_pretrained(name), "tokenizer": AutoTokenizer.from_pretrained(name)}
    parts.update({k: None for k in params if k.endswith("_processor") and k not in parts})  # e.g. video_processor
    extra = {}
    cfg = _processor_config(name)
    if cfg is not None:
        extra = {k: v for k, v in json.loads(Path(cfg).read_text()).items() if k in params and k not in parts}
    try:
        with lenient_subprocessors():
            return cls(**parts, **extra)
    except Exception as e:  # report both failures: the first names the real cause
        raise RuntimeError(f"cannot build a {spec.processor_class} for {name}: {_first_line(first)}; then: {_first_line(e)}") from e


def _processor_config(name: str) -> str | None:
    """Path of the model's processor_config.json (local folder or HF cache), or None."""
    local = Path(name) / "processor_config.json"
    if local.exists():
        return str(local)
    from transformers.utils import cached_file

    try:
        return cached_file(name, "processor_config.json", _raise_exceptions_for_missing_entries=False)
    except OSError:
        return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class _RecordingTokenizer:
    """Stands in for a processor's tokenizer during one call: records the text and kwargs it gets."""

    def __init__(self, tok: Any) -> None:
        self._tok = tok
        self.calls: list[tuple[Any, dict]] = []

    def __call__(self, *args, **kwargs):
        text = kwargs.get("text", args[0] if args else None)
        self.calls.append((text, kwargs))
        return self._tok(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)


def process_one_image(processor: Any, tok: Any, spec: Spec, image: Image.Image, pair: bool) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Run the family's processor on one image: ``(text, outputs, text_kwargs)``.

    ``text``: what the template's image placeholder becomes; ``outputs``: the processor's per-image
    outputs (pixels and the like, no token ids); ``text_kwargs``: the tokenizer kwargs the processor
    used, for tokenizing whole prompts alike. ``pair``: process the image as one of two (a
    ``multi_image`` family's several-image prompt); outputs then hold both copies (see
    :func:`first_half`).
    """
    imgs = [image] * (2 if pair else 1)
    placeholder = spec.template.image_token
    if spec.expand:
        recorder = _RecordingTokenizer(tok)
        processor.tokenizer = recorder
        try:
            out = processor(text=[placeholder * len(imgs)], images=[imgs], return_tensors="pt")
        finally:
            processor.tokenizer = tok
        batched = [c for c in recorder.calls if isinstance(c[0], (list, tuple)) and len(c[0]) == 1]
        text, kwargs = (batched or recorder.calls)[-1]  # the call that tokenized our one-sample batch
        text = text[0] if isinstance(text, (list, tuple)) else text
        if pair:
            if text[: len(text) // 2] * 2 != text:
                raise RuntimeError(f"{spec.family}: the processor expanded two copies of one image differently")
            text = text[: len(text) // 2]
        text_kwargs = {k: v for k, v in kwargs.items() if k not in ("text", "return_tensors", "padding", "padding_side")}
    else:
        out = processor.image_processor(imgs, return_tensors="pt")
        text = placeholder
        text_kwargs = dict(spec.text_kwargs)
    out = {"pixel_values": out} if isinstance(out, torch.Tensor) else dict(out)  # some image processors return the tensor
    for k in ("input_ids", "attention_mask", spec.token_types, *spec.token_keys):
        out.pop(k, None)
    return text, out, text_kwargs


def first_half(v: Any) -> Any:
    """The first of two equal images' worth of a processor output or vision feature."""
    if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], type):  # (output class, fields)
        return (v[0], {k: first_half(x) for k, x in v[1].items()})
    if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] % 2 == 0:
        return v[: v.shape[0] // 2]
    if isinstance(v, (list, tuple)) and v and isinstance(v[0], torch.Tensor) and len(v) % 2 == 0:
        return type(v)(v[: len(v) // 2])
    if isinstance(v, (list, tuple)) and v and isinstance(v[0], (list, tuple)):
        return type(v)(first_half(x) for x in v)
    return v


def chat_text(processor: Any, tok: Any, prompt: Any, model_id: str) -> str:
    """The paper's Qwen chat prompt for ``prompt`` (:func:`mmfv.prompts.fu2025_chat`) rendered by the
    processor's (else the tokenizer's) chat template, with the generation prompt, as text."""
    from mmfv.prompts import fu2025_chat

    owner = processor if getattr(processor, "chat_template", None) else tok
    if not getattr(owner, "chat_template", None):
        raise ValueError(f"{model_id} has no chat template, which protocol fu2025 applies to Qwen models: use a checkpoint that ships one")
    return owner.apply_chat_template(fu2025_chat(prompt), tokenize=False, add_generation_prompt=True)
