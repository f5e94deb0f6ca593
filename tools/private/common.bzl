"""What several of modelgate's macros and rules share: the labels of the tooling they run (one
place to change when a tool moves), the environment of the export and gate actions, and the
default model name."""

# The tooling's labels. The mains Bazel runs, and the libraries every model target brings.
MODEL_TOOL_MAIN = "//tools/bin:model_tool.py"
GOLDEN_TEST_MAIN = "//tools/bin:golden_test.py"
PYTEST_MAIN = "//tools/bin:pytest_main.py"
RECEIPT_RUNNER_MAIN = "//tools/bin:receipt_runner.py"
CHECKPOINT_TOOL = "//tools/bin:checkpoint_tool"
RECEIPT_TOOL = "//tools/modelgate:receipt_tool"
SPEC_LIB = "//tools/modelgate:spec"
EXPORT_LIB = "//tools/modelgate:export"
CHECKS_LIB = "//tools/modelgate:checks"
RECEIPTS_LIB = "//tools/modelgate:receipts_lib"
TRAIN_LIB = "//tools/modelgate:train_lib"
PYTEST_INI = "//:pytest.ini"
INTERPRETER = "@python_interpreter//:bin/python3"

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
