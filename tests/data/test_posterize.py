"""The timm Posterize fix is applied where the training transform is built, and nowhere else."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image
from timm.data import auto_augment as timm_auto_augment

from vitkit.data.transforms import Augmentation, Preprocessing, train_transform


def _augment_ops(transform: object) -> list[object]:
    ops: list[object] = []
    for step in transform.transforms:  # type: ignore[attr-defined]
        ops.extend(getattr(step, "ops", []))
        for sub_policy in getattr(step, "policy", []):
            ops.extend(sub_policy)
    return ops


@pytest.mark.parametrize("policy", ["rand-m9-mstd0.5-inc1", "rand-m10-inc0", "v0",
                                    "augmix-m5"])
def test_the_training_transform_posterizes_with_at_least_one_bit(policy: str) -> None:
    transform = train_transform(Preprocessing(input_size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3),
                                Augmentation(auto_augment=policy))
    posterize = [op for op in _augment_ops(transform) if "Posterize" in op.name]  # type: ignore[attr-defined]
    if policy.startswith("rand") or policy == "v0":
        assert posterize, "the policy has Posterize steps: the test must see them"
    for op in posterize:
        assert op.aug_fn is not timm_auto_augment.posterize  # type: ignore[attr-defined]
        # 0 bits: Pillow >= 11 raises ValueError; the fixed step keeps 1 bit instead.
        image = Image.new("RGB", (8, 8), (200, 100, 50))
        assert op.aug_fn(image, 0).getpixel((0, 0)) == (128, 0, 0)  # type: ignore[attr-defined]
    assert timm_auto_augment.NAME_TO_OP["Posterize"] is timm_auto_augment.posterize


def test_importing_vitkit_leaves_timm_as_it_is() -> None:
    """timm's op table is untouched by ``import vitkit`` (a fresh process: no test before
    this one can hide a patch applied at import)."""
    code = ("import vitkit, vitkit.data.transforms, vitkit.classify.engine\n"
            "from timm.data import auto_augment as a\n"
            "assert all(a.NAME_TO_OP[n] is a.posterize for n in "
            "('Posterize', 'PosterizeIncreasing', 'PosterizeOriginal'))\n")
    subprocess.run([sys.executable, "-c", code], check=True)
