"""Log-mel on torch.stft and a Slaney filterbank, held to librosa's own values.

The bound: at most 1e-5 dB apart from ``librosa.power_to_db(librosa.feature.melspectrogram(…))``
in float64 (measured 4e-7 dB) and 1e-3 dB in float32 (measured 5e-5 dB), every bin included
(``top_db=80`` floors the quiet ones the same way in both)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitkit.data.logmel import (
    LogMelSettings,
    hz_to_mel,
    log_mel,
    mel_filterbank,
    mel_to_hz,
    model_input,
)

librosa = pytest.importorskip("librosa")


def _speech_like(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Two gliding harmonics in noise: energy in many mel bands, quiet bins too."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    glide = 200 + 300 * t / seconds
    signal = (0.3 * np.sin(2 * np.pi * np.cumsum(glide) / rate)
              + 0.1 * np.sin(2 * np.pi * np.cumsum(3.1 * glide) / rate))
    return signal + 0.01 * rng.standard_normal(len(t))


def _librosa_db(y: np.ndarray, s: LogMelSettings) -> np.ndarray:
    power = librosa.feature.melspectrogram(
        y=y, sr=s.sample_rate, n_fft=s.n_fft, hop_length=s.hop_length, win_length=s.win_length,
        n_mels=s.n_mels, fmin=s.f_min, fmax=s.f_max)
    return librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=s.top_db)


@pytest.mark.parametrize(("dtype", "bound"), [(np.float64, 1e-5), (np.float32, 1e-3)])
@pytest.mark.parametrize("rate", [8000, 16000])
def test_log_mel_matches_librosa_within_the_stated_bound(dtype: type, bound: float,
                                                         rate: int) -> None:
    settings = LogMelSettings.for_rate(rate)  # 80 bands, 25 ms windows, 10 ms hop
    y: np.ndarray = _speech_like(rate, 0.73).astype(dtype)
    expected = _librosa_db(y, settings)
    ours = log_mel(torch.from_numpy(y), settings).numpy()
    assert ours.shape == expected.shape == (80, settings.frames(len(y)))
    assert np.abs(ours - expected).max() < bound


def test_the_filterbank_is_librosas_slaney_one_also_with_band_edges() -> None:
    for rate, n_fft, n_mels, low, high in [(8000, 256, 80, 0.0, None),
                                           (22050, 1024, 64, 60.0, 8000.0)]:
        expected = librosa.filters.mel(sr=rate, n_fft=n_fft, n_mels=n_mels, fmin=low,
                                       fmax=high, dtype=np.float64)
        ours = mel_filterbank(rate, n_fft, n_mels, low, high).numpy()
        np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-12)


def test_slaney_mel_scale_by_hand() -> None:
    # linear below 1 kHz (3 mels per 200 Hz), then 27 mels per factor 6.4
    hz = torch.tensor([0.0, 200.0, 1000.0, 6400.0], dtype=torch.float64)
    torch.testing.assert_close(hz_to_mel(hz), torch.tensor([0.0, 3.0, 15.0, 42.0],
                                                           dtype=torch.float64))
    torch.testing.assert_close(mel_to_hz(hz_to_mel(hz)), hz)


def test_a_batch_gives_each_clip_its_own_features_and_its_own_floor() -> None:
    settings = LogMelSettings.for_rate(8000)
    silence = torch.zeros(2000, dtype=torch.float64)
    loud = torch.cat([torch.from_numpy(_speech_like(8000, 0.5, seed=1)), silence])
    quiet = 0.001 * torch.cat([torch.from_numpy(_speech_like(8000, 0.5, seed=2)), silence])
    together = log_mel(torch.stack([loud, quiet]), settings)
    torch.testing.assert_close(together[0], log_mel(loud, settings))
    torch.testing.assert_close(together[1], log_mel(quiet, settings))
    # the loud clip's silence is floored 80 dB under its loudest bin; the quiet clip's
    # loudest is so low that its silence stops at the 1e-10 power floor, -100 dB
    assert float(together[0].min()) == pytest.approx(float(together[0].max()) - 80.0)
    assert float(together[1].min()) == pytest.approx(-100.0)
    assert float(together[1].max()) - 80.0 < -100.0


def test_the_encoders_input_is_in_minus_one_to_one_and_ignores_the_gain() -> None:
    settings = LogMelSettings.for_rate(8000)
    y = torch.from_numpy(_speech_like(8000, 0.5))
    x = model_input(log_mel(y, settings), settings.top_db)
    assert float(x.max()) == pytest.approx(1.0) and float(x.min()) >= -1.0 - 1e-9
    # 20 dB quieter is the same input (the top-80-dB floor moves with the loudest bin)
    torch.testing.assert_close(model_input(log_mel(0.1 * y, settings), settings.top_db), x,
                               atol=1e-6, rtol=0)


def test_settings_for_a_rate_and_their_checks() -> None:
    s = LogMelSettings.for_rate(8000)
    assert (s.win_length, s.hop_length, s.n_fft, s.n_mels) == (200, 80, 256, 80)
    assert s.frames(8000) == 101 and s.frames(10 * 8000) == s.frames(s.max_samples)
    with pytest.raises(ValueError, match="f_max"):
        LogMelSettings(sample_rate=8000, n_fft=256, win_length=200, hop_length=80,
                       f_max=6000.0)
    with pytest.raises(ValueError, match="longer than n_fft"):
        LogMelSettings(sample_rate=8000, n_fft=128, win_length=200, hop_length=80)
