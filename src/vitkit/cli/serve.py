"""`vitkit serve BUNDLE|CONFIG` and `vitkit serve ab-report LOG`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from vitkit.cli.common import JsonOpt, app, print_json
from vitkit.console import stderr_console
from vitkit.errors import VitkitError


class _ServeGroup(TyperGroup):
    """``vitkit serve TARGET`` runs the server; ``vitkit serve ab-report …`` is a subcommand."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


serve_app = typer.Typer(cls=_ServeGroup, no_args_is_help=True,
                        help="Serve bundles over HTTP (FastAPI + uvicorn): `vitkit serve "
                             "BUNDLE|CONFIG`; `vitkit serve ab-report LOG` reads the request "
                             "log.")
app.add_typer(serve_app, name="serve")


def _require_serve() -> None:
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import sqlalchemy  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise VitkitError(f"serving needs the serve extra ({exc.name} is missing): pip "
                          "install 'vitkit[serve]'.") from exc


@serve_app.command("run")
def serve_run(
    target: Annotated[str, typer.Argument(help="A bundle folder (served alone) or a YAML serve "
                                          "config naming models, routes, fallback, limits.")],
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes the server to "
                                      "the network. (default: 127.0.0.1)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="(default: 8000)")] = 8000,
    variant: Annotated[str | None, typer.Option(
        help="Variant of a single bundle (see `vitkit bench`). (default: torch-fp32)")] = None,
    log_db: Annotated[str | None, typer.Option(
        "--log-db", help="Request log: a SQLAlchemy URL (sqlite:///file.db, postgresql://…) "
                         "or 'none'. (default: sqlite:///serve-requests.db)")] = None,
    ray: Annotated[bool, typer.Option(
        "--ray", help="Run on Ray Serve (extra vitkit[ray]): a local Ray, or the cluster in "
                      "RAY_ADDRESS.")] = False,
    replicas: Annotated[int, typer.Option(min=1, help="Ray replicas. (default: 1)")] = 1,
    max_replicas: Annotated[int | None, typer.Option(
        min=1, help="Autoscale Ray replicas from --replicas up to this.")] = None,
    bundle_root: Annotated[list[str] | None, typer.Option(
        "--bundle-root", help="A folder admin candidate bundles may come from (repeat for "
                              "several); added to the config's bundle_roots. (default: none: "
                              "`vitkit serve deploy` is refused)")] = None,
    state_file: Annotated[str | None, typer.Option(
        help="JSON file keeping promotions and rollout history across restarts, or 'none'. "
             "(default: serve-state.json)")] = None,
) -> None:
    """Serve a bundle (classifier or anomaly detector) or several from a config: POST
    /v1/predict, /v1/feedback; GET /v1/models, /v1/ab, /livez, /readyz, /metrics.
    Micro-batching, sticky A/B routes, fallback with circuit breakers, a request log. Stops
    gracefully on SIGTERM (in-flight requests finish).

    One process serves (no --workers): batching, breakers, rollouts and the log writer are
    per-process state. Scale out with --ray --replicas N, or several instances behind a load
    balancer."""
    _require_serve()
    from vitkit.serve.config import serve_config
    from vitkit.serve.server import serve_forever

    config = serve_config(target, variant)
    if log_db is not None:
        url = None if log_db == "none" else log_db
        config = config.model_copy(update={"log": config.log.model_copy(update={"url": url})})
    if bundle_root:
        roots = [*config.bundle_roots, *(str(Path(r).resolve()) for r in bundle_root)]
        config = config.model_copy(update={"bundle_roots": roots})
    if state_file is not None:
        config = config.model_copy(update={"state_file": None if state_file == "none"
                                           else state_file})
    names = ", ".join(m.name for m in config.models)
    stderr_console.print(f"serving {names} on http://{host}:{port} (ready at /readyz once the "
                         "models are loaded and warmed)", highlight=False)
    if ray:
        from vitkit.serve.ray import run

        run(config, host, port, replicas, max_replicas)
    else:
        serve_forever(config, host, port)


