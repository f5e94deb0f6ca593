"""The model tool (tools/bin/model_tool.py with a model's code): the binary the export and gate actions
run, and its `bazel run` front ends golden_update and model_train. Use //tools:defs.bzl."""

load("//tools/private:common.bzl", "MODEL_TOOL_MAIN", "RUNNER_LIB", "TRAIN_LIB", "model_name")

def model_tool(*, name, deps, args = [], data = [], visibility = None, tags = [], main = MODEL_TOOL_MAIN):
    """A py_binary of the model tool (or, with `main`, another per-model main: the gate's) with
    `deps` (a model_weights target, or the model's library) and the one runner its errors go
    through."""
    native.py_binary(
        name = name,
        srcs = [main],
        main = main,
        args = args,
        data = data,
        deps = deps + [RUNNER_LIB],
        visibility = visibility,
        tags = tags,
    )

def weights_file(*, name, weights, output, tags = []):
    """`:<name>`: one file of a model_weights target (its output group `output`: weights, onnx,
    export_manifest), for a $(rootpath) in the caller's package."""
    native.filegroup(
        name = name,
        srcs = [weights],
        output_group = output,
        visibility = ["//visibility:private"],
        tags = tags,
    )

def golden_update(*, name, weights, model = None, visibility = None):
    """`bazel run :<name>`: regenerates golden/<model>/ from the exported weights and prints, per
    output, how far the expected values moved, for review before committing.

    Args:
      name: target name, conventionally "golden_update".
      weights: the model_weights target (any package's).
      model: the model's name; defaults to the package's last path component.
      visibility: as for any target.
    """
    model = model_name(model)
    weights_file(name = "_%s_weights" % name, weights = weights, output = "weights")
    weights_file(name = "_%s_export_manifest" % name, weights = weights, output = "export_manifest")
    model_tool(
        name = name,
        deps = [weights],
        args = [
            "golden-update",
            "--model",
            model,
            "--weights",
            "$(rootpath :_%s_weights)" % name,
            "--export-manifest",
            "$(rootpath :_%s_export_manifest)" % name,
        ],
        data = [":_%s_weights" % name, ":_%s_export_manifest" % name],
        visibility = visibility,
    )

def model_train(*, name, weights, model = None, visibility = None):
    """`bazel run :<name>`: trains the model outside the build (any device; a GPU where there is
    one), uploads the checkpoint content-addressed to the registry and rewrites the model's pin
    file (models/<model>/checkpoint.json), printing the metric change against the checkpoint
    pinned before. Flags: --registry=URI, --device=cpu|cuda|auto, --portable, --source=URI,
    --dry-run. Then `golden_update` follows.

    Args:
      name: target name, conventionally "train".
      weights: the model_weights target (its library is the model's code).
      model: the model's name; defaults to the package's last path component.
      visibility: as for any target.
    """
    model = model_name(model)
    model_tool(name = name, deps = [weights, TRAIN_LIB], args = ["train", "--model", model], visibility = visibility)
