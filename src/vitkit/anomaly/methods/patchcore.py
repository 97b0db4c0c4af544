"""PatchCore as an anomaly method (Roth et al. 2022): the memory bank of locally aware patch
features, its coreset, optional image statistics and the twins derived from one fit (the
math in :mod:`vitkit.anomaly.patchcore` and :mod:`vitkit.anomaly.global_stats`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from vitkit.anomaly import global_stats, patchcore
from vitkit.anomaly.features import FeatureExtractor
from vitkit.anomaly.methods.base import DeepMethod, Embedding, Progress
from vitkit.data import Preprocessing
from vitkit.errors import ConfigError


class PatchCoreMethod(DeepMethod):
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

    @classmethod
    def restore(cls, options: dict[str, Any], tensors: dict[str, torch.Tensor],
                extractor: FeatureExtractor, preprocessing: Preprocessing,
                device: torch.device) -> PatchCoreMethod:
        """Rebuilds a fitted PatchCore from a bundle's options and tensors."""
        global_model = None
        if options.get("global_stats"):
            global_model = global_stats.GlobalGaussian(tensors["global_mean"],
                                                       tensors["global_precision"])
        references = options.get("references")
        return cls(extractor, preprocessing, device,
                   coreset_ratio=float(options["coreset_ratio"]),
                   projection_dim=options.get("projection_dim"),
                   num_neighbors=int(options["num_neighbors"]),
                   seed=int(options.get("seed", 0)), bank=tensors["memory_bank"],
                   global_stats=bool(options.get("global_stats", False)),
                   global_model=global_model,
                   references=tuple(references) if references else None,  # type: ignore[arg-type]
                   image_score=str(options.get("image_score", "reweighted")),
                   global_weight=float(options.get("global_weight", 1.0)))
