"""load_rgb: conversions applied to odd images, and reasons for unusable ones."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from vitkit.data.images import ImageProblem, load_rgb, reason_kind


def _reason(path, **kwargs) -> str:
    with pytest.raises(ImageProblem) as excinfo:
        load_rgb(path, **kwargs)
    return excinfo.value.reason


def test_plain_rgb_has_no_conversions_and_is_detached(tmp_path, images):
    path = images.rgb(tmp_path / "a.jpg", size=(40, 30))
    image, conversions = load_rgb(path)
    assert (image.mode, image.size, conversions) == ("RGB", (40, 30), [])
    path.unlink()
    assert image.getpixel((0, 0)) is not None  # pixels do not depend on the file any more


def test_exif_orientation_is_applied(tmp_path, images):
    image, conversions = load_rgb(images.exif_rotated(tmp_path / "r.jpg", size=(40, 20)))
    assert image.size == (20, 40)
    assert conversions == ["exif_orientation"]


def test_16bit_grayscale_uses_its_full_range(tmp_path, images):
    path = images.gray16(tmp_path / "deep.png")
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")

    image, conversions = load_rgb(path)

    assert image.mode == "RGB"
    assert conversions[0].startswith("mode I") and conversions[0].endswith("->RGB")
    values = np.asarray(image)[..., 0]
    assert values.min() == 0 and values.max() == 255
    assert len(np.unique(values)) > 200  # a ramp, not saturated to white


@pytest.mark.parametrize("mode", ["I", "F", "I;16B"])
def test_high_bit_depth_modes_are_rescaled(mode):
    from vitkit.data.images import _to_rgb

    ramp = np.linspace(-1000 if mode != "I;16B" else 0, 40000, 16 * 16).reshape(16, 16)
    im = Image.fromarray(ramp.astype(np.float32)).convert(mode)
    conversions: list[str] = []
    values = np.asarray(_to_rgb(im, conversions))[..., 0]
    assert conversions == [f"mode {mode}->RGB"]
    assert values.min() == 0 and values.max() == 255


def test_cmyk(tmp_path, images):
    image, conversions = load_rgb(images.cmyk_jpeg(tmp_path / "c.jpg"))
    assert image.mode == "RGB" and conversions == ["mode CMYK->RGB"]
    red, green, blue = image.getpixel((5, 5))
    assert red > 200 and green < 60 and blue < 60


def test_palette_with_transparency_is_composited_on_white(tmp_path, images):
    image, conversions = load_rgb(images.palette_transparent(tmp_path / "p.png"))
    assert conversions == ["mode P->RGB", "alpha composited on white"]
    assert image.getpixel((2, 2)) == (255, 255, 255)
    assert image.getpixel((30, 2)) == (0, 255, 0)


def test_rgba_is_composited_on_white(tmp_path, images):
    image, conversions = load_rgb(images.rgba(tmp_path / "a.png"))
    assert conversions == ["alpha composited on white"]
    assert image.getpixel((2, 2)) == (255, 255, 255)
    assert image.getpixel((30, 2)) == (0, 0, 255)


def test_opaque_rgba_only_changes_mode(tmp_path):
    path = tmp_path / "opaque.png"
    Image.new("RGBA", (16, 16), (1, 2, 3, 255)).save(path)
    image, conversions = load_rgb(path)
    assert conversions == ["mode RGBA->RGB"] and image.getpixel((0, 0)) == (1, 2, 3)


def test_grayscale(tmp_path, images):
    image, conversions = load_rgb(images.grayscale(tmp_path / "g.png"))
    assert conversions == ["grayscale->RGB"] and image.getpixel((0, 0)) == (128, 128, 128)


def test_animated_gif_uses_first_frame(tmp_path, images):
    image, conversions = load_rgb(images.animated_gif(tmp_path / "a.gif", frames=3))
    assert image.mode == "RGB"
    assert conversions[0] == "first frame of 3"
    assert image.getpixel((0, 0)) == (0, 0, 0)


def test_missing_file(tmp_path):
    assert _reason(tmp_path / "gone.jpg") == "file not found"


def test_directory(tmp_path):
    assert _reason(tmp_path) == "not a regular file"


def test_zero_byte_file(tmp_path, images):
    assert reason_kind(_reason(images.empty(tmp_path / "e.jpg"))) == "empty file"


def test_text_named_jpg(tmp_path, images):
    assert _reason(images.text(tmp_path / "t.jpg")) == "not an image"


def test_truncated_jpeg(tmp_path, images):
    reason = _reason(images.truncated_jpeg(tmp_path / "t.jpg"))
    assert reason_kind(reason) == "truncated or corrupt"


def test_too_small(tmp_path, images):
    reason = _reason(images.rgb(tmp_path / "tiny.png", size=(2, 2)))
    assert reason == "too small (2x2 px, each side needs at least 8 px)"


@pytest.mark.parametrize(
    "size",
    [
        (8000, 8000),  # over our limit, under PIL's: our own header check
        (10000, 10000),  # over PIL's warning limit: the warning becomes an error
        (100000, 100000),  # over PIL's error limit
    ],
)
def test_decompression_bomb_is_refused_before_decoding(tmp_path, images, size):
    path = images.png_claiming_size(tmp_path / "bomb.png", *size)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may leak out as a warning either
        assert reason_kind(_reason(path)) == "decompression bomb"
    assert not any(f[2] is Image.DecompressionBombWarning and f[0] == "error"
                   for f in warnings.filters)


def test_small_max_pixels(tmp_path, images):
    path = images.rgb(tmp_path / "a.png", size=(40, 30))
    assert _reason(path, max_pixels=1000) == (
        "decompression bomb (40x30 px is more than the 1,000 pixel limit)"
    )
    assert load_rgb(path, max_pixels=1200)[0].size == (40, 30)


def test_max_pixels_above_pils_limit_is_honoured(tmp_path, images):
    # 10000x10000 is above PIL's warning limit but below the caller's: decoding is attempted
    # (and fails on the fake data) instead of being refused as a bomb.
    path = images.png_claiming_size(tmp_path / "big.png", 10000, 10000)
    assert reason_kind(_reason(path, max_pixels=150_000_000)) == "truncated or corrupt"
