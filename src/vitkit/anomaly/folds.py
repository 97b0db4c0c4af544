"""Out-of-fold scores: every normal image is learned, and every one is also scored by a model
that never saw it.

The method is fitted on all normal images. Beside it, ``k`` twins each know all images but
one fold; each fold is then scored by the twin that left it out. A method that can derive
such a twin from its own fit (PatchCore: its bank without the fold's entries) does so; others
fit ``k`` unfitted twins (``spawn``) in the same pass over the images. Those
out-of-fold scores set the threshold, so the threshold still comes from images the scoring
model never saw, while no image is kept out of the final model (a held-out 20% used to be
missing from the memory bank and the Gaussians).

Cost: for fitted twins, ``k`` more fits (covariance inversions, patch statistics); the
twins share the features of the one pass over the images, which are kept for scoring the
folds afterwards (a second pass of feature extraction only when they would take more than
:data:`EMBEDDING_CACHE_BYTES`, or when synthetic defects must be made from the images).
Memory: the fitted twins' state together; ``k`` is lowered to what fits in
:data:`FOLD_MEMORY_BYTES`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from vitkit.anomaly.methods import AnomalyMethod, Embedding, Progress, select_images
from vitkit.anomaly.synthetic import synthetic_defects
from vitkit.errors import VitkitError

FOLD_MEMORY_BYTES = 4 * 1024**3
"""The most memory the twins' fit state may take together (features or Gaussian sums)."""
MIN_FOLDS = 2
EMBEDDING_CACHE_BYTES = 1024**3
"""The first pass's features are kept for scoring the folds when they take at most this."""

Batches = Callable[[], Iterable[tuple[torch.Tensor, list[int]]]]
"""A fresh pass over the normal images: (prepared batch, the images' indices in 0..n-1)."""


@dataclass
class OutOfFold:
    """The out-of-fold scores of the normal images and how they were made."""

    scores: torch.Tensor  # (n,), image i scored by the twin that did not learn it
    folds: int
    fold_of: list[int]
    details: dict[str, Any] = field(default_factory=dict)
    synthetic: dict[str, torch.Tensor] = field(default_factory=dict)  # kind -> (n,) scores
    # The method's score parts before they are combined (PatchCore with image statistics:
    # patch, global), of the normal images (n, P) and of the synthetic defects.
    parts: torch.Tensor | None = None
    synthetic_parts: dict[str, torch.Tensor] = field(default_factory=dict)


def assign_folds(n_images: int, folds: int, seed: int) -> list[int]:
    """Seeded fold of each image, sizes as equal as possible."""
    order = list(range(n_images))
    random.Random(seed).shuffle(order)
    fold_of = [0] * n_images
    for position, image in enumerate(order):
        fold_of[image] = position % folds
    return fold_of


def affordable_folds(requested: int, n_images: int, twin_bytes: int,
                     budget: int = FOLD_MEMORY_BYTES) -> int:
    """``requested`` folds, at most one per image, lowered until the twins fit in ``budget``;
    0 when not even :data:`MIN_FOLDS` fit (or there are fewer than 2 images)."""
    folds = min(requested, n_images)
    while folds >= MIN_FOLDS and folds * twin_bytes > budget:
        folds -= 1
    return folds if folds >= MIN_FOLDS else 0


def fold_assignment(n_images: int, folds: int, seed: int,
                    groups: Sequence[int] | None = None) -> list[int]:
    """Each image's fold. With ``groups`` (e.g. the augmented copies of one photo share a
    group) a group never spans two folds, so no copy of an image scores another; with a
    single group the copies themselves are the folds."""
    if groups is None or len(set(groups)) < MIN_FOLDS:
        return assign_folds(n_images, min(folds, n_images), seed)
    n_groups = max(groups) + 1
    by_group = assign_folds(n_groups, min(folds, n_groups), seed)
    return [by_group[g] for g in groups]


