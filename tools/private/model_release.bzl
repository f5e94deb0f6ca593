"""Implementation of model_release: the gate, the release manifest and the promotable bundle. Use
//tools:defs.bzl.

Three actions per release: ReleaseGate (the gate's verdict, `<name>.gate.json`), ReleaseManifest
(`<name>/manifest.json`, written once by modelgate.manifest from the export's record, the verdict
and the test receipts) and ReleaseReport (the review page)."""

load("//tools/private:common.bzl", "EXPORT_ENV", "FORK_WORKER", "GATE_LIB", "MANIFEST_TOOL", "RELEASE_REPORT_MAIN", "REPORT_LIB", "python_tool_args", "run_python_tool")
load("//tools/private:providers.bzl", "ModelWeightsInfo", "ReceiptInfo", "ReleaseInfo")

def _write_manifest(ctx, *, info, gate_verdict, bundle, bundle_sources):
    """Declares the ReleaseManifest action: the bundle's manifest.json, written once
    (modelgate.manifest) from the export's record, the gate's verdict and the test receipts, which
    it binds to the build and writes into the bundle. Each file's sha256 comes from the export's
    record (the blake3 is computed here, once); `bundle_sources`: the files the bundle ships, by
    their names there, but the receipts.

    Returns (manifest File, [receipt Files in the bundle]). The action fails, naming the model, the
    receipt and the failing tests, unless every receipt that ran passed and is bound to the build
    (tools/private/receipts.bzl says what a receipt binds to).
    """
    manifest = ctx.actions.declare_file(bundle + "/manifest.json")
    infos = [t[ReceiptInfo] for t in ctx.attr.tests]
    bundled = [ctx.actions.declare_file("%s/receipt.%s.json" % (bundle, i.label.split(":")[-1])) for i in infos]
    args = ctx.actions.args()
    args.add("--model", info.model)
    args.add("--export", info.export_manifest)
    args.add("--gate", gate_verdict)
    args.add("--out", manifest)
    for i in infos:
        args.add("--receipt", i.receipt)
    for f in bundle_sources:
        # NAME=WORKSPACE_PATH=PATH: the workspace path is how the export's record names an input.
        args.add("--file", "%s=%s=%s" % (f.basename, f.short_path, f.path))
    ctx.actions.run(
        executable = ctx.executable._manifest_tool,
        arguments = [args],
        inputs = [info.export_manifest, gate_verdict] + [i.receipt for i in infos] + bundle_sources,
        outputs = [manifest] + bundled,
        mnemonic = "ReleaseManifest",
        progress_message = "Writing %s's release manifest (test receipts bound to its build)" % info.model,
    )
    return manifest, bundled

def _review_page(ctx, info, bundle, manifest, golden_dir, golden):
    """Declares the ReleaseReport action: the release's review page, `<bundle>/report.html`, once
    the gate passed and the receipts are bound (a failing gate writes its own page, outside the
    sandbox: modelgate.gate). Its own action, so that the gate's verdict never waits for a picture
    and a template change re-draws pages without re-running a gate."""
    page = ctx.actions.declare_file(bundle + "/report.html")
    tool = ctx.attr.report_tool[DefaultInfo].files_to_run
    tool_runfiles = ctx.attr.report_tool[DefaultInfo].default_runfiles
    args = python_tool_args(ctx, tool, tool_runfiles)
    args.add("--model", info.model)
    args.add("--export-dir", info.weights.dirname)
    args.add("--golden-dir", golden_dir)
    args.add("--manifest", manifest)
    args.add("--hparams", json.encode(info.hparams))
    args.add("--out", page)
    run_python_tool(
        ctx,
        worker = ctx.attr._fork_worker[DefaultInfo].files_to_run,
        tool = tool,
        tool_runfiles = tool_runfiles,
        args = args,
        inputs = [info.weights, info.onnx, manifest] + golden,
        outputs = [page],
        env = EXPORT_ENV,
        mnemonic = "ReleaseReport",
        progress_message = "Drawing %s's release review page" % info.model,
    )
    return page

