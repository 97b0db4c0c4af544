"""The live drift monitor (serve's DriftMonitor over the tests of vitkit.ood.drift), fed answers
directly, no server: a calm window is not flagged, and each kind of shift is, for its reason."""

from __future__ import annotations

import pytest
import torch

from vitkit.ood.detector import DriftReference
from vitkit.serve.drift import DriftConfig, DriftMonitor

LABELS = ["a", "b", "c"]
DIM = 16
WINDOW = 60
EXPECTED_OOD = 0.05
# Class k's features sit around 3 * e_k, unit noise (the classes are well apart, as a trained
# model's embeddings are).
CENTRES = 3.0 * torch.eye(DIM)[:3]


def _answers(n: int, generator: torch.Generator, shares: tuple[float, ...] = (1 / 3,) * 3,
             shift: float = 0.0, ood: float = EXPECTED_OOD
             ) -> list[tuple[torch.Tensor, int, bool]]:
    classes = torch.multinomial(torch.tensor(shares), n, replacement=True, generator=generator)
    features = CENTRES[classes] + torch.randn(n, DIM, generator=generator)
    features[:, DIM - 1] += shift  # a direction no class uses
    unknown = torch.rand(n, generator=generator) < ood
    return [(features[i], int(classes[i]), bool(unknown[i])) for i in range(n)]


def _monitor() -> DriftMonitor:
    generator = torch.Generator().manual_seed(0)
    reference = _answers(300, generator)
    features = torch.stack([f for f, _, _ in reference])
    counts = torch.bincount(torch.tensor([c for _, c, _ in reference]), minlength=3)
    return DriftMonitor(DriftReference(features, counts.double()), LABELS, EXPECTED_OOD,
                        DriftConfig(window=WINDOW, every=WINDOW, permutations=200))


def _feed(monitor: DriftMonitor, answers: list[tuple[torch.Tensor, int, bool]]) -> list[bool]:
    return [monitor.observe(*answer) for answer in answers]


def test_calm_windows_are_not_flagged_and_a_shift_is() -> None:
    monitor = _monitor()
    generator = torch.Generator().manual_seed(1)
    due = _feed(monitor, _answers(WINDOW, generator))
    assert due == [False] * (WINDOW - 1) + [True]  # one check per `every` answers
    flagged = []
    for _ in range(20):  # 20 calm windows, each from the reference's own distribution
        report = monitor.check()
        assert report["window"] == WINDOW
        flagged.append(report["drifted"])
        _feed(monitor, _answers(WINDOW, generator))
    # Three tests at alpha 0.01: under 3% false alarms; seeded, none of these 21 is flagged
    # (smallest p-values measured: feature 0.045, class mix 0.057, OOD share 0.079).
    assert not any(flagged), flagged
    calm = monitor.check()
    assert not calm["drifted"] and calm["reasons"] == []
    assert calm["feature_distance"]["p_value"] > 0.01
    assert calm["class_mix"]["p_value"] > 0.01 and calm["ood_p_value"] > 0.01

    # Two noise standard deviations along a direction no class uses: no permutation of 200
    # came close on any of 10 seeds (measured; one deviation is flagged on 6 of 10 windows
    # of 60 answers, so 60 answers see a shift of about that size only now and then).
    _feed(monitor, _answers(WINDOW, generator, shift=2.0))  # the window is now all shifted
    shifted = monitor.check()
    assert shifted["drifted"] and len(shifted["reasons"]) == 1, shifted["reasons"]
    assert "feature distribution differs" in shifted["reasons"][0]
    assert shifted["feature_distance"]["p_value"] == pytest.approx(1 / 201)
    assert monitor.checks == 22


def test_a_new_class_mix_and_more_unknowns_are_flagged_for_their_reason() -> None:
    monitor = _monitor()
    generator = torch.Generator().manual_seed(2)
    _feed(monitor, _answers(WINDOW, generator, shares=(0.8, 0.1, 0.1)))
    mix = monitor.check()
    assert mix["drifted"] and any("class mix differs" in r for r in mix["reasons"])
    assert mix["class_mix"]["p_value"] < 0.01 and mix["class_mix"]["tvd"] > 0.3

    _feed(monitor, _answers(WINDOW, generator, ood=0.3))
    unknown = monitor.check()
    assert unknown["drifted"] and unknown["ood_p_value"] < 0.01
    assert any("out of distribution" in r for r in unknown["reasons"])
    assert unknown["class_mix"]["p_value"] > 0.01  # the mix is back to the reference's
