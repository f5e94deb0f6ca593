"""Export: deterministic training, safetensors + ONNX, and the build hash.

Runs inside a Bazel action (see //tools/private:model_weights.bzl). Everything it writes is a
function of its declared inputs: training runs in the portable numerics mode (modelgate.portable:
the same weights on every x86-64 CPU), and serialization is canonical, so two clones at different
paths, on different machines, produce identical bytes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import re
import tempfile
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import save_file

from modelgate import checkpoint as checkpoints
from modelgate import portable
from modelgate.errors import ExportError
from modelgate.formats import EXPORT_MANIFEST, EXPORT_SCHEMA, ONNX, WEIGHTS
from modelgate.hashing import build_hash, canonical_json, digest_inputs, sha256_file
from modelgate.loading import load_weights  # noqa: F401 - export.load_weights, as before
from modelgate.spec import ModelSpec


# For tools outside this repository that train a spec the way modelgate once did (the shared
# numerics_probe.py): deterministic, one thread, seeded. Training itself goes through portable.train.
make_deterministic = portable.deterministic


def toolchain(numerics: Mapping[str, str]) -> dict[str, str]:
    """The toolchain part of the build hash: interpreter and library versions, and what decides a
    training run's numbers (CPU architecture, torch build, numerics mode; modelgate.portable)."""
    import onnx

    return {"python": platform.python_version(), "onnx": onnx.__version__, **numerics}


