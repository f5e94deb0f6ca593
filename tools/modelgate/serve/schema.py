"""JSON <-> tensors for /predict, using the model's TensorSpecs; every refusal says what to fix.

Request:   {"inputs": {"tokens": [[3, 7, 0]], "mask": [[true, true, false]]}}
       or   {"texts": ["a sentence"]} for a model with a text front end (ModelSpec.text: its
            tokenizer ships in the build's bundle)
Response:  {"model": ..., "tag": ..., "build_hash": ..., "outputs": {"logits": [[...]]}}

Values are nested JSON arrays. Integer inputs take JSON integers only (no 1.0, no true), bool
inputs take true/false only, float inputs take numbers; NaN and Infinity are refused. Shapes,
dtypes and value ranges are checked with TensorSpec.check before the model sees anything.
"""

from __future__ import annotations

import json
from typing import Mapping

import torch

from modelgate.errors import InputError
from modelgate.registry.records import json_depth
from modelgate.spec import ModelSpec, TensorSpec

# A request is {"inputs": {name: nested lists}}: a few levels deeper than the deepest input.
MAX_JSON_DEPTH = 32


# JSON leaf types each dtype accepts. bool is excluded from the integer types on purpose
# (type(True) is bool, so a `type(x) in ...` check does not let it pass as an int).
_LEAF_TYPES = {
    "int64": (int,),
    "int32": (int,),
    "bool": (bool,),
    "float32": (int, float),
    "float16": (int, float),
    "bfloat16": (int, float),
}
_LEAF_WORDS = {"int64": "integers", "int32": "integers", "bool": "booleans (true/false)"}


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed (JSON numbers must be finite)")


def parse_json(body: bytes) -> object:
    """The request body as JSON; 400 with the parser's reason when it is not JSON."""
    if not body.strip():
        raise InputError(400, "empty request body: expected JSON")
    if json_depth(body) > MAX_JSON_DEPTH:
        raise InputError(400, f"request body is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise InputError(400, "request body is not UTF-8 JSON") from None
    except RecursionError:
        raise InputError(400, f"request body is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as e:
        raise InputError(400, f"request body is not valid JSON: {e}") from None


def example_request(spec: ModelSpec) -> str:
    parts = ", ".join(f'"{t.name}": <{t.dtype} {t.shape_text()}>' for t in spec.inputs)
    return '{"inputs": {' + parts + "}}"


def describe(spec: ModelSpec) -> dict:
    """The input and output schema, for GET /schema and error messages."""
    inputs = []
    for t in spec.inputs:
        entry = {"name": t.name, "dtype": t.dtype, "shape": t.shape_text()}
        if t.low is not None:
            entry["range"] = [t.low, t.high]
        inputs.append(entry)
    described = {"model": spec.name, "inputs": inputs, "outputs": list(spec.outputs), "request": example_request(spec)}
    if spec.text is not None:
        described["text"] = {
            "request": TEXT_REQUEST,
            "max_tokens": spec.text.max_tokens,
            "over_length": spec.text.over_length,
            "files": list(spec.text.files),
            "inputs_also_accepted": True,
        }
    return described


TEXT_REQUEST = '{"texts": ["a sentence", ...]}'


def text_to_tensors(spec: ModelSpec, payload: dict, encode) -> dict[str, torch.Tensor]:
    """{"texts": [...]} through the build's own text front end; InputError(422) naming the text."""
    if spec.text is None or encode is None:
        raise InputError(422, f"model {spec.name} takes no text: expected {example_request(spec)}")
    extra = sorted(set(payload) - {"texts"})
    if extra:
        what = "a request gives texts or inputs, not both" if "inputs" in extra else f"unknown field {extra[0]!r}"
        raise InputError(422, f"{what}: expected {TEXT_REQUEST} or {example_request(spec)}")
    texts = payload["texts"]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise InputError(422, f"'texts' must be a list of strings: expected {TEXT_REQUEST}")
    try:
        tensors = encode(texts)
    except ValueError as e:
        raise InputError(422, str(e).splitlines()[0][:300]) from None
    for t in spec.inputs:
        try:
            t.check(tensors[t.name])
        except ValueError as e:
            raise InputError(422, str(e)) from None
    return tensors


def to_tensors(spec: ModelSpec, payload: object, encode=None) -> dict[str, torch.Tensor]:
    """Checks a parsed request against the model's inputs; raises InputError(422) naming the input.
    {"texts": [...]} goes through `encode`, the build's text front end (ModelSpec.text), if any."""
    if isinstance(payload, dict) and "texts" in payload:
        return text_to_tensors(spec, payload, encode)
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), dict):
        raise InputError(422, f"expected a JSON object {example_request(spec)}")
    extra = sorted(set(payload) - {"inputs"})
    if extra:
        raise InputError(422, f"unknown field {extra[0]!r}: expected {example_request(spec)}")
    values = payload["inputs"]
    names = [t.name for t in spec.inputs]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise InputError(422, f"unknown input {unknown[0]!r}; the model's inputs are {', '.join(names)}")
    missing = [t for t in spec.inputs if t.name not in values]
    if missing:
        t = missing[0]
        raise InputError(422, f"missing input {t.name!r} ({t.dtype}, shape {t.shape_text()})")
    tensors = {t.name: _tensor(t, values[t.name]) for t in spec.inputs}
    _check_batch(spec, tensors)
    return tensors


