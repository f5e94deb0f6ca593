"""Repository rules for the Python toolchain and the pinned pip packages.

Both work offline except for pip's own downloads from the package index, and neither depends on
where the clone lives: every file they write is identical in two clones at different paths, so
test actions hit each other's cache.
"""

_DEFAULT_PYTHON = "/usr/bin/python3.11"

_LOCK_FIX = "fix the lock with: bazel run //third_party:requirements.update"

def _find_python(rctx):
    python = rctx.os.environ.get("MODELGATE_PYTHON", rctx.attr.python)
    if not rctx.path(python).exists:
        fail("modelgate: no Python interpreter at %s; run tools/bootstrap (or set MODELGATE_PYTHON)" % python)
    return python

def _python_version(rctx, python):
    res = rctx.execute([python, "-S", "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"])
    if res.return_code != 0:
        fail("modelgate: %s does not run: %s" % (python, res.stderr.strip()))
    return res.stdout.strip()

# The toolchain's interpreter. Where a target's runfiles hold only the lock entries of its pip
# packages (MODELGATE_PIP_INPUTS=lock, the default; see pip_repository), the launcher's PYTHONPATH
# entry <runfiles>/pip/site holds none of their files: the wrapper replaces it with one directory
# per package of the target's closure, found by the lock entries in the runfiles:
#   - on this machine, through their links into @pip (which marks the mode with
#     INPUTS_ARE_LOCK_ENTRIES): @pip's dists/<name>, each distribution's installed files on their own;
#   - on a remote executor (--config=rbe), where the inputs are copies, not links: by the digest of
#     each lock entry in the executor image's store, EXECUTOR_STORE_ROOT/<store key>/entries/
#     <sha256 of lock_entries/<name>.json> (pip_generate.py index), in whichever installed lock of
#     the image has that entry, or exit 70 naming the package.
# A package the target does not depend on is not importable, as with every file an input. One
# wrapper for both, so that an action has the same key run here or remotely (and a model the same
# build hash): nothing in it depends on the machine beyond the interpreter it names.
_WRAPPER = """\
#!/bin/sh
# modelgate Python toolchain: CPython {version} at {python}
# -S: no site-packages of the interpreter's own; -s: no user site.
case ":${{PYTHONPATH:-}}:" in
*/site:*)
  set -f
  old_ifs=$IFS
  IFS=:
  path=
  for entry in $PYTHONPATH; do
    set +f
    if [ "${{entry##*/}}" = site ]; then
      repo=
      for lock_entry in "${{entry%/site}}"/lock_entries/*.json; do
        if [ -z "$repo" ]; then
          [ -f "$lock_entry" ] || break
          repo=$(readlink -f "$lock_entry") || break
          repo=${{repo%/lock_entries/*}}
          # MODELGATE_PIP_INPUTS=files: the site directory's files are the inputs; keep it.
          [ -f "$repo/INPUTS_ARE_FILES" ] && break
          # On a remote executor the inputs are copies: the files come from its image's store.
          [ -f "$repo/INPUTS_ARE_LOCK_ENTRIES" ] || repo=executor
          entry=
        fi
        name=${{lock_entry##*/}}
        name=${{name%.json}}
        if [ "$repo" = executor ]; then
          digest=$(sha256sum <"$lock_entry")
          digest=${{digest%% *}}
          dir=
          for found in {store_root}/*/entries/$digest; do
            [ -d "$found" ] && dir=$found && break
          done
          if [ -z "$dir" ]; then
            echo "modelgate: this executor's image has no $name of this lock (lock entry sha256 $digest under {store_root}/*/entries): build the image from the lock (third_party/python/executor.Dockerfile)" >&2
            exit 70
          fi
          entry="${{entry:+$entry:}}$dir"
        else
          entry="${{entry:+$entry:}}$repo/dists/$name"
        fi
      done
    fi
    path="${{path:+$path:}}$entry"
  done
  IFS=$old_ifs
  PYTHONPATH=$path
  export PYTHONPATH
  ;;
esac
exec {python} -S -s "$@"
"""

