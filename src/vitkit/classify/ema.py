"""An exponential moving average of a model's weights, evaluated and kept instead of the raw
weights: on small data the last steps of a short run swing validation accuracy by points, and
the average of the recent weights lands between the swings (Polyak averaging; timm's ModelEma).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class WeightAverage:
    """``shadow = d * shadow + (1 - d) * weights`` after every optimizer step.

    ``d`` warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so a short run
    (a few dozen steps on a small set) averages over its recent steps instead of staying at
    the weights it started from.
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = {name: value.detach().clone().float()
                       for name, value in module.state_dict().items()
                       if value.dtype.is_floating_point}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, value in module.state_dict().items():
            average = self.shadow.get(name)
            if average is not None:
                average.mul_(decay).add_(value.detach().float(), alpha=1 - decay)

    @contextmanager
    def applied(self, module: nn.Module) -> Iterator[None]:
        """The averaged weights in ``module`` inside the block, its own weights after."""
        state = module.state_dict()
        saved = {name: state[name].detach().clone() for name in self.shadow}
        with torch.no_grad():
            for name, average in self.shadow.items():
                state[name].copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in saved.items():
                    state[name].copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        for name, value in state["shadow"].items():
            if name in self.shadow:
                self.shadow[name].copy_(value)
