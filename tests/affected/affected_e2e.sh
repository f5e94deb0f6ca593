#!/usr/bin/env bash
# End-to-end check of `bazel run //tools:affected` on a throwaway clone of this repository
# (its committed HEAD), with its own Bazel server; about 2-3 minutes, most of it the two first
# fetches of the pinned Python packages. Run it from anywhere:  tests/affected/affected_e2e.sh
#
#  1. editing one model lists exactly that model's tests among the models' (each model in turn),
#     plus cross-cutting tests outside models/ only where they depend on it
#  2. --tags=gpu lists only its GPU variants
#  3. editing .bazelrc lists every test and says why
#  4. a file no rule names affects nothing, and says so; an uncommitted edit counts, and is said
#  5. a base revision that does not exist, and a shallow clone without the base: every test, why
set -uo pipefail

src="$(cd "$(dirname "$0")/../.." && pwd)"
work="$(mktemp -d /tmp/modelgate-affected-e2e.XXXXXX)"
clone="$work/repo"
failures=0

cleanup() {
  for ws in "$clone" "$work/shallow"; do
    [[ -d "$ws" ]] && (cd "$ws" && timeout 120 bazel clean --expunge_async >/dev/null 2>&1; timeout 60 bazel shutdown >/dev/null 2>&1)
  done
  rm -rf "$work"
}
trap cleanup EXIT

ok() { printf '  ok    %s\n' "$*"; }
bad() { printf '  FAIL  %s\n' "$*"; failures=$((failures + 1)); }

# Runs affected in $1 with the remaining arguments; labels -> $out, summary line -> $summary.
affected() {
  local ws="$1"
  shift
  local started=$SECONDS
  out="$(cd "$ws" && timeout 300 bazel run --noshow_progress //tools:affected -- "$@" 2>"$work/err")"
  summary="$(grep '^affected: ' "$work/err" | grep -v '^affected: note' | tail -n 1)"
  note="$(grep '^affected: note' "$work/err" || true)"
  printf '  $ bazel run //tools:affected -- %s   (%ss)\n' "$*" "$((SECONDS - started))"
  printf '    %s\n' "$summary"
  [[ -n "$note" ]] && printf '    %s\n' "$note"
  if [[ -n "$out" ]]; then printf '    | %s\n' $out; fi
}

query() {
  (cd "$clone" && timeout 300 bazel query --noshow_progress "$1" 2>/dev/null | sort)
}

commit() { git -C "$clone" -c user.name=e2e -c user.email=e2e@example.com commit -qam "$1"; }

echo "== clone $src (HEAD $(git -C "$src" rev-parse --short HEAD)) to $clone"
git clone -q "$src" "$clone"
git -C "$clone" checkout -q -b e2e-base
start=$SECONDS
(cd "$clone" && timeout 300 bazel build --noshow_progress //tools:affected >/dev/null 2>&1) || { echo "cannot build //tools:affected"; exit 1; }
echo "   first build (fetches @pip): $((SECONDS - start))s"

manual='attr(tags, "[\[ ]manual[,\]]", //...)'
every="$(query "kind('.*_test rule', //...) except $manual")"
models=()
for build in "$clone"/models/*/BUILD.bazel; do
  models+=("$(basename "$(dirname "$build")")")
done
echo "   ${#models[@]} models (${models[*]}), $(wc -l <<<"$every") tests in all"

echo "== 1. one model edited: exactly its tests"
for model in "${models[@]}"; do
  git -C "$clone" checkout -q -B "edit-$model" e2e-base
  file="$(cd "$clone/models/$model" && ls model.py 2>/dev/null || ls ./*.py | head -n 1)"
  echo "# edited by affected_e2e" >>"$clone/models/$model/${file#./}"
  commit "edit $model"
  affected "$clone" --base=e2e-base
  own="$(query "kind('.*_test rule', //models/$model:*) except $manual")"
  listed_models="$(grep '^//models/' <<<"$out" | sort)"
  if [[ "$listed_models" == "$own" ]]; then
    ok "$model: of the model tests, exactly //models/$model's ($(wc -l <<<"$own"))"
  else
    bad "$model: expected $(echo $own), got $(echo $listed_models)"
  fi
  # Tests outside models/ may use the model (e.g. a serving test): each must really depend on it.
  for test in $(grep -v '^//models/' <<<"$out"); do
    if [[ -n "$(query "somepath($test, //models/$model:${file#./})")" ]]; then
      ok "$model: also $test, which depends on //models/$model:${file#./}"
    else
      bad "$model: $test listed but does not depend on the model"
    fi
  done
done

echo "== 2. --tags=gpu: only the GPU variants (for a GPU runner)"
affected "$clone" --base=e2e-base --tags=gpu
expected="$(query "attr(tags, '[\[ ]gpu[,\]]', kind('.*_test rule', //models/${models[-1]}:*)) except $manual")"
[[ "$(sort <<<"$out")" == "$expected" ]] && ok "gpu only: $(echo $out)" || bad "gpu: expected $(echo $expected), got $(echo $out)"

echo "== 3. .bazelrc edited: every test, and why"
git -C "$clone" checkout -q -B edit-bazelrc e2e-base
echo "# edited by affected_e2e" >>"$clone/.bazelrc"
commit "edit .bazelrc"
affected "$clone" --base=e2e-base
[[ "$(sort <<<"$out")" == "$every" ]] && ok "every test ($(wc -l <<<"$out"))" || bad "expected every test"
[[ "$summary" == *"failing open: .bazelrc changed"* ]] && ok "says why" || bad "no reason given: $summary"

echo "== 4. a file no rule names; an uncommitted edit"
git -C "$clone" checkout -q -B edit-readme e2e-base
echo "edited" >>"$clone/README.md"
commit "edit README"
affected "$clone" --base=e2e-base
[[ -z "$out" ]] && grep -q "README.md: not a target" "$work/err" && ok "README.md affects nothing, and says so" || bad "README.md: $out"
echo "# uncommitted" >>"$clone/models/${models[0]}/model.py"
affected "$clone" --base=e2e-base --tags=-gpu
[[ "$(sort <<<"$out")" == "$(query "kind('.*_test rule', //models/${models[0]}:*) except attr(tags, '[\[ ](manual|gpu)[,\]]', //...)")" ]] &&
  [[ "$note" == *"uncommitted changes"* ]] && ok "uncommitted edit counted, and said" || bad "dirty tree: $out / $note"
git -C "$clone" checkout -q -- .

echo "== 5. bad revisions fail open"
affected "$clone" --base=no-such-revision
[[ "$(sort <<<"$out")" == "$every" && "$summary" == *"does not exist"* ]] && ok "unknown base: every test, says so" || bad "unknown base"
(cd "$clone" && timeout 60 bazel shutdown >/dev/null 2>&1)
base="$(git -C "$clone" rev-parse e2e-base~1)"
git clone -q --depth=1 "file://$clone" "$work/shallow"
affected "$work/shallow" --base="$base"
[[ "$(sort <<<"$out")" == "$every" && "$summary" == *"not in this shallow clone"* ]] && ok "shallow clone: every test, says so" ||
  bad "shallow clone"

echo
if ((failures)); then
  echo "affected_e2e: $failures check(s) failed"
  exit 1
fi
echo "affected_e2e: all checks passed in $SECONDS s"
