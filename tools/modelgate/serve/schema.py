"""JSON <-> arrays for /predict, using the serving build's signature; every refusal says what to fix.

Request:   {"inputs": {"tokens": [[3, 7, 0]], "mask": [[true, true, false]]}}
       or   {"texts": ["a sentence"]} for a build with a text front end (its tokenizer ships in
            the build's bundle; signature.TextFrontEnd)
Response:  {"model": ..., "tag": ..., "build_hash": ..., "outputs": {"logits": [[...]]}}

Values are nested JSON arrays. Integer inputs take JSON integers only (no 1.0, no true), bool
inputs take true/false only, float inputs take numbers; NaN and Infinity are refused. Shapes,
datatypes and value ranges are checked against the build's signature (what the build itself
declares, not this checkout's model code) before the model sees anything. numpy only.
"""

from __future__ import annotations

import json
import re
from typing import Mapping

import numpy as np
import orjson

from modelgate.errors import InputError
from modelgate.serve.signature import Signature, TensorSig

# A request is {"inputs": {name: nested lists}}: a few levels deeper than the deepest input.
MAX_JSON_DEPTH = 32


# JSON leaf types each datatype accepts. bool is excluded from the integer types on purpose
# (type(True) is bool, so a `type(x) in ...` check does not let it pass as an int).
_INT = (int,)
_FLOAT = (int, float)
_LEAF_TYPES = {
    "int64": _INT, "int32": _INT, "int16": _INT, "int8": _INT, "uint8": _INT,
    "bool": (bool,),
    "float64": _FLOAT, "float32": _FLOAT, "float16": _FLOAT,
}  # fmt: skip
_LEAF_WORDS = {"bool": "booleans (true/false)", **{k: "integers" for k in ("int64", "int32", "int16", "int8", "uint8")}}


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed (JSON numbers must be finite)")


def parse_json(body: bytes) -> object:
    """The request body as JSON; 400 with the parser's reason when it is not JSON."""
    if not body.strip():
        raise InputError(400, "empty request body: expected JSON")
    if _deeper_than(body, MAX_JSON_DEPTH):
        raise InputError(400, f"request body is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return orjson.loads(body)  # 4x json.loads; strict RFC 8259 (no NaN, no Infinity)
    except orjson.JSONDecodeError:
        pass  # json.loads says why, or takes what orjson does not (2**70, 1e400: refused later, with their own message)
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise InputError(400, "request body is not UTF-8 JSON") from None
    except RecursionError:
        raise InputError(400, f"request body is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as e:
        raise InputError(400, f"request body is not valid JSON: {e}") from None


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET_STEP = np.zeros(256, dtype=np.int8)
_BRACKET_STEP[[0x5B, 0x7B]], _BRACKET_STEP[[0x5D, 0x7D]] = 1, -1  # [ { open, ] } close


def _deeper_than(body: bytes, limit: int) -> bool:
    """Whether JSON nests deeper than `limit`, at C speed (a byte-by-byte scan costs 30 ns a byte,
    more than the model): a body with at most `limit` opening brackets cannot (the Open Inference
    Protocol's flat data); otherwise its strings are blanked (brackets in a text do not nest) and
    the running depth is a cumulative sum."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    steps = _BRACKET_STEP[np.frombuffer(_JSON_STRING.sub(b'""', body), dtype=np.uint8)]
    steps = steps[steps != 0].astype(np.int32)  # the brackets alone
    return bool(steps.size) and int(np.cumsum(steps).max()) > limit


def example_request(signature: Signature) -> str:
    parts = ", ".join(f'"{t.name}": <{t.datatype} {t.shape_text()}>' for t in signature.inputs)
    return '{"inputs": {' + parts + "}}"


def describe(model: str, signature: Signature) -> dict:
    """The input and output schema of the serving build, for GET /schema and error messages."""
    inputs = []
    for t in signature.inputs:
        entry = {"name": t.name, "dtype": t.datatype, "shape": t.shape_text()}
        if t.low is not None:
            entry["range"] = [t.low, t.high]
        inputs.append(entry)
    described = {
        "model": model,
        "inputs": inputs,
        "outputs": [t.name for t in signature.outputs],
        "request": example_request(signature),
    }
    if signature.text is not None:
        described["text"] = {
            "request": TEXT_REQUEST,
            "max_tokens": signature.text.max_tokens,
            "over_length": "refused",
            "files": [signature.text.file],
            "inputs_also_accepted": True,
        }
    return described


TEXT_REQUEST = '{"texts": ["a sentence", ...]}'


def encode_texts(signature: Signature, texts: object, encode) -> dict[str, np.ndarray]:
    """A list of texts through the build's own text front end; InputError(422) naming the text."""
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise InputError(422, f"'texts' must be a list of strings: expected {TEXT_REQUEST}")
    try:
        arrays = encode(texts)
    except ValueError as e:
        raise InputError(422, str(e).splitlines()[0][:300]) from None
    check(signature, arrays)
    return arrays


def text_to_arrays(model: str, signature: Signature, payload: dict, encode) -> dict[str, np.ndarray]:
    if signature.text is None or encode is None:
        raise InputError(422, f"model {model} takes no text: expected {example_request(signature)}")
    extra = sorted(set(payload) - {"texts"})
    if extra:
        what = "a request gives texts or inputs, not both" if "inputs" in extra else f"unknown field {extra[0]!r}"
        raise InputError(422, f"{what}: expected {TEXT_REQUEST} or {example_request(signature)}")
    return encode_texts(signature, payload["texts"], encode)


def check(signature: Signature, arrays: Mapping[str, np.ndarray]) -> None:
    """The signature's checks (datatypes, shapes, ranges, shared dynamic axes) as InputError(422)."""
    try:
        signature.check_inputs(arrays)
    except ValueError as e:
        raise InputError(422, str(e)) from None


def to_arrays(model: str, signature: Signature, payload: object, encode=None) -> dict[str, np.ndarray]:
    """Checks a parsed request against the build's inputs; raises InputError(422) naming the input.
    {"texts": [...]} goes through `encode`, the build's text front end, if it has one."""
    if isinstance(payload, dict) and "texts" in payload:
        return text_to_arrays(model, signature, payload, encode)
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), dict):
        raise InputError(422, f"expected a JSON object {example_request(signature)}")
    extra = sorted(set(payload) - {"inputs"})
    if extra:
        raise InputError(422, f"unknown field {extra[0]!r}: expected {example_request(signature)}")
    values = payload["inputs"]
    names = [t.name for t in signature.inputs]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise InputError(422, f"unknown input {unknown[0]!r}; the model's inputs are {', '.join(names)}")
    missing = [t for t in signature.inputs if t.name not in values]
    if missing:
        t = missing[0]
        raise InputError(422, f"missing input {t.name!r} ({t.datatype}, shape {t.shape_text()})")
    arrays = {t.name: array(t, values[t.name]) for t in signature.inputs}
    check(signature, arrays)
    return arrays


