"""Implementation of model_test and model_test_suites. Use //tools:defs.bzl."""

load("@pip//:requirements.bzl", "requirement")
load("//tools/private:common.bzl", "CHECKS_LIB", "PYTEST_MAIN", "RECEIPTS_LIB", "RECEIPT_RUNNER_MAIN")
load("//tools/private:pytest.bzl", "check_pytest_srcs")
load("//tools/private:receipts.bzl", "gpu_runs_here", "receipt_run", "receipt_test", "timeout_seconds")

# GPU variants: excluded by default (.bazelrc: test --test_tag_filters=-gpu), selected by
# --config=gpu; on remote execution the exec property routes them to a GPU pool.
GPU_TAGS = ["gpu", "requires-gpu-nvidia"]
GPU_EXEC_PROPERTIES = {"Pool": "gpu"}

def _receipt_variant(*, name, srcs, deps, data, env, pytest_args, variant, size, tags, **kwargs):
    """`name`: a receipt_test whose pytest run is a cached build action (tools/private/receipts.bzl)."""
    runner = "_%s_runner" % name
    native.py_binary(
        name = runner,
        srcs = [RECEIPT_RUNNER_MAIN, PYTEST_MAIN] + srcs,
        main = RECEIPT_RUNNER_MAIN,
        deps = deps + [RECEIPTS_LIB, requirement("pytest")],
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
    check_pytest_srcs("model_test", name, srcs)
    if "gpu" in tags:
        fail("model_test(name = %r): do not tag it gpu; the macro declares the _gpu variant itself" % name)
    deps = deps + [CHECKS_LIB]
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
