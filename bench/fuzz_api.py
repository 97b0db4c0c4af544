"""Fuzzes the HTTP API with schemathesis against the service's own ``/openapi.json``.

Every operation in the schema gets generated cases (bodies, query parameters, path parameters
and headers; schema-conforming and, half the time, deliberately wrong), sent to a real server
on a loopback port. Each answer is checked for: no 5xx (``not_a_server_error``), a status the
schema declares (``status_code_conformance``), the declared content type
(``content_type_conformance``) and a body matching the declared schema
(``response_schema_conformance``). A fuzzer is only as good as the schema, so the service
declares every body it reads (``vitkit.serve.schemas``).

Admin operations are sent twice over: first with the right bearer token (before any failed
attempt, which the rate limit would answer with 429), then with what the generator makes of
the ``Authorization`` header. The candidate endpoint never reaches a real bundle load: the
server's ``bundle_roots`` is an empty folder.

    python bench/fuzz_api.py --cases 10000            # trains a tiny bundle first (~20 s)
    python bench/fuzz_api.py --bundle runs/x/bundle --cases 10000

``tests/serve/test_serve_fuzz.py`` runs the same loop on a few hundred cases in CI.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHECK_NAMES = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
               "response_schema_conformance")
ADMIN_TOKEN = "fuzz-admin-token-0123456789abcdef"  # >= 16 characters, as the server demands


@dataclass
class Finding:
    check: str
    operation: str
    status: int
    message: str
    curl: str


@dataclass
class FuzzResult:
    cases: int = 0
    by_operation: dict[str, int] = field(default_factory=lambda: collections.Counter())
    statuses: dict[int, int] = field(default_factory=lambda: collections.Counter())
    failures: dict[str, int] = field(default_factory=lambda: collections.Counter())
    findings: list[Finding] = field(default_factory=list)
    no_negative: set[str] = field(default_factory=set)
    seconds: float = 0.0

    def first_findings(self, limit: int = 10) -> list[Finding]:
        """One finding per (check, operation, status), at most ``limit``."""
        seen, unique = set(), []
        for finding in self.findings:
            key = (finding.check, finding.operation, finding.status)
            if key not in seen:
                seen.add(key)
                unique.append(finding)
        return unique[:limit]


def fuzz(url: str, cases: int, admin_token: str | None = None, seed: int = 0,
         max_findings: int = 200) -> FuzzResult:
    """Runs about ``cases`` generated cases over every operation of ``url``'s schema.

    Hypothesis stops early on an operation whose input space is small (``GET /livez``), so
    the count actually run is in :attr:`FuzzResult.cases`, never assumed.
    """
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis import checks as st_checks

    checks = [getattr(st_checks, name) for name in CHECK_NAMES]
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", timeout=30)
    operations = [result.ok() for result in schema.get_all_operations()]
    # Admin operations twice (with the right token, then as generated), both modes each.
    admin = [op for op in operations if op.path.startswith("/admin/")]
    plan: list[tuple[Any, GenerationMode, dict[str, str]]] = []
    if admin_token is not None:
        plan += [(op, mode, {"Authorization": f"Bearer {admin_token}"})
                 for op in admin for mode in GenerationMode]
    plan += [(op, mode, {}) for op in operations for mode in GenerationMode]
    # Two cases in three name a served model (and its version): a random name stops at 404
    # before the body is read, and the infer and admin bodies deserve the fuzzer's attention.
    served = [(m["name"], m.get("version", "")) for m in requests.get(
        f"{url}/v1/models", timeout=30).json()["models"]]
    result = FuzzResult()
    session = requests.Session()
    started = time.perf_counter()
    # Rounds with fresh seeds until the budget is spent: an operation whose input space is
    # exhausted (fewer cases than asked) drops out and leaves its share to the others.
    active = list(plan)
    for round_ in range(100):
        if result.cases >= cases or not active:
            break
        per_run = max(1, (cases - result.cases) // len(active))
        still = []
        for entry in active:
            operation, mode, headers = entry
            label = f"{operation.method.upper()} {operation.path}"
            before = result.cases
            send = _sender(url, label, headers, checks, session, result, max_findings)
            test = given(case=operation.as_strategy(generation_mode=mode),
                         wrong_token=st.booleans(),
                         served=st.sampled_from([None, *served]))(send)
            test = settings(max_examples=per_run, deadline=None, database=None,
                            phases=[Phase.generate], print_blob=False,
                            suppress_health_check=list(HealthCheck))(test)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    hypothesis_seed(seed * 1000 + round_)(test)()
                except Unsatisfiable:  # nothing to make wrong: GET /livez has no inputs
                    result.no_negative.add(label)
                    continue
            if result.cases - before >= per_run:
                still.append(entry)
        active = still
    result.seconds = time.perf_counter() - started
    return result


def _sender(url: str, label: str, headers: dict[str, str], checks: list[Any], session: Any,
            result: FuzzResult, max_findings: int) -> Callable[..., None]:
    """The hypothesis test body: send one case, run each check on the answer, count."""
    import requests
    from schemathesis.core.failures import FailureGroup

    admin = label.split()[1].startswith("/admin/")

    def send(case: Any, wrong_token: bool, served: tuple[str, str] | None) -> None:
        if served is not None and case.path_parameters and "name" in case.path_parameters:
            case.path_parameters["name"] = served[0]
            if "version" in case.path_parameters:
                case.path_parameters["version"] = served[1]
        sent = dict(headers)
        if not sent and admin and wrong_token:
            sent = {"Authorization": "Bearer not-the-token-at-all"}
        try:
            response = case.call(base_url=url, session=session, headers=sent, timeout=30)
        except requests.RequestException as exc:
            result.failures["transport"] += 1
            _keep(result, max_findings, Finding("transport", label, 0, repr(exc),
                                                case.as_curl_command(headers=sent)))
            return
        result.cases += 1
        result.by_operation[label] += 1
        result.statuses[response.status_code] += 1
        for check in checks:
            try:
                case.validate_response(response, checks=[check], headers=sent,
                                       transport_kwargs={"base_url": url})
            except (AssertionError, FailureGroup) as exc:
                result.failures[check.__name__] += 1
                _keep(result, max_findings, Finding(
                    check.__name__, label, response.status_code, str(exc)[:2000],
                    case.as_curl_command(headers=sent, base_url=url)))

    return send


def _keep(result: FuzzResult, limit: int, finding: Finding) -> None:
    if len(result.findings) < limit:
        result.findings.append(finding)


def report(result: FuzzResult) -> str:
    lines = [f"cases run: {result.cases:,} in {result.seconds:.1f} s "
             f"({result.cases / max(result.seconds, 1e-9):.0f}/s)",
             "statuses: " + ", ".join(f"{s}: {n:,}" for s, n in sorted(result.statuses.items())),
             "failures by check: " + ", ".join(
                 f"{name}: {result.failures.get(name, 0)}"
                 for name in (*CHECK_NAMES, "transport")),
             "cases by operation:"]
    lines += [f"  {n:6,}  {op}" for op, n in sorted(result.by_operation.items())]
    for finding in result.first_findings():
        lines += ["", f"FAILED {finding.check}: {finding.operation} -> {finding.status}",
                  finding.message.strip()[:1200], f"  {finding.curl}"]
    return "\n".join(lines)


# ------------------------------------------------------------------ a server to fuzz
def tiny_bundle(folder: Path) -> Path:
    """A test_resnet bundle trained for one epoch on generated colour images (~20 s)."""
    import numpy as np
    from PIL import Image

    from vitkit.classify.config import TrainConfig
    from vitkit.workflows.train import run_training

    rng = np.random.default_rng(0)
    for label, colour in (("red", (215, 45, 40)), ("green", (40, 190, 70)),
                          ("blue", (45, 70, 215))):
        (folder / "data" / label).mkdir(parents=True, exist_ok=True)
        for i in range(8):
            pixels = np.array(colour) + rng.normal(0.0, 18.0, (48, 48, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                folder / "data" / label / f"{label}_{i}.png")
    config = TrainConfig(data=str(folder / "data"), model="test_resnet", weights="none",
                         epochs=1, batch_size=8, out=str(folder / "run"), ema=None)
    return Path(run_training(config, progress=False).bundle)


def serve_config(bundle: Path, folder: Path) -> Any:
    """Two models (one bundle twice), a SQLite request log and admin candidates confined to an
    empty folder: the candidate endpoint answers 403/404/422 and never loads a bundle."""
    from vitkit.serve.config import ServeConfig

    roots = folder / "candidates"
    roots.mkdir(parents=True, exist_ok=True)
    return ServeConfig.model_validate({
        "models": [{"name": "a", "bundle": str(bundle)}, {"name": "b", "bundle": str(bundle)}],
        "routes": {"default": [{"model": "a"}]},
        "fallback": ["a", "b"],
        "log": {"url": f"sqlite:///{folder / 'log.db'}", "flush_ms": 20},
        "state_file": str(folder / "state.json"),
        "bundle_roots": [str(roots)],
    })


def wait_ready(url: str, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise RuntimeError("the server never became ready")


@contextlib.contextmanager
def running_server(bundle: Path, folder: Path) -> Iterator[str]:
    """Yields the URL of a ready server in this process (admin token set)."""
    from vitkit.serve.server import BackgroundServer

    os.environ["VITKIT_ADMIN_TOKEN"] = ADMIN_TOKEN
    with BackgroundServer(serve_config(bundle, folder)) as url:
        wait_ready(url)
        yield url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000, help="cases in all (about)")
    parser.add_argument("--bundle", type=Path, help="a trained bundle (default: train one)")
    parser.add_argument("--url", help="fuzz a server already running here instead")
    parser.add_argument("--admin-token", help="its admin token (with --url)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.url:
        result = fuzz(args.url.rstrip("/"), args.cases, args.admin_token, args.seed)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            bundle = args.bundle or tiny_bundle(folder / "train")
            with running_server(bundle, folder / "serve") as url:
                print(f"fuzzing {url} ...", flush=True)
                result = fuzz(url, args.cases, ADMIN_TOKEN, args.seed)
    print(report(result))
    return 1 if sum(result.failures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
