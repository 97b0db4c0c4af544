"""What a task is: the one interface classify, anomaly, segment, detect and fusion provide.

The doors (serve, bench, optimize, the report) ask a bundle's task — ``get_task(meta.task)``
— instead of testing ``if task == ...`` at every layer. A task module provides:

- ``serve(bundle, variant)``: the loaded model behind the service (:class:`ServedTask`):
  ``prepare`` an image, ``infer`` a batch into JSON-ready answers (each has ``label`` and
  ``score``, which the request log keeps), an optional picture (``overlay_png``: an anomaly
  map, a mask, boxes) sent under ``picture_key`` when a client asks;
- ``accuracy_key``: the figure of its ``eval --json`` record that ``bench`` reports and the
  ``optimize`` guard holds (classify: ``accuracy``; segment: ``dice``; detect: ``map_50``).

The layout reader and validator (:mod:`vitkit.data`), the model, loss and metrics (the task's
own package), the training step (:class:`vitkit.tasks.trainer.TaskStep`) and the ``eval`` /
``predict`` jobs with their ``--json`` records (:mod:`vitkit.workflows`) sit in the layers
where they belong and are reached through the task's verbs.

A fifth task adds a module here (and its package below): see the Design page, "Add a task".
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from PIL import Image

from vitkit.bundle import Bundle
from vitkit.data.audio import Waveform
from vitkit.errors import BundleError
from vitkit.predictor.runtimes import Runtime


@dataclass(frozen=True)
class PairedUpload:
    """An image and/or a recording sent as one example (v1 multipart fields ``image`` and
    ``audio``): what a task that takes audio (:class:`PairedServedTask`) prepares instead of a
    bare image. At least one of the two is there."""

    image: Image.Image | None
    audio: Waveform | None


ServedInput = Image.Image | PairedUpload
"""What the service hands a model to prepare: a decoded image, or a paired example."""


class ServedTask(Protocol):
    """A loaded bundle as the service sees it."""

    kind: str  # the task's name
    variant: str  # the variant that runs
    labels: list[str]
    picture_key: str | None  # the answer's key for overlay_png's picture (base64), if any
    # the answer's keys the KServe v2 protocol returns beside label and score, with their
    # datatype (BOOL, FP32, or BYTES: text, or anything else as JSON text)
    extra_outputs: tuple[tuple[str, str], ...]

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

    def drift_reference(self) -> tuple[Any, float] | None:
        """(the reference sample the drift monitor compares with, the expected share of
        "unknown" answers), or None when the model has none."""
        ...


class PairedServedTask(ServedTask, Protocol):
    """A served task that also takes audio (the image + audio task): the service gives it
    :class:`PairedUpload` examples, and refuses them for a task without ``prepare_pair``."""

    def prepare_pair(self, pair: PairedUpload) -> Any:
        """A paired example as the model's input (runs in the decoding threads)."""
        ...


class Task(Protocol):
    """One kind of model a bundle can hold."""

    name: str
    accuracy_key: str  # the eval record's figure bench shows and optimize's guard holds

    def serve(self, bundle: Bundle, variant: str | None = None) -> ServedTask:
        ...


class MeasuredTask(Task, Protocol):
    """A task ``vitkit bench`` and ``vitkit optimize`` measure through this interface
    (segment, detect; the classifier keeps its own path, which also measures top-1 agreement
    and token merging)."""

    def runtime(self, bundle: Bundle, variant: str | None = None, device: str = "cpu",
                threads: int | None = None) -> Runtime:
        """The variant's runtime on a preprocessed batch (what bench times)."""
        ...

    def input_size(self, bundle: Bundle) -> tuple[int, int]:
        """(height, width) of the model's input."""
        ...

    def validation_data(self, bundle: Bundle) -> str | None:
        """The labelled images the bundle was validated on, when they are still there."""
        ...

    def evaluate(self, bundle: Bundle, data: str, *, variant: str | None = None,
                 device: str = "cpu", progress: bool = True) -> dict[str, Any]:
        """The task's ``eval --json`` record; ``record[accuracy_key]`` is its figure."""
        ...


# task name -> module (imported on first use: a classifier never imports smp or the COCO
# evaluator)
_MODULES = {
    "classify": "vitkit.tasks.classify",
    "anomaly": "vitkit.tasks.anomaly",
    "segment": "vitkit.tasks.segment",
    "detect": "vitkit.tasks.detect",
    "fusion": "vitkit.tasks.fusion",
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


def get_measured_task(name: str) -> MeasuredTask:
    """The task called ``name`` if bench and optimize measure it through the task interface;
    a clear error otherwise."""
    task = get_task(name)
    if not all(hasattr(task, m) for m in ("runtime", "input_size", "validation_data",
                                          "evaluate")):
        raise BundleError(f"a '{name}' bundle is not measured through the task interface.")
    return task  # type: ignore[return-value]
