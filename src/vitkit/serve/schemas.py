"""The service's request and response bodies, declared so that the OpenAPI schema describes
every one of them (clients, ``/docs`` and the schema fuzzer all read that schema).

Bodies are read and size-limited by the app itself (multipart, raw bytes, the v2 binary
extension), then validated here: :func:`parse` turns a pydantic error into the service's
``{"error", "detail"}`` 422 answer.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

REQUEST_ID_CHARS = 64
LABEL_CHARS = 256  # the request log's label and feedback columns
PATH_CHARS = 4096
NAME_CHARS = 128
MAX_V2_ELEMENTS = 64 * 3 * 1024 * 1024  # tensor elements in one v2 request, whatever the limits

BodyT = TypeVar("BodyT", bound=BaseModel)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(BaseModel):
    """Every 4xx and 503: what went wrong and how to fix it."""

    error: str = Field(description="short name of the problem")
    detail: str = Field(description="what was expected, what arrived, and how to fix it")


class PredictImages(_Body):
    images: list[str] | None = Field(None, description="base64 image files (PNG, JPEG, …); "
                                     "a data: URL prefix is accepted")
    image: str | None = Field(None, description="one base64 image file, instead of images")


class Feedback(_Body):
    request_id: str = Field(min_length=1, max_length=REQUEST_ID_CHARS,
                            description="the request_id of an answered image")
    label: str = Field(min_length=1, max_length=LABEL_CHARS,
                       description="its true label: one of the model's labels")
    replace: bool = Field(False, description="overwrite feedback recorded earlier for this "
                          "image (otherwise a different earlier label is a 409)")


class FeedbackRecorded(BaseModel):
    request_id: str
    label: str
    recorded: bool


class Candidate(_Body):
    bundle: str = Field(min_length=1, max_length=PATH_CHARS,
                        description="the candidate bundle folder, inside one of the server's "
                        "bundle_roots")
    variant: str | None = Field(None, max_length=NAME_CHARS,
                                description="its variant (default: the bundle's default)")


class Prediction(BaseModel):
    """One image's answer (classifier: label, score, topk, unknown, ood_score; anomaly
    detector: label normal|anomaly, score with 0.5 at the threshold, raw_score)."""

    model_config = ConfigDict(extra="allow")
    label: str
    score: float | None
    kind: str
    model: str
    version: str
    arm: str
    route: str
    request_id: str
    latency_ms: float
    image: str | None = None


class Predictions(BaseModel):
    predictions: list[Prediction]


# ------------------------------------------------------------------ Open Inference Protocol v2
class V2Tensor(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(max_length=NAME_CHARS)
    shape: list[int] = Field(min_length=1, max_length=8)
    datatype: Literal["FP32", "BYTES"] = Field(description="FP32: preprocessed [B, 3, H, W]; "
                                               "BYTES: image files, base64 in JSON")
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(None, description="row-major; absent when the binary "
                                   "extension carries the tensor")


class V2RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(max_length=NAME_CHARS)
    parameters: dict[str, Any] | None = None


class V2Request(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | None = Field(None, max_length=REQUEST_ID_CHARS)
    parameters: dict[str, Any] | None = None
    inputs: list[V2Tensor] = Field(min_length=1, max_length=1)
    outputs: list[V2RequestedOutput] | None = Field(None, max_length=8)


class V2OutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class V2Response(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[V2OutputTensor]


class V2Error(BaseModel):
    """The protocol's error body (``error``), with vitkit's ``detail`` beside it."""

    error: str
    detail: str | None = None


def parse(model: type[BodyT], value: Any, what: str) -> BodyT:
    """``value`` as ``model``, or a 422 :class:`~vitkit.serve.errors.HttpProblem` naming the
    first fields that are wrong."""
    from vitkit.serve.errors import HttpProblem

    try:
        return model.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                             for e in exc.errors()[:5])
        raise HttpProblem(422, f"bad {what}", problems) from None


EXTRA_SCHEMAS: dict[str, Any] = {}
"""Schemas of bodies the app reads itself (declared with :func:`request_body`), added to the
OpenAPI components by the app."""


def request_body(model: type[BaseModel], *content_types: str) -> dict[str, Any]:
    """``openapi_extra`` declaring ``model`` as the JSON body of a route that reads its body
    itself; other content types (multipart, raw images) are listed beside it."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    EXTRA_SCHEMAS.update(schema.pop("$defs", {}))
    EXTRA_SCHEMAS[model.__name__] = schema
    content: dict[str, Any] = {"application/json": {"schema": {
        "$ref": f"#/components/schemas/{model.__name__}"}}}
    for content_type in content_types:
        content[content_type] = {"schema": _OTHER_BODIES[content_type]}
    return {"requestBody": {"required": True, "content": content}}


_OTHER_BODIES: dict[str, Any] = {
    "multipart/form-data": {"type": "object", "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}},
    # A raw image, or the v2 binary tensor extension (JSON header + tensors).
    "application/octet-stream": {"type": "string", "format": "binary"},
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error statuses."""
    return {status: {"model": Problem, "description": _REASONS.get(status, "error")}
            for status in statuses}


_REASONS = {400: "bad request", 401: "no admin token", 403: "wrong or disabled admin token",
            404: "not found", 409: "conflict", 413: "too large", 415: "not an image",
            422: "invalid input", 429: "too many failed attempts",
            503: "not ready, overloaded or shutting down"}
