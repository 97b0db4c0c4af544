"""Reading one WAV file robustly: PCM samples as a mono float waveform at a chosen rate.

Like :mod:`vitkit.data.images`, everything that makes a file unusable raises
:class:`AudioProblem` with a short reason, so a long run skips the file, reports it and goes
on. The standard library's ``wave`` reads the file (PCM, 8 to 32 bits, any channel count):
no audio dependency is needed to train or serve.
"""

from __future__ import annotations

import io
import math
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitkit.atomic import write_bytes_atomic
from vitkit.data.images import EMPTY_FILE, NOT_A_FILE, NOT_FOUND, TRUNCATED, UNREADABLE

NOT_A_WAV = "not a WAV file"
UNSUPPORTED_WAV = "unsupported WAV encoding"
TOO_SHORT = "too short"
MIN_SECONDS = 0.02
"""Recordings shorter than this are refused: a couple of frames hold no word."""

MAX_SECONDS_READ = 600.0
"""Longer recordings are refused before their samples are read (a 10-minute clip of a
digit is a wrong file, and decoding it would take memory for nothing)."""


class AudioProblem(Exception):
    """Why one audio file is unusable; the file is skipped, the run goes on.

    Attributes:
        reason: Short human-readable reason, e.g. ``"not a WAV file (file does not start
            with RIFF id)"``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Waveform:
    """Mono samples in [-1, 1] at ``sample_rate`` Hz."""

    samples: np.ndarray  # (n,) float32
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


def _problem(kind: str, detail: str = "") -> AudioProblem:
    return AudioProblem(f"{kind} ({detail})" if detail else kind)


def load_wav(path: Path, max_seconds: float | None = None) -> Waveform:
    """Reads a PCM WAV file as mono float samples (channels averaged).

    Args:
        path: The file; its content decides, not its extension.
        max_seconds: Read only the first ``max_seconds`` (the rest is never decoded).

    Raises:
        AudioProblem: Missing, empty, not a WAV file, an encoding other than PCM, truncated,
            or too short.
    """
    path = Path(path)
    if not path.exists():
        raise _problem(NOT_FOUND)
    if not path.is_file():
        raise _problem(NOT_A_FILE)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _problem(UNREADABLE, type(exc).__name__) from None
    return decode_wav(data, max_seconds)


def decode_wav(data: bytes, max_seconds: float | None = None) -> Waveform:
    """:func:`load_wav` for bytes already in memory (an upload), with the same checks.

    Raises:
        AudioProblem: As :func:`load_wav`.
    """
    if not data:
        raise _problem(EMPTY_FILE, "0 bytes")
    try:
        with wave.open(io.BytesIO(data), "rb") as reader:
            channels, width = reader.getnchannels(), reader.getsampwidth()
            rate, frames = reader.getframerate(), reader.getnframes()
            if rate <= 0 or channels <= 0 or width not in (1, 2, 3, 4):
                raise _problem(UNSUPPORTED_WAV, f"{channels} channels, {8 * width}-bit, "
                               f"{rate} Hz")
            if frames > MAX_SECONDS_READ * rate:
                raise _problem(UNSUPPORTED_WAV, f"{frames / rate:.0f} s long; at most "
                               f"{MAX_SECONDS_READ:.0f} s")
            wanted = frames if max_seconds is None else min(frames, math.ceil(max_seconds
                                                                              * rate))
            raw = reader.readframes(wanted)
    except AudioProblem:
        raise
    except wave.Error as exc:
        text = str(exc)
        if "unknown format" in text:  # e.g. 3: IEEE float, 6/7: A-law/mu-law
            raise _problem(UNSUPPORTED_WAV, f"{text}; save it as 16-bit PCM") from None
        if "RIFF" in text or "WAVE" in text:  # the first 12 bytes are not a WAV header
            raise _problem(NOT_A_WAV, text) from None
        raise _problem(TRUNCATED, text) from None  # a header without its fmt or data chunk
    except (EOFError, ValueError, OverflowError) as exc:  # a cut header or chunk
        raise _problem(TRUNCATED, str(exc) or type(exc).__name__) from None
    got = len(raw) // (width * channels)
    if got < wanted:
        raise _problem(TRUNCATED, f"header says {wanted} frames, {got} present")
    samples = _pcm_to_float(raw[:got * width * channels], width).reshape(got, channels)
    mono = samples.mean(axis=1, dtype=np.float64).astype(np.float32)
    if len(mono) < MIN_SECONDS * rate:
        raise _problem(TOO_SHORT, f"{len(mono) / rate * 1000:.0f} ms; at least "
                       f"{MIN_SECONDS * 1000:.0f} ms")
    return Waveform(mono, rate)


def wav_rate(path: Path) -> int | None:
    """The sample rate a WAV file's header declares, or None when it cannot be read."""
    try:
        with wave.open(str(path), "rb") as reader:
            return int(reader.getframerate())
    except (OSError, wave.Error, EOFError, ValueError):
        return None


def _pcm_to_float(raw: bytes, width: int) -> np.ndarray:
    """Little-endian PCM (8-bit unsigned, 16/24/32-bit signed) as floats in [-1, 1)."""
    if width == 1:
        return (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 3:
        bytes_ = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        value = bytes_[:, 0] | (bytes_[:, 1] << 8) | (bytes_[:, 2] << 16)
        value = np.where(value >= 1 << 23, value - (1 << 24), value)
        return value.astype(np.float32) / float(1 << 23)
    dtype = np.int16 if width == 2 else np.int32
    return np.frombuffer(raw, f"<i{width}").astype(np.float32) / float(np.iinfo(dtype).max + 1)


def resample(waveform: Waveform, rate: int) -> Waveform:
    """``waveform`` at ``rate`` Hz (polyphase filtering with scipy; unchanged when equal)."""
    if waveform.sample_rate == rate:
        return waveform
    from scipy.signal import resample_poly

    common = math.gcd(waveform.sample_rate, rate)
    samples = resample_poly(waveform.samples, rate // common, waveform.sample_rate // common)
    return Waveform(samples.astype(np.float32), rate)


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """Mono float samples in [-1, 1] as the bytes of a 16-bit PCM WAV file."""
    pcm = np.clip(np.round(np.asarray(samples, np.float64) * 32767), -32768, 32767)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(sample_rate)
        writer.writeframes(pcm.astype("<i2").tobytes())
    return buffer.getvalue()


def write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    """Writes mono float samples in [-1, 1] as a 16-bit PCM WAV file, atomically."""
    write_bytes_atomic(path, wav_bytes(samples, sample_rate))
