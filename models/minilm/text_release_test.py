"""MiniLM's text front end in the release: the gate's text check and the service's text requests.

The tokenizer ships in the bundle (model_package(bundle_files = [tokenizer.json])); the gate loads
it from the bundle's files, and the service turns {"texts": [...]} into tokens with it through the
front end the build's serving signature declares (modelgate.serve.text: no model code), which the
gate checks against the model's own. Token ids stay accepted. The served end to end with text
(promote, fetch, serve minilm's release): //tests/serve:package_test.
"""

import dataclasses

import numpy as np
import pytest
import torch

from models.minilm import spec as minilm_spec
from models.minilm.model import MiniLM
from modelgate import gate
from modelgate.errors import InputError
from modelgate.serve import schema
from modelgate.serve.signature import Signature, TensorSig, TextFrontEnd
from modelgate.serve.text import Tokenizer

SPEC = minilm_spec.SPEC
TOKENIZER = minilm_spec.text_encoder().path
FRONT = TextFrontEnd("tokenizers", "tokenizer.json", SPEC.text.max_tokens, SPEC.text.pad_id, SPEC.text.ids_input, SPEC.text.mask_input)
SIGNATURE = Signature(
    model_file="model.onnx",
    inputs=tuple(TensorSig(t.name, t.dtype, t.shape, t.low, t.high) for t in SPEC.inputs),
    outputs=(TensorSig("embeddings", "float32", (None, 384)),),
    text=FRONT,
    tolerances={"embeddings": {"atol": 1e-5, "rtol": 1e-4}},
)


def to_tensors(signature, payload, encode):
    return schema.to_arrays("minilm", signature, payload, encode)


@pytest.fixture(scope="module")
def encode():
    """The service's front end, as the build declares it."""
    return Tokenizer(TOKENIZER.parent, FRONT)


def test_schema_says_the_model_takes_text_and_token_ids():
    described = schema.describe("minilm", SIGNATURE)
    assert described["text"] == {
        "request": '{"texts": ["a sentence", ...]}',
        "max_tokens": 256,
        "over_length": "refused",
        "files": ["tokenizer.json"],
        "inputs_also_accepted": True,
    }
    assert [i["name"] for i in described["inputs"]] == ["tokens", "mask"]


def test_texts_become_the_inputs_the_golden_data_was_made_from(encode):
    arrays = to_tensors(SIGNATURE, {"texts": list(minilm_spec.GOLDEN_TEXTS)}, encode)
    golden = minilm_spec.golden_inputs()
    assert np.array_equal(arrays["tokens"], golden["tokens"][:-1].numpy()) and np.array_equal(arrays["mask"], golden["mask"][:-1].numpy())


def test_token_ids_are_still_accepted(encode):
    arrays = to_tensors(SIGNATURE, {"inputs": {"tokens": [[101, 7592, 102]], "mask": [[True, True, True]]}}, encode)
    assert arrays["tokens"].tolist() == [[101, 7592, 102]]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"texts": ["word " * 300]}, r"text 0 is 302 tokens long; the model takes at most 256 \(refused, not truncated\)"),
        ({"texts": ["fine", ""]}, "text 1 is empty"),
        ({"texts": ["hi"], "inputs": {}}, "a request gives texts or inputs, not both"),
        ({"texts": "hi"}, "'texts' must be a list of strings"),
        ({"texts": ["hi", None]}, "'texts' must be a list of strings"),
        ({"texts": []}, "no texts given"),
    ],
)
def test_bad_text_requests_are_one_422_line(encode, payload, message):
    with pytest.raises(InputError, match=message) as caught:
        to_tensors(SIGNATURE, payload, encode)
    assert caught.value.status == 422 and "\n" not in caught.value.message


def test_a_model_without_a_text_front_end_refuses_texts():
    plain = dataclasses.replace(SIGNATURE, text=None)
    with pytest.raises(InputError, match="model minilm takes no text: expected"):
        to_tensors(plain, {"texts": ["hi"]}, None)
    assert "text" not in schema.describe("minilm", plain)


def test_the_gate_checks_the_declared_front_end_against_the_models_own(encode):
    bundle = TOKENIZER.parent
    assert gate._compare_front_ends(SPEC, encode, bundle) is None
    other_pad = Tokenizer(bundle, dataclasses.replace(FRONT, pad_id=1))
    assert gate._compare_front_ends(SPEC, other_pad, bundle).startswith("input 'tokens': int64[3, ")
    longer = Tokenizer(bundle, dataclasses.replace(FRONT, max_tokens=1000))
    assert gate._compare_front_ends(SPEC, longer, bundle) == "a text of 264 words is refused by the model's front end only"


def _small_model():
    torch.manual_seed(0)
    return MiniLM(minilm_spec._model_config({**minilm_spec.CONFIG, "num_layers": 1})).eval()


def test_the_gate_checks_the_tokenizer_the_bundle_ships():
    check = gate.check_text(SPEC, _small_model(), {"tokenizer.json": TOKENIZER})
    assert check.passed, check.detail
    assert check.detail.startswith("tokenizer.json loads; a sample text -> tokens[1, ")


def test_the_gate_fails_a_release_without_its_tokenizer():
    check = gate.check_text(SPEC, _small_model(), {})
    assert not check.passed
    assert check.detail == "the spec's text input needs tokenizer.json in the bundle; give it as bundle_files"


def test_the_gate_fails_a_tokenizer_that_does_not_load(tmp_path):
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not json")
    check = gate.check_text(SPEC, _small_model(), {"tokenizer.json": broken})
    assert not check.passed and check.detail.startswith("tokenizer.json: Exception: ")
