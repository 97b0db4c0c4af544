"""Attention rollout (Abnar & Zuidema, 2020) and last-layer class-token attention.

Pure math: per-layer attention weights ``(B, heads, N, N)`` in, relevance per patch out. The
caller captures the softmaxed attention of every block (see :mod:`vitkit.explain.targets`).

Rollout, as in the reference implementation (jacobgil/vit-explain), per layer:

1. fuse the heads (``mean``, ``max`` or ``min`` over heads) into one ``(N, N)`` matrix;
2. discard noise: the lowest ``discard_ratio`` share of its weights is set to zero, except the
   class token's attention to itself (entry ``(0, 0)``), so the class token never loses its
   residual path;
3. add the identity for the residual connection and renormalise every row to sum to 1
   (the reference's ``a / a.sum(dim=-1)`` broadcasts to divide entry ``(i, j)`` by row
   ``j``'s sum; normalised rows are what makes each step a mixing of token contents);
4. multiply into the running product, first layer rightmost: ``R = A_L ... A_2 A_1``.

The class token's row of ``R`` (without the prefix columns) is the patch relevance. Models
without a class token (average pooling) use the mean of all rows instead. The map is
class-agnostic: it shows where information flows to the output, not evidence for one class.

Defaults: discard ratio 0.9 (the reference's) with ``max`` head fusion. On small ViTs trained
from scratch where one patch decides the class (tests/explain/test_explain_sanity.py), max
fusion put the peak on that patch for 97-100 % of images in all five models tried, mean fusion
for 64-100 %: early layers attend almost uniformly, mean fusion keeps them uniform, and
discarding 90 % of a uniform matrix keeps random paths. Without discarding both were at 100 %.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

HeadFusion = Literal["mean", "max", "min"]
HEAD_FUSIONS: tuple[HeadFusion, ...] = ("mean", "max", "min")
# The reference defaults to mean; max was measured more robust with discard ratio 0.9 (see
# the module doc), so vitkit's explanations default to it.
DEFAULT_HEAD_FUSION: HeadFusion = "max"


def fuse_heads(attention: torch.Tensor, fusion: HeadFusion = "mean") -> torch.Tensor:
    """One ``(B, N, N)`` matrix from ``(B, heads, N, N)`` attention weights."""
    _check_attention(attention)
    if fusion == "mean":
        return attention.mean(dim=1)
    if fusion == "max":
        return attention.amax(dim=1)
    if fusion == "min":
        return attention.amin(dim=1)
    raise ValueError(f"head fusion must be one of {', '.join(HEAD_FUSIONS)}, got {fusion!r}")


def discard_lowest(fused: torch.Tensor, ratio: float) -> torch.Tensor:
    """``fused`` ``(B, N, N)`` with its lowest ``ratio`` share of entries, per image, set to
    zero; entry ``(0, 0)`` (the class token attending to itself) is always kept."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"discard ratio must be in [0, 1), got {ratio}")
    batch, n, _ = fused.shape
    count = min(int(n * n * ratio), n * n - 1)
    if count == 0:
        return fused
    flat = fused.reshape(batch, n * n)
    ranking = flat.clone()
    ranking[:, 0] = torch.inf  # never among the lowest
    lowest = ranking.topk(count, dim=1, largest=False).indices  # (B, count)
    return flat.scatter(1, lowest, 0.0).reshape(batch, n, n)


def attention_rollout(attentions: Sequence[torch.Tensor],
                      head_fusion: HeadFusion = DEFAULT_HEAD_FUSION,
                      discard_ratio: float = 0.9) -> torch.Tensor:
    """Rolled-out attention ``(B, N, N)`` through all layers (first layer first in the input).

    Args:
        attentions: Per layer, softmaxed attention ``(B, heads, N, N)``.
        head_fusion: How heads are combined in each layer.
        discard_ratio: Share of each fused matrix's lowest weights dropped before the product.
    """
    if not attentions:
        raise ValueError("attention rollout needs the attention of at least one layer")
    first = attentions[0]
    _check_attention(first)
    batch, _, n, _ = first.shape
    identity = torch.eye(n, dtype=first.dtype, device=first.device)
    result = identity.expand(batch, n, n)
    for attention in attentions:
        fused = discard_lowest(fuse_heads(attention.to(first.dtype), head_fusion), discard_ratio)
        mixed = (fused + identity) / 2
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        result = mixed @ result
    return result


def class_token_relevance(matrix: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Patch relevance ``(B, N - prefix)``: the class token's row of an ``(B, N, N)`` token
    matrix without the prefix columns (the mean row when there is no prefix token)."""
    row = matrix[:, 0] if num_prefix_tokens > 0 else matrix.mean(dim=1)
    return row[:, num_prefix_tokens:]


def rollout_relevance(attentions: Sequence[torch.Tensor], num_prefix_tokens: int,
                      head_fusion: HeadFusion = DEFAULT_HEAD_FUSION,
                      discard_ratio: float = 0.9) -> torch.Tensor:
    """Patch relevance ``(B, patches)`` by attention rollout."""
    rolled = attention_rollout(attentions, head_fusion, discard_ratio)
    return class_token_relevance(rolled, num_prefix_tokens)


def last_layer_relevance(attentions: Sequence[torch.Tensor], num_prefix_tokens: int,
                         head_fusion: HeadFusion = DEFAULT_HEAD_FUSION) -> torch.Tensor:
    """Patch relevance ``(B, patches)``: the last layer's class-token attention, heads fused."""
    if not attentions:
        raise ValueError("last-layer attention needs the attention of at least one layer")
    return class_token_relevance(fuse_heads(attentions[-1], head_fusion), num_prefix_tokens)


def relevance_to_grid(relevance: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch relevance ``(B, h * w)`` as maps ``(B, h, w)`` (patches in row-major order)."""
    height, width = grid
    if relevance.shape[1] != height * width:
        raise ValueError(f"{relevance.shape[1]} patch values do not fill a {height}x{width} grid")
    return relevance.reshape(relevance.shape[0], height, width)


def _check_attention(attention: torch.Tensor) -> None:
    if attention.ndim != 4 or attention.shape[-1] != attention.shape[-2]:
        raise ValueError("attention must have shape (B, heads, N, N), got "
                         f"{tuple(attention.shape)}")
