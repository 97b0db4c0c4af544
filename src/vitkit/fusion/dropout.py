"""Modality dropout: in training, hide one input of an example now and then, so the model
learns to answer from either input alone (pure tensor math)."""

from __future__ import annotations

import torch


def modality_dropout(has_image: torch.Tensor, has_audio: torch.Tensor, p: float,
                     generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Which inputs the model sees this step.

    Each example that has both inputs loses its image with probability ``p`` and its audio
    with probability ``p`` (never both: with ``p = 0.25``, a quarter image-only, a quarter
    audio-only, half both); an example with one input keeps it, since an example with none
    would teach the class prior and nothing else.

    Args:
        has_image, has_audio: ``(B,)`` bool flags of the inputs each example has.
        p: Probability of dropping each input, ``0 <= p <= 0.5``.
        generator: Torch generator for the draws (the global one when None).

    Returns:
        The flags after dropout, ``(B,)`` bool each: a subset of the inputs given.
    """
    if not 0.0 <= p <= 0.5:
        raise ValueError(f"modality dropout p must be in [0, 0.5], got {p}")
    draw = torch.rand(has_image.shape, generator=generator, device=generator.device
                      if generator is not None else has_image.device)
    both = has_image & has_audio
    drop_image = both & (draw < p)
    drop_audio = both & (draw >= p) & (draw < 2 * p)
    return has_image & ~drop_image, has_audio & ~drop_audio
