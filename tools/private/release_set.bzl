"""Implementation of release_set: the releases promote promotes, and an index of them. Use //tools:defs.bzl."""

load("//tools/private:providers.bzl", "ReleaseInfo")

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
