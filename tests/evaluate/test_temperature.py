"""Temperature scaling: hand-checked optimum, over-confident logits, ECE and NLL after."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vitkit.evaluate.calibration import (
    TEMPERATURE_BOUNDS,
    fit_temperature,
    negative_log_likelihood,
    softmax,
    temperature_scaling,
)


def test_fit_by_hand_two_classes() -> None:
    # Every image has logits (3 ln 3, 0); 3 of 4 are class 0. The NLL is lowest where the
    # predicted probability equals the frequency: sigmoid(3 ln 3 / T) = 3/4  <=>  T = 3.
    logits = np.array([[3 * math.log(3), 0.0]] * 4)
    assert fit_temperature(logits, np.array([0, 0, 0, 1])) == pytest.approx(3.0, rel=1e-5)


def _calibrated(n: int = 20000, classes: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is calibrated by construction: labels are drawn from it."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, (n, classes))
    cumulative = softmax(logits).cumsum(axis=1)
    labels = (rng.random((n, 1)) > cumulative).sum(axis=1)
    return logits, np.minimum(labels, classes - 1)


def test_logits_scaled_by_three_get_a_temperature_of_three() -> None:
    logits, labels = _calibrated()
    fit = temperature_scaling(3.0 * logits, labels)
    assert fit.temperature == pytest.approx(3.0, rel=0.05)
    assert fit.ece_after < 0.25 * fit.ece_before
    assert fit.nll_after < fit.nll_before
    assert fit.ece_before > 0.1  # the over-confidence was real
    assert fit.n == len(labels)
    assert not fit.at_bound
    # Calibrated logits need no temperature.
    assert fit_temperature(logits, labels) == pytest.approx(1.0, rel=0.05)


def test_under_confident_logits_are_sharpened() -> None:
    logits, labels = _calibrated(seed=1)
    assert fit_temperature(logits / 2.0, labels) == pytest.approx(0.5, rel=0.05)


def test_temperature_never_moves_the_arg_max_and_the_record_holds_the_numbers() -> None:
    logits, labels = _calibrated(n=500, seed=2)
    fit = temperature_scaling(2.0 * logits, labels)
    after = softmax(2.0 * logits, fit.temperature)
    assert np.array_equal(after.argmax(1), logits.argmax(1))
    assert fit.before.n == fit.after.n == 500
    assert fit.nll_after == pytest.approx(
        negative_log_likelihood(2.0 * logits, labels, fit.temperature))
    assert fit.record("val") == {
        "temperature": fit.temperature, "ece_before": fit.ece_before,
        "ece_after": fit.ece_after, "nll_before": fit.nll_before, "nll_after": fit.nll_after,
        "fitted_on": "val", "n": 500}


def test_all_right_predictions_push_the_temperature_to_its_bound() -> None:
    fit = temperature_scaling(np.eye(3) * 4.0, np.arange(3))
    assert fit.temperature == pytest.approx(TEMPERATURE_BOUNDS[0])
    assert fit.at_bound


def test_nll_is_stable_for_huge_logits() -> None:
    logits = np.array([[1000.0, 0.0], [0.0, 1000.0]])
    assert negative_log_likelihood(logits, np.array([0, 1])) == pytest.approx(0.0, abs=1e-12)
    assert negative_log_likelihood(logits, np.array([1, 1])) == pytest.approx(500.0)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        fit_temperature(np.zeros(3), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="finite"):
        fit_temperature(np.array([[np.nan, 0.0]]), np.array([0]))


def _grid_minimum(logits: np.ndarray, labels: np.ndarray, points: int = 20001
                  ) -> tuple[float, float, float]:
    """(temperature, NLL) at the best of ``points`` log-spaced temperatures over the search
    range, and the grid's step in log T."""
    log_t = np.linspace(math.log(TEMPERATURE_BOUNDS[0]), math.log(TEMPERATURE_BOUNDS[1]),
                        points)
    nll = [negative_log_likelihood(logits, labels, math.exp(v)) for v in log_t]
    best = int(np.argmin(nll))
    return math.exp(log_t[best]), nll[best], float(log_t[1] - log_t[0])


@pytest.mark.parametrize(("scale", "seed"), [(3.0, 3), (0.5, 4), (1.0, 5), (40.0, 6)])
def test_the_fit_reaches_the_nll_minimum_of_a_fine_grid(scale: float, seed: int) -> None:
    """The fitted temperature is where a 20,001-point grid over log T finds the lowest NLL:
    within one grid step (3e-4 in log T) of the grid's best temperature and never above its
    NLL by more than 1e-12 (the NLL is flat to second order at the minimum, so a grid step
    moves it by ~1e-8 at most)."""
    logits, labels = _calibrated(n=400, seed=seed)
    logits = scale * logits
    fitted = fit_temperature(logits, labels)
    grid_t, grid_nll, step = _grid_minimum(logits, labels)
    assert abs(math.log(fitted) - math.log(grid_t)) <= step
    assert negative_log_likelihood(logits, labels, fitted) <= grid_nll + 1e-12


def test_the_temperature_is_fitted_by_scipy_optimize(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hand-written line search: scipy's bounded minimiser searches log T."""
    import scipy.optimize

    calls: list[tuple[float, float]] = []
    real = scipy.optimize.minimize_scalar

    def spy(fun: object, **kwargs: object) -> object:
        calls.append(kwargs["bounds"])  # type: ignore[arg-type]
        return real(fun, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(scipy.optimize, "minimize_scalar", spy)
    logits, labels = _calibrated(n=200, seed=7)
    assert fit_temperature(2.0 * logits, labels) == pytest.approx(2.0, rel=0.2)
    assert calls == [(math.log(TEMPERATURE_BOUNDS[0]), math.log(TEMPERATURE_BOUNDS[1]))]
