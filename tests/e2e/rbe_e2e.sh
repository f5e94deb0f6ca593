#!/usr/bin/env bash
# End-to-end: remote execution on Bazel's reference worker (REAPI), then a second clone reads the
# results from the worker's action cache.
#
#   tests/e2e/rbe_e2e.sh
#
# Starts tools/dev/rbe_server (compiled from Debian's bazel-bootstrap-source; loopback, a fresh
# directory), clones this repository's HEAD twice and:
#   1. clone A: bazel test --config=rbe //models/...  -- every action executed by the worker
#      (Bazel's summary: N remote), on this machine only the checkpoint fetch (1 local)
#   2. clone B, another path, without --config=rbe: --config=remote-cache against the worker --
#      every test (cached), every process a remote cache hit (local and remote actions have the same
#      keys: the same inputs, lock entries, and the same execution platform, the executor image)
#   3. the executor down: a clear message, a failed build (no silent local fallback)
# Prints the wall times. The actions' inputs are their lock entries; the packages' files come from
# the executor's store (/opt/modelgate/pip-store, here a link to this
# machine's pip store; tools/dev/rbe_server makes it).
set -uo pipefail
source "$(dirname "$0")/lib.sh"

work="$(mktemp -d /tmp/modelgate-rbe-e2e.XXXXXX)"
cleanup() {
  "$E2E_SRC/tools/dev/rbe_server" stop --dir="$work/rbe" >/dev/null 2>&1
  e2e_cleanup_clones
  rm -rf "$work"
}
trap cleanup EXIT
flags=(--noshow_progress --color=no --curses=no)

echo "== executor: tools/dev/rbe_server start --port=0 --dir=$work/rbe"
start=$(now)
url="$("$E2E_SRC/tools/dev/rbe_server" start --port=0 --dir="$work/rbe")" || exit 1
echo "   $url (compiled and started in $(since "$start")s)"

echo "== clones of $E2E_SRC (HEAD $(git -C "$E2E_SRC" rev-parse --short HEAD)): $work/a and $work/b"
e2e_clone "$work/a"
e2e_clone "$work/b"
start=$(now)
for ws in "$work/a" "$work/b"; do
  (cd "$ws" && timeout 300 bazel build "${flags[@]}" --disk_cache= --nobuild //models/... >"$ws.fetch.log" 2>&1) &
done
wait
echo "   fetch and analysis, both clones side by side: $(since "$start")s (not counted below)"

echo "== 1. clone A: bazel test --config=rbe //models/... (MODELGATE_REMOTE_EXECUTOR=$url)"
start=$(now)
(cd "$work/a" && MODELGATE_REMOTE_EXECUTOR="$url" timeout 500 bazel test "${flags[@]}" --config=rbe //models/... >"$work/a.log" 2>&1)
rc=$?
cold=$(since "$start")
tests=$(test_lines "$work/a.log" | wc -l)
echo "   exit $rc, ${cold}s, $(processes "$work/a.log")"
test_lines "$work/a.log" | sed 's/^/   | /'
[[ $rc -eq 0 && $tests -gt 0 && $(count_tests "$work/a.log" 'PASSED') -eq $tests ]] && ok "$tests tests passed" ||
  { bad "clone A failed"; grep -E '^(ERROR|WARNING)' "$work/a.log" | head -n 5; }
remote=$(count_of "$work/a.log" 'remote')
# The one process here is the checkpoint fetch (no-remote-exec: it fills this machine's store).
[[ $remote -gt 0 && "$(local_runs "$work/a.log")" == "1 local" ]] && ok "$remote processes executed by the worker; here only the checkpoint fetch" ||
  bad "processes ran here: $(local_runs "$work/a.log")"
echo "   the worker's CAS now holds $(du -sh "$work/rbe/cas" | cut -f1) (it grows without bound)"

echo "== 2. clone B, another path: the worker's cache, read only"
(cd "$work/a" && timeout 60 bazel shutdown >/dev/null 2>&1)
start=$(now)
(cd "$work/b" && timeout 300 bazel test "${flags[@]}" --disk_cache= --config=remote-cache --remote_cache="$url" //models/... >"$work/b.log" 2>&1)
rc=$?
warm=$(since "$start")
echo "   exit $rc, ${warm}s, $(processes "$work/b.log")"
test_lines "$work/b.log" | sed 's/^/   | /'
cached=$(count_tests "$work/b.log" '\(cached\) PASSED')
[[ $rc -eq 0 && $cached -eq $tests ]] && ok "all $tests test results were remote cache hits" || bad "$cached of $tests cached"
[[ -z "$(local_runs "$work/b.log")" ]] && ok "nothing executed" || bad "processes ran here: $(local_runs "$work/b.log")"

echo "== 3. the executor is down"
dead="grpc://127.0.0.1:$(dead_port)"
start=$(now)
(cd "$work/b" && MODELGATE_REMOTE_EXECUTOR="$dead" timeout 120 bazel test "${flags[@]}" --config=rbe //models/tiny_transformer:model_test_cpu >"$work/down.log" 2>&1)
rc=$?
grep -E '^(modelgate|ERROR): ' "$work/down.log" | head -n 2 | sed 's/^/   /'
echo "   exit $rc after $(since "$start")s"
[[ $rc -ne 0 ]] && grep -q 'Failed to query remote execution capabilities' "$work/down.log" &&
  grep -q 'is unreachable; start it' "$work/down.log" && ok "a clear message, no silent local run" || bad "executor down"

echo
echo "wall times: cold remote execution (clone A) ${cold}s; warm cache (clone B) ${warm}s"
e2e_finish rbe_e2e
