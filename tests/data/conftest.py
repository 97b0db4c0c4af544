"""Fixtures that write small test images (valid, odd and broken) with PIL."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


class ImageFactory:
    """Writes image files; every method returns the path it wrote."""

    def rgb(self, path: Path, size: tuple[int, int] = (32, 24), fmt: str | None = None,
            color: tuple[int, int, int] = (200, 30, 30)) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, color).save(path, format=fmt or _format_of(path))
        return path

    def noise_jpeg(self, path: Path, size: tuple[int, int] = (64, 64)) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), np.uint8)
        Image.fromarray(pixels).save(path, format="JPEG", quality=95)
        return path

    def truncated_jpeg(self, path: Path) -> Path:
        self.noise_jpeg(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path

    def empty(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        return path

    def text(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("this is not an image\n")
        return path

    def png_claiming_size(self, path: Path, width: int, height: int) -> Path:
        """A PNG whose header claims ``width`` x ``height`` (with a valid header checksum)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.new("RGB", (16, 16)).save(buf, format="PNG")
        data = bytearray(buf.getvalue())
        data[16:24] = struct.pack(">II", width, height)  # IHDR width, height
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # IHDR CRC
        path.write_bytes(bytes(data))
        return path

    def gray16(self, path: Path) -> Path:
        """A 16-bit grayscale PNG whose values span 0..65535."""
        path.parent.mkdir(parents=True, exist_ok=True)
        ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
        Image.fromarray(ramp).save(path, format="PNG")
        return path

    def cmyk_jpeg(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(path, format="JPEG")
        return path

    def palette_transparent(self, path: Path) -> Path:
        """Palette PNG: left half transparent (index 0), right half opaque green (index 1)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        im = Image.new("P", (32, 32), 0)
        im.putpalette([255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
        im.paste(1, (16, 0, 32, 32))
        im.save(path, format="PNG", transparency=0)
        return path

    def rgba(self, path: Path) -> Path:
        """RGBA PNG: left half fully transparent black, right half opaque blue."""
        path.parent.mkdir(parents=True, exist_ok=True)
        im = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
        im.paste((0, 0, 255, 255), (16, 0, 32, 32))
        im.save(path, format="PNG")
        return path

    def grayscale(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (32, 32), 128).save(path, format=_format_of(path))
        return path

    def exif_rotated(self, path: Path, size: tuple[int, int] = (40, 20)) -> Path:
        """A JPEG stored ``size`` (w, h) with EXIF orientation 6 (display rotated 90 degrees)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.new("RGB", size, (10, 200, 10)).save(path, format="JPEG", exif=exif)
        return path

    def animated_gif(self, path: Path, frames: int = 3) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        images = [Image.new("RGB", (16, 16), (60 * i, 0, 0)) for i in range(frames)]
        images[0].save(path, format="GIF", save_all=True, append_images=images[1:])
        return path

    def class_tree(self, root: Path, counts: dict[str, int]) -> Path:
        """``root/<class>/img_<i>.jpg`` with ``counts[class]`` images each."""
        for label, n in counts.items():
            for i in range(n):
                self.rgb(root / label / f"img_{i:03d}.jpg")
        return root


def _format_of(path: Path) -> str:
    return {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".gif": "GIF"}.get(
        path.suffix.lower(), "PNG"
    )


@pytest.fixture
def images() -> ImageFactory:
    return ImageFactory()
