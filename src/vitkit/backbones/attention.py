"""Which attention path a model runs: PyTorch's fused ``scaled_dot_product_attention`` or not.

timm's attention layers carry a ``fused_attn`` flag, set at construction from
``timm.layers.use_fused_attn()``: on for its tested layers (ViT, DeiT, EVA, …) unless the
environment says ``TIMM_FUSED_ATTN=0`` or timm was put in exportable mode; off for layers it
marks experimental (Swin's window attention) unless ``TIMM_FUSED_ATTN=2``. The fused path
(SDPA) never materialises the attention matrix, so it is faster and lighter to train; vitkit
leaves the flag as timm set it. Attention rollout (``vitkit.explain``) needs the matrix: it
switches each layer to the explicit path only while it records, and restores the flag after.
Hugging Face models name their path in ``config._attn_implementation``.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from vitkit.backbones.model import ImageClassifier

AttentionPath = Literal["sdpa", "eager", "mixed", "none"]


def attention_path(model: ImageClassifier) -> AttentionPath:
    """``sdpa`` when every attention layer runs fused, ``eager`` when none does, ``mixed``
    between, ``none`` for a model without attention layers (a CNN)."""
    if model.source == "hf":
        has_attention = any(type(m).__name__.endswith("Attention") for m in model.modules())
        if not has_attention:
            return "none"
        name = str(getattr(model.model.config, "_attn_implementation", "eager"))
        return "sdpa" if name in ("sdpa", "flash_attention_2") else "eager"
    flags = {bool(m.fused_attn) for m in model.modules() if _is_timm_attention(m)}
    if not flags:
        return "none"
    if flags == {True}:
        return "sdpa"
    return "eager" if flags == {False} else "mixed"


def _is_timm_attention(module: nn.Module) -> bool:
    return hasattr(module, "fused_attn") and isinstance(getattr(module, "attn_drop", None),
                                                        nn.Module)
