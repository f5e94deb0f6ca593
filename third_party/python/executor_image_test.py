"""The executor image (executor.Dockerfile) and the actions of --config=rbe agree: the image
installs the pip store where the toolchain's wrapper reads it, with the repository rule's key,
layout and install steps, and indexes it by lock entry; the wrapper, run as an executor runs it
(the lock entries are copies, not links into @pip), finds each package of an action by its entry's
digest and refuses one the image lacks; and the platform's image tag names the flavor, the
interpreter and the store's format but not the lock, so that a lock edit re-keys only the actions
whose packages changed. Docker is not run here."""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path("third_party/python")
DOCKERFILE = (HERE / "executor.Dockerfile").read_text(encoding="utf-8")
RULES = (HERE / "repositories.bzl").read_text(encoding="utf-8")
PIP = Path("..") / "pip" / "executor"
INTERPRETER = "/usr/bin/python3.11"  # the toolchain's (repositories.bzl _DEFAULT_PYTHON)

sys.path.insert(0, str(HERE))
import pip_generate  # noqa: E402


def _rules_constant(name):
    match = re.search(rf'^{name} = "([^"]*)"$', RULES, re.M)
    assert match, name
    return match.group(1)


def _dockerfile_arg(name):
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE, re.M)
    assert match, name
    return match.group(1)


def _run_script():
    # The RUN that installs the store, with its line continuations joined.
    runs = re.findall(r"^RUN (.*?)(?<!\\)\n", DOCKERFILE, re.M | re.S)
    script = [r for r in runs if "store_key.py" in r]
    assert len(script) == 1
    return script[0].replace("\\\n", " ")


def _image_wrapper(store_root):
    # The toolchain's wrapper (repositories.bzl _WRAPPER) as the repository rule writes it.
    template = re.search(r'^_WRAPPER = """\\\n(.*?)^"""$', RULES, re.M | re.S).group(1)
    version = "%d.%d.%d" % sys.version_info[:3]
    return template.format(version=version, python=INTERPRETER, store_root=store_root)


def test_store_root_is_the_wrappers():
    root = _rules_constant("EXECUTOR_STORE_ROOT")
    assert root == "/opt/modelgate/pip-store"
    assert f"store={root}/$key;" in _run_script()
    assert _rules_constant("_DEFAULT_PYTHON") == INTERPRETER
    assert "for found in {store_root}/*/entries/$digest; do" in RULES


def test_same_format_and_key_script():
    assert _dockerfile_arg("STORE_FORMAT") == _rules_constant("_STORE_FORMAT")
    script = _run_script()
    assert f'key=$({INTERPRETER} -S /src/third_party/python/store_key.py "$lock" "$FLAVOR" "$STORE_FORMAT")' in script
    assert "cpu) lock=/src/third_party/requirements_lock.txt" in script
    assert "cuda) lock=/src/third_party/requirements_lock_cuda.txt" in script
    assert "COPY third_party/requirements_lock.txt third_party/requirements_lock_cuda.txt /src/third_party/" in DOCKERFILE


def test_image_tag_names_flavor_interpreter_and_format_not_the_lock():
    image = (PIP / "IMAGE").read_text().strip()
    version = "%d.%d.%d" % sys.version_info[:3]
    assert image.endswith(f":cpu-python{version}-store{_dockerfile_arg('STORE_FORMAT')}"), image
    # No digest of the lock in it (the platform's container-image is this string, and part of
    # every action's key): the key of an action holds its own packages' entries instead.
    key = subprocess.run(
        [INTERPRETER, "-S", str(HERE / "store_key.py"), "third_party/requirements_lock.txt", "cpu", _dockerfile_arg("STORE_FORMAT")],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    assert key[:12] not in image
    assert 'tag = executor_tag(flavor, version)' in RULES and '"container-image": "{image}:{tag}"' in RULES


def test_same_layout_and_install_steps_as_the_repository_rule():
    script = _run_script()
    for flag in ("--no-deps", "--require-hashes", "--no-compile", "--target site"):
        assert flag in script
        assert f'"{flag.split()[0]}"' in RULES
    assert "compileall -q -j 0 --invalidation-mode unchecked-hash" in script
    assert '"--invalidation-mode", "unchecked-hash"' in RULES
    assert "-p site site" in script
    assert "pip_generate.py split site dists" in script
    assert 'pip_generate.py index "$store" "$lock"' in script and '"index", store' in RULES
    assert "touch COMPLETE" in script and _rules_constant("_STORE_DONE") == "COMPLETE"


LOCK = """\
alpha==1.0 \\
    --hash=sha256:{a}
beta==2.0 \\
    --hash=sha256:{b}
"""


@pytest.fixture
def executor(tmp_path):
    """An executor image's store with one lock (alpha 1.0, beta 2.0) and an action's inputs as an
    executor receives them: the lock entries as copies, in <action>/pip/lock_entries."""
    lock = tmp_path / "requirements_lock.txt"
    lock.write_text(LOCK.format(a="1" * 64, b="2" * 64))
    root = tmp_path / "pip-store"
    store = root / ("f" * 64)
    for name in ("alpha", "beta"):
        (store / "dists" / name / name).mkdir(parents=True)
        (store / "dists" / name / name / "__init__.py").write_text(f"WHERE = {name!r}\n")
    (store / "COMPLETE").touch()
    assert pip_generate.index(str(store), "lock", str(lock)) == 0

    action = tmp_path / "action"
    (action / "pip" / "lock_entries").mkdir(parents=True)
    entries = pip_generate.read_lock_entries(lock.read_text())
    for name, entry in entries.items():
        (action / "pip" / "lock_entries" / f"{name}.json").write_text(pip_generate.entry_body(entry))
    wrapper = tmp_path / "python3"
    wrapper.write_text(_image_wrapper(root))
    wrapper.chmod(0o755)
    return root, store, action, wrapper


def _run(wrapper, action, code):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{action}/pip/site"}
    return subprocess.run([str(wrapper), "-c", code], env=env, capture_output=True, text=True, cwd=action)


def test_index_names_each_package_by_the_digest_of_its_lock_entry(executor):
    root, store, action, _ = executor
    for name in ("alpha", "beta"):
        digest = hashlib.sha256((action / "pip" / "lock_entries" / f"{name}.json").read_bytes()).hexdigest()
        assert os.readlink(store / "entries" / digest) == f"../dists/{name}"


def test_wrapper_on_an_executor_finds_the_packages_by_lock_entry(executor):
    root, store, action, wrapper = executor
    run = _run(wrapper, action, "import alpha, beta, sys; print(alpha.WHERE, beta.WHERE); print(sys.path[1])")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == "alpha beta"
    assert "/entries/" in run.stdout.splitlines()[1]


def test_wrapper_refuses_a_package_whose_entry_the_image_lacks(executor):
    # The action's lock says beta 2.1; the image was built from a lock with beta 2.0: no cache hit
    # of other bytes, one line naming the package, exit 70.
    root, store, action, wrapper = executor
    entry = json.loads((action / "pip" / "lock_entries" / "beta.json").read_text())
    entry["version"] = "2.1"
    (action / "pip" / "lock_entries" / "beta.json").write_text(pip_generate.entry_body(entry))
    run = _run(wrapper, action, "import beta")
    assert run.returncode == 70
    assert "this executor's image has no beta of this lock" in run.stderr
    assert "executor.Dockerfile" in run.stderr
