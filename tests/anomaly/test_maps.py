"""Tests for vitkit.anomaly.maps (blur, upsampling) and vitkit.anomaly.overlay (pictures)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from vitkit.anomaly.maps import gaussian_blur, upsample_map
from vitkit.anomaly.overlay import heatmap_overlay, png_bytes, save_png_atomic

# ----------------------------------------------------------------------------- blur


def test_blur_matches_scipy_gaussian_filter_with_mirror_borders() -> None:
    # torch's "reflect" padding is scipy's "mirror" (the edge pixel is not repeated), and
    # scipy's radius int(4 * sigma + 0.5) equals ceil(4 * sigma) for these sigmas.
    rng = np.random.default_rng(0)
    maps = rng.random((2, 40, 52))
    for sigma in (1.0, 1.5, 2.0, 3.0):
        ours = gaussian_blur(torch.from_numpy(maps), sigma).numpy()
        for b in range(2):
            reference = ndimage.gaussian_filter(maps[b], sigma, mode="mirror", truncate=4.0)
            np.testing.assert_allclose(ours[b], reference, atol=1e-12)


def test_blur_preserves_mass_and_peak_of_an_interior_spike() -> None:
    maps = torch.zeros(1, 64, 64, dtype=torch.float64)
    maps[0, 30, 25] = 10.0
    blurred = gaussian_blur(maps, sigma=4.0)
    assert blurred.sum().item() == pytest.approx(10.0, rel=1e-12)
    assert divmod(int(blurred.argmax()), 64) == (30, 25)
    # Symmetric around the spike, and wider than it.
    assert blurred[0, 30, 20].item() == pytest.approx(blurred[0, 30, 30].item(), rel=1e-12)
    assert blurred[0, 30, 25].item() < 1.0


@pytest.mark.parametrize("shape", [(3, 32, 40), (1, 5, 7), (2, 1, 9), (1, 1, 1)])
def test_blur_keeps_a_constant_map_constant_even_when_smaller_than_the_kernel(shape) -> None:
    maps = torch.full(shape, 2.5)
    blurred = gaussian_blur(maps, sigma=4.0)  # radius 16 > 5, 7: the kernel is shortened
    assert blurred.shape == shape and blurred.dtype == torch.float32
    torch.testing.assert_close(blurred, maps)


def test_blur_sigma_zero_is_identity_and_dtype_is_kept() -> None:
    maps = torch.rand(2, 8, 8)
    assert torch.equal(gaussian_blur(maps, 0.0), maps)
    half = gaussian_blur(maps.half(), 1.0)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), gaussian_blur(maps, 1.0), atol=2e-3, rtol=0)


@pytest.mark.parametrize(
    ("maps", "sigma", "message"),
    [
        (torch.zeros(8, 8), 1.0, r"\(B, H, W\)"),
        (torch.zeros(1, 8, 8, dtype=torch.int64), 1.0, "floating point"),
        (np.zeros((1, 8, 8)), 1.0, "torch.Tensor"),
        (torch.zeros(1, 8, 8), -1.0, "sigma"),
        (torch.zeros(1, 8, 8), float("nan"), "sigma"),
    ],
)
def test_blur_rejects_bad_input(maps, sigma, message) -> None:
    with pytest.raises(ValueError, match=message):
        gaussian_blur(maps, sigma)


# ----------------------------------------------------------------------------- upsample


def test_upsample_shape_and_peak_lands_in_its_patch_region() -> None:
    patch_map = torch.zeros(2, 4, 6)
    patch_map[0, 1, 4] = 1.0  # rows 25..49, columns 80..99 of a 100 x 120 image
    patch_map[1, 3, 0] = 1.0  # rows 75..99, columns 0..19
    for sigma in (0.0, 4.0):
        full = upsample_map(patch_map, (100, 120), sigma=sigma)
        assert full.shape == (2, 100, 120)
        for b, (rows, cols) in enumerate([(slice(25, 50), slice(80, 100)),
                                          (slice(75, 100), slice(0, 20))]):
            row, col = divmod(int(full[b].argmax()), 120)
            assert rows.start <= row < rows.stop and cols.start <= col < cols.stop
            inside = full[b, rows, cols].mean()
            outside = (full[b].sum() - full[b, rows, cols].sum()) / (100 * 120 - 25 * 20)
            assert inside > 5 * outside


def test_upsample_constant_map_stays_constant_and_keeps_dtype() -> None:
    patch_map = torch.full((1, 7, 7), 0.3, dtype=torch.float64)
    full = upsample_map(patch_map, (224, 224))
    assert full.dtype == torch.float64
    torch.testing.assert_close(full, torch.full((1, 224, 224), 0.3, dtype=torch.float64))


def test_upsample_same_size_without_smoothing_is_identity() -> None:
    patch_map = torch.rand(1, 16, 16)
    torch.testing.assert_close(upsample_map(patch_map, (16, 16), sigma=0.0), patch_map)


@pytest.mark.parametrize("size", [(0, 10), (10,), (10.5, 10), "ab"])
def test_upsample_rejects_bad_sizes(size) -> None:
    with pytest.raises(ValueError, match="size"):
        upsample_map(torch.zeros(1, 4, 4), size)


# ----------------------------------------------------------------------------- overlay


def _hot_block_map() -> np.ndarray:
    """A 12 x 16 map, 0 everywhere but 1 on rows 3..6 and columns 8..11."""
    amap = np.zeros((12, 16), dtype=np.float32)
    amap[3:7, 8:12] = 1.0
    return amap


def test_overlay_is_same_size_rgb_and_red_on_the_hot_region() -> None:
    image = Image.new("L", (64, 48), 128)  # gray, not RGB: converted
    out = heatmap_overlay(image, _hot_block_map(), vmin=0.0, vmax=1.0, alpha=0.6)
    assert out.mode == "RGB" and out.size == (64, 48)
    pixels = np.asarray(out).astype(int)
    # The map is resized x4: the hot block covers rows 12..27, columns 32..47.
    r, g, b = pixels[20, 40]
    assert r > g + 50 and r > b + 50
    r, g, b = pixels[5, 5]  # cold: the blue end of "jet"
    assert b > r + 50 and b > g + 50


def _jet(level: float) -> np.ndarray:
    """RGB 0..255 (float64) of matplotlib's jet at ``level`` in [0, 1]."""
    import matplotlib

    return np.asarray(matplotlib.colormaps["jet"](level)[:3]) * 255.0


