"""Implementation of model_library, model_test, pytest_test and model_test_suites. Use //tools:defs.bzl."""

load("@pip//:requirements.bzl", "requirement")
load("//tools/private:receipts.bzl", "gpu_runs_here", "receipt_run", "receipt_test", "timeout_seconds")

_PYTEST_MAIN = "//tools/bin:pytest_main.py"
_RECEIPT_RUNNER = "//tools/bin:receipt_runner.py"

# GPU variants: excluded by default (.bazelrc: test --test_tag_filters=-gpu), selected by
# --config=gpu; on remote execution the exec property routes them to a GPU pool.
GPU_TAGS = ["gpu", "requires-gpu-nvidia"]
GPU_EXEC_PROPERTIES = {"Pool": "gpu"}

def model_library(*, name, srcs, deps = [], data = [], visibility = None, **kwargs):
    """A model's code: a py_library with torch (and the given deps) attached.

    Args:
      name: target name, usually the model's name.
      srcs: the model's Python sources.
      deps: other libraries, e.g. requirement("numpy").
      data: files the model reads at run time.
      visibility: as for any target.
      **kwargs: passed to py_library.
    """
    if not srcs:
        fail("model_library(name = %r): srcs is empty; list the model's .py files" % name)
    native.py_library(
        name = name,
        srcs = srcs,
        deps = deps + ["//tools/modelgate:spec", requirement("torch")],
        data = data,
        visibility = visibility,
        **kwargs
    )

def _check_srcs(macro, name, srcs):
    if not srcs:
        fail("%s(name = %r): srcs is empty; list the pytest files to run" % (macro, name))
    for src in srcs:
        if not src.endswith(".py"):
            fail("%s(name = %r): srcs entry %r is not a .py file" % (macro, name, src))

def _pytest(*, name, srcs, deps, data, env, pytest_args, **kwargs):
    """One py_test that runs pytest on `srcs` through //tools/bin:pytest_main.py."""
    env_flags = ["--modelgate-env=%s=%s" % (k, v) for k, v in sorted(env.items())]
    native.py_test(
        name = name,
        srcs = [_PYTEST_MAIN] + srcs,
        main = _PYTEST_MAIN,
        args = env_flags + pytest_args + ["$(rootpath %s)" % src for src in srcs],
        deps = deps + [requirement("pytest")],
        data = data + ["//:pytest.ini"],
        python_version = "PY3",
        **kwargs
    )

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
    _check_srcs("pytest_test", name, srcs)
    _pytest(name = name, srcs = srcs, deps = deps, data = data, env = env, pytest_args = [], size = size, **kwargs)

def _receipt_variant(*, name, srcs, deps, data, env, pytest_args, variant, size, tags, **kwargs):
    """`name`: a receipt_test whose pytest run is a cached build action (tools/private/receipts.bzl)."""
    runner = "_%s_runner" % name
    native.py_binary(
        name = runner,
        srcs = [_RECEIPT_RUNNER, _PYTEST_MAIN] + srcs,
        main = _RECEIPT_RUNNER,
        deps = deps + ["//tools/modelgate:receipts_lib", requirement("pytest")],
        python_version = "PY3",
        tags = ["manual"],
        visibility = ["//visibility:private"],
        testonly = kwargs.get("testonly", False),
    )
    not_run = ""
    if variant == "gpu" and not gpu_runs_here():
        not_run = "this build's torch is the CPU build; GPU variants run under --config=gpu on a CUDA machine"
    testonly = kwargs.pop("testonly", False)
    receipt_run(
        name = name + "_receipt",
        test_name = name,
        runner = ":" + runner,
        srcs = srcs,
        deps = deps,
        data = data,
        env = env,
        pytest_args = pytest_args,
        variant = variant,
        timeout_s = timeout_seconds(size, kwargs.get("timeout")),
        not_run_reason = not_run,
        tags = tags + ["manual"],
        exec_properties = kwargs.get("exec_properties"),
        testonly = testonly,
        visibility = ["//visibility:public"],
    )
    receipt_test(
        name = name,
        run = ":" + name + "_receipt",
        size = size,
        tags = tags,
        **kwargs
    )

def model_test(*, name, srcs, deps = [], data = [], env = {}, size = "small", tags = [], gpu = True, **kwargs):
    """Model-logic tests: one pytest run per variant, from one call, each leaving a receipt.

    Declares `<name>_cpu` (tests not marked `gpu`) and, unless gpu = False, `<name>_gpu`
    (tests marked `gpu`; tagged gpu and requires-gpu-nvidia; fails with a clear message where
    no CUDA device is visible). Test files are plain pytest files. Each variant's pytest run is a
    cached build action that writes `<variant>.receipt.json` (what ran, against which files, with
    what result); the test target reports it, and a model_release in the package depends on the
    receipts (tools/private/receipts.bzl).

    Args:
      name: base name of the variants.
      srcs: pytest files.
      deps: libraries the tests import.
      data: files the tests read (golden data, ...).
      env: environment variables for the tests; values may use $(rootpath ...) of data.
      size: Bazel test size of the CPU variant; the GPU variant is one size up (CUDA start-up).
        It also bounds the pytest run (small 60 s, medium 300 s, large 900 s).
      tags: extra tags for both variants.
      gpu: whether to declare the `_gpu` variant.
      **kwargs: passed to both test targets.
    """
    _check_srcs("model_test", name, srcs)
    if "gpu" in tags:
        fail("model_test(name = %r): do not tag it gpu; the macro declares the _gpu variant itself" % name)
    deps = deps + ["//tools/modelgate:checks"]
    _receipt_variant(
        name = name + "_cpu",
        srcs = srcs,
        deps = deps,
        data = data,
        env = env,
        pytest_args = ["-m", "not gpu"],
        variant = "cpu",
        size = size,
        tags = tags + ["cpu"],
        **kwargs
    )
    if gpu:
        _receipt_variant(
            name = name + "_gpu",
            srcs = srcs,
            deps = deps,
            data = data,
            env = env,
            pytest_args = ["--modelgate-require-gpu", "-m", "gpu"],
            variant = "gpu",
            size = {"small": "medium", "medium": "large"}.get(size, size),
            tags = tags + GPU_TAGS,
            exec_properties = GPU_EXEC_PROPERTIES,
            **kwargs
        )

def model_test_suites():
    """Per-package suites: `:cpu_tests` and `:gpu_tests` (every test of the package by variant)."""
    native.test_suite(name = "cpu_tests", tags = ["-gpu"])
    native.test_suite(name = "gpu_tests", tags = ["gpu"])
