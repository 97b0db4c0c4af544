"""A bundle behind the service, whatever its task (see :mod:`vitkit.tasks.base`).

``prepare`` turns a decoded image into the model's input tensor (run in the decoding thread
pool); ``infer`` runs a batch of them (run in the model's own worker thread) and returns one
JSON-ready answer per image. What those are is the task's business: this class only adds
what the service keeps for every model (its name, the bundle's version).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vitkit.bundle import Bundle, BundleSource
from vitkit.data.intensity import IntensitySpec, bundle_intensity
from vitkit.errors import BundleError
from vitkit.tasks.base import PairedUpload, ServedInput, ServedTask, get_task, task_names

CLASSIFY = "classify"


@dataclass
class ServedModel:
    name: str
    bundle: Path
    version: str  # a short hash of the bundle's vitkit.json: changes with every new bundle
    task: ServedTask = field(repr=False)
    _opened: Bundle | None = field(default=None, repr=False)  # vitkit.json as read at load

    @classmethod
    def load(cls, name: str, bundle: BundleSource, variant: str | None = None) -> ServedModel:
        """Loads a bundle (safetensors only, as everywhere), reading ``vitkit.json`` once:
        the version hash, the model and its OOD fit all come from that one reading.

        Raises:
            BundleError: Not a bundle, or a task the service does not know.
        """
        opened = Bundle.open(bundle)
        if opened.meta.task not in task_names():
            raise BundleError(f"{opened} is a '{opened.meta.task}' bundle; the service serves "
                              f"{', '.join(task_names())} bundles.")
        served = get_task(opened.meta.task).serve(opened, variant)
        return cls(name, opened.path, opened.version, served, _opened=opened)

    @property
    def kind(self) -> str:
        return self.task.kind

    @property
    def variant(self) -> str:
        return self.task.variant

    @property
    def labels(self) -> list[str]:
        return self.task.labels

    @property
    def picture_key(self) -> str | None:
        return self.task.picture_key

    @property
    def extra_outputs(self) -> tuple[tuple[str, str], ...]:
        """The answer's keys the KServe v2 protocol returns beside label and score."""
        return tuple(self.task.extra_outputs)

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the tensors :meth:`prepare` makes."""
        return self.task.input_size

    @cached_property
    def intensity(self) -> IntensitySpec | None:
        """How the bundle reads images (windows, CLAHE), or None: the service decodes uploads
        for it (DICOM, 16-bit at full depth) before :meth:`prepare`."""
        return None if self._opened is None else bundle_intensity(self._opened.meta,
                                                                  self.bundle)

    @property
    def takes_audio(self) -> bool:
        """Whether the model prepares paired image + audio examples (a task with
        ``prepare_pair``: :class:`~vitkit.tasks.base.PairedServedTask`)."""
        return hasattr(self.task, "prepare_pair")

    def prepare(self, item: ServedInput) -> Any:
        """A decoded image, or a :class:`~vitkit.tasks.base.PairedUpload` for a model that
        takes audio, as the model's input."""
        if isinstance(item, PairedUpload):
            prepare_pair = getattr(self.task, "prepare_pair", None)
            if prepare_pair is None:
                raise TypeError(f"model {self.name} ({self.kind}) takes no audio")
            return prepare_pair(item)
        return self.task.prepare(item)

    def infer(self, batch: list[torch.Tensor]) -> list[dict[str, Any]]:
        return self.task.infer(batch)

    def overlay_png(self, image: Image.Image, answer: dict[str, Any]) -> bytes | None:
        """The answer drawn over the image (PNG bytes), or None for a task without one."""
        return self.task.overlay_png(image, answer)

    def warm(self, batch_sizes: tuple[int, ...] = (1, 8)) -> None:
        """Runs the model on gray images, so the first real request does not pay for lazy
        setup (runtime compilation, the OOD bank); ``/readyz`` waits for this."""
        gray = self.prepare(Image.new("RGB", (64, 64), (128, 128, 128)))
        for size in batch_sizes:
            self.infer([gray] * size)

    def drift_monitor(self, config: Any) -> Any:
        """A drift monitor against the bundle's reference sample, or None (a task without
        one, a classifier without an OOD fit)."""
        found = self.task.drift_reference()
        if found is None:
            return None
        from vitkit.serve.drift import DriftMonitor

        reference, expected_unknown = found
        return DriftMonitor(reference, self.labels, expected_unknown, config)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "version": self.version,
                "variant": self.variant, "bundle": str(self.bundle), "labels": self.labels}