def _tensor(t: TensorSpec, value: object) -> torch.Tensor:
    shape, leaves = _shape_and_leaves(t, value)
    if len(shape) != len(t.shape):
        raise InputError(422, f"input {t.name!r}: {len(shape)} dimensions, expected {len(t.shape)} {t.shape_text()}")
    if 0 in shape:
        raise InputError(422, f"input {t.name!r}: empty (size 0 on axis {shape.index(0)}), expected {t.shape_text()}")
    allowed = _LEAF_TYPES[t.dtype]
    for index, leaf in enumerate(leaves):
        if type(leaf) not in allowed:
            where = "".join(f"[{i}]" for i in _unravel(index, shape))
            found = "null" if leaf is None else json.dumps(leaf) if isinstance(leaf, (bool, int, float, str)) else type(leaf).__name__
            word = _LEAF_WORDS.get(t.dtype, "numbers")
            raise InputError(422, f"input {t.name!r}: expected {word} ({t.dtype}), found {found} at {t.name}{where}")
    try:
        tensor = torch.tensor(leaves, dtype=t.torch_dtype).reshape(shape)
    except (OverflowError, RuntimeError, ValueError) as e:
        raise InputError(422, f"input {t.name!r}: a value does not fit {t.dtype} ({e})") from None
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise InputError(422, f"input {t.name!r}: values must be finite in {t.dtype} (1e400 and the like overflow)")
    try:
        t.check(tensor)
    except ValueError as e:
        raise InputError(422, str(e)) from None
    return tensor


def _shape_and_leaves(t: TensorSpec, value: object) -> tuple[list[int], list]:
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


def _check_batch(spec: ModelSpec, tensors: Mapping[str, torch.Tensor]) -> None:
    """Inputs must agree on every dynamic axis they share, exactly: a size-1 axis is not
    broadcast (tokens (1, 3) with a mask (1, 1) is refused, not answered). A dynamic axis is
    written N in the schema; the same position of two inputs names the same N."""
    axes = max((len(t.shape) for t in spec.inputs), default=0)
    for axis in range(axes):
        shared = [(t.name, tensors[t.name].shape[axis]) for t in spec.inputs if len(t.shape) > axis and t.shape[axis] is None]
        if len({size for _, size in shared}) > 1:
            sizes = ", ".join(f"{name} has {size}" for name, size in shared)
            what = "the batch size (axis 0)" if axis == 0 else f"axis {axis} (shapes must match exactly; no broadcasting)"
            raise InputError(422, f"inputs disagree on {what}: {sizes}")


def to_json_outputs(outputs: Mapping[str, torch.Tensor]) -> dict[str, list]:
    """Outputs as nested lists; a non-finite value is the model's fault, not the client's."""
    result = {}
    for name, value in outputs.items():
        value = value.detach().cpu()
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise RuntimeError(f"the model produced non-finite values in output {name!r}")
        result[name] = value.tolist()
    return result
