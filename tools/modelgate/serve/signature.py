"""What a build takes and gives, as its release manifest declares it: the serving signature.

The release gate writes it (manifest["serving"]) from the model's spec and the ONNX graph it
checked, and the service reads it from the build it fetched, never from its own checkout: so a
service serves each build with that build's own inputs, outputs and text front end, and a build
that changes its architecture (another width, more layers, another vocabulary) rolls out like any
other.

    "serving": {
      "schema": "modelgate/serving@1",
      "runtime": "onnxruntime",
      "model_file": "model.onnx",
      "inputs":  [{"name": "tokens", "datatype": "int64", "shape": [null, null], "range": [0, 32]},
                  {"name": "mask", "datatype": "bool", "shape": [null, null]}],
      "outputs": [{"name": "logits", "datatype": "float32", "shape": [null, 4]}],
      "text": null | {"kind": "tokenizers", "file": "tokenizer.json", "max_tokens": 256,
                      "pad_id": 0, "ids_input": "tokens", "mask_input": "mask"},
      "warmup": {"tolerances": {"logits": {"atol": 1e-05, "rtol": 0.0001}}}
    }

`null` in a shape is a dynamic axis (-1 in the Open Inference Protocol's metadata); inputs share a
dynamic axis by position (axis 0 is the batch). numpy and the standard library only: the service
imports this, and the serving process has no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

SERVING_SCHEMA = "modelgate/serving@1"
ONNX_RUNTIME = "onnxruntime"

# Datatype names (numpy's) and the Open Inference Protocol's names for them.
OIP_DATATYPES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}
FROM_OIP = {v: k for k, v in OIP_DATATYPES.items()}
TEXT_KINDS = ("tokenizers",)


class SignatureError(ValueError):
    """A serving section that is missing or malformed: one line naming the key."""


@dataclass(frozen=True)
class TensorSig:
    """One named tensor: numpy datatype name, shape (None for a dynamic axis), value range."""

    name: str
    datatype: str
    shape: tuple[int | None, ...]
    low: float | None = None  # integer inputs: values lie in [low, high)
    high: float | None = None

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.datatype)

    @property
    def oip_datatype(self) -> str:
        return OIP_DATATYPES[self.datatype]

    def shape_text(self) -> str:
        return "(" + ", ".join("N" if d is None else str(d) for d in self.shape) + ")"

    def oip_shape(self) -> list[int]:
        return [-1 if d is None else d for d in self.shape]

    def check(self, value: np.ndarray) -> None:
        """Raises ValueError, naming the input, when `value` does not fit."""
        if value.dtype != self.dtype:
            raise ValueError(f"input {self.name!r}: dtype {value.dtype}, expected {self.datatype}")
        if value.ndim != len(self.shape):
            raise ValueError(f"input {self.name!r}: {value.ndim} dimensions, expected {len(self.shape)} {self.shape_text()}")
        for axis, (got, want) in enumerate(zip(value.shape, self.shape)):
            if want is not None and got != want:
                raise ValueError(f"input {self.name!r}: size {got} on axis {axis}, expected {self.shape_text()}")
        if value.size and value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ValueError(f"input {self.name!r}: values must be finite in {self.datatype}")
        if self.low is not None and value.size and (value.min() < self.low or value.max() >= self.high):
            raise ValueError(f"input {self.name!r}: values must lie in [{_num(self.low)}, {_num(self.high)})")

    def to_json(self) -> dict:
        doc = {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}
        if self.low is not None:
            doc["range"] = [self.low, self.high]
        return doc


@dataclass(frozen=True)
class TextFrontEnd:
    """A tokenizer file in the bundle and how its ids become the model's inputs: ids right-padded
    with pad_id to the batch's longest text, a bool mask of the real tokens; a text longer than
    max_tokens is refused, not truncated."""

    kind: str
    file: str
    max_tokens: int
    pad_id: int
    ids_input: str
    mask_input: str

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "file": self.file,
            "max_tokens": self.max_tokens,
            "pad_id": self.pad_id,
            "ids_input": self.ids_input,
            "mask_input": self.mask_input,
        }


@dataclass(frozen=True)
class Signature:
    model_file: str
    inputs: tuple[TensorSig, ...]
    outputs: tuple[TensorSig, ...]
    text: TextFrontEnd | None
    tolerances: Mapping[str, Mapping[str, float]]  # output -> {"atol", "rtol"}: the warm-up's
    runtime: str = ONNX_RUNTIME

    def input(self, name: str) -> TensorSig | None:
        return next((t for t in self.inputs if t.name == name), None)

    def to_json(self) -> dict:
        return {
            "schema": SERVING_SCHEMA,
            "runtime": self.runtime,
            "model_file": self.model_file,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "text": self.text.to_json() if self.text else None,
            "warmup": {"tolerances": {k: dict(v) for k, v in sorted(self.tolerances.items())}},
        }

    def check_inputs(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Every input present and fitting; inputs agree on every dynamic axis they share, exactly
        (a size-1 axis is not broadcast). Raises ValueError naming what to fix."""
        for t in self.inputs:
            if t.name not in arrays:
                raise ValueError(f"missing input {t.name!r} ({t.datatype}, shape {t.shape_text()})")
            t.check(arrays[t.name])
        axes = max((len(t.shape) for t in self.inputs), default=0)
        for axis in range(axes):
            shared = [(t.name, arrays[t.name].shape[axis]) for t in self.inputs if len(t.shape) > axis and t.shape[axis] is None]
            if len({size for _, size in shared}) > 1:
                sizes = ", ".join(f"{name} has {size}" for name, size in shared)
                what = "the batch size (axis 0)" if axis == 0 else f"axis {axis} (shapes must match exactly; no broadcasting)"
                raise ValueError(f"inputs disagree on {what}: {sizes}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _tensor(doc: object, where: str, *, with_range: bool) -> TensorSig:
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) or not doc["name"]:
        raise SignatureError(f"{where}: expected an object with a name")
    name = doc["name"]
    datatype = doc.get("datatype")
    if datatype not in OIP_DATATYPES:
        raise SignatureError(f"{where} ({name}): datatype {datatype!r} is not one of {sorted(OIP_DATATYPES)}")
    shape = doc.get("shape")
    if not isinstance(shape, list) or len(shape) > 16 or not all(d is None or (type(d) is int and d > 0) for d in shape):
        raise SignatureError(f"{where} ({name}): shape must be a list of positive sizes or null")
    low = high = None
    if with_range and doc.get("range") is not None:
        r = doc["range"]
        if not (isinstance(r, list) and len(r) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in r) and r[0] < r[1]):
            raise SignatureError(f"{where} ({name}): range must be [low, high) with low < high")
        low, high = r
    return TensorSig(name, datatype, tuple(shape), low, high)


