"""Test receipts: what a build was tested with, bound to that build, checked again by promote.

A *receipt* is what one model_test variant's pytest run recorded (tools/bin/receipt_runner.py, a
cached Bazel action; tools/private/receipts.bzl says why): the target, the test files and every
file the tests read with their sha256, the lock entries of their pip closure, the passed /
skipped / failed counts, each test's outcome, and a status:

    passed    every selected test passed (skips allowed)
    failed    a test failed or errored, or pytest could not run them
    no-tests  no test was selected (pytest exit 5)
    timeout   (not written by the runner: a run past its timeout fails the action instead, so that
              no cache keeps a machine's slowness as the inputs' result)
    not-run   a GPU variant on a build whose torch cannot use a GPU (nothing ran)

What is here, in the order a receipt meets it:
  - recording (the ModelTest action): `input_digests`, `parse_junit`, `make_receipt`, `one_line`;
  - binding (the release action, modelgate.manifest.add_receipts): `check_receipt`, then `bind`
    accepts a receipt for a build only if it passed (or is a GPU variant that did not run) and
    every file it shares with the build, an input of the build hash or an exported file, has the
    build's digest; each bound receipt is stamped with the build hash and shipped in the bundle
    as `receipt.<target>.json` (`bundle_bytes`). The build hash never covers test code: a
    test-only edit changes the receipts, not the weights;
  - promote's side, `check_bundle`: the receipts in a bundle are the ones the manifest lists,
    byte for byte, for this build, and passed; `--require=gpu` also wants a GPU receipt that ran;
  - what `registry show` and the service's /version list: `summary`, `describe`.

Standard library only: the test runner, the release action, promote, `registry show` and the
service import it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from modelgate.errors import ModelgateError

RECEIPT_SCHEMA = "modelgate/receipt@1"
TESTS_SCHEMA = "modelgate/tests@1"
STATUSES = ("passed", "failed", "no-tests", "timeout", "not-run")
VARIANTS = ("cpu", "gpu")
REQUIREMENTS = ("cpu", "gpu")


class ReceiptError(ModelgateError):
    """One line (or a few) for the user; the action or command exits 1."""


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def input_digests(pairs: list[tuple[str, str]], records: list[tuple[str, str]] = ()) -> dict[str, str]:
    """{workspace path: sha256} of the files the tests read, given as (workspace path, path).

    A file that one of the export `records` (export.json, as (workspace path, path)) lists, one of
    its files or an input of its build hash, takes the sha256 recorded there where its size agrees:
    the export computed it over the very bytes this action was given (Bazel hands each action the
    outputs of the one before), so hashing the weights again here would check nothing. Every other
    file is hashed."""
    recorded: dict[str, dict] = {}
    for rel, path in records:
        doc = json.loads(Path(path).read_bytes())
        directory = rel.rpartition("/")[0]
        for name, entry in doc["files"].items():
            recorded[f"{directory}/{name}" if directory else name] = entry
        for other, digest in doc["inputs"].items():
            recorded.setdefault(other, {"sha256": digest})
    out = {}
    for rel, path in sorted(dict(pairs).items()):
        entry = recorded.get(rel)
        if entry is not None and entry.get("size") in (None, os.stat(path).st_size):
            out[rel] = entry["sha256"]
        else:  # not listed, or not the file the record describes: hash what is there
            out[rel] = sha256_file(path)
    return out


def bundle_file_name(target: str) -> str:
    return f"receipt.{target.rsplit(':', 1)[-1]}.json"


def short_name(target: str) -> str:
    return target.rsplit(":", 1)[-1]


# ------------------------------------------------------------------------------------------------
# recording (the ModelTest action)


def parse_junit(path) -> dict:
    """pytest's JUnit XML -> {"tests": [{"id", "outcome"}]}; outcome passed/failed/error/skipped. No
    timings: a receipt records what the tests found, which is the same on every runner, so that
    two runners that test one build make the same release (timings go to the test log)."""
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError):
        return {"tests": []}
    tests = []
    for case in root.iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                break
        name = f"{case.get('classname', '')}::{case.get('name', '')}".lstrip(":")
        tests.append({"id": name, "outcome": outcome})
    return {"tests": tests}


def make_receipt(
    *, target, variant, exit_code, timed_out, timeout_s, results, test_files, inputs, packages
) -> dict:
    tests = (results or {}).get("tests", [])
    counts = {k: sum(1 for t in tests if t["outcome"] == k) for k in ("passed", "failed", "error", "skipped")}
    counts["total"] = len(tests)
    if timed_out:
        status = "timeout"
    elif exit_code == 5:
        status = "no-tests"
    elif exit_code != 0 or counts["failed"] or counts["error"]:
        status = "failed"
    else:
        status = "passed"
    return {
        "schema": RECEIPT_SCHEMA,
        "target": target,
        "variant": variant,
        "status": status,
        "exit_code": exit_code,
        "counts": counts,
        "failures": [t["id"] for t in tests if t["outcome"] in ("failed", "error")],
        "tests": tests,
        "timeout_s": timeout_s,
        "test_files": dict(sorted(test_files.items())),
        "inputs": dict(sorted(inputs.items())),
        "packages": dict(sorted(packages.items())),
        "ran_on": {"machine": platform.machine(), "python": platform.python_version()},
    }


def one_line(doc: dict, duration_s: float | None = None) -> str:
    """`//m:model_test_cpu: passed (9 passed, 0 failed, 3 skipped in 4.2 s)`; the time only where the
    caller measured it (the receipt itself records none)."""
    target, status = doc.get("target", "?"), doc.get("status", "?")
    if status == "not-run":
        return f"{target}: not run ({doc.get('reason', 'no reason recorded')})"
    c = doc.get("counts") or {}
    failed = c.get("failed", 0) + c.get("error", 0)
    took = f" in {duration_s:.1f} s" if duration_s is not None else ""
    text = f"{target}: {status} ({c.get('passed', 0)} passed, {failed} failed, {c.get('skipped', 0)} skipped{took})"
    if status == "timeout":
        text += f"; stopped after {doc.get('timeout_s')} s"
    if doc.get("failures"):
        text += ": " + ", ".join(doc["failures"][:5]) + (" ..." if len(doc["failures"]) > 5 else "")
    return text


# ------------------------------------------------------------------------------------------------
# binding (the release action: modelgate.manifest)


def check_receipt(doc, where: str) -> dict:
    """`doc`, or ReceiptError (`<where>: ...`) unless it is a receipt with a target, a variant and a status."""
    if not isinstance(doc, dict) or doc.get("schema") != RECEIPT_SCHEMA:
        raise ReceiptError(f"{where}: not a {RECEIPT_SCHEMA} receipt")
    if doc.get("status") not in STATUSES or doc.get("variant") not in VARIANTS or not isinstance(doc.get("target"), str):
        raise ReceiptError(f"{where}: needs a target, a variant ({'/'.join(VARIANTS)}) and a status ({'/'.join(STATUSES)})")
    return doc


def bundle_bytes(doc: dict) -> bytes:
    """A bound receipt as the bundle ships it (receipt.<target>.json)."""
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def _binding_problem(doc: dict, build: dict, build_outputs: dict[str, str], model: str) -> str | None:
    """Why `doc` is not a receipt of `build`'s files, or None."""
    build_inputs = build.get("inputs") or {}
    build_files = build.get("files") or {}
    shared = 0
    for rel, digest in sorted((doc.get("inputs") or {}).items()):
        expected = build_inputs.get(rel)
        if expected is None and rel in build_outputs:
            expected = (build_files.get(build_outputs[rel]) or {}).get("sha256")
        if expected is None:
            continue
        shared += 1
        if digest != expected:
            return f"it tested {rel} with sha256 {str(digest)[:12]}, build {build['build_hash'][:12]} has {expected[:12]}"
    own = sorted(rel for rel in build_inputs if rel.startswith(f"models/{model}/"))
    missing = [rel for rel in own if rel not in (doc.get("inputs") or {})]
    if not shared or missing:
        return f"it did not test this build's code ({', '.join(missing[:3]) or 'no file in common with build ' + build['build_hash'][:12]})"
    for name, entry in sorted((doc.get("packages") or {}).items()):
        theirs = (build.get("packages") or {}).get(name)
        if theirs is not None and theirs.get("version") != entry.get("version"):
            return f"it ran on {name} {entry.get('version')}, build {build['build_hash'][:12]} on {theirs.get('version')}"
    return None


