#!/usr/bin/env bash
# CI for the release event: tools/ci/release.sh JOB [--plan]. The commands are data in
# tools/ci/ci.py; --plan prints them (the golden file, tools/ci/golden_commands.txt, holds them all).
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ $# -ge 1 ]] || { echo "usage: tools/ci/release.sh JOB [--plan]" >&2; exit 2; }
job="$1"
mode=run
[[ "${2:-}" == --plan ]] && mode=plan
exec python3 tools/ci/ci.py "$mode" release "$job"
