"""Token merging (ToMe, Bolya et al., ICLR 2023) for timm Vision Transformers.

Between the attention and the MLP of every block, the ``r`` most redundant patch tokens are
merged into their most similar partner, so each block works on ``r`` fewer tokens than the one
before: less work per image, no retraining. Prefix tokens (class, distillation, registers) are
never merged.

The math (:func:`bipartite_soft_matching`, :func:`merge_weighted`) is pure: tensors in,
tensors out. :func:`apply_tome` returns a patched *copy* of a model; the original is untouched.

Choices, and why:

- Similarity is the cosine of the attention **keys**, all heads concatenated (the paper averages
  them over heads first; in OpenVINO that mean over heads cost as much as the rest of the
  matching). The patched attention computes q, k, v itself before calling fused
  ``scaled_dot_product_attention``, so the keys are at hand even with fused attention.
- Proportional attention: ``log(size)`` is added to the attention logits, so a token that stands
  for ``s`` patches weighs as much as ``s`` copies of it would.
- Token sizes travel between blocks as a local variable of :class:`ToMeBlocks` (no state on the
  module), so one patched model can serve several threads.
- Matching uses ``topk``, flat ``index_select`` and a one-hot matmul on shapes fixed by the
  input size and ``r`` (no data-dependent Python branches), which keeps the graph exportable
  and fast in OpenVINO and ONNX Runtime.
- Pooling: class-token pooling (ViT, DeiT) is exact. Average pooling averages the merged tokens
  without weighting them by size (the paper does the same); that is an approximation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.errors import VitkitError

Merge = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------- the math
def bipartite_soft_matching(metric: torch.Tensor, r: int, protected: int = 1) -> Merge:
    """Plans the merge of ``r`` tokens; returns ``merge(x) -> x`` with ``r`` fewer tokens.

    The first ``protected`` tokens are kept as they are, at the front. The others are split
    alternately into sets A (even positions) and B (odd positions); each A token finds its most
    similar B token (cosine of ``metric``), and the ``r`` A tokens with the best matches are
    summed into their partners. Unmerged A tokens come first, then B (merged or not).

    ``merge`` *sums* the merged tokens; :func:`merge_weighted` turns that into a size-weighted
    mean.

    Only gathers with flat indices, a top-k and two small matrix products: no strided slices,
    expanded index tensors or scatters, which OpenVINO and ONNX Runtime run as slow reference
    kernels (they made a merged DeiT-tiny slower than the unmerged one in OpenVINO).

    Args:
        metric: ``(B, N, C)`` features whose similarity decides the matching (keys).
        r: Tokens to remove; clipped to half the unprotected tokens.
        protected: Leading tokens that are never merged (class token and the like).
    """
    batch, tokens = metric.shape[0], metric.shape[1]
    n_free = tokens - protected
    r = max(0, min(r, n_free // 2))
    if r == 0:
        return _identity
    device = metric.device
    a_pos = torch.arange(protected, tokens, 2, device=device)  # (Na,) positions of set A
    b_pos = torch.arange(protected + 1, tokens, 2, device=device)  # (Nb,)
    n_a, n_b = len(a_pos), len(b_pos)
    with torch.no_grad():
        free = metric.float()
        free = free / free.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        a, b = free.index_select(1, a_pos), free.index_select(1, b_pos)  # (B, Na, C), (B, Nb, C)
        scores = a @ b.transpose(-1, -2)  # (B, Na, Nb)
        best, partner = scores.max(dim=-1)  # (B, Na)
        order = best.topk(n_a, dim=-1).indices  # (B, Na), best matches first
        src = order[:, :r]  # A tokens merged away, as indices into A
        dst = partner.gather(1, src)  # (B, r): their partners, as indices into B
        # Gather index of the output tokens: protected, unmerged A, then all of B.
        head = torch.arange(protected, device=device).expand(batch, protected)
        keep = torch.cat([head, a_pos[order[:, r:]], b_pos.expand(batch, n_b)], dim=1)
        offsets = (torch.arange(batch, device=device) * tokens)[:, None]
        keep_flat = (keep + offsets).reshape(-1)  # (B * (N - r),)
        src_flat = (a_pos[src] + offsets).reshape(-1)  # (B * r,)
        # (B, Nb, r): one-hot of where each merged-away token goes, summed by a matmul.
        into_b = (dst[:, None, :] == torch.arange(n_b, device=device)[None, :, None])

    def merge(x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[-1]
        flat = x.reshape(batch * tokens, channels)
        out = flat.index_select(0, keep_flat).reshape(batch, tokens - r, channels)
        moved = flat.index_select(0, src_flat).reshape(batch, r, channels)
        added = into_b.to(x.dtype) @ moved  # (B, Nb, C)
        return torch.cat([out[:, :tokens - r - n_b], out[:, tokens - r - n_b:] + added], dim=1)

    return merge


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def merge_weighted(merge: Merge, x: torch.Tensor, size: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Merges ``x`` (B, N, C) as the size-weighted mean of the merged tokens.

    Returns the merged tokens and their sizes ``(B, N - r, 1)`` (patches each one stands for).
    """
    if size is None:
        size = torch.ones_like(x[..., :1])
    x = merge(x * size)
    size = merge(size)
    return x / size, size