@serve_app.command("ab-report")
def serve_ab_report(
    log: Annotated[str, typer.Argument(help="The request log: a SQLite file or a SQLAlchemy "
                                       "URL.")],
    route: Annotated[str | None, typer.Option(help="Only this route. (default: all)")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Per-arm requests, latency, unknown rate and, from feedback, accuracy with a
    two-proportion test against the busiest arm."""
    _require_serve()
    from rich.table import Table

    from vitkit.serve.ab import ab_report
    from vitkit.serve.log import read_rows

    url = log if "://" in log else f"sqlite:///{Path(log)}"
    if "://" not in log and not Path(log).is_file():
        raise VitkitError(f"{log} does not exist; give the request log of `vitkit serve` "
                          "(default serve-requests.db) or a SQLAlchemy URL.")
    try:
        rows = read_rows(url)
    except Exception as exc:  # noqa: BLE001 - a driver error names the problem
        raise VitkitError(f"cannot read the request log {log}: {exc}") from None
    report = ab_report(rows, route)
    if json_out:
        print_json(report)
        return
    table = Table(title=f"A/B report of {log}")
    for column in ("arm", "requests", "mean ms", "p95 ms", "unknown", "feedback", "accuracy"):
        table.add_column(column, justify="left" if column == "arm" else "right")

    def cell(value: float | None, pattern: str) -> str:
        return "n/a" if value is None else pattern.format(value)

    for arm in report["arms"]:
        table.add_row(arm["arm"], str(arm["requests"]), cell(arm["latency_mean_ms"], "{:.1f}"),
                      cell(arm["latency_p95_ms"], "{:.1f}"), cell(arm["unknown_rate"], "{:.1%}"),
                      str(arm["with_feedback"]), cell(arm["accuracy"], "{:.1%}"))
    stderr_console.print(table)
    for comparison in report["comparisons"]:
        a, b = comparison["arms"]
        stderr_console.print(f"{b} vs {a}: accuracy {comparison['accuracy_difference']:+.1%}, "
                             f"p = {cell(comparison['p_value'], '{:.3g}')} (two-proportion "
                             "z-test)", highlight=False)


def _admin_call(url: str, path: str, token_env: str, body: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    """POST to a running server's admin endpoint with the bearer token from ``token_env``."""
    import json
    import os
    import urllib.error
    import urllib.request

    token = os.environ.get(token_env)
    if not token:
        raise VitkitError(f"set {token_env} to the server's admin token.")
    request = urllib.request.Request(
        url.rstrip("/") + path, data=json.dumps(body or {}).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:  # noqa: S310 - user URL
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("detail", "")
        except ValueError:
            detail = ""
        raise VitkitError(f"{url} answered {exc.code}: {detail or exc.reason}") from None
    except urllib.error.URLError as exc:
        raise VitkitError(f"cannot reach {url}: {exc.reason}") from None


@serve_app.command("deploy")
def serve_deploy(
    url: Annotated[str, typer.Argument(help="The running server, e.g. http://127.0.0.1:8000.")],
    name: Annotated[str, typer.Argument(help="The model to update (as in /v1/models).")],
    bundle: Annotated[str, typer.Argument(help="The candidate bundle, a path the server can "
                                          "read.")],
    variant: Annotated[str | None, typer.Option(
        help="Its variant. (default: the bundle's default variant)")] = None,
    token_env: Annotated[str, typer.Option(help="Environment variable with the admin token. "
                                           "(default: VITKIT_ADMIN_TOKEN)")
                         ] = "VITKIT_ADMIN_TOKEN",
    json_out: JsonOpt = False,
) -> None:
    """Hand a new bundle to a running server: validated, then shadow, canary and automatic
    promotion or rollback (follow it in /v1/models)."""
    body: dict[str, Any] = {"bundle": bundle}
    if variant is not None:
        body["variant"] = variant
    result = _admin_call(url, f"/admin/models/{name}/candidate", token_env, body)
    if json_out:
        print_json(result)
        return
    stderr_console.print(f"candidate {result['candidate_version']} for {name}: "
                         f"{result['state']} ({result['history'][-1]['reason']})",
                         highlight=False)


@serve_app.command("rollback")
def serve_rollback(
    url: Annotated[str, typer.Argument(help="The running server.")],
    name: Annotated[str, typer.Argument(help="The model to roll back.")],
    token_env: Annotated[str, typer.Option(help="Environment variable with the admin token. "
                                           "(default: VITKIT_ADMIN_TOKEN)")
                         ] = "VITKIT_ADMIN_TOKEN",
    json_out: JsonOpt = False,
) -> None:
    """End a running candidate, or restore the version the last promotion replaced."""
    result = _admin_call(url, f"/admin/models/{name}/rollback", token_env)
    if json_out:
        print_json(result)
    else:
        stderr_console.print(f"{name}: {result.get('state')}", highlight=False)
