"""Preprocessing / Augmentation settings and the timm transforms built from them."""

from __future__ import annotations

import pydantic
import pytest
import timm
import torch
from PIL import Image

from vitkit.data.transforms import Augmentation, Preprocessing, eval_transform, train_transform
from vitkit.errors import ConfigError


@pytest.fixture
def photo() -> Image.Image:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (187, 301, 3), dtype=torch.uint8, generator=generator)
    return Image.fromarray(pixels.numpy())


@pytest.mark.parametrize("model_name", ["vit_tiny_patch16_224", "resnet18", "convnext_atto"])
def test_eval_transform_matches_timm(model_name, photo):
    model = timm.create_model(model_name, pretrained=False, num_classes=2)
    cfg = timm.data.resolve_data_config(model=model)
    expected = timm.data.create_transform(**cfg)(photo)

    pre = Preprocessing.from_timm_config(cfg)
    actual = eval_transform(pre)(photo)

    assert pre.input_size == tuple(cfg["input_size"][1:])
    assert actual.shape == expected.shape
    assert torch.equal(actual, expected)


def test_preprocessing_json_round_trip():
    cfg = {"input_size": (3, 256, 192), "interpolation": "bilinear", "mean": (0.1, 0.2, 0.3),
           "std": (0.4, 0.5, 0.6), "crop_pct": 0.95, "crop_mode": "squash"}
    pre = Preprocessing.from_timm_config(cfg)
    assert Preprocessing.model_validate_json(pre.model_dump_json()) == pre
    assert pre.input_size == (256, 192)


def test_preprocessing_defaults_for_missing_keys():
    pre = Preprocessing.from_timm_config(
        {"input_size": (3, 224, 224), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": None}
    )
    assert (pre.interpolation, pre.crop_pct, pre.crop_mode) == ("bicubic", 0.875, "center")


@pytest.mark.parametrize(
    "aug",
    [
        Augmentation(),
        Augmentation(auto_augment=None, color_jitter=None, vflip=0.5, re_prob=0.25),
        Augmentation(auto_augment="augmix-m5", scale=(0.5, 1.0)),
    ],
)
def test_train_transform_output(aug, photo):
    pre = Preprocessing(input_size=(96, 128), mean=(0.5,) * 3, std=(0.5,) * 3)
    out = train_transform(pre, aug)(photo)
    assert out.shape == (3, 96, 128) and out.dtype == torch.float32


def test_train_transform_passes_settings_to_timm():
    pre = Preprocessing(input_size=(64, 64), mean=(0.5,) * 3, std=(0.5,) * 3)
    text = repr(train_transform(pre, Augmentation(hflip=0.0, vflip=0.3, scale=(0.5, 1.0),
                                                  auto_augment=None, color_jitter=0.2)))
    assert "RandomHorizontalFlip" not in text
    assert "RandomVerticalFlip(p=0.3)" in text
    assert "scale=(0.5, 1.0)" in text
    assert "ColorJitter" in text


def test_augmentation_rejects_unknown_fields():
    with pytest.raises(pydantic.ValidationError):
        Augmentation(mixup=0.2)


def test_bad_auto_augment_is_a_config_error():
    pre = Preprocessing(input_size=(64, 64), mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(ConfigError, match="auto_augment 'bogus'"):
        train_transform(pre, Augmentation(auto_augment="bogus"))
