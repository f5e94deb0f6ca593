"""Behaviour of //tools:affected's logic on real git repositories and a fake build graph.

The fake graph (FakeQuery) answers the three questions the logic asks bazel query; the
expressions sent to the real `bazel query` are pinned separately (test_query_expressions).
"""

import os
import subprocess
from pathlib import Path

import pytest
from affected import lib

# --- a workspace with three models --------------------------------------------------------------

FILES = {
    "WORKSPACE": "workspace(name = 'w')\n",
    ".bazelrc": "build --nolegacy_external_runfiles\n",
    ".bazelignore": "third_party/stub\n",
    "BUILD.bazel": "exports_files(['pytest.ini'])\n",
    "pytest.ini": "[pytest]\n",
    "README.md": "# w\n",
    "tools/defs.bzl": "def model_test(**kw): pass\n",
    "tools/BUILD.bazel": "py_library(name = 'spec')\n",
    "tools/spec.py": "SPEC = 1\n",
    "third_party/BUILD.bazel": "exports_files(['requirements.in', 'requirements_lock.txt'])\n",
    "third_party/requirements.in": "torch\nnumpy\nhttpx\n",
    "third_party/requirements_lock.txt": (
        "--find-links /opt/wheels\n"
        "\n"
        "filelock==3.20.0 \\\n"
        f"    --hash=sha256:{'1' * 64}\n"
        "    # via torch\n"
        "httpx==0.28.1 \\\n"
        f"    --hash=sha256:{'2' * 64} \\\n"
        f"    --hash=sha256:{'3' * 64}\n"
        "    # via -r third_party/requirements.in\n"
        "numpy==2.4.6 \\\n"
        f"    --hash=sha256:{'4' * 64}\n"
        "    # via -r third_party/requirements.in\n"
        "torch==2.13.0+cpu \\\n"
        f"    --hash=sha256:{'5' * 64}\n"
        "    # via -r third_party/requirements.in\n"
    ),
    "third_party/requirements_lock_cuda.txt": "torch==2.13.0\n",
    "third_party/stub/BUILD.bazel": "\n",
}
MODELS = ("image_cnn", "sequence_rnn", "tiny_transformer")
for _m in MODELS:
    FILES[f"models/{_m}/BUILD.bazel"] = f"model_library(name = '{_m}')\n"
    FILES[f"models/{_m}/model.py"] = f"# {_m}\n"
    FILES[f"models/{_m}/model_test.py"] = "def test(): pass\n"
    FILES[f"models/{_m}/NOTES.md"] = "not named by any rule\n"


def graph(root: Path):
    """Targets of the workspace as the BUILD files would declare them: name -> (deps, tags)."""
    rules = {"//tools:spec": (["//tools:spec.py"], [])}
    # The pip repository: one py_library per package of the lock (torch needs filelock).
    rules |= {f"@pip//:{p}": ([], []) for p in ("filelock", "httpx", "numpy")}
    rules["@pip//:torch"] = (["@pip//:filelock"], [])
    rules["//third_party:lock_test"] = (["//third_party:requirements_lock.txt", "//third_party:requirements.in"], [])
    rules["//tools:http_test"] = (["@pip//:httpx"], [])
    for m in MODELS:
        pkg = f"//models/{m}"
        if not (root / f"models/{m}/BUILD.bazel").is_file():
            continue
        srcs = [f"{pkg}:{f}" for f in ("model.py", "model_test.py") if (root / f"models/{m}/{f}").is_file()]
        pip = ["@pip//:torch"] + (["@pip//:numpy"] if m == "image_cnn" else [])
        rules[f"{pkg}:{m}"] = ([s for s in srcs if "test" not in s] + ["//tools:spec"] + pip, [])
        for variant, tags in (("cpu", ["cpu"]), ("gpu", ["gpu", "requires-gpu-nvidia"])):
            rules[f"{pkg}:model_test_{variant}"] = ([f"{pkg}:{m}", f"{pkg}:model_test.py", "//:pytest.ini"], tags)
    rules["//tools:manual_test"] = (["//tools:spec"], ["manual"])
    return rules


