"""Test receipts: a model test's pytest run is a cached build action; the test target reports it.

Why this shape (Bazel 4.2.3). A release must depend on the result of its model's tests, but a
Bazel test's result (test.xml, test.log under bazel-testlogs) is not an artifact: no rule can
depend on it. So the pytest run itself is a build action (mnemonic `ModelTest`) that never fails
on a failing test: it writes the *receipt* (`<name>.receipt.json`: targets, test files and
every file the tests read with their sha256, the pip lock entries of their closure, passed /
skipped / failed counts, durations, status), the pytest log and the JUnit XML. The test target
`<name>` is a test rule whose executable only prints that log, copies the XML to Bazel's
`$XML_OUTPUT_FILE` and exits by the receipt's status; the release rule takes the same receipts
as inputs. Consequences:

  - pytest runs once per input change, whoever asks first (`bazel test`, `bazel build :release`,
    promote); the other consumers get the action's cached outputs (local, --disk_cache, remote).
  - `bazel test //models/...` keeps one line per target, `(cached)`, `--test_output=errors`
    (the failing run's log is the test's log) and test.xml with one testcase per pytest test.
  - A failed test is a cached *result*, not a failed action: re-running `bazel test` on the same
    inputs reports the same failure without running pytest again.

What the receipt binds to: the digests of the files the tests read (model sources, modelgate,
the interpreter, data such as exported weights and golden files) and the lock entries of the
test's pip closure, not a build hash. The release binds it to its build when every file the
receipt shares with the build (an input of the build hash or an exported file) has the build's
digest. A golden-data-only change re-keys the export and the golden test, not the model-logic
tests; a receipt of other code or other weights is refused. A file that an export record in
`records` lists (a golden test's weights) takes the sha256 that record holds: the export hashed
those very bytes in this build, so the test action does not hash them again.

Not carried over from py_test: --test_env, --test_arg, --test_filter, --runs_per_test and
--cache_test_results=no act on the reporting step, not on the pytest run; the pytest run is
bounded by the target's size/timeout itself (the reporter's timeout is moot).
"""

load("@pip//:flavor.bzl", "TORCH_FLAVOR")
load("//tools/private:common.bzl", "ACTION_ENV", "FORK_WORKER", "INTERPRETER", "PYTEST_INI", "python_tool_args", "run_python_tool")
load("//tools/private:pip_closure.bzl", "pip_lock_entries_aspect")
load("//tools/private:providers.bzl", "PipLockEntriesInfo", "ReceiptInfo")

_TIMEOUT_S = {"short": 60, "moderate": 300, "long": 900, "eternal": 3600}
_SIZE_TIMEOUT = {"small": "short", "medium": "moderate", "large": "long", "enormous": "eternal"}

def timeout_seconds(size, timeout = None):
    return _TIMEOUT_S[timeout or _SIZE_TIMEOUT.get(size, "moderate")]

def gpu_runs_here():
    """Whether this build's torch can use a GPU (the CUDA lock: --config=gpu)."""
    return TORCH_FLAVOR == "cuda"

def _short_path(f):
    return f.short_path

def _main_repo(files):
    return [f for f in files if f.owner.workspace_name == ""]

def _receipt_run_impl(ctx):
    name = ctx.attr.test_name
    receipt = ctx.actions.declare_file(name + ".receipt.json")
    log = ctx.actions.declare_file(name + ".log")
    xml = ctx.actions.declare_file(name + ".xml")
    label = "//%s:%s" % (ctx.label.package, name)
    files = [receipt, log, xml]
    outputs_dir = None

    if ctx.attr.not_run_reason:
        # A GPU variant on a build whose torch cannot use a GPU, or a variant the BUILD file
        # disabled: nothing to run, nothing to bind.
        doc = {
            "schema": "modelgate/receipt@1",
            "target": label,
            "variant": ctx.attr.variant,
            "status": "not-run",
            "reason": ctx.attr.not_run_reason,
        }
        ctx.actions.write(receipt, json.encode_indent(doc, indent = " ") + "\n")
        ctx.actions.write(log, "modelgate: %s did not run: %s\n" % (label, ctx.attr.not_run_reason))
        ctx.actions.write(xml, "")
    else:
        sources = depset(transitive = [dep[PyInfo].transitive_sources for dep in ctx.attr.deps]).to_list()
        hashed = {}
        for f in _main_repo(sources) + ctx.files.srcs + _main_repo(ctx.files.data) + [ctx.file.interpreter, ctx.file.pytest_ini]:
            hashed[f.short_path] = f
        lock_entries = depset(transitive = [dep[PipLockEntriesInfo].entries for dep in ctx.attr.deps]).to_list()

        # The tests run in the execution root, where a generated file's path is its exec path:
        # $(rootpath X) in env means $(execpath X) here.
        env_flags = []
        for key, value in sorted(ctx.attr.env.items()):
            value = ctx.expand_location(value.replace("$(rootpath ", "$(execpath "), ctx.attr.data)
            env_flags.append("--env=%s=%s" % (key, value))

        # What the tests leave for a person ($TEST_UNDECLARED_OUTPUTS_DIR: a golden test's report).
        # An output of this action, which succeeds when a test fails, so it outlives a failure; the
        # test target copies it into Bazel's undeclared outputs (test.outputs/), which CI uploads.
        outputs_dir = ctx.actions.declare_directory(name + ".outputs")
        files.append(outputs_dir)
        runner = ctx.attr.runner[DefaultInfo].files_to_run
        runner_runfiles = ctx.attr.runner[DefaultInfo].default_runfiles
        args = python_tool_args(ctx, runner, runner_runfiles)
        args.add("--target", label)
        args.add("--variant", ctx.attr.variant)
        args.add("--receipt", receipt)
        args.add("--log", log)
        args.add("--xml", xml)
        args.add("--timeout", str(ctx.attr.timeout_s))
        args.add("--outputs-dir", outputs_dir.path)
        args.add("--outputs-display", "bazel-bin/" + outputs_dir.short_path)
        for rel in sorted(hashed):
            args.add("--input", "%s=%s" % (rel, hashed[rel].path))
        for f in ctx.files.srcs:
            args.add("--test-file", "%s=%s" % (f.short_path, f.path))
        for f in sorted(lock_entries, key = _short_path):
            args.add("--lock-entry", f.path)
        for f in ctx.files.records:
            args.add("--record", "%s=%s" % (f.short_path, f.path))
        args.add_all(env_flags)
        args.add("--")
        args.add_all(ctx.attr.pytest_args)
        args.add_all([f.path for f in ctx.files.srcs])

        # The test environment of .bazelrc's `test --test_env=...`, and the variant's.
        env = dict(ACTION_ENV)
        env.update(ctx.attr.run_env)
        run_python_tool(
            ctx,
            worker = ctx.attr._fork_worker[DefaultInfo].files_to_run,
            tool = runner,
            tool_runfiles = runner_runfiles,
            args = args,
            inputs = depset(hashed.values() + ctx.files.data + ctx.files.records + lock_entries),
            outputs = [receipt, log, xml, outputs_dir],
            env = env,
            mnemonic = "ModelTest",
            progress_message = "Testing %s (pytest, writes its receipt)" % label,
            execution_requirements = ctx.attr.execution_requirements,
        )

    return [
        DefaultInfo(files = depset(files)),
        ReceiptInfo(label = label, variant = ctx.attr.variant, receipt = receipt, log = log, outputs = outputs_dir),
        OutputGroupInfo(receipt = depset([receipt])),
    ]

