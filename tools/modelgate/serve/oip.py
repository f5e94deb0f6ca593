"""The Open Inference Protocol v2 (the REST API of KServe, Triton and MLServer) over the serving build.

    GET  /v2                                        server metadata
    GET  /v2/health/live                            200 while the process runs
    GET  /v2/health/ready                           200 while a verified, warmed-up build serves
    GET  /v2/models/<m>[/versions/<build_hash>]     inputs and outputs (datatype, shape, -1 dynamic)
    GET  /v2/models/<m>[/versions/<build_hash>]/ready
    POST /v2/models/<m>[/versions/<build_hash>]/infer

`model_version` is always the build hash of the build that answered. Tensors come as JSON (`data`
flat in row-major order, or nested) or in the binary tensor data extension Triton's clients use by
default (`Inference-Header-Content-Length`, `binary_data_size`, `binary_data_output`). A build with
a text front end also takes an input `texts` of datatype BYTES (shape [N]), tokenized with the
tokenizer its bundle ships. Errors are {"error": "<one sentence>"}: 400 for a request that is not
the protocol, 404 for another model or version, 422 for tensors that do not fit the build, 503
before a build serves; a client's mistake is never a 500.
"""

from __future__ import annotations

import json
import struct
from typing import Mapping

import numpy as np

from modelgate.errors import InputError
from modelgate.serve import schema
from modelgate.serve.signature import FROM_OIP, Signature

HEADER_LENGTH = "inference-header-content-length"
TEXT_INPUT = "texts"
SERVER = {"name": "modelgate", "version": "1", "extensions": ["binary_tensor_data"]}


def platform(runtime: str) -> str:
    return {"onnxruntime": "onnxruntime_onnx", "torch": "pytorch_libtorch"}.get(runtime, runtime)


