"""Loading typed command configs from YAML, with typos rejected and a suggestion given."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ValidationError

from vitkit.atomic import write_text_atomic
from vitkit.errors import ConfigError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def load_config(cls: type[ConfigT], path: Path | None, overrides: dict[str, Any]) -> ConfigT:
    """Builds ``cls`` from defaults, then the YAML file, then command-line ``overrides``.

    ``overrides`` holds only the options the user actually gave (``None`` values are ignored),
    so a flag's default never hides a value from the file.
    """
    data: dict[str, Any] = {}
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of option names to values.")
        data.update(loaded)
    for key, value in overrides.items():
        if isinstance(value, dict):  # a section: only the keys given, over the file's
            given = {k: v for k, v in value.items() if v is not None}
            if given:
                data[key] = {**(data.get(key) or {}), **given}
        elif value is not None:
            data[key] = value
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(cls, exc, path)) from None


def _explain(cls: type[BaseModel], exc: ValidationError, path: Path | None) -> str:
    lines = [f"invalid configuration{f' in {path}' if path else ''}:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            known = _known_keys(cls, err["loc"][:-1])
            close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else f" Known keys: {', '.join(known)}."
            lines.append(f"  unknown option '{where}'.{hint}")
        else:
            lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def _known_keys(cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    model: Any = cls
    for part in loc:
        if not isinstance(part, str) or not hasattr(model, "model_fields"):
            # an item of a list or dict section: the model of its items
            model = next((a for a in reversed(get_args(model)) if hasattr(a, "model_fields")),
                         model)
            if not isinstance(part, str):
                continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
        if not hasattr(model, "model_fields"):  # an optional section: `Section | None`
            model = next((a for a in get_args(model) if hasattr(a, "model_fields")), model)
    return list(getattr(model, "model_fields", {}))


def dump_config(config: BaseModel, path: Path) -> None:
    """Saves the resolved config as YAML (it can be passed back with ``--config``), whole or
    not at all: a run killed while saving keeps the config it had (``--resume`` reads it)."""
    write_text_atomic(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