def _python_interpreter_impl(rctx):
    python = _find_python(rctx)
    version = _python_version(rctx, python)
    if not version.startswith(rctx.attr.expected_minor + "."):
        fail("modelgate: %s is Python %s, the lock is for Python %s; run tools/bootstrap" % (python, version, rctx.attr.expected_minor))

    # The wrapper is the toolchain's identity: its bytes (path and version) key every Python action.
    # -S keeps the interpreter's own site-packages (and Debian's dist-packages) out of sys.path;
    # only the packages a target depends on are importable.
    wrapper = _WRAPPER.format(version = version, python = python, store_root = EXECUTOR_STORE_ROOT)
    rctx.file("bin/python3", wrapper, executable = True)
    rctx.file("BUILD.bazel", """\
package(default_visibility = ["//visibility:public"])

load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

exports_files(["bin/python3"])

py_runtime(
    name = "runtime",
    interpreter = "bin/python3",
    python_version = "PY3",
    # The launcher stub that finds runfiles; Debian has no `python` on PATH.
    stub_shebang = "#!/usr/bin/python3",
)

py_runtime_pair(
    name = "runtime_pair",
    py3_runtime = ":runtime",
)

toolchain(
    name = "toolchain",
    toolchain = ":runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)
""")

python_interpreter = repository_rule(
    implementation = _python_interpreter_impl,
    attrs = {
        "expected_minor": attr.string(default = "3.11"),
        "python": attr.string(default = _DEFAULT_PYTHON),
    },
    environ = ["MODELGATE_PYTHON"],
    local = True,
)

# --- the machine's store of installed locks ------------------------------------------------------
#
# Installing the lock (pip, then compileall) takes half a minute or more, and every clone and
# every new output base did it again for the same bytes. An installed tree is a pure function of
# the lock's bytes, the interpreter's version and the torch flavor (pip runs with --no-deps
# --require-hashes), so it is kept once per machine under that key,
# ~/.cache/modelgate/pip-store/<key>/site, read-only, and a repository of that key links to it
# instead of installing. The link target never enters a cache key: actions see workspace-relative
# paths (external/pip/site/...) and content digests, so clones at different paths and machines
# still share every cache entry. $MODELGATE_PIP_STORE picks another directory, or `off`.

_STORE_FORMAT = "2"
_STORE_DONE = "COMPLETE"

def _store_key(rctx, python):
    # third_party/python/store_key.py, which executor.Dockerfile runs too: the same key in both.
    flavor = rctx.os.environ.get("MODELGATE_TORCH", "cpu")
    res = rctx.execute([python, "-S", rctx.path(rctx.attr._store_key), str(rctx.path("requirements_lock.txt")), flavor, _STORE_FORMAT], quiet = True)
    if res.return_code != 0:
        fail("modelgate: could not compute the pip store key: " + res.stderr.strip())
    return res.stdout.strip()

def _store_entry(rctx, key):
    root = rctx.os.environ.get("MODELGATE_PIP_STORE", "")
    if root == "off":
        return None
    if not root:
        home = rctx.os.environ.get("HOME", "")
        if not home:
            return None
        root = home + "/.cache/modelgate/pip-store"
    return root + "/" + key

# Moves the freshly installed site/ into the store (atomically: a temporary directory renamed
# into place, so a reader sees a complete tree or none; two clones installing at once both
# succeed, the second's copy is dropped), makes it read-only and links site/ to it.
_PUBLISH_SCRIPT = """
import os, shutil, stat, sys, tempfile
site, dists, entry, done = sys.argv[1:]
parent = os.path.dirname(entry)
os.makedirs(parent, exist_ok=True)
tmp = tempfile.mkdtemp(prefix=".install-", dir=parent)
shutil.move(site, os.path.join(tmp, "site"))
shutil.move(dists, os.path.join(tmp, "dists"))  # hard links to the same files: moved, not copied
for root, dirs, files in os.walk(os.path.join(tmp, "site")):
    for name in files:
        path = os.path.join(root, name)
        if not os.path.islink(path):
            mode = os.stat(path).st_mode
            os.chmod(path, mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
open(os.path.join(tmp, done), "w").close()
try:
    os.rename(tmp, entry)
except OSError:
    shutil.rmtree(tmp, ignore_errors=True)  # another clone published the same key first
    if not os.path.exists(os.path.join(entry, done)):
        raise
"""

