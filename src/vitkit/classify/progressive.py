"""Progressive resizing: the image stages train on small images first, growing to full size.

``--progressive 128:224`` trains the first image-stage epoch at 128 px and grows the size in
steps of 16 px (:data:`STEP`) to 224, the model's training size, which the bundle's
preprocessing records. A small image costs less in every layer (a ViT at 128 px has 64 patch
tokens instead of 196), so the early epochs, where the model learns coarse features, are
cheap (FFCV's and fast.ai's recipe).

The schedule chosen here: the sizes START, START + 16, …, END are spread evenly, linearly,
over the epochs of the image stages (``top`` then ``full``, as the stage shares plan them);
the first of those epochs trains at START, the last at END. With fewer epochs than sizes some
sizes are skipped; with more, some repeat. The size is a function of the stage and its epoch
only, so a resumed run trains each epoch at the size an uninterrupted one would, and an early
stop of the ``top`` stage does not shift the sizes of ``full``.

What stays at full size: validation (every epoch, so the best epoch is chosen at the size the
bundle runs at) and the ``head`` stage, which trains on features cached once with the
evaluation transform. CNNs take any size (global pooling); a timm ViT with a fixed position
grid is rebuilt with ``dynamic_img_size`` for training (:func:`resizable`), so timm
interpolates its position embeddings to each epoch's grid in the forward pass — the learnt
grid keeps its full-size shape, and at full size the interpolation is the identity. Sizes are
rounded down to a multiple of a ViT's patch (ViT-S/14: 128 → 126).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from PIL import Image

from vitkit.backbones import CreatedModel, ImageClassifier
from vitkit.backbones.factory import BackboneSpec, rebuild
from vitkit.data import ImageDataset
from vitkit.data.transforms import MAX_INPUT_SIDE
from vitkit.errors import ConfigError

STEP = 16
MIN_SIZE = 32
IMAGE_STAGES = ("top", "full")

Transform = Callable[[Image.Image], torch.Tensor]


def parse_size_range(text: str) -> tuple[int, int]:
    """``"128:224"`` → ``(128, 224)``.

    Raises:
        ValueError: Not two whole numbers ``START:END`` with 32 <= START < END <= 4096.
    """
    parts = str(text).replace(" ", "").split(":")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"expected START:END in pixels, e.g. 128:224, got {text!r}")
    start, end = int(parts[0]), int(parts[1])
    if not MIN_SIZE <= start < end <= MAX_INPUT_SIDE:
        raise ValueError(f"START:END must grow, from at least {MIN_SIZE} px to at most "
                         f"{MAX_INPUT_SIDE} px (e.g. 128:224), got {start}:{end}")
    return start, end


def size_levels(start: int, end: int, step: int = STEP) -> list[int]:
    """START, START + step, … below END, then END."""
    return [*range(start, end, step), end]


def size_schedule(start: int, end: int, epochs: int, step: int = STEP,
                  multiple: int = 1) -> list[int]:
    """The size of each of ``epochs`` epochs: the levels spread linearly, first START, last END.

    Each size is rounded down to a multiple of ``multiple`` (a ViT's patch), END excepted.
    """
    if epochs < 1:
        return []
    levels = size_levels(start, end, step)
    if epochs == 1:
        return [end]
    # half-up rounding of the level index: the same sizes on every platform
    picks = [levels[int(i * (len(levels) - 1) / (epochs - 1) + 0.5)] for i in range(epochs)]
    return [size - size % multiple if size != end else size for size in picks]


def stage_sizes(start: int, end: int, stage_epochs: Mapping[str, int],
                multiple: int = 1) -> dict[str, tuple[int, ...]]:
    """The schedule over the image stages' planned epochs, cut into one tuple per stage.

    Raises:
        ConfigError: The recipe has no image-stage epoch to resize.
    """
    counts = [(stage, stage_epochs.get(stage, 0)) for stage in IMAGE_STAGES]
    total = sum(n for _, n in counts)
    if total == 0:
        raise ConfigError("--progressive resizes the images of the top and full stages, and "
                          "this recipe trains only the head (on cached features): give the "
                          "full stage epochs (more --epochs, or stages.full.share > 0), or drop "
                          "--progressive.")
    sizes = size_schedule(start, end, total, multiple=multiple)
    out: dict[str, tuple[int, ...]] = {}
    for stage, n in counts:
        if n:
            out[stage], sizes = tuple(sizes[:n]), sizes[n:]
    return out


@dataclass(frozen=True)
class ProgressiveResize:
    """The image stages' sizes and the training transform at a size (see the module doc)."""

    sizes: Mapping[str, tuple[int, ...]]  # stage -> the size of each of its epochs
    end: int  # full size: the head stage's features, validation, the bundle
    transform_at: Callable[[int], Transform]

    def size(self, stage: str, stage_epoch: int) -> int:
        """The training size of ``stage``'s epoch ``stage_epoch`` (0-based)."""
        sizes = self.sizes.get(stage)
        return sizes[min(stage_epoch, len(sizes) - 1)] if sizes else self.end

    def train_set(self, base: ImageDataset, stage: str, stage_epoch: int) -> ImageDataset:
        """``base``'s images with the random training transform at this epoch's size."""
        size = self.size(stage, stage_epoch)
        if size == self.end:
            return base
        resized = copy.copy(base)  # same samples, labels and image reading
        resized.transform = self.transform_at(size)
        return resized

    def describe(self) -> str:
        return "; ".join(f"{stage} {', '.join(map(str, sizes))} px"
                         for stage, sizes in self.sizes.items())


def patch_multiple(model: ImageClassifier) -> int:
    """The side a ViT's input must be a multiple of (its patch); 1 for a CNN."""
    patch_embed = getattr(model.model, "patch_embed", None)
    patch = getattr(patch_embed, "patch_size", 1)
    return int(patch[0]) if isinstance(patch, tuple | list) else int(patch)


def plan_progressive(size_range: str | None, stage_epochs: Mapping[str, int],
                     model: ImageClassifier, input_size: tuple[int, int],
                     transform_at: Callable[[int], Transform]) -> ProgressiveResize | None:
    """The run's :class:`ProgressiveResize` for the config's ``progressive`` (``size_range``)
    and ``stage_epochs()``, or None without one; every size is tried once on ``model`` so an
    impossible one fails now, not in the middle of training.

    Raises:
        ConfigError: No image-stage epochs, an END other than the (square) training size
            ``input_size``, or a model that cannot run at one of the sizes.
    """
    if size_range is None:
        return None
    start, wanted_end = parse_size_range(size_range)
    end = input_size[0]
    if input_size[1] != end:
        raise ConfigError(f"--progressive grows square images, and the model trains at "
                          f"{input_size[0]}x{input_size[1]} px: set image_size {wanted_end}.")
    if wanted_end != end:
        raise ConfigError(f"--progressive ends at {wanted_end} px but the model trains at {end} "
                          f"px: end it at the training size ({start}:{end}).")
    multiple = patch_multiple(model)
    if end % multiple:
        raise ConfigError(f"the training size {end} px is not a multiple of the ViT's patch "
                          f"({multiple} px); choose image_size {end - end % multiple}.")
    sizes = stage_sizes(start, end, stage_epochs, multiple)
    for size in sorted({s for stage in sizes.values() for s in stage}):
        _check_runs_at(model, size)
    return ProgressiveResize(sizes, end, transform_at)


@torch.no_grad()
def _check_runs_at(model: ImageClassifier, size: int) -> None:
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, 3, size, size))
    except Exception as exc:  # noqa: BLE001 - any failure means the model cannot take the size
        raise ConfigError(f"the model cannot run at {size} px ({type(exc).__name__}: "
                          f"{str(exc)[:160]}). Progressive resizing works with CNNs and timm "
                          "ViTs; start at another size, or drop --progressive.") from exc
    finally:
        model.train(was_training)


