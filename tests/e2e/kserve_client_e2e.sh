#!/usr/bin/env bash
# The serving package answers the kserve SDK's Open Inference Protocol client, for every model.
#
#   tests/e2e/kserve_client_e2e.sh
#
# In this workspace: promotes every model to the workspace registry (README command 1), builds
# the serving package (bazel run //tools:serve_package), starts it per model with a bare
# environment (no Bazel, no checkout on its path), and runs tests/e2e/kserve_client.py in a venv
# with PyPI's kserve 0.21.0 (~/.cache/modelgate/e2e/kserve-venv, made once). tritonclient is
# checked inside the suite (//tests/serve:package_test); kserve cannot be: see kserve_client.py.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$E2E_SRC" || exit 1
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
venv=~/.cache/modelgate/e2e/kserve-venv

echo "== kserve client against the serving package, every model"
start=$(now)
if [[ ! -x "$venv/bin/python" ]]; then
  /usr/bin/python3.11 -m venv "$venv" && "$venv/bin/pip" install -q kserve==0.21.0 safetensors numpy || { bad "could not install kserve in $venv"; exit 1; }
fi
bazel run //tools:promote -- --tag=stable >"$work/promote.log" 2>&1 || { bad "promote failed: $(tail -3 "$work/promote.log")"; exit 1; }
bazel run //tools:serve_package -- --out="$work/serve" >"$work/package.log" 2>&1 || { bad "serve_package failed: $(tail -3 "$work/package.log")"; exit 1; }
ok "promoted and packaged in $(since "$start") s: $(grep -o 'serve_package: .*MB' "$work/package.log")"

models=$(sed -n 's/^ *"\([a-z_0-9]*\)",$/\1/p' models/models.bzl)
for model in $models; do
  port=$(dead_port)
  t0=$(now)
  env -i PATH=/usr/bin:/bin HOME="$work" "$work/serve/bin/serve" --model="$model" --tag=stable \
    --registry="file://$E2E_SRC/.modelgate/registry" --public-key="$E2E_SRC/.modelgate/keys/dev-signing-key.pub.pem" \
    --state-dir="$work/state-$model" --port="$port" >"$work/serve-$model.log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do curl -sf -o /dev/null "http://127.0.0.1:$port/v2/health/ready" && break; sleep 0.1; done
  if ! curl -sf -o /dev/null "http://127.0.0.1:$port/v2/health/ready"; then
    bad "$model: the package did not become ready: $(tail -2 "$work/serve-$model.log")"
  else
    ok "$model: ready $(since "$t0") s after start (RSS $(awk '/VmRSS/ {print $2 / 1024 " MiB"}' /proc/$pid/status))"
    "$venv/bin/python" tests/e2e/kserve_client.py "http://127.0.0.1:$port" "$model" "bazel-bin/models/$model/release" ||
      E2E_FAILURES=$((E2E_FAILURES + 1))
  fi
  kill "$pid"; wait "$pid" 2>/dev/null
done
e2e_finish kserve_client_e2e
