"""Which test targets a change between two revisions can affect.

The changed files come from git (base..head, plus the working tree's uncommitted changes); the
tests that depend on them from `bazel query` over the working tree. A file must be a target to
be queried, so each changed file is first mapped onto the build graph:

  a source file that a rule or exports_files names  -> that file's label
  a BUILD file (added, changed)                     -> every target of its package
  a deleted file                                    -> every target of the package that held it
  a file no rule names, or outside any package      -> nothing (said so, per file)

  third_party/requirements_lock.txt (modified)      -> the @pip libraries of the packages whose
                                                       entries (version, hashes, marker) changed,
                                                       and the lock itself (both its labels)

Whatever cannot be reasoned about file by file fails open -- every test is listed, with the
reason: WORKSPACE, .bazelrc, any .bzl, anything else under third_party/ (requirements.in, the
CUDA lock, the pip rules), a lock whose global options changed, that does not parse, or whose
changed entry names no @pip library, and any error (a revision that does not exist, a shallow
clone without the base, a query that fails).

git and bazel query are reached through two small interfaces (`Git`, `Query`) so that the logic
is tested without either; `run_git` and `BazelQuery` are the real ones.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import re
import subprocess
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

from modelgate.errors import GitError, ModelgateError, QueryError

BUILD_FILE_NAMES = ("BUILD.bazel", "BUILD")
WORKSPACE_FILE_NAMES = ("WORKSPACE", "WORKSPACE.bazel")

# Changes that can affect any target, so no file-by-file answer is sound: fail open.
FAIL_OPEN_FILES = {
    "WORKSPACE": "external repositories and toolchains",
    "WORKSPACE.bazel": "external repositories and toolchains",
    ".bazelrc": "flags of every build and test",
    ".bazelignore": "which directories are packages",
    ".bazelversion": "the Bazel version",
    "tools/bazel": "the Bazel wrapper, which adds flags",
}
FAIL_OPEN_PREFIXES = {"third_party/": "pinned dependencies, the toolchain rules and Bazel shims"}
FAIL_OPEN_SUFFIXES = {".bzl": "Starlark rules and macros"}

# The CPU lock, which the pip repository @pip installs (without --config=gpu): a modification is
# mapped entry by entry onto @pip's libraries (one py_library per package, named by its
# normalized name), which is how a model's build hash covers it too (tools/private/
# model_weights.bzl). Added, deleted or renamed, it fails open like the rest of third_party/.
LOCK_FILE = "third_party/requirements_lock.txt"
PIP_REPOSITORY = "@pip"
LOCK_LABELS = ("//third_party:requirements_lock.txt", PIP_REPOSITORY + "//:requirements_lock.txt")

_TAG = re.compile(r"^[A-Za-z0-9_.+-]+$")


class FailOpen(Exception):
    """No sound file-by-file answer: list every test, for this reason."""


class Git(Protocol):
    def __call__(self, *args: str) -> str: ...


class Query(Protocol):
    def source_files(self, packages: Iterable[str]) -> set[str]: ...

    def pip_libraries(self) -> set[str]: ...

    def tests_depending_on(self, terms: Sequence[str], tags: TagFilter) -> list[str]: ...

    def all_tests(self, tags: TagFilter) -> list[str]: ...


@dataclasses.dataclass(frozen=True)
class TagFilter:
    """Like --test_tag_filters: `gpu` keeps tests tagged gpu, `-gpu` drops them. Tests tagged
    manual are never listed (`bazel test //...` skips them too)."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> TagFilter:
        include, exclude = [], []
        for word in filter(None, (w.strip() for w in text.split(","))):
            tag = word.lstrip("+-")
            if not _TAG.match(tag):
                raise ValueError(f"--tags: {word!r} is not a tag (letters, digits, _ . + -)")
            (exclude if word.startswith("-") else include).append(tag)
        return cls(tuple(include), tuple(exclude))

    def __str__(self) -> str:
        return ",".join(list(self.include) + ["-" + t for t in self.exclude])

    def keeps(self, tags: Iterable[str]) -> bool:
        tags = set(tags)
        if "manual" in tags or tags & set(self.exclude):
            return False
        return not self.include or bool(tags & set(self.include))


