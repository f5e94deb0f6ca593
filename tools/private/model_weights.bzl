"""Implementation of model_weights: the export as a hermetic build action. Use //tools:defs.bzl."""

load("//tools/private:common.bzl", "EXPORT_ENV", "EXPORT_LIB", "FORK_WORKER", "GATE_LIB", "GATE_TOOL_MAIN", "INTERPRETER", "MODEL_TOOL_MAIN", "model_name", "python_tool_args", "run_python_tool")
load("//tools/private:model_tool.bzl", "model_tool")
load("//tools/private:pip_closure.bzl", "pip_lock_entries_aspect")
load("//tools/private:providers.bzl", "CheckpointInfo", "ModelWeightsInfo", "PipLockEntriesInfo")

def _relative(f):
    # short_path is workspace-relative ("models/x/model.py", "../python_interpreter/bin/python3").
    return f.short_path

def _library(deps):
    """The PyInfo and runfiles of `deps` together: what the model tool imports."""
    infos = [dep[PyInfo] for dep in deps]
    py_info = PyInfo(
        transitive_sources = depset(transitive = [i.transitive_sources for i in infos]),
        imports = depset(transitive = [i.imports for i in infos]),
        uses_shared_libraries = any([i.uses_shared_libraries for i in infos]),
        has_py2_only_sources = any([i.has_py2_only_sources for i in infos]),
        has_py3_only_sources = any([i.has_py3_only_sources for i in infos]),
    )
    runfiles = None
    for dep in deps:
        r = dep[DefaultInfo].default_runfiles
        runfiles = r if runfiles == None else runfiles.merge(r)
    return py_info, runfiles

def _model_weights_impl(ctx):
    # Every file of this repository the model's libraries bring, sources and `data` alike: a file
    # the model reads (a vocabulary, a table of sentences) is as much an input of its weights as its
    # code. Files of external packages count through their lock entries (below).
    sources = depset(transitive = [dep[PyInfo].transitive_sources for dep in ctx.attr.deps] +
                                  [dep[DefaultInfo].default_runfiles.files for dep in ctx.attr.deps])
    hashed = [f for f in sources.to_list() if f.owner.workspace_name == ""]
    hashed += ctx.files.golden + [ctx.file.interpreter, ctx.file.tool_src]
    lock_entries = depset(transitive = [dep[PipLockEntriesInfo].entries for dep in ctx.attr.deps]).to_list()
    outputs = [ctx.outputs.weights, ctx.outputs.onnx, ctx.outputs.export_manifest]

    tool = ctx.attr.tool[DefaultInfo].files_to_run
    tool_runfiles = ctx.attr.tool[DefaultInfo].default_runfiles
    args = python_tool_args(ctx, tool, tool_runfiles)
    args.add("export")
    args.add("--model", ctx.attr.model)
    args.add("--out-dir", ctx.outputs.weights.dirname)
    args.add("--hparams", json.encode(ctx.attr.hparams))
    for f in sorted(hashed, key = _relative):
        args.add("--input", "%s=%s" % (_relative(f), f.path))
    for f in sorted(lock_entries, key = _relative):
        args.add("--lock-entry", f.path)
    checkpoint = []
    if ctx.attr.checkpoint:
        # Weights from outside the build: the export loads them instead of training; the pin's
        # digest goes into the build hash (modelgate.export.run_export).
        info = ctx.attr.checkpoint[CheckpointInfo]
        args.add("--checkpoint", info.checkpoint)
        args.add("--checkpoint-pin", "%s=%s" % (info.pin.path, info.pin.short_path))
        checkpoint = [info.checkpoint, info.pin]

    run_python_tool(
        ctx,
        worker = ctx.attr._fork_worker[DefaultInfo].files_to_run,
        tool = tool,
        tool_runfiles = tool_runfiles,
        args = args,
        inputs = hashed + lock_entries + checkpoint,
        outputs = outputs,
        env = EXPORT_ENV,
        mnemonic = "ModelExport",
        progress_message = "Exporting %s (%s, safetensors, ONNX, build hash)" % (ctx.attr.model, "pinned checkpoint" if checkpoint else "train"),
    )
    py_info, runfiles = _library(ctx.attr.deps)
    return [
        # The outputs are the target's files. In `deps` it is the library (PyInfo, the library's
        # runfiles): the model's code, not the weights; in `data`, the exported files.
        DefaultInfo(
            files = depset(outputs),
            default_runfiles = runfiles,
            data_runfiles = ctx.runfiles(files = outputs),
        ),
        py_info,
        ModelWeightsInfo(
            model = ctx.attr.model,
            weights = ctx.outputs.weights,
            onnx = ctx.outputs.onnx,
            export_manifest = ctx.outputs.export_manifest,
            golden = depset(ctx.files.golden),
            hparams = ctx.attr.hparams,
            tool = ctx.attr.tool[DefaultInfo].files_to_run,
            tool_runfiles = ctx.attr.tool[DefaultInfo].default_runfiles,
            gate_tool = ctx.attr.gate_tool[DefaultInfo].files_to_run,
            gate_tool_runfiles = ctx.attr.gate_tool[DefaultInfo].default_runfiles,
            library = py_info,
        ),
        OutputGroupInfo(
            weights = depset([ctx.outputs.weights]),
            onnx = depset([ctx.outputs.onnx]),
            export_manifest = depset([ctx.outputs.export_manifest]),
        ),
    ]

