"""The part of a detector that exports, and the decoding that stays in Python.

A torchvision detector's forward ends in data-dependent steps: top-k per level, a score
threshold, batched NMS, and for Faster R-CNN the region proposals and RoI pooling. Exported
whole, those become graphs whose shapes depend on the image's content. So the graph stops
before them and every runtime (PyTorch, ONNX Runtime, OpenVINO) runs the same
:class:`DetectorGraph`; :func:`decode` then finishes with torchvision's own code on its outputs:

- FCOS and RetinaNet: the graph is normalisation, backbone, FPN and the heads' convolutions;
  it returns the raw head maps per FPN level (for FCOS ``cls (B, A*K, h, w)``,
  ``box (B, A*4, h, w)``, ``ctr (B, A, h, w)``; RetinaNet the first two). Decoding makes the
  anchors from the maps' grids (any input size works) and runs ``postprocess_detections``.
- Faster R-CNN: the graph is normalisation, backbone and FPN (most of the arithmetic); the
  region proposal network and the box head run in PyTorch on its feature maps.

The graph's input is the image resized to the detector's size, RGB float ``0..1``
``(B, 3, H, W)``; boxes come out in that image's pixels. Given images already at the model's
size (a multiple of 32), the graph plus decoding is exactly the torchvision model's eval
forward: the model's own resize is then the identity and nothing is padded.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.image_list import ImageList

Detection = dict[str, torch.Tensor]  # {"boxes" (N, 4) XYXY, "scores" (N,), "labels" (N,)}


def arch_of(model: Any) -> str:
    if isinstance(model, FCOS):
        return "fcos"
    if isinstance(model, RetinaNet):
        return "retinanet"
    if isinstance(model, FasterRCNN):
        return "fasterrcnn"
    raise TypeError(f"not a torchvision FCOS, RetinaNet or Faster R-CNN: {type(model).__name__}")


class DetectorGraph(nn.Module):
    """``images (B, 3, H, W) 0..1 -> tuple of maps`` (module docstring). It shares the
    detector's modules (no copy): exporting it exports the detector's weights."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.arch = arch_of(model)
        self.model: Any = model  # torchvision's detector (typed Any: its parts are read)
        transform: Any = self.model.transform
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(transform.image_mean).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(transform.image_std).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = (images - self.mean) / self.std  # (B, 3, H, W), as GeneralizedRCNNTransform does
        features = list(self.model.backbone(x).values())  # [(B, C, h_l, w_l)] per level
        if self.arch == "fasterrcnn":
            return tuple(features)
        head = self.model.head
        outputs: list[torch.Tensor] = []
        for feature in features:
            cls = head.classification_head
            outputs.append(cls.cls_logits(cls.conv(feature)))  # (B, A*K, h, w)
            reg = head.regression_head
            box_feature = reg.conv(feature)
            if self.arch == "fcos":  # FCOSRegressionHead: distances are ReLU'd, plus centerness
                outputs.append(F.relu(reg.bbox_reg(box_feature)))  # (B, A*4, h, w)
                outputs.append(reg.bbox_ctrness(box_feature))  # (B, A, h, w)
            else:
                outputs.append(reg.bbox_reg(box_feature))  # (B, A*4, h, w)
        return tuple(outputs)

    @property
    def outputs_per_level(self) -> int:
        return {"fcos": 3, "retinanet": 2, "fasterrcnn": 1}[self.arch]


def _flatten(maps: torch.Tensor, per_anchor: int) -> torch.Tensor:
    """``(B, A*X, h, w) -> (B, h*w*A, X)``, the order torchvision's heads concatenate in."""
    n, _, h, w = maps.shape
    return (maps.view(n, -1, per_anchor, h, w).permute(0, 3, 4, 1, 2)
            .reshape(n, -1, per_anchor))


def feature_names(model: Any) -> list[str]:
    """The FPN's level names in order: ``"0", "1", "2"`` and the extra levels'."""
    extra = model.backbone.fpn.extra_blocks
    n_taps = len(model.backbone.strides)
    added = ["pool"] if type(extra).__name__ == "LastLevelMaxPool" else ["p6", "p7"]
    return [str(i) for i in range(n_taps)] + added


@torch.no_grad()
def decode(model: Any, outputs: list[torch.Tensor], size: tuple[int, int]
           ) -> list[Detection]:
    """Detections (boxes in the ``size`` = (H, W) input's pixels) from :class:`DetectorGraph`
    outputs, with the model's own anchors, box coding, thresholds and NMS. ``model`` must be
    in eval mode (its test-time proposal counts and thresholds)."""
    device = next(model.parameters()).device
    maps = [o.to(device=device, dtype=torch.float32) for o in outputs]
    batch = maps[0].shape[0]
    image_sizes = [tuple(size)] * batch
    # The anchor generator reads only the batch's shape: a broadcast view, no memory.
    images = ImageList(torch.zeros((), device=device).expand(batch, 3, *size), image_sizes)
    arch = arch_of(model)
    if arch == "fasterrcnn":
        features = OrderedDict(zip(feature_names(model), maps, strict=True))
        proposals, _ = model.rpn(images, features)
        detections, _ = model.roi_heads(features, proposals, image_sizes)
        return list(detections)
    per = 3 if arch == "fcos" else 2
    levels = [maps[i:i + per] for i in range(0, len(maps), per)]
    num_classes = model.head.classification_head.num_classes
    head_outputs = {
        "cls_logits": torch.cat([_flatten(level[0], num_classes) for level in levels], 1),
        "bbox_regression": torch.cat([_flatten(level[1], 4) for level in levels], 1),
    }
    if arch == "fcos":
        head_outputs["bbox_ctrness"] = torch.cat([_flatten(level[2], 1) for level in levels], 1)
    grids = [level[0] for level in levels]  # the anchor generator reads their (h, w)
    anchors = model.anchor_generator(images, grids)
    per_level = [int(level[0].shape[2] * level[0].shape[3]) for level in levels]
    per_location = head_outputs["cls_logits"].shape[1] // sum(per_level)
    counts = [n * per_location for n in per_level]
    split_outputs = {k: list(v.split(counts, dim=1)) for k, v in head_outputs.items()}
    split_anchors = [list(a.split(counts)) for a in anchors]
    return list(model.postprocess_detections(split_outputs, split_anchors, image_sizes))
