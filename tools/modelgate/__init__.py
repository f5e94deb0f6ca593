"""modelgate: CI/CD for PyTorch models in a Bazel monorepo."""
