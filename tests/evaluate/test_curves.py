"""Learning-curve diagnostics on hand-made epoch histories, with the answers worked out by hand."""

from __future__ import annotations

import pytest

from vitkit.evaluate.curves import (
    convergence_epoch,
    diagnose,
    overfitting_onset,
    read_history,
    transfer_gain,
)


def _rows(*epochs: tuple[str, float, float, float]) -> list[dict[str, object]]:
    """(stage, train_loss, val_loss, val_acc) per epoch, numbered from 1."""
    return [{"epoch": i, "stage": stage, "train_loss": train, "val_loss": val, "val_acc": acc}
            for i, (stage, train, val, acc) in enumerate(epochs, start=1)]


def test_convergence_is_the_first_epoch_at_95_percent_of_the_best() -> None:
    # best 0.9 -> threshold 0.855: epoch 2 (0.8) is below, epoch 3 (0.86) is the first above
    history = read_history(_rows(("full", 1, 1, 0.5), ("full", 1, 1, 0.8),
                                 ("full", 1, 1, 0.86), ("full", 1, 1, 0.9),
                                 ("full", 1, 1, 0.7)))
    assert convergence_epoch(history) == 3
    # exactly at the threshold counts: 0.95 * 0.8 = 0.76
    assert convergence_epoch(read_history(_rows(("full", 1, 1, 0.76),
                                                ("full", 1, 1, 0.8)))) == 1


def test_overfitting_onset_is_the_first_gap_growing_by_more_than_ten_percent() -> None:
    # gaps 0.1, 0.105 (+5 %), 0.12 (+14.3 % over 0.105): the onset is epoch 3
    history = read_history(_rows(("full", 1.0, 1.1, 0.5), ("full", 0.9, 1.005, 0.6),
                                 ("full", 0.8, 0.92, 0.7)))
    assert [round(e.gap, 6) for e in history] == [0.1, 0.105, 0.12]
    assert overfitting_onset(history) == 3


def test_a_gap_growing_by_exactly_ten_percent_is_no_onset() -> None:
    # 0.5 -> 0.55 (both exact in binary after the subtraction from 0): +10 %, not more
    history = read_history(_rows(("full", 0.0, 0.5, 0.5), ("full", 0.0, 0.55, 0.5)))
    assert overfitting_onset(history) is None


def test_no_onset_after_a_gap_of_zero_or_below() -> None:
    """Validation loss at or under the training loss (augmentation, label smoothing) has no
    relative growth: the epoch after it is never an onset, however large its gap."""
    history = read_history(_rows(("full", 1.0, 0.8, 0.5),   # gap -0.2
                                 ("full", 0.5, 0.8, 0.6),   # gap 0.3, after a negative gap
                                 ("full", 0.5, 0.5, 0.7),   # gap 0 (smaller: no onset)
                                 ("full", 0.4, 0.9, 0.7),   # gap 0.5, after a zero gap
                                 ("full", 0.4, 0.91, 0.7)))  # gap 0.51: +2 %
    assert overfitting_onset(history) is None


def test_onset_compares_epochs_of_the_same_stage_only() -> None:
    # head gap 0.1 -> full gap 0.5 is a change of what the training loss measures, not an onset;
    # within full 0.5 -> 0.56 (+12 %) is
    history = read_history(_rows(("head", 0.9, 1.0, 0.5), ("full", 0.5, 1.0, 0.6),
                                 ("full", 0.4, 0.96, 0.7)))
    assert overfitting_onset(history) == 3


def test_diagnose_reads_csv_strings_and_measures_best_minus_last() -> None:
    rows = [
        {"epoch": "1", "stage": "head", "train_loss": "0.9", "val_loss": "0.8", "val_acc": "0.6"},
        {"epoch": "2", "stage": "full", "train_loss": "0.5", "val_loss": "0.6", "val_acc": "0.9"},
        {"epoch": "3", "stage": "full", "train_loss": "nan", "val_loss": "0.6", "val_acc": "1"},
        {"epoch": "4", "stage": "full", "train_loss": "0.3", "val_loss": "",  "val_acc": "1"},
        {"epoch": "5", "stage": "full", "train_loss": "0.2", "val_loss": "0.7", "val_acc": "0.75"},
    ]
    result = diagnose(rows)
    # epochs 3 (nan) and 4 (empty) cannot be read and are left out
    assert result.epochs == 3
    assert result.best_val_accuracy == 0.9
    assert result.last_val_accuracy == 0.75
    assert result.best_minus_last == pytest.approx(0.15)
    assert result.convergence_epoch == 2  # 0.95 * 0.9 = 0.855
    assert result.overfitting_onset == 5  # full: gap 0.1 -> 0.5
    assert set(result.to_dict()) == {"epochs", "best_val_accuracy", "last_val_accuracy",
                                     "convergence_epoch", "overfitting_onset",
                                     "best_minus_last"}


def test_an_empty_history_says_nothing() -> None:
    result = diagnose([])
    assert result.epochs == 0
    assert result.convergence_epoch is result.overfitting_onset is result.best_minus_last is None


@pytest.mark.parametrize(("pretrained", "scratch", "gain"), [
    (0.9, 0.8, 0.5),     # half of the scratch model's errors removed
    (0.8, 0.8, 0.0),
    (0.7, 0.8, -0.5),    # pretraining added errors
    (1.0, 0.6, 1.0),
    (1.0, 1.0, 0.0),     # a perfect scratch model: the plain difference
    (0.9, 1.0, -0.1),
])
def test_transfer_gain(pretrained: float, scratch: float, gain: float) -> None:
    assert transfer_gain(pretrained, scratch) == pytest.approx(gain)