def from_manifest(manifest: Mapping) -> Signature:
    """The build's serving signature; SignatureError (one line) when it has none or it is malformed."""
    doc = manifest.get("serving")
    if doc is None:
        raise SignatureError(
            "the build's manifest has no serving signature (released before modelgate served release bundles); "
            "release it again, or serve it with --runtime=torch"
        )
    if not isinstance(doc, dict) or doc.get("schema") != SERVING_SCHEMA:
        raise SignatureError(f"the build's serving signature is not {SERVING_SCHEMA}")
    if doc.get("runtime") != ONNX_RUNTIME:
        raise SignatureError(f"the build's serving runtime {doc.get('runtime')!r} is not {ONNX_RUNTIME!r}")
    model_file = doc.get("model_file")
    if not isinstance(model_file, str) or "/" in model_file or model_file.startswith("."):
        raise SignatureError("the build's serving signature names no model file in the bundle")
    for key in ("inputs", "outputs"):
        if not isinstance(doc.get(key), list) or not doc[key]:
            raise SignatureError(f"the build's serving signature lists no {key}")
    inputs = tuple(_tensor(t, f"serving.inputs[{i}]", with_range=True) for i, t in enumerate(doc["inputs"]))
    outputs = tuple(_tensor(t, f"serving.outputs[{i}]", with_range=False) for i, t in enumerate(doc["outputs"]))
    for what, tensors in (("inputs", inputs), ("outputs", outputs)):
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            raise SignatureError(f"serving.{what}: a name is listed twice")
    text = None
    if doc.get("text") is not None:
        t = doc["text"]
        ok = (
            isinstance(t, dict)
            and t.get("kind") in TEXT_KINDS
            and isinstance(t.get("file"), str)
            and "/" not in t["file"]
            and type(t.get("max_tokens")) is int
            and t["max_tokens"] > 0
            and type(t.get("pad_id")) is int
            and t.get("ids_input") in [i.name for i in inputs]
            and t.get("mask_input") in [i.name for i in inputs]
        )
        if not ok:
            raise SignatureError("serving.text: expected kind, file, max_tokens, pad_id, ids_input and mask_input naming inputs")
        text = TextFrontEnd(t["kind"], t["file"], t["max_tokens"], t["pad_id"], t["ids_input"], t["mask_input"])
    tolerances = (doc.get("warmup") or {}).get("tolerances") if isinstance(doc.get("warmup"), dict) else None
    if not isinstance(tolerances, dict) or set(tolerances) != {t.name for t in outputs}:
        raise SignatureError("serving.warmup.tolerances: expected {atol, rtol} for every output")
    for name, tol in tolerances.items():
        if not isinstance(tol, dict) or set(tol) != {"atol", "rtol"} or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in tol.values()
        ):
            raise SignatureError(f"serving.warmup.tolerances.{name}: expected non-negative atol and rtol")
    return Signature(model_file, inputs, outputs, text, tolerances)
