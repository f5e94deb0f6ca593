"""The providers of modelgate's rules: what one target hands another, so that no rule finds a
target by joining label strings, and a model's targets can be used by label from any package.
The public ones are re-exported by //tools:defs.bzl."""

ModelWeightsInfo = provider(
    doc = """Exported weights of one model, identified by the build hash inside export_manifest.

Everything a consumer of the weights needs (a golden test, a release, golden_update), in any
package: the files, the model tools that export and gate them, and the model's library. The
model_weights target also returns the library's PyInfo and runfiles, so it can stand in `deps`
of a py_binary or test for the model's code and the export tooling, and OutputGroupInfo groups
`weights`, `onnx` and `export_manifest`, one file each.""",
    fields = {
        "model": "the model's name (models/<model>/spec.py)",
        "weights": "File: weights.safetensors",
        "onnx": "File: model.onnx",
        "export_manifest": "File: export.json (build hash, digests, inputs, metrics)",
        "golden": "depset of golden data files",
        "hparams": "dict of hyperparameter overrides",
        "tool": "FilesToRunProvider: the model tool (tools/bin/model_tool.py with the model's library), built for the exec configuration; the export and gate actions run it",
        "tool_runfiles": "runfiles of `tool` (run_python_tool passes them to the fork worker as plain inputs)",
        "gate_tool": "FilesToRunProvider: the release gate's main (tools/bin/gate_tool.py, //tools/modelgate:gate) with the model's library, which the gate action runs; not in the build hash",
        "gate_tool_runfiles": "runfiles of `gate_tool`",
        "library": "PyInfo: the model's library and the export tooling (what the tool imports)",
    },
)

ReleaseInfo = provider(
    doc = "A release bundle that passed the gate: manifest.json and the files it lists, in one directory.",
    fields = {
        "model": "the model's name",
        "manifest": "File: manifest.json",
        "files": "list of File in the bundle directory",
    },
)

CheckpointInfo = provider(
    doc = "A pinned checkpoint, fetched and verified.",
    fields = {
        "model": "the model's name",
        "checkpoint": "File: the checkpoint (safetensors), verified against the pin",
        "pin": "File: the pin file",
    },
)

ReceiptInfo = provider(
    doc = "The receipt a model test's pytest run wrote.",
    fields = {
        "label": "Label of the test target",
        "variant": "cpu or gpu",
        "receipt": "File: <name>.receipt.json",
        "log": "File: <name>.log",
        "outputs": "Tree artifact: <name>.outputs/, what the tests left for a person (a golden test's report); None where nothing ran",
    },
)

PipLockEntriesInfo = provider(
    doc = "Lock entries of the pip packages in a target's transitive deps (tools/private/pip_closure.bzl).",
    fields = {"entries": "depset of File: lock_entries/<name>.json of each @pip library reached"},
)
