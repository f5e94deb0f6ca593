#!/usr/bin/env bash
# End-to-end: two clones at different paths share test results through a team HTTP cache.
#
#   tests/e2e/remote_cache_e2e.sh
#
# Starts tools/dev/cache_server (nginx, loopback, a fresh directory), clones this repository's HEAD
# twice, and with the machine's disk cache switched off (--disk_cache=) so that only the HTTP
# cache can carry results:
#   1. clone A, as CI (MODELGATE_REMOTE_CACHE_WRITE=1): bazel test //models/...  -- cold, local
#   2. clone B, as a developer (read only): bazel test //models/...  -- every test (cached),
#      every process a remote cache hit, none executed, no weights downloaded; then
#      bazel build //models/minilm:weights downloads them, the same bytes as clone A's
#   3. clone B with the cache down: the build completes locally and says so, also for a test
#      that reads weights the cached run never downloaded
# Prints the wall times. About 5 minutes on a busy 2-core machine (two first fetches of the
# pinned packages side by side, then a cold test run that trains three small models). Cleans up its servers, clones and their output bases.
set -uo pipefail
source "$(dirname "$0")/lib.sh"

work="$(mktemp -d /tmp/modelgate-cache-e2e.XXXXXX)"
cleanup() {
  "$E2E_SRC/tools/dev/cache_server" stop --dir="$work/cache" >/dev/null 2>&1
  e2e_cleanup_clones
  rm -rf "$work"
}
trap cleanup EXIT
flags=(--disk_cache= --noshow_progress --color=no --curses=no)

echo "== cache: tools/dev/cache_server start --port=0 --dir=$work/cache"
url="$("$E2E_SRC/tools/dev/cache_server" start --port=0 --dir="$work/cache")" || exit 1
echo "   $url"

