"""Grad-CAM, Grad-CAM++ and attention rollout on small tensors computed by hand."""

from __future__ import annotations

import pytest
import torch

from vitkit.explain.gradcam import gradcam, gradcam_plus_plus, normalize_maps, tokens_to_grid
from vitkit.explain.overlay import model_view, peak_location, upsample_map
from vitkit.explain.rollout import (
    attention_rollout,
    class_token_relevance,
    discard_lowest,
    fuse_heads,
    last_layer_relevance,
    relevance_to_grid,
    rollout_relevance,
)

# Two channels on a 2x2 grid.
A = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]], [[0.0, 3.0], [1.0, 0.0]]]])


def test_gradcam_weights_channels_by_their_mean_gradient() -> None:
    grads = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]], [[-2.0, 0.0], [0.0, -2.0]]]])
    # weights (1, -1): relu(A0 - A1) = relu([[1, -3], [-1, 2]])
    expected = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    torch.testing.assert_close(gradcam(A, grads), expected)


def test_gradcam_plus_plus_matches_hand_computation() -> None:
    grads = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]], [[2.0, 0.0], [0.0, 0.0]]]])
    # channel 0: alpha = 1 / (2 + 3 * 1) = 0.2 at all four positions -> weight 4 * 0.2 = 0.8
    # channel 1: alpha = 4 / (8 + 4 * 8) = 0.1 where g = 2 -> weight 0.1 * 2 = 0.2
    expected = 0.8 * A[0, 0] + 0.2 * A[0, 1]
    torch.testing.assert_close(gradcam_plus_plus(A, grads), expected[None], atol=1e-5, rtol=1e-5)


def test_gradcam_plus_plus_ignores_negative_gradients() -> None:
    grads = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]], [[-2.0, 0.0], [0.0, -2.0]]]])
    torch.testing.assert_close(gradcam_plus_plus(A, grads), 0.8 * A[:, 0], atol=1e-5, rtol=1e-5)


def test_gradcam_rejects_token_maps_and_mismatched_gradients() -> None:
    with pytest.raises(ValueError, match="tokens_to_grid"):
        gradcam(torch.zeros(1, 5, 4), torch.zeros(1, 5, 4))
    with pytest.raises(ValueError, match="do not match"):
        gradcam(A, torch.zeros(1, 2, 3, 3))


def test_tokens_are_laid_on_their_grid_row_major_without_prefix() -> None:
    # (B=1, N=1+4, C=2): class token, then patches p0..p3 with channel values (10k, 10k+1).
    tokens = torch.tensor([[[-1.0, -1.0], [0.0, 1.0], [10.0, 11.0], [20.0, 21.0], [30.0, 31.0]]])
    grid = tokens_to_grid(tokens, (2, 2), num_prefix_tokens=1)
    assert grid.shape == (1, 2, 2, 2)
    torch.testing.assert_close(grid[0, 0], torch.tensor([[0.0, 10.0], [20.0, 30.0]]))
    torch.testing.assert_close(grid[0, 1], torch.tensor([[1.0, 11.0], [21.0, 31.0]]))
    with pytest.raises(ValueError, match="patch grid"):
        tokens_to_grid(tokens, (3, 3), num_prefix_tokens=1)


def test_normalize_maps_scales_each_map_to_unit_range() -> None:
    maps = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[4.0, 4.0], [4.0, 4.0]]])
    out = normalize_maps(maps)
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    torch.testing.assert_close(out[1], torch.zeros(2, 2))  # a flat map has no peak


def test_head_fusion() -> None:
    heads = torch.tensor([[[[0.5, 0.5], [0.2, 0.8]], [[0.9, 0.1], [0.6, 0.4]]]])
    torch.testing.assert_close(fuse_heads(heads, "mean"), torch.tensor([[[0.7, 0.3], [0.4, 0.6]]]))
    torch.testing.assert_close(fuse_heads(heads, "max"), torch.tensor([[[0.9, 0.5], [0.6, 0.8]]]))
    torch.testing.assert_close(fuse_heads(heads, "min"), torch.tensor([[[0.5, 0.1], [0.2, 0.4]]]))
    with pytest.raises(ValueError, match="head fusion"):
        fuse_heads(heads, "median")  # type: ignore[arg-type]


def test_discard_drops_lowest_weights_but_keeps_class_token_self_attention() -> None:
    fused = torch.tensor([[[0.1, 0.2, 0.7], [0.3, 0.3, 0.4], [0.05, 0.15, 0.8]]])
    # int(9 * 0.34) = 3 lowest, (0, 0) = 0.1 excluded: 0.05, 0.15 and 0.2 go.
    expected = torch.tensor([[[0.1, 0.0, 0.7], [0.3, 0.3, 0.4], [0.0, 0.0, 0.8]]])
    torch.testing.assert_close(discard_lowest(fused, 0.34), expected)
    torch.testing.assert_close(discard_lowest(fused, 0.0), fused)
    with pytest.raises(ValueError, match="discard ratio"):
        discard_lowest(fused, 1.0)