class FakeQuery:
    """rdeps/kind/attr over `graph()`; source files are the files some rule names."""

    def __init__(self, root: Path, fail: bool = False, fail_all: bool = False):
        self.rules = graph(root)
        self.fail, self.fail_all = fail, fail_all
        self.asked: list[tuple] = []

    def _sources(self):
        files = {d for deps, _ in self.rules.values() for d in deps if d not in self.rules}
        return files | {"//:BUILD.bazel", "//:pytest.ini"}

    def pip_libraries(self):
        self.asked.append(("pip_libraries",))
        return {r for r in self.rules if r.startswith("@pip//")}

    def source_files(self, packages):
        self.asked.append(("source_files", tuple(packages)))
        if self.fail:
            raise lib.QueryError("ERROR: no such package")
        return {s for s in self._sources() if s.split(":")[0][2:] in packages}

    def _tests(self, names, tags):
        return sorted(
            n for n in names if n.endswith("_test") or "_test_" in n if n in self.rules and tags.keeps(self.rules[n][1])
        )

    def tests_depending_on(self, terms, tags):
        self.asked.append(("tests_depending_on", tuple(terms), str(tags)))
        if self.fail:
            raise lib.QueryError("ERROR: no such package")
        seeds = set()
        for term in terms:
            if term.endswith(":*"):
                pkg = term[:-2]
                seeds |= {t for t in set(self.rules) | self._sources() if t.split(":")[0] == pkg}
            else:
                seeds.add(term)
        found, grew = set(seeds), True
        while grew:
            new = {r for r, (deps, _) in self.rules.items() if r not in found and found & set(deps)}
            found |= new
            grew = bool(new)
        return self._tests(found, tags)

    def all_tests(self, tags):
        self.asked.append(("all_tests", str(tags)))
        if self.fail_all:
            raise lib.QueryError("ERROR: cannot load")
        return self._tests(self.rules, tags)


