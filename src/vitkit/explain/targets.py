"""Which layer an explanation looks at, and how to see a transformer's attention weights.

Layer names are dotted module names inside the backbone (``ImageClassifier.model``), as
``model.named_modules()`` lists them: ``layer4`` (timm ResNet), ``bn2`` (EfficientNet),
``blocks.11.norm1`` (timm ViT), ``vit.layers.11.layernorm_before`` (Hugging Face ViT).

Automatic choice:

- CNNs: the last module whose output is still a spatial feature map ``(B, C, H, W)`` with
  ``H, W > 1``, found by running one blank image through the model. That is the map right
  before the global pool, the layer Grad-CAM's authors and pytorch-grad-cam recommend.
  Containers finish after their children, so the stage (``layer4``) wins over its last
  block when both hand over the same tensor.
- Transformers: the pre-attention norm of the last block (``norm1``/``layernorm_before``),
  pytorch-grad-cam's choice for ViTs. The last block's *output* would not do with class-token
  pooling: after the last attention nothing flows from the patch tokens to the class token,
  so their gradients are zero.

timm ViTs run fused attention (``scaled_dot_product_attention``), which never materialises
the weights, so a hook on them never fires. :func:`capture_attention` switches every
attention module to its explicit path for the duration of the pass, records the softmaxed
weights as they enter ``attn_drop``, and restores the fused path afterwards; Hugging Face
models are switched to their ``eager`` attention the same way.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vitkit.backbones import ImageClassifier
from vitkit.errors import ConfigError, VitkitError

_SHOWN_CANDIDATES = 12


@dataclass(frozen=True)
class ProbedLayer:
    """A module and the shape of its output for one image, in the order modules finished."""

    name: str
    shape: tuple[int, ...]
    output_id: int
    is_identity: bool


@dataclass
class AttentionRecorder:
    """Softmaxed attention ``(B, heads, N, N)`` of every layer, in the order they ran."""

    maps: list[torch.Tensor] = field(default_factory=list)

    def clear(self) -> None:
        self.maps.clear()


def attention_modules(model: ImageClassifier) -> list[tuple[str, nn.Module]]:
    """The self-attention modules of a transformer (empty for a CNN), first block first."""
    if model.source == "timm":
        return [(name, module) for name, module in model.model.named_modules()
                if hasattr(module, "fused_attn")
                and isinstance(getattr(module, "attn_drop", None), nn.Module)]
    named = [(name, module) for name, module in model.model.named_modules()
             if type(module).__name__.endswith("Attention")]
    # Older transformers nest ViTSelfAttention in ViTAttention: keep the innermost only.
    return [(name, module) for name, module in named
            if not any(other.startswith(name + ".") for other, _ in named)]


def is_transformer(model: ImageClassifier) -> bool:
    """Whether the model has attention layers whose weights can be captured."""
    return bool(attention_modules(model))


@contextmanager
def capture_attention(model: ImageClassifier) -> Iterator[AttentionRecorder]:
    """Records every attention layer's weights while the block runs (see the module doc).

    Raises:
        VitkitError: If the model has no attention layers.
    """
    modules = attention_modules(model)
    if not modules:
        raise VitkitError("this model has no attention layers to capture; attention rollout "
                          "and attn-last work on Vision Transformers only. Use --method gradcam "
                          "or gradcam++ for CNNs.")
    recorder = AttentionRecorder()
    handles: list[Any] = []
    restore: list[tuple[nn.Module, bool]] = []
    hf_previous = None
    try:
        if model.source == "timm":
            for _, module in modules:
                restore.append((module, bool(module.fused_attn)))
                module.fused_attn = False  # type: ignore[assignment]  # explicit path: weights exist
                handles.append(module.attn_drop.register_forward_hook(  # type: ignore[union-attr]
                    lambda _m, inputs, _out: recorder.maps.append(inputs[0])))
        else:
            hf_previous = model.model.config._attn_implementation  # type: ignore[union-attr]
            model.model.set_attn_implementation("eager")  # type: ignore[operator]
            for _, module in modules:
                handles.append(module.register_forward_hook(_record_hf_weights(recorder)))
        yield recorder
    finally:
        for handle in handles:
            handle.remove()
        for module, fused in restore:
            module.fused_attn = fused  # type: ignore[assignment]
        if hf_previous is not None:
            model.model.set_attn_implementation(hf_previous)  # type: ignore[operator]


def _record_hf_weights(recorder: AttentionRecorder) -> Any:
    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if isinstance(weights, torch.Tensor) and weights.ndim == 4:
            recorder.maps.append(weights)
    return hook


def token_layout(model: ImageClassifier, input_size: tuple[int, int],
                 num_tokens: int) -> tuple[int, tuple[int, int]]:
    """``(num_prefix_tokens, (h, w))`` of a transformer's ``num_tokens`` tokens for an input
    of ``input_size`` (height, width).

    Raises:
        VitkitError: If the tokens cannot be laid on a patch grid.
    """
    patch = _patch_size(model)
    if patch is not None:
        grid = (input_size[0] // patch[0], input_size[1] // patch[1])
        prefix = num_tokens - grid[0] * grid[1]
        if prefix >= 0:
            return prefix, grid
    for prefix in range(0, min(num_tokens, 9)):  # class, distillation and register tokens
        side = math.isqrt(num_tokens - prefix)
        if side > 1 and side * side == num_tokens - prefix:
            return prefix, (side, side)
    raise VitkitError(f"cannot lay {num_tokens} tokens on a patch grid for a "
                      f"{input_size[0]}x{input_size[1]} input; this architecture is not "
                      "supported by the token-map explanations (try another --layer).")


def _patch_size(model: ImageClassifier) -> tuple[int, int] | None:
    if model.source == "timm":
        patch_embed = getattr(model.model, "patch_embed", None)
        size = getattr(patch_embed, "patch_size", None)
    else:
        size = getattr(getattr(model.model, "config", None), "patch_size", None)
    if size is None:
        return None
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def default_target_layer(model: ImageClassifier, input_size: tuple[int, int]) -> str:
    """The layer Grad-CAM explains when ``--layer`` is not given (see the module doc).

    Raises:
        VitkitError: If no suitable layer can be found.
    """
    modules = attention_modules(model)
    if modules:
        return _pre_attention_norm(model, modules[-1][0])
    spatial = [layer for layer in probe_layers(model, input_size) if _is_spatial(layer)]
    if not spatial:
        raise VitkitError("found no layer that gives a spatial feature map (B, C, H, W) with "
                          "H, W > 1; the input may be too small for this model. Name one "
                          "with --layer.")
    final = spatial[-1]
    return _preferred([layer for layer in spatial if layer.output_id == final.output_id]).name


def _pre_attention_norm(model: ImageClassifier, attention_name: str) -> str:
    block_name = attention_name.rsplit(".", 1)[0] if "." in attention_name else ""
    block = model.model.get_submodule(block_name)
    for child_name, child in block.named_children():
        if isinstance(child, nn.LayerNorm) or type(child).__name__.endswith("LayerNorm"):
            return f"{block_name}.{child_name}" if block_name else child_name
    raise VitkitError(f"cannot find the pre-attention norm of block '{block_name}'; name the "
                      "layer to explain with --layer (e.g. the block's first norm).")


def resolve_layer(model: ImageClassifier, name: str,
                  input_size: tuple[int, int] | None = None) -> nn.Module:
    """The module called ``name`` in the backbone (a leading ``model.`` is accepted).

    Raises:
        ConfigError: If there is no such module; the message lists likely candidates.
    """
    known = dict(model.model.named_modules())
    for candidate in (name, name.removeprefix("model.")):
        if candidate and candidate in known:
            return known[candidate]
    candidates = layer_candidates(model, input_size) if input_size else []
    close = difflib.get_close_matches(name, list(known), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    listed = ", ".join(candidates[:_SHOWN_CANDIDATES]) or ", ".join(list(known)[1:13])
    more = " …" if len(candidates) > _SHOWN_CANDIDATES else ""
    raise ConfigError(f"the model has no layer named '{name}'.{hint} Layers that give a "
                      f"feature map, last first: {listed}{more}.")


def layer_candidates(model: ImageClassifier, input_size: tuple[int, int]) -> list[str]:
    """Likely ``--layer`` values, the usual choice first: each block's pre-attention norm for a
    transformer; for a CNN, the stages and blocks (one name per distinct feature map)."""
    modules = attention_modules(model)
    if modules:
        return [_pre_attention_norm(model, name) for name, _ in reversed(modules)]
    spatial = [layer for layer in probe_layers(model, input_size) if _is_spatial(layer)]
    groups: dict[int, list[ProbedLayer]] = {}
    for layer in spatial:
        groups.setdefault(layer.output_id, []).append(layer)
    names = [_preferred(group).name for group in groups.values()]
    shallow = [name for name in names if name.count(".") <= 1]
    return list(reversed(shallow or names))


def _preferred(same_output: list[ProbedLayer]) -> ProbedLayer:
    """The clearest name among modules handing over the same tensor: a real layer over an
    Identity, the outermost (a stage over its last block), the first to finish on a tie."""
    return min(same_output, key=lambda layer: (layer.is_identity, layer.name.count(".")))


def blank_pass(model: nn.Module, input_size: tuple[int, int],
               modules: Iterable[tuple[str, nn.Module]],
               on_output: Callable[[str, nn.Module, torch.Tensor], None]) -> None:
    """Runs ``model`` (in eval mode, without gradients) on one blank image of ``input_size``
    and calls ``on_output(name, module, output)`` for each tensor output of ``modules``, in
    the order they finish; the model's mode and hooks are restored afterwards."""
    def recorder(name: str, module: nn.Module) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                on_output(name, module, output)
        return hook

    handles = [module.register_forward_hook(recorder(name, module)) for name, module in modules]
    parameter = next(model.parameters())
    blank = torch.zeros(1, 3, *input_size, dtype=parameter.dtype, device=parameter.device)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(blank)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def probe_layers(model: ImageClassifier, input_size: tuple[int, int]) -> list[ProbedLayer]:
    """Every backbone module with a tensor output (head excluded), in the order they finish,
    for one blank image of ``input_size``."""
    head_ids = {id(m) for m in model.head.modules()}
    found: list[ProbedLayer] = []
    alive: list[torch.Tensor] = []  # so that no two outputs share an id() during the probe

    def record(name: str, module: nn.Module, output: torch.Tensor) -> None:
        alive.append(output)
        found.append(ProbedLayer(name, tuple(output.shape), id(output),
                                 isinstance(module, nn.Identity)))

    blank_pass(model, input_size, [(n, m) for n, m in model.model.named_modules()
                                   if n and id(m) not in head_ids], record)
    return found


def _is_spatial(layer: ProbedLayer) -> bool:
    return len(layer.shape) == 4 and layer.shape[2] > 1 and layer.shape[3] > 1
