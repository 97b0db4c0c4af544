"""Out-of-distribution scores on a classifier's pre-logits features and logits (pure math).

Every score is **higher = more out of distribution**. A method is a ``fit`` (the training set's
features, logits and labels -> a dict of tensors) and a ``score`` (that dict, features, logits
-> one score per image). The dict holds everything the score needs, hyper-parameters included
(as 1-element tensors), so it can be saved to safetensors and scored again without the code
that fitted it.

Methods (see the papers for why they work):
    msp                   -max softmax probability (Hendrycks & Gimpel 2017).
    energy                -T * logsumexp(logits / T) (Liu et al. 2020).
    mahalanobis           min over classes of the Mahalanobis distance to the class mean under
                          one shared covariance (Lee et al. 2018), Ledoit-Wolf shrunk so that
                          fewer images than feature dimensions still give an invertible matrix.
    mahalanobis_norm      the same on L2-normalised features ("Mahalanobis++", Mueller & Hein
                          2025: feature norms vary a lot between images, which breaks the
                          shared-Gaussian assumption; normalising removes most of that).
    relative_mahalanobis  the same minus the distance under one class-agnostic Gaussian
                          (Ren et al. 2021).
    knn                   1 - cosine similarity to the k-th nearest training feature, features
                          L2-normalised (Sun et al. 2022).
    vim                   alpha * norm of the feature's residual outside the principal subspace
                          (centred at u = -pinv(W) b), minus logsumexp(logits) (Wang et al. 2022).

Computations run in float64 where precision matters (covariances, distances); the kNN bank is
searched in chunks and stored as float32, or float16 beyond 32 MB (half the size; cosine
similarities then move by ~1e-3, which matters only for features that are nearly parallel,
as a barely trained network's are).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

Stats = dict[str, torch.Tensor]

KNN_DEFAULT_K = 50
KNN_MAX_BANK = 20_000
"""Rows kept in the kNN bank (a seeded random subset beyond that; Sun et al. show a 1% sample
of ImageNet loses little)."""
KNN_FLOAT32_ELEMENTS = 8 * 1024 * 1024
"""Banks up to this many numbers (32 MB) stay float32; larger ones are stored as float16."""
_QUERY_CHUNK = 512
_BANK_CHUNK = 8192


@dataclass
class TrainingSet:
    """What a method may learn from: in-distribution training images, already embedded.

    ``head_weight`` (C, D) and ``head_bias`` (C,) are the linear classifier that maps the
    features to the logits; only ViM needs them.
    """

    features: torch.Tensor  # (N, D)
    logits: torch.Tensor  # (N, C)
    targets: torch.Tensor  # (N,) class indices
    head_weight: torch.Tensor | None = None
    head_bias: torch.Tensor | None = None


def _scalar(value: float) -> torch.Tensor:
    return torch.tensor([float(value)], dtype=torch.float64)


@contextmanager
def _one_thread() -> Iterator[None]:
    # Multi-threaded LAPACK eigh collapses when the cores are busy: on 2 shared cores a
    # 1280 x 1280 eigh took 3-46 s with 2 threads and 0.9 s with one (torch 2.x, OpenMP).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def symmetric_eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors (columns) of a symmetric matrix, float64."""
    with _one_thread():
        values, vectors = torch.linalg.eigh(matrix.double())
    return values, vectors


# --- logits only --------------------------------------------------------------------------


def fit_msp(train: TrainingSet) -> Stats:
    """Nothing to learn."""
    return {}


