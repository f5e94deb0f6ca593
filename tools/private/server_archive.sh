# The Bazel server's class-data archive (JDK CDS): sourced by tools/bazel and tools/bootstrap.
#
# A Bazel server is a JVM that loads ~10k classes from A-server.jar at start, and every fresh
# clone (a new output base) starts one. An archive of those classes, mapped instead of parsed and
# verified, takes about 0.5 s off each start on this 2-core machine (a fresh clone's
# `bazel fetch`: 2.15 s -> 1.65 s; BENCHMARKS.md, row 2c). tools/bootstrap records it once per
# machine, in a throwaway workspace; tools/bazel adds `-XX:SharedArchiveFile` when it exists.
#
# The archive belongs to one Bazel install and one JVM build, so its name is a key of both: an
# upgrade of either starts from a new name (and a JVM given an archive it cannot use ignores it
# and starts as without). It changes how fast the server starts, never what a build does.

# The archive's path for the Bazel and JVM on this machine; empty where either is not found.
server_archive_path() {
  local install_key java javabase jvm
  install_key="$(cat /usr/share/bazel/install_base_key 2>/dev/null)" || return 0
  if [[ -n "${JAVA_HOME:-}" ]]; then
    javabase="$JAVA_HOME"
  else
    java="$(command -v java 2>/dev/null)" || return 0
    javabase="$(dirname "$(dirname "$(readlink -f "$java")")")"
  fi
  jvm="$javabase/lib/server/libjvm.so"
  [[ -f "$jvm" ]] || return 0
  local key
  key="$(printf '%s\n' "$install_key" "$javabase" "$(stat -c '%s %Y' "$jvm")" | cksum | cut -d' ' -f1)"
  echo "${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/modelgate/bazel-server/$key.jsa"
}

# Records the archive (a server that builds a small workspace of its own, then exits); returns
# non-zero, leaving nothing, if that fails. $1: the archive's path.
record_server_archive() {
  local archive="$1" work
  work="$(mktemp -d)"
  mkdir -p "$work/ws" "$(dirname "$archive")"
  printf 'workspace(name = "server_archive")\n' >"$work/ws/WORKSPACE"
  cat >"$work/ws/rules.bzl" <<'EOF'
def _impl(ctx):
    out = ctx.actions.declare_file(ctx.label.name + ".out")
    link = ctx.actions.declare_file(ctx.label.name + ".link")
    args = ctx.actions.args()
    args.add_all(ctx.files.srcs)
    ctx.actions.run_shell(outputs = [out], inputs = ctx.files.srcs, arguments = [args, out.path], command = 'cat "${@:1:$#-1}" > "${@: -1}"')
    ctx.actions.symlink(output = link, target_file = out)
    return [DefaultInfo(files = depset([out, link]))]

concat = rule(implementation = _impl, attrs = {"srcs": attr.label_list(allow_files = True)})
EOF
  cat >"$work/ws/BUILD" <<'EOF'
load(":rules.bzl", "concat")

genrule(name = "g", outs = ["g.txt"], cmd = "echo modelgate > $@")

concat(name = "c", srcs = [":g"])
EOF
  local ok=0 flag="--host_jvm_args=-XX:ArchiveClassesAtExit=$archive.tmp.$$"
  if (cd "$work/ws" && bazel --nohome_rc --output_base="$work/out" "$flag" build //... >/dev/null 2>&1); then
    # The JVM writes the archive as it exits; the same startup flags keep the same server.
    (cd "$work/ws" && bazel --nohome_rc --output_base="$work/out" "$flag" shutdown >/dev/null 2>&1) || true
    [[ -s "$archive.tmp.$$" ]] && mv -f "$archive.tmp.$$" "$archive" && ok=1
  fi
  rm -f "$archive.tmp.$$"
  chmod -R u+w "$work" 2>/dev/null
  rm -rf "$work"
  ((ok))
}
