"""Reading WAV files: PCM of every width as floats, channels averaged, and every way a file
can be unusable named, so a long run skips it and reports it like a bad image."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from vitkit.data.audio import (
    AudioProblem,
    Waveform,
    decode_wav,
    load_wav,
    resample,
    wav_bytes,
    wav_rate,
    write_wav,
)
from vitkit.data.paired import PairedRow, validate_paired


def _pcm(frames: bytes, width: int, channels: int = 1, rate: int = 8000) -> bytes:
    import io

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(frames)
    return buffer.getvalue()


def _float_wav(samples: np.ndarray, rate: int = 8000) -> bytes:
    """An IEEE-float WAV (format tag 3), which the standard library does not read."""
    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + \
        struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_pcm_of_each_width_reads_as_floats_by_hand() -> None:
    n = 400  # 50 ms at 8 kHz
    sixteen = _pcm(struct.pack(f"<{n}h", *([16384, -32768] * (n // 2))), 2)
    np.testing.assert_array_equal(decode_wav(sixteen).samples[:2], [0.5, -1.0])
    eight = _pcm(bytes([192, 64] * (n // 2)), 1)  # unsigned, 128 is zero
    np.testing.assert_array_equal(decode_wav(eight).samples[:2], [0.5, -0.5])
    # 24-bit little endian: 0x400000 = +0.5, 0xC00000 = -0.5
    twenty_four = _pcm(bytes([0, 0, 0x40, 0, 0, 0xC0] * (n // 2)), 3)
    np.testing.assert_array_equal(decode_wav(twenty_four).samples[:2], [0.5, -0.5])
    stereo = _pcm(struct.pack(f"<{2 * n}h", *([16384, 0] * n)), 2, channels=2)
    waveform = decode_wav(stereo)
    assert waveform.sample_rate == 8000 and len(waveform.samples) == n
    np.testing.assert_array_equal(waveform.samples[:2], [0.25, 0.25])  # channels averaged


def test_write_and_read_round_trip_and_max_seconds(tmp_path: Path) -> None:
    samples = np.sin(np.linspace(0, 200, 8000)).astype(np.float32) * 0.5
    write_wav(tmp_path / "a.wav", samples, 8000)
    back = load_wav(tmp_path / "a.wav")
    assert np.abs(back.samples - samples).max() < 1 / 32767
    assert len(load_wav(tmp_path / "a.wav", max_seconds=0.25).samples) == 2000
    assert wav_rate(tmp_path / "a.wav") == 8000 and wav_rate(tmp_path / "nope.wav") is None


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty file"),
    (b"hello, this is text and not a recording" * 4, "not a WAV file"),
    (b"RIFF\x10\x00\x00\x00WAVE", "truncated or corrupt"),
    ("cut", "truncated or corrupt"),
    ("float", "unsupported WAV encoding"),
    ("short", "too short"),
])
def test_every_unusable_file_has_a_reason(data: bytes | str, reason: str) -> None:
    good = wav_bytes(np.zeros(4000), 8000)
    content = {"cut": good[:len(good) // 2], "float": _float_wav(np.zeros(800)),
               "short": wav_bytes(np.zeros(40), 8000)}.get(data, data) \
        if isinstance(data, str) else data
    with pytest.raises(AudioProblem) as problem:
        decode_wav(content)  # type: ignore[arg-type]
    assert problem.value.reason.startswith(reason)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(AudioProblem, match="file not found"):
        load_wav(tmp_path / "missing.wav")
    with pytest.raises(AudioProblem, match="not a regular file"):
        load_wav(tmp_path)


def test_resampling_keeps_the_pitch() -> None:
    rate = 8000
    tone = np.sin(2 * np.pi * 440 * np.arange(rate) / rate).astype(np.float32)
    up = resample(Waveform(tone, rate), 16000)
    assert up.sample_rate == 16000 and len(up.samples) == 2 * rate
    spectrum = np.abs(np.fft.rfft(up.samples))
    assert np.argmax(spectrum) * 16000 / len(up.samples) == pytest.approx(440, abs=1)
    assert resample(up, 16000) is up


def test_a_corrupt_wav_skips_its_row_and_is_reported(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("L", (8, 8), 128).save(tmp_path / "a.png")
    write_wav(tmp_path / "good.wav", np.zeros(2000), 8000)
    (tmp_path / "bad.wav").write_bytes(b"RIFF but then nothing useful at all")
    rows = [PairedRow(tmp_path / "a.png", tmp_path / "good.wav", "x"),
            PairedRow(tmp_path / "a.png", tmp_path / "bad.wav", "y", "val", line=3),
            PairedRow(None, tmp_path / "good.wav", "z")]
    report = validate_paired(rows)
    assert [r.label for r in report.usable] == ["x", "z"]
    (skipped,) = report.skipped
    assert skipped.path == tmp_path / "bad.wav" and skipped.label == "y"
    assert skipped.reason == "audio: not a WAV file (not a WAVE file)"
    assert report.summary() == "2 usable rows, 1 skipped (1 audio: not a WAV file)"
    # measuring the images alone never opens the recordings
    assert len(validate_paired(rows, ("image",)).usable) == 3
