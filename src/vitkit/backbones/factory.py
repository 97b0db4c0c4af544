"""``create(name, weights=...)``: a classifier from a timm name, a Hugging Face id or a folder.

Names:
    ``resnet18``, ``deit_tiny_patch16_224``, … any timm model name.
    ``hf:google/vit-base-patch16-224``: a Hugging Face image-classification model id.
    ``/path/to/folder``: a local Hugging Face model folder (has ``config.json``).

Weights:
    ``"auto"``: the offline registry when its package is installed, else the hub (timm's or
    Hugging Face's, using their caches). ``"none"``: random initialisation. A file path:
    ``.safetensors`` or a PyTorch state dict (read with ``weights_only=True``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch

from vitkit.backbones.model import ImageClassifier
from vitkit.backbones.weights import load_into, offline_weights, read_state_dict
from vitkit.data.transforms import Preprocessing
from vitkit.errors import WeightsError

_HF_PREFIX = "hf:"


@dataclass
class BackboneSpec:
    """Everything needed to rebuild the architecture without a hub (stored in bundles)."""

    name: str
    source: str  # "timm" | "hf"
    weights: str  # where the initial weights came from, for the record
    hf_config: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "source": self.source, "weights": self.weights}
        if self.hf_config is not None:
            out["hf_config"] = self.hf_config
        if self.extra.get("timm_kwargs"):
            out["timm_kwargs"] = dict(self.extra["timm_kwargs"])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackboneSpec:
        return cls(
            name=data["name"],
            source=data["source"],
            weights=data.get("weights", "unknown"),
            hf_config=data.get("hf_config"),
            extra={"timm_kwargs": dict(data["timm_kwargs"])} if data.get("timm_kwargs") else {},
        )


@dataclass
class CreatedModel:
    model: ImageClassifier
    spec: BackboneSpec
    preprocessing: Preprocessing
    new_head: bool = True  # False only when the given weights already held a fitting head

    def zero_new_head(self) -> None:
        """Starts a new head at zero: the first logits are uniform instead of large and random.

        With pretrained features of norm ~15, a randomly initialised head starts with large,
        confidently wrong logits; from zero a head-only stage reaches a linear probe's accuracy
        in one epoch (measured: hymenoptera with efficientnet_lite0, 0.95 vs 0.70).
        """
        if not self.new_head:
            return
        with torch.no_grad():
            for param in self.model.head.parameters():
                param.zero_()


def create(name: str, num_classes: int, weights: str = "auto",
           timm_kwargs: dict[str, Any] | None = None) -> CreatedModel:
    """Creates a classifier with a fresh ``num_classes`` head on a (pre)trained body.

    ``timm_kwargs`` go to ``timm.create_model`` on top of the offline registry's own (e.g.
    ``mlp_ratio`` of a pruned ViT) and are recorded in the spec, so ``rebuild`` makes the same
    architecture.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if name.startswith(_HF_PREFIX) or _is_hf_folder(name):
        if timm_kwargs:
            raise WeightsError("timm_kwargs apply to timm models, not Hugging Face ones.")
        return _create_hf(name, num_classes, weights)
    return _create_timm(name, num_classes, weights, dict(timm_kwargs or {}))


def check_model_name(name: str) -> None:
    """Refuses a model name that cannot be created, with the closest names, before any slow work.

    Hugging Face ids and local folders pass: only loading them can tell.

    Raises:
        WeightsError: Not a timm model name, an ``hf:`` id or a Hugging Face folder.
    """
    if name.startswith(_HF_PREFIX) or _is_hf_folder(name) or timm.is_model(name):
        return
    if Path(name).exists():
        raise WeightsError(f"{name} is a path but not a Hugging Face model folder (it has no "
                           "config.json). Give a timm name, hf:<org>/<model>, or a folder saved "
                           "with save_pretrained().")
    hint = ", ".join(similar_model_names(name))
    raise WeightsError(
        f"unknown model '{name}'. Use a timm model name (see timm.list_models()), "
        f"'hf:<org>/<model>' for Hugging Face, or a local Hugging Face folder."
        + (f" Did you mean: {hint}?" if hint else "")
    )


def similar_model_names(name: str, limit: int = 8) -> list[str]:
    """timm names close to ``name``: whole-name similarity first (``resnet5`` → ``resnet50``),
    then names that contain it, then names of the same family (the part before ``_``)."""
    import difflib

    names = timm.list_models()
    wanted = name.lower()
    close = difflib.get_close_matches(wanted, names, n=limit, cutoff=0.6)
    containing = sorted((n for n in names if wanted in n), key=len)
    family = wanted.split("_")[0]  # "resnet_nonexistent": other resnets
    same_family = sorted((n for n in names if n.startswith(family)), key=len) if family else []
    return list(dict.fromkeys(close + containing + same_family))[:limit]


def rebuild(spec: BackboneSpec, num_classes: int) -> ImageClassifier:
    """Rebuilds the architecture of a bundle (weights are loaded by the caller)."""
    if spec.source == "timm":
        model = timm.create_model(spec.name, pretrained=False, num_classes=num_classes,
                                  **spec.extra.get("timm_kwargs", {}))
        return ImageClassifier(model, "timm")
    from transformers import AutoConfig, AutoModelForImageClassification

    config_dict = dict(spec.hf_config or {})
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    hf_model = AutoModelForImageClassification.from_config(config)
    return ImageClassifier(hf_model, "hf")


def _is_hf_folder(name: str) -> bool:
    path = Path(name)
    return path.is_dir() and (path / "config.json").is_file()