def fit_out_of_fold(method: AnomalyMethod, batches: Batches, n_images: int, folds: int,
                    seed: int, on_batch: Callable[[int], None] | None = None,
                    finish_progress: Progress | None = None,
                    on_score: Callable[[int], None] | None = None,
                    groups: Sequence[int] | None = None, synthetic_seed: int | None = None
                    ) -> tuple[dict[str, Any], OutOfFold | None]:
    """Fits ``method`` on every image and scores each fold with a twin that left it out.

    Returns the method's fit details and the out-of-fold scores, or None when not even two
    twins fit in memory (the caller then holds images out instead). ``on_batch(n)`` and
    ``on_score(n)`` hear about images embedded in the first and second pass;
    ``finish_progress`` about the method's own final step. ``groups`` keeps related images
    (augmented copies) in one fold (see :func:`fold_assignment`). With ``synthetic_seed``,
    synthetic defects of every image (:mod:`vitkit.anomaly.synthetic`) are scored by the
    image's own twin too (``OutOfFold.synthetic``: ``local`` and ``global`` scores).
    """
    twins: list[AnomalyMethod] = []
    fold_of: list[int] = []
    if method.derives_twins:  # twins come from the kept model's own fit (no extra fits)
        fold_of = fold_assignment(n_images, folds, seed, groups)
    kept: list[tuple[Embedding, list[int]]] | None = []
    kept_bytes = 0
    for batch, index in batches():
        embedding = method.embed(batch)
        if kept is not None:
            kept_bytes += sum(t.numel() * t.element_size() for t in embedding)
            if kept_bytes <= EMBEDDING_CACHE_BYTES:
                kept.append((embedding, index))
            else:
                kept = None
        if not fold_of:
            k = affordable_folds(folds, n_images,
                                 method.fit_state_bytes(embedding, n_images))
            if k == 0:
                return {}, None
            fold_of = fold_assignment(n_images, k, seed, groups)
            twins = [method.spawn() for _ in range(max(fold_of) + 1)]
        method.add_embedded(embedding)
        for fold, twin in enumerate(twins):
            learned = [i for i, image in enumerate(index) if fold_of[image] != fold]
            if learned:
                twin.add_embedded(select_images(embedding, learned))
        if on_batch is not None:
            on_batch(len(index))
    started = time.perf_counter()
    details = method.finish_fit(finish_progress)
    details["finish_seconds"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    for twin in twins:
        twin.finish_fit(None)
    if method.derives_twins:
        twins = [_derived(method, [i for i, f in enumerate(fold_of) if f == fold])
                 for fold in range(max(fold_of) + 1)]
    twins_seconds = round(time.perf_counter() - started, 3)
    if synthetic_seed is not None:  # the defects are made from the images: read them again
        passes: Iterable[tuple[torch.Tensor | None, list[int], Embedding | None]] = (
            (batch, index, None if kept is None else kept[i][0])
            for i, (batch, index) in enumerate(batches()))
    elif kept is not None:
        passes = ((None, index, embedding) for embedding, index in kept)
    else:
        passes = ((batch, index, None) for batch, index in batches())
    parts, synthetic = _out_of_fold_parts(method, twins, passes, fold_of, on_score,
                                          synthetic_seed)
    details.update(method.calibrate_parts(parts))
    scores = method.combine_parts(parts)
    return details, OutOfFold(scores, len(twins), fold_of, {
        "fold_sizes": [fold_of.count(f) for f in range(len(twins))],
        "twins": "derived from the kept model" if method.derives_twins else "fitted",
        "twins_seconds": twins_seconds},
        {kind: method.combine_parts(rows) for kind, rows in synthetic.items()}, parts,
        synthetic)


def _derived(method: AnomalyMethod, left_out: list[int]) -> AnomalyMethod:
    twin = method.twin_without(left_out)
    if twin is None:
        raise VitkitError(f"{method.name} kept nothing but the images {left_out} in its model, "
                          "so no model without them can score them; add more normal images "
                          "or use --folds 0.")
    return twin


def _out_of_fold_parts(method: AnomalyMethod, twins: list[AnomalyMethod],
                       passes: Iterable[tuple[torch.Tensor | None, list[int], Embedding | None]],
                       fold_of: list[int], on_score: Callable[[int], None] | None,
                       synthetic_seed: int | None
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The out-of-fold parts of every image, and (with ``synthetic_seed``) of a local and a
    global synthetic defect made from each, scored by the same twin as their source.
    ``passes``: (batch, indices, the batch's embedding when already known, else None)."""
    rows: dict[int, torch.Tensor] = {}
    made: dict[str, dict[int, torch.Tensor]] = {"local": {}, "global": {}}
    for batch, index, known in passes:
        embedding = known if known is not None else method.embed(_needed(batch))
        defects = None
        if synthetic_seed is not None:
            local, overall = synthetic_defects(_needed(batch), index, synthetic_seed)
            defects = {"local": method.embed(local), "global": method.embed(overall)}
        for fold, twin in enumerate(twins):
            members = [i for i, image in enumerate(index) if fold_of[image] == fold]
            if not members:
                continue
            for i, row in zip(members, twin.score_parts(select_images(embedding, members)),
                              strict=True):
                rows[index[i]] = row
            for kind, embedded in (defects or {}).items():
                for i, row in zip(members, twin.score_parts(select_images(embedded, members)),
                                  strict=True):
                    made[kind][index[i]] = row
        if on_score is not None:
            on_score(len(index))
    synthetic = {kind: torch.stack([found[i] for i in sorted(found)])
                 for kind, found in made.items() if found}
    return torch.stack([rows[i] for i in sorted(rows)]), synthetic


def _needed(batch: torch.Tensor | None) -> torch.Tensor:
    if batch is None:
        raise RuntimeError("a pass over kept features has no images to embed or alter")
    return batch


def indexed(batches: Iterator[torch.Tensor]) -> Iterator[tuple[torch.Tensor, list[int]]]:
    """Numbers the images of consecutive batches 0, 1, 2, …"""
    start = 0
    for batch in batches:
        yield batch, list(range(start, start + batch.shape[0]))
        start += batch.shape[0]


__all__ = ["Embedding", "OutOfFold", "affordable_folds", "assign_folds", "fit_out_of_fold",
           "indexed"]
