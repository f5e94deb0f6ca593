#!/usr/bin/env bash
# Builds every model's :release in two clones at different paths, each with its own output base
# and no shared cache, then compares build hashes and file digests. Exit 0 only if identical.
#
#   tests/reproducibility/two_clones.sh [REV]      (default: HEAD of this checkout)
set -euo pipefail
src=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
rev=${1:-HEAD}
work=$(mktemp -d /tmp/modelgate-repro.XXXXXX)
clones=("$work/a/modelgate" "$work/deeper/path/b/modelgate")
cleanup() {
  for c in "${clones[@]}"; do [[ -d $c ]] && (cd "$c" && bazel --output_base="$c.out" shutdown >/dev/null 2>&1 || true); done
  rm -rf "$work"
}
trap cleanup EXIT

for c in "${clones[@]}"; do
  mkdir -p "$(dirname "$c")"
  git clone -q "$src" "$c"
  git -C "$c" checkout -q "$rev"
  start=$(date +%s)
  (cd "$c" && bazel --output_base="$c.out" build --disk_cache= --noremote_accept_cached //models:releases >"$c.log" 2>&1) ||
    { tail -20 "$c.log"; echo "build failed in $c" >&2; exit 1; }
  echo "built //models:releases in $c in $(( $(date +%s) - start )) s (fresh output base, no cache)"
done

python3 - "${clones[@]}" <<'PY'
import json, pathlib, sys
a, b = (pathlib.Path(p) for p in sys.argv[1:])
index = json.loads((a / "bazel-bin/models/releases.json").read_text())["releases"]
same = True
print(f"{'model':<18} {'build hash':<14} {'file':<30} {'sha256':<14} {'same'}")
for entry in index:
    ma, mb = (json.loads((root / "bazel-bin" / entry["dir"] / "manifest.json").read_text()) for root in (a, b))
    ok = ma["build_hash"] == mb["build_hash"]
    same &= ok
    print(f"{entry['model']:<18} {ma['build_hash'][:12]:<14} {'(build hash)':<30} {'':<14} {ok}")
    for name in sorted(ma["files"]):
        ok = ma["files"][name] == mb["files"].get(name)
        same &= ok
        print(f"{'':<18} {'':<14} {name:<30} {ma['files'][name]['sha256'][:12]:<14} {ok}")
print("IDENTICAL" if same else "DIFFERENT")
sys.exit(0 if same else 1)
PY
