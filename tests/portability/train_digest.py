"""Trains models and prints the digest of their weights: the child process of portability_test.

  train_digest.py --numerics=portable|native [--steps=N] MODEL...

portable: the export's own path (modelgate.portable: prepare_environment before torch loads, then
portable.train). native: what modelgate did before the portable mode, for the test's control
(deterministic algorithms, fixed seeds and one thread, but the CPU's own kernels).
Prints one JSON line per model: {"model", "digest", "seconds", "aten"}.
"""

import argparse
import hashlib
import json
import sys
import time

from modelgate import portable


def weights_digest(model) -> str:
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--numerics", choices=["portable", "native"], required=True)
    parser.add_argument("--steps", help="override the spec's training steps")
    parser.add_argument("models", nargs="+")
    args = parser.parse_args()
    if args.numerics == "portable":
        portable.prepare_environment()
    import torch

    from modelgate.spec import load_spec

    for name in args.models:
        spec = load_spec(name)
        if args.steps:
            spec = spec.with_config({"steps": args.steps})
        started = time.perf_counter()
        if args.numerics == "portable":
            model, _, _ = portable.train(spec)
        else:
            portable.deterministic(int(spec.config.get("seed", 0)))
            model = spec.new_model()
            spec.train(model, spec.config)
        seconds = time.perf_counter() - started
        print(json.dumps({"model": name, "digest": weights_digest(model), "seconds": round(seconds, 2),
                          "aten": torch.backends.cpu.get_cpu_capability()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
