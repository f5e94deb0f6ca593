"""Public macros for model packages: libraries and tests.

    load("//tools:defs.bzl", "model_library", "model_test")

Each is a thin, keyword-only macro; what they expand to lives in //tools/private.
"""

load("//tools/private:model_test.bzl", _model_library = "model_library", _model_test = "model_test", _model_test_suites = "model_test_suites")

model_library = _model_library
model_test = _model_test
model_test_suites = _model_test_suites
