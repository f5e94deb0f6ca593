#!/usr/bin/env bash
# End-to-end: what a lock edit re-runs under remote execution.
#
#   tests/e2e/rbe_lock_edit_e2e.sh
#
# An action's inputs under --config=rbe are the lock entries of its own packages, and the executor
# finds each package's files by its entry's digest (third_party/python/repositories.bzl), so:
#   1. clone A: bazel test --config=rbe //models/... on a fresh worker (every action remote)
#   2. the lock edited in a package nothing under //models/... uses (tritonclient 2.69.0 -> 2.68.0,
#      the serving package's test client): the same command re-runs nothing (every test (cached), no remote
#      execution). (prometheus-client would re-run //models/minilm:text_release_test, which runs
#      the serving stack: it depends on it.)
#   3. the lock edited in numpy (2.4.6 -> 2.4.5), which every model uses: every model's actions
#      re-run remotely, and the tests pass
# Each edited lock is installed into this machine's pip store first (the repository rule; it is
# the reference worker's "image", tools/dev/rbe_server), timed apart. Needs the package index for
# the two edited packages (pip download). About 6 minutes on 2 cores.
set -uo pipefail
source "$(dirname "$0")/lib.sh"

work="$(mktemp -d /tmp/modelgate-rbe-lock-e2e.XXXXXX)"
cleanup() {
  "$E2E_SRC/tools/dev/rbe_server" stop --dir="$work/rbe" >/dev/null 2>&1
  e2e_cleanup_clones
  # The edited locks' stores (1.2 GB each) leave this machine's pip store with the run.
  local lock key
  for lock in "$work"/lock.*; do
    [[ -f "$lock" ]] || continue
    key=$("$python" -S "$E2E_SRC/third_party/python/store_key.py" "$lock" cpu 2) &&
      rm -rf "${MODELGATE_PIP_STORE:-$HOME/.cache/modelgate/pip-store}/$key"
  done
  rm -rf "$work"
}
trap cleanup EXIT
flags=(--noshow_progress --color=no --curses=no)
python=/usr/bin/python3.11

# Processes the worker executed ("N remote"), not its cache hits ("N remote cache hit").
executed() { processes "$1" | grep -oE '[0-9]+ remote([,.]|$)' | grep -oE '^[0-9]+' || echo 0; }
hits() { processes "$1" | grep -oE '[0-9]+ remote cache hit' | grep -oE '^[0-9]+' || echo 0; }

# Replaces NAME's entry in the lock by NAME==VERSION with the hash of the wheel pip downloads.
edit_lock() {
  local name="$1" version="$2" lock="$3" wheels="$work/wheels/$1"
  mkdir -p "$wheels"
  "$python" -m pip download --quiet --no-deps --only-binary=:all: -d "$wheels" "$name==$version" >/dev/null 2>&1 ||
    { bad "pip download $name==$version failed"; return 1; }
  local digest
  digest=$("$python" -m pip hash "$wheels"/*.whl | grep -oE 'sha256:[0-9a-f]{64}' | head -n 1)
  "$python" - "$lock" "$name" "$version" "$digest" <<'PY'
import re, sys
lock, name, version, digest = sys.argv[1:]
text = open(lock).read()
pattern = re.compile(rf"^{re.escape(name)}==\S+ \\\n(?:    --hash=sha256:[0-9a-f]{{64}}(?: \\)?\n)+", re.M)
new, n = pattern.subn(f"{name}=={version} \\\\\n    --hash={digest}\n", text)
assert n == 1, f"{name}: {n} entries"
open(lock, "w").write(new)
PY
  cp "$lock" "$work/lock.$name"
}

run_models() {  # LOG: bazel test --config=rbe //models/... in clone A, after fetching apart
  local log="$1"
  start=$(now)
  (cd "$work/a" && timeout 900 bazel build "${flags[@]}" --config=rbe --nobuild //models/... >"$log.fetch" 2>&1)
  fetched=$(since "$start")
  start=$(now)
  (cd "$work/a" && MODELGATE_REMOTE_EXECUTOR="$url" timeout 600 bazel test "${flags[@]}" --config=rbe //models/... >"$log" 2>&1)
  rc=$?
  took=$(since "$start")
  echo "   lock installed and analysed in ${fetched}s; tests: exit $rc, ${took}s, $(processes "$log")"
  test_lines "$log" | sed 's/^/   | /'
}

echo "== executor: tools/dev/rbe_server start --port=0 --dir=$work/rbe"
url="$("$E2E_SRC/tools/dev/rbe_server" start --port=0 --dir="$work/rbe")" || exit 1
e2e_clone "$work/a"
export MODELGATE_REMOTE_EXECUTOR="$url"

echo "== 1. clone A, the lock as committed: bazel test --config=rbe //models/..."
run_models "$work/cold.log"
tests=$(test_lines "$work/cold.log" | wc -l)
cold_remote=$(executed "$work/cold.log")
[[ $rc -eq 0 && $tests -gt 0 && $(count_tests "$work/cold.log" PASSED) -eq $tests ]] && ok "$tests tests passed, $cold_remote actions executed remotely" ||
  bad "clone A failed"

echo "== 2. the lock edited in a package nothing under //models/... uses: tritonclient 2.69.0 -> 2.68.0"
edit_lock tritonclient 2.68.0 "$work/a/third_party/requirements_lock.txt" || exit 1
git -C "$work/a" diff --stat | sed 's/^/   /'
run_models "$work/unused.log"
[[ $rc -eq 0 && $(count_tests "$work/unused.log" '\(cached\) PASSED') -eq $tests && $(executed "$work/unused.log") -eq 0 ]] &&
  ok "nothing re-ran: $tests tests (cached), 0 remote executions, $(hits "$work/unused.log") remote cache hits" ||
  bad "an edit of a package no model uses re-ran $(executed "$work/unused.log") actions"

echo "== 3. the lock edited in numpy: 2.4.6 -> 2.4.5"
edit_lock numpy 2.4.5 "$work/a/third_party/requirements_lock.txt" || exit 1
run_models "$work/numpy.log"
numpy_remote=$(executed "$work/numpy.log")
[[ $rc -eq 0 && $(count_tests "$work/numpy.log" '\(cached\)') -eq 0 && $(count_tests "$work/numpy.log" PASSED) -eq $tests ]] &&
  ok "every test re-ran and passed: $numpy_remote actions executed remotely (cold: $cold_remote)" ||
  bad "numpy edit: $(count_tests "$work/numpy.log" '\(cached\)') tests cached, exit $rc"
[[ $numpy_remote -gt 0 ]] || bad "no action re-ran after a numpy edit"

e2e_finish rbe_lock_edit_e2e
