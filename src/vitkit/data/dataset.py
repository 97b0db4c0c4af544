"""A torch dataset over validated samples, and a reproducible data loader."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from vitkit.data.images import DEFAULT_MAX_PIXELS, ImageProblem
from vitkit.data.intensity import IntensitySpec, load_image
from vitkit.data.layouts import Sample
from vitkit.errors import DataError


class ImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """Images loaded with :func:`~vitkit.data.intensity.load_image`, transformed, with label
    index.

    Args:
        samples: The samples, normally the usable ones from validation.
        class_to_idx: Class name -> label index.
        transform: Turns an RGB image into a tensor (see :mod:`vitkit.data.transforms`).
        max_pixels: Largest accepted width * height.
        intensity: Read the images through this spec (windows, CLAHE; DICOM included).

    Raises:
        DataError: A sample's label is not in ``class_to_idx``.
    """

    def __init__(self, samples: list[Sample], class_to_idx: dict[str, int],
                 transform: Callable[[Image.Image], torch.Tensor],
                 max_pixels: int = DEFAULT_MAX_PIXELS,
                 intensity: IntensitySpec | None = None) -> None:
        unknown = sorted({s.label for s in samples} - class_to_idx.keys())
        if unknown:
            raise DataError(
                f"images are labelled with unknown class(es) {', '.join(map(repr, unknown))}; "
                f"the known classes are {', '.join(map(repr, class_to_idx))}. Use data with "
                "the same class names as the model, or retrain with these classes."
            )
        self.samples = list(samples)
        self.class_to_idx = dict(class_to_idx)
        self.transform = transform
        self.max_pixels = max_pixels
        self.intensity = intensity
        self.targets = [class_to_idx[s.label] for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[i]
        try:
            image, _ = load_image(sample.path, self.max_pixels, self.intensity)
        except ImageProblem as problem:
            # Validation accepted this file, so it changed since; stop rather than train on
            # a silently different data set.
            raise DataError(f"{sample.path} became unusable during the run ({problem.reason}). "
                            "Restore or remove the file and run again.") from problem
        return self.transform(image), self.targets[i]


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; the augmentations also draw from
    # Python's and NumPy's generators, which would otherwise be forked copies of the parent's.
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int,
                num_workers: int = 0, drop_last: bool = False) -> DataLoader:
    """A data loader whose order and worker seeds depend only on ``seed``.

    The training engine passes ``seed + epoch`` so that a resumed run replays the same order.
    With ``num_workers=0`` the augmentations run in the calling process and draw from its global
    random state, which the caller seeds.

    Args:
        dataset: The dataset.
        batch_size: Samples per batch.
        shuffle: Shuffle the order (with a generator seeded by ``seed``).
        seed: Seeds the shuffle order and the worker processes.
        num_workers: Worker processes; 0 loads in the calling process.
        drop_last: Drop the last incomplete batch.
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        persistent_workers=False,
        pin_memory=False,
    )
