"""A four-input linear model for tests of export and gate that need some model, not a real one."""

import torch


class ScaledLinear(torch.nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)
        self.scale = scale

    def forward(self, x):
        return self.fc(x) * self.scale
