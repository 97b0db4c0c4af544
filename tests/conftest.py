"""Shared fixtures: small generated image folders that a tiny model can learn in a few epochs.

Every class has its own colour and stripe pattern plus per-pixel noise, so the classes are
separable but no two images are identical. Nothing here touches the network.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitkit.classify.config import TrainConfig
from vitkit.workflows.train import run_training

# Never reach the Hugging Face hub from tests, even when a developer forgets the variable.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CLASS_STYLES: dict[str, tuple[tuple[int, int, int], str]] = {
    "red": ((215, 45, 40), "horizontal"),
    "green": ((40, 190, 70), "vertical"),
    "blue": ((45, 70, 215), "checker"),
    "yellow": ((220, 210, 40), "plain"),
}


def class_image(label: str, index: int, size: int = 48, seed: int = 0) -> Image.Image:
    """One RGB image of ``label``: its colour, its stripe pattern, and seeded noise."""
    colour, pattern = CLASS_STYLES[label]
    rng = np.random.default_rng([seed, index, sum(map(ord, label))])
    y, x = np.mgrid[0:size, 0:size]
    if pattern == "horizontal":
        mask = (y // 6) % 2 == 0
    elif pattern == "vertical":
        mask = (x // 6) % 2 == 0
    elif pattern == "checker":
        mask = ((x // 8) + (y // 8)) % 2 == 0
    else:
        mask = np.ones_like(x, dtype=bool)
    pixels = np.where(mask[..., None], np.array(colour, np.float32), 0.6 * np.array(colour))
    pixels = pixels + rng.normal(0.0, 18.0, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_image_folder(
    root: Path,
    classes: Sequence[str] = ("red", "green", "blue"),
    per_class: int = 12,
    size: int = 48,
    seed: int = 0,
) -> Path:
    """Writes ``root/<class>/<class>_<i>.png`` and returns ``root``."""
    for label in classes:
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            class_image(label, i, size, seed).save(folder / f"{label}_{i:03d}.png")
    return root


def write_broken_images(folder: Path) -> list[Path]:
    """Files that no decoder can use: zero bytes, text named .jpg, a truncated JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    empty = folder / "empty.jpg"
    empty.write_bytes(b"")
    text = folder / "notes.jpg"
    text.write_text("this is a text file, not a JPEG\n")
    truncated = folder / "truncated.jpg"
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)
    Image.fromarray(noise).save(truncated, format="JPEG", quality=95)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    return [empty, text, truncated]


def write_odd_images(folder: Path) -> list[Path]:
    """Unusual but valid files: CMYK JPEG, 16-bit grayscale PNG, palette PNG with transparency."""
    folder.mkdir(parents=True, exist_ok=True)
    cmyk = folder / "cmyk.jpg"
    Image.new("CMYK", (48, 48), (0, 200, 200, 20)).save(cmyk, format="JPEG")
    gray16 = folder / "gray16.png"
    ramp = np.linspace(0, 65535, 48 * 48).round().astype(np.uint16).reshape(48, 48)
    Image.fromarray(ramp).save(gray16, format="PNG")
    palette = folder / "palette.png"
    im = Image.new("P", (48, 48), 0)
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    im.paste(1, (24, 0, 48, 48))
    im.save(palette, format="PNG", transparency=0)
    return [cmyk, gray16, palette]


@pytest.fixture(scope="session")
def tiny_image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 12 images of 48x48 px (read-only: copy it before changing anything)."""
    return make_image_folder(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(scope="session")
def two_class_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 classes x 8 images, the smallest data a run accepts comfortably (read-only)."""
    return make_image_folder(tmp_path_factory.mktemp("two") / "data", ("red", "blue"), 8)


@pytest.fixture(scope="session")
def tiny_hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local Hugging Face ViT folder (32 px input, 3 labels) as `save_pretrained` writes it."""
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, num_labels=3,
    )
    folder = tmp_path_factory.mktemp("hf") / "tiny-vit"
    transformers.ViTForImageClassification(config).save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


class ImageGen:
    """The generators above, as a fixture for tests in other folders."""

    folder = staticmethod(make_image_folder)
    broken = staticmethod(write_broken_images)
    odd = staticmethod(write_odd_images)
    image = staticmethod(class_image)


@pytest.fixture(scope="session")
def imagegen() -> type[ImageGen]:
    return ImageGen


@pytest.fixture(scope="session")
def trained_bundles(tiny_image_folder: Path, tmp_path_factory: pytest.TempPathFactory
                    ) -> dict[str, Path]:
    """``{"cnn": bundle, "vit": bundle}``: test_resnet and test_vit, 2 epochs on the tiny
    3-class folder (read-only: copy one with ``fresh_bundle`` before adding variants)."""
    root = tmp_path_factory.mktemp("trained-bundles")
    bundles = {}
    for family, model in (("cnn", "test_resnet"), ("vit", "test_vit")):
        # Pinned to the three-stage schedule these bundles were always made with: tests of
        # calibration, OOD and compression want a model that is good, not perfect.
        config = TrainConfig(data=str(tiny_image_folder), model=model, weights="none",
                             epochs=2, batch_size=8, out=str(root / family), ema=None,
                             stages={"head": {"share": 0.3}, "top": {"share": 0.3},
                                     "full": {"share": 0.4, "lr": 5e-4,
                                              "layer_decay": 0.75}})
        result = run_training(config, progress=False)
        bundles[family] = Path(result.bundle)
    return bundles


@pytest.fixture
def fresh_bundle(trained_bundles: dict[str, Path], tmp_path: Path) -> Callable[[str], Path]:
    """A private copy of a trained bundle (``"cnn"`` or ``"vit"``) that a test may change."""

    def copy(family: str) -> Path:
        target = tmp_path / f"{family}-bundle"
        shutil.copytree(trained_bundles[family], target)
        return target

    return copy
