"""The lock tooling's answers to bad input: stale locks, missing hashes, pip's errors."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lock_check
import pip_generate

LOCK = textwrap.dedent(
    """\
    numpy==2.4.6 \\
        --hash=sha256:{h}
        # via -r third_party/requirements.in
    tqdm==4.70.1 \\
        --hash=sha256:{h}
        # via
        #   -r third_party/requirements.in
        #   other
    colorama==0.4.6 \\
        --hash=sha256:{h}
        # via tqdm
    """
).format(h="a" * 64)


def _files(tmp_path, requirements, lock=LOCK):
    req = tmp_path / "requirements.in"
    req.write_text(requirements)
    path = tmp_path / "requirements_lock.txt"
    path.write_text(lock)
    return req, path


def test_the_repository_locks_are_current():
    root = Path("third_party")
    assert lock_check.main([str(root / "requirements.in"), str(root / "requirements_lock.txt"), str(root / "requirements_lock_cuda.txt")]) == 0


def test_matching_lock_passes(tmp_path):
    req, lock = _files(tmp_path, "numpy\ntqdm>=4\n")
    assert lock_check.check(req, lock) == []


def test_new_requirement_not_in_lock(tmp_path):
    req, lock = _files(tmp_path, "numpy\ntqdm\nrich\n")
    (problem,) = lock_check.check(req, lock)
    assert f"{lock}: rich is in requirements.in but not pinned" in problem
    assert "bazel run //third_party:requirements.update" in problem


def test_version_no_longer_satisfied(tmp_path):
    req, lock = _files(tmp_path, "numpy<2\ntqdm\n")
    (problem,) = lock_check.check(req, lock)
    assert "numpy==2.4.6 does not satisfy numpy<2" in problem


def test_removed_requirement(tmp_path):
    req, lock = _files(tmp_path, "numpy\n")
    (problem,) = lock_check.check(req, lock)
    assert "tqdm is pinned as a direct requirement but is no longer in requirements.in" in problem


def test_pin_without_hash(tmp_path):
    req, lock = _files(tmp_path, "numpy\n", "numpy==2.4.6\n    # via -r third_party/requirements.in\n")
    (problem,) = lock_check.check(req, lock)
    assert "numpy==2.4.6 has no --hash pin" in problem


def test_cli_exit_codes(tmp_path):
    req, lock = _files(tmp_path, "numpy\ntqdm\nrich\n")
    result = subprocess.run([sys.executable, lock_check.__file__, str(req), str(lock)], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stdout.count("\n") == 1 and "Traceback" not in result.stderr


PIP_HASH_ERROR = """\
ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE. If you have updated the package versions, please update the hashes. Otherwise, examine the package contents carefully; someone may have tampered with them.
    tqdm==4.70.1 from https://files.example/tqdm-4.70.1-py3-none-any.whl#sha256=ff:
        Expected sha256 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
             Got        bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb
