"""ImageCNN for modelgate: images it generates itself, deterministic training, evaluation.

Task: each 16x16 grayscale image is a noisy stripe pattern; the label is the stripe orientation
(0 horizontal, 1 vertical, 2 diagonal, 3 anti-diagonal). Period, phase, contrast and brightness
vary per image and Gaussian noise is added, so no single pixel gives the answer away: the
network has to combine neighbourhoods, which is what the convolutions are for.
"""

from __future__ import annotations

import math

import torch

from models.image_cnn.model import ImageCNN, ImageCNNConfig
from modelgate.spec import MetricGate, ModelSpec, TensorSpec
from modelgate.training import Classifier

CONFIG = {
    **ImageCNNConfig().to_dict(),
    "seed": 4321,
    "steps": 100,
    "batch_size": 32,
    "lr": 3e-3,
    "weight_decay": 0.01,
    "noise": 0.8,  # std of the pixel noise; the stripes' amplitude is 0.5 to 1.5
    "min_period": 3.0,
    "max_period": 8.0,
}

ORIENTATIONS = ("horizontal", "vertical", "diagonal", "anti-diagonal")


def make_batch(config, size: int, generator: torch.Generator):
    """(images (size, 1, n, n) float32, labels (size,) int64): striped images, label = orientation."""
    n = int(config["image_size"])
    labels = torch.randint(0, len(ORIENTATIONS), (size,), generator=generator)
    ys, xs = torch.meshgrid(torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32), indexing="ij")
    # The coordinate the intensity varies along, one per orientation.
    along = torch.stack([ys, xs, (xs + ys) / math.sqrt(2.0), (xs - ys) / math.sqrt(2.0)])[labels]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(size, 1, 1, generator=generator)

    period = uniform(float(config["min_period"]), float(config["max_period"]))
    phase = uniform(0.0, 2 * math.pi)
    amplitude = uniform(0.5, 1.5)
    brightness = uniform(-0.5, 0.5)
    stripes = brightness + amplitude * torch.sin(2 * math.pi * along / period + phase)
    noise = float(config["noise"]) * torch.randn(size, n, n, generator=generator)
    return (stripes + noise).unsqueeze(1), labels


CLASSIFIER = Classifier(ImageCNN, ImageCNNConfig, make_batch)


def golden_inputs() -> dict:
    generator = torch.Generator().manual_seed(20261127)
    images, _ = make_batch(CONFIG, 8, generator)
    images[-1] = 0.0  # a blank image must give finite logits
    return {"images": images}


SPEC = ModelSpec(
    name="image_cnn",
    config=CONFIG,
    build=CLASSIFIER.build,
    train=CLASSIFIER.train,
    inputs=(
        TensorSpec("images", "float32", (None, CONFIG["in_channels"], CONFIG["image_size"], CONFIG["image_size"])),
    ),
    outputs=("logits",),
    golden_inputs=golden_inputs,
    evaluate=CLASSIFIER.evaluate,
    metrics={
        "accuracy": MetricGate(floor=0.9, max_regression=0.02),
        "loss": MetricGate(floor=0.5, max_regression=0.05, higher_is_better=False),
    },
)
