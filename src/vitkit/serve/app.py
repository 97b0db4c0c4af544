"""HTTP around :class:`~vitkit.serve.service.Service` (FastAPI; run by uvicorn).

Endpoints: ``POST /v1/predict`` (multipart files or JSON with base64 images; ``X-User-Id``
for sticky A/B arms), ``POST /v1/feedback``, ``GET /v1/models``, ``GET /v1/ab``,
``GET /livez``, ``GET /readyz``, ``GET /metrics``. User errors are JSON
``{"error", "detail"}`` with a 4xx status, never a 500 or a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from vitkit.data.images import BOMB, NOT_AN_IMAGE, ImageProblem, decode_rgb
from vitkit.serve.config import ServeConfig
from vitkit.serve.log import ab_report
from vitkit.serve.service import NoModelAvailable, RolloutError, Service, UnknownRoute

RETRY_AFTER_S = 1


class HttpProblem(Exception):
    def __init__(self, status: int, error: str, detail: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


def create_app(config: ServeConfig) -> FastAPI:
    service = Service(config)
    limits = config.limits
    admin_token = config.admin_token()

    def require_admin(request: Request) -> None:
        """``Authorization: Bearer <token>``, compared in constant time."""
        if admin_token is None:
            raise HttpProblem(403, "admin disabled", f"set {config.admin_token_env} (or "
                              "admin_token_file) when starting the server to enable admin "
                              "endpoints")
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HttpProblem(401, "unauthorized", "send Authorization: Bearer <token>",
                              {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(token.encode(), admin_token.encode()):
            raise HttpProblem(403, "forbidden", "wrong admin token")
    max_bytes = int(limits.max_upload_mb * 1024 * 1024)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.get_running_loop().create_task(service.load_all())
        try:
            yield
        finally:
            service.draining = True
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loading
            await service.close()

    app = FastAPI(title="vitkit", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.service = service

    @app.exception_handler(HttpProblem)
    async def _problem(_request: Request, exc: HttpProblem) -> JSONResponse:
        return JSONResponse({"error": exc.error, "detail": exc.detail}, exc.status,
                            headers=exc.headers)

    @app.middleware("http")
    async def _guard(request: Request, call_next: Any) -> Response:
        if service.draining and request.url.path not in ("/livez",):
            return JSONResponse({"error": "shutting down", "detail": "the server is stopping; "
                                 "retry on another instance"}, 503,
                                headers={"Retry-After": str(RETRY_AFTER_S)})
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            return _too_large(f"the request body is {int(length):,} bytes; the limit is "
                              f"{max_bytes:,} (limits.max_upload_mb)")
        return await call_next(request)

    @app.get("/livez")
    async def livez() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if service.ready and not service.draining:
            return JSONResponse({"status": "ready", "models": sorted(service.models)})
        state = "loading" if not service.loaded.is_set() else "no model could be loaded"
        return JSONResponse({"status": state, "errors": service.load_errors}, 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        for name, batcher in service.batchers.items():
            service.metrics.queue_depth.labels(name).set(batcher.depth)
        return Response(generate_latest(service.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return service.describe()

    @app.post("/v1/predict")
    async def predict(request: Request) -> dict[str, Any]:
        payloads = await _read_images(request, limits.max_images, max_bytes)
        loop = asyncio.get_running_loop()
        images = await asyncio.gather(*[
            loop.run_in_executor(service.decoders, _decode, data, name, limits.max_pixels)
            for name, data in payloads])
        try:
            answers = await service.answer(images, request.headers.get("x-user-id"),
                                           request.query_params.get("route"))
        except UnknownRoute as exc:
            raise HttpProblem(404, "unknown route", f"no route '{exc}'; routes: "
                              f"{', '.join(config.routes)}") from None
        except NoModelAvailable as exc:
            raise HttpProblem(503, "overloaded" if exc.overloaded else "no model available",
                              str(exc), {"Retry-After": str(RETRY_AFTER_S)}) from None
        for (name, _), answer in zip(payloads, answers, strict=True):
            answer["image"] = name
        return {"predictions": answers}

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> dict[str, Any]:
        body = await _json_body(request)
        request_id, label = body.get("request_id"), body.get("label")
        if not isinstance(request_id, str) or not isinstance(label, str):
            raise HttpProblem(422, "bad feedback", 'send {"request_id": "...", "label": "..."}')
        if service.log is None:
            raise HttpProblem(409, "no request log", "this server keeps no request log "
                              "(log.url is null), so feedback cannot be recorded")
        found = await asyncio.get_running_loop().run_in_executor(
            None, service.log.feedback, request_id, label)
        if not found:
            raise HttpProblem(404, "unknown request id", f"no answered image has request_id "
                              f"{request_id!r}")
        return {"request_id": request_id, "label": label, "recorded": True}

    @app.get("/v1/ab")
    async def ab(route: str | None = None) -> dict[str, Any]:
        if service.log is None:
            raise HttpProblem(409, "no request log", "A/B figures come from the request log, "
                              "which is off (log.url is null)")
        rows = await asyncio.get_running_loop().run_in_executor(None, service.log.rows)
        return ab_report(rows, route)

    @app.post("/admin/models/{name}/candidate", status_code=202)
    async def candidate(name: str, request: Request) -> dict[str, Any]:
        require_admin(request)
        body = await _json_body(request)
        bundle = body.get("bundle")
        if not isinstance(bundle, str):
            raise HttpProblem(422, "bad request", 'send {"bundle": "/path/to/bundle", '
                              '"variant": optional}')
        try:
            return await service.start_candidate(name, bundle, body.get("variant"))
        except RolloutError as exc:
            raise HttpProblem(exc.status, "candidate refused", str(exc)) from None

    @app.post("/admin/models/{name}/rollback")
    async def rollback(name: str, request: Request) -> dict[str, Any]:
        require_admin(request)
        try:
            return service.rollback(name)
        except RolloutError as exc:
            raise HttpProblem(exc.status, "nothing to roll back", str(exc)) from None

    @app.get("/", response_class=PlainTextResponse)
    async def index() -> str:
        return ("vitkit serve: POST images to /v1/predict (multipart 'files', or JSON "
                '{"images": [base64, ...]}); see /docs, /v1/models, /metrics.\n')

    return app


def _too_large(detail: str) -> JSONResponse:
    return JSONResponse({"error": "too large", "detail": detail}, 413)


async def _read_images(request: Request, max_images: int, max_bytes: int
                       ) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of every image in a multipart or JSON request."""
    content_type = request.headers.get("content-type", "")
    body = await _bounded_body(request, max_bytes)
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=max_images + 1, max_fields=max_images + 8)
        files = [(getattr(v, "filename", None) or k, v) for k, v in form.multi_items()
                 if hasattr(v, "read")]
        if len(files) > max_images:
            raise HttpProblem(413, "too many images", f"at most {max_images} images per "
                              "request (limits.max_images)")
        payloads = [(name, await upload.read()) for name, upload in files]
    elif content_type.startswith("application/json"):
        payloads = _base64_images(_parse_json(body), max_images)
    else:
        raise HttpProblem(415, "unsupported request", "send multipart/form-data with image "
                          'files, or application/json {"images": ["<base64>", ...]}')
    if not payloads:
        raise HttpProblem(422, "no image", "the request holds no image")
    return payloads


