"""Model-logic tests for TinyTransformer: the checks ordinary unit tests skip."""

import pytest
import torch

from models.tiny_transformer.model import MaskedSelfAttention, TinyTransformer, TinyTransformerConfig, padding_mask

CONFIG = TinyTransformerConfig()


def _model(seed: int = 0) -> TinyTransformer:
    torch.manual_seed(seed)
    return TinyTransformer(CONFIG).eval()


def _batch(seed: int = 1, batch: int = 3, seq: int = 10):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, CONFIG.vocab_size, (batch, seq), generator=g)
    lengths = torch.tensor([seq, seq - 3, 1][:batch])
    mask = padding_mask(lengths, seq)
    return tokens.masked_fill(~mask, CONFIG.pad_id), mask


def test_attention_output_shape():
    attn = MaskedSelfAttention(d_model=64, num_heads=4)
    x = torch.randn(2, 10, 64)
    mask = torch.ones(2, 10, dtype=torch.bool)
    assert attn(x, mask).shape == (2, 10, 64)


def test_model_output_shape():
    tokens, mask = _batch()
    assert _model()(tokens, mask).shape == (3, CONFIG.num_classes)


def test_padded_positions_do_not_change_real_outputs():
    model = _model()
    tokens, mask = _batch()
    noisy = tokens.clone()
    noisy[~mask] = torch.randint(1, CONFIG.vocab_size, (int((~mask).sum()),))
    with torch.no_grad():
        clean_features = model.encode(tokens, mask)
        noisy_features = model.encode(noisy, mask)
        clean_logits = model(tokens, mask)
        noisy_logits = model(noisy, mask)
    torch.testing.assert_close(noisy_features[mask], clean_features[mask], rtol=0, atol=1e-6)
    torch.testing.assert_close(noisy_logits, clean_logits, rtol=0, atol=1e-6)


def test_mask_is_applied_to_keys():
    """Without the mask, padding would leak in: the test above must be able to fail."""
    model = _model()
    tokens, mask = _batch()
    noisy = tokens.clone()
    noisy[~mask] = (tokens[~mask] % (CONFIG.vocab_size - 1)) + 1
    with torch.no_grad():
        unmasked = torch.ones_like(mask)
        a = model.encode(tokens, unmasked)[mask]
        b = model.encode(noisy, unmasked)[mask]
    assert (a - b).abs().max() > 1e-4


def test_fully_padded_row_is_finite():
    model = _model()
    tokens = torch.zeros(2, 6, dtype=torch.long)
    tokens[0, :4] = torch.tensor([3, 5, 7, 9])
    mask = tokens != CONFIG.pad_id
    with torch.no_grad():
        logits = model(tokens, mask)
        features = model.encode(tokens, mask)
    assert torch.isfinite(logits).all(), f"non-finite logits: {logits}"
    assert torch.isfinite(features).all()


def test_gradients_are_finite_and_reach_every_parameter():
    model = _model().train()
    tokens, mask = _batch()
    tokens[2] = CONFIG.pad_id  # include a fully padded row
    mask[2] = False
    loss = torch.nn.functional.cross_entropy(model(tokens, mask), torch.tensor([0, 1, 2]))
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has non-finite gradients"


def test_same_seed_same_output():
    tokens, mask = _batch()
    with torch.no_grad():
        first = _model(seed=7)(tokens, mask)
        second = _model(seed=7)(tokens, mask)
        other = _model(seed=8)(tokens, mask)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_rejects_sequences_longer_than_max_len():
    tokens = torch.ones(1, CONFIG.max_len + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="exceeds max_len"):
        _model()(tokens)