def _create_timm(name: str, num_classes: int, weights: str, extra_kwargs: dict[str, Any]
                 ) -> CreatedModel:
    check_model_name(name)
    source_note = weights
    new_head = True
    timm_kwargs: dict[str, Any] = dict(extra_kwargs)
    if weights == "auto" and (found := offline_weights(name)) is not None:
        path, entry = found
        timm_kwargs = {**entry.timm_kwargs, **extra_kwargs}
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **timm_kwargs)
        classifier = ImageClassifier(model, "timm")
        state = read_state_dict(path)
        if entry.adapt is not None:
            state = entry.adapt(state, model)
        result = load_into(
            model,
            state,
            classifier.head_parameter_names(),
            entry.note,
            match_by_order=entry.match_by_order,
        )
        new_head = result.head_missing
        source_note = f"offline:{entry.package}"
    elif weights == "auto":
        try:
            model = timm.create_model(name, pretrained=True, num_classes=num_classes,
                                      **timm_kwargs)
        except Exception as exc:  # noqa: BLE001 - network, hub and cache errors all land here
            raise WeightsError(
                f"could not get pretrained weights for '{name}' from the Hugging Face hub "
                f"({type(exc).__name__}: {str(exc)[:200]}). Without internet, pass "
                "--weights FILE (.safetensors or a PyTorch state dict) or --weights none to "
                "start from random weights."
            ) from exc
        source_note = "hub"
    else:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **timm_kwargs)
        if weights != "none":
            classifier = ImageClassifier(model, "timm")
            result = load_into(model, read_state_dict(Path(weights)),
                               classifier.head_parameter_names(), weights)
            new_head = result.head_missing
    data_config = dict(timm.data.resolve_data_config(model=model))
    if "img_size" in timm_kwargs:  # timm's config keeps the original size (518 for DINOv2)
        data_config["input_size"] = (3, timm_kwargs["img_size"], timm_kwargs["img_size"])
    return CreatedModel(
        model=ImageClassifier(model, "timm"),
        spec=BackboneSpec(name=name, source="timm", weights=source_note,
                          extra={"timm_kwargs": timm_kwargs} if timm_kwargs else {}),
        preprocessing=Preprocessing.from_timm_config(data_config),
        new_head=new_head,
    )


def _create_hf(name: str, num_classes: int, weights: str) -> CreatedModel:
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    model_id = name[len(_HF_PREFIX) :] if name.startswith(_HF_PREFIX) else name
    try:
        config = AutoConfig.from_pretrained(model_id)
        processor = AutoImageProcessor.from_pretrained(model_id)
    except OSError as exc:
        raise WeightsError(
            f"could not load the Hugging Face model '{model_id}' ({str(exc)[:200]}). Without "
            "internet, give a local Hugging Face folder (with config.json and weights) as --model, "
            "or pass --weights FILE."
        ) from exc
    config.num_labels = num_classes
    config.id2label = {i: str(i) for i in range(num_classes)}
    config.label2id = {str(i): i for i in range(num_classes)}
    if weights == "auto":
        hf_model = AutoModelForImageClassification.from_pretrained(
            model_id, config=config, ignore_mismatched_sizes=True
        )
        note = "hub" if name.startswith(_HF_PREFIX) else f"local:{model_id}"
        new_head = True
    else:
        hf_model = AutoModelForImageClassification.from_config(config)
        note = weights
        new_head = True
        if weights != "none":
            classifier = ImageClassifier(hf_model, "hf")
            result = load_into(hf_model, read_state_dict(Path(weights)),
                               classifier.head_parameter_names(), weights)
            new_head = result.head_missing
    config_dict = hf_model.config.to_dict()
    spec = BackboneSpec(name=name, source="hf", weights=note, hf_config=_jsonable(config_dict))
    return CreatedModel(ImageClassifier(hf_model, "hf"), spec, _hf_preprocessing(processor),
                        new_head=new_head)


def _hf_preprocessing(processor: Any) -> Preprocessing:
    size = _size_dict(getattr(processor, "size", None))
    crop = _size_dict(getattr(processor, "crop_size", None))
    if crop and getattr(processor, "do_center_crop", False):
        height, width = int(crop["height"]), int(crop["width"])
        shortest = size.get("shortest_edge")
        crop_pct = (height / shortest) if shortest else 1.0
        crop_mode = "center"
    elif "height" in size:
        height, width = int(size["height"]), int(size["width"])
        crop_pct, crop_mode = 1.0, "squash"
    else:
        height = width = int(size.get("shortest_edge", 224))
        crop_pct = float(getattr(processor, "crop_pct", None) or 0.875)
        crop_mode = "center"
    resample = getattr(processor, "resample", 3)
    interpolation = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(int(resample), "bilinear")
    return Preprocessing(
        input_size=(height, width),
        interpolation=interpolation,
        mean=tuple(float(v) for v in processor.image_mean),  # type: ignore[arg-type]
        std=tuple(float(v) for v in processor.image_std),  # type: ignore[arg-type]
        crop_pct=min(1.0, crop_pct),
        crop_mode=crop_mode,
    )


def _size_dict(value: Any) -> dict[str, int]:
    """A processor's ``size``/``crop_size`` as a plain dict without unset entries.

    transformers 4 stores a dict (or an int); transformers 5 a ``SizeDict`` dataclass, which is
    not a dict but iterates as (key, value) pairs of its set fields.
    """
    if value is None:
        return {}
    if isinstance(value, int | float):
        return {"height": int(value), "width": int(value)}
    return {str(k): int(v) for k, v in dict(value).items() if v is not None}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