@pytest.fixture
def git_env(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for k, v in {"NAME": "t", "EMAIL": "t@example.com"}.items():
        monkeypatch.setenv(f"GIT_AUTHOR_{k}", v)
        monkeypatch.setenv(f"GIT_COMMITTER_{k}", v)


def sh(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def write(root: Path, path: str, text: str) -> None:
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text(text)


def commit(root: Path, message: str) -> str:
    sh(root, "add", "-A")
    sh(root, "commit", "-q", "--allow-empty", "-m", message)
    return sh(root, "rev-parse", "HEAD").strip()


@pytest.fixture
def repo(tmp_path, git_env) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    sh(root, "init", "-q", "-b", "main")
    for path, text in FILES.items():
        write(root, path, text)
    commit(root, "base")
    return root


def run(root: Path, base="main", head=None, tags="", query=None):
    return lib.affected(
        git=lib.run_git(root),
        query=query or FakeQuery(root),
        workspace=lib.Workspace(root),
        base=base,
        head=head,
        tags=lib.TagFilter.parse(tags),
    )


def on_branch(root: Path) -> None:
    sh(root, "checkout", "-q", "-b", "change")


MODEL_TESTS = [f"//models/{m}:model_test_{v}" for m in MODELS for v in ("cpu", "gpu")]
EVERY_TEST = MODEL_TESTS + ["//third_party:lock_test", "//tools:http_test"]
CNN_TESTS = ["//models/image_cnn:model_test_cpu", "//models/image_cnn:model_test_gpu"]


# --- one model edited: exactly its tests --------------------------------------------------------


def test_editing_one_model_lists_exactly_its_tests(repo):
    on_branch(repo)
    write(repo, "models/image_cnn/model.py", "# changed\n")
    commit(repo, "edit cnn")
    result = run(repo)
    assert result.tests == CNN_TESTS
    assert not result.fail_open
    assert [str(c) for c in result.changes] == ["M models/image_cnn/model.py"]
    assert result.files[0].terms == ("//models/image_cnn:model.py",)
    assert "2 test targets from 1 changed file(s)" in result.summary()


def test_gpu_tag_selects_only_gpu_tests_and_minus_gpu_drops_them(repo):
    on_branch(repo)
    write(repo, "models/image_cnn/model.py", "# changed\n")
    commit(repo, "edit cnn")
    assert run(repo, tags="gpu").tests == ["//models/image_cnn:model_test_gpu"]
    assert run(repo, tags="-gpu").tests == ["//models/image_cnn:model_test_cpu"]


def test_a_shared_library_affects_every_model_but_never_manual_tests(repo):
    on_branch(repo)
    write(repo, "tools/spec.py", "SPEC = 2\n")
    commit(repo, "edit spec")
    result = run(repo)
    assert result.tests == MODEL_TESTS
    assert "//tools:manual_test" not in result.tests
    assert not result.fail_open


def test_no_change_lists_nothing(repo):
    on_branch(repo)
    result = run(repo)
    assert result.tests == [] and result.changes == [] and not result.fail_open


# --- fail open -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, why",
    [
        (".bazelrc", "flags of every build and test"),
        ("WORKSPACE", "external repositories"),
        ("tools/defs.bzl", "Starlark"),
        ("third_party/requirements.in", "pinned dependencies"),
        ("third_party/requirements_lock_cuda.txt", "pinned dependencies"),
        ("third_party/BUILD.bazel", "pinned dependencies"),
    ],
)
def test_workspace_wide_files_list_every_test_and_say_why(repo, path, why):
    on_branch(repo)
    write(repo, path, (repo / path).read_text() + "# edit\n")
    commit(repo, "edit " + path)
    result = run(repo)
    assert result.fail_open
    assert result.tests == EVERY_TEST
    assert len(result.reasons) == 1 and result.reasons[0].startswith(f"{path} changed (")
    assert why in result.reasons[0]
    assert result.summary().startswith(f"affected: every test (8 test targets); failing open: {path} changed")


def test_a_renamed_bzl_file_fails_open_by_its_old_name_too(repo):
    on_branch(repo)
    sh(repo, "mv", "tools/defs.bzl", "tools/defs.txt")
    commit(repo, "rename")
    result = run(repo)
    assert result.fail_open and "tools/defs.bzl changed" in result.reasons[0]


def test_unknown_base_revision_fails_open_with_a_clear_message(repo):
    result = run(repo, base="no-such-branch")
    assert result.fail_open and result.tests == EVERY_TEST
    assert result.reasons == [
        "base revision 'no-such-branch' does not exist in this repository (git fetch it, or check the name)"
    ]


def test_shallow_clone_without_the_base_says_so(repo, tmp_path):
    first = sh(repo, "rev-parse", "HEAD").strip()
    write(repo, "models/image_cnn/model.py", "# changed\n")
    commit(repo, "edit")
    shallow = tmp_path / "shallow"
    subprocess.run(["git", "clone", "-q", "--depth=1", f"file://{repo}", str(shallow)], check=True)
    result = run(shallow, base=first)
    assert result.fail_open and result.tests == EVERY_TEST
    assert "not in this shallow clone" in result.reasons[0] and "--unshallow" in result.reasons[0]


def test_head_other_than_the_checkout_fails_open(repo):
    on_branch(repo)
    write(repo, "models/image_cnn/model.py", "# changed\n")
    commit(repo, "edit")
    result = run(repo, head="main")
    assert result.fail_open
    assert "check out main first" in result.reasons[0]
    assert run(repo, head="HEAD").tests == CNN_TESTS


def test_a_failing_query_fails_open_and_a_failing_listing_falls_back_to_the_pattern(repo):
    on_branch(repo)
    write(repo, "models/image_cnn/model.py", "# changed\n")
    commit(repo, "edit")
    result = run(repo, query=FakeQuery(repo, fail=True))
    assert result.fail_open and result.tests == EVERY_TEST
    assert result.reasons == ["bazel query failed: ERROR: no such package"]
    result = run(repo, query=FakeQuery(repo, fail=True, fail_all=True))
    assert result.tests == ["//..."] and "listing every test failed too" in result.reasons[1]


def test_not_a_git_repository_fails_open(tmp_path, git_env):
    for path, text in FILES.items():
        write(tmp_path, path, text)
    result = run(tmp_path)
    assert result.fail_open and "not inside a git work tree" in result.reasons[0]


# --- working tree, added, deleted, renamed, non-target files ------------------------------------


def test_a_dirty_tree_is_included_and_said(repo):
    on_branch(repo)
    write(repo, "models/sequence_rnn/model.py", "# uncommitted\n")
    write(repo, "models/tiny_transformer/new_untracked.py", "x = 1\n")
    result = run(repo)
    assert result.dirty
    assert result.notes == [
        (
            "the working tree has uncommitted changes (2 file(s), 1 untracked); they are included, "
            "because bazel query reads the working tree"
        )
    ]
    assert result.tests == ["//models/sequence_rnn:model_test_cpu", "//models/sequence_rnn:model_test_gpu"]
    assert "+ working tree" in result.summary()


def test_files_no_rule_names_affect_nothing_and_say_so(repo):
    on_branch(repo)
    write(repo, "models/image_cnn/NOTES.md", "edited\n")
    write(repo, "README.md", "# edited\n")
    commit(repo, "docs")
    result = run(repo)
    assert result.tests == []
    notes = {f.path: f.note for f in result.files}
    assert notes["README.md"] == "not a target of // (no rule or exports_files names it): affects no target"
    assert "not a target of //models/image_cnn" in notes["models/image_cnn/NOTES.md"]


def test_files_outside_any_package_affect_nothing(repo):
    sh(repo, "rm", "-q", "BUILD.bazel")
    write(repo, "docs/guide.md", "hi\n")
    commit(repo, "a workspace without a root package")
    on_branch(repo)
    write(repo, "docs/guide.md", "edited\n")
    commit(repo, "edit docs")
    result = run(repo)
    assert not result.fail_open
    assert [(f.path, f.terms, f.note) for f in result.files] == [
        ("docs/guide.md", (), "outside any package: affects no target")
    ]
    assert result.tests == []


def test_a_deleted_file_affects_its_whole_package(repo):
    on_branch(repo)
    sh(repo, "rm", "-q", "models/tiny_transformer/NOTES.md")
    commit(repo, "delete")
    result = run(repo)
    assert result.files[0].terms == ("//models/tiny_transformer:*",)
    assert result.tests == ["//models/tiny_transformer:model_test_cpu", "//models/tiny_transformer:model_test_gpu"]


def test_a_renamed_file_counts_at_both_ends(repo):
    on_branch(repo)
    sh(repo, "mv", "models/image_cnn/model.py", "models/sequence_rnn/cnn_model.py")
    commit(repo, "move")
    result = run(repo)
    assert [str(c) for c in result.changes] == ["R models/image_cnn/model.py -> models/sequence_rnn/cnn_model.py"]
    by_path = {f.path: f for f in result.files}
    assert by_path["models/image_cnn/model.py"].terms == ("//models/image_cnn:*",)
    # The new file is named by no rule yet (the BUILD file was not updated): it affects nothing.
    assert by_path["models/sequence_rnn/cnn_model.py"].terms == ()
    assert result.tests == CNN_TESTS


def test_a_changed_build_file_affects_every_target_of_its_package(repo):
    on_branch(repo)
    write(repo, "models/sequence_rnn/BUILD.bazel", "# edited\n")
    commit(repo, "build")
    result = run(repo)
    assert result.files[0].terms == ("//models/sequence_rnn:*",)
    assert result.tests == ["//models/sequence_rnn:model_test_cpu", "//models/sequence_rnn:model_test_gpu"]


def test_a_removed_package_affects_nothing_by_itself(repo):
    on_branch(repo)
    sh(repo, "rm", "-q", "-r", "models/tiny_transformer")
    commit(repo, "remove model")
    result = run(repo)
    assert not result.fail_open
    assert all(f.terms == () for f in result.files)
    assert "removed with package //models/tiny_transformer" in {f.note for f in result.files}
    assert result.tests == []


def test_a_new_package_affects_itself_and_the_package_it_takes_files_from(repo):
    on_branch(repo)
    write(repo, "models/image_cnn/data/BUILD.bazel", "filegroup(name = 'data')\n")
    commit(repo, "new package")
    result = run(repo)
    assert result.files[0].terms == ("//models/image_cnn/data:*", "//models/image_cnn:*")
    assert result.tests == CNN_TESTS


# --- the CPU lock, entry by entry ---------------------------------------------------------------

LOCK = "third_party/requirements_lock.txt"
LOCK_TERMS = ("//third_party:requirements_lock.txt", "@pip//:requirements_lock.txt")


def edit_lock(root: Path, old: str, new: str) -> None:
    text = (root / LOCK).read_text()
    assert old in text, old
    write(root, LOCK, text.replace(old, new, 1))


def extra_hash(package_line: str, digit: str = "9") -> tuple[str, str]:
    """An edit that adds one --hash line to an entry (pip still installs it: any listed hash may match)."""
    return package_line, f"{package_line}\n    --hash=sha256:{digit * 64} \\"


def lock_effect(result):
    return next(f for f in result.files if f.path == LOCK)


def test_a_lock_entry_no_model_uses_affects_only_its_own_tests(repo):
    on_branch(repo)
    edit_lock(repo, *extra_hash("httpx==0.28.1 \\"))
    commit(repo, "httpx hash")
    result = run(repo)
    assert not result.fail_open, result.reasons
    assert result.tests == ["//third_party:lock_test", "//tools:http_test"]  # no model's tests
    effect = lock_effect(result)
    assert effect.terms == ("@pip//:httpx",) + LOCK_TERMS
    assert "lock entries changed: httpx 0.28.1 (hashes)" in effect.note


def test_a_lock_entry_one_model_uses_affects_that_model(repo):
    on_branch(repo)
    edit_lock(repo, "numpy==2.4.6", "numpy==2.4.7")
    commit(repo, "numpy bump")
    result = run(repo)
    assert not result.fail_open
    assert result.tests == CNN_TESTS + ["//third_party:lock_test"]
    assert "numpy 2.4.6 -> 2.4.7" in lock_effect(result).note


def test_a_transitive_lock_entry_affects_every_model_that_reaches_it(repo):
    on_branch(repo)
    edit_lock(repo, *extra_hash("filelock==3.20.0 \\"))  # torch needs filelock; every model needs torch
    commit(repo, "filelock hash")
    result = run(repo)
    assert result.tests == MODEL_TESTS + ["//third_party:lock_test"]


def test_comments_only_affect_what_reads_the_lock(repo):
    on_branch(repo)
    edit_lock(repo, "    # via torch\n", "    # via\n    #   torch\n    #   other\n")
    commit(repo, "via")
    result = run(repo)
    assert not result.fail_open
    assert result.tests == ["//third_party:lock_test"]
    assert lock_effect(result).terms == LOCK_TERMS


def test_an_uncommitted_lock_edit_counts(repo):
    on_branch(repo)
    edit_lock(repo, *extra_hash("httpx==0.28.1 \\"))
    result = run(repo)
    assert result.dirty and result.tests == ["//third_party:lock_test", "//tools:http_test"]


@pytest.mark.parametrize(
    "old, new, why",
    [
        ("--find-links /opt/wheels", "--find-links /elsewhere", "changed its global options (--find-links /elsewhere, --find-links /opt/wheels)"),
        ("numpy==2.4.6 \\", "numpy>=2.4.6 \\", "does not parse (third_party/requirements_lock.txt:10: not a name==version pin: 'numpy>=2.4.6 \\\\')"),
        (f"    --hash=sha256:{'4' * 64}\n", "    garbage\n", "does not parse (third_party/requirements_lock.txt:11: expected a --hash=sha256:... line"),
        ("numpy==2.4.6", "numpy==2.4.6\nnewpkg==1.0 \\\n    --hash=sha256:" + "6" * 64 + "\nnumpy2==2.4.6", "no @pip library to map them to: newpkg added (1.0)"),
    ],
)
def test_lock_changes_it_cannot_map_fail_open(repo, old, new, why):
    on_branch(repo)
    edit_lock(repo, old, new)
    commit(repo, "lock")
    result = run(repo)
    assert result.fail_open and result.tests == EVERY_TEST
    assert why in result.reasons[0], result.reasons


def test_a_removed_lock_entry_fails_open(repo):
    on_branch(repo)
    text = (repo / LOCK).read_text()
    start = text.index("httpx==")
    write(repo, LOCK, text[:start] + text[text.index("numpy==") :])
    commit(repo, "drop httpx")
    result = run(repo)
    assert result.fail_open and "entries removed, whose users the build graph no longer shows: httpx removed (was 0.28.1)" in result.reasons[0]


def test_a_deleted_lock_or_another_third_party_file_with_it_fails_open(repo):
    on_branch(repo)
    edit_lock(repo, *extra_hash("httpx==0.28.1 \\"))
    write(repo, "third_party/requirements.in", "torch\nnumpy\nhttpx\nrich\n")
    commit(repo, "lock and requirements.in")
    result = run(repo)
    assert result.fail_open and result.reasons == ["third_party/requirements.in changed (pinned dependencies, the toolchain rules and Bazel shims)"]
    sh(repo, "checkout", "-q", "-B", "delete", "main")
    sh(repo, "rm", "-q", LOCK)
    commit(repo, "delete the lock")
    result = run(repo)
    assert result.fail_open and result.reasons[0].startswith(f"{LOCK} changed (")


def test_read_lock_entries_options_markers_and_continuations():
    text = (
        "--find-links /opt/wheels\n--extra-index-url \\\n    https://example.com/simple\n\n"
        "Typing_Extensions==4.15.0 ; python_version < '3.13' \\\n"
        f"    --hash=sha256:{'b' * 64} \\\n    --hash=sha256:{'a' * 64}\n    # via torch\n"
        "six==1.17.0\n"
    )
    entries, options = lib.read_lock(text)
    assert options == ["--find-links /opt/wheels", "--extra-index-url \\ https://example.com/simple"]
    assert entries == {
        "typing_extensions": {
            "name": "typing-extensions",
            "version": "4.15.0",
            "hashes": [f"sha256:{'a' * 64}", f"sha256:{'b' * 64}"],
            "marker": "python_version < '3.13'",
        },
        "six": {"name": "six", "version": "1.17.0", "hashes": []},
    }
    with pytest.raises(lib.LockParseError, match="pinned twice"):
        lib.read_lock("six==1.17.0\nSix==1.16.0\n")


# --- parsing and the real query's expressions ---------------------------------------------------


def test_name_status_parsing_handles_renames_copies_and_odd_names():
    text = "M\0a b.py\0R087\0old.py\0new.py\0D\0gone.py\0A\0new\nline.py\0C100\0x.py\0y.py\0T\0link\0"
    assert lib.parse_name_status(text) == [
        lib.Change("M", "a b.py"),
        lib.Change("R", "new.py", "old.py"),
        lib.Change("D", "gone.py"),
        lib.Change("A", "new\nline.py"),
        lib.Change("A", "y.py"),
        lib.Change("M", "link"),
    ]


def test_tag_filter_parsing_and_bad_tags():
    tags = lib.TagFilter.parse("gpu, -flaky")
    assert (tags.include, tags.exclude, str(tags)) == (("gpu",), ("flaky",), "gpu,-flaky")
    assert tags.keeps(["gpu"]) and not tags.keeps(["gpu", "flaky"]) and not tags.keeps(["cpu"])
    assert not lib.TagFilter().keeps(["manual"])
    with pytest.raises(ValueError, match="is not a tag"):
        lib.TagFilter.parse("gpu|cpu")


def test_query_expressions():
    sent = []
    query = lib.BazelQuery(lambda expr: sent.append(expr) or ["//b:t", "//a:t"])
    assert query.source_files(["", "models/x"]) == {"//a:t", "//b:t"}
    assert query.tests_depending_on(["//models/x:model.py", "//:*"], lib.TagFilter.parse("gpu")) == ["//a:t", "//b:t"]
    query.all_tests(lib.TagFilter.parse("-gpu"))
    query.pip_libraries()
    assert sent[-1] == 'kind("py_library rule", "@pip//:*")'
    sent.pop()
    assert sent == [
        'kind("source file", "//:*" + "//models/x:*")',
        (
            'let t = kind(".*_test rule", rdeps(//..., set("//models/x:model.py" "//:*"))) in $t'
            r' intersect attr(tags, "[\[ ](gpu)[,\]]", $t) except attr(tags, "[\[ ](manual)[,\]]", $t)'
        ),
        r'let t = kind(".*_test rule", //...) in $t except attr(tags, "[\[ ](manual|gpu)[,\]]", $t)',
    ]


def test_workspace_package_boundaries(tmp_path):
    for path, text in FILES.items():
        write(tmp_path, path, text)
    write(tmp_path, "nested/WORKSPACE", "")
    write(tmp_path, "nested/BUILD", "")
    ws = lib.Workspace(tmp_path)
    assert ws.package_of("models/image_cnn/deep/dir/file.txt") == "models/image_cnn"
    assert ws.package_of("README.md") == ""
    assert ws.package_of("third_party/stub/BUILD.bazel") is None  # .bazelignore
    assert ws.package_of("bazel-out/x") is None
    assert ws.package_of("nested/x.py") is None
    assert lib.label("models/x", "models/x/a/b.py") == "//models/x:a/b.py"
    assert lib.label("", "pytest.ini") == "//:pytest.ini"


def test_cli_rejects_bad_arguments(capsys, monkeypatch):
    from affected import main as affected_main

    with pytest.raises(SystemExit) as e:
        affected_main.main(["--base=main", "--tags=a b"])
    assert e.value.code == 2
    assert "is not a tag" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        affected_main.main([])


def test_cli_prints_labels_and_a_summary(repo, monkeypatch, capsys):
    from affected import main as affected_main

    on_branch(repo)
    write(repo, "models/image_cnn/model.py", "# changed\n")
    commit(repo, "edit")
    monkeypatch.setenv("BUILD_WORKSPACE_DIRECTORY", str(repo))
    monkeypatch.setattr(lib, "BazelQuery", lambda run: FakeQuery(repo))
    assert affected_main.main(["--base=main"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == CNN_TESTS
    assert "affected: 2 test targets from 1 changed file(s)" in err
    assert affected_main.main(["--base=main", "--json", "--quiet"]) == 0
    out, err = capsys.readouterr()
    import json

    data = json.loads(out)
    assert data["tests"] == CNN_TESTS and data["fail_open"] is False and err == ""
    assert os.environ["BUILD_WORKSPACE_DIRECTORY"] == str(repo)
