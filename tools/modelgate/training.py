"""Deterministic training and evaluation loops shared by classifier specs.

A spec supplies `make_batch(config, size, generator) -> (*inputs, labels)`; these run the same
loop for every model, so a model's spec says only what is particular to it.
"""

from __future__ import annotations

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
