"""`vitkit explain`: heat maps of why a bundle's model decided, written as files.

For every readable image: ``OUT/<stem>.png`` (the map over the image as the model saw it) and
``OUT/<stem>.npy`` (the raw map, float32, model resolution, scaled to [0, 1]); for the run:
``OUT/explanations.json`` (a list of records whose ``overlay``/``map`` name files beside it)
and ``OUT/index.html`` (a grid of the overlays). Unreadable images are skipped and reported.

Feature views (:mod:`vitkit.explain.views`) instead of heat maps: ``--method filters`` writes
``OUT/filters.png``, the first convolution's filters (the images are not read);
``--method features`` writes ``OUT/<stem>_features.png`` per image, the ``channels`` strongest
channels of ``layer``. Their ``explanations.json`` records are ``{path, method, layer,
channels, overlay}`` (features) and ``{method, layer, filters, shape, overlay}`` (filters).

Explanations need the torch model (gradients for Grad-CAM, attention weights for rollout);
ONNX Runtime and OpenVINO expose neither, so a bundle's other variants are explained through
its fp32 torch model, and the result says so.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitkit.anomaly.overlay import save_png_atomic
from vitkit.atomic import write_bytes_atomic, write_text_atomic
from vitkit.bundle import Bundle, BundleSource, write_json_atomic
from vitkit.console import stderr_console
from vitkit.data.files import require_images
from vitkit.errors import ConfigError, ImageFailure
from vitkit.explain.explainer import Explainer
from vitkit.explain.overlay import model_view, overlay_map
from vitkit.explain.rollout import DEFAULT_HEAD_FUSION, HeadFusion
from vitkit.explain.views import (
    activation_grid,
    default_feature_layer,
    filter_grid,
    first_conv,
    layer_activations,
    resolve_module,
    top_channels,
)
from vitkit.predictor.predict import Predictor, expand_paths, load, readable_batches
from vitkit.predictor.variants import REFERENCE_VARIANT, find_variant
from vitkit.report._style import CSS
from vitkit.workflows.trust_context import TrustContext

EXPLANATIONS_FILE = "explanations.json"
INDEX_FILE = "index.html"
RUN_SUBDIR = "explanations"  # inside a training run folder
FILTERS_FILE = "filters.png"
VIEW_METHODS = ("filters", "features")
MAX_FILTERS = 64


@dataclass
class Explanation:
    """One explained image; ``overlay`` and ``map`` are the files written for it."""

    path: str
    label: str  # predicted class
    score: float  # its probability
    target: str  # the class the map explains
    target_score: float
    method: str
    overlay: Path
    map: Path
    true: str | None = None  # the known label, for validation images

    def to_dict(self, relative_to: Path | None = None) -> dict[str, Any]:
        """JSON-ready; with ``relative_to``, file paths are relative to that folder."""
        def where(file: Path) -> str:
            return file.name if relative_to is not None else str(file)

        out: dict[str, Any] = {
            "path": self.path, "label": self.label, "score": round(self.score, 6),
            "class": self.target, "class_score": round(self.target_score, 6),
            "method": self.method, "overlay": where(self.overlay), "map": where(self.map)}
        if self.true is not None:
            out["true"] = self.true
        return out


@dataclass
class FeatureView:
    """One image's strongest channels at ``layer`` (``--method features``)."""

    path: str
    layer: str
    channels: list[int]  # strongest first
    overlay: Path  # the grid of their maps

    def to_dict(self, relative_to: Path | None = None) -> dict[str, Any]:
        return {"path": self.path, "method": "features", "layer": self.layer,
                "channels": list(self.channels),
                "overlay": self.overlay.name if relative_to is not None else str(self.overlay)}


@dataclass
class FilterView:
    """The first convolution's filters drawn as one grid (``--method filters``)."""

    layer: str
    shape: tuple[int, ...]  # (out, in, kh, kw) of the whole weight
    shown: int  # how many of ``shape[0]`` filters the grid holds
    overlay: Path

    def to_dict(self, relative_to: Path | None = None) -> dict[str, Any]:
        return {"method": "filters", "layer": self.layer, "filters": self.shown,
                "shape": list(self.shape),
                "overlay": self.overlay.name if relative_to is not None else str(self.overlay)}