def bind(model: str, build: dict, docs: list[dict], build_outputs: dict[str, str]) -> tuple[dict, dict[str, dict]]:
    """(the manifest's `tests` section, {bundle file name: bound receipt}); raises ReceiptError."""
    problems, entries, bundled = [], {}, {}
    build_hash = build["build_hash"]
    for doc in docs:
        name, target = short_name(doc["target"]), doc["target"]
        status = doc["status"]
        if status == "not-run" and doc["variant"] != "gpu":
            problems.append(f"receipt {name} ({target}) did not run; only a GPU variant may be absent")
            continue
        if status not in ("passed", "not-run"):
            problems.append(f"receipt {one_line(doc)}; see: bazel test {target}")
            continue
        if status == "passed":
            why = _binding_problem(doc, build, build_outputs, model)
            if why:
                problems.append(f"receipt {name} ({target}) is not a receipt of this build: {why}")
                continue
        bound = dict(doc, model=model, build_hash=build_hash if status == "passed" else None)
        data = bundle_bytes(bound)
        file_name = bundle_file_name(target)
        bundled[file_name] = bound
        entries[name] = _entry(bound, file_name, hashlib.sha256(data).hexdigest(), len(data))
    if problems:
        head = f"release {model} refused: " if len(problems) == 1 else f"release {model} refused ({len(problems)} receipts):\n  "
        raise ReceiptError(head + "\n  ".join(problems))
    return {"schema": TESTS_SCHEMA, "receipts": entries}, bundled


