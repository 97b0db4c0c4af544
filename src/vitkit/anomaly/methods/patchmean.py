"""PatchMean as an anomaly method: the grey canvas, the patch statistics and their Gaussian
(the math in :mod:`vitkit.anomaly.patchmean`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from vitkit.anomaly import gray, patchmean
from vitkit.anomaly.methods.base import AnomalyMethod, Embedding, Progress
from vitkit.errors import ConfigError


class PatchMeanMethod(AnomalyMethod):
    """Per-patch pixel statistics with a diagonal Gaussian per position; no network."""

    name = "patchmean"

    def __init__(self, patch_size: int | None = None, resolution: int | None = None,
                 size: tuple[int, int] | None = None, model: patchmean.PatchMeanModel | None = None
                 ) -> None:
        self.patch_size = patch_size or patchmean.DEFAULT_PATCH_SIZE
        self.resolution = resolution
        self.size = size
        self.model = model
        self._accumulator = patchmean.PatchStatsAccumulator(self.patch_size)

    def setup(self, sizes: Sequence[tuple[int, int]]) -> None:
        try:
            self.size = gray.working_size(sizes, self.patch_size, resolution=self.resolution)
        except ValueError as exc:
            raise ConfigError(f"patchmean cannot use these settings: {exc}") from exc

    def prepare(self, image: Image.Image) -> torch.Tensor:
        if self.size is None:
            raise RuntimeError("call setup() with the normal images' sizes before prepare()")
        return gray.to_canvas(image, self.size)

    def embed(self, batch: torch.Tensor) -> Embedding:
        return [patchmean.patch_statistics(batch, self.patch_size)]

    def add_embedded(self, embedding: Embedding) -> None:
        self._accumulator.update(embedding[0])

    def spawn(self) -> PatchMeanMethod:
        return PatchMeanMethod(self.patch_size, self.resolution, self.size)

    def fit_state_bytes(self, embedding: Embedding, n_images: int) -> int:
        per_image = embedding[0][0].numel()
        return 2 * per_image * 8  # running float64 mean and squared deviations, whatever n

    def finish_fit(self, progress: Progress | None = None) -> dict[str, Any]:
        self.model = self._accumulator.finalize()
        n_stats, grid_h, grid_w = self.model.mean.shape
        return {"grid": [int(grid_h), int(grid_w)], "statistics": int(n_stats),
                "working_size": list(self.size or ())}

    def score_embedded(self, embedding: Embedding) -> tuple[torch.Tensor, torch.Tensor]:
        if self.model is None:
            raise RuntimeError("the method is not fitted")
        zmap = patchmean.patchmean_zmap(embedding[0], self.model)
        return patchmean.image_scores(zmap), zmap

    @property
    def map_sigma(self) -> float:
        return 0.0  # a patch is the unit of evidence; smoothing would only spread small spots

    def options(self) -> dict[str, Any]:
        return {"patch_size": self.patch_size, "resolution": self.resolution,
                "size": list(self.size) if self.size else None}

    def tensors(self) -> dict[str, torch.Tensor]:
        if self.model is None:
            raise RuntimeError("the method is not fitted")
        return {"mean": self.model.mean, "std": self.model.std}

    @classmethod
    def restore(cls, options: dict[str, Any], tensors: dict[str, torch.Tensor]
                ) -> PatchMeanMethod:
        size = tuple(options["size"])
        model = patchmean.PatchMeanModel(tensors["mean"], tensors["std"],
                                         int(options["patch_size"]))
        return cls(int(options["patch_size"]), options.get("resolution"), size,  # type: ignore[arg-type]
                   model)
