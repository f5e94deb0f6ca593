"""The executor image (executor.Dockerfile) installs the pip store where the actions of
--config=rbe read it: the same root as the toolchain's wrapper, the same key as the repository
rule (store_key.py, the same format and flavor), the same layout (site/, dists/, COMPLETE) and the
same install steps. Docker is not run here; the Dockerfile's paths and key are checked."""

import re
import subprocess
from pathlib import Path

HERE = Path("third_party/python")
DOCKERFILE = (HERE / "executor.Dockerfile").read_text(encoding="utf-8")
RULES = (HERE / "repositories.bzl").read_text(encoding="utf-8")
PIP = Path("..") / "pip" / "executor"
INTERPRETER = "/usr/bin/python3.11"  # the toolchain's (repositories.bzl _DEFAULT_PYTHON)


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


def test_store_root_is_the_wrappers():
    root = _rules_constant("EXECUTOR_STORE_ROOT")
    assert root == "/opt/modelgate/pip-store"
    assert f"store={root}/$key;" in _run_script()
    assert _rules_constant("_DEFAULT_PYTHON") == INTERPRETER
    # The wrapper (its template) reads <root>/<key>/dists/<name> and checks COMPLETE.
    assert "repo={store_root}/$key" in RULES and '"$repo/COMPLETE"' in RULES


def test_same_format_and_key_script():
    assert _dockerfile_arg("STORE_FORMAT") == _rules_constant("_STORE_FORMAT")
    script = _run_script()
    assert f'key=$({INTERPRETER} -S /src/third_party/python/store_key.py "$lock" "$FLAVOR" "$STORE_FORMAT")' in script
    assert "cpu) lock=/src/third_party/requirements_lock.txt" in script
    assert "cuda) lock=/src/third_party/requirements_lock_cuda.txt" in script
    assert "COPY third_party/requirements_lock.txt third_party/requirements_lock_cuda.txt /src/third_party/" in DOCKERFILE


def test_key_the_image_computes_is_the_repositorys():
    # What the Dockerfile runs (store_key.py on the cpu lock, the store's format) gives the key
    # @pip was built with (the default flavor, cpu) and that the platform's image is tagged with.
    key = subprocess.run(
        [INTERPRETER, "-S", str(HERE / "store_key.py"), "third_party/requirements_lock.txt", "cpu", _dockerfile_arg("STORE_FORMAT")],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    assert key == (PIP / "STORE_KEY").read_text().strip()
    assert (PIP / "IMAGE").read_text().strip().endswith(":cpu-" + key)
    # The cuda lock gets another key, and so another image and other action keys.
    cuda = subprocess.run(
        [INTERPRETER, "-S", str(HERE / "store_key.py"), "third_party/requirements_lock_cuda.txt", "cuda", "2"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    assert cuda != key


def test_same_layout_and_install_steps_as_the_repository_rule():
    script = _run_script()
    for flag in ("--no-deps", "--require-hashes", "--no-compile", "--target site"):
        assert flag in script
        assert f'"{flag.split()[0]}"' in RULES
    assert "compileall -q -j 0 --invalidation-mode unchecked-hash" in script
    assert '"--invalidation-mode", "unchecked-hash"' in RULES
    assert "-p site site" in script
    assert "pip_generate.py split site dists" in script
    assert "touch COMPLETE" in script and _rules_constant("_STORE_DONE") == "COMPLETE"