def _entry(doc: dict, file_name: str, digest: str, size: int) -> dict:
    entry = {
        "target": doc["target"],
        "variant": doc["variant"],
        "status": doc["status"],
        "file": file_name,
        "sha256": digest,
        "size": size,
    }
    if doc["status"] == "not-run":
        entry["reason"] = doc.get("reason")
    else:
        entry.update(counts=doc.get("counts"), test_files=doc.get("test_files"))
    return entry


# ------------------------------------------------------------------------------------------------
# promote's check of a bundle


def parse_requirements(values: list[str]) -> set[str]:
    required = {"cpu"}
    for value in values:
        for item in filter(None, (v.strip() for v in value.split(","))):
            if item not in REQUIREMENTS:
                raise ReceiptError(f"--require={item}: expected one of {', '.join(REQUIREMENTS)}")
            required.add(item)
    return required


def check_bundle(directory: Path, manifest: dict, required: set[str]) -> list[str]:
    """Raises ReceiptError (one line, naming the model and the receipt) unless the bundle's receipts
    are the ones its manifest lists, made for its build, and passed; returns notes (absent GPU
    receipts) for promote to print."""
    model, build_hash = manifest.get("model", "?"), str(manifest.get("build_hash", ""))
    where = f"{model} ({directory})"
    section = manifest.get("tests")
    if not isinstance(section, dict) or not isinstance(section.get("receipts"), dict) or not section["receipts"]:
        raise ReceiptError(
            f"{where}: the release lists no test receipts, so nothing says its tests passed; "
            f"build it with: bazel build //models/{model}:release"
        )
    files = manifest.get("files") or {}
    notes, absent, gpu_ran = [], [], []
    for name, entry in sorted(section["receipts"].items()):
        if not isinstance(entry, dict) or entry.get("status") not in STATUSES or entry.get("variant") not in VARIANTS:
            raise ReceiptError(f"{where}: receipt {name}: malformed entry in manifest.json")
        file_name = entry.get("file")
        if not isinstance(file_name, str) or file_name != bundle_file_name(entry.get("target", "")):
            raise ReceiptError(f"{where}: receipt {name}: the manifest names no receipt file for it")
        path = Path(directory) / file_name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ReceiptError(f"{where}: receipt {name} is missing: {file_name} is listed in manifest.json but not in the bundle") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.get("sha256") or digest != (files.get(file_name) or {}).get("sha256"):
            raise ReceiptError(
                f"{where}: receipt {name} ({file_name}) was changed after the release built "
                f"(sha256 {digest[:12]}, manifest.json says {str(entry.get('sha256'))[:12]}); rebuild: bazel build //models/{model}:release"
            )
        try:
            doc = json.loads(data)
        except ValueError:
            raise ReceiptError(f"{where}: receipt {name} ({file_name}) is not JSON") from None
        if doc.get("target") != entry.get("target") or doc.get("status") != entry.get("status") or doc.get("variant") != entry.get("variant"):
            raise ReceiptError(f"{where}: receipt {name} ({file_name}) disagrees with manifest.json about its target, variant or status")
        status = entry["status"]
        if status == "not-run":
            if entry["variant"] != "gpu":
                raise ReceiptError(f"{where}: receipt {name} did not run; only a GPU variant may be absent")
            absent.append((name, entry.get("reason") or "not run"))
            continue
        if doc.get("build_hash") != build_hash:
            raise ReceiptError(
                f"{where}: receipt {name} ({file_name}) is for build {str(doc.get('build_hash'))[:12]}, "
                f"not this bundle's {build_hash[:12]}; refusing"
            )
        if status != "passed":
            raise ReceiptError(f"{where}: receipt {one_line(doc)}; refusing")
        if entry["variant"] == "gpu":
            gpu_ran.append(name)
    reasons = "; ".join(dict.fromkeys(reason for _, reason in absent))
    detail = f"{', '.join(name for name, _ in absent)} ({reasons})" if absent else ""
    if "gpu" in required and (absent or not gpu_ran):
        raise ReceiptError(f"{where}: --require=gpu and no GPU receipt ran for build {build_hash[:12]}: {detail or 'the release has no GPU variant'}")
    if absent:
        notes.append(f"{model} {build_hash[:12]}: GPU receipts not recorded: {detail}; --require=gpu would refuse it")
    return notes


