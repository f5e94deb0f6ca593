"""What several of modelgate's macros and rules share: the labels of the tooling they run (one
place to change when a tool moves), the environment of the export and gate actions, and the
default model name."""

# The tooling's labels. The mains Bazel runs, and the libraries every model target brings.
MODEL_TOOL_MAIN = "//tools/bin:model_tool.py"
# The release gate's main (modelgate.gate.main), built like the model tool with a model's library.
GATE_TOOL_MAIN = "//tools/bin:gate_tool.py"
GOLDEN_TEST_MAIN = "//tools/bin:golden_test.py"
PYTEST_MAIN = "//tools/bin:pytest_main.py"
RECEIPT_RUNNER_MAIN = "//tools/bin:receipt_runner.py"
CHECKPOINT_TOOL = "//tools/bin:checkpoint_tool"
# The release action: writes a bundle's manifest.json, once (modelgate.manifest).
MANIFEST_TOOL = "//tools/modelgate:manifest"
SPEC_LIB = "//tools/modelgate:spec"
EXPORT_LIB = "//tools/modelgate:export"
# The release gate: run by the gate action with the model's code, never part of a build hash.
GATE_LIB = "//tools/modelgate:gate"
# Reports (Jinja2, matplotlib): the gate's, the golden tests', a release's review page. In no build hash.
REPORT_LIB = "//tools/modelgate/report"
RELEASE_REPORT_MAIN = "//tools/modelgate/report:release_main.py"
CHECKS_LIB = "//tools/modelgate:checks"
RECEIPTS_LIB = "//tools/modelgate:receipts_lib"
TRAIN_LIB = "//tools/modelgate:train_lib"
# The one runner every main ends through (errors to one line and an exit code). The model tool's
# own dependency, not the model's: an input of the export action, in no build hash.
RUNNER_LIB = "//tools/modelgate:errors"
PYTEST_INI = "//:pytest.ini"
INTERPRETER = "@python_interpreter//:bin/python3"
FORK_WORKER = "//tools/bin:fork_worker"
# Its fork and wait, which the receipt runner runs pytest with.
FORK_WORKER_MAIN = "//tools/bin:fork_worker.py"

# The environment of every Python action: one thread, fixed hashing, no bytecode, no cwd on
# sys.path. The pytest actions' is .bazelrc's `test --test_env=...`, kept in step with it.
ACTION_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONHASHSEED": "0",
    "PYTHONSAFEPATH": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
}

# Deterministic cuBLAS: for every action that may run on a GPU.
CUDA_ENV = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}

# The ModelExport and ReleaseGate actions'.
EXPORT_ENV = dict(ACTION_ENV, **CUDA_ENV)

def model_name(model):
    """A macro's `model` argument, by default the calling package's last path component."""
    return model or native.package_name().split("/")[-1]

# The Python actions that import torch (export, gate, model tests) run through the fork worker
# (tools/bin/fork_worker.py): Bazel keeps it running, it imports torch once, and each action is a
# fork of it that becomes the action's py_binary. Bazel keys a worker by its tools and runfiles,
# so the py_binary is not a tool of the action: its runfiles are plain inputs, listed in the flag
# file (runfiles path = exec path), and the worker lays them out as the py_binary's runfiles tree
# before it runs the binary's own launcher. One worker then serves every model's tool of a
# mnemonic and environment; without a worker (a sandbox, a remote executor) the worker lays out the
# same tree and execs the binary, as the action did before.
_WORKER_REQUIREMENTS = {"supports-workers": "1", "requires-worker-protocol": "json"}

def _runfiles_path(workspace, short_path):
    # short_path is "pkg/file" in the main repository and "../repo/file" in an external one.
    return short_path[3:] if short_path.startswith("../") else workspace + "/" + short_path

def python_tool_args(ctx, tool, runfiles):
    """The Args of a run_python_tool action of py_binary `tool` (FilesToRunProvider) with its
    `runfiles`: the flag file the worker reads (the binary, its runfiles as RUNFILES_PATH=EXEC_PATH
    and EMPTY_PATH=, then `--`), to which the caller adds the binary's arguments."""
    args = ctx.actions.args()
    args.use_param_file("@%s", use_always = True)
    args.set_param_file_format("multiline")
    args.add(tool.executable.path)
    ws = ctx.workspace_name
    entries = {}
    for f in runfiles.files.to_list():
        entries[_runfiles_path(ws, f.short_path)] = f.path
    for path in runfiles.empty_filenames.to_list():
        entries.setdefault(_runfiles_path(ws, path), "")
    args.add_all(["%s=%s" % (k, entries[k]) for k in sorted(entries)])
    args.add("--")
    return args

def run_python_tool(ctx, *, worker, tool, tool_runfiles, args, inputs, execution_requirements = {}, **kwargs):
    """ctx.actions.run of py_binary `tool` (FilesToRunProvider, with `tool_runfiles`) through the
    fork worker (`worker`: its FilesToRunProvider); `args` from python_tool_args."""
    requirements = dict(_WORKER_REQUIREMENTS)
    requirements.update(execution_requirements)
    ctx.actions.run(
        executable = worker,
        arguments = [args],
        inputs = depset(direct = [tool.executable], transitive = [depset(inputs) if type(inputs) == "list" else inputs, tool_runfiles.files]),
        execution_requirements = requirements,
        **kwargs
    )