def _publish(rctx, python, store):
    res = rctx.execute([python, "-S", "-c", _PUBLISH_SCRIPT, str(rctx.path("site")), str(rctx.path("dists")), store, _STORE_DONE], timeout = 600, quiet = True)
    if res.return_code != 0:
        # The store is an optimization: without it the repository keeps its own copy.
        print("modelgate: could not add the installed lock to the machine's store %s: %s" % (store, res.stderr.strip().splitlines()[-1:] or "?"))
        return
    _link(rctx, store)

# The store's index by lock entry (pip_generate.py index): where a remote executor whose image is
# this store finds a package's files (_WRAPPER). Written once per store.
def _index(rctx, python, store, lock_name):
    if rctx.path(store + "/entries").exists:
        return
    res = rctx.execute([python, "-S", rctx.path(rctx.attr._generator), "index", store, lock_name, str(rctx.path("requirements_lock.txt"))], timeout = 600, quiet = True)
    if res.return_code != 0:
        print("modelgate: could not index the machine's store %s by lock entry: %s" % (store, (res.stdout + res.stderr).strip()))

def _link(rctx, store):
    rctx.symlink(store + "/site", "site")
    rctx.symlink(store + "/dists", "dists")

def _install(rctx, python, lock_path, lock_name):
    rctx.report_progress("installing %s" % lock_name)
    res = rctx.execute(
        [
            python,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--require-hashes",
            "--no-compile",
            "--no-input",
            "--disable-pip-version-check",
            "--target",
            "site",
            "-r",
            str(lock_path),
        ],
        timeout = 3600,
        quiet = True,
    )
    if res.return_code != 0:
        summary = rctx.execute([python, "-S", rctx.path(rctx.attr._generator), "explain-pip-error", lock_name], environment = {"PIP_OUTPUT": res.stdout + res.stderr})
        fail("\n" + (summary.stdout.strip() or (res.stderr.strip() + "\n" + _LOCK_FIX)))

    # Byte-compile with paths relative to the repository and hash-checked .pyc files, so that the
    # tree is byte-identical wherever the output base is. Exits non-zero on files written for newer
    # Pythons (torch ships a few); that is expected.
    rctx.execute([python, "-S", "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash", "-s", str(rctx.path("site")), "-p", "site", "site"], timeout = 1800, quiet = True)

    # Each distribution's files on their own too, dists/<name>/ (hard links into site/): what a
    # target whose inputs are lock entries puts on its sys.path, its closure and nothing else.
    res = rctx.execute([python, "-S", rctx.path(rctx.attr._generator), "split", "site", "dists"], timeout = 600, quiet = True)
    if res.return_code != 0:
        fail("modelgate: could not lay out the installed packages one directory each: " + (res.stdout + res.stderr).strip())

# --- the executor image: remote execution without the installed files as inputs ------------------
#
# Under remote execution (--config=rbe) an action's inputs are its lock entries, as locally. The files come from the executor: an image built from the lock
# (third_party/python/executor.Dockerfile) holds the store at EXECUTOR_STORE_ROOT/<key>, indexed by
# lock entry (entries/<sha256>), and the wrapper finds each package there by its entry's digest.
# @pip//executor:platform names that image in exec_properties (container-image), which is part of
# every action's key: its tag is what every action shares and no lock entry says, the torch flavor
# (and so the executor's drivers), the interpreter's version and the store's format. The lock
# itself is not in the tag: an action's key already holds the entries of its own packages, so a
# lock edit re-runs exactly the actions whose packages' entries changed, and an image built from
# another lock can serve an action only with the very files its entries name (or refuses it,
# exit 70), never a cache hit of other bytes.

EXECUTOR_STORE_ROOT = "/opt/modelgate/pip-store"
_DEFAULT_EXECUTOR_IMAGE = "docker://modelgate-executor"

def executor_tag(flavor, version):
    return "%s-python%s-store%s" % (flavor, version, _STORE_FORMAT)