# ------------------------------------------------------------------------------------------------
# what registry show and /version list


def summary(manifest: dict) -> dict:
    """{target short name: {"status", "variant", counts..., "test_files"}} from a (registry) manifest."""
    section = manifest.get("tests") if isinstance(manifest, dict) else None
    receipts = section.get("receipts") if isinstance(section, dict) else None
    if not isinstance(receipts, dict):
        return {}
    out = {}
    for name, e in sorted(receipts.items()):
        if not isinstance(e, dict):
            continue
        item = {"target": e.get("target"), "variant": e.get("variant"), "status": e.get("status"), "sha256": e.get("sha256")}
        if e.get("status") == "not-run":
            item["reason"] = e.get("reason")
        else:
            c = e.get("counts") or {}
            item.update(
                passed=c.get("passed", 0), failed=c.get("failed", 0) + c.get("error", 0), skipped=c.get("skipped", 0),
                test_files=e.get("test_files") or {},
            )  # fmt: skip
        out[name] = item
    return out


def describe(items: dict) -> list[str]:
    """One line per receipt, for `registry show`."""
    lines = []
    for name, r in sorted(items.items()):
        if r.get("status") == "not-run":
            lines.append(f"{name}: not run ({r.get('reason')})")
            continue
        files = ", ".join(f"{path} {str(digest)[:12]}" for path, digest in sorted((r.get("test_files") or {}).items()))
        lines.append(
            f"{name}: {r.get('status')} {r.get('passed')} passed, {r.get('failed')} failed, {r.get('skipped')} skipped; {files}"
        )
    return lines
