"""Input checks shared by the metric functions, so every entry point fails the same way."""

from __future__ import annotations

import numpy as np

# Probabilities from float16/bfloat16 softmax can drift a little from an exact sum of 1.
_SUM_TOLERANCE = 1e-3


def check_probs(probs: object, n_classes: int | None = None) -> np.ndarray:
    """Return ``probs`` as a float64 ``(N, C)`` array of per-class probabilities.

    Args:
        probs: Array-like of shape ``(N, C)``; each row must be a probability distribution.
        n_classes: Expected ``C`` (the number of labels), or ``None`` to accept any ``C >= 1``.

    Raises:
        ValueError: If the shape is wrong, the array is empty, holds non-finite or negative
            values, or a row does not sum to 1.
    """
    arr = np.asarray(probs)
    if arr.ndim != 2 or (n_classes is not None and arr.shape[1] != n_classes):
        if n_classes is None:
            raise ValueError(f"probs must have shape (N, C), got {arr.shape}")
        raise ValueError(
            f"probs must have shape (N, C) with C=len(labels)={n_classes}, got {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ValueError("probs is empty: need at least one sample to compute metrics")
    if arr.shape[1] == 0:
        raise ValueError("probs has no columns: need at least one class")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"probs must be a real numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError("probs contains NaN or infinite values")
    if arr.min() < 0:
        raise ValueError(
            f"probs must be non-negative, got a minimum of {arr.min():.4g}; "
            "did you pass logits? apply softmax first"
        )
    sums = arr.sum(axis=1)
    if not np.allclose(sums, 1.0, rtol=0.0, atol=_SUM_TOLERANCE):
        raise ValueError(
            f"each row of probs must sum to 1, got row sums between {sums.min():.4g} and "
            f"{sums.max():.4g}; did you pass logits? apply softmax first"
        )
    return arr


def check_targets(y_true: object, n_samples: int, n_classes: int) -> np.ndarray:
    """Return ``y_true`` as an int64 ``(N,)`` array of class indices in ``[0, n_classes)``.

    Args:
        y_true: Array-like of integer class indices.
        n_samples: Expected ``N`` (the number of rows of ``probs``).
        n_classes: Number of classes ``C``.

    Raises:
        ValueError: If the shape, dtype or range is wrong.
    """
    arr = np.asarray(y_true)
    if arr.ndim != 1 or arr.shape[0] != n_samples:
        raise ValueError(
            f"y_true must have shape (N,) with N=len(probs)={n_samples}, got {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        raise ValueError(f"y_true must hold integer class indices, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
        raise ValueError(
            f"y_true values must be class indices in [0, {n_classes - 1}], "
            f"got values between {arr.min()} and {arr.max()}"
        )
    return arr.astype(np.int64, copy=False)


def check_n_bins(n_bins: int) -> int:
    """Return ``n_bins`` if it is a positive integer.

    Raises:
        ValueError: Otherwise.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return int(n_bins)
