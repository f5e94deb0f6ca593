"""A small residual CNN image classifier: conv/batchnorm/ReLU blocks, global pooling, linear head.

Shaped like the convolutional backbones people ship (a stem, residual blocks, a strided
downsampling block, global average pooling), at a size that trains in seconds on one CPU
thread. Batchnorm is the part to watch: in training mode it normalizes with the batch's own
statistics, so a model left in train mode gives outputs that depend on the rest of the batch.
Everything here exports with torch.onnx.export (Conv, BatchNormalization, Relu, ReduceMean, Gemm).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ImageCNNConfig:
    in_channels: int = 1
    image_size: int = 16
    width: int = 16  # channels of the stem and first residual block; doubled after downsampling
    num_classes: int = 4
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class ConvBNReLU(nn.Sequential):
    """3x3 convolution (no bias: batchnorm has one), batchnorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    """Two 3x3 conv/batchnorm layers with an identity shortcut (ResNet's basic block)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = ConvBNReLU(channels, channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.bn2(self.conv2(self.conv1(x))))


class ImageCNN(nn.Module):
    """Images (batch, channels, size, size), float32 -> class logits (batch, num_classes)."""

    def __init__(self, config: ImageCNNConfig | None = None):
        super().__init__()
        self.config = config or ImageCNNConfig()
        c = self.config
        self.features = nn.Sequential(
            ConvBNReLU(c.in_channels, c.width),
            ResidualBlock(c.width),
            ConvBNReLU(c.width, 2 * c.width, stride=2),
            ResidualBlock(2 * c.width),
        )
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(2 * c.width, c.num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        c = self.config
        if images.dim() != 4 or images.shape[1] != c.in_channels:
            raise ValueError(f"images must be (batch, {c.in_channels}, height, width), got shape {tuple(images.shape)}")
        features = self.features(images)
        pooled = features.mean(dim=(2, 3))  # global average pooling: any image size works
        return self.head(self.dropout(pooled))
