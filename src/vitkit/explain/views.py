"""Feature views: what the first layer looks for and which channels a layer fires.

``filters``: the weights of the first ``nn.Conv2d`` in module order (a CNN's stem, a ViT's
patch-embedding projection), one cell per filter: each filter min-max scaled on its own, shown
in RGB when it reads 3 channels (else the mean over its input channels, as grey), enlarged with
nearest-neighbour so a 3x3 kernel stays visible.

``features``: one layer's output for one image (a forward hook on the named module), its
``k`` channels with the most energy (mean of squares), each map min-max scaled, colour-mapped,
resized to the image as the model saw it and labelled with its channel index. Transformer
token outputs ``(B, N, D)`` lose their prefix tokens (class, distillation, registers) and are
laid on their patch grid as ``(D, gh, gw)``.

Pure tensor and PIL code: no files, no printing (:mod:`vitkit.workflows.explain` writes them).
"""

from __future__ import annotations

import difflib
import math
from typing import Any

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from vitkit.errors import ConfigError, VitkitError
from vitkit.explain.targets import blank_pass

GAP = 2  # pixels between grid cells
_BACKGROUND = (255, 255, 255)
_SHOWN_LAYERS = 12


def first_conv_filters(model: nn.Module) -> torch.Tensor:
    """The weight ``(out, in, kh, kw)`` of the first ``nn.Conv2d`` in ``model.modules()``
    order (the tensor itself, not a copy).

    Raises:
        VitkitError: If the model has no 2-D convolution.
    """
    return first_conv(model)[1].weight


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """``(name, module)`` of the first ``nn.Conv2d`` in module order, the name as the backbone
    spells it (``conv1``, ``patch_embed.proj``).

    Raises:
        VitkitError: If the model has no 2-D convolution.
    """
    for name, module in backbone_of(model).named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    for name, module in model.named_modules():  # a conv outside the backbone
        if isinstance(module, nn.Conv2d):
            return name, module
    raise VitkitError("this model has no 2-D convolution, so there are no first-layer filters "
                      "to show; use --method features to see what a layer responds to.")


def filter_grid(weights: torch.Tensor, max_filters: int = 64, columns: int = 8,
                cell: int | None = None) -> Image.Image:
    """The first ``max_filters`` filters of ``weights`` ``(out, in, kh, kw)`` as one RGB image.

    Each filter is min-max scaled on its own; a 3-channel filter is drawn in RGB, any other as
    the mean over its input channels in grey. Cells are ``cell`` pixels on their longer side
    (default: the kernel enlarged by the largest integer factor that keeps it within 48 px,
    at least 1x), resized with nearest-neighbour, ``GAP`` pixels apart; ``min(out,
    max_filters)`` cells fill ``columns`` columns row by row.

    Raises:
        ValueError: If ``weights`` is not 4-D or a count is below 1.
    """
    if weights.ndim != 4:
        raise ValueError(f"weights must have shape (out, in, kh, kw), got {tuple(weights.shape)}")
    if max_filters < 1 or columns < 1 or (cell is not None and cell < 1):
        raise ValueError("max_filters, columns and cell must be at least 1")
    kernels = weights.detach().float().cpu()[:max_filters]
    count, channels, kh, kw = kernels.shape
    cell_h, cell_w = _cell_size(kh, kw, cell)
    cols = min(columns, count)
    rows = math.ceil(count / cols)
    grid = Image.new("RGB", (cols * cell_w + (cols - 1) * GAP, rows * cell_h + (rows - 1) * GAP),
                     _BACKGROUND)
    for i, kernel in enumerate(kernels):
        pixels = kernel if channels == 3 else kernel.mean(dim=0, keepdim=True).expand(3, kh, kw)
        scaled = _min_max(pixels)
        array = (scaled.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        tile = Image.fromarray(array).resize((cell_w, cell_h), Image.Resampling.NEAREST)
        row, col = divmod(i, cols)
        grid.paste(tile, (col * (cell_w + GAP), row * (cell_h + GAP)))
    return grid


def _cell_size(kh: int, kw: int, cell: int | None) -> tuple[int, int]:
    if cell is None:
        scale = max(1, 48 // max(kh, kw))
        return kh * scale, kw * scale
    longer = max(kh, kw)
    return max(1, round(kh * cell / longer)), max(1, round(kw * cell / longer))


def _min_max(values: torch.Tensor) -> torch.Tensor:
    low, high = values.min(), values.max()
    if float(high - low) <= 0.0:
        return torch.zeros_like(values)
    return (values - low) / (high - low)


def backbone_of(model: nn.Module) -> nn.Module:
    """The module whose ``named_modules()`` spell layer names: a vitkit ``ImageClassifier``'s
    wrapped backbone, or the model itself."""
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) else model


def default_feature_layer(model: nn.Module, input_size: tuple[int, int] | None = None) -> str:
    """The layer ``features`` shows by default: the last block of a transformer
    (``blocks.11``); for a timm CNN the last stage in its ``feature_info`` (``layer4``,
    ``blocks.6``); otherwise the last module that gives a spatial feature map.

    Raises:
        VitkitError: If no such layer can be found.
    """
    backbone = backbone_of(model)
    blocks = getattr(backbone, "blocks", None)
    if getattr(backbone, "num_prefix_tokens", None) is not None and isinstance(
            blocks, nn.Sequential | nn.ModuleList) and len(blocks):
        return f"blocks.{len(blocks) - 1}"
    info = getattr(backbone, "feature_info", None)
    if info:
        try:
            return str(info[-1]["module"])
        except (KeyError, IndexError, TypeError):
            pass
    block = _last_transformer_block(backbone)
    if block is not None:
        return block
    if input_size is not None:
        spatial = [name for name, shape in _probe(model, backbone, input_size)
                   if len(shape) == 4 and shape[2] > 1 and shape[3] > 1]
        if spatial:
            return spatial[-1]
    raise VitkitError("cannot choose a feature layer for this model; name one with --layer "
                      "(a dotted module name such as layer3 or blocks.5).")


def _last_transformer_block(backbone: nn.Module) -> str | None:
    """The innermost ancestor with a LayerNorm child of the last attention module (Hugging
    Face ViTs: ``vit.encoder.layer.11``)."""
    names = [name for name, module in backbone.named_modules()
             if type(module).__name__.endswith("Attention")]
    if not names:
        return None
    parts = names[-1].split(".")
    for end in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:end])
        block = backbone.get_submodule(name)
        if any(isinstance(c, nn.LayerNorm) or type(c).__name__.endswith("LayerNorm")
               for c in block.children()):
            return name
    return None