# ------------------------------------------------------------------------- the patched model
def tome_attention(attn: Any, x: torch.Tensor, size: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """timm ``Attention.forward`` plus proportional attention; returns (output, mean keys)."""
    batch, tokens, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = attn.qkv(x).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
    q, k = attn.q_norm(q), attn.k_norm(k)
    bias = None
    if size is not None:
        bias = size.log()[:, None, None, :, 0].to(q.dtype)  # (B, 1, 1, N)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    out = out.transpose(1, 2).reshape(batch, tokens, attn.num_heads * attn.head_dim)
    out = getattr(attn, "norm", _identity)(out)
    if gate is not None:
        out = out * gate
    out = attn.proj_drop(attn.proj(out))
    if isinstance(attn.k_norm, nn.Identity):  # the keys as qkv laid them out: no transpose
        return out, qkv[:, :, 1].reshape(batch, tokens, -1)
    return out, k.transpose(1, 2).reshape(batch, tokens, -1)


def tome_block(block: Any, x: torch.Tensor, size: torch.Tensor | None, r: int,
               protected: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """timm ``Block.forward`` with a merge of ``r`` tokens between attention and MLP."""
    out, keys = tome_attention(block.attn, block.norm1(x), size)
    x = x + block.drop_path1(block.ls1(out))
    if r > 0:
        merge = bipartite_soft_matching(keys, r, protected)
        if merge is not _identity:
            x, size = merge_weighted(merge, x, size)
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x)))), size


class ToMeBlocks(nn.Sequential):
    """The ViT's ``blocks`` with token merging; same children, so the same state-dict keys."""

    def __init__(self, blocks: nn.Sequential, r: int, protected: int) -> None:
        super().__init__(*blocks)
        self.r = r
        self.protected = protected

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, N - depth*r, C)
        size: torch.Tensor | None = None
        for block in self:
            x, size = tome_block(block, x, size, self.r, self.protected)
        return x


def apply_tome(model: nn.Module, r: int) -> nn.Module:
    """A copy of ``model`` that merges ``r`` tokens per block (``r=0``: same outputs).

    ``model`` is a timm ``VisionTransformer`` (ViT, DeiT) or a module that holds one (such as a
    bundle's ``ImageClassifier``). The copy is in eval mode.

    Raises:
        VitkitError: ``r`` is negative, or the model has no timm ViT with standard blocks.
    """
    if r < 0:
        raise VitkitError(f"the token-merge rate r must be >= 0, got {r}.")
    patched = copy.deepcopy(model).eval()
    vit = find_vit(patched)
    protected = int(getattr(vit, "num_prefix_tokens", 1))
    vit.blocks = ToMeBlocks(vit.blocks, r, protected)
    return patched


def find_vit(model: nn.Module) -> Any:
    """The timm VisionTransformer inside ``model`` whose blocks token merging can patch."""
    from timm.layers.attention import Attention
    from timm.models.vision_transformer import Block, VisionTransformer

    for module in model.modules():
        if isinstance(module, VisionTransformer):
            blocks = list(module.blocks)
            if blocks and all(type(b) is Block and type(b.attn) is Attention for b in blocks):
                return module
            kinds = sorted({f"{type(b).__name__}/{type(b.attn).__name__}" for b in blocks})
            raise VitkitError("token merging supports timm ViT/DeiT blocks (Block with "
                              f"Attention); this model has {', '.join(kinds)}.")
    raise VitkitError(f"token merging needs a Vision Transformer (timm ViT or DeiT); "
                      f"{type(model).__name__} has none. Drop --tome for CNNs.")


def tome_supported(model: nn.Module) -> bool:
    """Whether :func:`apply_tome` can patch ``model``."""
    try:
        find_vit(model)
    except VitkitError:
        return False
    return True
