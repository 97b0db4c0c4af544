"""A segmentation bundle's masks for images, and the pictures made of them.

:class:`SegmentPredictor` loads a bundle written by ``vitkit segment train`` on any runtime
its variants name (the Predictor's runtimes: torch, ONNX Runtime, OpenVINO); it resizes an
image to the training size (the whole image, no crop, as in training), takes the most likely
class per pixel, and brings that mask back to the image's own size with nearest-neighbour
sampling (class indices are never blended).

Masks are written as palette PNGs (:func:`mask_png`): one byte per pixel holding the class
index, with a colour per class so that an image viewer shows them; read back with
``np.asarray(Image.open(f))`` or ``vitkit.data.masks.mask_to_classes``. Index 255 is the
ignore mark, white.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from vitkit.bundle import Bundle, BundleSource, load_weights
from vitkit.data.joint import joint_transform
from vitkit.data.masks import IGNORE_INDEX
from vitkit.data.transforms import Preprocessing
from vitkit.errors import BundleError
from vitkit.predictor.runtimes import Runtime, open_runtime
from vitkit.predictor.variants import Variant, find_variant
from vitkit.segment.model import SegmentRecord, read_record, rebuild_segmenter

# Class colours: background black, then colours that stay apart on photos and for the common
# forms of colour blindness (Okabe-Ito, then Tableau); past these, Pascal VOC's bit pattern.
_COLOURS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178),
    (213, 94, 0), (204, 121, 167), (255, 0, 255), (0, 255, 255), (188, 189, 34),
    (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127), (23, 190, 207),
)
OVERLAY_ALPHA = 0.5  # how much of a class colour covers the image where the class is


def class_colours(n: int) -> list[tuple[int, int, int]]:
    """Colours of classes ``0..n-1`` (class 0, the background, black)."""
    colours = list(_COLOURS[:n])
    for index in range(len(colours), n):  # Pascal VOC's palette: bits of the index spread out
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours.append((r, g, b))
    return colours


def mask_image(mask: np.ndarray, n_classes: int) -> Image.Image:
    """A class-index mask ``(H, W)`` as a palette (``P``) image: the pixel values are the
    class indices, the palette colours them (255, the ignore mark, white)."""
    if mask.ndim != 2:
        raise ValueError(f"a mask is (H, W), got shape {mask.shape}")
    pixels = np.ascontiguousarray(mask, dtype=np.uint8)
    image = Image.frombytes("P", (pixels.shape[1], pixels.shape[0]), pixels.tobytes())
    palette = [0] * (256 * 3)
    for index, colour in enumerate(class_colours(min(n_classes, IGNORE_INDEX))):
        palette[index * 3:index * 3 + 3] = colour
    palette[IGNORE_INDEX * 3:IGNORE_INDEX * 3 + 3] = (255, 255, 255)
    image.putpalette(palette)
    return image


def mask_png(mask: np.ndarray, n_classes: int) -> bytes:
    """:func:`mask_image` as PNG bytes."""
    buffer = io.BytesIO()
    mask_image(mask, n_classes).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def overlay(image: Image.Image, mask: np.ndarray, n_classes: int,
            alpha: float = OVERLAY_ALPHA) -> Image.Image:
    """The image with each non-background class tinted in its colour (RGB, image size)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask {mask.shape} and image {rgb.shape[:2]} differ in size")
    lut = np.zeros((256, 3), dtype=np.float32)
    lut[:n_classes] = class_colours(min(n_classes, 256))
    tinted = (mask > 0) & (mask != IGNORE_INDEX)  # (H, W)
    colour = lut[mask]  # (H, W, 3)
    out = np.where(tinted[..., None], (1 - alpha) * rgb + alpha * colour, rgb)
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8))


