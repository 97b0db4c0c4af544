"""Reading request bodies: bounded in size (with or without Content-Length), multipart,
JSON with base64 images or one raw image, a multipart image + audio pair; and image and audio
decoding with the service's limits.
Every failure is an :class:`~vitkit.serve.errors.HttpProblem` with a 4xx status."""

from __future__ import annotations

import base64
import binascii
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from PIL import Image
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException

from vitkit.data.audio import NOT_A_WAV, UNSUPPORTED_WAV, AudioProblem, Waveform, decode_wav
from vitkit.data.images import BOMB, NOT_AN_IMAGE, ImageProblem
from vitkit.data.intensity import IntensitySpec, decode_upload
from vitkit.serve.errors import HttpProblem
from vitkit.serve.schemas import PredictImages, parse

RAW_IMAGE_TYPES = ("image/", "application/dicom")  # DICOM: read by models with a window
JSON_BODY_BYTES = 1024 * 1024  # feedback and admin bodies are small


async def read_images(request: Request, max_images: int, max_bytes: int
                       ) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of every image in a multipart, JSON or raw image request."""
    content_type = request.headers.get("content-type", "").lower()
    body = await bounded_body(request, max_bytes)
    if content_type.startswith("multipart/form-data"):
        form = await parse_form(request, max_images)
        files = [(getattr(v, "filename", None) or k, v) for k, v in form.multi_items()
                 if hasattr(v, "read")]
        if len(files) > max_images:
            raise HttpProblem(413, "too many images", f"at most {max_images} images per "
                              "request (limits.max_images)")
        payloads = [(str(name)[:256], await upload.read()) for name, upload in files]
    elif content_type.startswith("application/json"):
        payloads = base64_images(parse(PredictImages, parse_json(body), "request"),
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


async def parse_form(request: Request, max_images: int) -> FormData:
    """The multipart form of a request whose body :func:`bounded_body` has read (parsed
    once: starlette keeps it)."""
    try:
        return await request.form(max_files=max_images, max_fields=max_images + 8)
    except HTTPException as exc:  # starlette refuses too many parts or a broken body
        if "too many" in str(exc.detail).lower():
            raise HttpProblem(413, "too many images", f"at most {max_images} images per "
                              f"request (limits.max_images): {exc.detail}") from None
        raise HttpProblem(422, "bad multipart body", str(exc.detail)) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpProblem(422, "bad multipart body", str(exc)[:200]) from None


@dataclass(frozen=True)
class PairParts:
    """The parts of a paired request: ``(file name, bytes)`` of its image (or None) and of
    its recording."""

    image: tuple[str, bytes] | None
    audio: tuple[str, bytes]


async def read_pair(request: Request, max_images: int, max_bytes: int) -> PairParts | None:
    """The ``image`` and ``audio`` parts of a multipart request that has an ``audio`` field
    (one image + audio example, for a model that takes audio); None for any other request,
    which :func:`read_images` reads as it always has.

    Raises:
        HttpProblem: 422 when the request holds more than one image or recording, or parts
            under other names beside ``audio``.
    """
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        return None
    await bounded_body(request, max_bytes)
    form = await parse_form(request, max_images)
    parts = [(key, value) for key, value in form.multi_items() if hasattr(value, "read")]
    if not any(key == "audio" for key, _ in parts):
        return None
    counts = Counter(key for key, _ in parts)
    if counts["audio"] > 1 or counts["image"] > 1 or set(counts) - {"image", "audio"}:
        raise HttpProblem(422, "bad image + audio request", "a request with an audio part is "
                          "one example: at most one part named image and one named audio "
                          f"(got {dict(counts)}); send several examples as several requests")
    read = {key: (str(getattr(upload, "filename", None) or key)[:256], await upload.read())
            for key, upload in parts}
    return PairParts(read.get("image"), read["audio"])


def decode_audio(data: bytes, name: str) -> Waveform:
    """An uploaded recording (PCM WAV); 415 for a file that is not one, 422 otherwise."""
    try:
        return decode_wav(data)
    except AudioProblem as problem:
        status = 415 if problem.reason.startswith((NOT_A_WAV, UNSUPPORTED_WAV)) else 422
        raise HttpProblem(status, "unusable audio", f"{name}: {problem.reason}") from None


async def bounded_body(request: Request, max_bytes: int) -> bytes:
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


async def json_body(request: Request) -> Any:
    return parse_json(await bounded_body(request, JSON_BODY_BYTES))


def parse_json(body: bytes) -> Any:
    try:
        value = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpProblem(422, "bad json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise HttpProblem(422, "bad json", "the body must be a JSON object")
    return value


def base64_images(body: PredictImages, max_images: int) -> list[tuple[str, bytes]]:
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


def decode_image(data: bytes, name: str, max_pixels: int,
                 intensities: Sequence[IntensitySpec] = ()) -> Image.Image:
    """An uploaded image; with the served models' intensity specs also DICOM and full-depth
    16-bit files, rendered once per spec (:func:`vitkit.data.intensity.decode_upload`)."""
    try:
        image = decode_upload(data, intensities, max_pixels)
    except ImageProblem as problem:
        status = {BOMB: 413, NOT_AN_IMAGE: 415}.get(problem.kind, 422)
        raise HttpProblem(status, problem.kind, f"{name}: {problem.reason}") from None
    return image
