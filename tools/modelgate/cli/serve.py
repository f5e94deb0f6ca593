"""serve: the reference inference service for one model and one tag.

    serve --model=NAME --tag=TAG [--registry=URI] [--port=P] [--host=ADDR] [--public-key=PEM]
          [--poll-interval=SECONDS] [--state-dir=DIR] [--max-body-bytes=N] [--threads=N]
          [--read-timeout=SECONDS] [--allow-rollback] [--runtime=onnx|torch]
          [--canary-tag=TAG --canary-weight=PERCENT [--canary-config=FILE] [--canary-steps=5,25,50,100]
           [--canary-promote-after=WINDOWS] [--signing-key=PEM] [--canary-state-dir=DIR] ...]

Pulls the tag's build at start, again when a signed notification arrives on POST /notify
(secret: $MODELGATE_NOTIFY_SECRET) and every --poll-interval seconds; verifies the signature and
digests, warms up on the build's golden data and swaps it in. By default it runs the bundle's
model.onnx on onnxruntime as the build's manifest declares it, and imports neither torch nor
anything of models/; --runtime=torch runs this checkout's model code, bound by digest to the
build. With --canary-tag, a second build follows that tag in the same process and takes
--canary-weight percent of requests (sticky by a request key), analysed window by window and
rolled back automatically (a signed history event with --signing-key); see
modelgate/serve/canary.py. GET /metrics serves Prometheus metrics.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from modelgate.cli import Parser, add_registry_flag, open_registry, run, user_path
from modelgate.registry import signing, tags
from modelgate.errors import UsageError
from modelgate.registry.uri import workspace_dir

PROG = "serve"
DEFAULT_STATE_DIR = Path(".modelgate") / "serve"


def build_parser() -> Parser:
    p = Parser(prog=PROG, description="Serve a model's tag; pull, verify, warm up and swap on promotion.")
    p.add_argument("--model", required=True, metavar="NAME", help="a model under models/")
    p.add_argument("--tag", required=True, metavar="TAG", help="the tag to follow (stable, canary, v1.2.0)")
    add_registry_flag(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    p.add_argument("--public-key", metavar="PEM", help=f"EC public key for manifest signatures (default: ${signing.ENV_PUBLIC_KEY})")
    p.add_argument("--poll-interval", type=float, default=30.0, metavar="SECONDS", help="look at the tag this often even without notifications (default: 30)")
    p.add_argument("--retry-refused", type=float, default=300.0, metavar="SECONDS", help="poll a refused build again after this long (default: 300)")
    p.add_argument("--notify-tolerance", type=float, default=300.0, metavar="SECONDS", help="refuse notifications signed further from now (default: 300)")
    p.add_argument("--state-dir", metavar="DIR", help="where fetched builds and the accepted tag state go; created by serve, or an empty directory (default: <workspace>/.modelgate/serve/<model>/<tag>)")
    p.add_argument("--allow-rollback", action="store_true", help="accept a tag state older than the one this service accepted before (an operator's decision; `registry rollback` does not need it)")
    p.add_argument("--read-timeout", type=float, default=30.0, metavar="SECONDS", help="a client must send its request head, and then its body, within this long (default: 30)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, metavar="N", help="largest /predict body (default: 1 MiB)")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="intra-op threads of the runtime (default: 1)")
    p.add_argument(
        "--runtime", choices=["onnx", "torch"], default="onnx",
        help="onnx: the build's model.onnx on onnxruntime (default); torch: this checkout's model code with the build's "
        "weights, refused unless every model source it imports is the one the build was made from",
    )  # fmt: skip
    c = p.add_argument_group("canary", "a second build beside the stable one, analysed and rolled back automatically")
    c.add_argument("--canary-tag", metavar="TAG", help="a channel tag whose build takes a share of requests (e.g. canary)")
    c.add_argument("--canary-weight", type=float, metavar="PERCENT", help="share of requests (of request keys) routed to the canary (default 10)")
    c.add_argument("--canary-config", metavar="FILE", help="JSON thresholds and schedule (keys of modelgate.serve.canary.CanaryConfig; flags override)")
    c.add_argument("--canary-steps", metavar="P,P,...", help="step-up schedule in percent, e.g. 5,25,50,100 (an operator's decision; default: stay at the weight)")
    c.add_argument("--canary-promote-after", type=int, metavar="WINDOWS", help="promote the canary to --tag after this many healthy windows at the last step (needs --signing-key; default 0: never)")
    c.add_argument("--canary-window-requests", type=int, metavar="N", help="canary requests per analysis window (default 100)")
    c.add_argument("--canary-window-seconds", type=float, metavar="SECONDS", help="... or this long, whichever comes first (default 30)")
    c.add_argument("--canary-min-samples", type=int, metavar="N", help="fewer canary requests in a window give no verdict (default 20)")
    c.add_argument("--canary-breach-windows", type=int, metavar="N", help="consecutive breaching windows that roll the canary back (default 2)")
    c.add_argument("--canary-shadow-fraction", type=float, metavar="SHARE", help="share of canary requests stable also answers, compared within the golden tolerances (default 0)")
    c.add_argument("--canary-key-header", metavar="NAME", help="the request header that keeps a client on one build (default X-Modelgate-Key; else X-Request-Id)")
    c.add_argument("--canary-state-dir", metavar="DIR", help="the canary's state directory (default: the state directory's path + .TAG)")
    c.add_argument("--signing-key", metavar="PEM", help="EC private key: record automatic rollbacks (and allowed promotions) as signed history events; without it a breaching canary only stops taking traffic")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--access-log", action="store_true", help="log every request")
    return p


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    tags.tag_kind(args.tag)
    for flag, value in (("--poll-interval", args.poll_interval), ("--max-body-bytes", args.max_body_bytes), ("--threads", args.threads), ("--read-timeout", args.read_timeout)):
        if value <= 0:
            raise UsageError(f"{flag} must be positive, got {value}")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s serve %(levelname)s %(message)s", stream=sys.stderr)

    tags.check_model_name(args.model)
    runtime = None
    if args.runtime == "torch":
        try:
            from modelgate.serve.torch_runtime import torch_runtime
        except ImportError as e:
            raise UsageError(f"--runtime=torch needs torch and this checkout's models/, which this installation lacks ({e})") from None
        try:
            runtime = torch_runtime(args.model, threads=args.threads)
        except LookupError as e:
            raise UsageError(str(e).strip("'\"")) from None
    uri, registry = open_registry(args.registry)
    workspace = workspace_dir()
    public_key = signing.public_key_setting(user_path(args.public_key), allow_dev_key=uri.is_default, workspace=workspace)
    state_dir = Path(user_path(args.state_dir)) if args.state_dir else workspace / DEFAULT_STATE_DIR / args.model / args.tag

    canary_config = None
    if args.canary_tag is not None:
        from modelgate.serve.canary import CanaryConfig

        tags.tag_kind(args.canary_tag)
        if args.canary_tag == args.tag:
            raise UsageError(f"--canary-tag must differ from --tag ({args.tag})")
        steps = None
        if args.canary_steps:
            try:
                steps = [float(x) for x in args.canary_steps.split(",")]
            except ValueError:
                raise UsageError(f"--canary-steps is a list of percentages like 5,25,50,100, got {args.canary_steps!r}") from None
        canary_config = CanaryConfig.load(
            Path(user_path(args.canary_config)) if args.canary_config else None,
            {
                "weight": args.canary_weight, "steps": steps, "promote_after": args.canary_promote_after,
                "window_requests": args.canary_window_requests, "window_seconds": args.canary_window_seconds,
                "min_samples": args.canary_min_samples, "breach_windows": args.canary_breach_windows,
                "shadow_fraction": args.canary_shadow_fraction,
                "key_header": args.canary_key_header.lower() if args.canary_key_header else None,
            },
        )  # fmt: skip
        if canary_config.promote_after and not args.signing_key:
            raise UsageError("--canary-promote-after needs --signing-key: a promotion is a signed history event")
    else:
        given = [flag for flag, value in vars(args).items() if flag.startswith("canary_") and value is not None]
        if given:
            raise UsageError(f"--{given[0].replace('_', '-')} needs --canary-tag")
    signing_key = None
    if args.signing_key:
        signing_key = user_path(args.signing_key)
        if not Path(signing_key).is_file():
            raise UsageError(f"--signing-key: no such file {signing_key}")

    import uvicorn

    from modelgate import notify
    from modelgate.serve.app import create_app, slow_client_protocol
    from modelgate.serve.canary import Canary, Service, default_canary_state_dir
    from modelgate.serve.deployment import Deployment, onnx_runtime
    from modelgate.serve.notifications import NotificationGuard

    secret = notify.secret_from_env()
    if secret is None:
        logging.getLogger("modelgate.serve").warning(
            "$%s is not set: POST /notify refuses everything; polling %s every %g s", notify.ENV_SECRET, args.tag, args.poll_interval
        )
    deployment = Deployment(
        args.model, args.tag, registry, public_key, state_dir, poll_interval_s=args.poll_interval, retry_refused_s=args.retry_refused,
        allow_rollback=args.allow_rollback, runtime=runtime or onnx_runtime(args.threads),
    )  # fmt: skip
    deployment.claim()  # fail here, in one line, if another service uses the state directory
    canary = None
    if canary_config is not None:
        canary_state = Path(user_path(args.canary_state_dir)) if args.canary_state_dir else default_canary_state_dir(state_dir, args.canary_tag)
        canary_deployment = Deployment(
            args.model, args.canary_tag, open_registry(args.registry)[1], public_key, canary_state,
            poll_interval_s=args.poll_interval, retry_refused_s=args.retry_refused, allow_rollback=args.allow_rollback,
            runtime=runtime or onnx_runtime(args.threads),
        )  # fmt: skip
        canary_deployment.claim()
        canary = Canary(
            canary_deployment, canary_config, stable_tag=args.tag, signing_key=signing_key,
            write_registry=open_registry(args.registry)[1] if signing_key else None,
        )  # fmt: skip
    service = Service(deployment, canary)
    guard = NotificationGuard(secret, tolerance_s=args.notify_tolerance)
    app = create_app(deployment, guard, max_body_bytes=args.max_body_bytes, read_timeout_s=args.read_timeout, service=service)
    logging.getLogger("modelgate.serve").info(
        "serving %s:%s from %s on http://%s:%d (state in %s)", args.model, args.tag, uri, args.host, args.port, state_dir
    )
    if canary is not None:
        logging.getLogger("modelgate.serve").info(
            "canary %s:%s takes %g%% of requests; automatic rollback %s", args.model, args.canary_tag, canary_config.start_weight,
            "signed with --signing-key" if signing_key else "stops routing only (no --signing-key)",
        )  # fmt: skip
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log,
        timeout_graceful_shutdown=30, http=slow_client_protocol(args.read_timeout),
    )  # fmt: skip
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1


def main(argv: list[str] | None = None) -> int:
    return run(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
