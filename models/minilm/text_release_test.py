"""MiniLM's text front end in the release: the gate's text check and the service's text requests.

The tokenizer ships in the bundle (model_package(bundle_files = [tokenizer.json])); the gate loads
it from the bundle's files, and /predict turns {"texts": [...]} into tokens with it. Token ids stay
accepted. Not covered here: the served end to end with text (promote, fetch, serve a minilm build).
"""

import dataclasses

import pytest
import torch

from models.minilm import spec as minilm_spec
from models.minilm.model import MiniLM
from modelgate import gate
from modelgate.errors import InputError
from modelgate.serve import schema

SPEC = minilm_spec.SPEC
TOKENIZER = minilm_spec.text_encoder().path


@pytest.fixture(scope="module")
def encode():
    return SPEC.text.load(TOKENIZER.parent)


def test_schema_says_the_model_takes_text_and_token_ids():
    described = schema.describe(SPEC)
    assert described["text"] == {
        "request": '{"texts": ["a sentence", ...]}',
        "max_tokens": 256,
        "over_length": "refused",
        "files": ["tokenizer.json"],
        "inputs_also_accepted": True,
    }
    assert [i["name"] for i in described["inputs"]] == ["tokens", "mask"]


def test_texts_become_the_inputs_the_golden_data_was_made_from(encode):
    tensors = schema.to_tensors(SPEC, {"texts": list(minilm_spec.GOLDEN_TEXTS)}, encode)
    golden = minilm_spec.golden_inputs()
    assert torch.equal(tensors["tokens"], golden["tokens"][:-1]) and torch.equal(tensors["mask"], golden["mask"][:-1])


def test_token_ids_are_still_accepted(encode):
    tensors = schema.to_tensors(SPEC, {"inputs": {"tokens": [[101, 7592, 102]], "mask": [[True, True, True]]}}, encode)
    assert tensors["tokens"].tolist() == [[101, 7592, 102]]


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
        schema.to_tensors(SPEC, payload, encode)
    assert caught.value.status == 422 and "\n" not in caught.value.message


def test_a_model_without_a_text_front_end_refuses_texts():
    plain = dataclasses.replace(SPEC, text=None)
    with pytest.raises(InputError, match="model minilm takes no text: expected"):
        schema.to_tensors(plain, {"texts": ["hi"]}, None)
    assert "text" not in schema.describe(plain)


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
