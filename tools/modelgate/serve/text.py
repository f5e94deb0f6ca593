"""Texts -> a model's inputs with the tokenizer file a build ships (signature.TextFrontEnd).

The front end is declared in the build's manifest, not written in model code, so the service runs
it without importing models/: the `tokenizers` library reads the bundle's tokenizer.json, padding
and truncation off; ids are right-padded with pad_id to the batch's longest text and a bool mask
marks the real tokens. A text over max_tokens is refused, not truncated (an embedding of a cut
text answers another question). The release gate checks that this front end gives the same
inputs as the model's own (ModelSpec.text) before a build can be promoted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from modelgate.serve.signature import TextFrontEnd

MAX_TEXTS = 1024


class TextRefused(ValueError):
    """A text the model cannot take (empty, too long, not a string): the message names which."""


class Tokenizer:
    def __init__(self, directory: str | Path, front: TextFrontEnd):
        from tokenizers import Tokenizer as HFTokenizer

        self.front = front
        self.tokenizer = HFTokenizer.from_file(str(Path(directory) / front.file))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TextRefused("texts must be a list of strings")
        if not texts:
            raise TextRefused("no texts given")
        if len(texts) > MAX_TEXTS:
            raise TextRefused(f"{len(texts)} texts in one request; at most {MAX_TEXTS}")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TextRefused(f"text {i} is a {type(text).__name__}, not a string")
            if not text.strip():
                raise TextRefused(f"text {i} is empty")
        encoded = [e.ids for e in self.tokenizer.encode_batch(list(texts))]
        for i, ids in enumerate(encoded):
            if len(ids) > self.front.max_tokens:
                raise TextRefused(
                    f"text {i} is {len(ids)} tokens long; the model takes at most {self.front.max_tokens} (refused, not truncated)"
                )
        return encoded

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        encoded = self.ids(texts)
        seq = max(len(ids) for ids in encoded)
        tokens = np.full((len(encoded), seq), self.front.pad_id, dtype=np.int64)
        mask = np.zeros((len(encoded), seq), dtype=bool)
        for row, ids in enumerate(encoded):
            tokens[row, : len(ids)] = ids
            mask[row, : len(ids)] = True
        return {self.front.ids_input: tokens, self.front.mask_input: mask}
