"""The same application on Ray Serve: replicas and autoscaling from Ray (extra ``vitkit[ray]``).

Each replica builds the vitkit app (FastAPI ingress) from the config at start-up, so it loads
and warms its own models and keeps its own micro-batcher: the answers are the single-process
server's, and Ray spreads requests over replicas and scales their number. Batching stays the
app's own (not ``@serve.batch``): one batcher in both deployments keeps timeouts, fallback and
metrics identical.

    vitkit serve BUNDLE|CONFIG --ray --replicas 2
    serve run vitkit.serve.ray:build target=runs/a/bundle replicas=2
"""

from __future__ import annotations

from typing import Any

from vitkit.errors import VitkitError
from vitkit.serve.config import ServeConfig, serve_config


def _serve() -> Any:
    try:
        from ray import serve
    except ImportError as exc:
        raise VitkitError("Ray Serve is not installed: pip install 'vitkit[ray]'.") from exc
    return serve


def deployment(config: ServeConfig, replicas: int = 1, max_replicas: int | None = None,
               cpus_per_replica: float = 1.0) -> Any:
    """A bound Ray Serve application of ``config``: ``replicas`` replicas, or autoscaling
    from ``replicas`` up to ``max_replicas``."""
    serve = _serve()
    from vitkit.serve.app import create_app

    @serve.ingress()
    class VitkitReplica:
        def __init__(self, config_json: dict[str, Any]) -> None:
            self.config = ServeConfig.model_validate(config_json)

        def __serve_build_asgi_app__(self) -> Any:
            return create_app(self.config)

    options: dict[str, Any] = {"ray_actor_options": {"num_cpus": cpus_per_replica},
                               "name": "vitkit"}
    if max_replicas is not None and max_replicas > replicas:
        options["autoscaling_config"] = {"min_replicas": replicas,
                                         "max_replicas": max_replicas}
    else:
        options["num_replicas"] = replicas
    return serve.deployment(**options)(VitkitReplica).bind(config.model_dump(mode="json"))


def build(args: dict[str, str]) -> Any:
    """``serve run vitkit.serve.ray:build target=BUNDLE|CONFIG [replicas=N] [variant=NAME]``."""
    if "target" not in args:
        raise VitkitError("give target=BUNDLE or target=CONFIG.yaml")
    config = serve_config(args["target"], args.get("variant"))
    max_replicas = int(args["max_replicas"]) if "max_replicas" in args else None
    return deployment(config, int(args.get("replicas", 1)), max_replicas)


def run(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1,
        max_replicas: int | None = None, blocking: bool = True) -> None:
    """Starts a local Ray (or joins ``RAY_ADDRESS``) and serves ``config`` on host:port."""
    serve = _serve()
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(deployment(config, replicas, max_replicas), name="vitkit", route_prefix="/",
              blocking=blocking)
