"""SequenceRNN for modelgate: series it generates itself, deterministic training, evaluation.

Task: each series is one waveform (0 sine, 1 square, 2 sawtooth, 3 white noise) with a random
period, phase, amplitude (0.1 to 10, log-uniform) and offset, plus a little noise, observed for
a random number of steps and zero-padded to a common length. Telling sine from square or
sawtooth takes the shape of a whole cycle, so the model must read the series over time; and since
lengths vary, a model that lets padding in learns a worse function and its golden outputs move.
"""

from __future__ import annotations

import math

import torch

from models.sequence_rnn.model import SequenceRNN, SequenceRNNConfig, padding_mask
from modelgate.spec import MetricGate, ModelSpec, TensorSpec
from modelgate.training import Classifier

CONFIG = {
    **SequenceRNNConfig().to_dict(),
    "seed": 2718,
    "steps": 120,
    "batch_size": 32,
    "lr": 5e-3,
    "weight_decay": 0.01,
    "clip_grad_norm": 1.0,
    "max_len": 32,
    "min_len": 12,
    "min_period": 4.0,
    "max_period": 12.0,
    "noise": 0.1,  # relative to the amplitude
}

WAVEFORMS = ("sine", "square", "sawtooth", "noise")


def make_batch(config, size: int, generator: torch.Generator):
    """(series (size, max_len, 1) float32, lengths (size,) int64, labels (size,) int64), zero-padded."""
    seq_len = int(config["max_len"])
    labels = torch.randint(0, len(WAVEFORMS), (size,), generator=generator)
    lengths = torch.randint(int(config["min_len"]), seq_len + 1, (size,), generator=generator)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(size, 1, generator=generator)

    period = uniform(float(config["min_period"]), float(config["max_period"]))
    cycle = (torch.arange(seq_len, dtype=torch.float32)[None, :] / period + uniform(0.0, 1.0)) % 1.0
    waves = torch.stack(
        [
            torch.sin(2 * math.pi * cycle),
            torch.where(cycle < 0.5, 1.0, -1.0),
            2.0 * cycle - 1.0,
            torch.randn(size, seq_len, generator=generator),
        ]
    )[labels, torch.arange(size)]
    amplitude = torch.exp(uniform(math.log(0.1), math.log(10.0)))
    offset = amplitude * uniform(-1.0, 1.0)
    noise = float(config["noise"]) * torch.randn(size, seq_len, generator=generator)
    series = offset + amplitude * (waves + noise)
    series = series.masked_fill(~padding_mask(lengths, seq_len), 0.0)
    return series.unsqueeze(-1), lengths, labels


CLASSIFIER = Classifier(SequenceRNN, SequenceRNNConfig, make_batch, clip_grad_norm="clip_grad_norm")


def golden_inputs() -> dict:
    generator = torch.Generator().manual_seed(20261127)
    series, lengths, _ = make_batch(CONFIG, 8, generator)
    lengths[-1] = 1  # a length-1 series must give finite logits
    series[-1, 1:] = 0.0
    return {"series": series, "lengths": lengths}


SPEC = ModelSpec(
    name="sequence_rnn",
    config=CONFIG,
    build=CLASSIFIER.build,
    train=CLASSIFIER.train,
    inputs=(
        TensorSpec("series", "float32", (None, None, CONFIG["input_size"])),
        TensorSpec("lengths", "int64", (None,), low=1, high=CONFIG["max_len"] + 1),
    ),
    outputs=("logits",),
    golden_inputs=golden_inputs,
    evaluate=CLASSIFIER.evaluate,
    metrics={
        "accuracy": MetricGate(floor=0.9, max_regression=0.02),
        "loss": MetricGate(floor=0.3, max_regression=0.05, higher_is_better=False),
    },
)
