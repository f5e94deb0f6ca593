#!/usr/bin/env bash
# End-to-end: one build promoted from two CI runners that share a registry and nothing else.
#
#   tests/e2e/two_runner_promote_e2e.sh
#
# Two clones of this repository's HEAD, one file:// registry, one signing key:
#   1. runner A: bazel run //tools:promote -- --tag=canary (the machine's caches)
#   2. runner B, no shared cache (--bazel-flag=--disk_cache=: every export, gate and test runs
#      again): --tag=stable -- accepted, the same builds, the same releases (receipts record what
#      the tests found, not how long they took)
#   3. runner B after a test-only edit (a test added to tiny_transformer): --tag=beta -- accepted,
#      the same build hashes, and tiny_transformer's build gets a second release (another
#      receipt set, a new signed record under the build), the others none
# About 5 minutes on 2 cores.
set -uo pipefail
source "$(dirname "$0")/lib.sh"

work="$(mktemp -d /tmp/modelgate-two-runners.XXXXXX)"
cleanup() {
  e2e_cleanup_clones
  rm -rf "$work"
}
trap cleanup EXIT
flags=(--noshow_progress --color=no --curses=no)
registry="file://$work/registry"
key="$work/signer.pem"
openssl ecparam -name prime256v1 -genkey -noout 2>/dev/null | openssl pkcs8 -topk8 -nocrypt -out "$key"

promote() {  # WORKSPACE TAG LOG [FLAGS...]
  local ws="$1" tag="$2" log="$3"
  shift 3
  start=$(now)
  (cd "$ws" && MODELGATE_SIGNING_KEY="$key" timeout 1200 bazel run "${flags[@]}" //tools:promote -- \
    --tag="$tag" --registry="$registry" --json "$@" >"$log" 2>"$log.err")
  rc=$?
  echo "   exit $rc in $(since "$start")s"
  [[ $rc -eq 0 ]] || tail -n 3 "$log.err" | sed 's/^/   | /'
}

summary() {  # TAG: model, build hash and release the tag names in the registry, one line each
  /usr/bin/python3.11 -c '
import json, pathlib, sys
root, tag = pathlib.Path(sys.argv[1]), sys.argv[2]
for pointer in sorted(root.glob(f"models/*/tags/{tag}.json")):
    doc = json.loads(pointer.read_text())
    print(pointer.parts[-3], doc["build_hash"][:12], (doc.get("release") or "-")[:12])
' "$work/registry" "$1"
}

releases() {  # MODEL: how many release records its builds have beyond their first
  find "$work/registry/models/$1/releases" -name '*.json' 2>/dev/null | wc -l
}

e2e_clone "$work/a"
e2e_clone "$work/b"

echo "== 1. runner A: promote --tag=canary"
promote "$work/a" canary "$work/a.json"
[[ $rc -eq 0 ]] && ok "canary promoted" || bad "runner A failed"
summary canary | sed 's/^/   | /'

echo "== 2. runner B, no shared cache (--bazel-flag=--disk_cache=): promote --tag=stable"
promote "$work/b" stable "$work/b.json" --bazel-flag=--disk_cache=
[[ $rc -eq 0 ]] && ok "stable promoted from a second runner" || bad "runner B refused: $(grep -m1 -E 'promote|already holds' "$work/b.json.err")"
summary stable | sed 's/^/   | /'
[[ -n "$(summary stable)" && "$(summary canary)" == "$(summary stable)" ]] &&
  ok "the same builds and the same releases" || bad "builds or releases differ"

echo "== 3. runner B after a test-only edit: promote --tag=beta"
cat >>"$work/b/models/tiny_transformer/model_test.py" <<'PY'


def test_added_by_the_two_runner_e2e():
    assert True
PY
before=$(releases tiny_transformer)
promote "$work/b" beta "$work/b2.json" --bazel-flag=--disk_cache=
[[ $rc -eq 0 ]] && ok "beta promoted after a test-only edit" || bad "refused after a test-only edit"
summary beta | sed 's/^/   | /'
[[ -n "$(summary beta)" && "$(summary canary | cut -d' ' -f1,2)" == "$(summary beta | cut -d' ' -f1,2)" ]] &&
  ok "the same build hashes (a test is not an input of the weights)" || bad "a build hash moved"
after=$(releases tiny_transformer)
[[ $after -eq $((before + 1)) ]] && ok "tiny_transformer's build has a second release (another receipt set): $after record(s) under releases/" ||
  bad "releases of tiny_transformer: $before before, $after after"
others=0
for m in image_cnn minilm sequence_rnn; do others=$((others + $(releases $m))); done
[[ $others -eq 0 ]] && ok "the other models: no new release" || bad "$others release records for untouched models"

e2e_finish two_runner_promote_e2e
