#!/usr/bin/env bash
# CI: run only the tests that the change since BASE can affect.
#
#   tools/ci/test_affected.sh BASE [--gpu] [--targets-out=FILE] [-- EXTRA_BAZEL_FLAGS...]
#
# BASE is the revision to compare with (origin/main for a pull request; the previous commit on
# main). On a CPU runner it tests the affected tests that are not GPU-tagged; with --gpu (a GPU
# runner) only the GPU-tagged ones, with --config=gpu. //tools:affected fails open: when it cannot
# answer file by file (.bazelrc, WORKSPACE, a .bzl file, third_party/ changed; BASE missing, e.g.
# in a shallow clone) it lists every test and this script runs them all. --targets-out=FILE keeps
# the labels it tested (//... when //tools:affected did not run; empty when none), for the reports
# and the gates that follow (tools/ci/ci.py).
#
# Remote cache: with MODELGATE_REMOTE_CACHE=URL set, CI fills the team cache (it exports
# MODELGATE_REMOTE_CACHE_WRITE=1 unless already set), so developers' builds read CI's results.
set -uo pipefail
cd "$(dirname "$0")/../.."

usage() { echo "usage: tools/ci/test_affected.sh BASE [--gpu] [--targets-out=FILE] [-- EXTRA_BAZEL_FLAGS...]" >&2; exit 2; }
base=""
gpu=0
targets_out=""
extra=()
while (($#)); do
  case "$1" in
    --gpu) gpu=1 ;;
    --targets-out=*) targets_out="${1#--targets-out=}" ;;
    --) shift; extra=("$@"); break ;;
    -*) usage ;;
    *) [[ -z "$base" ]] && base="$1" || usage ;;
  esac
  shift
done
[[ -n "$base" ]] || usage

configs=(--config=ci)
tags=-gpu
if ((gpu)); then
  configs+=(--config=gpu)
  tags=gpu
  # bazel query (inside //tools:affected) reads no build flags: the environment keeps it on the
  # same (CUDA) pip repository as the tests, instead of re-fetching the CPU one.
  export MODELGATE_TORCH=cuda
fi
if [[ -n "${MODELGATE_REMOTE_CACHE:-}" ]]; then
  export MODELGATE_REMOTE_CACHE_WRITE="${MODELGATE_REMOTE_CACHE_WRITE:-1}"
fi

targets_file="$(mktemp)"
trap 'rm -f "$targets_file"' EXIT
if ! bazel run "${configs[@]}" //tools:affected -- --base="$base" --tags="$tags" >"$targets_file"; then
  echo "ci: //tools:affected did not run; testing everything" >&2
  echo "//..." >"$targets_file"
fi
mapfile -t targets <"$targets_file"
if [[ -n "$targets_out" ]]; then
  mkdir -p "$(dirname "$targets_out")"
  cp "$targets_file" "$targets_out"
fi

if ((${#targets[@]} == 0)); then
  echo "ci: no test is affected by the change since $base (tags $tags); nothing to run"
  exit 0
fi
echo "ci: testing ${#targets[@]} affected target(s) (tags $tags)"
bazel test "${configs[@]}" "${extra[@]}" -- "${targets[@]}"
