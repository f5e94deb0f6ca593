"""A GRU classifier for variable-length time series, with masking instead of packed sequences.

Series in a batch are padded to a common length; `lengths` says how many steps of each are real.
Padding must not influence the result, and three places could let it in: the per-series
normalization (its statistics), the pooling over time, and the choice of the "last" step. Each
uses the mask explicitly. The GRU runs over the padded batch (it is causal, so real steps never
see later padding) and the last real step is gathered, rather than using pack_padded_sequence,
which torch.onnx.export does not handle well.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class SequenceRNNConfig:
    input_size: int = 1
    hidden_size: int = 32
    num_layers: int = 2
    num_classes: int = 4
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def padding_mask(lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Bool mask (batch, seq_len), True for the first `length` steps of each row."""
    return torch.arange(seq_len, device=lengths.device)[None, :] < lengths[:, None]


def masked_standardize(series: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each series scaled to zero mean and unit std over its real steps; padded steps become 0.

    Padding is removed with torch.where, not by multiplying with the mask: Inf or NaN padding
    times zero is NaN. Dividing by the largest magnitude first keeps values up to float32's
    limit from overflowing when squared. A constant or length-1 series gives zeros, not NaN, and
    the variance is clamped before the square root, whose derivative at 0 is infinite.
    """
    real = mask.unsqueeze(-1).expand_as(series)
    x = torch.where(real, series, torch.zeros_like(series))
    x = x / x.abs().amax(dim=(1, 2), keepdim=True).clamp(min=eps)
    count = real.sum(dim=(1, 2), keepdim=True).to(x.dtype).clamp(min=1.0)
    centered = torch.where(real, x - x.sum(dim=(1, 2), keepdim=True) / count, torch.zeros_like(x))
    variance = centered.square().sum(dim=(1, 2), keepdim=True) / count
    return centered / variance.clamp(min=eps * eps).sqrt()


class SequenceRNN(nn.Module):
    """Series (batch, seq, input_size) float32 and lengths (batch,) int64 -> logits (batch, num_classes).

    Lengths below 1 are treated as 1; lengths above seq are treated as seq.
    """

    def __init__(self, config: SequenceRNNConfig | None = None):
        super().__init__()
        self.config = config or SequenceRNNConfig()
        c = self.config
        self.input_proj = nn.Linear(c.input_size, c.hidden_size)
        self.gru = nn.GRU(
            c.hidden_size,
            c.hidden_size,
            num_layers=c.num_layers,
            batch_first=True,
            dropout=c.dropout if c.num_layers > 1 else 0.0,
        )
        # Features: the last real step's state and the mean state over real steps.
        self.head = nn.Sequential(
            nn.LayerNorm(2 * c.hidden_size),
            nn.Linear(2 * c.hidden_size, c.hidden_size),
            nn.GELU(),
            nn.Dropout(c.dropout),
            nn.Linear(c.hidden_size, c.num_classes),
        )

    def forward(self, series: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        c = self.config
        if series.dim() != 3 or series.shape[-1] != c.input_size:
            raise ValueError(f"series must be (batch, seq, {c.input_size}), got shape {tuple(series.shape)}")
        if lengths.dim() != 1 or lengths.shape[0] != series.shape[0]:
            raise ValueError(f"lengths must be (batch,) = ({series.shape[0]},), got shape {tuple(lengths.shape)}")
        seq_len = series.shape[1]
        lengths = lengths.clamp(min=1, max=seq_len)
        mask = padding_mask(lengths, seq_len)
        x = masked_standardize(series, mask)
        states, _ = self.gru(self.input_proj(x))  # (batch, seq, hidden)
        last_index = (lengths - 1).view(-1, 1, 1).expand(-1, 1, states.shape[-1])
        last = states.gather(1, last_index).squeeze(1)
        keep = mask.unsqueeze(-1).to(states.dtype)
        mean = (states * keep).sum(1) / keep.sum(1)
        return self.head(torch.cat([last, mean], dim=-1))
