"""The public surface: health (``/livez``, ``/readyz``, ``/metrics``), the v1 API
(``/v1/predict``, ``/v1/feedback``, ``/v1/models``, ``/v1/drift``, ``/v1/ab``) and the web page."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from vitkit.serve.ab import ab_report
from vitkit.serve.auth import AdminGuard
from vitkit.serve.bodies import (
    PairParts,
    decode_audio,
    decode_image,
    json_body,
    read_images,
    read_pair,
)
from vitkit.serve.errors import RETRY_AFTER_S, HttpProblem
from vitkit.serve.log import LogUnavailable
from vitkit.serve.page import PAGE
from vitkit.serve.schemas import (
    Feedback,
    FeedbackRecorded,
    PredictImages,
    Predictions,
    parse,
    problem_responses,
    request_body,
)
from vitkit.serve.service import (
    AudioNotAccepted,
    NoModelAvailable,
    RequestTooLarge,
    Service,
    UnknownRoute,
)
from vitkit.tasks.base import PairedUpload, ServedInput

# /v1/predict reads its inputs itself; declared here so that clients, /docs and the schema
# fuzzer see them (a raw body may also be sent as image/jpeg, image/png, …; a multipart body
# with a part named audio, and at most one named image, is one image + audio example).
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


def v1_router(service: Service, guard: AdminGuard, max_bytes: int) -> APIRouter:
    router = APIRouter()
    config = service.config
    limits = config.limits

    @router.api_route("/livez", methods=["GET", "HEAD"], tags=["health"])
    async def livez() -> dict[str, str]:
        return {"status": "alive"}

    @router.api_route("/readyz", methods=["GET", "HEAD"], tags=["health"],
                   responses=problem_responses(503))
    async def readyz() -> JSONResponse:
        state = service.readiness()
        return JSONResponse(state, 200 if state["status"] in ("ready", "degraded") else 503,
                            headers=None if state["status"] != "loading"
                            else {"Retry-After": str(RETRY_AFTER_S)})

    @router.get("/metrics", tags=["health"], response_class=Response)
    async def metrics() -> Response:
        service.refresh_gauges()
        return Response(generate_latest(service.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------------ v1
    @router.get("/v1/models", tags=["v1"])
    async def models(request: Request) -> dict[str, Any]:
        """The models, routes and fallback; bundle paths and load errors only for admin
        callers (``Authorization: Bearer <token>``)."""
        return service.describe(admin=guard.is_admin(request.headers.get("authorization")))

    @router.post("/v1/predict", tags=["v1"], openapi_extra=PREDICT_INPUTS,
              responses={200: {"model": Predictions},
                         **problem_responses(404, 413, 415, 422, 503)})
    async def predict(request: Request) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        pair = await read_pair(request, limits.max_images, max_bytes)
        inputs: list[ServedInput]
        if pair is not None:  # one image + audio example: multipart fields image, audio
            inputs = [await _decoded_pair(pair)]
            names = [{"image": pair.image[0] if pair.image else None, "audio": pair.audio[0]}]
        else:
            payloads = await read_images(request, limits.max_images, max_bytes)
            inputs = list(await asyncio.gather(*[
                loop.run_in_executor(service.decoders, decode_image, data, name,
                                     limits.max_pixels, service.intensity_specs())
                for name, data in payloads]))
            names = [{"image": name} for name, _ in payloads]
        route = request.query_params.get("route")
        try:
            answers = await service.answer(
                inputs, request.headers.get("x-user-id"), route,
                with_maps=request.query_params.get("maps", "").lower() in ("1", "true"))
        except AudioNotAccepted as exc:
            raise HttpProblem(422, "audio not accepted", str(exc)) from None
        except UnknownRoute as exc:
            raise HttpProblem(404, "unknown route", f"no route '{exc}'; routes: "
                              f"{', '.join(config.routes)}") from None
        except RequestTooLarge as exc:
            raise HttpProblem(413, "too many images", str(exc)) from None
        except NoModelAvailable as exc:
            raise HttpProblem(503, "overloaded" if exc.overloaded else "no model available",
                              str(exc), {"Retry-After": str(RETRY_AFTER_S)}) from None
        for named, answer in zip(names, answers, strict=True):
            answer.update(named)
        return {"predictions": answers}

    async def _decoded_pair(pair: PairParts) -> PairedUpload:
        loop = asyncio.get_running_loop()
        audio = loop.run_in_executor(service.decoders, decode_audio, pair.audio[1],
                                     pair.audio[0])
        image = None if pair.image is None else await loop.run_in_executor(
            service.decoders, decode_image, pair.image[1], pair.image[0], limits.max_pixels,
            service.intensity_specs())
        return PairedUpload(image, await audio)

    @router.post("/v1/feedback", tags=["v1"], openapi_extra=request_body(Feedback),
              responses={200: {"model": FeedbackRecorded},
                         **problem_responses(404, 409, 422, 503)})
    async def feedback(request: Request) -> dict[str, Any]:
        body = parse(Feedback, await json_body(request), "feedback")
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

    @router.get("/v1/drift", tags=["v1"])
    async def drift() -> dict[str, Any]:
        return {name: {"version": service.slots[name].model.version if name in service.slots
                       else None, "window": monitor.config.window,
                       "every": monitor.config.every, "checks": monitor.checks,
                       "last": monitor.report}
                for name, monitor in service.drift.items()}

    @router.get("/v1/ab", tags=["v1"], responses=problem_responses(409, 503))
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

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return PAGE

    return router
