"""Implementation of model_library: a model's code. Use //tools:defs.bzl."""

load("@pip//:requirements.bzl", "requirement")
load("//tools/private:common.bzl", "SPEC_LIB")

def model_library(*, name, srcs, deps = [], data = [], visibility = None, **kwargs):
    """A model's code: a py_library with torch (and the given deps) attached.

    Args:
      name: target name, usually the model's name.
      srcs: the model's Python sources.
      deps: other libraries, e.g. requirement("numpy").
      data: files the model reads at run time.
      visibility: as for any target.
      **kwargs: passed to py_library.
    """
    if not srcs:
        fail("model_library(name = %r): srcs is empty; list the model's .py files" % name)
    native.py_library(
        name = name,
        srcs = srcs,
        deps = deps + [SPEC_LIB, requirement("torch")],
        data = data,
        visibility = visibility,
        **kwargs
    )