@dataclasses.dataclass(frozen=True)
class Change:
    """One changed path, as git reports it: status A(dded), M(odified), D(eleted), R(enamed)."""

    status: str
    path: str
    old_path: str | None = None

    def __str__(self) -> str:
        if self.status == "R":
            return f"R {self.old_path} -> {self.path}"
        return f"{self.status} {self.path}"


@dataclasses.dataclass(frozen=True)
class FileEffect:
    """How one changed file maps onto the build graph."""

    status: str
    path: str
    terms: tuple[str, ...]
    note: str


@dataclasses.dataclass
class Result:
    base: str
    head: str
    tags: str
    tests: list[str]
    fail_open: bool = False
    reasons: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    base_commit: str | None = None
    merge_base: str | None = None
    head_commit: str | None = None
    dirty: bool = False
    changes: list[Change] = dataclasses.field(default_factory=list)
    files: list[FileEffect] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "base": self.base,
            "base_commit": self.base_commit,
            "merge_base": self.merge_base,
            "head": self.head,
            "head_commit": self.head_commit,
            "dirty": self.dirty,
            "tags": self.tags,
            "fail_open": self.fail_open,
            "reasons": self.reasons,
            "notes": self.notes,
            "changes": [dataclasses.asdict(c) for c in self.changes],
            "files": [dataclasses.asdict(f) | {"terms": list(f.terms)} for f in self.files],
            "tests": self.tests,
        }

    def summary(self) -> str:
        """One line for people: how many tests, and why (every test, when failing open)."""
        count = f"{len(self.tests)} test target{'s' if len(self.tests) != 1 else ''}"
        if self.fail_open:
            return f"affected: every test ({count}); failing open: " + "; ".join(self.reasons)
        span = f"{_short(self.merge_base)}..{_short(self.head_commit)}"
        if self.dirty:
            span += " + working tree"
        return f"affected: {count} from {len(self.changes)} changed file(s) ({self.base} {span})"


def _short(commit: str | None) -> str:
    return (commit or "?")[:10]


# --- revisions and changed files ----------------------------------------------------------------


def _commit(git: Git, rev: str) -> str | None:
    try:
        return git("rev-parse", "--verify", "--quiet", "--end-of-options", rev + "^{commit}").strip() or None
    except GitError:
        return None


def _is_shallow(git: Git) -> bool:
    try:
        return git("rev-parse", "--is-shallow-repository").strip() == "true"
    except GitError:
        return False


def resolve_revisions(git: Git, base: str, head: str | None) -> tuple[str, str, str]:
    """(base commit, merge base, head commit); head must be the checked-out commit."""
    try:
        git("rev-parse", "--is-inside-work-tree")
    except GitError as e:
        raise FailOpen(f"not inside a git work tree ({e})") from None
    head_commit = _commit(git, "HEAD")
    if head_commit is None:
        raise FailOpen("HEAD has no commit yet")
    base_commit = _commit(git, base)
    if base_commit is None:
        if _is_shallow(git):
            raise FailOpen(
                f"base revision {base!r} is not in this shallow clone; fetch it "
                f"(git fetch --unshallow, or git fetch --depth=<n> origin <branch>)"
            )
        raise FailOpen(f"base revision {base!r} does not exist in this repository (git fetch it, or check the name)")
    if head is not None:
        wanted = _commit(git, head)
        if wanted is None:
            raise FailOpen(f"head revision {head!r} does not exist in this repository")
        if wanted != head_commit:
            raise FailOpen(
                f"--head={head} is {_short(wanted)} but the working tree is at {_short(head_commit)}; "
                f"bazel query reads the working tree, so check out {head} first"
            )
    try:
        merge_base = git("merge-base", base_commit, head_commit).strip()
    except GitError:
        merge_base = ""
    if not merge_base:
        if _is_shallow(git):
            raise FailOpen(
                f"{base!r} and HEAD have no common ancestor in this shallow clone; "
                f"deepen it (git fetch --deepen=<n>, or --unshallow)"
            )
        raise FailOpen(f"{base!r} and HEAD share no history")
    return base_commit, merge_base, head_commit