def test_overlay_pixels_are_the_blend_of_image_and_colour() -> None:
    image = Image.new("L", (64, 48), 128)
    out = np.asarray(heatmap_overlay(image, _hot_block_map(), 0.0, 1.0, alpha=0.6)).astype(int)
    # Inside the hot block (value 1 after the x4 resize) and far from it (value 0):
    # 0.4 * 128 + 0.6 * jet(1) = 0.4 * 128 + 0.6 * (127.5, 0, 0) -> (128, 51, 51).
    np.testing.assert_array_equal(out[20, 40], np.rint(0.4 * 128 + 0.6 * _jet(1.0)))
    np.testing.assert_array_equal(out[20, 40], [128, 51, 51])
    np.testing.assert_array_equal(out[5, 5], np.rint(0.4 * 128 + 0.6 * _jet(0.0)))
    np.testing.assert_array_equal(out[5, 5], [51, 51, 128])
    # Every pixel, on a random picture and a map at a quarter of the range: the colour of
    # level round(0.25 * 255) / 255, 30% of it; the image, 70%. Float64 here, float32 in
    # the code: at most 1 apart where a value falls near .5 (measured: 3 of 576 differ).
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    amap = np.full((12, 16), 2.5)
    got = np.asarray(heatmap_overlay(Image.fromarray(picture), amap, 2.0, 4.0, alpha=0.3))
    expected = np.rint(0.7 * picture + 0.3 * _jet(np.rint(0.25 * 255) / 255))
    assert np.abs(got.astype(int) - expected).max() <= 1
    assert (got == expected).mean() >= 0.99


def test_overlay_colours_follow_the_given_range_not_the_map() -> None:
    image = Image.new("RGB", (16, 12), (128, 128, 128))
    amap = _hot_block_map()
    narrow = np.asarray(heatmap_overlay(image, amap, 0.0, 1.0)).astype(int)
    wide = np.asarray(heatmap_overlay(image, amap, 0.0, 4.0)).astype(int)
    # Under a wider range the same value is cooler: less red, more blue.
    assert wide[4, 9, 0] < narrow[4, 9, 0] - 40
    assert wide[4, 9, 2] > narrow[4, 9, 2] + 40


def test_overlay_alpha_zero_returns_the_image() -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    out = heatmap_overlay(image, _hot_block_map(), 0.0, 1.0, alpha=0.0)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(image))


def test_overlay_threshold_draws_a_contour_around_the_region() -> None:
    image = Image.new("RGB", (16, 12), (0, 0, 0))
    out = np.asarray(heatmap_overlay(image, _hot_block_map(), 0.0, 1.0, threshold=0.5,
                                     contour_color=(0, 255, 0)))
    green = np.all(out == (0, 255, 0), axis=-1)
    expected = np.zeros((12, 16), dtype=bool)
    expected[3:7, 8:12] = True
    expected[4:6, 9:11] = False  # the inner border of the 4 x 4 block
    np.testing.assert_array_equal(green, expected)
    # Without a threshold there is no outline.
    plain = np.asarray(heatmap_overlay(image, _hot_block_map(), 0.0, 1.0))
    assert not np.all(plain == (0, 255, 0), axis=-1).any()


def test_overlay_contour_is_thicker_on_large_images() -> None:
    image = Image.new("RGB", (512, 512), (0, 0, 0))
    amap = np.zeros((512, 512), dtype=np.float32)
    amap[200:300, 200:300] = 1.0
    out = np.asarray(heatmap_overlay(image, amap, 0.0, 1.0, threshold=0.5))
    white_row = np.all(out[250] == 255, axis=-1)
    assert white_row[198:203].all() and not white_row[195:197].any()  # 5 px around 200
    assert not white_row[205:295].any()


@pytest.mark.parametrize(
    ("amap", "kwargs", "message"),
    [
        (np.zeros((2, 3, 4)), {}, r"\(H, W\)"),
        (np.full((4, 4), np.nan), {}, "NaN"),
        (np.zeros((4, 4)), {"vmin": 1.0, "vmax": 1.0}, "vmin < vmax"),
        (np.zeros((4, 4)), {"alpha": 1.5}, "alpha"),
        (np.zeros((4, 4)), {"cmap": "no-such-map"}, "colormap"),
    ],
)
def test_overlay_rejects_bad_input(amap, kwargs, message) -> None:
    arguments = {"vmin": 0.0, "vmax": 1.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        heatmap_overlay(Image.new("RGB", (4, 4)), amap, **arguments)


def test_png_bytes_and_atomic_save_round_trip(tmp_path) -> None:
    image = heatmap_overlay(Image.new("RGB", (16, 12), (10, 200, 30)), _hot_block_map(), 0, 1)
    data = png_bytes(image)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as decoded:
        np.testing.assert_array_equal(np.asarray(decoded), np.asarray(image))
    path = save_png_atomic(image, tmp_path / "maps" / "000_scratch.png")
    assert path.read_bytes() == data
    assert sorted(p.name for p in path.parent.iterdir()) == ["000_scratch.png"]  # no temp left
