"""A detection bundle, loaded: boxes for images in their own pixels, and boxes drawn on them.

:func:`load_detector` rebuilds the detector from the bundle's ``detect`` record (no
download), loads ``model.safetensors`` and runs its :class:`~vitkit.detect.graph.DetectorGraph`
on the variant's runtime: ``torch-fp32`` (and the other built-in torch variants) or an
exported ``onnx-fp32``; decoding (anchors, NMS) is the same Python code for every runtime.

Images are resized to the detector's square input (as in training: bilinear with
antialiasing, aspect not kept) and the boxes scaled back to each image's own width and height.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.v2 import functional as F

from vitkit.bundle import Bundle, BundleSource, load_weights
from vitkit.detect.graph import Detection, DetectorGraph, decode
from vitkit.detect.model import DetectRecord, build_detector
from vitkit.errors import BundleError
from vitkit.predictor.runtimes import Runtime, open_runtime
from vitkit.predictor.variants import find_variant

TASK = "detect"


@dataclass
class BoxPrediction:
    """One detected object: its class, score (0..1) and box ``[x1, y1, x2, y2]`` in the
    image's own pixels."""

    label: str
    score: float
    box: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": round(self.score, 4),
                "box": [round(v, 2) for v in self.box]}


@dataclass
class ImageDetections:
    """The boxes found in one image (``--json`` item of ``vitkit detect predict``)."""

    path: str
    width: int
    height: int
    boxes: list[BoxPrediction] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "width": self.width, "height": self.height,
                "boxes": [b.to_dict() for b in self.boxes]}


def detect_record(bundle: Bundle) -> DetectRecord:
    """The ``detect`` record of a detection bundle; a clear error for any other bundle."""
    if bundle.meta.task != TASK:
        raise BundleError(f"{bundle} is a '{bundle.meta.task}' bundle, not a detector. Give a "
                          "bundle written by `vitkit detect train`.")
    return DetectRecord.from_meta((bundle.meta.model_extra or {}).get("detect"), bundle)


