"""The model registry: content-addressed builds, signed manifests, tags moved by compare-and-swap.

Layers, each importing only from the ones below it (never up):
    modelgate.cli.{promote,fetch,registry}   argument parsing and printing (and the workspace's git commit)
    modelgate.registry.api                   what the commands do, re-exported from one module per verb:
                                             promote, rollback (sharing moves), fetch, inspect (ls/show/history);
                                             they read release bundles (bundle), check metric gates (gates), sign
                                             manifests (signing)
    modelgate.registry.registry              the layout, the history log, tag pointers; the one place a tag
                                             moves (Registry.move_tag); checks what it reads (records, tags)
    modelgate.registry.storage               where bytes live: one module per backend (local directory, Google
                                             Cloud Storage) and the one scheme table of registry URIs and
                                             checkpoint sources
Beside them, used by any layer above: modelgate.errors, modelgate.formats (names, schemas,
canonical JSON, the file hasher), modelgate.manifest (the release manifest's one check, which
bundle reads and records apply) and modelgate.digests (sha256 addresses, blake3 verifies).
"""
