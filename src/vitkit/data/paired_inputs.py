"""Image + audio examples as model inputs: one :class:`PairedInput` per example, padded and
stacked into a :class:`PairedBatch`; the dataset that reads a manifest's rows.

Training, ``eval``, ``predict`` and ``serve`` all go through :func:`audio_features` and
:func:`collate`, so the model always sees the same log-mel frames and the same "missing"
marks. A missing input travels as zeros with its ``has_*`` flag False; the model replaces its
embedding (see :mod:`vitkit.fusion.model`), so the zeros never reach the prediction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import Dataset

from vitkit.data.audio import Waveform, load_wav, resample
from vitkit.data.images import DEFAULT_MAX_PIXELS, load_rgb
from vitkit.data.logmel import LogMelSettings, log_mel, mel_filterbank, model_input
from vitkit.data.paired import PairedRow
from vitkit.data.transforms import Preprocessing


class PairedInput(NamedTuple):
    """One example, prepared: ``image`` (3, H, W) normalised, ``mel`` (n_mels, frames) as
    the audio encoder reads it; None for an input the example does not have."""

    image: torch.Tensor | None
    mel: torch.Tensor | None


class PairedBatch(NamedTuple):
    """A batch: missing inputs are zeros with their flag False (a NamedTuple, so Accelerate
    moves it to the device like a tuple)."""

    images: torch.Tensor  # (B, 3, H, W)
    has_image: torch.Tensor  # (B,) bool
    mels: torch.Tensor  # (B, n_mels, T), zeros past each clip's frames
    mel_lengths: torch.Tensor  # (B,) int64, >= 1 (1 for a missing clip)
    has_audio: torch.Tensor  # (B,) bool
    targets: torch.Tensor  # (B,) int64 class indices, -1 when unknown

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PairedBatch:
        return PairedBatch(*(t.to(device, non_blocking=non_blocking) for t in self))


class AudioAugmentation(BaseModel):
    """Training-time audio changes that a voice never heard may bring.

    Attributes:
        speed: Range of playback-speed factors (resampling: tempo and pitch move together,
            like a longer or shorter vocal tract); (1, 1): off.
        freq_mask: Mask up to this many adjacent mel bands (SpecAugment); 0: off.
        time_mask: Mask up to this share of the frames (SpecAugment); 0: off.
    """

    model_config = ConfigDict(extra="forbid")

    speed: tuple[float, float] = (0.9, 1.1)
    freq_mask: int = Field(8, ge=0)
    time_mask: float = Field(0.1, ge=0, lt=1)


class ImageAugmentation(BaseModel):
    """Training-time image changes (no flips: a mirrored digit is another symbol).

    Attributes:
        degrees: Random rotation up to +- this many degrees.
        translate: Random shift up to this share of each side.
        scale: Random zoom range.
    """

    model_config = ConfigDict(extra="forbid")

    degrees: float = Field(10.0, ge=0, le=180)
    translate: float = Field(0.1, ge=0, lt=1)
    scale: tuple[float, float] = (0.9, 1.1)


def audio_features(waveform: Waveform, settings: LogMelSettings,
                   filters: torch.Tensor | None = None, speed: float = 1.0) -> torch.Tensor:
    """A recording as the audio encoder's input: resampled to the settings' rate (times
    ``speed``: faster playback is fewer samples), its first ``max_seconds``, log-mel frames
    relative to its loudest bin. Returns ``(n_mels, frames)`` float32."""
    rate = settings.sample_rate
    if speed != 1.0:  # a multiple of 100 Hz keeps the polyphase filter short
        rate = max(100, int(round(settings.sample_rate / speed / 100)) * 100)
    samples = resample(waveform, rate).samples[:settings.max_samples]
    db = log_mel(torch.from_numpy(np.ascontiguousarray(samples, np.float32)), settings, filters)
    return model_input(db, settings.top_db)


def image_train_transform(preprocessing: Preprocessing, augmentation: ImageAugmentation
                          ) -> Callable[[Image.Image], torch.Tensor]:
    """The whole image resized to the model's input, then a random rotation, shift and
    zoom; normalised as :func:`~vitkit.data.transforms.eval_transform` does."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(preprocessing.input_size,
                          interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.RandomAffine(augmentation.degrees,
                                (augmentation.translate, augmentation.translate),
                                augmentation.scale),
        transforms.ToTensor(),
        transforms.Normalize(preprocessing.mean, preprocessing.std)])