def score_msp(stats: Stats, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return -logits.double().softmax(dim=1).amax(dim=1)


def fit_energy(train: TrainingSet, temperature: float = 1.0) -> Stats:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return {"temperature": _scalar(temperature)}


def score_energy(stats: Stats, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    t = float(stats["temperature"])
    return -t * torch.logsumexp(logits.double() / t, dim=1)


# --- Gaussian (Mahalanobis) ---------------------------------------------------------------


def ledoit_wolf(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Ledoit-Wolf shrunk covariance of rows ``x`` (N, D) that are already centred, and the
    shrinkage used: ``(1 - s) * S + s * mean(diag(S)) * I`` with ``S = x^T x / N``.

    scikit-learn's ``ledoit_wolf(x, assume_centered=True)`` computes it (one implementation
    in the project; the hand-written one it replaced agreed to 1e-10), in float64."""
    from sklearn.covariance import ledoit_wolf as sklearn_ledoit_wolf

    values = x.detach().to("cpu", torch.float64).numpy()
    shrunk, shrinkage = sklearn_ledoit_wolf(values, assume_centered=True)
    return torch.from_numpy(shrunk).to(x.device), float(shrinkage)


def whitening(covariance: torch.Tensor) -> torch.Tensor:
    """``W`` (D, D) with ``W^T W = inverse(covariance)``, so that the Mahalanobis distance is
    ``|W (x - m)|^2``; eigenvalues are floored at 1e-12 of the largest for a safe inverse."""
    values, vectors = symmetric_eigh(covariance)
    values = values.clamp_min(float(values.max()) * 1e-12 + 1e-300)
    return values.rsqrt()[:, None] * vectors.T


def _squared_distances(z: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(N, K) squared Euclidean distances; explicit sums (no cdist) stay exact in float64."""
    return ((z * z).sum(1, keepdim=True) - 2.0 * z @ centres.T
            + (centres * centres).sum(1)[None, :]).clamp_min(0.0)


def fit_mahalanobis(train: TrainingSet) -> Stats:
    """Class means and one shared, shrunk covariance (stored whitened: ``W``, ``W mu_c``)."""
    x = train.features.double()
    classes = torch.unique(train.targets)
    means = torch.stack([x[train.targets == c].mean(0) for c in classes])  # (K, D)
    centred = x - means[torch.searchsorted(classes, train.targets)]
    covariance, shrinkage = ledoit_wolf(centred)
    w = whitening(covariance)
    return {"whitening": w.float(), "whitened_means": (means @ w.T).float(),
            "shrinkage": _scalar(shrinkage)}


def score_mahalanobis(stats: Stats, features: torch.Tensor, logits: torch.Tensor
                      ) -> torch.Tensor:
    z = features.double() @ stats["whitening"].double().T  # (N, D)
    return _squared_distances(z, stats["whitened_means"].double()).amin(dim=1)


def _unit(features: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(features.double(), dim=1)


def fit_mahalanobis_norm(train: TrainingSet) -> Stats:
    """:func:`fit_mahalanobis` on L2-normalised features."""
    return fit_mahalanobis(TrainingSet(_unit(train.features), train.logits, train.targets))


def score_mahalanobis_norm(stats: Stats, features: torch.Tensor, logits: torch.Tensor
                           ) -> torch.Tensor:
    return score_mahalanobis(stats, _unit(features), logits)


def fit_relative_mahalanobis(train: TrainingSet) -> Stats:
    """:func:`fit_mahalanobis` plus one Gaussian over all classes (its own mean and shrunk
    covariance)."""
    stats = fit_mahalanobis(train)
    x = train.features.double()
    mean = x.mean(0)
    covariance, shrinkage = ledoit_wolf(x - mean)
    w0 = whitening(covariance)
    return {**stats, "background_whitening": w0.float(),
            "background_whitened_mean": (mean @ w0.T)[None, :].float(),
            "background_shrinkage": _scalar(shrinkage)}


def score_relative_mahalanobis(stats: Stats, features: torch.Tensor, logits: torch.Tensor
                               ) -> torch.Tensor:
    z0 = features.double() @ stats["background_whitening"].double().T
    background = _squared_distances(z0, stats["background_whitened_mean"].double())[:, 0]
    return score_mahalanobis(stats, features, logits) - background


# --- nearest neighbours -------------------------------------------------------------------


def default_knn_k(bank_size: int) -> int:
    """50 (Sun et al.'s choice), but at most a fifth of the bank: with a few dozen training
    images the 50th neighbour would sit in another class's cluster, or not exist. On
    hymenoptera (245 images) k = 10..50 all gave AUROC 0.98 against textures."""
    return max(1, min(KNN_DEFAULT_K, bank_size // 5))


def fit_knn(train: TrainingSet, k: int | None = None, max_bank: int = KNN_MAX_BANK,
            seed: int = 0) -> Stats:
    """The L2-normalised training features (a seeded subset beyond ``max_bank``; float16
    beyond :data:`KNN_FLOAT32_ELEMENTS`) and ``k`` (default :func:`default_knn_k`; never more
    than the bank holds)."""
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    bank = torch.nn.functional.normalize(train.features.float(), dim=1)
    if len(bank) > max_bank:
        keep = torch.randperm(len(bank), generator=torch.Generator().manual_seed(seed))
        bank = bank[keep[:max_bank]]
    k = default_knn_k(len(bank)) if k is None else min(k, len(bank))
    if bank.numel() > KNN_FLOAT32_ELEMENTS:
        bank = bank.half()
    return {"bank": bank, "k": _scalar(k)}


def kth_largest_similarity(queries: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) the k-th largest dot product of each query with the bank's rows, computed in chunks
    so that memory stays at (512, 8192 + k) floats whatever the bank's size."""
    out = []
    for q in queries.float().split(_QUERY_CHUNK):
        best = torch.empty(len(q), 0)
        for rows in bank.split(_BANK_CHUNK):
            sims = q @ rows.float().T
            best = torch.cat([best, sims], dim=1).topk(min(k, best.shape[1] + sims.shape[1]),
                                                       dim=1).values
        out.append(best[:, k - 1])
    return torch.cat(out) if out else torch.zeros(0)


def score_knn(stats: Stats, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    queries = torch.nn.functional.normalize(features.float(), dim=1)
    return 1.0 - kth_largest_similarity(queries, stats["bank"], int(stats["k"])).double()


# --- ViM ----------------------------------------------------------------------------------


def default_vim_dim(feature_dim: int, n_train: int) -> int:
    """The principal-subspace size: the paper's choice (1000 for D >= 2048, 512 for D >= 768,
    else D / 2), capped at half the training images, since N images span at most N dimensions
    and a subspace holding all of them leaves no residual to learn alpha from."""
    paper = 1000 if feature_dim >= 2048 else 512 if feature_dim >= 768 else feature_dim // 2
    return max(1, min(paper, n_train // 2, feature_dim - 1))


def fit_vim(train: TrainingSet, dim: int | None = None) -> Stats:
    """Origin ``u``, principal basis (D, dim) of the features centred at ``u``, and ``alpha``."""
    if train.head_weight is None or train.head_bias is None:
        raise ValueError("ViM needs the linear head's weight and bias")
    x = train.features.double()
    w, b = train.head_weight.double(), train.head_bias.double()
    dim = default_vim_dim(x.shape[1], len(x)) if dim is None else dim
    if not 0 < dim < x.shape[1]:
        raise ValueError(f"ViM subspace dim must be in 1..{x.shape[1] - 1}, got {dim}")
    with _one_thread():
        origin = -torch.linalg.pinv(w) @ b  # (D,)
    centred = x - origin
    _, vectors = symmetric_eigh(centred.T @ centred / len(x))  # ascending eigenvalues
    principal = vectors[:, -dim:]  # (D, dim)
    residual = _residual_norm(centred, principal)
    alpha = float(train.logits.double().amax(dim=1).mean()) / max(float(residual.mean()), 1e-12)
    return {"origin": origin.float(), "principal": principal.float(), "alpha": _scalar(alpha)}


def _residual_norm(centred: torch.Tensor, principal: torch.Tensor) -> torch.Tensor:
    """Norm of each row's part outside span(principal), in float64 (no cancellation worth
    worrying about at the sizes involved)."""
    inside = centred @ principal
    return ((centred * centred).sum(1) - (inside * inside).sum(1)).clamp_min(0.0).sqrt()


def score_vim(stats: Stats, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    centred = features.double() - stats["origin"].double()
    residual = _residual_norm(centred, stats["principal"].double())
    return float(stats["alpha"]) * residual - torch.logsumexp(logits.double(), dim=1)


# --- the table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class OodMethod:
    """A score: how to fit it, how to apply it, and whether it needs the linear head."""

    fit: Callable[..., Stats]
    score: Callable[[Stats, torch.Tensor, torch.Tensor], torch.Tensor]
    needs_head: bool = False


METHODS: dict[str, OodMethod] = {
    "msp": OodMethod(fit_msp, score_msp),
    "energy": OodMethod(fit_energy, score_energy),
    "mahalanobis": OodMethod(fit_mahalanobis, score_mahalanobis),
    "mahalanobis_norm": OodMethod(fit_mahalanobis_norm, score_mahalanobis_norm),
    "relative_mahalanobis": OodMethod(fit_relative_mahalanobis, score_relative_mahalanobis),
    "knn": OodMethod(fit_knn, score_knn),
    "vim": OodMethod(fit_vim, score_vim, needs_head=True),
}
