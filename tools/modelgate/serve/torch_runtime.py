"""serve --runtime=torch: the build's weights in the model's Python code, for a model whose graph
does not export to ONNX.

The code comes from the service's own checkout, so it is bound to the build before anything
runs: every model source file the service imported (models/<m>/..., the files the export action
hashed) must have the sha256 that the build's manifest records among its inputs, or the build is
refused with one line naming the file. The default runtime (onnxruntime on the bundle's
model.onnx) needs no such binding: it runs nothing from the checkout.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from modelgate import golden as golden_lib
from modelgate import loading
from modelgate.errors import RolloutError
from modelgate.formats import WEIGHTS
from modelgate.serve import runtime as runtime_lib
from modelgate.serve.signature import Signature, TensorSig, TextFrontEnd, from_manifest
from modelgate.spec import ModelSpec, load_spec

RUNTIME = "torch"


def model_sources(model: str) -> dict[str, Path]:
    """{workspace-relative path: file} of every module of models/ this process imported (empty
    package markers excepted): the code a torch runtime would run."""
    package = sys.modules.get(f"models.{model}.spec")
    if package is None or not getattr(package, "__file__", None):
        return {}
    root = Path(package.__file__).resolve().parents[2]
    out = {}
    for name, module in sorted(sys.modules.items()):
        if not (name == "models" or name.startswith("models.")):
            continue
        path = getattr(module, "__file__", None)
        if not path:
            continue
        path = Path(path).resolve()
        if path.name == "__init__.py" and path.stat().st_size == 0:
            continue
        try:
            out[path.relative_to(root).as_posix()] = path
        except ValueError:
            out[f"{name} ({path})"] = path
    return out


def check_sources(sources: Mapping[str, Path], manifest: dict) -> None:
    """RolloutError unless every source is an input of the build with the same sha256."""
    recorded = manifest.get("inputs") or {}
    build = str(manifest.get("build_hash", ""))[:12]
    for rel, path in sorted(sources.items()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        want = recorded.get(rel)
        if want != digest:
            what = f"sha256 {want[:12]}" if isinstance(want, str) else "not an input of the build"
            raise RolloutError(
                f"--runtime=torch refuses build {build}: this checkout's {rel} (sha256 {digest[:12]}) is not the file "
                f"the build was made from ({what}); serve it with the default runtime (onnxruntime), or from the build's commit"
            )


def spec_signature(spec: ModelSpec, directory: Path) -> Signature:
    """A signature from the spec, for a build released before manifests carried one."""
    golden = golden_lib.load(directory, spec.name, [t.name for t in spec.inputs], spec.outputs)
    inputs = tuple(TensorSig(t.name, t.dtype, tuple(t.shape), t.low, t.high) for t in spec.inputs)
    outputs = tuple(TensorSig(name, "float32", ()) for name in spec.outputs)
    tolerances = {}
    for name in spec.outputs:
        atol, rtol = golden.tolerance(name, "float32")
        tolerances[name] = {"atol": atol, "rtol": rtol}
    text = None
    if spec.text is not None and spec.text.tokenizer:
        text = TextFrontEnd("tokenizers", spec.text.tokenizer, spec.text.max_tokens, spec.text.pad_id, spec.text.ids_input, spec.text.mask_input)
    return Signature(WEIGHTS, inputs, outputs, text, tolerances, runtime=RUNTIME)


class TorchRunner:
    runtime = RUNTIME

    def __init__(self, spec: ModelSpec, model: torch.nn.Module, signature: Signature, text):
        self.spec, self.model, self.signature = spec, model, signature
        self.text = None
        if text is not None:
            self.text = lambda texts: {k: v.numpy() for k, v in text(texts).items()}

    def forward(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = {t.name: torch.from_numpy(np.ascontiguousarray(inputs[t.name])) for t in self.spec.inputs}
        with torch.inference_mode():
            outputs = self.spec.forward(self.model, tensors)
        return {name: value.detach().cpu().numpy() for name, value in outputs.items()}


def torch_runtime(model: str, threads: int = 1):
    """A runtime (see deployment.LoadRunner) over this checkout's models/<model>."""
    torch.set_num_threads(threads)
    spec = load_spec(model)
    sources = model_sources(model)
    logging.getLogger("modelgate.serve").info(
        "--runtime=torch: this checkout's %s, bound to each build by sha256: %s", model, ", ".join(f"{k} ({v})" for k, v in sources.items()) or "none found"
    )

    def load(directory: Path, manifest: dict) -> TorchRunner:
        check_sources(sources, manifest)
        try:
            built = spec.with_config(manifest.get("config") or {})
        except ValueError as e:
            raise RolloutError(f"the build's config does not fit this service's model code: {e}") from None
        if WEIGHTS not in manifest["files"]:
            raise RolloutError(f"the build has no {WEIGHTS}")
        try:
            weights = loading.load_weights(built, Path(directory) / WEIGHTS)
        except Exception as e:  # noqa: BLE001 - WeightsError, safetensors errors, shape mismatches
            raise RolloutError(f"cannot load {WEIGHTS}: {runtime_lib.first_line(e)}") from None
        signature = from_manifest(manifest) if manifest.get("serving") else spec_signature(built, Path(directory))
        text = None
        if built.text is not None:
            missing = [name for name in built.text.files if name not in manifest["files"]]
            if missing:
                raise RolloutError(f"the build does not ship its text front end ({', '.join(missing)} missing)")
            try:
                text = built.text.load(Path(directory))
                text(["warm-up"])
            except Exception as e:  # noqa: BLE001 - a tokenizer that does not load refuses the build
                raise RolloutError(f"cannot load the build's text front end: {runtime_lib.first_line(e)}") from None
        return TorchRunner(built, weights, signature, text)

    load.runtime = RUNTIME
    return load
