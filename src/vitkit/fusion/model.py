"""The image + audio model: two encoders, late fusion, one classification head.

- **Image**: a timm backbone (:func:`vitkit.backbones.create`, offline ImageNet weights where
  the registry has them), its pooled pre-logits embedding.
- **Audio**: log-mel frames (:mod:`vitkit.data.logmel`) through 1-D convolutions that
  compress time 4x, then a small transformer over the frames (padding masked), mean-pooled
  over each clip's own frames.
- **Fusion**: each embedding projected to ``dim`` and layer-normalised, the two concatenated
  and projected again, then the class head.

A missing input (an empty manifest cell, a request without it, or one dropped by modality
dropout in training) is replaced by a **learned "missing" embedding** of its modality rather
than zeros: after the layer norm a real embedding has zero mean and unit variance, so zeros
would be an ordinary-looking input the fusion layer cannot tell apart from a real one, while a
learned vector can sit where no real input lands, and it costs ``dim`` parameters. The choice
is a ``torch.where`` on the flags, not a Python branch: the graph is the same for every batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from vitkit.backbones.factory import BackboneSpec, create, rebuild
from vitkit.backbones.model import ImageClassifier
from vitkit.bundle import BundleMeta, describe_validation_error
from vitkit.data.logmel import LogMelSettings
from vitkit.data.transforms import Preprocessing
from vitkit.errors import BundleError

TASK = "fusion"


class FusionRecord(BaseModel):
    """The ``fusion`` record of a bundle's ``vitkit.json``: what rebuilds the model and
    prepares its inputs.

    Attributes:
        audio: The log-mel settings every recording goes through.
        audio_width: Channels of the audio convolutions and the transformer.
        audio_layers: Transformer layers over the frames.
        audio_heads: Attention heads.
        dim: Width of each projected embedding and of the fused one.
        image_features: Width of the image backbone's pooled embedding.
        modality_dropout: The training probability of dropping each input (for the record).
    """

    model_config = ConfigDict(extra="allow")

    audio: LogMelSettings
    audio_width: int = Field(128, ge=8)
    audio_layers: int = Field(2, ge=1)
    audio_heads: int = Field(4, ge=1)
    dim: int = Field(128, ge=8)
    image_features: int = Field(ge=1)
    modality_dropout: float = 0.0


class AudioEncoder(nn.Module):
    """Log-mel frames ``(B, n_mels, T)`` and their lengths -> a clip embedding ``(B, width)``.

    Three convolutions (kernel 5, then two of kernel 3 and stride 2: time compressed 4x) with
    GELU and a per-frame layer norm; a pre-norm transformer encoder over the frames with
    sinusoidal positions and the padding masked; the mean over each clip's own frames.
    Frames past a clip's length are zeroed after every convolution, so a clip's embedding is
    the same alone or padded in a batch of longer ones.
    """

    # (kernel, stride) of each convolution; padding keeps "same" framing
    CONVS = ((5, 1), (3, 2), (3, 2))

    def __init__(self, n_mels: int, width: int = 128, layers: int = 2, heads: int = 4,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        channels = n_mels
        for kernel, stride in self.CONVS:
            self.convs.append(nn.Conv1d(channels, width, kernel, stride, kernel // 2))
            self.norms.append(nn.LayerNorm(width))
            channels = width
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(width)
        self.width = width

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames left after the strided convolutions."""
        for kernel, stride in self.CONVS:
            lengths = torch.div(lengths + 2 * (kernel // 2) - kernel, stride,
                                rounding_mode="floor") + 1
        return lengths

    def forward(self, mels: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = mels  # (B, n_mels, T)
        valid = torch.ones(x.shape[0], x.shape[-1], dtype=torch.bool, device=x.device)
        for (kernel, stride), conv, norm in zip(self.CONVS, self.convs, self.norms,
                                                strict=True):
            lengths = torch.div(lengths + 2 * (kernel // 2) - kernel, stride,
                                rounding_mode="floor") + 1
            x = nn.functional.gelu(norm(conv(x).transpose(1, 2))).transpose(1, 2)
            valid = torch.arange(x.shape[-1], device=x.device)[None, :] < lengths[:, None]
            x = x * valid[:, None, :].to(x.dtype)  # (B, width, T'): padding back to zero
        frames = x.transpose(1, 2)  # (B, T', width)
        frames = frames + sinusoidal_positions(frames.shape[1], self.width, frames.device,
                                               frames.dtype)
        frames = self.transformer(frames, src_key_padding_mask=~valid)
        weights = valid.to(frames.dtype)[:, :, None]  # (B, T', 1)
        pooled = (frames * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.out_norm(pooled)


def sinusoidal_positions(length: int, width: int, device: torch.device | None = None,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The transformer's fixed sine/cosine positions ``(length, width)``: any clip length."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, width, 2, device=device, dtype=torch.float32)
                     * (-math.log(10_000.0) / width))
    table = torch.zeros(length, width, device=device)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate[:width // 2])
    return table.to(dtype)


class FusionClassifier(nn.Module):
    """Image and audio encoders, late fusion, a class head (see the module docstring)."""

    def __init__(self, image_encoder: ImageClassifier, record: FusionRecord, n_classes: int,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.audio_encoder = AudioEncoder(record.audio.n_mels, record.audio_width,
                                          record.audio_layers, record.audio_heads)
        dim = record.dim
        self.image_proj = nn.Sequential(nn.Linear(record.image_features, dim), nn.LayerNorm(dim))
        self.audio_proj = nn.Sequential(nn.Linear(record.audio_width, dim), nn.LayerNorm(dim))
        self.missing_image = nn.Parameter(torch.randn(dim) * 0.02)
        self.missing_audio = nn.Parameter(torch.randn(dim) * 0.02)
        self.fuse = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Dropout(dropout))
        self.head = nn.Linear(dim, n_classes)

    def encode(self, images: torch.Tensor, mels: torch.Tensor, mel_lengths: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both encoders and their projections: ``(B, dim)`` each, whatever is missing."""
        image = self.image_proj(self.image_encoder.forward_features(images))
        audio = self.audio_proj(self.audio_encoder(mels, mel_lengths))
        return image, audio

    def classify(self, image: torch.Tensor, audio: torch.Tensor, has_image: torch.Tensor,
                 has_audio: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, classes)`` from the projected embeddings; an input whose flag is
        False is replaced by its modality's learned "missing" embedding."""
        image = torch.where(has_image[:, None], image, self.missing_image.to(image.dtype))
        audio = torch.where(has_audio[:, None], audio, self.missing_audio.to(audio.dtype))
        return self.head(self.fuse(torch.cat([image, audio], dim=1)))

    def forward(self, images: torch.Tensor, has_image: torch.Tensor, mels: torch.Tensor,
                mel_lengths: torch.Tensor, has_audio: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, classes)``: images ``(B, 3, H, W)``, log-mel frames
        ``(B, n_mels, T)`` with their lengths ``(B,)``, and ``(B,)`` bool flags of the inputs
        each example has."""
        return self.classify(*self.encode(images, mels, mel_lengths), has_image, has_audio)


def build_fusion(model_name: str, weights: str, labels: list[str], audio: LogMelSettings,
                 image_size: int | None, **sizes: Any
                 ) -> tuple[FusionClassifier, FusionRecord, BackboneSpec, Preprocessing]:
    """A new model: the image backbone with its (offline) weights, a fresh audio encoder and
    fusion layers. Returns the model, its record, the backbone's spec and the image
    preprocessing (the whole image squashed to ``image_size`` — None: the backbone's own
    input size — with the backbone's mean/std).

    Raises:
        WeightsError: The backbone's name or weights cannot be had.
    """
    created = create(model_name, num_classes=len(labels), weights=weights)
    encoder = _without_head(created.model)
    record = FusionRecord(audio=audio, image_features=encoder.num_features, **sizes)
    pre = created.preprocessing
    size = (image_size, image_size) if image_size is not None else pre.input_size
    preprocessing = Preprocessing(input_size=size, interpolation="bilinear",
                                  mean=pre.mean, std=pre.std, crop_pct=1.0, crop_mode="squash")
    return FusionClassifier(encoder, record, len(labels)), record, created.spec, preprocessing


def _without_head(encoder: ImageClassifier) -> ImageClassifier:
    """A timm backbone's own classifier is never used here: it goes (no dead parameters)."""
    if encoder.source == "timm":
        encoder.model.reset_classifier(0)  # type: ignore[operator]
    return encoder


def rebuild_fusion(meta: BundleMeta, bundle: object = "the bundle") -> FusionClassifier:
    """The recorded architecture with random weights (the bundle's weights go in next)."""
    record = read_record(meta, bundle)
    try:
        spec = BackboneSpec.from_dict(meta.backbone)
    except (KeyError, TypeError) as exc:
        raise BundleError(f"{bundle}/vitkit.json: the backbone record is damaged ({exc}). "
                          "Restore vitkit.json, or train again.") from exc
    encoder = _without_head(rebuild(spec, len(meta.labels)))
    return FusionClassifier(encoder, record, len(meta.labels))


def read_record(meta: BundleMeta, bundle: object = "the bundle") -> FusionRecord:
    """The ``fusion`` record of a bundle's ``vitkit.json``.

    Raises:
        BundleError: Not an image + audio bundle, or the record is damaged.
    """
    if meta.task != TASK:
        raise BundleError(f"{bundle} is a '{meta.task}' bundle, not an image + audio model. "
                          "Give the bundle that `vitkit train MANIFEST.csv` wrote from an "
                          "image,audio,label manifest (OUT/bundle).")
    raw: Any = (meta.model_extra or {}).get(TASK)
    try:
        return FusionRecord.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"{bundle}/vitkit.json: the fusion record is missing or damaged "
                          f"({describe_validation_error(exc)}). Restore vitkit.json, or train "
                          "again.") from exc


def bundle_meta(record: FusionRecord, spec: BackboneSpec, labels: list[str],
                preprocessing: Preprocessing, train: dict[str, Any] | None = None
                ) -> BundleMeta:
    """``vitkit.json`` of an image + audio bundle: ``task: "fusion"``, the backbone, labels,
    the image preprocessing and the ``fusion`` record (log-mel settings included)."""
    return BundleMeta(task=TASK, backbone=spec.to_dict(), labels=list(labels),
                      preprocessing=preprocessing.model_dump(mode="json"), train=train or {},
                      fusion=record.model_dump(mode="json"))