async def _bounded_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused past ``max_bytes`` even without a Content-Length (chunked)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HttpProblem(413, "too large", f"the request body is over {max_bytes:,} bytes "
                              "(limits.max_upload_mb)")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # noqa: SLF001 - lets request.form()/json() parse what was read
    return body


async def _json_body(request: Request) -> dict[str, Any]:
    return _parse_json(await _bounded_body(request, 1024 * 1024))


def _parse_json(body: bytes) -> dict[str, Any]:
    import json

    try:
        value = json.loads(body or b"null")
    except ValueError as exc:
        raise HttpProblem(422, "bad json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise HttpProblem(422, "bad json", "the body must be a JSON object")
    return value


def _base64_images(body: dict[str, Any], max_images: int) -> list[tuple[str, bytes]]:
    items = body.get("images", [body["image"]] if "image" in body else None)
    if not isinstance(items, list):
        raise HttpProblem(422, "bad json", 'send {"images": ["<base64>", ...]} or '
                          '{"image": "<base64>"}')
    if len(items) > max_images:
        raise HttpProblem(413, "too many images", f"at most {max_images} images per request "
                          "(limits.max_images)")
    decoded = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise HttpProblem(422, "bad json", f"images[{i}] is not a base64 string")
        try:
            decoded.append((f"images[{i}]", base64.b64decode(item.split(",")[-1],
                                                             validate=True)))
        except (binascii.Error, ValueError):
            raise HttpProblem(422, "bad base64", f"images[{i}] is not valid base64") from None
    return decoded


def _decode(data: bytes, name: str, max_pixels: int) -> Image.Image:
    try:
        image, _ = decode_rgb(data, max_pixels)
    except ImageProblem as problem:
        status = {BOMB: 413, NOT_AN_IMAGE: 415}.get(problem.kind, 422)
        raise HttpProblem(status, problem.kind, f"{name}: {problem.reason}") from None
    return image