def _model_release_impl(ctx):
    info = ctx.attr.weights[ModelWeightsInfo]
    bundle = ctx.attr.name
    # The gate's verdict (modelgate.manifest.GATE_SCHEMA); the bundle's manifest.json is written
    # by a second action (_write_manifest), so that a test-only change re-runs the receipt check,
    # not the gate.
    gated = ctx.actions.declare_file(bundle + ".gate.json")
    golden = info.golden.to_list()
    golden_dir = golden[0].dirname if golden else "golden/" + info.model

    args = python_tool_args(ctx, info.gate_tool, info.gate_tool_runfiles)
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
    run_python_tool(
        ctx,
        worker = ctx.attr._fork_worker[DefaultInfo].files_to_run,
        # The gate's main with the model's library (ModelWeightsInfo.gate_tool).
        tool = info.gate_tool,
        tool_runfiles = info.gate_tool_runfiles,
        args = args,
        inputs = [info.weights, info.onnx, info.export_manifest] + golden + extra,
        outputs = [gated],
        env = EXPORT_ENV,
        mnemonic = "ReleaseGate",
        progress_message = "Gating %s release (golden, ONNX parity, metrics)" % info.model,
    )
    manifest, receipts = _write_manifest(
        ctx,
        info = info,
        gate_verdict = gated,
        bundle = bundle,
        bundle_sources = [info.weights, info.onnx] + golden + extra,
    )
    files = [manifest] + receipts + [_review_page(ctx, info, bundle, manifest, golden_dir, golden)]

    # The bundle carries its golden data, so that a deployment can check the model it loaded
    # against the same expectations the gate used, under the names golden/<model>/ gives them.
    for src in [info.weights, info.onnx] + golden + extra:
        link = ctx.actions.declare_file(bundle + "/" + src.basename)
        ctx.actions.symlink(output = link, target_file = src)
        files.append(link)
    return [
        DefaultInfo(files = depset(files), runfiles = ctx.runfiles(files = files)),
        ReleaseInfo(model = info.model, manifest = manifest, files = files),
        OutputGroupInfo(manifest = depset([manifest])),
    ]

_model_release = rule(
    implementation = _model_release_impl,
    attrs = {
        "bundle_files": attr.label_list(allow_files = True, doc = "files the bundle ships under their own names (a tokenizer)"),
        "tests": attr.label_list(providers = [ReceiptInfo], doc = "receipt runs (model_test variants) the release needs"),
        "weights": attr.label(mandatory = True, providers = [ModelWeightsInfo]),
        "_fork_worker": attr.label(default = FORK_WORKER, executable = True, cfg = "exec"),
        "_manifest_tool": attr.label(default = MANIFEST_TOOL, executable = True, cfg = "exec"),
        "report_tool": attr.label(mandatory = True, executable = True, cfg = "exec", doc = "the model's review page tool (model_release declares it)"),
    },
    provides = [ReleaseInfo],
)

def _receipts_of_package():
    """The receipt runs of the model_test variants declared so far in this package, but a
    disabled variant's (model_release's default `tests`)."""
    return [
        ":" + name
        for name, rule in sorted(native.existing_rules().items())
        if rule["kind"] == "receipt_run" and not rule.get("disabled", False)
    ]

def model_release(*, name, weights, visibility = None, tags = [], tests = None, bundle_files = []):
    """The promotable bundle: `<name>/{manifest.json, weights.safetensors, model.onnx, receipt.*.json}`
    and its review page `<name>/report.html` (not in the manifest: a picture of the release, not part of it).

    Builds only if the exported files pass the gate: golden data reproduced from the saved
    safetensors, ONNX (onnxruntime) matching torch on the golden inputs, and every metric above
    its floor; and only if every test receipt that ran says passed and was made against this
    build's files (a GPU variant that did not run is listed as such). A failing check fails the
    build with the check's name and numbers; a failing receipt, with the failing tests.

    Args:
      name: target name, conventionally "release".
      weights: the model_weights target (any package's: the gate runs the model tool it carries).
      visibility: defaults to public: //models:releases and deploy tooling consume it.
      tags: as for any target.
      tests: the model_test variants (":model_test_cpu", ...) whose receipts the release needs;
        by default every one declared before it in the package.
      bundle_files: files the bundle ships under their own names, listed in its manifest (digests,
        signature) and checked by the gate: a tokenizer (ModelSpec.text).
    """
    if tests == None:
        tests = _receipts_of_package()

    # A model_test variant `<v>` is reported by the test `<v>` and recorded by the receipt run
    # `<v>_receipt` (model_test declares both): a test is testonly, a release cannot depend on it.
    tests = [t if t.endswith("_receipt") else t + "_receipt" for t in tests]
    if not tests:
        fail("model_release(name = %r): no model_test before it in this package; a release needs its tests' receipts" % name)
    # The review page's tool: the model's code (the weights target's library), the gate's ONNX check
    # and the report. Not an input of any build hash (model_weights hashes its own deps only).
    report_tool = "_%s_report_tool" % name
    native.py_binary(
        name = report_tool,
        srcs = [RELEASE_REPORT_MAIN],
        main = RELEASE_REPORT_MAIN,
        deps = [weights, GATE_LIB, REPORT_LIB],
        python_version = "PY3",
        visibility = ["//visibility:private"],
        tags = tags,
    )
    _model_release(
        name = name,
        weights = weights,
        report_tool = ":" + report_tool,
        tests = tests,
        bundle_files = bundle_files,
        visibility = visibility or ["//visibility:public"],
        tags = tags,
    )
