"""A small transformer encoder for sequence classification, with a custom masked attention.

The attention layer is written out (not nn.MultiheadAttention) because it is the part whose
bugs ordinary tests miss: a padding mask applied to the wrong axis, or a fully padded row
that turns into NaN, still produces tensors of the right shape.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TinyTransformerConfig:
    vocab_size: int = 32
    max_len: int = 16
    d_model: int = 32
    num_heads: int = 4
    num_layers: int = 2
    d_ff: int = 64
    num_classes: int = 4
    dropout: float = 0.0
    pad_id: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class MaskedSelfAttention(nn.Module):
    """Multi-head self-attention that ignores padded keys.

    `mask` is a bool tensor of shape (batch, seq) that is True where a token is real. Padded
    keys get no attention weight; a row with no real token yields zeros instead of NaN.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, seq, d_model = x.shape
        q, k, v = self.qkv(x).view(batch, seq, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (batch, heads, seq, seq)
        if mask is not None:
            keep = mask[:, None, None, :]  # broadcast over heads and query positions
            scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1)
        if mask is not None:
            # Rows whose keys are all padding would otherwise spread weight uniformly over padding.
            weights = weights * mask[:, None, None, :].to(weights.dtype)
        weights = self.dropout(weights)
        context = (weights @ v).transpose(1, 2).reshape(batch, seq, d_model)
        return self.out(context)


class EncoderLayer(nn.Module):
    """Pre-norm transformer block: masked attention, then a feed-forward network."""

    def __init__(self, config: TinyTransformerConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.d_model)
        self.attn = MaskedSelfAttention(config.d_model, config.num_heads, config.dropout)
        self.norm2 = nn.LayerNorm(config.d_model)
        self.ff = nn.Sequential(
            nn.Linear(config.d_model, config.d_ff),
            nn.GELU(),
            nn.Linear(config.d_ff, config.d_model),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.ff(self.norm2(x))


class TinyTransformer(nn.Module):
    """Token ids (batch, seq) and a padding mask -> class logits (batch, num_classes)."""

    def __init__(self, config: TinyTransformerConfig | None = None):
        super().__init__()
        self.config = config or TinyTransformerConfig()
        c = self.config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.pos = nn.Parameter(torch.zeros(c.max_len, c.d_model))
        self.layers = nn.ModuleList(EncoderLayer(c) for _ in range(c.num_layers))
        self.norm = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.num_classes)
        nn.init.normal_(self.pos, std=0.02)

    def encode(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token features (batch, seq, d_model)."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, seq), got shape {tuple(tokens.shape)}")
        if tokens.shape[1] > self.config.max_len:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_len {self.config.max_len}")
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            mask = tokens != self.config.pad_id
        features = self.encode(tokens, mask)
        # Mean over real tokens only; a fully padded row pools to zeros.
        weights = mask.to(features.dtype).unsqueeze(-1)
        pooled = (features * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.head(pooled)


def padding_mask(lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Bool mask (batch, seq_len), True for the first `length` positions of each row."""
    return torch.arange(seq_len)[None, :] < lengths[:, None]