def parse_name_status(text: str) -> list[Change]:
    """Parses `git diff --name-status -z -M` output."""
    words = text.split("\0")
    changes, i = [], 0
    while i < len(words) and words[i]:
        status = words[i]
        kind = status[0]
        if kind in "RC":
            old, new = words[i + 1], words[i + 2]
            i += 3
            changes.append(Change("R", new, old) if kind == "R" else Change("A", new))
        else:
            path = words[i + 1]
            i += 2
            changes.append(Change(kind if kind in "ADM" else "M", path))
    return changes


def changed_files(git: Git, merge_base: str) -> tuple[list[Change], bool, list[str]]:
    """Files changed from the merge base to the working tree: (changes, dirty, notes).

    The working tree counts because bazel query reads it: an uncommitted edit changes the graph
    just as a committed one does.
    """
    changes = parse_name_status(git("diff", "--name-status", "-z", "-M", "--no-ext-diff", merge_base, "--"))
    untracked = [p for p in git("ls-files", "--others", "--exclude-standard", "-z").split("\0") if p]
    changes += [Change("A", p) for p in untracked]
    uncommitted = parse_name_status(git("diff", "--name-status", "-z", "--no-ext-diff", "HEAD", "--"))
    dirty_count = len({c.path for c in uncommitted} | set(untracked))
    notes = []
    if dirty_count:
        notes.append(
            f"the working tree has uncommitted changes ({dirty_count} file(s), {len(untracked)} untracked); "
            f"they are included, because bazel query reads the working tree"
        )
    return sorted(changes, key=lambda c: c.path), bool(dirty_count), notes


def fail_open_reasons(changes: Iterable[Change]) -> list[str]:
    reasons = []
    for change in changes:
        for path in filter(None, (change.path, change.old_path)):
            why = FAIL_OPEN_FILES.get(path)
            why = why or next((w for p, w in FAIL_OPEN_PREFIXES.items() if path.startswith(p)), None)
            why = why or next((w for s, w in FAIL_OPEN_SUFFIXES.items() if path.endswith(s)), None)
            if why:
                reasons.append(f"{path} changed ({why})")
    return sorted(set(reasons))


# --- files onto the build graph -----------------------------------------------------------------