def resolve_module(model: nn.Module, name: str) -> nn.Module:
    """The backbone module called ``name`` (a leading ``model.`` is accepted).

    Raises:
        ConfigError: If there is no such module; the message names a few that exist.
    """
    backbone = backbone_of(model)
    known = dict(backbone.named_modules())
    for candidate in (name, name.removeprefix("model.")):
        if candidate and candidate in known:
            return known[candidate]
    close = difflib.get_close_matches(name, [n for n in known if n], n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    info = getattr(backbone, "feature_info", None)
    try:
        staged = [str(f["module"]) for f in info] if info else []
    except (KeyError, TypeError):
        staged = []
    shown = [n for n in staged if n in known] or [n for n, _ in backbone.named_children()]
    raise ConfigError(f"the model has no layer named '{name}'.{hint} Some of its layers: "
                      f"{', '.join(shown[-_SHOWN_LAYERS:])} (a dotted name reaches inside "
                      "one, e.g. a block of a stage).")


def layer_activations(model: nn.Module, batch: torch.Tensor, layer: str | None = None
                      ) -> tuple[str, torch.Tensor]:
    """``(layer name, activations (B, C, h, w))`` of ``layer`` for ``batch`` ``(B, 3, H, W)``,
    float32 on the CPU, captured by a forward hook in eval mode without gradients. Token
    outputs ``(B, N, D)`` become ``(B, D, gh, gw)`` (see :func:`tokens_to_maps`).

    Raises:
        ConfigError: Unknown layer name.
        VitkitError: The layer did not run, or its output is not a map or tokens.
    """
    if batch.ndim != 4:
        raise ValueError(f"batch must have shape (B, 3, H, W), got {tuple(batch.shape)}")
    input_size = (int(batch.shape[2]), int(batch.shape[3]))
    name = layer or default_feature_layer(model, input_size)
    module = resolve_module(model, name)
    captured: list[torch.Tensor] = []

    def keep(_module: nn.Module, _inputs: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple | list) else output)

    parameter = next(model.parameters(), None)
    if parameter is not None:
        batch = batch.to(parameter.device, parameter.dtype)
    handle = module.register_forward_hook(keep)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(batch)
    finally:
        handle.remove()
        model.train(was_training)
    if not captured or not isinstance(captured[0], torch.Tensor):
        raise VitkitError(f"layer '{name}' gave no tensor in the forward pass; pick another "
                          "--layer.")
    output = captured[0].detach().float().cpu()
    if output.ndim == 3:
        prefix = getattr(backbone_of(model), "num_prefix_tokens", None)
        output = tokens_to_maps(output, prefix, input_size)
    elif output.ndim != 4:
        raise VitkitError(f"layer '{name}' gives a {output.ndim}-D output of shape "
                          f"{tuple(output.shape)}; features need a map (B, C, H, W) or tokens "
                          "(B, N, D). Pick another --layer.")
    return name, output


def channel_activations(model: nn.Module, batch: torch.Tensor, layer: str | None = None
                        ) -> tuple[str, torch.Tensor]:
    """``(layer name, activations (C, h, w))`` of one image: ``batch`` is ``(3, H, W)`` or
    ``(1, 3, H, W)`` (see :func:`layer_activations`)."""
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4 or batch.shape[0] != 1:
        raise ValueError(f"expected one image (1, 3, H, W), got {tuple(batch.shape)}; use "
                         "layer_activations for a batch")
    name, activations = layer_activations(model, batch, layer)
    return name, activations[0]


