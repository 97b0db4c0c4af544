"""Fuzzes image decoding: real files of many kinds, mutated, through ``decode_rgb``/``load_rgb``.

The property (the same one ``tests/data/test_decode_fuzz.py`` checks on a bounded sample with
hypothesis): whatever the bytes, decoding either returns an 8-bit RGB image within
``max_pixels`` whose sides are at least ``MIN_SIDE``, or raises the documented skip,
:class:`~vitkit.data.images.ImageProblem` with one of the known kinds. Anything else is a defect.

Seed corpus: files written here (JPEG, progressive JPEG, CMYK JPEG, EXIF-rotated JPEG, PNG,
16-bit PNG, palette + transparency PNG, LA PNG, 1-bit PNG, multi-frame GIF and TIFF, float
TIFF, WebP lossy and lossless with alpha, BMP, PPM, TGA, ICO), forged headers declaring
100000x100000 pixels (PNG, GIF, BMP, JPEG) and a few real images from
``../shared/datasets`` when they are there. Mutations: truncation, bit flips, inserted,
deleted and overwritten bytes, a huge 16/32-bit value written over a header field, a chunk
duplicated, two files spliced, zero bytes.

    python bench/fuzz_decode.py --cases 100000
"""

from __future__ import annotations

import argparse
import collections
import io
import random
import struct
import sys
import tempfile
import time
import traceback
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from vitkit.data.images import (
    BOMB,
    EMPTY_FILE,
    MIN_SIDE,
    NOT_A_FILE,
    NOT_AN_IMAGE,
    NOT_FOUND,
    TOO_SMALL,
    TRUNCATED,
    UNREADABLE,
    UNSUPPORTED_MODE,
    ImageProblem,
    decode_rgb,
    load_rgb,
)

KNOWN_KINDS = frozenset({NOT_FOUND, EMPTY_FILE, NOT_A_FILE, UNREADABLE, NOT_AN_IMAGE,
                         TRUNCATED, BOMB, TOO_SMALL, UNSUPPORTED_MODE})
# The service decodes uploads with a limit far below the data path's default; a small limit
# makes forged and mutated dimensions reach the bomb check often.
SERVICE_MAX_PIXELS = 1_000_000
DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
_REAL_FILES = (
    "hymenoptera/train/ants/imageNotFound.gif",  # the data set's palette image
    "hymenoptera/train/ants/Ant_1.jpg",
    "hymenoptera/train/ants/formica.jpeg",
    "deeppcb/ground_truth/defective/92000105_test_mask.png",
)
EXTENSIONS = (".jpg", ".png", ".gif", ".tif", ".webp", ".bmp", ".txt", "", ".jpeg.png")


def _noise(size: tuple[int, int], channels: int = 3, seed: int = 0) -> np.ndarray:
    w, h = size
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w * h * channels).reshape(h, w, channels)
    return np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)


