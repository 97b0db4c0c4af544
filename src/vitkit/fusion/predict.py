"""An image + audio bundle loaded for prediction: inputs prepared as in training (the
bundle's image preprocessing and log-mel settings), probabilities per class."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from safetensors.torch import load_model

from vitkit.bundle import WEIGHTS_FILE, Bundle, BundleSource
from vitkit.data.audio import Waveform
from vitkit.data.logmel import mel_filterbank
from vitkit.data.paired_inputs import PairedInput, audio_features, collate
from vitkit.data.transforms import bundle_preprocessing, eval_transform
from vitkit.errors import BundleError
from vitkit.fusion.model import FusionClassifier, read_record, rebuild_fusion

VARIANT = "torch-fp32"  # the one variant an image + audio bundle has (no export yet)


def modality_of(item: PairedInput) -> str:
    """``both``, ``image`` or ``audio``: which inputs an example has."""
    if item.image is not None and item.mel is not None:
        return "both"
    return "image" if item.image is not None else "audio"


@dataclass
class FusionPrediction:
    """One example's answer; ``to_dict()`` is its ``predict --json`` record."""

    label: str
    score: float
    topk: list[dict[str, Any]]
    modality: str  # the inputs it was given: both, image or audio
    inputs: dict[str, str | None] = field(default_factory=dict)  # {"image": …, "audio": …}

    def to_dict(self) -> dict[str, Any]:
        return {**self.inputs, "label": self.label, "score": self.score, "topk": self.topk,
                "modality": self.modality}


class FusionPredictor:
    """``prepare`` an image and/or a recording, ``predict`` a batch of prepared examples."""

    variant_name = VARIANT

    def __init__(self, bundle: Bundle, model: FusionClassifier, device: str = "cpu") -> None:
        self.bundle = bundle
        self.model = model.to(device).eval()
        self.device = device
        self.labels = list(bundle.meta.labels)
        self.record = read_record(bundle.meta, bundle)
        self.settings = self.record.audio
        self.preprocessing = bundle_preprocessing(bundle.meta.preprocessing, bundle)
        self.transform = eval_transform(self.preprocessing)
        self.filters = mel_filterbank(self.settings.sample_rate, self.settings.n_fft,
                                      self.settings.n_mels, self.settings.f_min,
                                      self.settings.f_max, torch.float32)

    @classmethod
    def load(cls, source: BundleSource, device: str = "cpu") -> FusionPredictor:
        """Loads a fusion bundle (safetensors weights into the recorded architecture).

        Raises:
            BundleError: Not an image + audio bundle, or its weights do not fit.
        """
        bundle = Bundle.open(source)
        model = rebuild_fusion(bundle.meta, bundle)
        weights = bundle.path / WEIGHTS_FILE
        try:
            load_model(model, str(weights))
        except (OSError, RuntimeError, ValueError) as exc:
            raise BundleError(f"{weights} cannot be loaded into the recorded model ({exc}"
                              f"); the bundle is damaged. Train again.") from exc
        return cls(bundle, model, device)

    @property
    def input_size(self) -> tuple[int, int]:
        height, width = self.preprocessing.input_size
        return int(height), int(width)

    def prepare_image(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)

    def prepare_audio(self, waveform: Waveform) -> torch.Tensor:
        return audio_features(waveform, self.settings, self.filters)

    def prepare(self, image: Image.Image | None, waveform: Waveform | None) -> PairedInput:
        """An example as the model's input; at least one of the two must be given."""
        if image is None and waveform is None:
            raise ValueError("an example needs an image, a recording or both")
        return PairedInput(None if image is None else self.prepare_image(image),
                           None if waveform is None else self.prepare_audio(waveform))

    @torch.no_grad()
    def probabilities(self, inputs: Sequence[PairedInput]) -> torch.Tensor:
        """Class probabilities ``(B, classes)`` of prepared examples."""
        batch = collate(inputs, self.input_size, self.settings.n_mels).to(self.device)
        logits = self.model(batch.images, batch.has_image, batch.mels, batch.mel_lengths,
                            batch.has_audio)
        return logits.float().softmax(1).cpu()

    def predict(self, inputs: Sequence[PairedInput], top_k: int = 3) -> list[FusionPrediction]:
        """One answer per prepared example: the top class, its probability, the ``top_k``."""
        if not inputs:
            return []
        probabilities = self.probabilities(inputs)
        k = min(top_k, len(self.labels))
        answers = []
        for item, row in zip(inputs, probabilities, strict=True):
            scores, indices = row.topk(k)
            topk: list[dict[str, Any]] = [
                {"label": self.labels[int(i)], "score": round(float(s), 6)}
                for s, i in zip(scores, indices, strict=True)]
            answers.append(FusionPrediction(self.labels[int(indices[0])],
                                            round(float(scores[0]), 6), topk,
                                            modality_of(item)))
        return answers