"""


def test_wrong_hash_is_one_line_naming_the_lock(monkeypatch, capsys):
    monkeypatch.setenv("PIP_OUTPUT", PIP_HASH_ERROR)
    pip_generate.explain_pip_error("third_party/requirements_lock.txt")
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [
        "third_party/requirements_lock.txt: tqdm==4.70.1: sha256 mismatch (lock pins aaaaaaaaaaaa…, the download is bbbbbbbbbbbb…); "
        "fix the lock with: bazel run //third_party:requirements.update"
    ]


def test_package_missing_from_lock(tmp_path, capsys):
    site = tmp_path / "site"
    for name, requires in (("alpha", ["beta>=1", "gamma; python_version < '3'"]), ("packaging", [])):
        info = site / f"{name}-1.0.dist-info"
        info.mkdir(parents=True)
        lines = [f"Name: {name}", "Version: 1.0"] + [f"Requires-Dist: {r}" for r in requires]
        (info / "METADATA").write_text("\n".join(lines) + "\n")
        (info / "RECORD").write_text(f"{name}-1.0.dist-info/METADATA,,\n")
    # The generator imports packaging from the site it inspects; lend it the real one.
    import packaging

    (site / "packaging").symlink_to(Path(packaging.__file__).parent)
    assert pip_generate.generate("third_party/requirements_lock.txt", str(site), str(tmp_path)) == 1
    out = capsys.readouterr().out
    assert "third_party/requirements_lock.txt: package 'beta' (required by alpha) is missing from the lock" in out
    assert "gamma" not in out  # its marker does not apply here


# --- lock entries: what a model's build hash covers of the lock -----------------------------------

ROOT = Path("third_party")


def _site(tmp_path, names):
    site = tmp_path / "site"
    for name in names:
        info = site / f"{name}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Name: {name}\nVersion: 1.0\n")
        (info / "RECORD").write_text(f"{name}-1.0.dist-info/METADATA,,\n")
    import packaging

    (site / "packaging").symlink_to(Path(packaging.__file__).parent)
    return site


def test_generate_gives_each_library_its_lock_entry(tmp_path):
    site = _site(tmp_path, ["Alpha_Pkg", "packaging"])
    lock = tmp_path / "requirements_lock.txt"
    lock.write_text(
        "--find-links /opt/wheels\n\n"
        f"alpha-pkg==1.0 \\\n    --hash=sha256:{'b' * 64} \\\n    --hash=sha256:{'a' * 64}\n    # via -r requirements.in\n"
        f"packaging==1.0 \\\n    --hash=sha256:{'c' * 64}\n"
    )
    assert pip_generate.split(str(site), str(tmp_path / "dists")) == 0
    assert pip_generate.generate("third_party/requirements_lock.txt", str(site), str(tmp_path), str(lock)) == 0
    entry = (tmp_path / "lock_entries" / "alpha_pkg.json").read_text()
    assert entry == '{"hashes":["sha256:%s","sha256:%s"],"name":"alpha-pkg","version":"1.0"}\n' % ("a" * 64, "b" * 64)
    build = (tmp_path / "BUILD.bazel").read_text()
    assert '"lock_entries/alpha_pkg.json"' in build and '"lock_entries/packaging.json"' in build


def _alpha(tmp_path):
    site = _site(tmp_path, ["packaging"])
    info = site / "alpha-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Name: alpha\nVersion: 1.0\n")
    (site / "alpha").mkdir()
    (site / "alpha" / "__init__.py").write_text("")
    (site / "alpha" / "data.json").write_text("{}")
    (info / "RECORD").write_text("alpha/__init__.py,,\nalpha/data.json,,\nalpha-1.0.dist-info/METADATA,,\n../../bin/alpha,,\n")
    lock = tmp_path / "requirements_lock.txt"
    lock.write_text(f"alpha==1.0 \\\n    --hash=sha256:{'a' * 64}\npackaging==1.0 \\\n    --hash=sha256:{'c' * 64}\n")
    return site, lock


def _library(build: str, name: str) -> str:
    start = build.index(f'    name = "{name}",')
    return build[start : build.index(")", start)]


def test_with_lock_entries_as_inputs_a_library_lists_no_installed_file_yet_each_has_a_label(tmp_path):
    site, lock = _alpha(tmp_path)
    assert pip_generate.split(str(site), str(tmp_path / "dists")) == 0
    assert pip_generate.generate("L", str(site), str(tmp_path), str(lock), "lock") == 0
    build = (tmp_path / "BUILD.bazel").read_text()
    alpha = _library(build, "alpha")
    assert '"lock_entries/alpha.json"' in alpha and "site/" not in alpha.split("imports")[0]
    assert 'imports = ["site"]' in alpha
    # No installed file is a label of the root package (Bazel would load them all in every
    # build); each distribution's files are a package of their own, loaded where one is named.
    assert "exports_files([\n" not in build and "site/alpha" not in build
    package = tmp_path / "files" / "alpha"
    assert "glob(" in (package / "BUILD.bazel").read_text()
    assert (package / "alpha" / "data.json").read_text() == "{}"
    assert os.readlink(package / "alpha") == "../../dists/alpha/alpha"  # relative: the same in every clone
    assert not (package / "packaging").exists()  # another distribution's files are not in it
    requirements = (tmp_path / "requirements.bzl").read_text()
    assert '"@pip//files/%s:%s" % (key, path)' in requirements


def test_lock_entries_as_inputs_need_the_per_distribution_tree(tmp_path, capsys):
    site, lock = _alpha(tmp_path)
    assert pip_generate.generate("L", str(site), str(tmp_path), str(lock), "lock") == 1
    assert "dists/alpha/ is missing" in capsys.readouterr().out


def test_with_every_file_an_input_a_library_lists_its_files(tmp_path):
    site, lock = _alpha(tmp_path)
    assert pip_generate.generate("L", str(site), str(tmp_path), str(lock), "files") == 0
    alpha = _library((tmp_path / "BUILD.bazel").read_text(), "alpha")
    assert '"site/alpha/data.json"' in alpha and '"site/alpha-1.0.dist-info/METADATA"' in alpha
    assert '"@pip//:site/" + path' in (tmp_path / "requirements.bzl").read_text()  # the library's own file
    assert pip_generate.generate("L", str(site), str(tmp_path), str(lock), "everything") == 1


def test_split_gives_each_distribution_its_own_directory_of_hard_links(tmp_path):
    site, _ = _alpha(tmp_path)
    (site / "alpha" / "__pycache__").mkdir()
    pyc = site / "alpha" / "__pycache__" / ("__init__.cpython-%d%d.pyc" % sys.version_info[:2])
    pyc.write_bytes(b"compiled")
    assert pip_generate.split(str(site), str(tmp_path / "dists")) == 0
    alpha = tmp_path / "dists" / "alpha"
    assert sorted(str(p.relative_to(alpha)) for p in alpha.rglob("*") if p.is_file()) == [
        "alpha-1.0.dist-info/METADATA",
        "alpha/__init__.py",
        f"alpha/__pycache__/{pyc.name}",
        "alpha/data.json",
    ]
    assert (alpha / "alpha" / "data.json").stat().st_ino == (site / "alpha" / "data.json").stat().st_ino
    assert not (alpha / "packaging").exists()  # another distribution's files are not there


def test_generate_fails_when_an_installed_package_has_no_entry(tmp_path, capsys):
    site = _site(tmp_path, ["alpha", "packaging"])
    lock = tmp_path / "requirements_lock.txt"
    lock.write_text(f"packaging==1.0 \\\n    --hash=sha256:{'c' * 64}\n")
    assert pip_generate.generate("third_party/requirements_lock.txt", str(site), str(tmp_path), str(lock)) == 1
    assert "third_party/requirements_lock.txt: alpha is installed but has no entry in the lock" in capsys.readouterr().out
    lock.write_text("packaging>=1.0\n")
    assert pip_generate.generate("third_party/requirements_lock.txt", str(site), str(tmp_path), str(lock)) == 1
    assert "third_party/requirements_lock.txt:1: not a name==version pin: 'packaging>=1.0'" in capsys.readouterr().out


def test_the_build_hash_and_affected_read_the_same_entries():
    from affected import lib as affected

    for lock in ("requirements_lock.txt", "requirements_lock_cuda.txt"):
        text = (ROOT / lock).read_text()
        entries = pip_generate.read_lock_entries(text, lock)
        assert entries == affected.read_lock(text, lock)[0]
        assert entries and all(e["version"] and e["hashes"] for e in entries.values())


def test_the_cuda_lock_gives_torch_its_own_entry():
    # --config=gpu installs the CUDA lock into @pip: its torch entry, not the CPU one, is hashed.
    cpu = pip_generate.read_lock_entries((ROOT / "requirements_lock.txt").read_text())
    cuda = pip_generate.read_lock_entries((ROOT / "requirements_lock_cuda.txt").read_text())
    assert cpu["torch"] != cuda["torch"]
    assert cpu["numpy"] == cuda["numpy"]


def test_verify_finds_an_installed_file_that_differs_from_its_record(tmp_path, capsys):
    import base64
    import hashlib

    site, _ = _alpha(tmp_path)
    body = b'{"vocabulary": 1}'
    (site / "alpha" / "data.json").write_bytes(body)
    digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()
    (site / "alpha-1.0.dist-info" / "RECORD").write_text(f"alpha/data.json,sha256={digest},{len(body)}\nalpha-1.0.dist-info/RECORD,,\n")
    assert pip_generate.verify(str(site)) == 0
    assert "1 of 1 installed files match" in capsys.readouterr().out
    (site / "alpha" / "data.json").write_bytes(b'{"vocabulary": 2}')
    assert pip_generate.verify(str(site)) == 1
    assert "alpha/data.json: sha256 or size differs from alpha-1.0.dist-info/RECORD" in capsys.readouterr().out
