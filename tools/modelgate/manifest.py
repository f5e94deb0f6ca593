"""The release manifest (`manifest.json` of a release bundle): its schema, the one place it is
written, and the one check every reader applies.

    {"schema": "modelgate/release@1", "model": ..., "build_hash": <64 hex>,
     "files": {"weights.safetensors": {"sha256": ..., "blake3": ..., "size": ...}, ...},
     "inputs": {...}, "packages": {...}, "toolchain": {...}, "provenance": {...}, "config": {...},
     "training": {...}, "metrics": {...},
     "metric_gates": {"accuracy": {"floor": ..., "max_regression": ..., "higher_is_better": true}},
     "serving": {...}, "gate": {"passed": true, "checks": [...]},
     "tests": {"schema": "modelgate/tests@1", "receipts": {...}}}

It is written once per release, by the release action (`main`: the `ReleaseManifest` action of
tools/private/model_release.bzl), from the records the build's other actions made once each:

    export.json    the export's (modelgate.export): the build hash, what the build read (`inputs`,
                   golden data among them) and made (`files`), with their sha256; the toolchain
    .gate.json     the gate's verdict (GATE_SCHEMA, `verdict`; modelgate.gate): its checks, the
                   metrics of the saved weights, the serving signature
    receipts       the test receipts (modelgate.receipts), bound to the build here and written
                   into the bundle beside the manifest

Digests: a file's sha256 is carried forward from the record that first computed it (the export's,
for its outputs and its inputs); its blake3 is computed here, once, for every file. Within one
build, Bazel hands each action the very bytes the action before it wrote (its caches are keyed by
content digests), so no action re-hashes a file to check it; a file is hashed again only where it
crosses a trust boundary: promote (every bundle file by its blake3, before the upload or while
copying it) and fetch (every blob while it streams). A file no record lists (a bundle file from
outside the workspace: minilm's tokenizer) gets its sha256 here, in its blake3's pass.

`check` is the one validation of a manifest's shape, applied by every reader: promote's bundle
read (modelgate.registry.bundle), the registry's stored builds (modelgate.registry.records, which
fetch goes through) and this writer before it writes. `read_json` is how a release's documents
(this manifest, a receipt, the export's and gate's records) are read: a missing or garbled one is
one line.

Standard library only (blake3 through modelgate.digests).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from modelgate import digests, receipts
from modelgate.errors import BundleError, ModelgateError, UsageError
from modelgate.formats import RELEASE_MANIFEST, RELEASE_SCHEMA
from modelgate.registry import tags
from modelgate.runner import run

GATE_SCHEMA = "modelgate/gate@1"  # the gate action's verdict (<bundle>.gate.json)

# What the manifest does not take from the export's record: its schema, the rule's attributes
# (inside the build hash already) and `training`, which it always lists (empty where none).
_NOT_CARRIED = ("schema", "attributes", "training")


def read_json(path: str | Path, what: str, error: type[ModelgateError]) -> object:
    """The JSON document at `path`; `error` in one line starting with `what` where it is missing
    or is not JSON."""
    try:
        return json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise error(f"{what} is missing") from None
    except (OSError, ValueError) as e:
        raise error(f"{what} is not readable JSON: {e}") from None


# ------------------------------------------------------------------------------------------------
# the gate's verdict (written by the gate action, read by the release action)


def verdict(export: dict, checks: list[dict], metrics: dict, serving: dict | None) -> dict:
    """The gate's record for the build `export` (its export.json) names: each check's
    {"name", "passed", "detail"}, the metrics of the saved weights and the serving signature."""
    doc = {
        "schema": GATE_SCHEMA,
        "model": export["model"],
        "build_hash": export["build_hash"],
        "metrics": metrics,
        "gate": {"passed": all(c["passed"] for c in checks), "checks": checks},
    }
    if serving is not None:
        doc["serving"] = serving
    return doc


# ------------------------------------------------------------------------------------------------
# writing


@dataclass(frozen=True)
class BundleFile:
    """A file the bundle ships: its name there, where it lies, and its workspace path (Bazel's
    short path), under which the export's record may list it among the build's inputs."""

    name: str
    path: Path
    source: str | None = None


def compose(export: dict, gate: dict, files: list[BundleFile]) -> dict:
    """The manifest of the build `export` names, which the gate passed (`gate`: its verdict),
    listing `files` (the export's files, the golden data, bundle files), without receipts yet
    (add_receipts). BundleError, in one line, for a verdict of another build or a failing one, an
    exported file not given, two files of one name, or a file of another size than recorded."""
    model, build_hash = export.get("model"), str(export.get("build_hash"))
    where = f"release {model}"
    if not isinstance(gate, dict) or gate.get("schema") != GATE_SCHEMA or not isinstance(gate.get("gate"), dict):
        raise BundleError(f"{where}: the gate's verdict is not a {GATE_SCHEMA} document")
    if gate.get("build_hash") != build_hash:
        raise BundleError(f"{where}: the gate's verdict is for build {str(gate.get('build_hash'))[:12]}, not {build_hash[:12]}")
    if gate["gate"].get("passed") is not True:
        raise BundleError(f"{where}: its release gate did not pass")
    given: dict[str, BundleFile] = {}
    for f in files:
        if f.name in given:
            raise BundleError(f"{where} refused: bundle file {f.name!r} would replace the bundle's own {f.name}")
        given[f.name] = f
    exported = export.get("files") or {}
    missing = sorted(set(exported) - set(given))
    if missing:
        raise BundleError(f"{where} refused: the export's {', '.join(missing)} was not given")
    inputs = export.get("inputs") or {}
    manifest = {k: v for k, v in export.items() if k not in _NOT_CARRIED}
    manifest["files"] = {
        name: _file_entry(f, exported.get(name) or ({"sha256": inputs[f.source]} if f.source in inputs else None), where)
        for name, f in sorted(given.items())
    }
    manifest["schema"] = RELEASE_SCHEMA
    manifest["metrics"] = gate.get("metrics", {})
    manifest["training"] = export.get("training", {})
    if gate.get("serving") is not None:
        manifest["serving"] = gate["serving"]
    manifest["gate"] = gate["gate"]
    return manifest


def _file_entry(f: BundleFile, recorded: dict | None, where: str) -> dict:
    """{"sha256", "blake3", "size"}: the sha256 (and size) the build recorded, with the blake3 of
    the file; both read here, in one pass, for a file no record lists."""
    try:
        if recorded is None:
            size, sha256, b3 = digests.file_digests(f.path)
            return {"sha256": sha256, "blake3": b3, "size": size}
        size, b3 = digests.file_digest(f.path, "blake3")
    except OSError as e:
        raise BundleError(f"{where}: cannot read {f.name} ({e.filename}): {e.strerror}") from None
    if recorded.get("size", size) != size:
        raise BundleError(f"{where} refused: {f.name} is {size} bytes, the export recorded {recorded['size']}: not the file the build made")
    return {"sha256": recorded["sha256"], "blake3": b3, "size": size}


def _bytes_entry(data: bytes) -> dict:
    b3 = digests.new("blake3")
    b3.update(data)
    return {"sha256": hashlib.sha256(data).hexdigest(), "blake3": b3.hexdigest(), "size": len(data)}


def add_receipts(directory: Path, manifest: dict, docs: list[dict], build_outputs: dict[str, str]) -> dict:
    """The manifest with the test receipts `docs` bound to its build (modelgate.receipts.bind:
    ReceiptError, naming them, unless each passed and tested this build's files), each written
    into `directory` as the bundle ships it and listed among its files. `build_outputs`:
    {workspace path: bundle name} of the exported files, as the tests read them."""
    section, bundled = receipts.bind(manifest["model"], manifest, docs, build_outputs)
    out = dict(manifest, files=dict(manifest["files"]), tests=section)
    for file_name, doc in bundled.items():
        data = receipts.bundle_bytes(doc)
        (Path(directory) / file_name).write_bytes(data)
        out["files"][file_name] = _bytes_entry(data)
    return out


def dumps(manifest: dict) -> str:
    """The manifest as the bundle holds it."""
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


# ------------------------------------------------------------------------------------------------
# validation


def check(manifest, where: str) -> None:
    """BundleError (one line, `release bundle <where>: ...`) unless `manifest` is a promotable
    release manifest: this schema, a model name and build hash, a gate that passed, flat file
    names with a sha256, a size and (where listed) a blake3, finite metrics and numeric budgets."""
    if not isinstance(manifest, dict):
        raise BundleError(f"release bundle {where}: {RELEASE_MANIFEST} is not a JSON object")
    schema = manifest.get("schema")
    if schema != RELEASE_SCHEMA:
        raise BundleError(f"release bundle {where}: unknown schema {schema!r} (this promote reads {RELEASE_SCHEMA})")
    try:
        tags.check_model_name(manifest.get("model"))
        tags.check_build_hash(manifest.get("build_hash"))
    except UsageError as e:
        raise BundleError(f"release bundle {where}: {e}") from None
    gate = manifest.get("gate")
    if not isinstance(gate, dict) or gate.get("passed") is not True:
        failed = [c.get("name") for c in (gate or {}).get("checks", []) if isinstance(c, dict) and not c.get("passed")]
        detail = f" (failed checks: {', '.join(map(str, failed))})" if failed else ""
        raise BundleError(f"release bundle {where}: its release gate did not pass{detail}; refusing to promote it")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"release bundle {where}: 'files' must list at least one file")
    for name, spec in files.items():
        try:
            tags.check_file_name(name)
        except UsageError as e:
            raise BundleError(f"release bundle {where}: {e}") from None
        if (
            not isinstance(spec, dict)
            or not isinstance(spec.get("sha256"), str)
            or not tags.BUILD_HASH.fullmatch(spec["sha256"])
            or not isinstance(spec.get("size"), int)
            or spec["size"] < 0
        ):
            raise BundleError(f"release bundle {where}: files[{name!r}] needs a hex 'sha256' and an integer 'size'")
        if "blake3" in spec and (not isinstance(spec["blake3"], str) or not digests.HEX.fullmatch(spec["blake3"])):
            raise BundleError(f"release bundle {where}: files[{name!r}]: 'blake3' must be 64 lowercase hex digits")
    for field in ("metrics", "metric_gates"):
        if not isinstance(manifest.get(field, {}), dict):
            raise BundleError(f"release bundle {where}: '{field}' must be an object")
    for name, value in manifest.get("metrics", {}).items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise BundleError(f"release bundle {where}: metric {name!r} is not a finite number")
    for name, gate_spec in manifest.get("metric_gates", {}).items():
        if not isinstance(gate_spec, dict) or not isinstance(gate_spec.get("max_regression"), (int, float)):
            raise BundleError(f"release bundle {where}: metric_gates[{name!r}] needs a numeric 'max_regression'")


# ------------------------------------------------------------------------------------------------
# the release action


def _bundle_file(value: str) -> BundleFile:
    name, source, path = (value.split("=", 2) + ["", ""])[:3]
    if not name or not path:
        raise UsageError(f"--file={value}: expected NAME=WORKSPACE_PATH=PATH")
    return BundleFile(name, Path(path), source or None)


def _main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="manifest", description="Write a release bundle's manifest.json, once.")
    p.add_argument("--model", required=True)
    p.add_argument("--export", required=True, help="the export's record (export.json)")
    p.add_argument("--gate", required=True, help="the gate's verdict (<bundle>.gate.json)")
    p.add_argument("--out", required=True, help="BUNDLE/manifest.json; the bound receipts are written beside it")
    p.add_argument("--receipt", action="append", default=[], help="a test receipt the release needs")
    p.add_argument("--file", action="append", default=[], help="NAME=WORKSPACE_PATH=PATH: a file the bundle ships")
    args = p.parse_args(argv)
    where = f"release {args.model}"
    export = read_json(args.export, f"{where}: the export's record {args.export}", BundleError)
    if not isinstance(export, dict) or export.get("model") != args.model or not isinstance(export.get("files"), dict):
        raise BundleError(f"{where}: {args.export} is not {args.model}'s export record")
    gate = read_json(args.gate, f"{where}: the gate's verdict {args.gate}", BundleError)
    files = [_bundle_file(v) for v in args.file]
    docs = [receipts.check_receipt(read_json(path, f"{where}: receipt {Path(path).name}", receipts.ReceiptError), f"{where}: receipt {Path(path).name}")
            for path in args.receipt]  # fmt: skip
    out = Path(args.out)
    manifest = compose(export, gate, files)
    build_outputs = {f.source: f.name for f in files if f.name in export["files"] and f.source}
    manifest = add_receipts(out.parent, manifest, docs, build_outputs)
    check(manifest, str(out.parent))
    out.write_text(dumps(manifest))
    entries = manifest["tests"]["receipts"]
    ran = [e for e in entries.values() if e["status"] == "passed"]
    absent = [n for n, e in sorted(entries.items()) if e["status"] == "not-run"]
    note = f"; not run: {', '.join(absent)}" if absent else ""
    print(f"{where}: {len(ran)} receipt(s) passed for build {manifest['build_hash'][:12]}{note}")
    return 0


def main(argv: list[str] | None = None) -> int:
    # Its errors name the release (and the receipt or file) themselves: no program prefix.
    return run(None, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
