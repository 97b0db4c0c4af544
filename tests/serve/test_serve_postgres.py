"""The request log on a real PostgreSQL server, started here on a local socket."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("psycopg")

from vitkit.serve.log import RequestLog, ab_report  # noqa: E402


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _as_postgres(command: list[str]) -> list[str]:
    """initdb refuses to run as root: run the server as the postgres user when we are root."""
    if os.geteuid() != 0:
        return command
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root without runuser; cannot start PostgreSQL as another user")
    return [runuser, "-u", "postgres", "--", *command]


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql); "
                    ".ci/run installs it")
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("no postgres user to run the server as")
    root = Path("/tmp") / f"vitkit-pg-{os.getpid()}"  # short: socket paths are limited
    shutil.rmtree(root, ignore_errors=True)
    data, socket_dir = root / "data", root / "sock"
    socket_dir.mkdir(parents=True)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(socket_dir, "postgres")
    subprocess.run(_as_postgres([initdb, "-D", str(data), "-U", "postgres", "--auth=trust"]),
                   check=True, capture_output=True, timeout=120)
    subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-w", "-l", str(root / "log"),
                                 "-o", f"-k {socket_dir} -c listen_addresses=''", "start"]),
                   check=True, capture_output=True, timeout=120)
    try:
        yield f"postgresql+psycopg://postgres@/postgres?host={socket_dir}"
    finally:
        subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "stop"]),
                       capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def test_request_log_on_postgresql(postgres_url: str) -> None:
    log = RequestLog(postgres_url, flush_ms=20)
    try:
        now = time.time()
        for i in range(50):
            log.add({"request_id": f"r{i}", "time": now, "route": "default", "model": "m",
                     "version": "v1", "arm": "a" if i % 2 else "b", "label": "x",
                     "score": 0.9, "unknown": False, "latency_ms": float(i),
                     "fallback_from": None})
        assert log.feedback("r3", "x") and log.feedback("r4", "y")
        assert not log.feedback("missing", "x")
        rows = log.rows()
        assert len(rows) == 50 and log.written == 50
        report = ab_report(rows)
        assert {a["arm"]: a["with_feedback"] for a in report["arms"]} == {"a": 1, "b": 1}
    finally:
        log.close()