def test_discard_works_per_image() -> None:
    fused = torch.tensor([[[0.5, 0.1], [0.2, 0.3]], [[0.5, 0.3], [0.2, 0.1]]])
    out = discard_lowest(fused, 0.25)  # one entry each
    torch.testing.assert_close(out[0], torch.tensor([[0.5, 0.0], [0.2, 0.3]]))
    torch.testing.assert_close(out[1], torch.tensor([[0.5, 0.3], [0.2, 0.0]]))


def test_rollout_one_and_two_layers_by_hand() -> None:
    first = torch.tensor([[[[0.5, 0.5], [0.2, 0.8]]]])  # (B=1, heads=1, N=2, N=2)
    second = torch.tensor([[[[0.9, 0.1], [0.3, 0.7]]]])
    # (A + I) / 2, rows already sum to one: [[0.75, 0.25], [0.1, 0.9]].
    one = attention_rollout([first], discard_ratio=0.0)
    torch.testing.assert_close(one, torch.tensor([[[0.75, 0.25], [0.1, 0.9]]]))
    # [[0.95, 0.05], [0.15, 0.85]] @ [[0.75, 0.25], [0.1, 0.9]]
    two = attention_rollout([first, second], discard_ratio=0.0)
    torch.testing.assert_close(two[0, 0], torch.tensor([0.7175, 0.2825]))
    relevance = rollout_relevance([first, second], num_prefix_tokens=1, discard_ratio=0.0)
    torch.testing.assert_close(relevance, torch.tensor([[0.2825]]))


def test_rollout_renormalises_rows_after_discarding() -> None:
    attention = torch.softmax(torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0)),
                              dim=-1)
    rolled = attention_rollout([attention, attention, attention], "max", 0.5)
    torch.testing.assert_close(rolled.sum(dim=-1), torch.ones(2, 5))


def test_rollout_follows_hand_made_attention_to_one_patch() -> None:
    # 1 class token + a 2x2 grid; every layer's class token attends to patch 2 (row 1, col 0).
    attention = torch.full((1, 2, 5, 5), 0.2)
    attention[:, :, 0] = torch.tensor([0.1, 0.0, 0.0, 0.9, 0.0])
    layers = [attention] * 4
    relevance = rollout_relevance(layers, num_prefix_tokens=1, discard_ratio=0.5)
    grid = relevance_to_grid(relevance, (2, 2))
    assert int(grid[0].argmax()) == 2
    last = relevance_to_grid(last_layer_relevance(layers, num_prefix_tokens=1), (2, 2))
    torch.testing.assert_close(last[0], torch.tensor([[0.0, 0.0], [0.9, 0.0]]))


def test_relevance_without_class_token_uses_mean_row() -> None:
    matrix = torch.tensor([[[0.5, 0.5], [0.1, 0.9]]])
    torch.testing.assert_close(class_token_relevance(matrix, 0), torch.tensor([[0.3, 0.7]]))
    torch.testing.assert_close(class_token_relevance(matrix, 1), torch.tensor([[0.5]]))


def test_upsampled_peak_stays_in_its_cell() -> None:
    amap = torch.tensor([[0.0, 0.2], [1.0, 0.1]])  # peak in the bottom-left cell
    row, col = peak_location(amap, (64, 64))
    assert row >= 32 and col < 32
    assert upsample_map(amap, (64, 48)).shape == (64, 48)


def test_overlay_blends_the_upsampled_map_over_the_image() -> None:
    import matplotlib
    import numpy as np
    from PIL import Image

    from vitkit.explain.overlay import overlay_map

    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    amap = torch.tensor([[0.0, 1.0], [0.25, 0.5]])
    out = np.asarray(overlay_map(Image.fromarray(picture), amap, alpha=0.4)).astype(int)
    assert out.shape == (32, 48, 3)
    # Corner pixels keep their cell's value exactly under bilinear upsampling; the colour is
    # jet at that level (quantised to 256 steps), blended 40% over the picture.
    for (row, col), level in {(0, 0): 0.0, (0, 47): 1.0, (31, 0): 0.25, (31, 47): 0.5}.items():
        colour = np.asarray(matplotlib.colormaps["jet"](np.rint(level * 255) / 255)[:3]) * 255
        # No channel falls near .5 here, so float32 (code) and float64 (here) round alike.
        np.testing.assert_array_equal(out[row, col], np.rint(0.6 * picture[row, col]
                                                             + 0.4 * colour))
    # alpha 0 gives the picture back, alpha 1 the colours alone (the picture has no say).
    np.testing.assert_array_equal(
        np.asarray(overlay_map(Image.fromarray(picture), amap, alpha=0.0)), picture)
    alone = np.asarray(overlay_map(Image.fromarray(255 - picture), amap, alpha=1.0))
    np.testing.assert_array_equal(
        alone, np.asarray(overlay_map(Image.fromarray(picture), amap, alpha=1.0)))


def test_model_view_undoes_normalisation() -> None:
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    pixels = torch.tensor([1.0, 0.0, 0.5])[:, None, None].expand(3, 2, 2)
    image = model_view((pixels - torch.tensor(mean)[:, None, None])
                       / torch.tensor(std)[:, None, None], mean, std)
    assert image.size == (2, 2) and image.getpixel((0, 0)) == (255, 0, 128)
