"""Implementation of pytest_test: a plain pytest run as one Bazel test. Use //tools:defs.bzl."""

load("@pip//:requirements.bzl", "requirement")
load("//tools/private:common.bzl", "PYTEST_INI", "PYTEST_MAIN")

def check_pytest_srcs(macro, name, srcs):
    """Fails unless `srcs` is a non-empty list of .py files (pytest_test, model_test)."""
    if not srcs:
        fail("%s(name = %r): srcs is empty; list the pytest files to run" % (macro, name))
    for src in srcs:
        if not src.endswith(".py"):
            fail("%s(name = %r): srcs entry %r is not a .py file" % (macro, name, src))

def pytest_test(*, name, srcs, deps = [], data = [], env = {}, size = "small", **kwargs):
    """A plain pytest file (or several) as one Bazel test, for tests that are not per-model.

    Args:
      name: target name.
      srcs: pytest files.
      deps: libraries the tests import.
      data: files the tests read.
      env: environment variables for the tests; values may use $(rootpath ...) of data.
      size: Bazel test size.
      **kwargs: passed to py_test.
    """
    check_pytest_srcs("pytest_test", name, srcs)
    env_flags = ["--modelgate-env=%s=%s" % (k, v) for k, v in sorted(env.items())]
    native.py_test(
        name = name,
        srcs = [PYTEST_MAIN] + srcs,
        main = PYTEST_MAIN,
        args = env_flags + ["$(rootpath %s)" % src for src in srcs],
        deps = deps + [requirement("pytest")],
        data = data + [PYTEST_INI],
        python_version = "PY3",
        size = size,
        **kwargs
    )
