"""Has the input drifted? Tests that compare a batch of new images with a reference (pure math).

Three questions, each answered with a p-value:

* **Features**: are the new images' features distributed like the reference's? The statistic
  is the unbiased MMD² (Gretton et al. 2012) with a Gaussian kernel whose bandwidth is the
  median pairwise distance, on the pooled features projected onto their top principal
  components (a kernel on 1,000+ raw dimensions sees mostly noise). The p-value comes from a
  seeded permutation test. The projection and the bandwidth are computed from the *pooled*
  rows, which a permutation does not change, so the test stays exact.
* **Class mix**: do the predicted classes come in the same shares? Total-variation distance
  and the chi-square test of homogeneity of the two count vectors.
* **OOD share**: are more images flagged out-of-distribution than the detector's false-alarm
  rate (about 5%) explains? One-sided binomial test.

:func:`verdict` combines them: drifted iff any p-value is below ``alpha`` (default 0.01).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats as scipy_stats

from vitkit.ood.scores import symmetric_eigh

DEFAULT_PERMUTATIONS = 500
DEFAULT_PCA_DIM = 32
MAX_ROWS = 1000
"""Rows per side in the feature test (a seeded subset beyond that): the kernel matrix is
(n + m)² and each permutation touches all of it."""


@dataclass
class FeatureTest:
    statistic: float  # unbiased MMD² (can be slightly negative when there is no difference)
    p_value: float
    bandwidth: float  # median pairwise distance of the pooled, projected rows
    n_reference: int
    n_new: int
    n_permutations: int
    dims: int  # principal components used

    def to_dict(self) -> dict[str, Any]:
        return {"statistic": self.statistic, "p_value": self.p_value, "method": "mmd_rbf",
                "bandwidth": self.bandwidth, "n_reference": self.n_reference,
                "n_new": self.n_new, "permutations": self.n_permutations, "dims": self.dims}


def _project(pooled: torch.Tensor, dims: int | None) -> torch.Tensor:
    """The rows' coordinates on their top ``dims`` principal components, from the eigenvectors
    of the (M, M) Gram matrix (M rows < D dimensions here; much faster than an SVD)."""
    centred = pooled - pooled.mean(0)
    if dims is None or dims >= min(centred.shape):
        return centred
    values, vectors = symmetric_eigh(centred @ centred.T)  # ascending
    return vectors[:, -dims:] * values[-dims:].clamp_min(0.0).sqrt()


def _subsample(x: torch.Tensor, limit: int, generator: torch.Generator) -> torch.Tensor:
    if len(x) <= limit:
        return x
    return x[torch.randperm(len(x), generator=generator)[:limit]]


def mmd_permutation_test(reference: torch.Tensor, new: torch.Tensor,
                         n_permutations: int = DEFAULT_PERMUTATIONS,
                         pca_dim: int | None = DEFAULT_PCA_DIM, seed: int = 0,
                         max_rows: int = MAX_ROWS) -> FeatureTest:
    """Unbiased MMD² between ``reference`` (N, D) and ``new`` (M, D) and its permutation
    p-value, ``(1 + #{permuted >= observed}) / (1 + n_permutations)``."""
    if len(reference) < 2 or len(new) < 2:
        raise ValueError("the feature test needs at least 2 rows on each side")
    generator = torch.Generator().manual_seed(seed)
    x = _subsample(reference.double(), max_rows, generator)
    y = _subsample(new.double(), max_rows, generator)
    n, m = len(x), len(y)
    z = _project(torch.cat([x, y]), pca_dim)
    sq = ((z * z).sum(1, keepdim=True) - 2.0 * z @ z.T + (z * z).sum(1)[None, :]).clamp_min(0)
    off_diagonal = sq[~torch.eye(n + m, dtype=torch.bool)]
    median = float(off_diagonal.median()) or 1.0  # all rows equal: any bandwidth gives 0
    kernel = torch.exp(-sq / median)  # (n+m, n+m), bandwidth sigma² = median / 2

    # Row p of `assign` marks which pooled rows play "reference" in permutation p (row 0: the
    # observed split), so every statistic is a couple of matrix products.
    orders = [torch.arange(n + m)] + [torch.randperm(n + m, generator=generator)
                                      for _ in range(n_permutations)]
    assign = torch.zeros(len(orders), n + m, dtype=torch.float64)
    for row, order in enumerate(orders):
        assign[row, order[:n]] = 1.0
    other = 1.0 - assign
    k_assign = assign @ kernel
    k_other = other @ kernel
    sum_xx = (k_assign * assign).sum(1) - n  # the kernel's diagonal is 1: drop it
    sum_yy = (k_other * other).sum(1) - m
    sum_xy = (k_assign * other).sum(1)
    mmd2 = sum_xx / (n * (n - 1)) + sum_yy / (m * (m - 1)) - 2.0 * sum_xy / (n * m)
    observed = float(mmd2[0])
    exceed = int((mmd2[1:] >= observed - 1e-12).sum())
    return FeatureTest(observed, (1 + exceed) / (1 + n_permutations),
                       float(np.sqrt(median / 2.0)), n, m, n_permutations, z.shape[1])


@dataclass
class ClassMixTest:
    new: dict[str, float]  # label -> share of the new images
    reference: dict[str, float]
    tvd: float  # total-variation distance, 0 (same mix) .. 1 (disjoint)
    p_value: float  # chi-square test of homogeneity

    def to_dict(self) -> dict[str, Any]:
        return {"new": self.new, "reference": self.reference, "tvd": self.tvd,
                "p_value": self.p_value}


def class_mix_test(new_counts: Sequence[int], reference_counts: Sequence[int],
                   labels: Sequence[str]) -> ClassMixTest:
    """Compares predicted-class counts; classes that neither side predicts are left out of the
    chi-square test (they carry no information and would divide by zero)."""
    new = np.asarray(new_counts, dtype=np.float64)
    ref = np.asarray(reference_counts, dtype=np.float64)
    if new.sum() == 0 or ref.sum() == 0:
        raise ValueError("both sides need at least one prediction")
    new_share, ref_share = new / new.sum(), ref / ref.sum()
    used = (new + ref) > 0
    p_value = 1.0
    if used.sum() >= 2:
        table = np.stack([new[used], ref[used]])
        p_value = float(scipy_stats.chi2_contingency(table, correction=False).pvalue)
    return ClassMixTest(
        {label: float(s) for label, s in zip(labels, new_share, strict=True)},
        {label: float(s) for label, s in zip(labels, ref_share, strict=True)},
        float(0.5 * np.abs(new_share - ref_share).sum()), p_value)


def ood_share_p_value(n_flagged: int, n: int, expected: float) -> float:
    """One-sided binomial p-value of seeing ``n_flagged`` or more flagged images among ``n``
    when each is flagged with probability ``expected`` (the detector's false-alarm rate)."""
    if n == 0:
        return 1.0
    expected = min(max(expected, 1e-6), 1.0 - 1e-6)
    return float(scipy_stats.binomtest(n_flagged, n, expected, alternative="greater").pvalue)


@dataclass
class DriftReport:
    """The `vitkit drift --json` document (see :func:`verdict` for the rule)."""

    n_new: int
    ood_share: float | None
    expected_ood_share: float | None
    ood_p_value: float | None
    feature_distance: FeatureTest | None
    class_mix: ClassMixTest | None
    drifted: bool
    reasons: list[str] = field(default_factory=list)
    alpha: float = 0.01
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_new": self.n_new, "ood_share": self.ood_share,
            "expected_ood_share": self.expected_ood_share, "ood_p_value": self.ood_p_value,
            "feature_distance": None if self.feature_distance is None
            else self.feature_distance.to_dict(),
            "class_mix": None if self.class_mix is None else self.class_mix.to_dict(),
            "drifted": self.drifted, "reasons": self.reasons, "alpha": self.alpha,
            **self.extra,
        }


