"""Model-logic tests for TinyTransformer: the checks ordinary unit tests skip."""

import pytest
import torch

from models.tiny_transformer.model import MaskedSelfAttention, TinyTransformer, TinyTransformerConfig, padding_mask
from modelgate import checks

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
    checks.assert_shape(attn(x, mask), (2, 10, 64), "attention output")


def test_model_output_shape():
    tokens, mask = _batch()
    checks.assert_shape(_model()(tokens, mask), (3, CONFIG.num_classes), "logits")


_real_tokens = checks.real_tokens(1, CONFIG.vocab_size)  # padding replaced by real (non-pad) token ids


def test_padded_positions_do_not_change_real_outputs():
    model = _model()
    tokens, mask = _batch()
    inputs = {"tokens": tokens, "mask": mask}
    # Per-token features are compared at real positions, the pooled logits whole.
    checks.assert_mask_invariance(model.encode, inputs, mask, perturb=_real_tokens, name="features")
    checks.assert_mask_invariance(model, inputs, mask, perturb=_real_tokens, name="logits")


def test_mask_is_applied_to_keys():
    """Without the mask, padding would leak in: the test above must be able to fail."""
    tokens, mask = _batch()
    checks.assert_mask_is_used(_model().encode, {"tokens": tokens, "mask": mask}, mask, perturb=_real_tokens, name="features")


def test_fully_padded_row_is_finite():
    model = _model()
    tokens = torch.zeros(2, 6, dtype=torch.long)
    tokens[0, :4] = torch.tensor([3, 5, 7, 9])
    mask = tokens != CONFIG.pad_id
    with torch.no_grad():
        logits = model(tokens, mask)
        features = model.encode(tokens, mask)
    checks.assert_finite(logits, "logits with a fully padded row")
    checks.assert_finite(features, "features with a fully padded row")


def test_gradients_are_finite_and_reach_every_parameter():
    model = _model().train()
    tokens, mask = _batch()
    tokens[2] = CONFIG.pad_id  # include a fully padded row
    mask[2] = False
    loss = torch.nn.functional.cross_entropy(model(tokens, mask), torch.tensor([0, 1, 2]))
    checks.assert_gradients_finite(model, loss)


def test_same_seed_same_output():
    checks.assert_seeded_model(_model, _batch(), seeds=(7, 8))


def test_rejects_sequences_longer_than_max_len():
    tokens = torch.ones(1, CONFIG.max_len + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="exceeds max_len"):
        _model()(tokens)


def _golden_like_batch():
    """Padded rows of several lengths and a fully padded one, as in the golden data."""
    tokens, mask = _batch(seed=5)
    return {
        "tokens": torch.cat([tokens, torch.zeros_like(tokens[:1])]),
        "mask": torch.cat([mask, torch.zeros_like(mask[:1])]),
    }


def test_bfloat16_autocast_on_cpu_stays_close_to_float32():
    checks.dtype_sweep(_model(), _golden_like_batch(), dtypes=("float32", "bfloat16"), device="cpu", name="logits")


@checks.cuda_test
def test_cpu_cuda_parity_in_float32():
    checks.assert_cpu_cuda_parity(_model(), _golden_like_batch(), name="logits")


@checks.cuda_test
def test_autocast_dtype_sweep_on_cuda():
    checks.dtype_sweep(_model(), _golden_like_batch(), device="cuda", name="logits")