receipt_run = rule(
    implementation = _receipt_run_impl,
    doc = "A pytest run as a cached build action that writes a receipt. Use model_test.",
    attrs = {
        "test_name": attr.string(mandatory = True, doc = "the receipt_test that reports this run"),
        # The target configuration, as for any test: the pytest run imports the code a release
        # ships, built as the release builds it (and a model_weights target among the deps, a
        # golden test's, is the one the release uses, not a second one in the exec configuration).
        "runner": attr.label(executable = True, cfg = "target", doc = "py_binary of tools/bin/receipt_runner.py with the tests' deps"),
        "srcs": attr.label_list(allow_files = [".py"]),
        "deps": attr.label_list(providers = [PyInfo], aspects = [pip_lock_entries_aspect]),
        "data": attr.label_list(allow_files = True),
        "records": attr.label_list(allow_files = [".json"], doc = "export records (export.json) whose sha256s of the files they list the receipt carries instead of hashing those files"),
        "env": attr.string_dict(),
        "pytest_args": attr.string_list(),
        "variant": attr.string(values = ["cpu", "gpu"], mandatory = True),
        "timeout_s": attr.int(default = 300),
        "not_run_reason": attr.string(doc = "set: write a not-run receipt instead of running pytest"),
        "disabled": attr.bool(doc = "a variant its BUILD file turned off: tagged manual, not a release's receipt (its not_run_reason says so)"),
        "run_env": attr.string_dict(doc = "the variant's environment for the pytest action, over the test environment"),
        "execution_requirements": attr.string_dict(doc = "the variant's execution requirements for the pytest action"),
        "interpreter": attr.label(default = INTERPRETER, allow_single_file = True),
        "pytest_ini": attr.label(default = PYTEST_INI, allow_single_file = True),
        "_fork_worker": attr.label(default = FORK_WORKER, executable = True, cfg = "exec"),
    },
)

def _receipt_test_impl(ctx):
    info = ctx.attr.run[ReceiptInfo]
    receipt, log, label = info.receipt, info.log, info.label
    xml = [f for f in ctx.attr.run[DefaultInfo].files.to_list() if f.basename.endswith(".xml")][0]
    outputs = [info.outputs] if info.outputs else []
    script = ctx.actions.declare_file(ctx.label.name + ".report.sh")
    ctx.actions.write(
        script,
        "\n".join([
            "#!/bin/bash",
            "# Reports the pytest run of %s that a build action recorded (tools/private/receipts.bzl)." % label,
            "cat '%s'" % log.short_path,
            "if [[ -n \"${XML_OUTPUT_FILE:-}\" && -s '%s' ]]; then cp '%s' \"$XML_OUTPUT_FILE\"; fi" % (xml.short_path, xml.short_path),
        ] + [
            # What the run left for a person (a golden test's report) into Bazel's undeclared outputs.
            "if [[ -n \"${TEST_UNDECLARED_OUTPUTS_DIR:-}\" && -d '%s' ]]; then cp -R '%s'/. \"$TEST_UNDECLARED_OUTPUTS_DIR\"/; fi" % (d.short_path, d.short_path)
            for d in outputs
        ] + [
            "grep -q '^ \"status\": \"passed\",\\?$' '%s' && exit 0" % receipt.short_path,
            "echo \"modelgate: $(grep -o '^ \"status\": \"[a-z-]*\"' '%s' | cut -d'\"' -f4): see the receipt bazel-bin/%s\"" % (receipt.short_path, receipt.short_path),
            "exit 1",
            "",
        ]),
        is_executable = True,
    )
    return [DefaultInfo(executable = script, runfiles = ctx.runfiles(files = [receipt, log, xml] + outputs))]

receipt_test = rule(
    implementation = _receipt_test_impl,
    test = True,
    doc = "Reports a receipt_run: prints its pytest log, exits by its receipt's status. Use model_test.",
    attrs = {"run": attr.label(mandatory = True, providers = [ReceiptInfo])},
)