_model_weights = rule(
    implementation = _model_weights_impl,
    attrs = {
        "checkpoint": attr.label(providers = [CheckpointInfo], doc = "a pinned_checkpoint to export instead of training"),
        "deps": attr.label_list(
            providers = [PyInfo],
            aspects = [pip_lock_entries_aspect],
            doc = "libraries whose sources, and the lock entries of whose pip packages, go into the build hash",
        ),
        "golden": attr.label_list(allow_files = True),
        "hparams": attr.string_dict(),
        "interpreter": attr.label(default = INTERPRETER, allow_single_file = True),
        "model": attr.string(mandatory = True),
        "gate_tool": attr.label(mandatory = True, executable = True, cfg = "exec", doc = "the model tool with the gate, for model_release: not an input of the export"),
        "tool": attr.label(mandatory = True, executable = True, cfg = "exec"),
        "tool_src": attr.label(default = MODEL_TOOL_MAIN, allow_single_file = True),
        "_fork_worker": attr.label(default = FORK_WORKER, executable = True, cfg = "exec"),
    },
    outputs = {
        "export_manifest": "%{name}/export.json",
        "onnx": "%{name}/model.onnx",
        "weights": "%{name}/weights.safetensors",
    },
    provides = [ModelWeightsInfo, PyInfo],
)

def model_weights(*, name, deps, model = None, golden = None, hparams = {}, checkpoint = None, visibility = None, tags = []):
    """Exports a model's weights as a hermetic build action.

    Trains (or initializes) the model deterministically from models/<model>/spec.py, or loads the
    pinned `checkpoint` (training nothing), and writes
    `<name>/weights.safetensors`, `<name>/model.onnx` and `<name>/export.json`. The build hash in
    export.json covers every declared input: the model's sources (deps), golden data, the lock
    entries (name, version, hashes) of the pip packages in the deps' closure, the toolchain and
    `hparams`.

    The target returns ModelWeightsInfo (the files, the model tool, the library), so golden_test,
    model_release, golden_update and model_train take it by label from any package.

    Args:
      name: target name, conventionally "weights".
      deps: the model's library (model_library), whose sources are hashed and imported.
      model: the model's name; defaults to the package's last path component.
      golden: golden data files; defaults to //golden:<model> (golden/<model>/).
      hparams: hyperparameter overrides (strings), applied over the spec's config; part of the hash.
      checkpoint: a pinned_checkpoint target: export its tensors instead of training; its sha256
        and size go into the build hash.
      visibility: as for any target.
      tags: as for any target.
    """
    model = model_name(model)
    if golden == None:
        golden = ["//golden:%s" % model]
    deps = deps + [EXPORT_LIB]
    tool = "_%s_tool" % name
    model_tool(name = tool, deps = deps, visibility = ["//visibility:private"], tags = tags)
    # The gate runs the same main with the release gate beside the model's code. A tool of its own,
    # so that the gate's code is neither in the build hash nor an input of the export action:
    # editing a gate check re-runs every gate and no export.
    gate_tool = "_%s_gate_tool" % name
    model_tool(name = gate_tool, deps = deps + [GATE_LIB], visibility = ["//visibility:private"], tags = tags, main = GATE_TOOL_MAIN)
    _model_weights(
        name = name,
        model = model,
        deps = deps,
        golden = golden,
        hparams = hparams,
        checkpoint = checkpoint,
        tool = ":" + tool,
        gate_tool = ":" + gate_tool,
        visibility = visibility,
        tags = tags,
    )