echo "== clones of $E2E_SRC (HEAD $(git -C "$E2E_SRC" rev-parse --short HEAD)): $work/a and $work/b"
e2e_clone "$work/a"
e2e_clone "$work/b"
start=$(now)
for ws in "$work/a" "$work/b"; do
  (cd "$ws" && timeout 300 bazel build "${flags[@]}" --nobuild //models/... >"$ws.fetch.log" 2>&1) &
done
wait
echo "   fetch and analysis, both clones side by side: $(since "$start")s (not counted below)"

echo "== 1. clone A as CI: cold, local, uploads"
start=$(now)
(cd "$work/a" && MODELGATE_REMOTE_CACHE="$url" MODELGATE_REMOTE_CACHE_WRITE=1 \
  timeout 400 bazel test "${flags[@]}" //models/... >"$work/a.log" 2>&1)
rc=$?
cold=$(since "$start")
tests=$(test_lines "$work/a.log" | wc -l)
echo "   bazel test //models/...: exit $rc, ${cold}s, $(processes "$work/a.log")"
test_lines "$work/a.log" | sed 's/^/   | /'
[[ $rc -eq 0 && $tests -gt 0 && $(count_tests "$work/a.log" 'PASSED') -eq $tests ]] && ok "$tests tests passed" || bad "clone A failed (see above)"
blobs=$(find "$work/cache/data" -type f | wc -l)
((blobs > 0)) && ok "the cache holds $blobs entries ($(du -sh "$work/cache/data" | cut -f1))" || bad "nothing was uploaded"
# Output trees through the clones' bazel-out links (no Bazel command, so no server starts again).
tree_mb() { du -sm "$1/bazel-out/" | cut -f1; }
a_mb=$(tree_mb "$work/a")

echo "== 2. clone B as a developer: read only, another path"
(cd "$work/a" && timeout 60 bazel shutdown >/dev/null 2>&1)
start=$(now)
(cd "$work/b" && MODELGATE_REMOTE_CACHE="$url" timeout 400 bazel test "${flags[@]}" //models/... >"$work/b.log" 2>&1)
rc=$?
warm=$(since "$start")
echo "   bazel test //models/...: exit $rc, ${warm}s, $(processes "$work/b.log")"
test_lines "$work/b.log" | sed 's/^/   | /'
cached=$(count_tests "$work/b.log" '\(cached\) PASSED')
[[ $rc -eq 0 && $cached -eq $tests ]] && ok "all $tests test results came from the cache" || bad "$cached of $tests cached"
hits=$(count_of "$work/b.log" 'remote cache hit')
[[ -z "$(local_runs "$work/b.log")" && $hits -gt 0 ]] && ok "$hits remote cache hits, nothing executed" ||
  bad "processes ran locally: $(local_runs "$work/b.log")"

# A developer's cached test run downloads nothing it does not read (.bazelrc:
# --remote_download_minimal); a later build that needs a file downloads it, byte for byte.
weights=bazel-bin/models/minilm/weights/weights.safetensors
echo "   clone B's output tree after it: $(tree_mb "$work/b") MB (clone A, which ran everything: ${a_mb} MB)"
[[ ! -e "$work/b/$weights" ]] && ok "the cached run downloaded no weights" || bad "$weights was downloaded by a run that does not read it"
start=$(now)
(cd "$work/b" && MODELGATE_REMOTE_CACHE="$url" timeout 300 bazel build "${flags[@]}" //models/minilm:weights >"$work/b-build.log" 2>&1)
rc=$?
echo "   bazel build //models/minilm:weights: exit $rc, $(since "$start")s, $(processes "$work/b-build.log")"
[[ $rc -eq 0 ]] && cmp -s "$work/a/$weights" "$work/b/$weights" && [[ -z "$(local_runs "$work/b-build.log")" ]] &&
  ok "a later build downloaded the weights from the cache, the same bytes as clone A's" ||
  bad "clone B's weights after bazel build: missing, different, or rebuilt ($(local_runs "$work/b-build.log"))"

echo "== 3. the cache is down: the build completes locally, and says so"
dead="http://127.0.0.1:$(dead_port)"
# A new test_env value changes the test's cache key, so it has to run again.
(cd "$work/b" && MODELGATE_REMOTE_CACHE="$dead" timeout 300 bazel test "${flags[@]}" --test_env=MODELGATE_E2E=down \
  //models/tiny_transformer:model_test_cpu >"$work/down.log" 2>&1)
rc=$?
grep -E '^modelgate: ' "$work/down.log" | sed 's/^/   /'
echo "   exit $rc, $(processes "$work/down.log")"
[[ $rc -eq 0 ]] && grep -q 'is unreachable; building without it, locally' "$work/down.log" && ok "MODELGATE_REMOTE_CACHE down: ran locally, said so" ||
  bad "MODELGATE_REMOTE_CACHE down"
# The same with the URL given as a flag (user.bazelrc): Bazel's own warning, and a local build.
(cd "$work/b" && timeout 300 bazel test "${flags[@]}" --config=remote-cache --remote_cache="$dead" \
  --test_env=MODELGATE_E2E=down-flag //models/tiny_transformer:model_test_cpu >"$work/down2.log" 2>&1)
rc=$?
grep -A1 -E '^WARNING: (Reading from|Writing to) Remote Cache' "$work/down2.log" | head -n 4 | sed 's/^/   /'
echo "   exit $rc, $(processes "$work/down2.log")"
[[ $rc -eq 0 && "$(local_runs "$work/down2.log")" == *"1 "* ]] && grep -q 'Remote Cache' "$work/down2.log" &&
  ok "--remote_cache down: ran locally, Bazel warned" || bad "--remote_cache down"

# After a cached run that downloaded nothing, with the cache gone: a test that reads the exported
# weights (which clone B never downloaded) runs, and Bazel exports them again locally.
(cd "$work/b" && timeout 300 bazel clean >/dev/null 2>&1 &&
  MODELGATE_REMOTE_CACHE="$url" timeout 300 bazel test "${flags[@]}" //models/... >"$work/b2.log" 2>&1 &&
  MODELGATE_REMOTE_CACHE="$dead" timeout 300 bazel test "${flags[@]}" --test_env=MODELGATE_E2E=down-weights \
    //models/tiny_transformer:golden_test_cpu >"$work/down3.log" 2>&1)
rc=$?
echo "   exit $rc, $(processes "$work/down3.log")"
[[ $rc -eq 0 ]] && grep -qE '^//models/tiny_transformer:golden_test_cpu +PASSED' "$work/down3.log" &&
  ok "cache down after a cached run: the golden test ran on weights exported again locally" || bad "golden test with the cache down"

echo
echo "wall times: cold local (clone A, uploading) ${cold}s; warm cache (clone B) ${warm}s"
e2e_finish remote_cache_e2e
