"""Log-mel spectrograms on ``torch.stft`` and a Slaney mel filterbank (pure tensor math).

torchaudio has no wheel for the torch vitkit runs on, so the features are computed here. They
follow librosa's defaults — ``librosa.feature.melspectrogram`` (periodic Hann window, centred
frames padded with zeros, power 2, ``librosa.filters.mel`` with the Slaney mel scale and Slaney
area normalisation) and ``librosa.power_to_db`` (``ref=1``, ``amin=1e-10``, ``top_db=80``) —
and ``tests/data/test_logmel.py`` holds them to librosa's values: at most 1e-6 dB apart in
float64, 0.01 dB in float32 (bins above the ``top_db`` floor).

:class:`LogMelSettings` is what a fusion bundle records, so training, ``eval``, ``predict``
and ``serve`` compute the same features.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_N_MELS = 80
AMIN = 1e-10  # librosa.power_to_db's floor on the power before the log


class LogMelSettings(BaseModel):
    """How a waveform becomes log-mel frames (a fusion bundle's ``audio`` record).

    Attributes:
        sample_rate: Every recording is resampled to this rate (Hz) first.
        n_fft: FFT size in samples (a power of two at or above ``win_length``).
        win_length: Hann window length in samples.
        hop_length: Samples between frames.
        n_mels: Mel bands.
        f_min: Lowest filter edge (Hz).
        f_max: Highest filter edge (Hz); None: half the sample rate.
        top_db: Bins more than this far below the clip's loudest are raised to that floor.
        max_seconds: Longer recordings keep their first ``max_seconds``.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    sample_rate: int = Field(ge=1000, le=192_000)
    n_fft: int = Field(ge=16, le=8192)
    win_length: int = Field(ge=16, le=8192)
    hop_length: int = Field(ge=1)
    n_mels: int = Field(DEFAULT_N_MELS, ge=8, le=256)
    f_min: float = Field(0.0, ge=0)
    f_max: float | None = None
    top_db: float = Field(80.0, gt=0)
    max_seconds: float = Field(2.0, gt=0, le=60)

    @model_validator(mode="after")
    def _consistent(self) -> LogMelSettings:
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} is longer than n_fft {self.n_fft}")
        top = self.top_frequency
        if not self.f_min < top <= self.sample_rate / 2:
            raise ValueError(f"need f_min < f_max <= sample_rate / 2, got f_min {self.f_min}, "
                             f"f_max {top}, sample rate {self.sample_rate}")
        return self

    @property
    def top_frequency(self) -> float:
        return self.f_max if self.f_max is not None else self.sample_rate / 2

    @property
    def max_samples(self) -> int:
        return int(round(self.max_seconds * self.sample_rate))

    @classmethod
    def for_rate(cls, sample_rate: int, n_mels: int = DEFAULT_N_MELS, window_ms: float = 25.0,
                 hop_ms: float = 10.0, max_seconds: float = 2.0) -> LogMelSettings:
        """The usual speech framing at ``sample_rate``: 25 ms windows every 10 ms, the FFT
        the next power of two (8 kHz: 200-sample windows, hop 80, n_fft 256)."""
        win = max(16, int(round(sample_rate * window_ms / 1000)))
        hop = max(1, int(round(sample_rate * hop_ms / 1000)))
        return cls(sample_rate=sample_rate, n_fft=1 << (win - 1).bit_length(), win_length=win,
                   hop_length=hop, n_mels=n_mels, max_seconds=max_seconds)

    def frames(self, samples: int) -> int:
        """Frames of a clip of ``samples`` samples (centred framing)."""
        return 1 + min(samples, self.max_samples) // self.hop_length


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """Slaney's mel scale (librosa's default, ``htk=False``): linear below 1 kHz, then
    logarithmic (27 mels per factor 6.4)."""
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel = 1000.0, 1000.0 / f_sp
    logstep = math.log(6.4) / 27.0
    linear = hz / f_sp
    log = min_log_mel + torch.log(torch.clamp(hz, min=min_log_hz) / min_log_hz) / logstep
    return torch.where(hz >= min_log_hz, log, linear)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`hz_to_mel`."""
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel = 1000.0, 1000.0 / f_sp
    logstep = math.log(6.4) / 27.0
    linear = mel * f_sp
    log = min_log_hz * torch.exp(logstep * (mel - min_log_mel))
    return torch.where(mel >= min_log_mel, log, linear)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None, dtype: torch.dtype = torch.float64
                   ) -> torch.Tensor:
    """Triangular mel filters, Slaney-normalised (each filter's area is constant), as
    ``librosa.filters.mel`` makes them.

    Returns:
        ``(n_mels, n_fft // 2 + 1)`` weights over the FFT bins.
    """
    top = f_max if f_max is not None else sample_rate / 2
    fft_hz = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges_mel = torch.linspace(float(hz_to_mel(torch.tensor(f_min, dtype=torch.float64))),
                               float(hz_to_mel(torch.tensor(top, dtype=torch.float64))),
                               n_mels + 2, dtype=torch.float64)
    edges = mel_to_hz(edges_mel)  # (n_mels + 2,) filter edges in Hz
    widths = edges[1:] - edges[:-1]
    ramps = edges[:, None] - fft_hz[None, :]  # (n_mels + 2, bins)
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = torch.clamp(torch.minimum(rising, falling), min=0)
    weights = weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.to(dtype)


def mel_power(waveform: torch.Tensor, settings: LogMelSettings,
              filters: torch.Tensor | None = None) -> torch.Tensor:
    """The mel power spectrogram of ``(..., samples)`` -> ``(..., n_mels, frames)``.

    ``filters`` (from :func:`mel_filterbank`) may be passed in to build them once.
    """
    if filters is None:
        filters = mel_filterbank(settings.sample_rate, settings.n_fft, settings.n_mels,
                                 settings.f_min, settings.f_max, waveform.dtype)
    window = torch.hann_window(settings.win_length, periodic=True, dtype=waveform.dtype,
                               device=waveform.device)
    shape = waveform.shape
    spectrum = torch.stft(waveform.reshape(-1, shape[-1]), settings.n_fft,
                          hop_length=settings.hop_length, win_length=settings.win_length,
                          window=window, center=True, pad_mode="constant", return_complex=True)
    power = spectrum.abs() ** 2  # (N, bins, frames)
    mel = torch.matmul(filters.to(power.dtype), power)
    return mel.reshape(*shape[:-1], settings.n_mels, mel.shape[-1])


def power_to_db(power: torch.Tensor, top_db: float | None = 80.0) -> torch.Tensor:
    """``10 log10(max(power, 1e-10))``; with ``top_db``, each clip's bins (the last two
    dimensions) are floored at its loudest minus ``top_db``, as ``librosa.power_to_db``."""
    db = 10.0 * torch.log10(torch.clamp(power, min=AMIN))
    if top_db is None:
        return db
    loudest = db.amax(dim=(-2, -1), keepdim=True)
    return torch.maximum(db, loudest - top_db)


def log_mel(waveform: torch.Tensor, settings: LogMelSettings,
            filters: torch.Tensor | None = None) -> torch.Tensor:
    """Log-mel frames in dB (``ref=1``): ``(..., samples)`` -> ``(..., n_mels, frames)``."""
    return power_to_db(mel_power(waveform, settings, filters), settings.top_db)


def model_input(db: torch.Tensor, top_db: float) -> torch.Tensor:
    """Log-mel dB as the audio encoder reads it: relative to the clip's loudest bin (a louder
    or quieter microphone gives the same input) and scaled from ``[-top_db, 0]`` to
    ``[-1, 1]``."""
    loudest = db.amax(dim=(-2, -1), keepdim=True)
    return (db - loudest) * (2.0 / top_db) + 1.0
