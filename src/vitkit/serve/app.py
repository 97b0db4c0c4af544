"""HTTP around :class:`~vitkit.serve.service.Service` (FastAPI; run by uvicorn).

Endpoints: ``POST /v1/predict`` (multipart files, JSON with base64 images, or one raw
``image/*`` body; ``X-User-Id`` for sticky A/B arms; ``?route=``, ``?maps=1`` for anomaly heat
maps), ``POST /v1/feedback``, ``GET /v1/models``, ``/v1/ab``, ``/v1/drift``, ``GET|HEAD
/livez``, ``/readyz``, ``GET /metrics``, the Open Inference Protocol v2 (:mod:`vitkit.serve.v2`),
admin (``POST /admin/models/{name}/candidate|rollback``, bearer token, rate-limited) and a web
page at ``/``; ``/docs`` works offline.

Every answer carries ``X-Request-Id`` (the client's, when it sends a sane one, or a new one)
and is counted in ``vitkit_http_requests_total`` by route and status, 4xx included. User
errors are JSON ``{"error", "detail"}`` with a 4xx status, never a 500 or a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import re
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from vitkit.data.images import BOMB, NOT_AN_IMAGE, ImageProblem, decode_rgb
from vitkit.serve.auth import AdminGuard, check_token
from vitkit.serve.config import ServeConfig
from vitkit.serve.errors import HttpProblem
from vitkit.serve.log import LogUnavailable, ab_report
from vitkit.serve.page import PAGE
from vitkit.serve.schemas import (
    EXTRA_SCHEMAS,
    Candidate,
    Feedback,
    FeedbackRecorded,
    PredictImages,
    Predictions,
    parse,
    problem_responses,
    request_body,
)
from vitkit.serve.service import (
    NoModelAvailable,
    RequestTooLarge,
    RolloutError,
    Service,
    UnknownRoute,
)
from vitkit.serve.v2 import v2_router

RETRY_AFTER_S = 1
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
RAW_IMAGE_TYPES = ("image/",)
# /v1/predict reads its inputs itself; declared here so that clients, /docs and the schema
# fuzzer see them (a raw body may also be sent as image/jpeg, image/png, …).
PREDICT_INPUTS = {
    **request_body(PredictImages, "multipart/form-data", "application/octet-stream"),
    "parameters": [
        {"name": "route", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "the A/B route (default: default); an unknown one is a 404"},
        {"name": "maps", "in": "query", "required": False,
         "schema": {"type": "string", "enum": ["0", "1", "true", "false"]},
         "description": "1: anomaly heat maps in the answer"},
        {"name": "X-User-Id", "in": "header", "required": False,
         "schema": {"type": "string"}, "description": "sticky A/B arm for this user"}]}
access_log = logging.getLogger("vitkit.access")

__all__ = ["HttpProblem", "create_app"]


def create_app(config: ServeConfig) -> FastAPI:
    """The application; raises :class:`~vitkit.errors.ConfigError` for an admin token that is
    too short (checked here, at start-up, not at the first admin call)."""
    token = config.admin_token()
    token_source = config.admin_token_file or config.admin_token_env
    check_token(token, token_source)
    service = Service(config)
    limits = config.limits
    guard = AdminGuard(token, f"{config.admin_token_env} (or admin_token_file)")
    max_bytes = int(limits.max_upload_mb * 1024 * 1024)

    def require_admin(request: Request) -> None:
        guard.check(request.headers.get("authorization"), _client(request))

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

    app = FastAPI(title="vitkit", lifespan=lifespan, docs_url=None, redoc_url=None,
                  responses=problem_responses(413, 503))
    app.state.service = service
    _offline_docs(app)
    if config.cors.allow_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=config.cors.allow_origins,
                           allow_methods=config.cors.allow_methods,
                           allow_headers=config.cors.allow_headers,
                           expose_headers=["X-Request-Id", "Retry-After"], max_age=600)

    @app.exception_handler(HttpProblem)
    async def _problem(_request: Request, exc: HttpProblem) -> JSONResponse:
        return JSONResponse({"error": exc.error, "detail": exc.detail}, exc.status,
                            headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, exc: HTTPException) -> JSONResponse:
        name = {404: "not found", 405: "method not allowed"}.get(exc.status_code, "bad request")
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404:
            detail = "no such endpoint; see /docs or GET /v1/models"
        return JSONResponse({"error": name, "detail": detail}, exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors()[:5])
        return JSONResponse({"error": "bad request", "detail": problems}, 422)

    @app.middleware("http")
    async def _edge(request: Request,
                    call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        given = request.headers.get("x-request-id", "")
        request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        request.state.request_id = request_id
        response = await _guarded(request, call_next)
        response.headers["X-Request-Id"] = request_id
        route = request.scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        seconds = time.perf_counter() - started
        service.metrics.http_requests.labels(request.method, template,
                                             str(response.status_code)).inc()
        service.metrics.http_latency.labels(template).observe(seconds)
        if config.access_log:
            access_log.info('%s "%s %s" %d %.1f ms id=%s', _client(request), request.method,
                            request.url.path, response.status_code, 1000 * seconds, request_id)
        return response

    async def _guarded(request: Request,
                       call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if service.draining and request.url.path not in ("/livez",):
            return JSONResponse({"error": "shutting down", "detail": "the server is stopping; "
                                 "retry on another instance"}, 503,
                                headers={"Retry-After": str(RETRY_AFTER_S)})
        length = request.headers.get("content-length")
        if length is not None and length.isascii() and length.isdigit() \
                and int(length) > max_bytes:
            return JSONResponse({"error": "too large", "detail": f"the request body is "
                                 f"{int(length):,} bytes; the limit is {max_bytes:,} "
                                 "(limits.max_upload_mb)"}, 413)
        try:
            return await call_next(request)
        except Exception:  # noqa: BLE001 - a bug must still answer JSON, and be logged
            logging.getLogger("vitkit.serve").exception("internal error in %s %s",
                                                        request.method, request.url.path)
            return JSONResponse({"error": "internal error", "detail": "the server failed on "
                                 f"this request; its log has the details (request id "
                                 f"{request.state.request_id})"}, 500)

    # ------------------------------------------------------------------ health, metrics
    @app.api_route("/livez", methods=["GET", "HEAD"], tags=["health"])
    async def livez() -> dict[str, str]:
        return {"status": "alive"}

    @app.api_route("/readyz", methods=["GET", "HEAD"], tags=["health"],
                   responses=problem_responses(503))
    async def readyz() -> JSONResponse:
        state = service.readiness()
        return JSONResponse(state, 200 if state["status"] in ("ready", "degraded") else 503,
                            headers=None if state["status"] != "loading"
                            else {"Retry-After": str(RETRY_AFTER_S)})

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def metrics() -> Response:
        service.refresh_gauges()
        return Response(generate_latest(service.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------------ v1
    @app.get("/v1/models", tags=["v1"])
    async def models(request: Request) -> dict[str, Any]:
        """The models, routes and fallback; bundle paths and load errors only for admin
        callers (``Authorization: Bearer <token>``)."""
        return service.describe(admin=guard.is_admin(request.headers.get("authorization")))

    @app.post("/v1/predict", tags=["v1"], openapi_extra=PREDICT_INPUTS,
              responses={200: {"model": Predictions},
                         **problem_responses(404, 413, 415, 422, 503)})
    async def predict(request: Request) -> dict[str, Any]:
        payloads = await _read_images(request, limits.max_images, max_bytes)
        loop = asyncio.get_running_loop()
        images = await asyncio.gather(*[
            loop.run_in_executor(service.decoders, _decode, data, name, limits.max_pixels)
            for name, data in payloads])
        route = request.query_params.get("route")
        try:
            answers = await service.answer(
                images, request.headers.get("x-user-id"), route,
                with_maps=request.query_params.get("maps", "").lower() in ("1", "true"))
        except UnknownRoute as exc:
            raise HttpProblem(404, "unknown route", f"no route '{exc}'; routes: "
                              f"{', '.join(config.routes)}") from None
        except RequestTooLarge as exc:
            raise HttpProblem(413, "too many images", str(exc)) from None
        except NoModelAvailable as exc:
            raise HttpProblem(503, "overloaded" if exc.overloaded else "no model available",
                              str(exc), {"Retry-After": str(RETRY_AFTER_S)}) from None
        for (name, _), answer in zip(payloads, answers, strict=True):
            answer["image"] = name
        return {"predictions": answers}

    @app.post("/v1/feedback", tags=["v1"], openapi_extra=request_body(Feedback),
              responses={200: {"model": FeedbackRecorded},
                         **problem_responses(404, 409, 422, 503)})
    async def feedback(request: Request) -> dict[str, Any]:
        body = parse(Feedback, await _json_body(request), "feedback")
        if service.log is None:
            raise HttpProblem(409, "no request log", "this server keeps no request log "
                              "(log.url is null), so feedback cannot be recorded")
        try:
            outcome = await asyncio.get_running_loop().run_in_executor(
                None, service.record_feedback, body.request_id, body.label, body.replace)
        except LogUnavailable as exc:
            raise HttpProblem(503, "request log unavailable", f"the request-log database "
                              f"does not answer ({exc}); retry later",
                              {"Retry-After": "5"}) from None
        except ValueError as exc:
            raise HttpProblem(422, "unknown label", str(exc)) from None
        if outcome == "unknown":
            raise HttpProblem(404, "unknown request id", f"no answered image has request_id "
                              f"{body.request_id!r}")
        if outcome == "conflict":
            raise HttpProblem(409, "feedback already recorded", f"{body.request_id!r} already "
                              'has another label; send "replace": true to overwrite it')
        return {"request_id": body.request_id, "label": body.label, "recorded": True}

    @app.get("/v1/drift", tags=["v1"])
    async def drift() -> dict[str, Any]:
        return {name: {"version": service.slots[name].model.version if name in service.slots
                       else None, "window": monitor.config.window,
                       "every": monitor.config.every, "checks": monitor.checks,
                       "last": monitor.report}
                for name, monitor in service.drift.items()}

    @app.get("/v1/ab", tags=["v1"], responses=problem_responses(409, 503))
    async def ab(route: str | None = None) -> dict[str, Any]:
        if service.log is None:
            raise HttpProblem(409, "no request log", "A/B figures come from the request log, "
                              "which is off (log.url is null)")
        try:
            rows = await asyncio.get_running_loop().run_in_executor(None, service.log.rows)
        except LogUnavailable as exc:
            raise HttpProblem(503, "request log unavailable", str(exc),
                              {"Retry-After": "5"}) from None
        return ab_report(rows, route)

    # ------------------------------------------------------------------ admin
    admin_errors = problem_responses(401, 403, 404, 409, 422, 429)

    @app.post("/admin/models/{name}/candidate", status_code=202, tags=["admin"],
              openapi_extra=request_body(Candidate), responses=admin_errors)
    async def candidate(name: str, request: Request) -> dict[str, Any]:
        require_admin(request)
        body = parse(Candidate, await _json_body(request), "candidate")
        try:
            return await service.start_candidate(name, body.bundle, body.variant)
        except RolloutError as exc:
            raise HttpProblem(exc.status, "candidate refused", str(exc)) from None

    @app.post("/admin/models/{name}/rollback", tags=["admin"], responses=admin_errors)
    async def rollback(name: str, request: Request) -> dict[str, Any]:
        require_admin(request)
        try:
            return await service.rollback(name)
        except RolloutError as exc:
            raise HttpProblem(exc.status, "nothing to roll back", str(exc)) from None

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return PAGE

    app.include_router(v2_router(service, max_bytes, _bounded_body,
                                 lambda data, name: _decode(data, name, limits.max_pixels)))
    _with_extra_schemas(app)
    return app


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _offline_docs(app: FastAPI) -> None:
    """Swagger UI from the ``swagger-ui-bundle`` package's files, not a CDN: ``/docs`` works
    on a machine without internet."""
    from fastapi.openapi.docs import get_swagger_ui_html

    try:
        import swagger_ui_bundle
        from starlette.staticfiles import StaticFiles
    except ImportError:
        return
    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path),
              name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="vitkit API",
                                   swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/assets/swagger-ui.css",
                                   swagger_favicon_url="/docs/assets/favicon-32x32.png")


def _with_extra_schemas(app: FastAPI) -> None:
    """Adds the bodies declared with :func:`~vitkit.serve.schemas.request_body` to the
    OpenAPI components, and gives each method of a ``GET|HEAD`` route its own operationId
    (FastAPI gives both the route's one id; OpenAPI wants them unique, and generated clients
    and schemathesis key operations by it)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Duplicate Operation ID")  # made unique below
                schema = get_openapi(title=app.title, version=app.version, routes=app.routes,
                                     description="vitkit serve: see /docs")
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                EXTRA_SCHEMAS)
            seen: set[str] = set()
            for operations in schema.get("paths", {}).values():
                for method, operation in operations.items():
                    if operation.get("operationId") in seen:  # livez_livez_get -> …_head
                        operation["operationId"] = re.sub(
                            r"(_get)?$", f"_{method}", operation["operationId"], count=1)
                    seen.add(operation.get("operationId"))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


