"""ImageDataset and the seeded data loader."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

import vitkit.data
from vitkit.data.dataset import ImageDataset, make_loader
from vitkit.data.layouts import scan
from vitkit.data.transforms import Preprocessing, eval_transform
from vitkit.errors import DataError


class _Indices(torch.utils.data.Dataset):
    """Item i is (i, a random draw from Python's generator), to observe order and seeding."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, i: int) -> tuple[int, float]:
        return i, random.random()


def _order(loader) -> list[int]:
    return [int(i) for batch, _ in loader for i in batch]


def test_dataset_items(tmp_path, images):
    images.exif_rotated(tmp_path / "cat" / "r.jpg")
    images.gray16(tmp_path / "dog" / "d.png")
    data = scan(tmp_path)
    pre = Preprocessing(input_size=(32, 48), mean=(0.5,) * 3, std=(0.5,) * 3)

    dataset = ImageDataset(data.samples, {"cat": 0, "dog": 1}, eval_transform(pre))

    assert len(dataset) == 2 and dataset.targets == [0, 1]
    tensor, label = dataset[1]
    assert tensor.shape == (3, 32, 48) and label == 1


def test_dataset_unknown_label(tmp_path, images):
    images.class_tree(tmp_path, {"cat": 1, "bird": 1})
    with pytest.raises(DataError, match="unknown class\\(es\\) 'bird'"):
        ImageDataset(scan(tmp_path).samples, {"cat": 0, "dog": 1}, lambda im: im)


def test_dataset_file_broken_after_validation(tmp_path, images):
    images.class_tree(tmp_path, {"cat": 1, "dog": 1})
    data = scan(tmp_path)
    dataset = ImageDataset(data.samples, {"cat": 0, "dog": 1}, lambda im: im)
    data.samples[0].path.write_bytes(b"")
    with pytest.raises(DataError, match="became unusable during the run \\(empty file"):
        dataset[0]


def test_loader_order_depends_only_on_seed():
    random.random()  # global state must not matter
    first = _order(make_loader(_Indices(), 5, shuffle=True, seed=3))
    random.seed(999)
    torch.manual_seed(999)
    again = _order(make_loader(_Indices(), 5, shuffle=True, seed=3))
    other = _order(make_loader(_Indices(), 5, shuffle=True, seed=4))

    assert first == again
    assert sorted(first) == list(range(24))
    assert other != first


def test_loader_without_shuffle_and_drop_last():
    loader = make_loader(_Indices(), 5, shuffle=False, seed=0, drop_last=True)
    assert _order(loader) == list(range(20))
    assert loader.pin_memory is False and loader.persistent_workers is False


def test_loader_workers_are_seeded_deterministically():
    def run(seed: int) -> list[tuple[int, float]]:
        loader = make_loader(_Indices(), 4, shuffle=True, seed=seed, num_workers=2)
        return [(int(i), float(r)) for batch, rand in loader for i, r in zip(batch, rand,
                                                                              strict=True)]

    first = run(11)
    assert first == run(11)
    assert first != run(12)
    assert len({r for _, r in first}) == 24  # workers do not share one random stream


def test_package_reexports():
    for name in vitkit.data.__all__:
        assert getattr(vitkit.data, name) is not None
    assert vitkit.data.scan is scan
    assert isinstance(vitkit.data.DEFAULT_MAX_PIXELS, int)
    with pytest.raises(AttributeError):
        vitkit.data.nope  # noqa: B018
    assert Path(vitkit.data.__file__).parent.name == "data"
