"""What `vitkit serve` runs: models, routes (A/B), the fallback chain, batching, limits, log.

One bundle path is the simplest config (one model, one route); a YAML file names several:

```yaml
models:
  - {name: lite0, bundle: runs/a/bundle}
  - {name: lite0-int8, bundle: runs/a/bundle, variant: openvino-int8}
  - {name: old, bundle: runs/old/bundle}
routes:
  default:                       # POST /v1/predict (or ?route=default)
    - {model: lite0-int8, weight: 0.9}
    - {model: old, weight: 0.1}
fallback: [lite0-int8, lite0]    # who answers when a model fails, times out or is not ready
batching: {max_batch: 32, max_wait_ms: 5, max_queue: 256, timeout_ms: 2000}
limits: {max_upload_mb: 10, max_pixels: 40000000, max_images: 16}
log: {url: sqlite:///serve-requests.db}
state_file: serve-state.json     # live versions and rollout history, kept across restarts
bundle_roots: [runs]             # where admin candidate bundles may come from
cors: {allow_origins: []}        # off unless origins are listed
```

Relative paths in a YAML file (bundles, ``state_file``, ``bundle_roots``, a SQLite log) are
read from the file's folder, so the config works from any current directory.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from vitkit.config import load_config
from vitkit.errors import ConfigError
from vitkit.serve.drift import DriftConfig
from vitkit.serve.update import UpdateConfig

DEFAULT_ROUTE = "default"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="the name clients and metrics use")
    bundle: str = Field(description="bundle folder: a classifier or an anomaly detector")
    variant: str | None = Field(None, description="variant that runs the model (default: "
                                "the bundle's default variant, chosen by `vitkit optimize`; "
                                "torch-fp32 when none was chosen)")


class Arm(_Strict):
    model: str
    weight: float = Field(1.0, gt=0, description="share of the route's traffic (normalised)")


class Batching(_Strict):
    max_batch: int = Field(32, ge=1, description="images per model call at most")
    max_wait_ms: float = Field(5.0, ge=0, description="how long the first image of a batch "
                               "waits for others")
    max_queue: int = Field(256, ge=1, description="images waiting per model; beyond: 503")
    timeout_ms: float = Field(10_000, gt=0, description="a model slower than this for a "
                              "request counts as failed and the fallback answers")


class Breaker(_Strict):
    failures: int = Field(5, ge=1, description="consecutive failures that open the circuit")
    cooldown_s: float = Field(10.0, gt=0, description="open this long, then one trial request")


class Limits(_Strict):
    max_upload_mb: float = Field(10.0, gt=0, description="request body size; beyond: 413")
    max_pixels: int = Field(40_000_000, gt=0, description="pixels per image; beyond: 413")
    max_images: int = Field(16, ge=1, description="images per request; beyond: 413")


class LogConfig(_Strict):
    url: str | None = Field("sqlite:///serve-requests.db", description="SQLAlchemy URL of the "
                            "request log (SQLite file or postgresql://…); null: no log")
    flush_ms: float = Field(200.0, gt=0, description="how often queued rows are written")
    max_memory_rows: int = Field(10_000, ge=1, description="rows held in memory while the "
                                 "database is away; beyond, they go to the spill file")
    spill_file: str | None = Field(None, description="where rows wait beyond max_memory_rows "
                                   "(default: beside a SQLite file, or "
                                   "vitkit-request-log-<hash>.spill.jsonl here)")


class Cors(_Strict):
    allow_origins: list[str] = Field(default_factory=list, description="origins allowed to "
                                     "call the API from a browser; empty: CORS off")
    allow_methods: list[str] = Field(default_factory=lambda: ["GET", "POST"])
    allow_headers: list[str] = Field(default_factory=lambda: ["Content-Type", "X-User-Id",
                                                              "X-Request-Id"])


class ServeConfig(_Strict):
    models: list[ModelSpec] = Field(min_length=1)
    routes: dict[str, list[Arm]] = Field(default_factory=dict)
    fallback: list[str] = Field(default_factory=list)
    batching: Batching = Batching()
    breaker: Breaker = Breaker()
    limits: Limits = Limits()
    log: LogConfig = LogConfig()
    rollout: UpdateConfig = Field(default_factory=UpdateConfig, description="how a candidate "
                                  "is checked, shadowed, canaried and promoted")
    drift: DriftConfig = DriftConfig()
    cors: Cors = Cors()
    access_log: bool = Field(True, description="one line per request on the vitkit.access "
                             "logger (client, method, path, status, ms, request id)")
    state_file: str | None = Field("serve-state.json", description="JSON file keeping each "
                                   "model's live version, rollback target and rollout history "
                                   "across restarts; null: kept in memory only")
    bundle_roots: list[str] = Field(default_factory=list, description="folders that admin "
                                    "candidate bundles must lie in; empty: candidates refused")
    admin_token_env: str = Field("VITKIT_ADMIN_TOKEN", description="environment variable "
                                 "holding the admin token; admin endpoints are off without one")
    admin_token_file: str | None = Field(None, description="file holding the admin token "
                                         "(first line), instead of the environment variable")

    def admin_token(self) -> str | None:
        """The admin token, or None (admin endpoints answer 403)."""
        import os

        if self.admin_token_file:
            try:
                token = Path(self.admin_token_file).read_text().strip().splitlines()[0]
            except (OSError, IndexError) as exc:
                raise ConfigError(f"cannot read the admin token from "
                                  f"{self.admin_token_file}: {exc}") from exc
            return token or None
        return os.environ.get(self.admin_token_env) or None

    @model_validator(mode="after")
    def _names_resolve(self) -> ServeConfig:
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique: {', '.join(duplicates)}")
        if not self.routes:
            self.routes = {DEFAULT_ROUTE: [Arm(model=names[0])]}
        for route, arms in self.routes.items():
            if not arms:
                raise ValueError(f"route '{route}' has no arms")
            for arm in arms:
                if arm.model not in names:
                    raise ValueError(f"route '{route}' names model '{arm.model}', which is not "
                                     f"among the models: {', '.join(names)}")
        for name in self.fallback:
            if name not in names:
                raise ValueError(f"fallback names model '{name}', which is not among the "
                                 f"models: {', '.join(names)}")
        if self.limits.max_images > self.batching.max_queue:
            raise ValueError(f"limits.max_images ({self.limits.max_images}) is above "
                             f"batching.max_queue ({self.batching.max_queue}): such a request "
                             "could never be queued; lower max_images or raise max_queue")
        return self

    def relative_to(self, folder: Path) -> ServeConfig:
        """A copy whose relative paths (bundles, state file, bundle roots, a SQLite log, the
        admin token file) are read from ``folder``."""

        def resolve(path: str) -> str:
            return path if Path(path).is_absolute() else str(folder / path)

        log = self.log
        if log.url and log.url.startswith("sqlite:///") and log.url != "sqlite:///:memory:" \
                and not Path(log.url[len("sqlite:///"):]).is_absolute():
            log = log.model_copy(update={"url": "sqlite:///" + resolve(
                log.url[len("sqlite:///"):])})
        if log.spill_file:
            log = log.model_copy(update={"spill_file": resolve(log.spill_file)})
        return self.model_copy(update={
            "models": [m.model_copy(update={"bundle": resolve(m.bundle)}) for m in self.models],
            "log": log,
            "state_file": resolve(self.state_file) if self.state_file else None,
            "bundle_roots": [resolve(r) for r in self.bundle_roots],
            "admin_token_file": (resolve(self.admin_token_file) if self.admin_token_file
                                 else None)})

    def model(self, name: str) -> ModelSpec:
        return next(m for m in self.models if m.name == name)


def serve_config(target: str | Path, variant: str | None = None) -> ServeConfig:
    """The config for ``vitkit serve TARGET``: a bundle folder served alone, or a YAML file.

    Raises:
        ConfigError: Neither a bundle folder nor a readable YAML config.
    """
    path = Path(target)
    if path.is_dir():
        if not (path / "vitkit.json").is_file():
            raise ConfigError(f"{path} is a folder but not a bundle (no vitkit.json); give a "
                              "bundle folder or a YAML serve config.")
        spec = {"name": _model_name(path), "bundle": str(path), "variant": variant}
        return load_config(ServeConfig, None, {"models": [spec]})
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; give a bundle folder or a YAML serve config.")
    if variant is not None:
        raise ConfigError("--variant applies to a single bundle; in a config, set `variant` on "
                          "each model.")
    try:
        yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is neither a bundle folder nor valid YAML: {exc}") from exc
    return load_config(ServeConfig, path, {}).relative_to(path.resolve().parent)


def _model_name(bundle: Path) -> str:
    """A bundle's name for clients: its folder, or the run folder for ``RUN/bundle``."""
    resolved = bundle.resolve()
    name = resolved.parent.name if resolved.name == "bundle" else resolved.name
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "-" for c in name).strip("-.")
    return cleaned or "model"