async def _read_images(request: Request, max_images: int, max_bytes: int
                       ) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of every image in a multipart, JSON or raw image request."""
    content_type = request.headers.get("content-type", "").lower()
    body = await _bounded_body(request, max_bytes)
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=max_images, max_fields=max_images + 8)
        except HTTPException as exc:  # starlette refuses too many parts or a broken body
            if "too many" in str(exc.detail).lower():
                raise HttpProblem(413, "too many images", f"at most {max_images} images per "
                                  f"request (limits.max_images): {exc.detail}") from None
            raise HttpProblem(422, "bad multipart body", str(exc.detail)) from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpProblem(422, "bad multipart body", str(exc)[:200]) from None
        files = [(getattr(v, "filename", None) or k, v) for k, v in form.multi_items()
                 if hasattr(v, "read")]
        if len(files) > max_images:
            raise HttpProblem(413, "too many images", f"at most {max_images} images per "
                              "request (limits.max_images)")
        payloads = [(str(name)[:256], await upload.read()) for name, upload in files]
    elif content_type.startswith("application/json"):
        payloads = _base64_images(parse(PredictImages, _parse_json(body), "request"),
                                  max_images)
    elif content_type.startswith(RAW_IMAGE_TYPES) or content_type == "application/octet-stream":
        payloads = [("body", body)] if body else []
    else:
        raise HttpProblem(415, "unsupported request", "send multipart/form-data with image "
                          'files, application/json {"images": ["<base64>", ...]}, or one '
                          "image as the body (Content-Type: image/jpeg, image/png, …)")
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


async def _json_body(request: Request) -> Any:
    return _parse_json(await _bounded_body(request, 1024 * 1024))


def _parse_json(body: bytes) -> Any:
    try:
        value = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpProblem(422, "bad json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise HttpProblem(422, "bad json", "the body must be a JSON object")
    return value


def _base64_images(body: PredictImages, max_images: int) -> list[tuple[str, bytes]]:
    if body.images is not None and body.image is not None:
        raise HttpProblem(422, "bad json", 'send either "images" or "image", not both')
    items = body.images if body.images is not None else (
        [body.image] if body.image is not None else None)
    if items is None:
        raise HttpProblem(422, "bad json", 'send {"images": ["<base64>", ...]} or '
                          '{"image": "<base64>"}')
    if len(items) > max_images:
        raise HttpProblem(413, "too many images", f"at most {max_images} images per request "
                          "(limits.max_images)")
    decoded = []
    for i, item in enumerate(items):
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
