"""The bundle: a directory holding a model and everything needed to use it.

This is the only module that knows the file layout::

    my-model/
      vitkit.json          schema_version, task, backbone, labels, preprocessing, train, variants …
      model.safetensors    weights (no pickle anywhere)
      anomaly.safetensors  optional: a method's fitted tensors (memory bank, Gaussians, …)

Later stages (quantize, OOD, anomaly) add files and keys; readers keep keys they do not know.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from vitkit.atomic import atomic_path, file_mode, staged_dir, write_text_atomic
from vitkit.errors import BundleError
from vitkit.version import __version__

SCHEMA_VERSION = 1
META_FILE = "vitkit.json"
WEIGHTS_FILE = "model.safetensors"


class BundleMeta(BaseModel):
    """The contents of ``vitkit.json``."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    task: str = "classify"
    vitkit_version: str = ""
    backbone: dict[str, Any]
    labels: list[str]
    preprocessing: dict[str, Any]
    train: dict[str, Any] = Field(default_factory=dict)
    variants: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("labels")
    @classmethod
    def _labels_distinct(cls, labels: list[str]) -> list[str]:
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"labels must be distinct; repeated: {', '.join(repeated)}")
        return labels


def save_bundle(path: Path, model: nn.Module | None, meta: BundleMeta,
                tensors: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> Path:
    """Writes a bundle atomically: a half-written bundle never replaces a good one.

    Args:
        path: The bundle folder; an existing bundle there is replaced as a whole.
        model: Module whose weights go to ``model.safetensors``; None for methods without
            network weights (e.g. the patch-statistics anomaly baseline).
        meta: The contents of ``vitkit.json``.
        tensors: Extra safetensors files, file name -> tensors (e.g. ``anomaly.safetensors``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = meta.model_copy(update={"vitkit_version": __version__})
    with staged_dir(path) as staging:
        if model is not None:
            save_weights(model, staging / WEIGHTS_FILE)
        for name, named_tensors in (tensors or {}).items():
            save_file({k: v.detach().cpu().contiguous() for k, v in named_tensors.items()},
                      str(staging / name))
        (staging / META_FILE).write_text(meta.model_dump_json(indent=2) + "\n")
        for file in staging.iterdir():  # safetensors writes its files 0600
            os.chmod(file, file_mode())
    return path


def save_weights(model: nn.Module, path: Path) -> None:
    """``safetensors.save_model``, also for channels-last models (safetensors needs contiguous)."""
    channels_last = any(
        p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
        and not p.is_contiguous() for p in model.parameters()
    )
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    try:
        save_model(model, str(path))
    finally:
        if channels_last:
            model.to(memory_format=torch.channels_last)


def read_meta(path: BundleSource) -> BundleMeta:
    """Reads and validates ``vitkit.json``, checking the schema version (from disk, every
    time: code that reads a bundle once and passes it on uses :class:`Bundle`)."""
    return _read_meta(Path(path))[0]


def _read_meta(path: Path) -> tuple[BundleMeta, bytes]:
    """The validated ``vitkit.json`` of ``path`` and the bytes it was read from."""
    meta_path = path / META_FILE
    if not meta_path.is_file():
        what = "does not exist" if not path.exists() else f"has no {META_FILE}"
        raise BundleError(
            f"{path} {what}: it is not a vitkit bundle. Give the folder that `vitkit train` "
            "wrote (it holds vitkit.json and model.safetensors)."
        )
    restore = (f"Restore {META_FILE} from a copy of the bundle, or write the bundle again "
               "(`vitkit train`, `vitkit anomaly fit`).")
    try:
        data = meta_path.read_bytes()
        raw = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, OSError) as exc:  # JSONDecodeError, UnicodeDecodeError, NaN, EACCES
        raise BundleError(f"{meta_path} is not valid JSON ({_first_line(exc)}); the bundle "
                          f"is damaged. {restore}") from exc
    if not isinstance(raw, dict):
        raise BundleError(f"{meta_path} holds a JSON {type(raw).__name__}, not an object; the "
                          f"bundle is damaged. {restore}")
    version = raw.get("schema_version")
    # bool is an int to Python; true is no schema version.
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise BundleError(
            f"{path} has bundle schema version {version!r}; this vitkit reads version "
            f"{SCHEMA_VERSION} and older. Upgrade vitkit (pip install -U vitkit)."
        )
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(
            f"{meta_path} has bundle schema version {version!r}, which no vitkit writes "
            f"(versions are whole numbers from 1; this vitkit reads up to {SCHEMA_VERSION}); "
            f"the file was edited or is not vitkit's. {restore}"
        )
    try:
        return BundleMeta.model_validate(raw), data
    except ValidationError as exc:
        raise BundleError(f"{meta_path} is incomplete or damaged: "
                          f"{describe_validation_error(exc)}. {restore}") from exc


def describe_validation_error(exc: ValidationError, limit: int = 4) -> str:
    """pydantic's errors as one line: ``labels: Input should be a valid list; ...``."""
    parts = []
    for error in exc.errors()[:limit]:
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        parts.append(f"{where}: {error['msg']}")
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def bundle_file(bundle: BundleSource, relative: object, what: str = "file") -> Path:
    """A file named in ``vitkit.json`` (a variant's ``file``, an extra safetensors file),
    resolved inside the bundle folder.

    A bundle is data that may come from elsewhere: an entry such as ``../x``, an absolute
    path or a symlink leading out of the folder would make vitkit open (for TorchScript:
    execute) a file the bundle does not contain, so each is refused.

    Raises:
        BundleError: The entry is not a relative path inside the bundle folder.
    """
    bundle = Path(bundle)
    text = relative if isinstance(relative, str) else None
    problem = ""
    if not text or "\x00" in text:
        problem = "is not a file name"
    elif Path(text).is_absolute() or Path(text).drive:
        problem = "is an absolute path"
    else:
        root = bundle.resolve()
        target = (bundle / text).resolve()
        if target == root or root not in target.parents:
            problem = "leads outside the bundle folder"
    if problem:
        raise BundleError(
            f"{bundle / META_FILE}: the {what} {relative!r} {problem}. A bundle's files must "
            f"lie inside its folder ({bundle}); vitkit never opens a file outside it. Restore "
            f"{META_FILE} or write the {what} again (`vitkit export`, `vitkit quantize`)."
        )
    return bundle / str(relative)


class Bundle:
    """A bundle read once: its folder, its validated ``vitkit.json``, and cached readers of
    the files it names, passed down the layers instead of a path each layer reads again.

    ``Bundle.open`` takes a path (the public entry points — CLI, :func:`vitkit.load`, the
    serve config — still take one) or a Bundle (returned as is). A Bundle is ``os.PathLike``
    and prints as its folder, so code that only opens files by path, or names the bundle in
    a message, takes it unchanged. Its ``meta`` is what was read when it was opened: code
    that changes the bundle (:func:`update_meta`, :func:`save_tensors`) writes through the
    path and opens it again for a fresh view.
    """

    def __init__(self, path: Path, meta: BundleMeta, meta_bytes: bytes = b"") -> None:
        self.path = path
        self.meta = meta
        self._meta_bytes = meta_bytes
        self._tensors: dict[str, dict[str, torch.Tensor]] = {}

    @classmethod
    def open(cls, source: BundleSource) -> Bundle:
        """The bundle at ``source`` (read and validated now), or ``source`` if it is one."""
        if isinstance(source, Bundle):
            return source
        path = Path(source)
        return cls(path, *_read_meta(path))

    def file(self, name: object, what: str = "file") -> Path:
        """A file named in ``vitkit.json``, resolved inside the folder (see
        :func:`bundle_file`: anything leading outside is refused)."""
        return bundle_file(self.path, name, what)

    def tensors(self, filename: str) -> dict[str, torch.Tensor]:
        """One of the extra safetensors files (see :func:`load_tensors`), read once."""
        if filename not in self._tensors:
            self._tensors[filename] = load_tensors(self.path, filename)
        return self._tensors[filename]

    @property
    def version(self) -> str:
        """A short hash of ``vitkit.json`` as read: it changes with every rewritten bundle."""
        return hashlib.sha256(self._meta_bytes).hexdigest()[:12]

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"Bundle({str(self.path)!r}, task={self.meta.task!r})"


BundleSource = Bundle | Path | str
"""Where a bundle is accepted: an opened :class:`Bundle` or the path of its folder."""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def load_weights(path: BundleSource, model: nn.Module) -> None:
    """Loads a bundle's weights (safetensors only) into a rebuilt model."""
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise BundleError(f"{path} has no {WEIGHTS_FILE}; the bundle is incomplete. Copy the "
                          "whole bundle folder again, or train again.")
    try:
        load_model(model, str(weights))
    except (SafetensorError, OSError) as exc:
        raise BundleError(
            f"{weights} is damaged or truncated ({_first_line(exc)}). Copy the bundle again "
            "from where it was written, or train again."
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any mismatch means a damaged or foreign bundle
        detail = "; ".join(line.strip() for line in str(exc).splitlines()[1:4]) or str(exc)
        raise BundleError(
            f"the weights in {weights} do not match the recorded architecture in {META_FILE} "
            f"({detail[:400]}). {META_FILE} was edited or belongs to other weights: restore "
            "it from the same bundle, or train again."
        ) from exc


def load_tensors(path: BundleSource, filename: str) -> dict[str, torch.Tensor]:
    """Reads one of a bundle's extra safetensors files (see :func:`save_bundle`)."""
    file = bundle_file(path, filename, "tensor file")
    if not file.is_file():
        raise BundleError(f"{path} has no {filename}; the bundle is incomplete. Fit it again.")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{file} is damaged or truncated ({_first_line(exc)}); fit the "
                          "bundle again.") from exc


def save_tensors(path: Path | str, filename: str, tensors: Mapping[str, torch.Tensor]) -> Path:
    """Adds (or replaces) one extra safetensors file in an existing bundle, atomically: a
    reader sees the old file or the new one, never half of one. Record what it holds in
    ``vitkit.json`` with :func:`update_meta` afterwards."""
    path = Path(path)
    read_meta(path)  # refuse to write into something that is not a bundle
    with atomic_path(path / filename) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    return path / filename


def update_meta(path: Path | str, **changes: Any) -> BundleMeta:
    """Rewrites ``vitkit.json`` with some keys changed (atomically)."""
    path = Path(path)
    meta = read_meta(path).model_copy(update=changes)
    write_json_atomic(path / META_FILE, json.loads(meta.model_dump_json()))
    return meta


def write_json_atomic(path: Path, data: Any) -> None:
    """Writes JSON through a temporary file and a rename, so readers never see half a file."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
