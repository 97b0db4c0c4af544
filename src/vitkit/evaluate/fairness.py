"""Group fairness of a classifier's predictions (pure numpy, no IO).

Given the true and predicted class of each image and the group it belongs to (a sensitive
attribute such as site, camera or skin tone), measures how differently the model treats the
groups:

* **demographic parity difference**: per class ``c``, the largest minus the smallest
  selection rate ``P(pred = c | group)``; the headline number is the largest over classes.
  With two classes both classes give the same number (the rates sum to one), so it is also
  the difference for the positive class ``labels[1]``.
* **equalized-odds gaps**: per class, one-vs-rest, the largest minus the smallest true-positive
  rate ``P(pred = c | true = c, group)`` and false-positive rate
  ``P(pred = c | true != c, group)`` over the groups; the headline gaps are the largest over
  classes. A group with no image of class ``c`` has no TPR for ``c`` (``None``) and does not
  take part in that comparison. With two classes the TPR of one class is one minus the FPR of
  the other, so both headline gaps equal the larger of the positive class's two gaps; the
  positive class's own TPR and FPR gaps (the usual binary equalized odds) are reported in
  ``positive_class_gaps``.

Groups with fewer than ``min_group_size`` images are reported but flagged ``too_few`` and left
out of every gap and of the worst group: a rate measured on three images says nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_MIN_GROUP_SIZE = 10


@dataclass
class GroupFairness:
    """One group's figures; rates are fractions, ``None`` where undefined.

    Attributes:
        n: Images in the group.
        accuracy: Correct predictions / n.
        selection_rate: Label -> ``P(pred = label)`` within the group.
        tpr: Label -> true-positive rate (recall) of the label within the group.
        fpr: Label -> false-positive rate of the label within the group.
        too_few: Fewer than the minimum size: shown, but not compared.
    """

    n: int
    accuracy: float
    selection_rate: dict[str, float]
    tpr: dict[str, float | None]
    fpr: dict[str, float | None]
    too_few: bool = False

    def to_dict(self) -> dict:
        return {"n": self.n, "accuracy": self.accuracy, "selection_rate": self.selection_rate,
                "tpr": self.tpr, "fpr": self.fpr, "too_few": self.too_few}


@dataclass
class FairnessReport:
    """Per-group figures and the gaps between the groups that have enough images.

    Attributes:
        groups: Group name -> its figures, groups sorted by name.
        demographic_parity_difference: Largest selection-rate difference over classes
            (``None`` when fewer than two groups can be compared).
        demographic_parity_by_class: Label -> its selection-rate difference.
        equalized_odds_gap: ``{"tpr": .., "fpr": .., "max": ..}``, each the largest over classes.
        equalized_odds_by_class: Label -> ``{"tpr": gap, "fpr": gap}``.
        accuracy_difference: Best minus worst group accuracy.
        worst_group: The compared group with the lowest accuracy (ties: first by name).
        positive_class: ``labels[1]`` for a two-class model (its gaps are the binary ones).
        positive_class_gaps: For two classes, ``{"demographic_parity", "tpr", "fpr"}`` of
            the positive class; ``None`` otherwise.
        min_group_size: Groups below this size were not compared.
        compared: Names of the groups that took part in the gaps.
    """

    groups: dict[str, GroupFairness]
    demographic_parity_difference: float | None
    demographic_parity_by_class: dict[str, float | None]
    equalized_odds_gap: dict[str, float | None]
    equalized_odds_by_class: dict[str, dict[str, float | None]]
    accuracy_difference: float | None
    worst_group: str | None
    positive_class: str | None
    positive_class_gaps: dict[str, float | None] | None
    min_group_size: int
    compared: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-friendly dict (the ``fairness`` part of ``eval --json``)."""
        return {
            "groups": {name: g.to_dict() for name, g in self.groups.items()},
            "demographic_parity_difference": self.demographic_parity_difference,
            "demographic_parity_by_class": self.demographic_parity_by_class,
            "equalized_odds_gap": self.equalized_odds_gap,
            "equalized_odds_by_class": self.equalized_odds_by_class,
            "accuracy_difference": self.accuracy_difference,
            "worst_group": self.worst_group,
            "positive_class": self.positive_class,
            "positive_class_gaps": self.positive_class_gaps,
            "min_group_size": self.min_group_size,
            "compared": self.compared,
        }