def _save(im: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def huge_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose valid IHDR (correct CRC) declares ``width`` x ``height`` RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def huge_gif(width: int = 100_000, height: int = 100_000) -> bytes:
    """A GIF whose screen and first frame declare ``width`` x ``height`` pixels."""
    gif = bytearray(_save(Image.new("P", (16, 16), 3), "GIF"))
    gif[6:10] = struct.pack("<HH", min(width, 65535), min(height, 65535))
    frame = gif.index(b"\x2c")  # image descriptor: left, top, width, height
    gif[frame + 5:frame + 9] = struct.pack("<HH", min(width, 65535), min(height, 65535))
    return bytes(gif)


def huge_bmp(width: int = 100_000, height: int = 100_000) -> bytes:
    bmp = bytearray(_save(Image.new("RGB", (16, 16), (1, 2, 3)), "BMP"))
    bmp[18:26] = struct.pack("<ii", width, height)
    return bytes(bmp)


def huge_jpeg(width: int = 60_000, height: int = 60_000) -> bytes:
    jpeg = bytearray(_save(Image.new("RGB", (16, 16), (1, 2, 3)), "JPEG"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(jpeg)


def rich_exif(orientation: int) -> Image.Exif:
    """An EXIF block with an orientation and tags of several types (ASCII, bytes, rationals,
    sub-IFDs): mutating it reaches the EXIF reader and writer, not only the orientation."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Camera"
    exif[0x0131] = "soft"
    exif[0x8769] = {0x9003: "2020:01:01 00:00:00", 0x927C: b"maker" * 5}
    exif[0x8825] = {1: "N", 2: (1.0, 2.0, 3.0)}
    return exif


def _raw_profile_png(im: Image.Image, exif: bytes) -> bytes:
    """A PNG carrying EXIF the old ImageMagick way, as a hex ``Raw profile type exif`` text."""
    from PIL import PngImagePlugin

    text = PngImagePlugin.PngInfo()
    text.add_text("Raw profile type exif", f"\nexif\n{len(exif):8}\n{exif.hex()}\n", zip=True)
    return _save(im, "PNG", pnginfo=text)


def seed_corpus(datasets: Path = DATASETS) -> dict[str, bytes]:
    """name -> file bytes: one file per kind the decoder must handle (see the module doc)."""
    rgb = Image.fromarray(_noise((48, 40)))
    rgba = Image.fromarray(_noise((40, 32), 4, seed=1))
    gray = Image.fromarray(_noise((40, 32), 1, seed=2)[:, :, 0])
    corpus: dict[str, bytes] = {
        "rgb.jpg": _save(rgb, "JPEG", quality=90),
        "progressive.jpg": _save(rgb, "JPEG", progressive=True),
        "gray.jpg": _save(gray, "JPEG"),
        "cmyk.jpg": _save(rgb.convert("CMYK"), "JPEG"),
        "rgb.png": _save(rgb, "PNG"),
        "rgba.png": _save(rgba, "PNG"),
        "la.png": _save(rgba.convert("LA"), "PNG"),
        "bilevel.png": _save(gray.convert("1"), "PNG"),
        "rgb.bmp": _save(rgb, "BMP"),
        "rgb.ppm": _save(rgb, "PPM"),
        "rgba.tga": _save(rgba, "TGA"),
        "rgba.ico": _save(rgba, "ICO", sizes=[(32, 32)]),
        "lossy.webp": _save(rgb, "WEBP", quality=60),
        "lossless-alpha.webp": _save(rgba, "WEBP", lossless=True),
        "huge.png": huge_png(),
        "huge.gif": huge_gif(),
        "huge.bmp": huge_bmp(),
        "huge.jpg": huge_jpeg(),
    }
    sixteen = (np.arange(40 * 32, dtype=np.uint16).reshape(32, 40) * 51).astype(np.uint16)
    corpus["16bit.png"] = _save(Image.fromarray(sixteen), "PNG")
    corpus["16bit.tif"] = _save(Image.fromarray(sixteen), "TIFF")
    corpus["float.tif"] = _save(Image.fromarray(sixteen.astype(np.float32) / 7.0), "TIFF")
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    corpus["palette-transparency.png"] = _save(palette, "PNG", transparency=0)
    corpus["palette-transparency.gif"] = _save(palette, "GIF", transparency=0)
    frames = [Image.fromarray(_noise((32, 32), seed=s)).convert("P") for s in range(3)]
    corpus["animated.gif"] = _save(frames[0], "GIF", save_all=True, append_images=frames[1:],
                                   duration=50, loop=0)
    corpus["multipage.tif"] = _save(frames[0].convert("RGB"), "TIFF", save_all=True,
                                    append_images=[f.convert("RGB") for f in frames[1:]])
    corpus["animated.webp"] = _save(frames[0].convert("RGB"), "WEBP", save_all=True,
                                    append_images=[f.convert("RGB") for f in frames[1:]])
    for orientation in (3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        corpus[f"exif-{orientation}.jpg"] = _save(rgb, "JPEG", exif=exif.tobytes())
    rich = rich_exif(5).tobytes()  # orientation plus tags of many types, in sub-IFDs too
    for fmt, suffix in (("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("TIFF", "tif")):
        corpus[f"exif-rich.{suffix}"] = _save(rgb, fmt, exif=rich)
    corpus["exif-rich-raw-profile.png"] = _raw_profile_png(rgb, rich)
    for relative in _REAL_FILES:
        path = datasets / relative
        if path.is_file():
            corpus[f"real-{path.name}"] = path.read_bytes()
    return corpus


# --- mutations: each takes the bytes, a random generator and the corpus --------------------

def _truncate(data: bytes, rng: random.Random, _: list[bytes]) -> bytes:
    return data[:rng.randrange(len(data))]


def _flip_bits(data: bytes, rng: random.Random, _: list[bytes]) -> bytes:
    out = bytearray(data)
    for _i in range(rng.choice((1, 1, 2, 4, 16))):
        position = _header_biased(len(out), rng)
        out[position] ^= 1 << rng.randrange(8)
    return bytes(out)


def _insert(data: bytes, rng: random.Random, _: list[bytes]) -> bytes:
    position = _header_biased(len(data), rng)
    return data[:position] + rng.randbytes(rng.choice((1, 2, 4, 64))) + data[position:]


def _delete(data: bytes, rng: random.Random, _: list[bytes]) -> bytes:
    position = _header_biased(len(data), rng)
    return data[:position] + data[position + rng.choice((1, 2, 4, 64)):]


def _overwrite(data: bytes, rng: random.Random, _: list[bytes]) -> bytes:
    position = _header_biased(len(data), rng)
    fill = bytes([rng.choice((0, 0xFF))]) * rng.choice((1, 4, 16, 256))
    return (data[:position] + fill + data[position + len(fill):])[:len(data)]


def _huge_field(data: bytes, rng: random.Random, _: list[bytes]) -> bytes:
    # Dimensions, lengths and offsets live in the first bytes of every format.
    position = rng.randrange(min(len(data), 64))
    value = rng.choice((struct.pack(">I", 100_000), struct.pack("<I", 100_000), b"\xff\xff",
                        b"\xff\xff\xff\xff", b"\x00\x00", b"\x7f\xff\xff\xff"))
    return (data[:position] + value + data[position + len(value):])[:max(len(data), 1)]


def _duplicate(data: bytes, rng: random.Random, _: list[bytes]) -> bytes:
    start = rng.randrange(len(data))
    piece = data[start:start + rng.choice((8, 64, 512))]
    position = rng.randrange(len(data))
    return data[:position] + piece + data[position:]


def _splice(data: bytes, rng: random.Random, corpus: list[bytes]) -> bytes:
    other = rng.choice(corpus)
    return data[:rng.randrange(len(data))] + other[rng.randrange(len(other)):]


def _png_chunk_body(data: bytes, rng: random.Random, _: list[bytes]) -> bytes:
    """Changes one byte inside a PNG chunk and fixes the chunk's CRC, so that the change
    reaches the chunk's reader instead of the CRC check (other formats: a bit flip)."""
    if not data.startswith(b"\x89PNG"):
        return _flip_bits(data, rng, _)
    chunks = []
    position = 8
    while position + 12 <= len(data):
        (length,) = struct.unpack(">I", data[position:position + 4])
        if length and position + 12 + length <= len(data):
            chunks.append((position, length))
        position += 12 + length
    if not chunks:
        return _flip_bits(data, rng, _)
    start, length = rng.choice(chunks)
    out = bytearray(data)
    out[start + 8 + rng.randrange(length)] = rng.randrange(256)
    body = bytes(out[start + 4:start + 8 + length])
    out[start + 8 + length:start + 12 + length] = struct.pack(">I", zlib.crc32(body))
    return bytes(out)


def _zero_bytes(data: bytes, rng: random.Random, _: list[bytes]) -> bytes:
    return b"" if rng.random() < 0.5 else b"\x00" * rng.choice((1, 16, len(data)))


def _header_biased(length: int, rng: random.Random) -> int:
    return rng.randrange(min(length, 256)) if rng.random() < 0.6 else rng.randrange(length)


MUTATIONS: dict[str, Callable[[bytes, random.Random, list[bytes]], bytes]] = {
    "truncate": _truncate, "flip_bits": _flip_bits, "insert": _insert, "delete": _delete,
    "overwrite": _overwrite, "huge_field": _huge_field, "duplicate": _duplicate,
    "splice": _splice, "png_chunk_body": _png_chunk_body, "zero_bytes": _zero_bytes,
}


def mutate(data: bytes, rng: random.Random, corpus: list[bytes], rounds: int = 1) -> bytes:
    """``rounds`` random mutations of ``data`` (an empty result stays empty)."""
    for _ in range(rounds):
        if not data:
            break
        data = MUTATIONS[rng.choice(list(MUTATIONS))](data, rng, corpus)
    return data


# --- the property ------------------------------------------------------------------------

def check_result(image: Image.Image, conversions: list[str], max_pixels: int) -> None:
    """What a successful decode must return; AssertionError otherwise."""
    assert isinstance(image, Image.Image), type(image)
    assert image.mode == "RGB", image.mode
    width, height = image.size
    assert width * height <= max_pixels, (image.size, max_pixels)
    assert min(width, height) >= MIN_SIDE, image.size
    pixels = np.asarray(image)  # the pixels are really there (not a closed, lazy image)
    assert pixels.shape == (height, width, 3) and pixels.dtype == np.uint8, pixels.shape
    assert all(isinstance(c, str) for c in conversions), conversions


def decode_property(data: bytes, max_pixels: int) -> str:
    """Decodes ``data``; returns ``"ok"`` or the skip kind. Any other exception propagates."""
    try:
        image, conversions = decode_rgb(data, max_pixels)
    except ImageProblem as problem:
        assert problem.kind in KNOWN_KINDS, problem.reason
        return problem.kind
    check_result(image, conversions, max_pixels)
    return "ok"


def load_property(path: Path, max_pixels: int) -> str:
    """:func:`decode_property` through a file (the data-loading path)."""
    try:
        image, conversions = load_rgb(path, max_pixels)
    except ImageProblem as problem:
        assert problem.kind in KNOWN_KINDS, problem.reason
        return problem.kind
    check_result(image, conversions, max_pixels)
    return "ok"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--file-share", type=float, default=0.1,
                        help="share of cases decoded through a file (load_rgb), wrong "
                             "extensions included; the rest through decode_rgb")
    parser.add_argument("--save-failures", type=Path, default=None,
                        help="folder to write every input that broke the property")
    args = parser.parse_args()
    # PIL warns about what it skips in mutated files (expected); a NumPy RuntimeWarning is an
    # overflow or invalid cast in our own arithmetic, so it counts as a defect.
    warnings.simplefilter("ignore", UserWarning)
    warnings.simplefilter("error", RuntimeWarning)

    corpus = seed_corpus()
    names = sorted(corpus)
    blobs = [corpus[n] for n in names]
    rng = random.Random(args.seed)
    outcomes: collections.Counter[str] = collections.Counter()
    unexpected: collections.Counter[str] = collections.Counter()
    first_failure: dict[str, str] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for case in range(args.cases):
            name = rng.choice(names)
            data = mutate(corpus[name], rng, blobs, rounds=rng.choice((0, 1, 1, 1, 2, 3)))
            max_pixels = rng.choice((SERVICE_MAX_PIXELS, 50_000_000, 2_000))
            through_file = rng.random() < args.file_share
            try:
                if through_file:
                    path = Path(tmp) / f"case{rng.choice(EXTENSIONS)}"
                    path.write_bytes(data)
                    outcomes[load_property(path, max_pixels)] += 1
                else:
                    outcomes[decode_property(data, max_pixels)] += 1
            except Exception as exc:  # noqa: BLE001 - counting defects is the point
                key = f"{type(exc).__name__}"
                unexpected[key] += 1
                if key not in first_failure:
                    first_failure[key] = (f"case {case} from {name} (max_pixels {max_pixels}):"
                                          f"\n{traceback.format_exc(limit=4)}")
                if args.save_failures:
                    args.save_failures.mkdir(parents=True, exist_ok=True)
                    (args.save_failures / f"{case}-{name}.bin").write_bytes(data)
            if (case + 1) % 10_000 == 0:
                print(f"  {case + 1} cases, {sum(unexpected.values())} unexpected, "
                      f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    print(f"cases run: {args.cases} (seed corpus: {len(corpus)} files, seed {args.seed})")
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in outcomes.most_common()))
    print(f"unexpected exceptions: {sum(unexpected.values())}"
          + (" (" + ", ".join(f"{k} {v}" for k, v in unexpected.most_common()) + ")"
             if unexpected else ""))
    for text in first_failure.values():
        print(text)
    print(f"wall time: {seconds:.1f} s ({args.cases / seconds:.0f} cases/s)")
    sys.exit(1 if unexpected else 0)


if __name__ == "__main__":
    main()
