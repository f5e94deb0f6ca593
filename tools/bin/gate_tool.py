"""The release gate's main, built per model with the model's library (tools/private/model_weights.bzl,
the `_<name>_gate_tool` binary that model_release's ReleaseGate action runs): modelgate.gate.main.
Its own file so that the gate is in no build hash: tools/bin/model_tool.py, which runs the export,
is in every one."""

import sys

from modelgate.gate import main

if __name__ == "__main__":
    sys.exit(main())
