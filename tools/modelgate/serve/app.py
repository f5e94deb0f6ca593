"""The HTTP service: FastAPI routes over a Deployment.

    POST /predict   {"inputs": {...}} -> {"model", "tag", "build_hash", "outputs": {...}}
    GET  /healthz   200 while a verified build is serving, 503 before the first one
    GET  /version   model, tag, build hash, file digests, since when, and why a rollout was refused
    GET  /schema    the model's inputs and outputs
    POST /notify    a signed promotion event (modelgate.notify): look at the tag now

Bodies are read up to a limit before anything parses them (413 beyond it). Errors are JSON
{"detail": "<one sentence>"}: 400 for a body that is not JSON, 413 for one too large, 422 for
JSON that does not fit the model's inputs, 503 when nothing is serving yet.
"""

from __future__ import annotations

import contextlib
import json
import logging

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from modelgate.serve import schema
from modelgate.serve.deployment import Deployment, short
from modelgate.serve.notifications import NotificationGuard

log = logging.getLogger("modelgate.serve")

DEFAULT_MAX_BODY_BYTES = 1 << 20
MAX_NOTIFY_BODY_BYTES = 64 << 10


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes."""
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
    manage_deployment: bool = True,
) -> FastAPI:
    """The app. With manage_deployment, its lifespan starts and stops the rollout worker."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if manage_deployment:
            deployment.start()
        try:
            yield
        finally:
            if manage_deployment:
                deployment.stop()

    app = FastAPI(title=f"modelgate serve: {deployment.model_name}:{deployment.tag}", lifespan=lifespan)

    def predict_sync(body: bytes) -> dict:
        served = deployment.current  # one reference for the whole request: a swap cannot split it
        if served is None:
            raise HTTPException(503, f"no build is serving yet: {deployment.problem or 'starting up, looking at the tag'}")
        try:
            payload = schema.parse_json(body)
            inputs = schema.to_tensors(served.spec, payload)
            try:
                outputs = served.forward(inputs)
            except (ValueError, RuntimeError, IndexError) as e:
                first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
                raise schema.InputError(422, f"the model cannot run on these inputs: {first}") from None
        except schema.InputError as e:
            raise HTTPException(e.status, e.message) from None
        return {
            "model": served.model_name,
            "tag": served.tag,
            "build_hash": served.build_hash,
            "outputs": schema.to_json_outputs(outputs),
        }

    @app.post("/predict")
    async def predict(request: Request):
        body = await read_body(request, max_body_bytes)
        return JSONResponse(await run_in_threadpool(predict_sync, body))

    @app.get("/healthz")
    async def healthz():
        served = deployment.current
        if served is None:
            return JSONResponse({"status": "starting", "error": deployment.problem}, status_code=503)
        return {"status": "ok", "build_hash": served.build_hash}

    @app.get("/version")
    async def version():
        doc = deployment.version()
        doc["notifications"] = {"accepted": guard.accepted, "refused": guard.refused}
        return doc

    @app.get("/schema")
    async def get_schema():
        served = deployment.current
        return schema.describe(served.spec if served else deployment.spec)

    @app.post("/notify")
    async def notify(request: Request):
        body = await read_body(request, MAX_NOTIFY_BODY_BYTES)
        verdict = guard.check(body, request.headers)
        if not verdict.accepted:
            log.warning("refused a notification from %s: %s", request.client.host if request.client else "?", verdict.reason)
            raise HTTPException(verdict.status, verdict.reason)
        try:
            event = json.loads(body)
            model, tag = event["model"], event["tag"]
        except (ValueError, KeyError, TypeError):
            raise HTTPException(400, "a notification body is a JSON object with at least 'model' and 'tag'") from None
        if model != deployment.model_name or tag != deployment.tag:
            return JSONResponse(
                {"accepted": False, "reason": f"this service serves {deployment.model_name}:{deployment.tag}, not {model}:{tag}"},
                status_code=200,
            )
        log.info("notified: %s:%s -> %s; checking the tag", model, tag, short(event.get("build_hash")))
        deployment.request_check("notify")
        return JSONResponse({"accepted": True}, status_code=202)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error: {type(e).__name__}: {e}"}, status_code=500)

    return app