class Detector:
    """A loaded detector: ``detect(images) -> boxes`` per image (module docstring)."""

    def __init__(self, model: torch.nn.Module, record: DetectRecord, runtime: Runtime) -> None:
        self.model = model.eval()
        self.record = record
        self.runtime = runtime
        self.variant = runtime.name
        self.labels = list(record.classes)

    @property
    def size(self) -> int:
        return self.record.size

    @staticmethod
    def prepare(image: Image.Image) -> torch.Tensor:
        """An RGB image as a ``(3, H, W)`` uint8 tensor at its own size (the boxes need it)."""
        return F.pil_to_tensor(image.convert("RGB"))

    def model_input(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(B, 3, S, S)`` float 0..1: each image (uint8, or float 0..1) resized to the
        detector's side ``S`` the way training resized it."""
        side = [self.size, self.size]
        resized = [F.resize(image, side, antialias=True) if tuple(image.shape[-2:]) != tuple(side)
                   else image for image in images]
        return torch.stack([F.to_dtype(image, torch.float32, scale=True) for image in resized])

    @torch.no_grad()
    def raw(self, batch: torch.Tensor) -> list[Detection]:
        """Every detection above the evaluation threshold for a ``(B, 3, S, S)`` batch, boxes
        in its pixels, labels ``0..C-1`` (what mAP is computed from)."""
        outputs = self.runtime.outputs(batch)
        detections = decode(self.model, outputs, (int(batch.shape[-2]), int(batch.shape[-1])))
        offset = self.record.label_offset
        return [{"boxes": d["boxes"].cpu(), "scores": d["scores"].cpu(),
                 "labels": d["labels"].cpu() - offset} for d in detections]

    def detect(self, images: Sequence[torch.Tensor], score_threshold: float | None = None
               ) -> list[list[BoxPrediction]]:
        """Boxes per image, in that image's pixels, best first, with a score of at least
        ``score_threshold`` (default: the bundle's)."""
        if not images:
            return []
        threshold = self.record.score_threshold if score_threshold is None else score_threshold
        found = []
        for image, detection in zip(images, self.raw(self.model_input(images)), strict=True):
            height, width = int(image.shape[-2]), int(image.shape[-1])
            scale = torch.tensor([width / self.size, height / self.size] * 2)
            boxes = detection["boxes"] * scale  # (N, 4) in the image's pixels
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
            keep = detection["scores"] >= threshold
            order = detection["scores"][keep].argsort(descending=True)
            found.append([BoxPrediction(self.labels[int(label)], float(score), box.tolist())
                          for box, score, label in zip(boxes[keep][order],
                                                       detection["scores"][keep][order],
                                                       detection["labels"][keep][order],
                                                       strict=True)])
        return found

    def predict(self, images: Sequence[Image.Image], score_threshold: float | None = None
                ) -> list[list[BoxPrediction]]:
        """:meth:`detect` for PIL images."""
        return self.detect([self.prepare(image) for image in images], score_threshold)


class DetectionRuntime:
    """A detector as one :class:`~vitkit.predictor.runtimes.Runtime`: ``(B, 3, S, S)`` RGB
    0..1 in, every detection out as one ``(N, 7)`` tensor of rows ``[image index, x1, y1,
    x2, y2, score, label]`` (at the input size; labels ``0..C-1``). What ``vitkit bench``
    times: the network on the variant's runtime plus the decoding and NMS a prediction pays.
    :meth:`outputs` gives the network's raw outputs only."""

    def __init__(self, detector: Detector) -> None:
        self.detector = detector
        self.name = detector.runtime.name
        self.runtime = detector.runtime.runtime
        self.precision = detector.runtime.precision

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        rows = [torch.cat([torch.full((len(d["scores"]), 1), float(i)), d["boxes"],
                           d["scores"][:, None], d["labels"][:, None].float()], 1)
                for i, d in enumerate(self.detector.raw(batch))]  # (n_i, 7) each
        return torch.cat(rows) if rows else torch.zeros(0, 7)

    def outputs(self, batch: torch.Tensor) -> list[torch.Tensor]:
        return self.detector.runtime.outputs(batch)


def rebuild_detector(bundle: BundleSource) -> torch.nn.Module:
    """The bundle's torchvision detector with its trained weights, in eval mode, rebuilt from
    its ``detect`` record (nothing is downloaded)."""
    opened = Bundle.open(bundle)
    model, _ = build_detector(detect_record(opened), weights="none")
    load_weights(opened, model)
    return model.eval()


def load_detector(bundle: BundleSource, variant: str | None = None, device: str = "cpu",
                  threads: int | None = None) -> Detector:
    """The detector of a bundle written by ``vitkit detect train`` on ``variant``'s runtime
    (default: the bundle's default variant, torch-fp32 unless one was chosen)."""
    opened = Bundle.open(bundle)
    record = detect_record(opened)
    model = rebuild_detector(opened)
    chosen = find_variant(opened.meta, variant, opened.path)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    graph = DetectorGraph(model).eval()
    runtime = open_runtime(opened.path, chosen, graph if chosen.runtime == "torch" else None,
                           device=device, threads=threads)
    return Detector(model, record, runtime)


# ------------------------------------------------------------------------------ drawing

_PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128))


def draw_boxes(image: Image.Image, boxes: Sequence[BoxPrediction | dict[str, Any]],
               labels: Sequence[str] = ()) -> Image.Image:
    """The image (RGB copy) with each box outlined and captioned ``label score``; a class
    keeps its colour across images when ``labels`` (the bundle's classes) is given."""
    shown = image.convert("RGB")
    draw = ImageDraw.Draw(shown)
    side = min(shown.size)
    width = max(1, round(side / 200))
    font = ImageFont.load_default(size=max(10, round(side / 40)))
    for item in boxes:
        box = item if isinstance(item, dict) else item.to_dict()
        label = str(box["label"])
        index = list(labels).index(label) if label in labels else zlib.crc32(label.encode())
        color = _PALETTE[index % len(_PALETTE)]
        x1, y1, x2, y2 = (float(v) for v in box["box"])
        draw.rectangle((x1, y1, x2, y2), outline=color, width=width)
        caption = f"{label} {float(box['score']):.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), caption, font=font)
        lift = bottom - top + 2 * width
        y_text = y1 - lift if y1 - lift >= 0 else y1  # above the box, or inside at the top
        draw.rectangle((x1, y_text, x1 + right - left + 2 * width, y_text + lift), fill=color)
        draw.text((x1 + width, y_text + width - (top - y1)), caption, fill=(255, 255, 255),
                  font=font)
    return shown
