"""Deterministic training and evaluation loops shared by classifier specs.

A spec supplies `make_batch(config, size, generator) -> (*inputs, labels)`; these run the same
loop for every model, so a model's spec says only what is particular to it. `Classifier` gives
such a spec its build, train and evaluate from its model, the model's config dataclass and
make_batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F

MakeBatch = Callable[[Mapping[str, object], int, torch.Generator], tuple]

EVAL_SIZE = 512


def train_classifier(model: torch.nn.Module, config: Mapping[str, object], make_batch: MakeBatch, clip_grad_norm: float | None = None) -> dict:
    """AdamW on cross-entropy over `config["steps"]` generated batches (seed + 1); leaves the model
    in eval mode (batchnorm on its running statistics). Batches are generated on the CPU (the same
    data on every device) and moved to the model's device, so `:train` can run on a GPU."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(int(config["seed"]) + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(config["lr"]), weight_decay=float(config["weight_decay"]))
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(int(config["steps"])):
        *inputs, labels = make_batch(config, int(config["batch_size"]), generator)
        if device.type != "cpu":
            inputs, labels = [t.to(device) for t in inputs], labels.to(device)
        loss = F.cross_entropy(model(*inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        if clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
    model.eval()
    return {"final_train_loss": loss.item()}


def evaluate_classifier(model: torch.nn.Module, config: Mapping[str, object], make_batch: MakeBatch) -> dict:
    """Accuracy and cross-entropy on a held-out generated set (seed + 2)."""
    generator = torch.Generator().manual_seed(int(config["seed"]) + 2)
    *inputs, labels = make_batch(config, EVAL_SIZE, generator)
    model.eval()
    with torch.no_grad():
        logits = model(*inputs)
    return {
        "accuracy": float((logits.argmax(-1) == labels).float().mean()),
        "loss": float(F.cross_entropy(logits, labels)),
    }


def model_config(config_type: type, config: Mapping[str, object]):
    """The model's own hyperparameters out of a spec's config: the fields of the dataclass `config_type`."""
    fields = config_type.__dataclass_fields__
    return config_type(**{k: v for k, v in config.items() if k in fields})


@dataclass(frozen=True)
class Classifier:
    """The build, train and evaluate of a classifier trained on data it generates.

    model: the torch.nn.Module class, built from config_type (a dataclass of its hyperparameters,
        read out of the spec's config by model_config) after torch is seeded with config["seed"].
    make_batch: as train_classifier and evaluate_classifier take it.
    clip_grad_norm: the config key of the gradient-norm clip, for a model that clips.
    """

    model: Callable[[object], torch.nn.Module]
    config_type: type
    make_batch: MakeBatch
    clip_grad_norm: str | None = None

    def build(self, config: Mapping[str, object]) -> torch.nn.Module:
        torch.manual_seed(int(config["seed"]))
        return self.model(model_config(self.config_type, config))

    def train(self, model: torch.nn.Module, config: Mapping[str, object]) -> dict:
        """Trains in place; leaves the model in eval mode (batchnorm on its running statistics)."""
        clip = float(config[self.clip_grad_norm]) if self.clip_grad_norm else None
        return train_classifier(model, config, self.make_batch, clip_grad_norm=clip)

    def evaluate(self, model: torch.nn.Module, config: Mapping[str, object]) -> dict:
        return evaluate_classifier(model, config, self.make_batch)