@dataclass
class ExplainResult:
    method: str
    layer: str | None
    out_dir: Path
    explanations: list[Explanation] = field(default_factory=list)
    skipped: list[ImageFailure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    features: list[FeatureView] = field(default_factory=list)
    filters: FilterView | None = None

    def records(self, relative_to: Path | None = None) -> list[dict[str, Any]]:
        """The per-image (or, for filters, per-run) records of ``explanations.json``."""
        out = [e.to_dict(relative_to) for e in self.explanations]
        out += [f.to_dict(relative_to) for f in self.features]
        if self.filters is not None:
            out.append(self.filters.to_dict(relative_to))
        return out

    def to_dict(self) -> dict[str, Any]:
        out = {
            "method": self.method, "layer": self.layer, "out": str(self.out_dir),
            "index": str(self.out_dir / INDEX_FILE),
            "explanations": self.records(),
            "skipped": [s.to_dict() for s in self.skipped], "notes": self.notes,
        }
        if self.filters is not None:
            out["filters"] = str(self.filters.overlay)
        return out


def explain_paths(bundle: BundleSource, paths: Sequence[str | Path], method: str = "auto",
                  target_class: str | None = None, layer: str | None = None,
                  out_dir: str | Path = "runs/explain", discard_ratio: float = 0.9,
                  head_fusion: HeadFusion = DEFAULT_HEAD_FUSION, variant: str | None = None,
                  device: str = "cpu", batch_size: int = 8, cmap: str = "jet",
                  alpha: float = 0.5, progress: bool = True,
                  channels: int = 16) -> ExplainResult:
    """Explains image files, folders (searched recursively) or globs with a bundle's model
    (``method="filters"`` reads no image; ``channels`` is for ``"features"``).

    Raises:
        VitkitError: Unknown method, class, layer or variant, or no image at all.
    """
    files: list[Path] = []
    missing: list[ImageFailure] = []
    if method != "filters":
        files, missing = expand_paths([str(p) for p in paths], dicom=True)
        require_images(files, [m.path for m in missing])
    notes = []
    opened = Bundle.open(bundle)
    if variant is not None:
        chosen = find_variant(opened.meta, variant, opened.path)
        if chosen.name != "torch-fp32" and method in VIEW_METHODS:
            notes.append(f"drawn from the bundle's fp32 torch model, not {chosen.name}: "
                         f"{chosen.runtime} {chosen.precision} does not expose its weights "
                         "and layers.")
        elif chosen.name != "torch-fp32":
            notes.append(
                f"explained with the bundle's fp32 torch model, not {chosen.name}: Grad-CAM needs "
                "gradients and rollout needs attention weights, which "
                f"{chosen.runtime} {chosen.precision} does not expose. The predictions shown "
                "are the torch model's (they match the variant's within its recorded parity).")
    predictor = load(opened, device=_device(device), variant=REFERENCE_VARIANT)
    result = explain_images(predictor, [(f, None) for f in files], method, target_class, layer,
                            out_dir, discard_ratio, head_fusion, batch_size, cmap, alpha,
                            progress, channels=channels)
    result.skipped[:0] = missing
    result.notes[:0] = notes
    return result


def explain_images(predictor: Predictor, items: Sequence[tuple[Path | str, str | None]],
                   method: str = "auto", target_class: str | None = None,
                   layer: str | None = None, out_dir: str | Path = "runs/explain",
                   discard_ratio: float = 0.9, head_fusion: HeadFusion = DEFAULT_HEAD_FUSION,
                   batch_size: int = 8, cmap: str = "jet", alpha: float = 0.5,
                   progress: bool = True, channels: int = 16) -> ExplainResult:
    """Explains ``items`` = ``(path, true label or None)`` and writes the files into
    ``out_dir`` (see the module doc)."""
    if method in VIEW_METHODS:
        return _feature_views(predictor, items, method, target_class, layer, Path(out_dir),
                              batch_size, channels, progress)
    labels = predictor.labels
    target_index = _class_index(labels, target_class)
    pre = predictor.preprocessing
    explainer = Explainer(predictor.torch_model(), pre.input_size, method, layer,
                          head_fusion, discard_ratio)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = ExplainResult(explainer.method, explainer.layer, out)
    if target_index is not None and not explainer.class_specific:
        result.notes.append(f"{explainer.method} does not depend on the class: --class changes "
                            "the class reported, not the map (use gradcam for a class-specific "
                            "map).")
    used_stems: set[str] = set()
    empty_maps = 0
    for pending in readable_batches(list(items), lambda item: item[0], predictor.transform,
                                    batch_size, result.skipped, progress, "explaining",
                                    predictor.intensity):
        images = torch.stack([t for _, t in pending])
        targets = None if target_index is None else torch.full((len(pending),), target_index)
        batch = explainer(images, targets)
        probs = predictor.probabilities(batch.logits)  # calibrated, as `vitkit predict` reports
        predicted = probs.argmax(dim=1)
        for i, ((path, true), image) in enumerate(pending):
            stem = _unique_stem(Path(path).stem, used_stems)
            amap = batch.maps[i].numpy().astype(np.float32)
            empty_maps += int(not amap.any())
            overlay = overlay_map(model_view(image, pre.mean, pre.std), amap, cmap, alpha)
            overlay_file = save_png_atomic(overlay, out / f"{stem}.png")
            map_file = _save_npy(out / f"{stem}.npy", amap)
            target = int(batch.targets[i])
            result.explanations.append(Explanation(
                str(path), labels[int(predicted[i])], float(probs[i, predicted[i]]),
                labels[target], float(probs[i, target]), explainer.method, overlay_file,
                map_file, true))
    if empty_maps:
        result.notes.append(
            f"{empty_maps} of {len(result.explanations)} maps are empty: at "
            f"{explainer.layer or 'the explained layer'} no region raises the explained class's "
            "score (usual for an undertrained or unsure model, or for a class the image does not "
            "show); try --method gradcam++ or an earlier --layer.")
    write_json_atomic(out / EXPLANATIONS_FILE, result.records(relative_to=out))
    write_text_atomic(out / INDEX_FILE, render_index(result))
    return result


def _feature_views(predictor: Predictor, items: Sequence[tuple[Path | str, str | None]],
                   method: str, target_class: str | None, layer: str | None, out: Path,
                   batch_size: int, channels: int, progress: bool) -> ExplainResult:
    """``--method filters`` / ``features`` (see the module doc)."""
    if channels < 1:
        raise ConfigError(f"--channels must be at least 1, not {channels}.")
    _class_index(predictor.labels, target_class)  # an unknown class is still an error
    model = predictor.torch_model()
    pre = predictor.preprocessing
    if method == "filters":
        if layer is not None:
            raise ConfigError("--layer does not apply to --method filters (always the first "
                              "convolution); use it with gradcam, gradcam++ or features.")
        name, conv = first_conv(model)
        out.mkdir(parents=True, exist_ok=True)
        grid = filter_grid(conv.weight, max_filters=MAX_FILTERS)
        file = save_png_atomic(grid, out / FILTERS_FILE)
        result = ExplainResult(method, name, out)
        result.filters = FilterView(name, tuple(conv.weight.shape),
                                    min(MAX_FILTERS, int(conv.weight.shape[0])), file)
        if target_class is not None:
            result.notes.append("--class does not change the first layer's filters.")
    else:
        name = layer or default_feature_layer(model, pre.input_size)
        resolve_module(model, name)  # an unknown name fails before any image is read
        out.mkdir(parents=True, exist_ok=True)
        result = ExplainResult(method, name, out)
        if target_class is not None:
            result.notes.append("features show what a layer responds to, whatever the class: "
                                "--class changes nothing (use gradcam for a class-specific "
                                "map).")
        used_stems: set[str] = set()
        for pending in readable_batches(list(items), lambda item: item[0], predictor.transform,
                                        batch_size, result.skipped, progress, "features",
                                        predictor.intensity):
            images = torch.stack([t for _, t in pending])
            _, activations = layer_activations(model, images, name)
            for i, ((path, _true), image) in enumerate(pending):
                stem = _unique_stem(f"{Path(path).stem}_features", used_stems)
                chosen = top_channels(activations[i], channels)
                grid = activation_grid(model_view(image, pre.mean, pre.std), activations[i],
                                       chosen)
                file = save_png_atomic(grid, out / f"{stem}.png")
                result.features.append(FeatureView(str(path), name, chosen, file))
    write_json_atomic(out / EXPLANATIONS_FILE, result.records(relative_to=out))
    write_text_atomic(out / INDEX_FILE, render_index(result))
    return result


def explain_examples_step(context: TrustContext) -> None:
    """Trust step: explains ``config.trust.explain_examples`` validation images into
    ``run_dir/explanations/`` (mistakes first, up to half, then correct ones spread over the
    split), with their true labels.

    Raises:
        VitkitError: No validation image to explain.
    """
    embeddings = context.embeddings("val")
    if len(embeddings) == 0 or embeddings.targets is None:
        raise ConfigError("no validation images to explain; add a val split (or raise "
                          "val_fraction) to get explanation examples in the report.")
    labels = context.predictor.labels
    chosen = pick_examples(embeddings.logits.argmax(dim=1), embeddings.targets,
                           context.config.trust.explain_examples)
    items = [(embeddings.paths[i], labels[int(embeddings.targets[i])]) for i in chosen]
    result = explain_images(context.predictor, items, out_dir=context.run_dir / RUN_SUBDIR,
                            batch_size=min(context.config.batch_size, 16), progress=False)
    if context.progress:
        where = f", layer {result.layer}" if result.layer else ""
        stderr_console.print(f"explanations: {len(result.explanations)} validation images "
                             f"({result.method}{where}) in {result.out_dir}", highlight=False)


def pick_examples(predicted: torch.Tensor, targets: torch.Tensor, count: int) -> list[int]:
    """Indices of up to ``count`` images: mistakes first (at most half, unless there are too
    few correct ones), then correct predictions spread evenly over the list."""
    wrong = [i for i in range(len(targets)) if predicted[i] != targets[i]]
    right = [i for i in range(len(targets)) if predicted[i] == targets[i]]
    n_wrong = min(len(wrong), max(count // 2, count - len(right)))
    n_right = min(len(right), count - n_wrong)
    spread = [right[int(k * len(right) / n_right)] for k in range(n_right)] if n_right else []
    return wrong[:n_wrong] + spread


def render_index(result: ExplainResult) -> str:
    """A small self-describing HTML page: one figure per overlay, files referenced beside it."""
    figures = []
    for e in result.explanations:
        verdict = "" if e.true is None else ("correct" if e.true == e.label else "wrong")
        true_line = f"<span>true: {html.escape(e.true)}</span>" if e.true is not None else ""
        verdict_line = f'<span class="verdict">{verdict}</span>' if verdict else ""
        figures.append(
            f'<figure class="prediction {verdict}"><div class="thumb">'
            f'<img src="{html.escape(e.overlay.name)}" alt="{html.escape(e.path)}"></div>'
            f"<figcaption>{verdict_line}<span>predicted: <b>{html.escape(e.label)}</b> "
            f"{e.score:.2f}</span><span>explains: {html.escape(e.target)}</span>{true_line}"
            f'<span class="path">{html.escape(Path(e.path).name)}</span></figcaption></figure>')
    skipped = "".join(f"<li><code>{html.escape(s.path)}</code>: {html.escape(s.error)}</li>"
                      for s in result.skipped)
    figures += _view_figures(result)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.notes)
    layer = f", layer <code>{html.escape(result.layer)}</code>" if result.layer else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>vitkit explanations</title><style>{CSS}</style></head><body>"
        '<main class="page"><header class="masthead"><div class="brand">vitkit</div>'
        f"<h1>Explanations</h1><p class=\"facts\">method <code>{html.escape(result.method)}"
        f"</code>{layer}; {_count(result)}</p></header>"
        + (f'<div class="notice"><ul>{notes}</ul></div>' if notes else "")
        + f'<section class="card"><div class="grid">{"".join(figures)}</div></section>'
        + (f'<section class="card"><h2>Skipped</h2><ul>{skipped}</ul></section>'
           if skipped else "")
        + "</main></body></html>\n")


def _view_figures(result: ExplainResult) -> list[str]:
    """Figures for the feature views: the filter grid, one grid of channels per image."""
    figures = []
    if result.filters is not None:
        f = result.filters
        size = "x".join(str(n) for n in f.shape[2:])
        figures.append(
            f'<figure class="prediction"><div class="thumb"><img src="'
            f'{html.escape(f.overlay.name)}" alt="first-layer filters"></div><figcaption>'
            f"<span><code>{html.escape(f.layer)}</code>: {f.shown} of {f.shape[0]} filters, "
            f"{size}, {f.shape[1]} input channels</span></figcaption></figure>")
    for v in result.features:
        shown = ", ".join(str(c) for c in v.channels)
        figures.append(
            f'<figure class="prediction"><div class="thumb"><img src="'
            f'{html.escape(v.overlay.name)}" alt="{html.escape(v.path)}"></div><figcaption>'
            f"<span>strongest channels: {html.escape(shown)}</span>"
            f'<span class="path">{html.escape(Path(v.path).name)}</span></figcaption></figure>')
    return figures


def _count(result: ExplainResult) -> str:
    if result.filters is not None:
        return f"{result.filters.shown} filters"
    return f"{len(result.explanations) + len(result.features)} images"


def _class_index(labels: Sequence[str], target_class: str | None) -> int | None:
    if target_class is None:
        return None
    if target_class not in labels:
        raise ConfigError(f"unknown class {target_class!r}; the model's classes are: "
                          f"{', '.join(labels)}.")
    return list(labels).index(target_class)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _unique_stem(stem: str, used: set[str]) -> str:
    """A file-name-safe stem not used before in this run (``name``, ``name-2``, …)."""
    base = _UNSAFE.sub("_", stem).strip("._") or "image"
    candidate, n = base, 1
    while candidate.lower() in used:  # case-insensitive file systems
        n += 1
        candidate = f"{base}-{n}"
    used.add(candidate.lower())
    return candidate


def _save_npy(path: Path, array: np.ndarray) -> Path:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return write_bytes_atomic(path, buffer.getvalue())


def _device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, not {device!r}.")
    return device
