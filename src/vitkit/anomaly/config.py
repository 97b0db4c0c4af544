"""Options of `vitkit anomaly fit`, loadable from YAML; the defaults are the CLI's defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Method = Literal["patchcore", "padim", "patchmean"]
METHODS: tuple[str, ...] = ("patchcore", "padim", "patchmean")
ImageScore = Literal["reweighted", "max", "top1", "top3", "top10"]

MIN_FIT_IMAGES = 5
"""Normal images a method learns from, at the least."""
MIN_HOLDOUT_IMAGES = 2
"""Held-out normal images that set the threshold, at the least."""
MIN_OUT_OF_FOLD_IMAGES = 2
"""Normal images for out-of-fold scores: each fold's model learns the others."""


class AnomalyFitConfig(BaseModel):
    """Everything `vitkit anomaly fit` needs.

    Attributes:
        data: Folder of normal images (searched recursively), or an MVTec-style root whose
            ``train/good`` is used.
        method: ``patchcore`` (memory bank of patch features, best on textures and objects),
            ``padim`` (a Gaussian per position, for aligned parts) or ``patchmean`` (pixel
            statistics per patch, no network; for uniform backgrounds with small spots).
        model: Backbone for patchcore/padim: a timm name (CNN or ViT), ``hf:<id>`` or a
            local Hugging Face folder.
        weights: ``auto`` (offline registry, then the hub), ``none`` or a weights file.
        layers: Feature stages (CNN) or blocks (ViT) to use; default per method and family.
        image_size: Square input size for CNN backbones; default the backbone's (224 px).
        coreset_ratio: Share of the patch features PatchCore keeps in its memory bank.
        projection_dim: Random projection used only to pick the coreset (None: no projection).
        num_neighbors: PatchCore's image-score re-weighting neighbourhood (1: plain max).
        image_score: PatchCore's image score from its patch scores: ``reweighted`` (the
            paper's re-weighted maximum, with ``num_neighbors``), ``max``, or ``top1`` /
            ``top3`` / ``top10`` (the mean of the top 1 / 3 / 10% of patch scores). Default
            ``top3``: chosen on CNN features, confirmed on ViT features (README).
        padim_channels: Random channel subset PaDiM keeps.
        global_stats: PatchCore also scores each image's feature statistics as a whole (see
            :mod:`vitkit.anomaly.global_stats`).
        patch_size: patchmean patch side in pixels (default: the method's).
        resolution: patchmean working long side; default the images' own size up to 1024 px.
        auto: Choose input size and (PatchCore) image statistics without labelled defects:
            every candidate is scored on synthetic defects made from the normal images (see
            :mod:`vitkit.anomaly.synthetic`); the cheapest candidate within one standard
            error of the best score is kept and every candidate's score recorded. Cost about
            12x a plain fit.
        augment: Also learn flipped (``flips``: 4 copies) or flipped and rotated
            (``dihedral``: 8 copies) versions of each normal image, for few normal images of
            parts that look the same mirrored or turned (PatchCore, PaDiM).
        folds: The threshold comes from out-of-fold scores: the method is fitted on every
            normal image, and each of ``folds`` parts is scored by a twin fitted on the
            others (at most one fold per image). 0: hold out ``holdout`` instead.
        holdout: The share of normal images held out (never learned) to set the threshold
            instead of out-of-fold scores; giving it alone means ``folds=0``. Default 0.2
            when ``folds=0``.
        percentile: Threshold = this percentile of the out-of-fold (or held-out) normal
            scores.
        batch_size: Images per forward pass.
        seed: Seeds the held-out split, channel subset and coreset start.
        device: ``auto``, ``cpu`` or ``cuda``.
        out: The bundle folder to write.
    """

    model_config = ConfigDict(extra="forbid")

    data: str
    method: Method = "patchcore"
    model: str = "efficientnet_lite0"
    weights: str = "auto"
    layers: list[int] | None = None
    image_size: int | None = Field(default=None, ge=32, le=2048)
    coreset_ratio: float = Field(default=0.1, gt=0.0, le=1.0)
    projection_dim: int | None = Field(default=128, ge=1)
    num_neighbors: int = Field(default=9, ge=1)
    image_score: ImageScore = "top3"
    global_stats: bool = False
    padim_channels: int = Field(default=100, ge=1)
    patch_size: int | None = Field(default=None, ge=2, le=256)
    resolution: int | None = Field(default=None, ge=16, le=8192)
    auto: bool = False
    augment: Literal["none", "flips", "dihedral"] = "none"
    folds: int = Field(default=5, ge=0, le=50)
    holdout: float | None = Field(default=None, gt=0.0, lt=1.0)
    percentile: float = Field(default=99.0, gt=0.0, le=100.0)
    batch_size: int = Field(default=16, ge=1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    out: str = "anomaly-model"

    @model_validator(mode="after")
    def _no_backbone_options_for_patchmean(self) -> AnomalyFitConfig:
        if self.method != "patchmean" and (self.patch_size or self.resolution):
            raise ValueError("patch_size and resolution are patchmean options; "
                             f"{self.method} uses image_size and layers")
        if self.folds == 1:
            raise ValueError("folds must be 0 (hold images out instead) or at least 2")
        if self.holdout is not None and self.folds:
            if "folds" in self.model_fields_set:
                raise ValueError("give folds (out-of-fold threshold) or holdout (a held-out "
                                 "share), not both; folds: 0 with holdout holds images out")
            self.folds = 0  # a held-out share asked for: the former way
        if "image_score" in self.model_fields_set and self.method != "patchcore":
            raise ValueError("image_score is a patchcore option")
        if self.augment != "none" and self.method == "patchmean":
            raise ValueError("augment applies to patchcore and padim")
        if self.global_stats and self.method != "patchcore":
            raise ValueError("global_stats is a patchcore option")
        return self
