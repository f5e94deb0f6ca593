"""`bazel run //models/<m>:train`: train outside the build, upload the checkpoint, rewrite the pin.

Training here is not bound by the build's constraints: any device (a GPU where there is one),
every thread, the fast kernels of this CPU. The result is a checkpoint (safetensors of the
model's state), uploaded content-addressed to the registry (`blobs/sha256/<hex>`, create-only,
the same store as release files), and the model's pin file `models/<m>/checkpoint.json` is
rewritten to name it: digest, size, sources, provenance (commit, device, torch, ...) and the
metrics it reached, next to those of the checkpoint pinned before. The build then exports that
checkpoint (it trains nothing); `golden_update` follows, to regenerate the golden data from it.

`--portable` trains in the build's portable numerics mode instead (CPU only, one thread): the
checkpoint is then bit for bit the one an in-build export would train.
"""

from __future__ import annotations

import datetime
import json
import os
import pwd
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from modelgate import checkpoint as checkpoints
from modelgate import portable
from modelgate.formats import file_digest
from modelgate.registry.storage import human_size
from modelgate.sources import check_sources


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise checkpoints.CheckpointError(f"--device={name}: expected cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise checkpoints.CheckpointError(f"--device={name}: no CUDA device is visible here (use --device=cpu or auto)")
    return device


def _git(workspace: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(workspace), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({portable.cpu_model()})"


def metric_changes(spec, before: dict, after: dict) -> list[str]:
    """One line per metric: the value reached, the previous pin's, and whether that is better."""
    lines = []
    for name in sorted(after):
        value = after[name]
        gate = spec.metrics.get(name)
        line = f"{name:>12} {value:.6g}"
        if name in before:
            delta = value - before[name]
            better = (delta > 0) == (gate.higher_is_better if gate else True)
            verdict = "unchanged" if delta == 0 else ("better" if better else "worse")
            line += f"  (was {before[name]:.6g}, {delta:+.6g}, {verdict})"
        else:
            line += "  (no previous pin)"
        if gate and not gate.passes_floor(value):
            line += f"  BELOW THE FLOOR {gate.floor} - the release gate will refuse it"
        lines.append(line)
    return lines


def _upload(uri, path: Path, sha256: str, size: int) -> tuple[bool, str]:
    """Puts the checkpoint in the registry as a blob: (whether bytes were uploaded, the source URI
    that reads it back)."""
    from modelgate.registry.storage import open_storage

    storage = open_storage(uri)
    key = f"blobs/sha256/{sha256}"
    uploaded = not storage.exists(key) and storage.put_file(key, path, size)
    return uploaded, storage.source_uri(key)


def run(spec, workspace: Path, args) -> int:
    import torch
    from safetensors.torch import save_file

    from modelgate.export import state_tensors
    from modelgate.registry import uri as registry_uri

    display = f"models/{spec.name}/{checkpoints.PIN_FILE}"
    pin_path = workspace / display
    if spec.train is None:
        raise checkpoints.CheckpointError(f"model {spec.name}: its spec has no train(); its checkpoint comes from elsewhere: edit {display}")
    previous = None
    if pin_path.exists():
        try:
            previous = checkpoints.read_pin(pin_path, display, spec.name)
        except checkpoints.CheckpointError as e:
            print(f"train {spec.name}: replacing an unusable pin ({e})", file=sys.stderr)
    # Where the checkpoint goes, checked before an hour of training rather than after.
    target = None if args.dry_run else registry_uri.resolve(args.registry)
    device = _device(args.device)

    start = time.monotonic()
    if args.portable:
        if device.type != "cpu":
            raise checkpoints.CheckpointError(f"train {spec.name}: --portable trains on the CPU; drop --device={args.device}")
        model, stats, identity = portable.train(spec, strict=True)
        numerics = identity["numerics"]
    else:
        portable.seed_everything(int(spec.config.get("seed", 0)))
        model = spec.new_model().to(device)
        stats = spec.train(model, spec.config) or {}
        model.eval()
        numerics = "native"
    seconds = time.monotonic() - start
    model = model.to("cpu")
    metrics = spec.evaluate(model, spec.config)
    tensors = state_tensors(model)

    print(f"train {spec.name}: trained on {_device_name(device)} in {seconds:.1f} s ({numerics} numerics)")
    for line in metric_changes(spec, dict(previous.metrics) if previous else {}, metrics):
        print(line)

    with tempfile.TemporaryDirectory(prefix=f"modelgate-train-{spec.name}-") as tmp:
        path = Path(tmp) / "checkpoint.safetensors"
        save_file(tensors, str(path))
        size, sha256 = file_digest(path)
        if previous and previous.sha256 == sha256:
            print(f"the checkpoint is the one pinned already ({sha256[:12]})")
        if args.dry_run:
            print(f"dry run: checkpoint {sha256[:12]} ({human_size(size)}) not uploaded; {display} unchanged")
            return 0
        uploaded, source = _upload(target, path, sha256, size)
    commit = _git(workspace, "rev-parse", "HEAD")
    dirty = bool(_git(workspace, "status", "--porcelain", "--untracked-files=no"))
    provenance = {
        "commit": commit + ("+dirty" if dirty else "") if commit else "unknown",
        "device": _device_name(device),
        "numerics": numerics,
        "torch": torch.__version__,
        "config": {k: v for k, v in sorted(spec.config.items())},
        "training": {k: v for k, v in sorted(dict(stats).items())},
        "trained_at": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "by": os.environ.get("USER") or pwd.getpwuid(os.getuid()).pw_name,
        "command": f"bazel run //models/{spec.name}:train",
    }
    # The same bytes keep every source they were known by; new bytes start afresh.
    known = list(previous.sources) if previous and previous.sha256 == sha256 else []
    sources = list(dict.fromkeys([source, *args.source, *known]))
    pin = checkpoints.Pin(
        model=spec.name,
        sha256=sha256,
        size=size,
        sources=tuple(sources),
        provenance=provenance,
        metrics={k: float(v) for k, v in sorted(metrics.items())},
        path=display,
    )
    checkpoints.parse_pin(json.dumps(pin.to_json()), display, spec.name)  # what we write, we can read
    check_sources(pin)  # and fetch
    checkpoints.write_pin(pin_path, pin)
    print(f"checkpoint {sha256[:12]} ({human_size(size)}) {'uploaded to' if uploaded else 'already in'} {target}")
    print(f"{display}: pinned {sha256[:12]}" + (f" (was {previous.sha256[:12]})" if previous else " (new pin: the build now exports it instead of training)"))
    print(f"next: bazel run //models/{spec.name}:golden_update && bazel test //models/{spec.name}/... && git add {display} golden/{spec.name}")
    return 0
