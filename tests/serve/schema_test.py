"""JSON -> arrays for /predict, checked against a build's serving signature: what is accepted,
and the message for what is not."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from modelgate.serve.schema import InputError, parse_json, to_arrays, to_json_outputs
from modelgate.serve.signature import Signature, TensorSig

SIGNATURE = Signature(
    model_file="model.onnx",
    inputs=(TensorSig("tokens", "int64", (None, None), 0, 32), TensorSig("mask", "bool", (None, None))),
    outputs=(TensorSig("logits", "float32", (None, 4)),),
    text=None,
    tolerances={"logits": {"atol": 1e-5, "rtol": 1e-4}},
)


def to_tensors(signature, payload):
    return to_arrays("tiny_transformer", signature, payload)


def request(tokens, mask):
    return {"inputs": {"tokens": tokens, "mask": mask}}


def test_a_valid_request_becomes_typed_tensors():
    arrays = to_tensors(SIGNATURE, request([[1, 2, 0]], [[True, True, False]]))
    assert arrays["tokens"].dtype == np.int64 and arrays["tokens"].tolist() == [[1, 2, 0]]
    assert arrays["mask"].dtype == np.bool_ and arrays["mask"].shape == (1, 3)


@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "empty request body"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe", "not"),
        (b'{"inputs": {"tokens": [[NaN]]}}', "NaN is not allowed"),
        (b'{"inputs": {"tokens": [[Infinity]]}}', "Infinity is not allowed"),
    ],
)
def test_bodies_that_are_not_json_are_400(body, message):
    with pytest.raises(InputError) as e:
        parse_json(body)
    assert e.value.status == 400 and message in e.value.message


@pytest.mark.parametrize(
    "payload, message",
    [
        ([1, 2], 'expected a JSON object {"inputs": {"tokens": <int64 (N, N)>, "mask": <bool (N, N)>}}'),
        ({"tokens": [[1]], "mask": [[True]]}, 'expected a JSON object {"inputs"'),
        ({"inputs": {"tokens": [[1]], "mask": [[True]]}, "extra": 1}, "unknown field 'extra'"),
        ({"inputs": {"tokens": [[1]]}}, "missing input 'mask' (bool, shape (N, N))"),
        ({"inputs": {"tokens": [[1]], "mask": [[True]], "tokenz": [[1]]}}, "unknown input 'tokenz'; the model's inputs are tokens, mask"),
        (request([[1, 2.5]], [[True, True]]), "input 'tokens': expected integers (int64), found 2.5 at tokens[0][1]"),
        (request([[1, True]], [[True, True]]), "input 'tokens': expected integers (int64), found true at tokens[0][1]"),
        (request([[1, "2"]], [[True, True]]), 'found "2" at tokens[0][1]'),
        (request([[1, None]], [[True, True]]), "found null at tokens[0][1]"),
        (request([[1, 2]], [[1, 0]]), "input 'mask': expected booleans (true/false) (bool), found 1 at mask[0][0]"),
        (request([[1, 2], [3]], [[True, True], [True]]), "input 'tokens': ragged array: tokens[1] has 1 items, expected 2"),
        (request([[1, [2]]], [[True, True]]), "input 'tokens': ragged array: tokens[0][1] is a list"),
        (request([1, 2], [True, True]), "input 'tokens': 1 dimensions, expected 2 (N, N)"),
        (request([[[1]]], [[[True]]]), "input 'tokens': more than 2 dimensions"),
        (request(5, True), "input 'tokens': 0 dimensions, expected 2"),
        (request([[]], [[]]), "input 'tokens': empty (size 0 on axis 1)"),
        (request([[1, 32]], [[True, True]]), "input 'tokens': values must lie in [0, 32)"),
        (request([[1, -1]], [[True, True]]), "values must lie in [0, 32)"),
        (request([[1, 2**70]], [[True, True]]), "input 'tokens': a value does not fit int64"),
        (request([[1, 2], [3, 4]], [[True, True]]), "inputs disagree on the batch size (axis 0): tokens has 2, mask has 1"),
    ],
)
def test_inputs_that_do_not_fit_the_model_are_422_naming_the_input(payload, message):
    with pytest.raises(InputError) as e:
        to_tensors(SIGNATURE, payload)
    assert e.value.status == 422
    assert message in e.value.message, e.value.message


def test_float_inputs_take_integers_and_floats_but_not_booleans():
    spec = dataclasses.replace(SIGNATURE, inputs=(TensorSig("x", "float32", (None, 2)),))
    assert to_tensors(spec, {"inputs": {"x": [[1, 2.5]]}})["x"].tolist() == [[1.0, 2.5]]
    with pytest.raises(InputError, match=r"expected numbers \(float32\), found false at x\[0\]\[1\]"):
        to_tensors(spec, {"inputs": {"x": [[1, False]]}})
    with pytest.raises(InputError, match=r"input 'x': values must be finite in float32"):
        to_tensors(spec, {"inputs": {"x": [[1, parse_json(b"1e400")]]}})
    with pytest.raises(InputError, match=r"size 3 on axis 1, expected \(N, 2\)"):
        to_tensors(spec, {"inputs": {"x": [[1, 2, 3]]}})


def test_non_finite_outputs_are_the_models_fault():
    with pytest.raises(RuntimeError, match="non-finite values in output 'logits'"):
        to_json_outputs({"logits": np.array([1.0, float("nan")], dtype=np.float32)})
