"""What every anomaly method is: the :class:`AnomalyMethod` interface and the shared
machinery of the methods on backbone feature maps (:class:`DeepMethod`).

Each method turns an image into a tensor (``prepare``), learns from batches of normal images
(``add_normal`` then ``finish_fit``) and scores a batch (``score``: one raw score per image
and a low-resolution map, higher = more anomalous). Its state is a few JSON options and a
dict of tensors, so a bundle stores it without pickle.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import torch
from PIL import Image

from vitkit.anomaly.features import FeatureExtractor
from vitkit.backbones.fold import inference_copy
from vitkit.data import Preprocessing, eval_transform

Progress = Callable[[int, int], None]
"""``progress(done, total)``: hears about a long step of a method."""


Embedding = list[torch.Tensor]
"""What a method computes from a batch of prepared images before it learns or scores: a list
of batch-first tensors (backbone feature maps, patch statistics). Computed once per image, an
embedding can feed several fitted copies of a method (the out-of-fold threshold)."""


def select_images(embedding: Embedding, index: torch.Tensor | Sequence[int]) -> Embedding:
    """The rows of ``embedding`` for the images at ``index`` (positions in the batch)."""
    rows = torch.as_tensor(index, dtype=torch.long)
    return [tensor[rows] for tensor in embedding]


class AnomalyMethod(ABC):
    """One anomaly-detection method: fit on normal images, then score any image.

    Learning and scoring go through an :data:`Embedding` (``embed`` then ``add_embedded`` /
    ``score_embedded``), so one pass over the images can feed the method and its unfitted
    twins (``spawn``) that are fitted on part of the images to score the rest.
    """

    name: ClassVar[str]
    derives_twins: ClassVar[bool] = False  # see twin_without

    @abstractmethod
    def prepare(self, image: Image.Image) -> torch.Tensor:
        """An RGB image as this method's input tensor (always the same shape)."""

    @abstractmethod
    def embed(self, batch: torch.Tensor) -> Embedding:
        """What learning and scoring need from a batch of prepared images."""

    @abstractmethod
    def add_embedded(self, embedding: Embedding) -> None:
        """Learns from the embedding of a batch of normal images."""

    @abstractmethod
    def finish_fit(self, progress: Progress | None = None) -> dict[str, Any]:
        """Ends fitting; returns figures worth recording (e.g. memory-bank sizes).
        ``progress(done, total)`` hears about long steps (PatchCore's coreset selection)."""

    @abstractmethod
    def score_embedded(self, embedding: Embedding) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw scores (B,) and maps (B, h, w) from a batch's embedding."""

    @abstractmethod
    def spawn(self) -> AnomalyMethod:
        """An unfitted twin with the same settings (and the same feature extractor)."""

    @abstractmethod
    def options(self) -> dict[str, Any]:
        """JSON-able settings needed to rebuild the method."""

    @abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]:
        """The fitted state."""

    def add_normal(self, batch: torch.Tensor) -> None:
        """Learns from a batch of prepared normal images."""
        self.add_embedded(self.embed(batch))

    def score(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw scores (B,) and maps (B, h, w) for a batch of prepared images."""
        return self.score_embedded(self.embed(batch))

    def setup(self, sizes: Sequence[tuple[int, int]]) -> None:  # noqa: B027 - optional hook
        """Sees the (width, height) of the normal images before fitting."""

    def fit_state_bytes(self, embedding: Embedding, n_images: int) -> int:
        """About how much memory fitting on ``n_images`` takes, given one batch's embedding
        (decides how many fitted twins fit in memory at once). Default: every image's
        embedding kept until the fit ends."""
        per_image = sum(t[0].numel() * t.element_size() for t in embedding)
        return per_image * n_images

    def twin_without(self, images: Sequence[int]) -> AnomalyMethod | None:
        """After fitting: a fitted twin that never learned ``images`` (positions in the order
        they were added), derived from this method's own fit without fitting again; None
        when the method cannot (then twins are fitted, see :mod:`vitkit.anomaly.folds`)."""
        return None

    @property
    def calibrates(self) -> bool:
        """Whether the score combines parts that normal images put on one scale
        (:meth:`calibrate_parts`)."""
        return False

    def score_parts(self, embedding: Embedding) -> torch.Tensor:
        """(B, P) raw parts of the image score before :meth:`combine_parts`."""
        return self.score_embedded(embedding)[0][:, None]

    def calibrate_parts(self, parts: torch.Tensor) -> dict[str, Any]:  # noqa: ARG002
        """Sees the parts of normal images the method was not fitted on, before the threshold
        is set (a method whose score combines parts puts them on one scale)."""
        return {}

    def combine_parts(self, parts: torch.Tensor) -> torch.Tensor:
        """Image scores (B,) from :meth:`score_parts`."""
        return parts[:, 0]

    def calibrate(self, batches: Iterable[torch.Tensor]) -> dict[str, Any]:
        """:meth:`calibrate_parts` on batches of prepared held-out normal images."""
        if not self.calibrates:
            return {}
        parts = [self.score_parts(self.embed(batch)) for batch in batches]
        if not parts:
            raise RuntimeError(f"{self.name} needs held-out normal images to calibrate")
        return self.calibrate_parts(torch.cat(parts))

    @property
    def map_sigma(self) -> float:
        """Gaussian smoothing of the map in input pixels (the methods' papers use 4)."""
        return 4.0


class DeepMethod(AnomalyMethod):
    """A method on backbone feature maps: shared preprocessing and feature extraction."""

    def __init__(self, extractor: FeatureExtractor, preprocessing: Preprocessing,
                 device: torch.device) -> None:
        self.extractor = extractor.to(device).eval()
        self.preprocessing = preprocessing
        self.device = device
        self._transform = eval_transform(preprocessing)
        # The extractor that runs: batch norms folded, built on first use and again whenever
        # ``extractor`` is replaced (an exported variant runs as it is).
        self._runner: tuple[object, Callable[[torch.Tensor], list[torch.Tensor]], bool] | None \
            = None

    def prepare(self, image: Image.Image) -> torch.Tensor:
        return self._transform(image)

    def _runnable(self, batch: torch.Tensor) -> tuple[Callable[[torch.Tensor], list[torch.Tensor]],
                                                     bool]:
        if self._runner is None or self._runner[0] is not self.extractor:
            if isinstance(self.extractor, torch.nn.Module):
                fast, folded = inference_copy(self.extractor, batch[:1].to(self.device))
            else:
                fast, folded = self.extractor, False
            self._runner = (self.extractor, fast, folded)
        return self._runner[1], self._runner[2]

    @torch.inference_mode()
    def features(self, batch: torch.Tensor) -> list[torch.Tensor]:
        extractor, channels_last = self._runnable(batch)
        batch = batch.to(self.device)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return [m.cpu().contiguous() for m in extractor(batch)]

    def embed(self, batch: torch.Tensor) -> Embedding:
        return self.features(batch)
