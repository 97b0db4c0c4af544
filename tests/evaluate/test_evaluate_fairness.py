"""Group fairness on small tables worked out by hand (see the comments next to each case)."""

from __future__ import annotations

import pytest

from vitkit.evaluate.fairness import group_fairness

# Two classes, labels ["cat", "dog"]; "dog" (index 1) is the positive class.
#
#   group A (n=4): true 1 1 0 0   pred 1 0 0 0
#     accuracy 3/4 = 0.75; selects dog 1/4, cat 3/4
#     dog: TPR 1/2 (one of two dogs found), FPR 0/2;  cat: TPR 2/2, FPR 1/2 (a dog called cat)
#   group B (n=5): true 1 1 0 0 0 pred 1 1 1 0 0
#     accuracy 4/5 = 0.8; selects dog 3/5, cat 2/5
#     dog: TPR 2/2, FPR 1/3;  cat: TPR 2/3, FPR 0/2
#   group C (n=2): true 0 1   pred 1 0   -> accuracy 0, but too small to compare (min 3)
#
#   demographic parity: dog |0.6 - 0.25| = 0.35, cat |0.75 - 0.4| = 0.35 (the same, as with
#   any two classes) -> 0.35
#   equalized odds: dog TPR |1 - 0.5| = 0.5, FPR |1/3 - 0| = 1/3; cat TPR |1 - 2/3| = 1/3,
#   FPR |0.5 - 0| = 0.5 -> TPR gap 0.5, FPR gap 0.5
#   accuracy difference 0.8 - 0.75 = 0.05; worst compared group A (C is left out)
BINARY_TRUE = [1, 1, 0, 0] + [1, 1, 0, 0, 0] + [0, 1]
BINARY_PRED = [1, 0, 0, 0] + [1, 1, 1, 0, 0] + [1, 0]
BINARY_GROUPS = ["A"] * 4 + ["B"] * 5 + ["C"] * 2


def test_binary_table() -> None:
    report = group_fairness(BINARY_TRUE, BINARY_PRED, BINARY_GROUPS, ["cat", "dog"],
                            min_group_size=3)
    a, b, c = report.groups["A"], report.groups["B"], report.groups["C"]
    assert (a.n, b.n, c.n) == (4, 5, 2)
    assert a.accuracy == pytest.approx(0.75) and b.accuracy == pytest.approx(0.8)
    assert a.selection_rate == pytest.approx({"cat": 0.75, "dog": 0.25})
    assert b.selection_rate == pytest.approx({"cat": 0.4, "dog": 0.6})
    assert a.tpr == pytest.approx({"cat": 1.0, "dog": 0.5})
    assert a.fpr == pytest.approx({"cat": 0.5, "dog": 0.0})
    assert b.tpr == pytest.approx({"cat": 2 / 3, "dog": 1.0})
    assert b.fpr == pytest.approx({"cat": 0.0, "dog": 1 / 3})
    assert c.too_few and not a.too_few and not b.too_few
    assert report.compared == ["A", "B"]
    assert report.demographic_parity_difference == pytest.approx(0.35)
    assert report.demographic_parity_by_class == pytest.approx({"cat": 0.35, "dog": 0.35})
    assert report.equalized_odds_by_class["dog"] == pytest.approx({"tpr": 0.5, "fpr": 1 / 3})
    assert report.equalized_odds_by_class["cat"] == pytest.approx({"tpr": 1 / 3, "fpr": 0.5})
    assert report.equalized_odds_gap == pytest.approx({"tpr": 0.5, "fpr": 0.5, "max": 0.5})
    assert report.accuracy_difference == pytest.approx(0.05)
    assert report.worst_group == "A"
    assert report.positive_class == "dog"
    # The usual binary equalized odds: the dog's own TPR and FPR gaps.
    assert report.positive_class_gaps == pytest.approx(
        {"demographic_parity": 0.35, "tpr": 0.5, "fpr": 1 / 3})


