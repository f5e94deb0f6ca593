"""Public macros for model packages.

    load("//tools:defs.bzl", "golden_test", "golden_update", "model_library", "model_package",
         "model_release", "model_test", "model_test_suites", "model_weights")

A model package usually needs one call:

    model_package(name = "my_model", srcs = ["model.py", "spec.py"], tests = ["model_test.py"])

which expands to its library and tests, then the export pipeline:

    model_weights(name = "weights", deps = [":my_model"])   # train, safetensors, ONNX, build hash
    golden_test(name = "golden_test", weights = ":weights")  # exported weights vs golden/<model>/
    model_release(name = "release", weights = ":weights")    # the gated, promotable bundle
    golden_update(name = "golden_update", weights = ":weights")
    model_train(name = "train", weights = ":weights")        # bazel run: train outside, pin it

or, when the weights come from outside the build (a pin file, checkpoint.json, in the package):

    pinned_checkpoint(name = "checkpoint", model = "my_model", pin = "checkpoint.json")
    model_weights(name = "weights", deps = [":my_model"], checkpoint = ":checkpoint")

`weights` may be any package's model_weights target: the rules take its files, its model tool
and its library from the ModelWeightsInfo it returns, so a golden test or a release elsewhere
reuses the model's one export (tests/rules/BUILD.bazel does).

Each is a thin, keyword-only macro; what they expand to lives in //tools/private, one rule per
file, with the providers in providers.bzl.
"""

load("//tools/private:checkpoint.bzl", _pinned_checkpoint = "pinned_checkpoint")
load("//tools/private:golden_test.bzl", _golden_test = "golden_test")
load("//tools/private:model_library.bzl", _model_library = "model_library")
load("//tools/private:model_package.bzl", _model_package = "model_package")
load("//tools/private:model_release.bzl", _model_release = "model_release")
load("//tools/private:model_test.bzl", _model_test = "model_test", _model_test_suites = "model_test_suites")
load("//tools/private:model_tool.bzl", _golden_update = "golden_update", _model_train = "model_train")
load("//tools/private:model_weights.bzl", _model_weights = "model_weights")
load(
    "//tools/private:providers.bzl",
    _CheckpointInfo = "CheckpointInfo",
    _ModelWeightsInfo = "ModelWeightsInfo",
    _ReleaseInfo = "ReleaseInfo",
)
load("//tools/private:pytest.bzl", _pytest_test = "pytest_test")
load("//tools/private:release_set.bzl", _release_set = "release_set")

CheckpointInfo = _CheckpointInfo
ReleaseInfo = _ReleaseInfo
ModelWeightsInfo = _ModelWeightsInfo
WeightsInfo = _ModelWeightsInfo
golden_test = _golden_test
golden_update = _golden_update
model_library = _model_library
model_package = _model_package
model_release = _model_release
model_test = _model_test
model_test_suites = _model_test_suites
model_train = _model_train
model_weights = _model_weights
pinned_checkpoint = _pinned_checkpoint
pytest_test = _pytest_test
release_set = _release_set
