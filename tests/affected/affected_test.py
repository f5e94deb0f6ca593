"""Behaviour of //tools:affected's logic on real git repositories and a fake build graph.

The fake graph (FakeQuery) answers the three questions the logic asks bazel query; the
expressions sent to the real `bazel query` are pinned separately (test_query_expressions).
"""

import os
import subprocess
from pathlib import Path

import pytest
from modelgate import affected as lib

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
    "third_party/requirements_lock.txt": "torch==2\n",
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
    for m in MODELS:
        pkg = f"//models/{m}"
        if not (root / f"models/{m}/BUILD.bazel").is_file():
            continue
        srcs = [f"{pkg}:{f}" for f in ("model.py", "model_test.py") if (root / f"models/{m}/{f}").is_file()]
        rules[f"{pkg}:{m}"] = ([s for s in srcs if "test" not in s] + ["//tools:spec"], [])
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


EVERY_TEST = [f"//models/{m}:model_test_{v}" for m in MODELS for v in ("cpu", "gpu")]
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
    assert result.tests == EVERY_TEST
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
        ("third_party/requirements_lock.txt", "pinned dependencies"),
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
    assert result.summary().startswith(f"affected: every test (6 test targets); failing open: {path} changed")


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
    import affected_main

    with pytest.raises(SystemExit) as e:
        affected_main.main(["--base=main", "--tags=a b"])
    assert e.value.code == 2
    assert "is not a tag" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        affected_main.main([])


def test_cli_prints_labels_and_a_summary(repo, monkeypatch, capsys):
    import affected_main

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
