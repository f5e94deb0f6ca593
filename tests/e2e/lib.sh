# Helpers for the end-to-end scripts in this directory (sourced, not run). They need a second
# Bazel server, so they run outside `bazel test`: by hand or in CI, from any directory.

E2E_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
E2E_FAILURES=0
E2E_CLONES=()

ok() { printf '  ok    %s\n' "$*"; }
bad() {
  printf '  FAIL  %s\n' "$*"
  E2E_FAILURES=$((E2E_FAILURES + 1))
}

now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# e2e_clone DIR: a clone of this repository's committed HEAD at DIR, removed (output base too)
# by e2e_cleanup.
e2e_clone() {
  git clone -q "$E2E_SRC" "$1"
  E2E_CLONES+=("$1")
}

e2e_cleanup_clones() {
  local ws
  for ws in "${E2E_CLONES[@]}"; do
    [[ -d "$ws" ]] || continue
    (cd "$ws" && timeout 120 bazel clean --expunge_async >/dev/null 2>&1; timeout 60 bazel shutdown >/dev/null 2>&1)
  done
}

# A free TCP port on loopback that nothing listens on (for "the server is down").
dead_port() {
  python3 -S -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# From a `bazel test` log: "INFO: 40 processes: 6 remote cache hit, 34 internal." -> the counts.
processes() { grep -E '^INFO: [0-9]+ process(es)?' "$1" | tail -n 1 | sed 's/^INFO: //'; }
count_of() { processes "$1" | grep -oE "[0-9]+ $2" | grep -oE '^[0-9]+' || echo 0; }
# Processes that ran on this machine (anything but internal, remote and remote cache hits).
local_runs() {
  processes "$1" | tr ',:.' '\n\n\n' | grep -E '^ *[0-9]+ ' |
    grep -vE '^ *[0-9]+ (internal|remote|remote cache hit|process(es)?)$' | sed 's/^ *//' | paste -sd, -
}

# Test summary lines ("//pkg:t   (cached) PASSED in 0.2s").
test_lines() { grep -E '^//[^ ]+ +' "$1"; }
count_tests() { test_lines "$1" | grep -cE "$2" || true; }

e2e_finish() {
  echo "machine load (1, 5, 15 min): $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
  echo
  if ((E2E_FAILURES)); then
    echo "$1: $E2E_FAILURES check(s) failed"
    return 1
  fi
  echo "$1: all checks passed in ${SECONDS}s"
}