def array(t: TensorSig, value: object, shape: list[int] | None = None) -> np.ndarray:
    """Nested JSON lists (or, with `shape`, a flat list in row-major order: the Open Inference
    Protocol's form) as an array of t's datatype; InputError(422) naming the input and position."""
    if shape is None:
        shape, leaves = _shape_and_leaves(t, value)
    else:
        leaves = _flatten(t, value)
        expected = int(np.prod(shape)) if shape else 1
        if len(leaves) != expected:
            raise InputError(422, f"input {t.name!r}: {len(leaves)} values for shape {list(shape)} ({expected} values)")
    if len(shape) != len(t.shape):
        raise InputError(422, f"input {t.name!r}: {len(shape)} dimensions, expected {len(t.shape)} {t.shape_text()}")
    if 0 in shape:
        raise InputError(422, f"input {t.name!r}: empty (size 0 on axis {shape.index(0)}), expected {t.shape_text()}")
    allowed = _LEAF_TYPES[t.datatype]
    # The leaves' types at C speed (map and set); the position of a wrong one only when there is one.
    wrong = not set(map(type, leaves)) <= set(allowed)
    for index, leaf in enumerate(leaves if wrong else ()):
        if type(leaf) not in allowed:
            where = "".join(f"[{i}]" for i in _unravel(index, shape))
            found = "null" if leaf is None else json.dumps(leaf) if isinstance(leaf, (bool, int, float, str)) else type(leaf).__name__
            word = _LEAF_WORDS.get(t.datatype, "numbers")
            raise InputError(422, f"input {t.name!r}: expected {word} ({t.datatype}), found {found} at {t.name}{where}")
    try:
        with np.errstate(over="raise"):
            result = np.array(leaves, dtype=t.dtype).reshape(shape)
    except (OverflowError, FloatingPointError, ValueError) as e:
        raise InputError(422, f"input {t.name!r}: a value does not fit {t.datatype} ({e})") from None
    if result.dtype.kind == "f" and not np.isfinite(result).all():
        raise InputError(422, f"input {t.name!r}: values must be finite in {t.datatype} (1e400 and the like overflow)")
    try:
        t.check(result)
    except ValueError as e:
        raise InputError(422, str(e)) from None
    return result


def _flatten(t: TensorSig, value: object) -> list:
    if not isinstance(value, list):
        raise InputError(422, f"input {t.name!r}: data must be a list")
    if value and isinstance(value[0], list):  # nested data with a shape: allowed, flattened
        shape, leaves = _shape_and_leaves(t, value)
        return leaves
    return value


def _shape_and_leaves(t: TensorSig, value: object) -> tuple[list[int], list]:
    """The shape of a nested list, level by level, and its leaves in row-major order."""
    shape: list[int] = []
    level = [value]
    while level and isinstance(level[0], list):
        size = len(level[0])
        for position, item in enumerate(level):
            if not isinstance(item, list) or len(item) != size:
                where = "".join(f"[{i}]" for i in _unravel(position, shape))
                got = f"{len(item)} items" if isinstance(item, list) else "a single value"
                raise InputError(
                    422, f"input {t.name!r}: ragged array: {t.name}{where} has {got}, expected {size} like the first "
                    f"(shape {t.shape_text()})"
                )  # fmt: skip
        shape.append(size)
        level = [x for item in level for x in item]
        if len(shape) > len(t.shape):
            raise InputError(422, f"input {t.name!r}: more than {len(t.shape)} dimensions, expected {t.shape_text()}")
    for position, leaf in enumerate(level):
        if isinstance(leaf, list):
            where = "".join(f"[{i}]" for i in _unravel(position, shape))
            raise InputError(422, f"input {t.name!r}: ragged array: {t.name}{where} is a list where a value is expected")
    return shape, level


def _unravel(index: int, shape: list[int]) -> list[int]:
    out = []
    for size in reversed(shape):
        out.append(index % size if size else 0)
        index = index // size if size else 0
    return out[::-1]


def check_outputs(outputs: Mapping[str, np.ndarray]) -> None:
    """A non-finite output is the model's fault, not the client's: RuntimeError naming it."""
    for name, value in outputs.items():
        value = np.asarray(value)
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise RuntimeError(f"the model produced non-finite values in output {name!r}")


def to_json_outputs(outputs: Mapping[str, np.ndarray]) -> dict[str, list]:
    """Outputs as nested lists."""
    check_outputs(outputs)
    return {name: np.asarray(value).tolist() for name, value in outputs.items()}
