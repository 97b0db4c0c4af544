"""The anomaly methods as strategy classes over the pure math modules.

Each method turns an image into a tensor (``prepare``), learns from batches of normal images
(``add_normal`` then ``finish_fit``) and scores a batch (``score``: one raw score per image
and a low-resolution map, higher = more anomalous). Its state is a few JSON options and a
dict of tensors, so a bundle stores it without pickle. ``METHODS`` is the one table the
fitting and loading code consult.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import torch
from PIL import Image

from vitkit.anomaly import global_stats, gray, padim, patchcore, patchmean
from vitkit.anomaly.features import FeatureExtractor
from vitkit.anomaly.maps import upsample_map
from vitkit.backbones.fold import inference_copy
from vitkit.data import Preprocessing, eval_transform
from vitkit.errors import ConfigError

Progress = Callable[[int, int], None]
"""``progress(done, total)``: hears about a long step of a method."""


Embedding = list[torch.Tensor]
"""What a method computes from a batch of prepared images before it learns or scores: a list
of batch-first tensors (backbone feature maps, patch statistics). Computed once per image, an
embedding can feed several fitted copies of a method (the out-of-fold threshold)."""


def select_images(embedding: Embedding, index: torch.Tensor | Sequence[int]) -> Embedding:
    """The rows of ``embedding`` for the images at ``index`` (positions in the batch)."""
    rows = torch.as_tensor(index, dtype=torch.long)
    return [tensor[rows] for tensor in embedding]


class AnomalyMethod(ABC):
    """One anomaly-detection method: fit on normal images, then score any image.

    Learning and scoring go through an :data:`Embedding` (``embed`` then ``add_embedded`` /
    ``score_embedded``), so one pass over the images can feed the method and its unfitted
    twins (``spawn``) that are fitted on part of the images to score the rest.
    """

    name: ClassVar[str]
    derives_twins: ClassVar[bool] = False  # see twin_without

    @abstractmethod
    def prepare(self, image: Image.Image) -> torch.Tensor:
        """An RGB image as this method's input tensor (always the same shape)."""

    @abstractmethod
    def embed(self, batch: torch.Tensor) -> Embedding:
        """What learning and scoring need from a batch of prepared images."""

    @abstractmethod
    def add_embedded(self, embedding: Embedding) -> None:
        """Learns from the embedding of a batch of normal images."""

    @abstractmethod
    def finish_fit(self, progress: Progress | None = None) -> dict[str, Any]:
        """Ends fitting; returns figures worth recording (e.g. memory-bank sizes).
        ``progress(done, total)`` hears about long steps (PatchCore's coreset selection)."""

    @abstractmethod
    def score_embedded(self, embedding: Embedding) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw scores (B,) and maps (B, h, w) from a batch's embedding."""

    @abstractmethod
    def spawn(self) -> AnomalyMethod:
        """An unfitted twin with the same settings (and the same feature extractor)."""

    @abstractmethod
    def options(self) -> dict[str, Any]:
        """JSON-able settings needed to rebuild the method."""

    @abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]:
        """The fitted state."""

    def add_normal(self, batch: torch.Tensor) -> None:
        """Learns from a batch of prepared normal images."""
        self.add_embedded(self.embed(batch))

    def score(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw scores (B,) and maps (B, h, w) for a batch of prepared images."""
        return self.score_embedded(self.embed(batch))

    def setup(self, sizes: Sequence[tuple[int, int]]) -> None:  # noqa: B027 - optional hook
        """Sees the (width, height) of the normal images before fitting."""

    def fit_state_bytes(self, embedding: Embedding, n_images: int) -> int:
        """About how much memory fitting on ``n_images`` takes, given one batch's embedding
        (decides how many fitted twins fit in memory at once). Default: every image's
        embedding kept until the fit ends."""
        per_image = sum(t[0].numel() * t.element_size() for t in embedding)
        return per_image * n_images

    def twin_without(self, images: Sequence[int]) -> AnomalyMethod | None:
        """After fitting: a fitted twin that never learned ``images`` (positions in the order
        they were added), derived from this method's own fit without fitting again; None
        when the method cannot (then twins are fitted, see :mod:`vitkit.anomaly.folds`)."""
        return None

    @property
    def calibrates(self) -> bool:
        """Whether the score combines parts that normal images put on one scale
        (:meth:`calibrate_parts`)."""
        return False

    def score_parts(self, embedding: Embedding) -> torch.Tensor:
        """(B, P) raw parts of the image score before :meth:`combine_parts`."""
        return self.score_embedded(embedding)[0][:, None]

    def calibrate_parts(self, parts: torch.Tensor) -> dict[str, Any]:  # noqa: ARG002
        """Sees the parts of normal images the method was not fitted on, before the threshold
        is set (a method whose score combines parts puts them on one scale)."""
        return {}

    def combine_parts(self, parts: torch.Tensor) -> torch.Tensor:
        """Image scores (B,) from :meth:`score_parts`."""
        return parts[:, 0]

    def calibrate(self, batches: Iterable[torch.Tensor]) -> dict[str, Any]:
        """:meth:`calibrate_parts` on batches of prepared held-out normal images."""
        if not self.calibrates:
            return {}
        parts = [self.score_parts(self.embed(batch)) for batch in batches]
        if not parts:
            raise RuntimeError(f"{self.name} needs held-out normal images to calibrate")
        return self.calibrate_parts(torch.cat(parts))

    @property
    def map_sigma(self) -> float:
        """Gaussian smoothing of the map in input pixels (the methods' papers use 4)."""
        return 4.0


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


class _DeepMethod(AnomalyMethod):
    """A method on backbone feature maps: shared preprocessing and feature extraction."""

    def __init__(self, extractor: FeatureExtractor, preprocessing: Preprocessing,
                 device: torch.device) -> None:
        self.extractor = extractor.to(device).eval()
        self.preprocessing = preprocessing
        self.device = device
        self._transform = eval_transform(preprocessing)
        # The extractor that runs: batch norms folded, built on first use and again whenever
        # ``extractor`` is replaced (an exported variant runs as it is).
        self._runner: tuple[object, Callable[[torch.Tensor], list[torch.Tensor]], bool] | None \
            = None

    def prepare(self, image: Image.Image) -> torch.Tensor:
        return self._transform(image)

    def _runnable(self, batch: torch.Tensor) -> tuple[Callable[[torch.Tensor], list[torch.Tensor]],
                                                     bool]:
        if self._runner is None or self._runner[0] is not self.extractor:
            if isinstance(self.extractor, torch.nn.Module):
                fast, folded = inference_copy(self.extractor, batch[:1].to(self.device))
            else:
                fast, folded = self.extractor, False
            self._runner = (self.extractor, fast, folded)
        return self._runner[1], self._runner[2]

    @torch.inference_mode()
    def features(self, batch: torch.Tensor) -> list[torch.Tensor]:
        extractor, channels_last = self._runnable(batch)
        batch = batch.to(self.device)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return [m.cpu().contiguous() for m in extractor(batch)]

    def embed(self, batch: torch.Tensor) -> Embedding:
        return self.features(batch)


class PatchCoreMethod(_DeepMethod):
    """Nearest-neighbour distance to a coreset of normal patch features (Roth et al. 2022)."""

    name = "patchcore"
    derives_twins = True

    def __init__(self, extractor: FeatureExtractor, preprocessing: Preprocessing,
                 device: torch.device, coreset_ratio: float = 0.1,
                 projection_dim: int | None = 128, num_neighbors: int = 9, seed: int = 0,
                 bank: torch.Tensor | None = None, global_stats: bool = False,
                 global_model: global_stats.GlobalGaussian | None = None,
                 references: tuple[float, float] | None = None,
                 image_score: str = "reweighted", global_weight: float = 1.0) -> None:
        super().__init__(extractor, preprocessing, device)
        if image_score not in patchcore.IMAGE_SCORES:
            raise ConfigError(f"image_score must be one of {', '.join(patchcore.IMAGE_SCORES)},"
                              f" not {image_score!r}")
        self.image_score = image_score
        self.coreset_ratio = coreset_ratio
        self.projection_dim = projection_dim
        self.num_neighbors = num_neighbors
        self.seed = seed
        self.bank = bank
        self.global_stats = global_stats
        self.global_model = global_model
        # (patch, global) scores of a typical held-out normal image: the units in which the
        # two parts are compared when global statistics are on.
        self.references = references
        # The power on the global part (see global_stats.global_weight); 1 in bundles fitted
        # before it was measured, which keeps their scores.
        self.global_weight = global_weight
        self._patches: list[torch.Tensor] = []
        self._statistics: list[torch.Tensor] = []
        self._n_images = 0
        # Kept after fitting, in memory only: which image each bank entry came from, and each
        # image's statistics, so twins that never learned some images come for free.
        self._bank_sources: torch.Tensor | None = None
        self._image_statistics: torch.Tensor | None = None

    def add_embedded(self, embedding: Embedding) -> None:
        patches = patchcore.locally_aware_patches(embedding)
        self._patches.append(patches.permute(0, 2, 3, 1).reshape(-1, patches.shape[1]))
        self._n_images += patches.shape[0]
        if self.global_stats:
            self._statistics.append(global_stats.image_statistics(embedding))

    def spawn(self) -> PatchCoreMethod:
        return PatchCoreMethod(self.extractor, self.preprocessing, self.device,
                               coreset_ratio=self.coreset_ratio,
                               projection_dim=self.projection_dim,
                               num_neighbors=self.num_neighbors, seed=self.seed,
                               global_stats=self.global_stats, image_score=self.image_score)

    def without_global_stats(self) -> PatchCoreMethod:
        """This fitted method with the image statistics dropped: the same bank, scoring with
        the patch part alone (what a fit without ``global_stats`` would have learned)."""
        return PatchCoreMethod(self.extractor, self.preprocessing, self.device,
                               coreset_ratio=self.coreset_ratio,
                               projection_dim=self.projection_dim,
                               num_neighbors=self.num_neighbors, seed=self.seed, bank=self.bank,
                               image_score=self.image_score)

    def finish_fit(self, progress: Progress | None = None) -> dict[str, Any]:
        features = torch.cat(self._patches)
        self._patches = []
        per_image = features.shape[0] // max(1, self._n_images)
        sources = torch.arange(self._n_images).repeat_interleave(per_image)
        n_select = max(1, math.ceil(self.coreset_ratio * features.shape[0]))
        if n_select >= features.shape[0]:
            self.bank, self._bank_sources = features, sources
        else:
            index = patchcore.greedy_coreset(
                features, n_select, self.projection_dim, self.seed,
                None if progress is None else (lambda done: progress(done, n_select)))
            self.bank, self._bank_sources = features[index].contiguous(), sources[index]
        details: dict[str, Any] = {"bank_before": int(features.shape[0]),
                                   "bank_after": int(self.bank.shape[0]),
                                   "feature_dim": int(features.shape[1])}
        if self.global_stats:
            self._image_statistics = torch.cat(self._statistics)
            self.global_model = global_stats.fit_global_gaussian(self._image_statistics)
            self._statistics = []
            details["global_stats_dim"] = int(self.global_model.mean.shape[0])
        return details

    def twin_without(self, images: Sequence[int]) -> PatchCoreMethod | None:
        """The bank without the entries that came from ``images`` (and, with global
        statistics, the Gaussian refitted without their statistics). Not a coreset selected
        afresh from the other images: the greedy selection saw the left-out images' patches,
        but their own entries are gone, which is what the out-of-fold score needs."""
        if self.bank is None or self._bank_sources is None:
            return None
        left_out = torch.zeros(self._n_images, dtype=torch.bool)
        left_out[torch.as_tensor(list(images), dtype=torch.long)] = True
        keep = ~left_out[self._bank_sources]
        if not bool(keep.any()):
            return None
        twin = self.spawn()
        twin.bank = self.bank[keep].contiguous()
        if self.global_stats:
            assert self._image_statistics is not None
            twin.global_model = global_stats.fit_global_gaussian(
                self._image_statistics[~left_out])
        return twin

    @property
    def calibrates(self) -> bool:
        return self.global_stats

    def _parts(self, embedding: Embedding
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Patch image scores, patch maps and (with global statistics) global distances."""
        if self.bank is None:
            raise RuntimeError("the method is not fitted")
        reweighted = self.image_score == "reweighted"
        result = patchcore.patchcore_scores(patchcore.locally_aware_patches(embedding),
                                            self.bank, self.num_neighbors if reweighted else 1)
        image_scores = result.image_scores if reweighted else \
            patchcore.image_scores_from_patches(result.patch_scores, self.image_score)
        overall = None
        if self.global_stats:
            if self.global_model is None:
                raise RuntimeError("the global statistics are not fitted")
            overall = global_stats.global_distances(global_stats.image_statistics(embedding),
                                                    self.global_model)
        return image_scores, result.patch_scores, overall

    def score_parts(self, embedding: Embedding) -> torch.Tensor:
        patch_part, _, global_part = self._parts(embedding)
        return patch_part[:, None] if global_part is None else torch.stack(
            [patch_part, global_part], dim=1)

    def calibrate_parts(self, parts: torch.Tensor) -> dict[str, Any]:
        if not self.global_stats:
            return {}
        if parts.shape[0] == 0:
            raise RuntimeError("global statistics need normal images to calibrate")
        self.references = (global_stats.reference_level(parts[:, 0]),
                           global_stats.reference_level(parts[:, 1]))
        self.global_weight = global_stats.global_weight(parts[:, 0], parts[:, 1])
        return {"global_references": [round(v, 6) for v in self.references],
                "global_weight": round(self.global_weight, 6)}

    def combine_parts(self, parts: torch.Tensor) -> torch.Tensor:
        if not self.global_stats:
            return parts[:, 0]
        if self.references is None:
            raise RuntimeError("call calibrate() with held-out normal images first")
        local_ref, global_ref = self.references
        # Both parts in units of a typical normal image, the global one stretched to vary
        # as much as the patch part between normal images; the worse one decides.
        overall = (parts[:, 1] / global_ref).clamp_min(0.0) ** self.global_weight
        return torch.maximum(parts[:, 0] / local_ref, overall)

    def score_embedded(self, embedding: Embedding) -> tuple[torch.Tensor, torch.Tensor]:
        patch_part, patch_map, global_part = self._parts(embedding)
        if global_part is None:
            return patch_part, patch_map
        scores = self.combine_parts(torch.stack([patch_part, global_part], dim=1))
        # The map shows the patch part only (a global change has no place), in the same units.
        assert self.references is not None
        return scores, patch_map / self.references[0]

    def options(self) -> dict[str, Any]:
        return {"coreset_ratio": self.coreset_ratio, "projection_dim": self.projection_dim,
                "num_neighbors": self.num_neighbors, "seed": self.seed,
                "image_score": self.image_score,
                "global_stats": self.global_stats,
                "references": list(self.references) if self.references else None,
                "global_weight": self.global_weight}

    def tensors(self) -> dict[str, torch.Tensor]:
        if self.bank is None:
            raise RuntimeError("the method is not fitted")
        tensors = {"memory_bank": self.bank}
        if self.global_model is not None:
            tensors["global_mean"] = self.global_model.mean
            tensors["global_precision"] = self.global_model.precision
        return tensors


class PadimMethod(_DeepMethod):
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


DEEP_METHODS: dict[str, type[_DeepMethod]] = {
    PatchCoreMethod.name: PatchCoreMethod,
    PadimMethod.name: PadimMethod,
}


def restore_deep(name: str, options: dict[str, Any], tensors: dict[str, torch.Tensor],
                 extractor: FeatureExtractor, preprocessing: Preprocessing,
                 device: torch.device) -> _DeepMethod:
    """Rebuilds a fitted PatchCore or PaDiM from a bundle's options and tensors."""
    if name == PatchCoreMethod.name:
        global_model = None
        if options.get("global_stats"):
            global_model = global_stats.GlobalGaussian(tensors["global_mean"],
                                                       tensors["global_precision"])
        references = options.get("references")
        return PatchCoreMethod(extractor, preprocessing, device,
                               coreset_ratio=float(options["coreset_ratio"]),
                               projection_dim=options.get("projection_dim"),
                               num_neighbors=int(options["num_neighbors"]),
                               seed=int(options.get("seed", 0)), bank=tensors["memory_bank"],
                               global_stats=bool(options.get("global_stats", False)),
                               global_model=global_model,
                               references=tuple(references) if references else None,  # type: ignore[arg-type]
                               image_score=str(options.get("image_score", "reweighted")),
                               global_weight=float(options.get("global_weight", 1.0)))
    if name == PadimMethod.name:
        model = padim.PadimModel(tensors["mean"], tensors["inv_cov"],
                                 tuple(int(v) for v in tensors["grid"].tolist()))  # type: ignore[arg-type]
        return PadimMethod(extractor, preprocessing, device, channels=int(options["channels"]),
                           seed=int(options.get("seed", 0)), model=model,
                           channel_index=tensors["channel_index"])
    raise ValueError(f"unknown deep anomaly method {name!r}")
