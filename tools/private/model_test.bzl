"""Implementation of model_test and model_test_suites. Use //tools:defs.bzl."""

load("@pip//:requirements.bzl", "requirement")
load("//tools/private:common.bzl", "CHECKS_LIB", "CUDA_ENV", "FORK_WORKER_MAIN", "PYTEST_MAIN", "RECEIPTS_LIB", "RECEIPT_RUNNER_MAIN")
load("//tools/private:pytest.bzl", "check_pytest_srcs")
load("//tools/private:receipts.bzl", "gpu_runs_here", "receipt_run", "receipt_test", "timeout_seconds")

# The variants of a model_test, as data: one pytest run, one receipt and one test target each,
# named <name>_<variant>. A variant a BUILD file turns off (model_test(gpu = False)) is still
# declared, tagged manual: `bazel query` lists it, `bazel test //...` skips it, a release does not
# need its receipt, and run by name it reports that it is disabled.
#   suffix                  appended to the model_test's name
#   tags                    the test target's tags (GPU: excluded by default, .bazelrc's
#                           test --test_tag_filters=-gpu; selected by --config=gpu)
#   pytest_args             pytest flags and the marker expression that selects the variant's tests
#   sizes                   the test size for a given one (a GPU run is one size up: CUDA start-up)
#   exec_properties         remote execution: the GPU variant goes to a GPU pool
#   execution_requirements  of the pytest action
#   env                     of the pytest action, over the test environment of .bazelrc
#   not_run_reason          set where this build cannot run the variant: its receipt says so
VARIANTS = [
    struct(
        name = "cpu",
        suffix = "_cpu",
        tags = ["cpu"],
        pytest_args = ["-m", "not gpu"],
        sizes = {},
        exec_properties = None,
        execution_requirements = {},
        env = {},
        not_run_reason = "",
    ),
    struct(
        name = "gpu",
        suffix = "_gpu",
        tags = ["gpu", "requires-gpu-nvidia"],
        pytest_args = ["--modelgate-require-gpu", "-m", "gpu"],
        sizes = {"small": "medium", "medium": "large"},
        exec_properties = {"Pool": "gpu"},
        execution_requirements = {"requires-gpu-nvidia": ""},
        env = CUDA_ENV,
        not_run_reason = "" if gpu_runs_here() else "this build's torch is the CPU build; GPU variants run under --config=gpu on a CUDA machine",
    ),
]

def _receipt_variant(*, name, srcs, deps, data, records, env, variant, enabled, disabled_by, size, tags, **kwargs):
    """`name`: a receipt_test whose pytest run is a cached build action (tools/private/receipts.bzl)."""
    testonly = kwargs.pop("testonly", False)
    if variant.exec_properties != None:
        kwargs["exec_properties"] = variant.exec_properties
    runner = "_%s_runner" % name
    native.py_binary(
        name = runner,
        srcs = [RECEIPT_RUNNER_MAIN, PYTEST_MAIN, FORK_WORKER_MAIN] + srcs,
        main = RECEIPT_RUNNER_MAIN,
        deps = deps + [RECEIPTS_LIB, requirement("pytest")],
        python_version = "PY3",
        tags = ["manual"],
        visibility = ["//visibility:private"],
        testonly = testonly,
    )
    not_run = variant.not_run_reason
    if not enabled:
        not_run = "disabled: %s turns the %s variant off" % (disabled_by, variant.name)
    tags = tags + variant.tags + ([] if enabled else ["manual"])
    size = variant.sizes.get(size, size)
    receipt_run(
        name = name + "_receipt",
        test_name = name,
        runner = ":" + runner,
        srcs = srcs,
        deps = deps,
        data = data,
        records = records,
        env = env,
        pytest_args = variant.pytest_args,
        variant = variant.name,
        run_env = variant.env,
        execution_requirements = variant.execution_requirements,
        timeout_s = timeout_seconds(size, kwargs.get("timeout")),
        not_run_reason = not_run,
        disabled = not enabled,
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

def model_test(*, name, srcs, deps = [], data = [], env = {}, size = "small", tags = [], gpu = True, records = [], **kwargs):
    """Model-logic tests: one pytest run per variant, from one call, each leaving a receipt.

    Declares one target per entry of VARIANTS: `<name>_cpu` (tests not marked `gpu`) and
    `<name>_gpu` (tests marked `gpu`; tagged gpu and requires-gpu-nvidia; fails with a clear
    message where no CUDA device is visible). With gpu = False, `<name>_gpu` is declared tagged
    manual and disabled: `bazel test //...` skips it and a release does not need it. Test files are
    plain pytest files. Each variant's pytest run is a cached build action that writes
    `<variant>.receipt.json` (what ran, against which files, with what result); the test target
    reports it, and a model_release in the package depends on the receipts
    (tools/private/receipts.bzl).

    Args:
      name: base name of the variants.
      srcs: pytest files.
      deps: libraries the tests import.
      data: files the tests read (golden data, ...).
      env: environment variables for the tests; values may use $(rootpath ...) of data.
      size: Bazel test size of the CPU variant; the GPU variant is one size up (CUDA start-up).
        It also bounds the pytest run (small 60 s, medium 300 s, large 900 s).
      tags: extra tags for both variants.
      gpu: whether the `_gpu` variant is enabled (False: declared, tagged manual, disabled).
      records: export records (a model_weights target's export.json) of files among `data`: the
        receipt takes their sha256 from the record instead of hashing them again.
      **kwargs: passed to both test targets.
    """
    check_pytest_srcs("model_test", name, srcs)
    for variant in VARIANTS:
        for tag in variant.tags:
            if tag in tags:
                fail("model_test(name = %r): do not tag it %s; the macro declares the %s variant itself" % (name, tag, variant.suffix))
    enabled = {"gpu": gpu}
    for variant in VARIANTS:
        _receipt_variant(
            name = name + variant.suffix,
            srcs = srcs,
            deps = deps + [CHECKS_LIB],
            data = data,
            records = records,
            env = env,
            variant = variant,
            enabled = enabled.get(variant.name, True),
            disabled_by = "model_test(name = %r, %s = False)" % (name, variant.name),
            size = size,
            tags = tags,
            **kwargs
        )

def model_test_suites():
    """Per-package suites: `:cpu_tests` and `:gpu_tests` (every test of the package by variant)."""
    native.test_suite(name = "cpu_tests", tags = ["-gpu"])
    native.test_suite(name = "gpu_tests", tags = ["gpu"])
