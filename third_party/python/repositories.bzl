"""Repository rules for the Python toolchain and the pinned pip packages.

Both work offline except for pip's own downloads from the package index, and neither depends on
where the clone lives: every file they write is identical in two clones at different paths, so
test actions hit each other's cache.
"""

_DEFAULT_PYTHON = "/usr/bin/python3.11"

_LOCK_FIX = "fix the lock with: bazel run //third_party:requirements.update"

def _find_python(rctx):
    python = rctx.os.environ.get("MODELGATE_PYTHON", rctx.attr.python)
    if not rctx.path(python).exists:
        fail("modelgate: no Python interpreter at %s; run tools/bootstrap (or set MODELGATE_PYTHON)" % python)
    return python

def _python_version(rctx, python):
    res = rctx.execute([python, "-S", "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"])
    if res.return_code != 0:
        fail("modelgate: %s does not run: %s" % (python, res.stderr.strip()))
    return res.stdout.strip()

def _python_interpreter_impl(rctx):
    python = _find_python(rctx)
    version = _python_version(rctx, python)
    if not version.startswith(rctx.attr.expected_minor + "."):
        fail("modelgate: %s is Python %s, the lock is for Python %s; run tools/bootstrap" % (python, version, rctx.attr.expected_minor))

    # The wrapper is the toolchain's identity: its bytes (path and version) key every Python action.
    # -S keeps the interpreter's own site-packages (and Debian's dist-packages) out of sys.path;
    # only the packages a target depends on are importable.
    rctx.file("bin/python3", "\n".join([
        "#!/bin/sh",
        "# modelgate Python toolchain: CPython %s at %s" % (version, python),
        "# -S: no site-packages of the interpreter's own; -s: no user site.",
        'exec %s -S -s "$@"' % python,
        "",
    ]), executable = True)
    rctx.file("BUILD.bazel", """\
package(default_visibility = ["//visibility:public"])

load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

exports_files(["bin/python3"])

py_runtime(
    name = "runtime",
    interpreter = "bin/python3",
    python_version = "PY3",
    # The launcher stub that finds runfiles; Debian has no `python` on PATH.
    stub_shebang = "#!/usr/bin/python3",
)

py_runtime_pair(
    name = "runtime_pair",
    py3_runtime = ":runtime",
)

toolchain(
    name = "toolchain",
    toolchain = ":runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)
""")

python_interpreter = repository_rule(
    implementation = _python_interpreter_impl,
    attrs = {
        "expected_minor": attr.string(default = "3.11"),
        "python": attr.string(default = _DEFAULT_PYTHON),
    },
    environ = ["MODELGATE_PYTHON"],
    local = True,
)

def _pip_repository_impl(rctx):
    python = _find_python(rctx)
    flavor = rctx.os.environ.get("MODELGATE_TORCH", "cpu")
    if flavor == "cpu":
        lock = rctx.attr.requirements_lock
    elif flavor == "cuda":
        lock = rctx.attr.requirements_lock_cuda
    else:
        fail("modelgate: MODELGATE_TORCH=%s; expected cpu or cuda" % flavor)
    lock_path = rctx.path(lock)
    lock_name = "%s/%s" % (lock.package, lock.name) if lock.package else lock.name
    rctx.file("requirements_lock.txt", rctx.read(lock_path), executable = False)
    rctx.report_progress("installing %s" % lock_name)
    res = rctx.execute(
        [
            python,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--require-hashes",
            "--no-compile",
            "--no-input",
            "--disable-pip-version-check",
            "--target",
            "site",
            "-r",
            str(lock_path),
        ],
        timeout = 3600,
        quiet = True,
    )
    if res.return_code != 0:
        summary = rctx.execute([python, "-S", rctx.path(rctx.attr._generator), "explain-pip-error", lock_name], environment = {"PIP_OUTPUT": res.stdout + res.stderr})
        fail("\n" + (summary.stdout.strip() or (res.stderr.strip() + "\n" + _LOCK_FIX)))

    # Byte-compile with paths relative to the repository and hash-checked .pyc files, so that the
    # tree is byte-identical wherever the output base is. Exits non-zero on files written for newer
    # Pythons (torch ships a few); that is expected.
    rctx.execute([python, "-S", "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash", "-s", str(rctx.path("site")), "-p", "site", "site"], timeout = 1800, quiet = True)

    # The lock entry of each package goes beside its py_library (lock_entries/<name>.json).
    res = rctx.execute([python, rctx.path(rctx.attr._generator), "generate", lock_name, "site", ".", "requirements_lock.txt"], timeout = 600, quiet = True)
    if res.return_code != 0:
        fail("\n" + (res.stdout + res.stderr).strip())

pip_repository = repository_rule(
    implementation = _pip_repository_impl,
    attrs = {
        "python": attr.string(default = _DEFAULT_PYTHON),
        "requirements_lock": attr.label(mandatory = True, allow_single_file = True),
        "requirements_lock_cuda": attr.label(mandatory = True, allow_single_file = True),
        "_generator": attr.label(default = "//third_party/python:pip_generate.py"),
    },
    environ = ["MODELGATE_PYTHON", "MODELGATE_TORCH"],
)