def mask_spectrogram(mel: torch.Tensor, augmentation: AudioAugmentation) -> torch.Tensor:
    """SpecAugment: one band of mel bins and one run of frames set to the clip's floor
    (-1 in the encoder's scale), chosen with torch's generator (seeded per epoch)."""
    mel = mel.clone()
    bands, frames = mel.shape
    if augmentation.freq_mask > 0:
        width = int(torch.randint(0, augmentation.freq_mask + 1, ()).item())
        start = int(torch.randint(0, max(1, bands - width + 1), ()).item())
        mel[start:start + width] = -1.0
    longest = int(frames * augmentation.time_mask)
    if longest > 0:
        width = int(torch.randint(0, longest + 1, ()).item())
        start = int(torch.randint(0, max(1, frames - width + 1), ()).item())
        mel[:, start:start + width] = -1.0
    return mel


def collate(inputs: Sequence[PairedInput], image_size: tuple[int, int], n_mels: int,
            targets: Sequence[int] | None = None) -> PairedBatch:
    """Stacks prepared examples; clips are padded with zeros to the longest one's frames."""
    height, width = image_size
    n = len(inputs)
    images = torch.zeros(n, 3, height, width)
    lengths = torch.ones(n, dtype=torch.int64)
    longest = max([1, *(x.mel.shape[-1] for x in inputs if x.mel is not None)])
    mels = torch.zeros(n, n_mels, longest)
    for i, item in enumerate(inputs):
        if item.image is not None:
            images[i] = item.image
        if item.mel is not None:
            lengths[i] = item.mel.shape[-1]
            mels[i, :, :item.mel.shape[-1]] = item.mel
    return PairedBatch(
        images=images,
        has_image=torch.tensor([x.image is not None for x in inputs], dtype=torch.bool),
        mels=mels, mel_lengths=lengths,
        has_audio=torch.tensor([x.mel is not None for x in inputs], dtype=torch.bool),
        targets=torch.tensor(list(targets) if targets is not None else [-1] * n,
                             dtype=torch.int64))


class PairedDataset(Dataset[tuple[PairedInput, int]]):
    """A manifest's rows as ``(PairedInput, class index)``; with augmentations, a random
    version of each (speed and SpecAugment for the audio, a small affine for the image).

    Files were checked by :func:`~vitkit.data.paired.validate_paired` before training.
    """

    def __init__(self, rows: Sequence[PairedRow], labels: Sequence[str],
                 image_transform: Callable[[Image.Image], torch.Tensor],
                 settings: LogMelSettings, audio_augmentation: AudioAugmentation | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.rows = list(rows)
        self.index = {label: i for i, label in enumerate(labels)}
        self.image_transform = image_transform
        self.settings = settings
        self.audio_augmentation = audio_augmentation
        self.max_pixels = max_pixels
        self.filters = mel_filterbank(settings.sample_rate, settings.n_fft, settings.n_mels,
                                      settings.f_min, settings.f_max, torch.float32)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[PairedInput, int]:
        row = self.rows[i]
        image = None if row.image is None else self.image_transform(
            load_rgb(row.image, self.max_pixels)[0])
        mel = None
        if row.audio is not None:
            augmentation = self.audio_augmentation
            speed = 1.0
            if augmentation is not None and augmentation.speed[0] != augmentation.speed[1]:
                low, high = augmentation.speed
                speed = low + (high - low) * float(torch.rand(()))
            # Read a little past max_seconds: a faster replay needs more of the recording.
            waveform = load_wav(row.audio, self.settings.max_seconds * max(speed, 1.0) + 0.1)
            mel = audio_features(waveform, self.settings, self.filters, speed)
            if augmentation is not None:
                mel = mask_spectrogram(mel, augmentation)
        label = -1 if row.label is None else self.index[row.label]
        return PairedInput(image, mel), label