def verdict(n_new: int, features: FeatureTest | None, mix: ClassMixTest | None,
            ood: tuple[int, float] | None, alpha: float = 0.01,
            extra: Mapping[str, Any] | None = None) -> DriftReport:
    """Drifted iff at least one test rejects "same as the reference" at level ``alpha``:
    the feature MMD permutation test, the class-mix chi-square test, or the binomial test of
    the OOD share against its expected rate (``ood`` = (flagged images, expected rate)).
    Three tests at 0.01 keep the false-alarm rate on undrifted batches below 3%."""
    reasons = []
    if features is not None and features.p_value < alpha:
        reasons.append(f"feature distribution differs (MMD p = {features.p_value:.3g})")
    if mix is not None and mix.p_value < alpha:
        reasons.append(f"predicted-class mix differs (TVD {mix.tvd:.2f}, "
                       f"p = {mix.p_value:.3g})")
    share = expected = p_ood = None
    if ood is not None and n_new > 0:
        flagged, expected = ood
        share = flagged / n_new
        p_ood = ood_share_p_value(flagged, n_new, expected)
        if p_ood < alpha:
            reasons.append(f"{share:.0%} of the images are out of distribution, expected "
                           f"about {expected:.0%} (p = {p_ood:.3g})")
    return DriftReport(n_new, share, expected, p_ood, features, mix, bool(reasons), reasons,
                       alpha, dict(extra or {}))
