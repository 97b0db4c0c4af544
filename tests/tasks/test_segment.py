"""The segmentation step in the staged loop: a loss with gradients, the encoder as the frozen
part, and an evaluation whose figure is the mean foreground Dice."""

from __future__ import annotations

import torch

from vitkit.segment.model import build_segmenter
from vitkit.tasks.segment import SegmentStep

CLASSES = ["background", "square"]


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_segmenter("unet", "tu-efficientnet_lite0", 2, 32)[0]


def test_the_step_on_a_tiny_batch() -> None:
    model, step = _tiny_model(), SegmentStep(CLASSES)
    images = torch.randn(2, 3, 32, 32)
    masks = torch.zeros(2, 32, 32, dtype=torch.long)
    masks[:, 8:20, 8:20] = 1
    masks[0, 0, 0] = 255
    loss, n = step.training_loss(model.train(), (images, masks), torch.device("cpu"))
    loss.backward()
    assert n == 2 and torch.isfinite(loss)
    encoder = {id(p) for p in step.encoder_parameters(model)}
    assert encoder and encoder < {id(p) for p in model.parameters()}
    assert all(p.grad is not None for p in model.parameters() if id(p) not in encoder)
    calls = []
    with torch.no_grad():
        result = step.evaluate(model.eval(), [(images, masks)], torch.device("cpu"),
                               lambda: calls.append(1))
    assert 0.0 <= result.metric <= 1.0 and result.loss is not None and calls == [1]
    assert set(result.details["per_class"]) == set(CLASSES)