def group_fairness(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                   groups: Sequence[str], labels: Sequence[str],
                   min_group_size: int = DEFAULT_MIN_GROUP_SIZE) -> FairnessReport:
    """Per-group accuracy, selection rates, TPR/FPR and the gaps between groups.

    Args:
        y_true: True class index of each image, shape (N,).
        y_pred: Predicted class index of each image, shape (N,).
        groups: Group name of each image, length N.
        labels: Class names; index ``i`` is class ``i``.
        min_group_size: Groups with fewer images are flagged ``too_few`` and not compared.

    Raises:
        ValueError: Lengths differ, there are no images, or a class index is out of range.
    """
    true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    names = np.asarray([str(g) for g in groups], dtype=object)
    if not (len(true) == len(pred) == len(names)):
        raise ValueError(f"y_true, y_pred and groups differ in length: {len(true)}, "
                         f"{len(pred)}, {len(names)}")
    if len(true) == 0:
        raise ValueError("no images to measure fairness on")
    n_classes = len(labels)
    for name, values in (("y_true", true), ("y_pred", pred)):
        if values.min() < 0 or values.max() >= n_classes:
            raise ValueError(f"{name} holds class indices outside 0..{n_classes - 1}")
    if min_group_size < 1:
        raise ValueError(f"min_group_size must be >= 1, got {min_group_size}")

    per_group: dict[str, GroupFairness] = {}
    for name in sorted(set(names.tolist())):
        member = names == name
        per_group[name] = _one_group(true[member], pred[member], list(labels), min_group_size)
    compared = [name for name, g in per_group.items() if not g.too_few]
    judged = [per_group[name] for name in compared]

    dp_by_class = {label: _spread([g.selection_rate[label] for g in judged]) for label in labels}
    eo_by_class = {label: {"tpr": _spread([g.tpr[label] for g in judged]),
                           "fpr": _spread([g.fpr[label] for g in judged])} for label in labels}
    tpr_gap = _largest([gaps["tpr"] for gaps in eo_by_class.values()])
    fpr_gap = _largest([gaps["fpr"] for gaps in eo_by_class.values()])
    worst = min(compared, key=lambda name: (per_group[name].accuracy, name)) if compared else None
    positive = str(labels[1]) if n_classes == 2 else None
    return FairnessReport(
        groups=per_group,
        demographic_parity_difference=_largest(list(dp_by_class.values())),
        demographic_parity_by_class=dp_by_class,
        equalized_odds_gap={"tpr": tpr_gap, "fpr": fpr_gap, "max": _largest([tpr_gap, fpr_gap])},
        equalized_odds_by_class=eo_by_class,
        accuracy_difference=_spread([g.accuracy for g in judged]),
        worst_group=worst,
        positive_class=positive,
        positive_class_gaps=None if positive is None else {
            "demographic_parity": dp_by_class[positive], **eo_by_class[positive]},
        min_group_size=min_group_size,
        compared=compared,
    )


def _one_group(true: np.ndarray, pred: np.ndarray, labels: list[str],
               min_group_size: int) -> GroupFairness:
    n = len(true)
    selection, tpr, fpr = {}, {}, {}
    for c, label in enumerate(labels):
        chosen = pred == c
        positives = true == c
        selection[label] = float(chosen.mean())
        tpr[label] = _rate(chosen & positives, positives)
        fpr[label] = _rate(chosen & ~positives, ~positives)
    return GroupFairness(n=n, accuracy=float((true == pred).mean()), selection_rate=selection,
                         tpr=tpr, fpr=fpr, too_few=n < min_group_size)


def _rate(hits: np.ndarray, of: np.ndarray) -> float | None:
    total = int(of.sum())
    return None if total == 0 else float(hits.sum()) / total


def _spread(values: list[float | None]) -> float | None:
    """Largest minus smallest of the defined values; ``None`` below two of them."""
    defined = [v for v in values if v is not None]
    return max(defined) - min(defined) if len(defined) >= 2 else None


def _largest(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return max(defined) if defined else None