def class_shares(mask: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    """Share of the image each class covers, 0..1, rounded to 6 digits."""
    counts = np.bincount(mask.ravel(), minlength=len(labels))[:len(labels)]
    total = max(int(mask.size), 1)
    return {name: round(int(n) / total, 6) for name, n in zip(labels, counts, strict=True)}


def dominant_label(shares: dict[str, float]) -> str:
    """The non-background class covering most of the image, or the background's name when
    the image holds none (ties go to the lower class index)."""
    names = list(shares)
    best = max(names[1:], key=lambda name: shares[name], default=None)
    return best if best is not None and shares[best] > 0 else names[0]


@dataclass
class MaskPrediction:
    """One image's mask.

    Attributes:
        path: The image file (empty for an image given in memory).
        mask: Class index per pixel ``(H, W)`` uint8, at the image's own size.
        labels: The class names.
    """

    path: str
    mask: np.ndarray
    labels: list[str]

    @property
    def shares(self) -> dict[str, float]:
        return class_shares(self.mask, self.labels)

    @property
    def label(self) -> str:
        return dominant_label(self.shares)

    def to_dict(self) -> dict[str, Any]:
        shares = self.shares
        return {"path": self.path, "label": dominant_label(shares), "classes": shares,
                "size": [int(self.mask.shape[1]), int(self.mask.shape[0])]}


class SegmentPredictor:
    """A segmentation bundle on one runtime: ``transform`` an image, ``masks`` of a batch at
    the model's size, ``predict`` masks at the images' own sizes."""

    def __init__(self, bundle: Bundle, record: SegmentRecord, runtime: Runtime,
                 variant: Variant, preprocessing: Preprocessing,
                 model: torch.nn.Module | None = None) -> None:
        self.bundle, self.record, self.runtime = bundle, record, runtime
        self.variant, self.preprocessing, self.model = variant, preprocessing, model
        self.labels = list(bundle.meta.labels)
        self._transform = joint_transform(record.input_size, train=False,
                                          mean=preprocessing.mean, std=preprocessing.std)

    @classmethod
    def load(cls, source: BundleSource, variant: str | None = None, device: str = "cpu",
             threads: int | None = None) -> SegmentPredictor:
        """Loads a segmentation bundle (safetensors weights, no download) on ``variant``.

        Raises:
            BundleError: Not a segmentation bundle, damaged files, or no such variant.
        """
        bundle = Bundle.open(source)
        record = read_record(bundle.meta, bundle)
        try:
            preprocessing = Preprocessing.model_validate(bundle.meta.preprocessing)
        except ValueError as exc:
            raise BundleError(f"{bundle}/vitkit.json: the preprocessing record is damaged "
                              f"({exc}). Restore vitkit.json, or train again.") from exc
        chosen = find_variant(bundle.meta, variant, bundle.path)
        model = None
        if chosen.runtime == "torch":
            model = rebuild_segmenter(record)
            load_weights(bundle, model)
            model.eval()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        runtime = open_runtime(bundle.path, chosen, model, device, threads)
        return cls(bundle, record, runtime, chosen, preprocessing, model)

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the tensors :meth:`transform` makes."""
        return self.record.input_size

    def transform(self, image: Image.Image) -> torch.Tensor:
        """An RGB image as the model's input ``(3, H, W)``: resized whole, normalised."""
        pixels = tv_tensors.Image(TF.pil_to_tensor(image.convert("RGB")))
        out: torch.Tensor = self._transform(pixels)
        return out.as_subclass(torch.Tensor)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` float32 logits on the CPU."""
        return self.runtime(batch)

    def masks(self, batch: torch.Tensor) -> torch.Tensor:
        """The most likely class per pixel at the model's size, ``(B, H, W)`` uint8."""
        return self.logits(batch).argmax(1).to(torch.uint8)

    def predict(self, images: Sequence[Image.Image], paths: Sequence[str | Path] | None = None
                ) -> list[MaskPrediction]:
        """Masks of ``images`` at their own sizes (one batch: chunk a long list)."""
        if not images:
            return []
        small = self.masks(torch.stack([self.transform(image) for image in images]))
        names = [str(p) for p in paths] if paths is not None else [""] * len(images)
        return [MaskPrediction(name, resize_mask(mask.numpy(), image.size), self.labels)
                for name, mask, image in zip(names, small, images, strict=True)]


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A class-index mask resized to ``size`` (width, height) with nearest-neighbour
    sampling."""
    if (mask.shape[1], mask.shape[0]) == tuple(size):
        return mask.astype(np.uint8)
    resized = Image.fromarray(mask.astype(np.uint8)).resize(size, Image.Resampling.NEAREST)
    return np.array(resized, dtype=np.uint8)  # a writable copy (torch.from_numpy warns)
