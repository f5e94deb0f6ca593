"""The HTTP service: FastAPI routes over a Deployment.

    POST /predict   {"inputs": {...}} -> {"model", "tag", "build_hash", "outputs": {...}}
    GET  /healthz   200 while a verified build is serving (with the latest problem, if any), 503 before the first one
    GET  /version   model, tag, build hash, file digests, since when, and why a rollout was refused;
                    with a canary, its build, weight, analysis windows, rollbacks ("canary")
    GET  /metrics   Prometheus metrics (modelgate.serve.metrics)
    GET  /schema    the model's inputs and outputs
    GET  /ui        the registry as a page for this model: tags, history timeline, metrics over time,
                    receipts and lineage (modelgate.report; 501 where the service was packaged without it)
    POST /notify    a signed promotion event (modelgate.notify): look at the tag now
    /v2/...         the Open Inference Protocol v2 (modelgate.serve.oip): health, model
                    metadata, readiness and inference, as KServe, Triton and MLServer serve it

Bodies are read up to a limit before anything parses them (413 beyond it), and within
`read_timeout_s` (408 beyond it; a client that has not sent its headers by then is cut off by
`slow_client_protocol`). With a canary (modelgate.serve.canary), each answer comes from the arm
the request is routed to, and says which: "arm" and "build_hash" in /predict's JSON,
`model_version` under /v2, and X-Modelgate-Build / X-Modelgate-Arm headers on both. Errors are JSON {"detail": "<one sentence>"}: 400 for a body that is not
JSON or is nested too deeply, 408 for one too slow, 413 for one too large, 422 for JSON that does
not fit the model's inputs, 503 when nothing is serving yet. Under /v2 the same errors are
{"error": "<one sentence>"}, as the protocol has them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelgate.errors import InputError, ModelgateError
from modelgate.serve import metrics as metrics_lib
from modelgate.serve import oip, schema
from modelgate.serve.canary import Service, headers_of
from modelgate.serve.deployment import Deployment, short
from modelgate.serve.notifications import NotificationGuard

log = logging.getLogger("modelgate.serve")

DEFAULT_MAX_BODY_BYTES = 1 << 20
MAX_NOTIFY_BODY_BYTES = 64 << 10
DEFAULT_READ_TIMEOUT_S = 30.0


async def read_body(request: Request, limit: int, timeout_s: float = DEFAULT_READ_TIMEOUT_S) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes, and
    with 408 when it has not arrived within `timeout_s` (a slow or stalled client)."""
    # A timer that cancels this task, not asyncio.wait_for: that makes a task of its own for every
    # request (5-9% of the service's throughput on a small model, tools/bench/serving_bench.py).
    task = asyncio.current_task()
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(timeout_s, expire)
    try:
        return await _read_body(request, limit)
    except asyncio.CancelledError:
        if expired:
            task.uncancel()
            raise HTTPException(408, f"request body not received within {timeout_s:g} s") from None
        raise
    finally:
        timer.cancel()


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HTTPException(400, "malformed Content-Length header") from None
        if size > limit:
            raise HTTPException(413, f"request body of {size} bytes exceeds the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
    return bytes(body)


def create_app(
    deployment: Deployment,
    guard: NotificationGuard,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    manage_deployment: bool = True,
    service: Service | None = None,
) -> FastAPI:
    """The app over `service` (by default the deployment alone, no canary). With
    manage_deployment, its lifespan starts and stops the rollout workers."""
    service = service or Service(deployment)
    deployments = service.deployments()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if manage_deployment:
            for d in deployments:
                d.start()
        try:
            yield
        finally:
            if manage_deployment:
                for d in deployments:
                    d.stop()

    app = FastAPI(title=f"modelgate serve: {deployment.model_name}:{deployment.tag}", lifespan=lifespan)

    def serving():
        served = deployment.current  # one reference for the whole request: a swap cannot split it
        if served is None:
            raise HTTPException(503, f"no build is serving yet: {deployment.problem or 'starting up, looking at the tag'}")
        return served

    def unavailable(reason: str) -> HTTPException:
        return HTTPException(503, f"no build is serving yet: {reason}")

    def inline() -> bool:
        """Whether requests run on the event loop: every build that may answer (stable, and the
        canary where there is one) answers within deployment.INLINE_BELOW_S. A thread hop costs
        more than such a model (0.82x MLServer's throughput with the hop, on par without); a slow
        model goes to the threadpool, so that it does not hold up health checks and other requests."""
        builds = [deployment.current] + ([service.canary.deployment.current] if service.canary else [])
        return deployment.current is not None and all(b.inline for b in builds if b is not None)

    async def off_the_loop(function, *args):
        if inline():
            return function(*args)
        return await run_in_threadpool(function, *args)

    def predict_sync(body: bytes, headers) -> tuple[dict, dict]:
        try:
            payload = schema.parse_json(body)
            answer = service.answer(
                headers,
                parse=lambda served: schema.to_arrays(served.model_name, served.signature, payload, served.text),
                encode=lambda served, outputs: schema.to_json_outputs(outputs),
                unavailable=unavailable,
            )
        except InputError as e:
            raise HTTPException(e.status, e.message) from None
        served = answer.served
        doc = {"model": served.model_name, "tag": served.tag, "arm": answer.arm, "build_hash": served.build_hash, "outputs": answer.result}
        return doc, headers_of(answer)

    @app.post("/predict")
    async def predict(request: Request):
        body = await read_body(request, max_body_bytes, read_timeout_s)
        doc, headers = await off_the_loop(predict_sync, body, request.headers)
        return JSONResponse(doc, headers=headers)

    @app.get("/healthz")
    async def healthz():
        served = deployment.current
        if served is None:
            return JSONResponse({"status": "starting", "error": deployment.problem}, status_code=503)
        return {"status": "ok", "build_hash": served.build_hash, "error": deployment.problem}  # serving, and why not a newer build

    @app.get("/version")
    async def version():
        doc = service.version()
        doc["notifications"] = {"accepted": guard.accepted, "refused": guard.refused}
        return doc

    @app.get("/metrics")
    async def get_metrics():
        return Response(service.metrics.render(), media_type=metrics_lib.CONTENT_TYPE)

    @app.get("/ui")
    async def ui():
        try:
            from modelgate.report import registry_page, render
        except ImportError as e:  # serve_package leaves the report's libraries out (matplotlib, Jinja2)
            raise HTTPException(501, f"this service was packaged without the registry page ({e.name} is not installed)") from None
        served = deployment.current
        where = f"GET /ui of serve {deployment.model_name}:{deployment.tag}" + (f", serving {short(served.build_hash)}" if served else "")
        try:
            html = await run_in_threadpool(registry_page.registry_page, deployment.registry, models=[deployment.model_name], generated_by=where)
        except ModelgateError as e:
            raise HTTPException(503, f"cannot read {deployment.model_name} from {deployment.registry.uri}: {str(e).splitlines()[0]}") from None
        return Response(html, media_type="text/html; charset=utf-8", headers={"Content-Security-Policy": render.CONTENT_SECURITY_POLICY})

    @app.get("/schema")
    async def get_schema():
        served = serving()
        return schema.describe(served.model_name, served.signature)

    # ---- the Open Inference Protocol v2

    def model_at(model: str, version: str | None):
        served = serving()
        if model != served.model_name:
            raise HTTPException(404, f"model {model!r} is not served here; this service serves {served.model_name}")
        if version is not None:
            for candidate in [served] + ([service.canary.deployment.current] if service.canary else []):
                if candidate is not None and len(version) >= 12 and candidate.build_hash.startswith(version):
                    return candidate
            raise HTTPException(404, f"version {version!r} of {model} is not serving; the serving version is {served.build_hash}")
        return served

    @app.get("/v2")
    async def v2_server():
        return oip.SERVER

    @app.get("/v2/health/live")
    async def v2_live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def v2_ready():
        if deployment.current is None:
            return JSONResponse({"ready": False, "error": deployment.problem or "no build is serving yet"}, status_code=503)
        return {"ready": True}

    @app.get("/v2/models/{model}")
    @app.get("/v2/models/{model}/versions/{version}")
    async def v2_metadata(model: str, version: str | None = None):
        served = model_at(model, version)
        return oip.metadata(served.model_name, served.build_hash, served.signature, served.runtime)

    @app.get("/v2/models/{model}/ready")
    @app.get("/v2/models/{model}/versions/{version}/ready")
    async def v2_model_ready(model: str, version: str | None = None):
        served = model_at(model, version)
        return {"name": served.model_name, "ready": True}

    def infer_sync(model: str, version: str | None, body: bytes, headers) -> tuple[bytes, dict]:
        pinned = model_at(model, version) if version is not None else None
        if pinned is None:
            model_at(model, None)
        try:
            doc, binary = oip.split_body(body, headers)
            answer = service.answer(
                headers,
                parse=lambda served: oip.request_arrays(served.model_name, served.signature, served.text, doc, binary),
                encode=lambda served, outputs: oip.response(served.model_name, served.build_hash, served.signature, doc, outputs),
                unavailable=unavailable,
                pinned=pinned,
            )
        except InputError as e:
            raise HTTPException(e.status, e.message) from None
        content, response_headers = oip.encode_response(*answer.result)
        return content, {**response_headers, **headers_of(answer)}

    @app.post("/v2/models/{model}/infer")
    @app.post("/v2/models/{model}/versions/{version}/infer")
    async def v2_infer(model: str, request: Request, version: str | None = None):
        body = await read_body(request, max_body_bytes, read_timeout_s)
        content, headers = await off_the_loop(infer_sync, model, version, body, request.headers)
        return Response(content, headers=headers)

    @app.post("/notify")
    async def notify(request: Request):
        body = await read_body(request, MAX_NOTIFY_BODY_BYTES, read_timeout_s)
        verdict = guard.check(body, request.headers)
        if not verdict.accepted:
            log.warning("refused a notification from %s: %s", request.client.host if request.client else "?", verdict.reason)
            raise HTTPException(verdict.status, verdict.reason)
        try:
            event = schema.parse_json(body)
        except schema.InputError as e:
            raise HTTPException(e.status, f"notification: {e.message}") from None
        model, tag = (event.get("model"), event.get("tag")) if isinstance(event, dict) else (None, None)
        if not isinstance(model, str) or not isinstance(tag, str):
            raise HTTPException(400, "a notification body is a JSON object with at least 'model' and 'tag'")
        target = service.deployment_for(tag) if model == deployment.model_name else None
        if target is None:
            served_tags = ", ".join(f"{d.model_name}:{d.tag}" for d in deployments)
            return JSONResponse({"accepted": False, "reason": f"this service serves {served_tags}, not {model}:{tag}"}, status_code=200)
        build_hash = event.get("build_hash") if isinstance(event.get("build_hash"), str) else None
        log.info("notified: %s:%s -> %s; checking the tag", model, tag, short(build_hash))
        seq = event.get("seq")
        target.request_check("notify", announced_seq=seq if type(seq) is int else None)
        return JSONResponse({"accepted": True}, status_code=202)

    def error(request: Request, status: int, message: str) -> JSONResponse:
        key = "error" if request.url.path.startswith("/v2") else "detail"
        return JSONResponse({key: message}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        return error(request, e.status_code, str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, e: RequestValidationError):
        return error(request, 422, f"invalid request: {e.errors()[0].get('msg', 'malformed') if e.errors() else 'malformed'}")

    @app.exception_handler(RecursionError)
    async def too_deep(request: Request, e: RecursionError):
        return error(request, 400, "request nested too deeply")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return error(request, 500, f"internal error: {type(e).__name__}: {e}")

    return app


def slow_client_protocol(read_timeout_s: float):
    """uvicorn's h11 protocol, plus a deadline on each request's headers: a client that has not
    sent a complete request head within `read_timeout_s` of connecting (or of its previous
    response) gets 408 and is disconnected, so slow clients cannot hold connections forever.
    Bodies have their own deadline in read_body."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    body = b'{"detail":"request headers not received within %g s"}' % read_timeout_s
    response = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )

    class SlowClientProtocol(H11Protocol):
        _head_deadline = None

        def _arm(self) -> None:
            self._disarm()
            self._head_deadline = self.loop.call_later(read_timeout_s, self._head_timeout)
            self._partial = False  # no byte of the next request yet

        def _disarm(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None

        def _head_timeout(self) -> None:
            self._head_deadline = None
            in_request = self.cycle is not None and not self.cycle.response_complete
            if not in_request and not self.transport.is_closing():
                if self._partial:  # a request head begun and not finished: say why
                    self.transport.write(response)
                self.transport.close()  # an idle keep-alive connection is just closed

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            self._partial = True
            super().data_received(data)
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # the head is complete: the body's deadline is read_body's

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return SlowClientProtocol
