"""The models of this repository: the one list a new model is added to.

Each name is a package models/<name>/ (a model_package) with its golden data in golden/<name>/.
models/BUILD.bazel makes every model's library and release from it, golden/BUILD.bazel every
model's golden filegroup.
"""

MODELS = [
    "image_cnn",
    "minilm",
    "sequence_rnn",
    "tiny_transformer",
]