class Workspace:
    """Package boundaries in the working tree: the nearest directory with a BUILD file."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.ignored = self._read_bazelignore()

    def _read_bazelignore(self) -> tuple[str, ...]:
        path = self.root / ".bazelignore"
        if not path.is_file():
            return ()
        lines = (line.strip().strip("/") for line in path.read_text().splitlines())
        return tuple(line for line in lines if line and not line.startswith("#"))

    def _is_ignored(self, directory: str) -> bool:
        if directory.split("/")[0].startswith("bazel-"):
            return True
        return any(directory == d or directory.startswith(d + "/") for d in self.ignored)

    def is_package(self, directory: str) -> bool:
        return any((self.root / directory / name).is_file() for name in BUILD_FILE_NAMES)

    def package_of(self, path: str) -> str | None:
        """The package that holds `path` ("" is the root package), or None if it is in none."""
        directory = posixpath.dirname(path)
        if self._is_ignored(directory):
            return None
        while True:
            if directory and any((self.root / directory / n).is_file() for n in WORKSPACE_FILE_NAMES):
                return None  # a nested workspace, not one of our packages
            if self.is_package(directory):
                return directory
            if not directory:
                return None
            directory = posixpath.dirname(directory)

    def has_files(self, directory: str) -> bool:
        d = self.root / directory
        return d.is_dir() and any(p.is_file() for p in d.rglob("*"))


def label(package: str, path: str) -> str:
    name = path[len(package) + 1 :] if package else path
    return f"//{package}:{name}"


def package_pattern(package: str) -> str:
    return f"//{package}:*"


def _parent_package(ws: Workspace, directory: str) -> str | None:
    return ws.package_of(directory) if directory else None


def resolve(changes: Sequence[Change], ws: Workspace, query: Query) -> list[FileEffect]:
    """Maps every changed file onto query terms (labels or //pkg:*), with a note for people."""
    expanded: list[tuple[str, str]] = []  # (status, path): a rename is a deletion plus an addition
    for change in changes:
        if change.status == "R":
            expanded += [("D", change.old_path), ("A", change.path)]
        else:
            expanded.append((change.status, change.path))
    removed_packages = {
        posixpath.dirname(p) for s, p in expanded if s == "D" and posixpath.basename(p) in BUILD_FILE_NAMES
    }
    removed_packages = {d for d in removed_packages if not ws.is_package(d)}

    effects: list[FileEffect] = []
    candidates: dict[str, tuple[str, str, str]] = {}  # label -> (status, path, package)
    for status, path in expanded:
        name = posixpath.basename(path)
        directory = posixpath.dirname(path)
        if name in BUILD_FILE_NAMES and not ws._is_ignored(directory):
            effects.append(_build_file_effect(status, path, ws))
            continue
        package = ws.package_of(path)
        if status == "D":
            gone_with = _removed_with(directory, package, removed_packages)
            if gone_with is not None:
                effects.append(FileEffect(status, path, (), f"removed with package //{gone_with}"))
            elif package is None:
                effects.append(FileEffect(status, path, (), "outside any package: affects no target"))
            else:
                effects.append(
                    FileEffect(
                        status,
                        path,
                        (package_pattern(package),),
                        f"deleted from //{package}: every target of the package counts as changed",
                    )
                )
            continue
        if package is None:
            effects.append(FileEffect(status, path, (), "outside any package: affects no target"))
            continue
        candidates[label(package, path)] = (status, path, package)

    if candidates:
        sources = query.source_files(sorted({pkg for _, _, pkg in candidates.values()}))
        for lbl, (status, path, package) in candidates.items():
            if lbl in sources:
                effects.append(FileEffect(status, path, (lbl,), f"source file {lbl}"))
            else:
                effects.append(
                    FileEffect(
                        status,
                        path,
                        (),
                        f"not a target of //{package} (no rule or exports_files names it): affects no target",
                    )
                )
    return sorted(effects, key=lambda e: (e.path, e.status))


def _removed_with(directory: str, package_now: str | None, removed: set[str]) -> str | None:
    """The removed package a deleted file belonged to, if its BUILD file went in this change too."""
    d = directory
    while True:
        if d in removed:
            return d
        if d == (package_now or "") or not d:
            return None
        d = posixpath.dirname(d)


def _build_file_effect(status: str, path: str, ws: Workspace) -> FileEffect:
    directory = posixpath.dirname(path)
    parent = _parent_package(ws, directory)
    if status != "D" or ws.is_package(directory):
        terms = [package_pattern(directory)]
        note = f"BUILD file of //{directory}: every target of the package counts as changed"
        if status == "A" and parent is not None:
            # A new package takes its files away from the package above it.
            terms.append(package_pattern(parent))
            note += f", and of //{parent}, which it takes files from"
        return FileEffect(status, path, tuple(terms), note)
    if parent is not None and ws.has_files(directory):
        return FileEffect(
            status,
            path,
            (package_pattern(parent),),
            f"package //{directory} removed; its remaining files now belong to //{parent}",
        )
    return FileEffect(
        status,
        path,
        (),
        f"package //{directory} removed; a target still using it would make the query fail (and fail open)",
    )


# --- the lock, entry by entry -------------------------------------------------------------------

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]*?))?\s*(\\)?$")
_HASH = re.compile(r"^--hash=(sha256:[0-9a-f]{64})\s*(\\)?$")


class LockParseError(ModelgateError, ValueError):
    """A line of a lock that is not a pin, a hash, an option or a comment."""


