"""Implementation of golden_test: exported weights against golden/<model>/. Use //tools:defs.bzl."""

load("//tools/private:common.bzl", "GOLDEN_TEST_MAIN", "REPORT_LIB", "model_name")
load("//tools/private:model_test.bzl", "model_test")
load("//tools/private:model_tool.bzl", "weights_file")

def golden_test(*, name, weights, model = None, golden = None, **kwargs):
    """Compares the exported weights against golden/<model>/ (CPU; CUDA and autocast in `_gpu`).

    On failure, reports per output the worst absolute and relative error and their indices, and
    names its report: an HTML page per run (expected against actual, the tolerance band, the error
    per element, the worst rows) in the test's undeclared outputs (bazel-bin/<pkg>/<name>_cpu.outputs/,
    copied to bazel-testlogs/<pkg>/<name>_cpu/test.outputs/, which CI uploads).

    Args:
      name: base name of the `_cpu` / `_gpu` variants.
      weights: the model_weights target (any package's: its library and weights file come with it).
      model: the model's name; defaults to the package's last path component.
      golden: golden data files; defaults to //golden:<model> (golden/<model>/).
      **kwargs: passed to model_test.
    """
    model = model_name(model)
    golden_label = golden or "//golden:%s" % model
    weights_target = "_%s_weights" % name
    weights_file(name = weights_target, weights = weights, output = "weights", tags = kwargs.get("tags", []))
    # The export's record: the receipt takes the sha256 of the weights (and of the other files the
    # export hashed) from it instead of hashing them again (modelgate.receipts.input_digests).
    export_record = "_%s_export_manifest" % name
    weights_file(name = export_record, weights = weights, output = "export_manifest", tags = kwargs.get("tags", []))
    model_test(
        name = name,
        srcs = [GOLDEN_TEST_MAIN],
        deps = kwargs.pop("deps", []) + [weights, REPORT_LIB],
        data = [":" + weights_target, golden_label],
        records = [":" + export_record],
        env = {
            "MODELGATE_GOLDEN_DIR": "golden/" + model,
            "MODELGATE_MODEL": model,
            "MODELGATE_WEIGHTS": "$(rootpath :%s)" % weights_target,
        },
        **kwargs
    )
