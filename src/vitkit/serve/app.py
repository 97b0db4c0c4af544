"""HTTP around :class:`~vitkit.serve.service.Service` (FastAPI; run by uvicorn): the edge
(request ids, size limit, draining, metrics by status, access log, JSON errors), offline
``/docs``, CORS, and one router per surface — :mod:`~vitkit.serve.v1` (health, v1 API, page),
:mod:`~vitkit.serve.admin` (token-protected updates), :mod:`~vitkit.serve.v2` (KServe/Triton).

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
from starlette.exceptions import HTTPException

from vitkit.serve.admin import admin_router
from vitkit.serve.auth import AdminGuard, check_token
from vitkit.serve.bodies import bounded_body, decode_image
from vitkit.serve.config import ServeConfig
from vitkit.serve.errors import RETRY_AFTER_S, HttpProblem
from vitkit.serve.schemas import EXTRA_SCHEMAS, problem_responses
from vitkit.serve.service import Service
from vitkit.serve.v1 import v1_router
from vitkit.serve.v2 import v2_router

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
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
    app.include_router(v1_router(service, guard, max_bytes))
    app.include_router(admin_router(service, guard))
    app.include_router(v2_router(service, max_bytes, bounded_body,
                                 lambda data, name: decode_image(data, name, limits.max_pixels,
                                                                 service.intensity_specs())))
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
            for operations in schema.get("paths", {}).values():
                ids = [operation.get("operationId") for operation in operations.values()]
                for method, operation in operations.items():
                    # FastAPI names the id after one method of the route's set, whichever
                    # the hash order gives: livez_livez_head for both, on some runs.
                    if ids.count(operation.get("operationId")) > 1:
                        base = re.sub(r"_(get|head)$", "", operation["operationId"])
                        operation["operationId"] = f"{base}_{method}"
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