def resizable(created: CreatedModel) -> CreatedModel:
    """``created`` with a model that runs at any size: CNNs and timm ViTs built with
    ``dynamic_img_size`` as they are; a fixed-grid timm ViT rebuilt with it, same weights.

    The spec keeps the user's options: ``dynamic_img_size`` holds no weights, so the bundle
    rebuilds an ordinary fixed-grid ViT that computes the same at its own size (and exports
    wherever a standard ViT does).

    Raises:
        ConfigError: A transformer that timm cannot give a dynamic grid (or a Hugging Face one).
    """
    model = created.model
    if not model.has_fixed_input_size:
        return created
    name = created.spec.name
    if model.source != "timm":
        raise ConfigError(f"--progressive needs a model that runs at several sizes; {name} is a "
                          "Hugging Face transformer with a fixed input size. Use a CNN or a timm "
                          "ViT (e.g. deit_tiny_patch16_224, vit_small_patch14_dinov2).")
    kwargs = {**created.spec.extra.get("timm_kwargs", {}), "dynamic_img_size": True}
    spec = BackboneSpec(created.spec.name, "timm", created.spec.weights,
                        extra={"timm_kwargs": kwargs})
    try:
        dynamic = rebuild(spec, num_classes=int(model.model.num_classes))  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigError(f"--progressive: timm cannot build {name} with dynamic_img_size "
                          f"({exc}), so its position embeddings cannot follow the size. Use a "
                          "CNN or a timm ViT (vit_*, deit_*, eva*).") from exc
    dynamic.model.load_state_dict(model.model.state_dict())
    dynamic.train(model.training)
    return CreatedModel(dynamic, created.spec, created.preprocessing, created.new_head)
