"""HTTP around :class:`~vitkit.serve.service.Service` (FastAPI; run by uvicorn).

Endpoints: ``POST /v1/predict`` (multipart files or JSON with base64 images; ``X-User-Id``
for sticky A/B arms; ``?route=``, ``?maps=1`` for anomaly heat maps), ``POST /v1/feedback``,
``GET /v1/models``, ``GET /v1/ab``, ``GET /livez``, ``GET /readyz``, ``GET /metrics``, the
Open Inference Protocol v2 subset (``/v2/health/ready``, ``/v2/models/{name}``,
``/v2/models/{name}/infer``), admin (``POST /admin/models/{name}/candidate|rollback``, bearer
token) and a web page at ``/``. User errors are JSON ``{"error", "detail"}`` with a 4xx
status, never a 500 or a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from vitkit.data.images import BOMB, NOT_AN_IMAGE, ImageProblem, decode_rgb
from vitkit.serve.config import ServeConfig
from vitkit.serve.log import ab_report
from vitkit.serve.page import PAGE
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
            answers = await service.answer(
                images, request.headers.get("x-user-id"), request.query_params.get("route"),
                with_maps=request.query_params.get("maps", "").lower() in ("1", "true"))
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

    @app.get("/v1/drift")
    async def drift() -> dict[str, Any]:
        return {name: {"version": service.slots[name].model.version if name in service.slots
                       else None, "window": monitor.config.window,
                       "every": monitor.config.every, "checks": monitor.checks,
                       "last": monitor.report}
                for name, monitor in service.drift.items()}

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

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return PAGE

    # ------------------------------------------------------------ Open Inference Protocol v2
    @app.get("/v2/health/live")
    async def v2_live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def v2_ready() -> JSONResponse:
        ready = service.ready and not service.draining
        return JSONResponse({"ready": ready}, 200 if ready else 503)

    @app.get("/v2/models/{name}")
    async def v2_model(name: str) -> dict[str, Any]:
        model = _v2_model(service, name)
        height, width = model.input_size
        outputs = [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                   {"name": "score", "datatype": "FP32", "shape": [-1]}]
        if model.kind == "classify":
            outputs.append({"name": "unknown", "datatype": "BOOL", "shape": [-1]})
        return {"name": name, "versions": [model.version], "platform": f"vitkit-{model.kind}",
                "inputs": [{"name": "input", "datatype": "FP32",
                            "shape": [-1, 3, height, width]},
                           {"name": "image", "datatype": "BYTES", "shape": [-1]}],
                "outputs": outputs, "parameters": {"labels": model.labels}}

    @app.post("/v2/models/{name}/infer")
    async def v2_infer(name: str, request: Request) -> dict[str, Any]:
        model = _v2_model(service, name)
        body = _parse_json(await _bounded_body(request, max_bytes))
        tensors = await _v2_inputs(body, model, limits.max_images, limits.max_pixels,
                                   service)
        try:
            answers = await service.infer_prepared(name, tensors)
        except Exception as exc:  # noqa: BLE001 - overload, timeout or model failure
            raise HttpProblem(503, "inference failed", f"{type(exc).__name__}: {exc}",
                              {"Retry-After": str(RETRY_AFTER_S)}) from None
        outputs = [{"name": "label", "datatype": "BYTES", "shape": [len(answers)],
                    "data": [a["label"] for a in answers]},
                   {"name": "score", "datatype": "FP32", "shape": [len(answers)],
                    "data": [float(a["score"]) for a in answers]}]
        if model.kind == "classify":
            outputs.append({"name": "unknown", "datatype": "BOOL", "shape": [len(answers)],
                            "data": [bool(a.get("unknown")) for a in answers]})
        response: dict[str, Any] = {"model_name": name, "model_version": model.version,
                                    "outputs": outputs}
        if "id" in body:
            response["id"] = body["id"]
        return response

    return app


def _v2_model(service: Service, name: str) -> Any:
    model = service.models.get(name)
    if model is None:
        raise HttpProblem(404, "unknown model", f"no loaded model '{name}'; models: "
                          f"{', '.join(service.models) or 'none yet'}")
    return model


async def _v2_inputs(body: dict[str, Any], model: Any, max_images: int, max_pixels: int,
                     service: Service) -> list[Any]:
    """Tensors from a v2 request: ``input`` FP32 [B, 3, H, W] (preprocessed), or ``image``
    BYTES [B] (base64 image files, decoded and preprocessed here)."""
    import torch

    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise HttpProblem(422, "bad v2 request", 'send {"inputs": [{"name": "input" or '
                          '"image", "shape": [...], "datatype": "FP32" or "BYTES", '
                          '"data": [...]}]}')
    tensor = inputs[0]
    shape, data = tensor.get("shape"), tensor.get("data")
    if not isinstance(shape, list) or not isinstance(data, list) or not shape:
        raise HttpProblem(422, "bad v2 request", "each input needs a shape and data lists")
    if shape[0] > max_images:
        raise HttpProblem(413, "too many images", f"at most {max_images} per request")
    if tensor.get("datatype") == "FP32":
        height, width = model.input_size
        if shape[1:] != [3, height, width]:
            raise HttpProblem(422, "bad shape", f"input must be [B, 3, {height}, {width}], "
                              f"got {shape}")
        try:
            batch = torch.tensor(data, dtype=torch.float32).reshape(shape)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise HttpProblem(422, "bad data", f"data does not fill {shape}: {exc}") from None
        return list(batch)
    if tensor.get("datatype") == "BYTES":
        loop = asyncio.get_running_loop()
        payloads = _base64_images({"images": data}, max_images)
        images = await asyncio.gather(*[
            loop.run_in_executor(service.decoders, _decode, raw, name, max_pixels)
            for name, raw in payloads])
        return [model.prepare(image) for image in images]
    raise HttpProblem(422, "bad datatype", "datatype must be FP32 (preprocessed) or BYTES "
                      "(base64 image files)")


def _too_large(detail: str) -> JSONResponse:
    return JSONResponse({"error": "too large", "detail": detail}, 413)


async def _read_images(request: Request, max_images: int, max_bytes: int
                       ) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of every image in a multipart or JSON request."""
    content_type = request.headers.get("content-type", "")
    body = await _bounded_body(request, max_bytes)
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=max_images, max_fields=max_images + 8)
        except HTTPException as exc:  # starlette refuses too many parts or a broken body
            if "too many" in str(exc.detail).lower():
                raise HttpProblem(413, "too many images", f"at most {max_images} images per "
                                  f"request (limits.max_images): {exc.detail}") from None
            raise HttpProblem(422, "bad multipart body", str(exc.detail)) from None
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