def state_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state as contiguous CPU tensors; fails naming the first non-finite tensor."""
    tensors = {}
    for name, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        if value.is_floating_point() and not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).sum())
            raise ExportError(f"weights contain {bad} non-finite values in {name!r}; training diverged or the model is broken")
        tensors[name] = value
    return tensors


def checkpoint_provenance(pin: checkpoints.Pin, path: Path) -> dict:
    """Where a pinned checkpoint came from (the pin's provenance and metrics), beside the hash."""
    return {"pin": pin.path, "sha256": pin.sha256, "size": pin.size, "provenance": dict(pin.provenance), "metrics": dict(pin.metrics)}


def _example_args(spec: ModelSpec) -> tuple:
    inputs = spec.golden_inputs()
    return tuple(inputs[t.name] for t in spec.inputs)


def dynamic_axes(spec: ModelSpec) -> dict[str, dict[int, object]]:
    """torch.export's dynamic_shapes for every axis the spec declares dynamic (None): each one is
    Dim.AUTO, so the exporter infers which axes are one size (tokens and mask share batch and
    sequence) and their ranges (a max_len check becomes an upper bound)."""
    return {t.name: {axis: torch.export.Dim.AUTO for axis, size in enumerate(t.shape) if size is None} for t in spec.inputs}


def _axis_names(spec: ModelSpec, proto) -> dict[str, str]:
    """Readable names for the exporter's symbols (s0, s27...): `batch` for axis 0, otherwise
    `<input>_<axis>` of the first input that has it (`tokens_1`)."""
    names = {}
    for value in proto.graph.input:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.dim_param and dim.dim_param not in names:
                names[dim.dim_param] = "batch" if axis == 0 else f"{value.name}_{axis}"
    return names


def check_dynamic_axes(spec: ModelSpec, proto) -> None:
    """Every axis the spec declares dynamic is symbolic in the ONNX graph's inputs; ExportError
    naming the first that came out fixed (the model specializes on that size)."""
    graph_inputs = {value.name: value for value in proto.graph.input}
    for t in spec.inputs:
        value = graph_inputs.get(t.name)
        if value is None:
            raise ExportError(f"ONNX export of {spec.name}: the graph has no input {t.name!r}")
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(t.shape):
            raise ExportError(f"ONNX export of {spec.name}: input {t.name!r} has {len(dims)} axes, the spec {len(t.shape)}")
        for axis, (size, dim) in enumerate(zip(t.shape, dims)):
            if size is None and not dim.dim_param:
                raise ExportError(
                    f"ONNX export of {spec.name}: axis {axis} of input {t.name!r} came out fixed at {dim.dim_value}, "
                    "but the spec declares it dynamic (None): the model specializes on that size (a Python branch "
                    "or a reshape on it), or the golden inputs' size there is 0 or 1"
                )


def _rename_dims(proto, names: dict[str, str]) -> None:
    for values in (proto.graph.input, proto.graph.output, proto.graph.value_info):
        for value in values:
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param in names:
                    dim.dim_param = names[dim.dim_param]


def export_onnx(spec: ModelSpec, model: torch.nn.Module, path: Path) -> None:
    """ONNX through the dynamo exporter, with every axis the spec declares dynamic (None) dynamic
    in the graph, named (batch, tokens_1, ...), and provenance props cleared."""
    import logging

    import onnx

    # The exporter logs one warning per torchvision operator it cannot find; we use none.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    dynamic = {name: axes for name, axes in dynamic_axes(spec).items() if axes}
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            program = torch.onnx.export(
                model,
                _example_args(spec),
                dynamo=True,
                input_names=[t.name for t in spec.inputs],
                output_names=list(spec.outputs),
                dynamic_shapes={t.name: dynamic.get(t.name, {}) for t in spec.inputs} if dynamic else None,
                external_data=False,
                verbose=False,
            )
    except Exception as e:
        first_line = re.sub(r"\x1b\[[0-9;]*m", "", str(e).splitlines()[0] if str(e) else "")
        raise ExportError(f"ONNX export of {spec.name} failed: {type(e).__name__}: {first_line[:300]}") from None
    proto = program.model_proto
    check_dynamic_axes(spec, proto)
    _rename_dims(proto, _axis_names(spec, proto))
    # The exporter stamps every node with the source file and line it came from; those paths
    # differ per sandbox and would make the bytes depend on where the build ran.
    for node in _all_nodes(proto.graph):
        del node.metadata_props[:]
    del proto.metadata_props[:]
    for function in proto.functions:
        for node in function.node:
            del node.metadata_props[:]
    proto.producer_name, proto.producer_version = "modelgate", ""
    onnx.save_model(proto, str(path))


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


def run_export(
    spec: ModelSpec,
    out_dir: Path,
    inputs: Mapping[str, str],
    attributes: Mapping[str, object],
    strict_numerics: bool = True,
    packages: Mapping[str, Mapping[str, object]] | None = None,
    checkpoint: tuple[checkpoints.Pin, Path] | None = None,
) -> dict:
    """Trains, serializes and describes one model. Writes WEIGHTS, ONNX and EXPORT_MANIFEST into
    out_dir only when every step succeeded; nothing half-written is left behind.

    inputs: {workspace-relative path: path on disk} of the files to hash. packages: the lock
    entries ({name: {"version", "hashes"}}, hashing.read_lock_entries) of the pip packages the
    model depends on; they go into the build hash instead of the whole lock.

    strict_numerics: refuse (portable.PortableModeError) to train where the portable mode is not
    in effect. Tests that only need some export pass False; the mode actually in force then goes
    into the build hash ("numerics": "native", with the kernels it ran).

    checkpoint: (pin, path of the fetched file) for a model whose weights come from a pinned
    checkpoint: nothing is trained, the tensors are loaded strictly, and the pin's sha256 and
    size go into the build hash (the pin's sources and provenance do not: the same bytes from
    another source are the same build)."""
    attributes = dict(attributes)
    if checkpoint is None:
        model, train_stats, numerics = portable.train(spec, strict=strict_numerics)
    else:
        pin, path = checkpoint
        # Evaluation runs in the same mode as after training, so metrics agree across CPUs too.
        numerics = portable.enter(int(spec.config.get("seed", 0)), strict=strict_numerics)
        model, train_stats = checkpoints.load_into(spec, path, pin), {}
        attributes["checkpoint"] = {"sha256": pin.sha256, "size": pin.size}
    tools = toolchain(numerics)
    digests = digest_inputs(inputs.items())
    packages = {name: dict(entry) for name, entry in sorted((packages or {}).items())}
    bhash = build_hash(digests, attributes, tools, packages)
    tensors = state_tensors(model)
    metrics = spec.evaluate(model, spec.config)

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as tmp:
        tmp = Path(tmp)
        save_file(tensors, str(tmp / WEIGHTS))
        export_onnx(spec, model, tmp / ONNX)
        files = {}
        for name in (WEIGHTS, ONNX):
            if not (tmp / name).is_file():
                raise ExportError(f"export of {spec.name} did not write {name}")
            files[name] = {"sha256": sha256_file(tmp / name), "size": (tmp / name).stat().st_size}
        manifest = {
            "schema": EXPORT_SCHEMA,
            "model": spec.name,
            "build_hash": bhash,
            "files": files,
            "inputs": digests,
            "packages": packages,
            "attributes": dict(attributes),
            "toolchain": tools,
            "config": dict(spec.config),
            "metrics": metrics,
            "training": dict(train_stats),
            # Where it was trained: beside the build hash, not in it (the same on every x86-64 CPU).
            "provenance": portable.provenance() | ({"checkpoint": checkpoint_provenance(*checkpoint)} if checkpoint else {}),
            "metric_gates": {k: g.__dict__ for k, g in spec.metrics.items()},
        }
        (tmp / EXPORT_MANIFEST).write_bytes(json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n")
        for name in (WEIGHTS, ONNX, EXPORT_MANIFEST):
            os.replace(tmp / name, out_dir / name)
    return manifest


__all__ = ["ExportError", "load_weights", "run_export", "canonical_json"]
