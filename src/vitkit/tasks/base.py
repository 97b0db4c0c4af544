"""What a task is: the one interface classify, anomaly, segment and detect provide.

The doors (serve, bench, optimize, the report) ask a bundle's task — ``get_task(meta.task)``
— instead of testing ``if task == ...`` at every layer. A task module provides:

- ``serve(bundle, variant)``: the loaded model behind the service (:class:`ServedTask`):
  ``prepare`` an image, ``infer`` a batch into JSON-ready answers, an optional visual answer
  (``overlay_png``: an anomaly map, a mask, boxes);
- ``evaluate(bundle, data, ...)``: the ``eval --json`` record;
- ``accuracy_key``: the figure of that record that ``bench`` reports and the ``optimize``
  guard holds (classify: ``accuracy``; segment: ``dice``; detect: ``map_50``);
- ``labels``, the prediction record and its ``--json`` shape, the layout reader and the
  report section live in the task's own package and are reached through these.

A fifth task adds a module here (and its package below): see the Design page, "Add a task".
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import torch
from PIL import Image

from vitkit.bundle import Bundle
from vitkit.errors import BundleError


class ServedTask(Protocol):
    """A loaded bundle as the service sees it."""

    kind: str  # the task's name
    variant: str  # the variant that runs
    labels: list[str]

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the tensors :meth:`prepare` makes."""
        ...

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """A decoded image as the model's input (runs in the decoding threads)."""
        ...

    def infer(self, batch: list[torch.Tensor]) -> list[dict[str, Any]]:
        """One JSON-ready answer per prepared image; keys starting with ``_`` are kept for
        :meth:`overlay_png` and the drift monitor and never sent."""
        ...

    def overlay_png(self, image: Image.Image, answer: dict[str, Any]) -> bytes | None:
        """The answer drawn over the image (PNG), or None when the task has no picture."""
        ...

    def drift_monitor(self, config: Any) -> Any:
        """A drift monitor for this model, or None."""
        ...


class Task(Protocol):
    """One kind of model a bundle can hold."""

    name: str
    accuracy_key: str  # the eval record's figure bench shows and optimize's guard holds

    def serve(self, bundle: Bundle, variant: str | None = None) -> ServedTask:
        ...

    def evaluate(self, bundle: Bundle, data: str, **options: Any) -> dict[str, Any]:
        ...


# task name -> module (imported on first use: a classifier never imports smp or the COCO
# evaluator)
_MODULES = {
    "classify": "vitkit.tasks.classify",
    "anomaly": "vitkit.tasks.anomaly",
    "segment": "vitkit.tasks.segment",
    "detect": "vitkit.tasks.detect",
}


def task_names() -> list[str]:
    return list(_MODULES)


def get_task(name: str) -> Task:
    """The task called ``name`` (a bundle's ``task``); a clear error for one vitkit does not
    know (a bundle from a newer vitkit, or an edited ``vitkit.json``)."""
    if name not in _MODULES:
        raise BundleError(f"unknown task {name!r}; this vitkit knows "
                          f"{', '.join(_MODULES)}. Upgrade vitkit, or check vitkit.json.")
    task: Task = importlib.import_module(_MODULES[name]).TASK
    return task
