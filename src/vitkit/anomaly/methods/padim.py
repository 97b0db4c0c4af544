"""PaDiM as an anomaly method (Defard et al. 2021): randomly chosen feature channels and a
Gaussian per position (the math in :mod:`vitkit.anomaly.padim`)."""

from __future__ import annotations

from typing import Any

import torch

from vitkit.anomaly import padim
from vitkit.anomaly.features import FeatureExtractor
from vitkit.anomaly.maps import upsample_map
from vitkit.anomaly.methods.base import DeepMethod, Embedding, Progress
from vitkit.data import Preprocessing


class PadimMethod(DeepMethod):
    """A Gaussian of the feature vector at every position; Mahalanobis map (Defard et al.)."""

    name = "padim"

    def __init__(self, extractor: FeatureExtractor, preprocessing: Preprocessing,
                 device: torch.device, channels: int = 100, seed: int = 0,
                 model: padim.PadimModel | None = None,
                 channel_index: torch.Tensor | None = None) -> None:
        super().__init__(extractor, preprocessing, device)
        self.channels = channels
        self.seed = seed
        self.model = model
        self.channel_index = channel_index
        self._accumulator: padim.GaussianAccumulator | None = None

    def _embed(self, batch: torch.Tensor) -> torch.Tensor:
        embedding = padim.concat_aligned(self.features(batch))
        if self.channel_index is None:
            self.channel_index = padim.random_channels(embedding.shape[1], self.channels,
                                                       self.seed)
        return embedding[:, self.channel_index]

    def embed(self, batch: torch.Tensor) -> Embedding:
        return [self._embed(batch)]

    def spawn(self) -> PadimMethod:
        return PadimMethod(self.extractor, self.preprocessing, self.device,
                           channels=self.channels, seed=self.seed,
                           channel_index=self.channel_index)

    def fit_state_bytes(self, embedding: Embedding, n_images: int) -> int:
        _, channels, height, width = embedding[0].shape
        return height * width * channels * channels * 8  # the float64 sums, whatever n

    def add_embedded(self, embedding: Embedding) -> None:
        (features,) = embedding
        if self._accumulator is None:
            height, width = features.shape[-2:]
            self._accumulator = padim.GaussianAccumulator(features.shape[1], height * width)
        self._accumulator.update(features)

    def finish_fit(self, progress: Progress | None = None) -> dict[str, Any]:
        if self._accumulator is None:
            raise RuntimeError("no normal images were added")
        self.model = self._accumulator.finalize()
        self._accumulator = None
        positions, channels = self.model.mean.shape
        return {"positions": int(positions), "channels": int(channels),
                "grid": list(self.model.grid)}

    def score_embedded(self, embedding: Embedding) -> tuple[torch.Tensor, torch.Tensor]:
        if self.model is None:
            raise RuntimeError("the method is not fitted")
        distances = padim.padim_distance_map(embedding[0], self.model)
        # The papers' image score is the maximum of the smoothed full-size map: smoothing first
        # keeps one noisy position from deciding the image.
        smoothed = upsample_map(distances, self.preprocessing.input_size, self.map_sigma)
        return smoothed.flatten(1).amax(dim=1), distances

    def options(self) -> dict[str, Any]:
        return {"channels": self.channels, "seed": self.seed}

    def tensors(self) -> dict[str, torch.Tensor]:
        if self.model is None or self.channel_index is None:
            raise RuntimeError("the method is not fitted")
        grid = torch.tensor(self.model.grid, dtype=torch.int64)
        return {"mean": self.model.mean, "inv_cov": self.model.inv_cov,
                "channel_index": self.channel_index, "grid": grid}

    @classmethod
    def restore(cls, options: dict[str, Any], tensors: dict[str, torch.Tensor],
                extractor: FeatureExtractor, preprocessing: Preprocessing,
                device: torch.device) -> PadimMethod:
        """Rebuilds a fitted PaDiM from a bundle's options and tensors."""
        model = padim.PadimModel(tensors["mean"], tensors["inv_cov"],
                                 tuple(int(v) for v in tensors["grid"].tolist()))  # type: ignore[arg-type]
        return cls(extractor, preprocessing, device, channels=int(options["channels"]),
                   seed=int(options.get("seed", 0)), model=model,
                   channel_index=tensors["channel_index"])
