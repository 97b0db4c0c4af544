"""Tiny image + audio data made on the spot: per class a tone of its own pitch and an image
with a bright bar in its own place, so a few epochs learn either input alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.data.audio import write_wav

RATE = 8000
PITCHES = (300.0, 800.0, 1800.0)  # Hz, one per class


def tone(pitch: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    envelope = np.minimum(1.0, np.minimum(t, t[-1] - t) * 20)  # 50 ms fades
    return (0.4 * np.sin(2 * np.pi * pitch * t) * envelope
            + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def bar_image(index: int, rng: np.random.Generator, size: int = 16) -> Image.Image:
    pixels = rng.integers(0, 60, (size, size), dtype=np.uint8)
    rows = slice(index * size // 3, (index + 1) * size // 3)
    pixels[rows, :] = 220
    return Image.fromarray(pixels, mode="L")


def write_paired_data(folder: Path, per_class: int = 8, seed: int = 0,
                      splits: bool = True) -> Path:
    """``folder/pairs.csv`` with images/ and audio/ beside it; each class's last quarter is
    test, the quarter before val (when ``splits``)."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "audio").mkdir(exist_ok=True)
    lines = ["image,audio,label" + (",split" if splits else "")]
    for index, pitch in enumerate(PITCHES):
        label = f"c{index}"
        for i in range(per_class):
            image, audio = f"images/{label}_{i}.png", f"audio/{label}_{i}.wav"
            bar_image(index, rng).save(folder / image)
            write_wav(folder / audio, tone(pitch, rng.uniform(0.25, 0.6), rng), RATE)
            split = "test" if i >= per_class * 3 // 4 else (
                "val" if i >= per_class // 2 else "train")
            lines.append(f"{image},{audio},{label}" + (f",{split}" if splits else ""))
    (folder / "pairs.csv").write_text("\n".join(lines) + "\n")
    return folder / "pairs.csv"


@pytest.fixture(scope="session")
def fusion_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained image + audio bundle (test_resnet, random weights) for serving and
    loading tests: what it answers is arbitrary, its shapes and keys are not."""
    from vitkit.bundle import save_bundle
    from vitkit.data.logmel import LogMelSettings
    from vitkit.fusion.model import build_fusion, bundle_meta

    torch.manual_seed(0)
    labels = [f"c{i}" for i in range(len(PITCHES))]
    model, record, spec, preprocessing = build_fusion(
        "test_resnet", "none", labels, LogMelSettings.for_rate(RATE), 32, audio_width=32,
        audio_layers=1, audio_heads=2, dim=16)
    return save_bundle(tmp_path_factory.mktemp("fusion") / "bundle", model,
                       bundle_meta(record, spec, labels, preprocessing))