def normalize(name: str) -> str:
    """The name of a package's py_library in @pip (third_party/python/pip_generate.py)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def read_lock(text: str, where: str = LOCK_FILE) -> tuple[dict[str, dict], list[str]]:
    """({normalized name: {"name", "version", "hashes"[, "marker"]}}, global option lines) of a
    pip-compile lock. Comments ("# via ...") belong to nothing. The same entries as
    third_party/python/pip_generate.py's read_lock_entries, which the build hash uses (checked by
    //third_party:lock_tools_test)."""
    entries: dict[str, dict] = {}
    options: list[str] = []
    current, continued = None, False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if continued and current is not None:
            m = _HASH.match(line)
            if not m:
                raise LockParseError(f"{where}:{number}: expected a --hash=sha256:... line, got {line!r}")
            current["hashes"].append(m.group(1))
            continued = bool(m.group(2))
            continue
        if continued:  # continuation of a global option
            options[-1] += " " + line
            continued = line.endswith("\\")
            continue
        if raw[:1].isspace():
            raise LockParseError(f"{where}:{number}: indented line outside an entry: {line!r}")
        if line.startswith("-"):
            options.append(line)
            current, continued = None, line.endswith("\\")
            continue
        m = _PIN.match(line)
        if not m:
            raise LockParseError(f"{where}:{number}: not a name==version pin: {line!r}")
        key = normalize(m.group(1))
        if key in entries:
            raise LockParseError(f"{where}:{number}: {m.group(1)} is pinned twice")
        current = {"name": re.sub(r"[-_.]+", "-", m.group(1)).lower(), "version": m.group(2), "hashes": []}
        if m.group(3):
            current["marker"] = m.group(3)
        entries[key] = current
        continued = bool(m.group(4))
    for entry in entries.values():
        entry["hashes"] = sorted(set(entry["hashes"]))
    return entries, options


def _describe(old: dict | None, new: dict | None) -> str:
    if old is None:
        return f"{new['name']} added ({new['version']})"
    if new is None:
        return f"{old['name']} removed (was {old['version']})"
    if old["version"] != new["version"]:
        return f"{new['name']} {old['version']} -> {new['version']}"
    if old.get("marker") != new.get("marker"):
        return f"{new['name']} {new['version']} (marker)"
    return f"{new['name']} {new['version']} (hashes)"


