"""mmfv-tiny's word-level tokenizer: every object name and relation word is one token.

``<image>`` in text expands into ``grid²`` image-patch slots that the model fills with image
features. The vocabulary is saved beside the weights (``vocab.json``).
"""

from __future__ import annotations

import re
from pathlib import Path

from mmfv import relations as R
from mmfv.data import scenes as S

SPECIALS = ("<pad>", "<bos>", "<img>", "<|endofchunk|>", "Q:", "A:", ".")
PAD, BOS, IMG, EOC, Q, A, DOT = range(len(SPECIALS))


class TinyTokenizer:
    """Encode Flamingo-template text to ids; object names are single tokens."""

    def __init__(self, vocab: list[str], patches_per_image: int) -> None:
        self.vocab = list(vocab)
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        self.patches_per_image = patches_per_image
        words = sorted((w for w in self.vocab if w not in ("<pad>", "<bos>", "<img>")), key=len, reverse=True)
        self._re = re.compile("|".join(["<image>"] + [re.escape(w) for w in words]))

    @classmethod
    def default(cls, patches_per_image: int) -> "TinyTokenizer":
        return cls([*SPECIALS, *R.SPATIAL, *S.OBJECTS], patches_per_image)

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, bos: bool = True) -> list[int]:
        """Ids for ``text``; raises on any word outside the vocabulary."""
        out = [BOS] if bos else []
        pos = 0
        for m in self._re.finditer(text):
            gap = text[pos : m.start()]
            if gap.strip():
                raise ValueError(f"mmfv-tiny's tokenizer does not know {gap.strip()!r}: it reads only object names, relation words and the prompt template")
            tok = m.group(0)
            out.extend([IMG] * self.patches_per_image if tok == "<image>" else [self.ids[tok]])
            pos = m.end()
        if text[pos:].strip():
            raise ValueError(f"mmfv-tiny's tokenizer does not know {text[pos:].strip()!r}: it reads only object names, relation words and the prompt template")
        return out

    def token_id(self, word: str) -> int:
        """Id of a single word (an object name for scoring)."""
        w = word.strip()
        if w not in self.ids:
            raise ValueError(f"{w!r} is not one token of mmfv-tiny's vocabulary")
        return self.ids[w]

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.vocab[i] for i in ids if i not in (PAD, BOS))

    def save(self, folder: str | Path) -> None:
        from mmfv.io import write_json

        write_json(Path(folder) / "vocab.json", {"vocab": self.vocab, "patches_per_image": self.patches_per_image})

    @classmethod
    def load(cls, folder: str | Path) -> "TinyTokenizer":
        path = Path(folder) / "vocab.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: not an mmfv-tiny checkpoint folder")
        from mmfv.io import read_json

        d = read_json(path, "restore the model folder (copy it again, or retrain with mmfv train-tiny)")
        try:
            return cls(d["vocab"], d["patches_per_image"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path} is damaged ({type(e).__name__}: {e}): restore the model folder") from None
