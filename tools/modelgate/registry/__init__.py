"""The model registry: content-addressed builds, signed manifests, tags moved by compare-and-swap.

Layers, each using only the one below it:
    modelgate.cli.{promote,fetch,registry}   argument parsing and printing
    modelgate.registry.api                   what the commands do
    modelgate.registry.registry              the layout, the history log, tag pointers
    modelgate.registry.storage               local directory or Google Cloud Storage
"""