def lock_effect(git: Git, ws: Workspace, query: Query, merge_base: str) -> FileEffect:
    """A modified CPU lock: the @pip libraries of the changed entries, and the lock itself.
    Raises FailOpen for what cannot be mapped: global options, a parse error, a changed entry
    that names no @pip library (one not installed on this platform), a removed entry."""
    try:
        old_text = git("show", f"{merge_base}:{LOCK_FILE}")
    except GitError as e:
        raise FailOpen(f"{LOCK_FILE} changed and its base version cannot be read ({e})") from None
    try:
        new_text = (ws.root / LOCK_FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FailOpen(f"{LOCK_FILE} changed and cannot be read ({e})") from None
    try:
        old, old_options = read_lock(old_text, f"{LOCK_FILE} at {_short(merge_base)}")
        new, new_options = read_lock(new_text)
    except LockParseError as e:
        raise FailOpen(f"{LOCK_FILE} changed and does not parse ({e})") from None
    if old_options != new_options:
        raise FailOpen(f"{LOCK_FILE} changed its global options ({', '.join(sorted(set(old_options) ^ set(new_options)))})")
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if not changed:
        return FileEffect("M", LOCK_FILE, LOCK_LABELS, "lock changed in comments only: no entry changed; tests reading the lock itself")
    removed = [_describe(old[k], None) for k in changed if k not in new]
    if removed:
        # What used a removed package is no longer in the graph that the query reads.
        raise FailOpen(f"{LOCK_FILE}: entries removed, whose users the build graph no longer shows: {', '.join(removed)}")
    libraries = query.pip_libraries()
    labels = [f"{PIP_REPOSITORY}//:{k}" for k in changed]
    unmapped = [_describe(old.get(k), new.get(k)) for k, lbl in zip(changed, labels) if lbl not in libraries]
    if unmapped:
        raise FailOpen(f"{LOCK_FILE}: changed entries with no {PIP_REPOSITORY} library to map them to: {', '.join(unmapped)}")
    what = ", ".join(_describe(old.get(k), new.get(k)) for k in changed)
    note = f"lock entries changed: {what}; the tests that depend on {', '.join(labels)} or read the lock"
    return FileEffect("M", LOCK_FILE, tuple(sorted(labels)) + LOCK_LABELS, note)


# --- the answer ---------------------------------------------------------------------------------


def affected(
    *,
    git: Git,
    query: Query,
    workspace: Workspace,
    base: str,
    head: str | None = None,
    tags: TagFilter = TagFilter(),
) -> Result:
    """The tests a change can affect; on any doubt or error, every test, with the reason."""
    result = Result(base=base, head=head or "HEAD", tags=str(tags), tests=[])
    try:
        result.base_commit, result.merge_base, result.head_commit = resolve_revisions(git, base, head)
        result.changes, result.dirty, result.notes = changed_files(git, result.merge_base)
        lock = [c for c in result.changes if c.status == "M" and c.path == LOCK_FILE]
        others = [c for c in result.changes if c not in lock]
        reasons = fail_open_reasons(others)
        if reasons:
            raise FailOpen("; ".join(reasons))
        result.files = resolve(others, workspace, query)
        if lock:
            result.files = sorted(result.files + [lock_effect(git, workspace, query, result.merge_base)], key=lambda e: (e.path, e.status))
        terms = sorted({t for f in result.files for t in f.terms})
        result.tests = query.tests_depending_on(terms, tags) if terms else []
        return result
    except FailOpen as e:
        reason = str(e)
    except GitError as e:
        reason = f"git failed: {e}"
    except QueryError as e:
        reason = f"bazel query failed: {e}"
    except Exception as e:  # noqa: BLE001 -- failing open on any error is the contract
        reason = f"internal error: {type(e).__name__}: {e}"
    return _everything(result, query, tags, reason)


def _everything(result: Result, query: Query, tags: TagFilter, reason: str) -> Result:
    result.fail_open = True
    result.reasons.append(reason)
    try:
        result.tests = query.all_tests(tags)
    except Exception as e:  # noqa: BLE001
        result.reasons.append(f"listing every test failed too ({e}); run the pattern //...")
        result.tests = ["//..."]
    return result


# --- the real git and bazel query ---------------------------------------------------------------


def run_git(root: Path) -> Git:
    def git(*args: str) -> str:
        try:
            proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        except OSError as e:
            raise GitError(f"cannot run git: {e}") from None
        if proc.returncode != 0:
            raise GitError(proc.stderr.strip() or f"git {args[0]} exited {proc.returncode}")
        return proc.stdout

    return git


def _quote(word: str) -> str:
    if '"' in word:
        raise QueryError(f"cannot quote {word!r} for bazel query")
    return f'"{word}"'


def _tags_regex(tags: Iterable[str]) -> str:
    # The tags attribute reads "[gpu, requires-gpu-nvidia]" to attr().
    return r"[\[ ](" + "|".join(re.escape(t) for t in tags) + r")[,\]]"


class BazelQuery:
    """Query over `bazel query`; `run(expression)` returns the labels it prints."""

    TEST_RULES = '".*_test rule"'

    def __init__(self, run: Callable[[str], list[str]]):
        self.run = run

    def source_files(self, packages: Iterable[str]) -> set[str]:
        union = " + ".join(_quote(package_pattern(p)) for p in packages)
        return set(self.run(f'kind("source file", {union})'))

    def pip_libraries(self) -> set[str]:
        return set(self.run(f'kind("py_library rule", {_quote(PIP_REPOSITORY + "//:*")})'))

    def _tests_expr(self, universe: str, tags: TagFilter) -> str:
        expr = f"let t = kind({self.TEST_RULES}, {universe}) in $t"
        if tags.include:
            expr += f' intersect attr(tags, "{_tags_regex(tags.include)}", $t)'
        expr += f' except attr(tags, "{_tags_regex(("manual",) + tags.exclude)}", $t)'
        return expr

    def tests_depending_on(self, terms: Sequence[str], tags: TagFilter) -> list[str]:
        universe = "rdeps(//..., set(" + " ".join(_quote(t) for t in terms) + "))"
        return sorted(self.run(self._tests_expr(universe, tags)))

    def all_tests(self, tags: TagFilter) -> list[str]:
        return sorted(self.run(self._tests_expr("//...", tags)))


def run_bazel_query(root: Path, bazel: str | None = None) -> Callable[[str], list[str]]:
    bazel = bazel or os.environ.get("MODELGATE_BAZEL", "bazel")

    def run(expression: str) -> list[str]:
        cmd = [bazel, "query", "--noshow_progress", "--output=label", expression]
        try:
            proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
        except OSError as e:
            raise QueryError(f"cannot run {bazel}: {e}") from None
        if proc.returncode != 0:
            errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
            raise QueryError(" / ".join(errors[:3]) or proc.stderr.strip()[-500:] or f"exit {proc.returncode}")
        return [line.strip() for line in proc.stdout.splitlines() if line.strip()]

    return run
