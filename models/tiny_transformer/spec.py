"""TinyTransformer for modelgate: data it generates itself, deterministic training, evaluation.

Task: each sequence is dominated by tokens of one of four groups (token % 4); the label is that
group. Sequences have random lengths and are padded, so a model that attends to padding learns
a worse function and its golden outputs move.
"""

from __future__ import annotations

import torch

from models.tiny_transformer.model import TinyTransformer, TinyTransformerConfig, padding_mask
from modelgate.spec import MetricGate, ModelSpec, TensorSpec
from modelgate.training import Classifier, model_config

CONFIG = {
    **TinyTransformerConfig().to_dict(),
    "seed": 1234,
    "steps": 250,
    "batch_size": 64,
    "lr": 3e-3,
    "weight_decay": 0.01,
    "dominance": 0.6,
}


def make_batch(config, size: int, generator: torch.Generator):
    """(tokens, mask, labels): padded sequences whose dominant token group is the label."""
    c = model_config(TinyTransformerConfig, config)
    seq = c.max_len
    labels = torch.randint(0, c.num_classes, (size,), generator=generator)
    lengths = torch.randint(5, seq + 1, (size,), generator=generator)
    tokens = torch.randint(1, c.vocab_size, (size, seq), generator=generator)
    # Replace a share of positions with tokens of the label's group (token % num_classes == label).
    dominant = torch.rand(size, seq, generator=generator) < float(config["dominance"])
    group_tokens = torch.randint(0, (c.vocab_size - 1) // c.num_classes, (size, seq), generator=generator) * c.num_classes
    group_tokens = group_tokens + labels[:, None]
    group_tokens = torch.where(group_tokens == 0, torch.full_like(group_tokens, c.num_classes), group_tokens)
    tokens = torch.where(dominant, group_tokens, tokens)
    mask = padding_mask(lengths, seq)
    return tokens.masked_fill(~mask, c.pad_id), mask, labels


CLASSIFIER = Classifier(TinyTransformer, TinyTransformerConfig, make_batch)


def golden_inputs() -> dict:
    generator = torch.Generator().manual_seed(20261127)
    tokens, mask, _ = make_batch(CONFIG, 8, generator)
    tokens[-1] = CONFIG["pad_id"]  # a fully padded row must stay finite
    mask[-1] = False
    return {"tokens": tokens, "mask": mask}


SPEC = ModelSpec(
    name="tiny_transformer",
    config=CONFIG,
    build=CLASSIFIER.build,
    train=CLASSIFIER.train,
    inputs=(
        TensorSpec("tokens", "int64", (None, None), low=0, high=CONFIG["vocab_size"]),
        TensorSpec("mask", "bool", (None, None)),
    ),
    outputs=("logits",),
    golden_inputs=golden_inputs,
    evaluate=CLASSIFIER.evaluate,
    metrics={
        "accuracy": MetricGate(floor=0.9, max_regression=0.02),
        "loss": MetricGate(floor=0.5, max_regression=0.05, higher_is_better=False),
    },
)