def test_min_group_size_decides_who_is_compared() -> None:
    # With min_group_size=2, group C (accuracy 0, selects dog 1/2) joins the comparison:
    # dog selection rates 0.25, 0.6, 0.5 -> 0.35 still; accuracy 0.75, 0.8, 0 -> worst C.
    report = group_fairness(BINARY_TRUE, BINARY_PRED, BINARY_GROUPS, ["cat", "dog"],
                            min_group_size=2)
    assert report.worst_group == "C"
    assert report.accuracy_difference == pytest.approx(0.8)
    # C: dog TPR 0/1, so the dog TPR gap grows to 1 - 0 = 1.
    assert report.equalized_odds_gap["tpr"] == pytest.approx(1.0)


# Three classes a, b, c; group X has no image of class c, so its TPR for c is undefined.
#
#   X (n=3): true 0 0 1    pred 0 1 1
#     accuracy 2/3; selects a 1/3, b 2/3, c 0
#     TPR a 1/2, b 1/1, c None;  FPR a 0/1, b 1/2 (an a called b), c 0/3
#   Y (n=4): true 0 1 1 2  pred 0 1 2 2
#     accuracy 3/4; selects a 1/4, b 1/4, c 1/2
#     TPR a 1/1, b 1/2, c 1/1;   FPR a 0/3, b 0/2, c 1/3 (a b called c)
#
#   parity: a 1/12, b 5/12, c 1/2 -> 0.5
#   equalized odds: a TPR 1/2, FPR 0; b TPR 1/2, FPR 1/2; c TPR None (only Y), FPR 1/3
#   -> TPR gap 0.5, FPR gap 0.5; worst group X
def test_three_classes_with_an_undefined_rate() -> None:
    report = group_fairness([0, 0, 1, 0, 1, 1, 2], [0, 1, 1, 0, 1, 2, 2],
                            ["X"] * 3 + ["Y"] * 4, ["a", "b", "c"], min_group_size=1)
    x, y = report.groups["X"], report.groups["Y"]
    assert x.tpr["c"] is None and y.tpr["c"] == pytest.approx(1.0)
    assert x.fpr == pytest.approx({"a": 0.0, "b": 0.5, "c": 0.0})
    assert y.fpr == pytest.approx({"a": 0.0, "b": 0.0, "c": 1 / 3})
    assert report.demographic_parity_by_class == pytest.approx(
        {"a": 1 / 12, "b": 5 / 12, "c": 0.5})
    assert report.demographic_parity_difference == pytest.approx(0.5)
    assert report.equalized_odds_by_class["c"]["tpr"] is None
    assert report.equalized_odds_by_class["c"]["fpr"] == pytest.approx(1 / 3)
    assert report.equalized_odds_gap == pytest.approx({"tpr": 0.5, "fpr": 0.5, "max": 0.5})
    assert report.worst_group == "X"
    assert report.positive_class is None and report.positive_class_gaps is None


def test_identical_groups_have_no_gap() -> None:
    true, pred = [0, 1, 1, 0], [0, 1, 0, 0]
    report = group_fairness(true * 2, pred * 2, ["p"] * 4 + ["q"] * 4, ["n", "y"],
                            min_group_size=1)
    assert report.demographic_parity_difference == 0.0
    assert report.equalized_odds_gap == {"tpr": 0.0, "fpr": 0.0, "max": 0.0}


def test_one_comparable_group_gives_no_gaps() -> None:
    report = group_fairness([0, 1, 0], [0, 1, 1], ["big", "big", "tiny"], ["n", "y"],
                            min_group_size=2)
    assert report.compared == ["big"]
    assert report.demographic_parity_difference is None
    assert report.equalized_odds_gap == {"tpr": None, "fpr": None, "max": None}
    assert report.worst_group == "big"
    as_json = report.to_dict()
    assert as_json["groups"]["tiny"]["too_few"] is True


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        group_fairness([0, 1], [0], ["a", "b"], ["x", "y"])
    with pytest.raises(ValueError, match="outside"):
        group_fairness([0, 2], [0, 1], ["a", "b"], ["x", "y"])
    with pytest.raises(ValueError, match="no images"):
        group_fairness([], [], [], ["x", "y"])