def metadata(model: str, build_hash: str, signature: Signature, runtime: str) -> dict:
    inputs = [{"name": t.name, "datatype": t.oip_datatype, "shape": t.oip_shape()} for t in signature.inputs]
    if signature.text is not None:
        inputs.append({"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]})
    return {
        "name": model,
        "versions": [build_hash],
        "platform": platform(runtime),
        "inputs": inputs,
        "outputs": [{"name": t.name, "datatype": t.oip_datatype, "shape": t.oip_shape()} for t in signature.outputs],
    }


def split_body(body: bytes, headers: Mapping[str, str]) -> tuple[dict, bytes]:
    """(the JSON request, the binary tensor data after it) of an infer request."""
    header_length = headers.get(HEADER_LENGTH)
    binary = b""
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            raise InputError(400, f"malformed {HEADER_LENGTH} header") from None
        if not 0 < length <= len(body):
            raise InputError(400, f"{HEADER_LENGTH} is {length}, but the body has {len(body)} bytes")
        body, binary = body[:length], body[length:]
    doc = schema.parse_json(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise InputError(400, 'an inference request is a JSON object with a list of "inputs"')
    return doc, binary


def _shape(entry: dict, name: str) -> list[int]:
    shape = entry.get("shape")
    if not isinstance(shape, list) or len(shape) > 16 or not all(type(d) is int and d >= 0 for d in shape):
        raise InputError(400, f"input {name!r}: 'shape' must be a list of non-negative integers")
    return shape


def _binary_size(entry: dict, name: str) -> int | None:
    parameters = entry.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InputError(400, f"input {name!r}: 'parameters' must be an object")
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if type(size) is not int or size < 0:
        raise InputError(400, f"input {name!r}: binary_data_size must be a non-negative integer")
    return size


def _bytes_elements(raw: bytes, name: str) -> list[bytes]:
    """BYTES tensor data in the binary extension: each element a 4-byte little-endian length and its bytes."""
    out, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise InputError(400, f"input {name!r}: truncated BYTES element")
        (length,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + length > len(raw):
            raise InputError(400, f"input {name!r}: truncated BYTES element")
        out.append(raw[at : at + length])
        at += length
    return out


def request_arrays(model: str, signature: Signature, encode, doc: dict, binary: bytes) -> dict[str, np.ndarray]:
    """The request's tensors as the build's inputs; InputError naming the input."""
    arrays: dict[str, np.ndarray] = {}
    texts = None
    offset = 0
    seen = set()
    for entry in doc["inputs"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InputError(400, "each input is an object with a name, shape, datatype and data")
        name = entry["name"]
        if name in seen:
            raise InputError(400, f"input {name!r} is given twice")
        seen.add(name)
        shape = _shape(entry, name)
        datatype = entry.get("datatype")
        size = _binary_size(entry, name)
        raw = None
        if size is not None:
            if offset + size > len(binary):
                raise InputError(400, f"input {name!r}: binary_data_size {size} runs past the end of the body")
            raw, offset = binary[offset : offset + size], offset + size
        elif "data" not in entry:
            raise InputError(400, f"input {name!r} has no data")
        if name == TEXT_INPUT and signature.text is not None:
            if datatype != "BYTES":
                raise InputError(422, f"input {name!r}: datatype {datatype}, expected BYTES")
            items = _bytes_elements(raw, name) if raw is not None else entry["data"]
            if not isinstance(items, list):
                raise InputError(400, f"input {name!r}: data must be a list")
            try:
                texts = [x.decode() if isinstance(x, bytes) else x for x in items]
            except UnicodeDecodeError:
                raise InputError(422, f"input {name!r}: texts must be UTF-8") from None
            if len(shape) != 1 or shape[0] != len(texts):
                raise InputError(422, f"input {name!r}: shape {shape} for {len(texts)} texts; expected [{len(texts)}]")
            continue
        t = signature.input(name)
        if t is None:
            names = [i.name for i in signature.inputs] + ([TEXT_INPUT] if signature.text else [])
            raise InputError(422, f"unknown input {name!r}; the model's inputs are {', '.join(names)}")
        if FROM_OIP.get(datatype) != t.datatype:
            raise InputError(422, f"input {name!r}: datatype {datatype}, expected {t.oip_datatype}")
        if raw is not None:
            expected = int(np.prod(shape)) * t.dtype.itemsize
            if len(raw) != expected:
                raise InputError(400, f"input {name!r}: {len(raw)} bytes of binary data for shape {shape} of {datatype} ({expected} bytes)")
            value = np.frombuffer(raw, dtype=t.dtype).reshape(shape)
            if t.datatype == "bool" and value.size and raw.translate(None, b"\x00\x01"):
                raise InputError(422, f"input {name!r}: BOOL data must be bytes 0 or 1")
            arrays[name] = value
        else:
            arrays[name] = schema.array(t, entry["data"], shape)
    if texts is not None:
        if arrays:
            raise InputError(422, f"a request gives {TEXT_INPUT} or the model's inputs, not both")
        return schema.encode_texts(signature, texts, encode)
    missing = [t for t in signature.inputs if t.name not in arrays]
    if missing:
        t = missing[0]
        raise InputError(422, f"missing input {t.name!r} ({t.oip_datatype}, shape {t.oip_shape()})")
    schema.check(signature, arrays)
    return arrays


def response(model: str, build_hash: str, signature: Signature, doc: dict, outputs: Mapping[str, np.ndarray]) -> tuple[dict, bytes]:
    """(the JSON response, the binary data after it) with the outputs the request asks for."""
    parameters = doc.get("parameters") if isinstance(doc.get("parameters"), dict) else {}
    binary_default = parameters.get("binary_data_output") is True
    requested = doc.get("outputs")
    if requested is None:
        wanted = [(t.name, binary_default) for t in signature.outputs]
    else:
        if not isinstance(requested, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in requested):
            raise InputError(400, "'outputs' must be a list of objects with a name")
        wanted = []
        for o in requested:
            if o["name"] not in outputs:
                raise InputError(422, f"unknown output {o['name']!r}; the model's outputs are {', '.join(t.name for t in signature.outputs)}")
            p = o.get("parameters") if isinstance(o.get("parameters"), dict) else {}
            wanted.append((o["name"], p.get("binary_data", binary_default) is True))
    schema.check_outputs(outputs)
    by_name = {t.name: t for t in signature.outputs}
    entries, chunks = [], []
    for name, binary in wanted:
        value = np.ascontiguousarray(outputs[name], dtype=by_name[name].dtype)
        entry = {"name": name, "datatype": by_name[name].oip_datatype, "shape": list(value.shape)}
        if binary:
            data = value.tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = value.reshape(-1).tolist()
        entries.append(entry)
    answer = {"model_name": model, "model_version": build_hash, "outputs": entries}
    if isinstance(doc.get("id"), str):
        answer["id"] = doc["id"]
    return answer, b"".join(chunks)


def encode_response(answer: dict, binary: bytes) -> tuple[bytes, dict[str, str]]:
    """The body and headers: plain JSON, or JSON then binary data with its header length."""
    head = json.dumps(answer, separators=(",", ":")).encode()
    if not binary:
        return head, {"content-type": "application/json"}
    return head + binary, {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