def _executor_package(rctx, key, flavor, version):
    image = rctx.os.environ.get("MODELGATE_EXECUTOR_IMAGE", _DEFAULT_EXECUTOR_IMAGE)
    if not image.startswith("docker://"):
        fail("modelgate: MODELGATE_EXECUTOR_IMAGE=%s; expected docker://REGISTRY/NAME (the tag is the flavor's and the interpreter's)" % image)
    tag = executor_tag(flavor, version)
    rctx.file("executor/IMAGE", "%s:%s\n" % (image, tag), executable = False)
    rctx.file("executor/BUILD.bazel", """\
# Generated by third_party/python/repositories.bzl. Do not edit.
package(default_visibility = ["//visibility:public"])

# The executor image built from the lock (third_party/python/executor.Dockerfile); this lock's
# store is at {root}/{key} there, indexed by lock entry (entries/<sha256>).
IMAGE = "{image}:{tag}"

platform(
    name = "platform",
    parents = ["@local_config_platform//:host"],
    exec_properties = {{
        "container-image": "{image}:{tag}",
        "OSFamily": "Linux",
    }},
)

exports_files(["IMAGE"])
""".format(root = EXECUTOR_STORE_ROOT, key = key, tag = tag, image = image), executable = False)

def _pip_repository_impl(rctx):
    python = _find_python(rctx)
    flavor = rctx.os.environ.get("MODELGATE_TORCH", "cpu")
    if flavor == "cpu":
        lock = rctx.attr.requirements_lock
    elif flavor == "cuda":
        lock = rctx.attr.requirements_lock_cuda
    else:
        fail("modelgate: MODELGATE_TORCH=%s; expected cpu or cuda" % flavor)
    inputs = rctx.os.environ.get("MODELGATE_PIP_INPUTS", "lock")
    if inputs == "image":
        inputs = "lock"  # what --config=rbe set before local and remote actions had one wrapper
    if inputs not in ("lock", "files"):
        fail("modelgate: MODELGATE_PIP_INPUTS=%s; expected lock or files" % inputs)
    lock_path = rctx.path(lock)
    lock_name = "%s/%s" % (lock.package, lock.name) if lock.package else lock.name
    rctx.file("requirements_lock.txt", rctx.read(lock_path), executable = False)
    key = _store_key(rctx, python)
    store = _store_entry(rctx, key)
    if store and rctx.path(store + "/" + _STORE_DONE).exists:
        # Installed before on this machine (another clone, an earlier output base): link it.
        rctx.report_progress("linking %s from the machine's store" % lock_name)
        _link(rctx, store)
    else:
        _install(rctx, python, lock_path, lock_name)
        if store:
            _publish(rctx, python, store)
    if store and rctx.path(store + "/" + _STORE_DONE).exists:
        _index(rctx, python, store, lock_name)

    # The lock entry of each package goes beside its py_library (lock_entries/<name>.json).
    res = rctx.execute([python, rctx.path(rctx.attr._generator), "generate", lock_name, "site", ".", "requirements_lock.txt", "files" if inputs == "files" else "lock"], timeout = 600, quiet = True)
    if res.return_code != 0:
        fail("\n" + (res.stdout + res.stderr).strip())

    # The toolchain's wrapper reads site/ itself where the libraries' inputs are their lock entries.
    rctx.file("INPUTS_ARE_FILES" if inputs == "files" else "INPUTS_ARE_LOCK_ENTRIES", "", executable = False)

    _executor_package(rctx, key, flavor, _python_version(rctx, python))

    # Which torch this repository holds, for rules that decide at analysis time whether a GPU
    # variant can run at all (tools/private/receipts.bzl).
    rctx.file("flavor.bzl", "TORCH_FLAVOR = %r\n" % flavor, executable = False)

pip_repository = repository_rule(
    implementation = _pip_repository_impl,
    attrs = {
        "python": attr.string(default = _DEFAULT_PYTHON),
        "requirements_lock": attr.label(mandatory = True, allow_single_file = True),
        "requirements_lock_cuda": attr.label(mandatory = True, allow_single_file = True),
        "_generator": attr.label(default = "//third_party/python:pip_generate.py"),
        "_store_key": attr.label(default = "//third_party/python:store_key.py"),
    },
    environ = ["HOME", "MODELGATE_EXECUTOR_IMAGE", "MODELGATE_PIP_INPUTS", "MODELGATE_PIP_STORE", "MODELGATE_PYTHON", "MODELGATE_TORCH"],
)