def tokens_to_maps(tokens: torch.Tensor, num_prefix_tokens: int | None = None,
                   input_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Tokens ``(B, N, D)`` as maps ``(B, D, gh, gw)``, patches in row-major order.

    The prefix is ``num_prefix_tokens`` when given, else ``N`` minus the largest square
    ``<= N``. The grid is square when the patch count is; otherwise its shape follows
    ``input_size`` (height, width).

    Raises:
        VitkitError: If the patch tokens cannot be laid on a grid.
    """
    if tokens.ndim != 3:
        raise ValueError(f"tokens must have shape (B, N, D), got {tuple(tokens.shape)}")
    count = int(tokens.shape[1])
    prefix = (count - math.isqrt(count) ** 2 if num_prefix_tokens is None
              else int(num_prefix_tokens))
    patches = count - prefix
    grid = _grid(patches, input_size)
    if prefix < 0 or grid is None:
        raise VitkitError(f"cannot lay {count} tokens ({prefix} prefix) on a patch grid; "
                          "pick a layer that gives a feature map or patch tokens.")
    gh, gw = grid
    return tokens[:, prefix:].reshape(tokens.shape[0], gh, gw, -1).permute(0, 3, 1, 2)


def _grid(patches: int, input_size: tuple[int, int] | None) -> tuple[int, int] | None:
    if patches <= 0:
        return None
    side = math.isqrt(patches)
    if side * side == patches:
        return side, side
    if input_size is not None:
        height, width = input_size
        gh = round(math.sqrt(patches * height / width))
        if gh > 0 and patches % gh == 0:
            return gh, patches // gh
    return None


def top_channels(activations: torch.Tensor, k: int = 16) -> list[int]:
    """Indices of the ``k`` channels of ``activations`` ``(C, h, w)`` with the most energy
    (mean of squares), highest first; ties keep the lower index first."""
    if activations.ndim != 3:
        raise ValueError(f"activations must have shape (C, h, w), got "
                         f"{tuple(activations.shape)}")
    energy = activations.detach().float().pow(2).mean(dim=(1, 2))
    order = sorted(range(len(energy)), key=lambda c: (-float(energy[c]), c))
    return order[:max(0, k)]


def activation_grid(image: Image.Image, activations: torch.Tensor, indices: list[int],
                    columns: int = 4, cmap: str = "viridis") -> Image.Image:
    """The channels ``indices`` of ``activations`` ``(C, h, w)`` as one RGB image: each map
    min-max scaled, coloured with ``cmap``, resized bilinearly to ``image`` (the model view)
    and labelled with its channel index; cells ``GAP`` pixels apart, ``columns`` per row.

    Raises:
        ValueError: If the shapes or indices do not fit, or ``cmap`` is unknown.
    """
    if activations.ndim != 3:
        raise ValueError(f"activations must have shape (C, h, w), got "
                         f"{tuple(activations.shape)}")
    if not indices or columns < 1:
        raise ValueError("need at least one channel and one column")
    if any(not 0 <= i < activations.shape[0] for i in indices):
        raise ValueError(f"channel indices must be in [0, {activations.shape[0]})")
    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError as error:
        raise ValueError(f"unknown colormap {cmap!r}") from error
    width, height = image.size
    maps = activations.detach().float().cpu()[indices]  # (k, h, w)
    resized = F.interpolate(maps[:, None], size=(height, width), mode="bilinear",
                            align_corners=False)[:, 0]
    cols = min(columns, len(indices))
    rows = math.ceil(len(indices) / cols)
    grid = Image.new("RGB", (cols * width + (cols - 1) * GAP, rows * height + (rows - 1) * GAP),
                     _BACKGROUND)
    font = ImageFont.load_default()
    for i, (channel, values) in enumerate(zip(indices, resized, strict=True)):
        coloured = colormap(_min_max(values).numpy())[..., :3]
        tile = Image.fromarray((coloured * 255.0).round().astype(np.uint8))
        draw = ImageDraw.Draw(tile)
        text = str(channel)
        left, top, right, bottom = draw.textbbox((2, 1), text, font=font)
        draw.rectangle((0, 0, right + 2, bottom + 1), fill=(0, 0, 0))
        draw.text((2, 1), text, fill=(255, 255, 255), font=font)
        row, col = divmod(i, cols)
        grid.paste(tile, (col * (width + GAP), row * (height + GAP)))
    return grid


def _probe(model: nn.Module, backbone: nn.Module, input_size: tuple[int, int]
           ) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, output shape)`` of every named backbone module for one blank image, in the
    order they finish."""
    found: list[tuple[str, tuple[int, ...]]] = []
    blank_pass(model, input_size, [(n, m) for n, m in backbone.named_modules() if n],
               lambda name, _module, output: found.append((name, tuple(output.shape))))
    return found
