"""Variants of a bundle's model: the same classifier on another runtime or precision.

A variant is an entry in ``vitkit.json`` (``variants: [...]``) plus, for exported runtimes,
files under ``BUNDLE/variants/``. Each entry records what was measured when it was made
(parity with PyTorch, accuracy on the validation images), so ``bench`` and ``serve`` choose
with evidence. Four torch variants need no file (they are made from the weights when loaded)
and are always listed: ``torch-fp32``, ``torch-bf16``, ``torch-fp16`` and
``torch-dynamic-int8``.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vitkit.bundle import (
    META_FILE,
    BundleMeta,
    bundle_file,
    describe_validation_error,
    read_meta,
    update_meta,
)
from vitkit.errors import BundleError

RuntimeName = Literal["torch", "torchscript", "onnxruntime", "openvino"]
Precision = Literal["fp32", "bf16", "fp16", "int8"]
VARIANTS_DIR = "variants"
# The reference every other variant is measured against, and the default when a bundle has
# no measured choice (``vitkit optimize`` records one as ``default_variant``).
REFERENCE_VARIANT = "torch-fp32"


class Variant(BaseModel):
    """One way to run the bundle's model, and what it cost."""

    model_config = ConfigDict(extra="allow")

    name: str
    runtime: RuntimeName
    precision: Precision
    file: str | None = None  # relative to the bundle; None for torch variants built on load
    created: str | None = None
    parity: dict[str, Any] | None = None  # {"max_abs_diff", "top1_agreement", "n_images"}
    accuracy: float | None = None  # on the validation images, in [0, 1]
    accuracy_drop: float | None = None  # points (percentage) below torch-fp32
    options: dict[str, Any] = Field(default_factory=dict)  # e.g. opset, quantization recipe

    @property
    def builtin(self) -> bool:
        return self.file is None and self.runtime == "torch"


BUILTIN_VARIANTS: tuple[Variant, ...] = (
    Variant(name="torch-fp32", runtime="torch", precision="fp32"),
    Variant(name="torch-bf16", runtime="torch", precision="bf16"),
    Variant(name="torch-fp16", runtime="torch", precision="fp16"),
    Variant(name="torch-dynamic-int8", runtime="torch", precision="int8",
            options={"quantization": "dynamic", "modules": ["Linear"]}),
)


def list_variants(meta: BundleMeta, bundle: Path | str = "") -> list[Variant]:
    """Built-in torch variants first, then the recorded ones (a recorded entry with a
    built-in name replaces it, e.g. to carry a measured accuracy).

    Raises:
        BundleError: A recorded entry is not a valid variant (an edited ``vitkit.json``).
    """
    recorded = []
    for index, entry in enumerate(meta.variants):
        try:
            recorded.append(Variant.model_validate(entry))
        except ValidationError as exc:
            where = Path(bundle) / META_FILE if bundle else META_FILE
            raise BundleError(
                f"{where}: variants[{index}] ({entry.get('name', 'no name')!r}) is not a valid "
                f"variant: {describe_validation_error(exc)}. Restore {META_FILE}, or remove the "
                "entry and make the variant again (`vitkit export`, `vitkit quantize`)."
            ) from exc
    names = {v.name for v in recorded}
    return [v for v in BUILTIN_VARIANTS if v.name not in names] + recorded


def default_variant_name(meta: BundleMeta) -> str:
    """The variant the bundle runs when none is named: the one ``vitkit optimize`` chose by
    measurement (``default_variant`` in ``vitkit.json``), else ``torch-fp32``."""
    return (meta.model_extra or {}).get("default_variant") or REFERENCE_VARIANT


def find_variant(meta: BundleMeta, name: str | None, bundle: Path | str = "") -> Variant:
    """The variant called ``name`` (``None``: the bundle's default, see
    :func:`default_variant_name`); a clear error listing the available ones otherwise."""
    wanted = name or default_variant_name(meta)
    variants = list_variants(meta, bundle)
    for variant in variants:
        if variant.name == wanted:
            return variant
    available = ", ".join(v.name for v in variants)
    raise BundleError(f"{bundle or 'the bundle'} has no variant {wanted!r}. Available: "
                      f"{available}. Make one with `vitkit export` or `vitkit quantize`.")


def variant_path(bundle: Path | str, variant: Variant) -> Path:
    """The variant's main file, resolved inside the bundle folder (see
    :func:`~vitkit.bundle.bundle_file`: ``../x``, absolute paths and symlinks leading out are
    refused); a clear error when it is missing."""
    if variant.file is None:
        raise BundleError(f"variant {variant.name} has no file")
    path = bundle_file(bundle, variant.file, f"file of variant {variant.name}")
    if not path.is_file():
        raise BundleError(f"{bundle}: the file {variant.file} of variant {variant.name} is "
                          "missing; export it again (`vitkit export`).")
    return path


def variants_dir(bundle: Path | str) -> Path:
    """``BUNDLE/variants``, created if needed."""
    folder = Path(bundle) / VARIANTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def record_variant(bundle: Path | str, variant: Variant) -> BundleMeta:
    """Adds (or replaces, by name) a variant entry in ``vitkit.json``, atomically."""
    meta = read_meta(bundle)
    stamped = variant.model_copy(update={
        "created": variant.created or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")})
    entries = [e for e in meta.variants if e.get("name") != variant.name]
    entries.append(stamped.model_dump(mode="json"))
    return update_meta(bundle, variants=entries)


def remove_variant(bundle: Path | str, name: str) -> BundleMeta:
    """Drops a variant entry (its files are left for the caller to delete); when that was the
    bundle's default and no built-in variant has its name, torch-fp32 is the default again."""
    meta = read_meta(bundle)
    changes: dict[str, Any] = {
        "variants": [e for e in meta.variants if e.get("name") != name]}
    builtin = {v.name for v in BUILTIN_VARIANTS}
    if default_variant_name(meta) == name and name not in builtin:
        changes["default_variant"] = None
    return update_meta(bundle, **changes)
