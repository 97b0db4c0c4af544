"""Serving tests share the report tests' headless Chromium, and a real PostgreSQL server."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.report.conftest import chromium_driver  # noqa: F401
from tests.requirements import require


@dataclass
class Postgres:
    """A PostgreSQL server on a Unix socket in a private folder; stop() and start() inject a
    database outage."""

    data: Path
    socket_dir: Path
    log: Path
    pg_ctl: str

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@/postgres?host={self.socket_dir}"

    def start(self) -> None:
        subprocess.run(_as_postgres([self.pg_ctl, "-D", str(self.data), "-w", "-l",
                                     str(self.log), "-o",
                                     f"-k {self.socket_dir} -c listen_addresses=''", "start"]),
                       check=True, capture_output=True, timeout=120)

    def running(self) -> bool:
        status = subprocess.run(_as_postgres([self.pg_ctl, "-D", str(self.data), "status"]),
                                capture_output=True, timeout=60, check=False)
        return status.returncode == 0

    def stop(self, mode: str = "immediate") -> None:
        subprocess.run(_as_postgres([self.pg_ctl, "-D", str(self.data), "-m", mode, "stop"]),
                       capture_output=True, timeout=120, check=False)


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _as_postgres(command: list[str]) -> list[str]:
    """initdb refuses to run as root: run the server as the postgres user when we are root."""
    if os.geteuid() != 0:
        return command
    runuser = shutil.which("runuser")
    if runuser is None:
        require("postgres", "running as root without runuser; cannot start PostgreSQL as "
                "another user")
    return [runuser, "-u", "postgres", "--", *command]


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        require("postgres", "psycopg is not installed (pip install 'vitkit[postgres]')")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        require("postgres", "PostgreSQL is not installed (Debian: apt-get install postgresql); "
                ".ci/run installs it")
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            require("postgres", "no postgres user to run the server as")
    root = Path("/tmp") / f"vitkit-pg-{os.getpid()}"  # short: socket paths are limited
    shutil.rmtree(root, ignore_errors=True)
    data, socket_dir = root / "data", root / "sock"
    socket_dir.mkdir(parents=True)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(socket_dir, "postgres")
    subprocess.run(_as_postgres([initdb, "-D", str(data), "-U", "postgres", "--auth=trust"]),
                   check=True, capture_output=True, timeout=120)
    server = Postgres(data, socket_dir, root / "log", pg_ctl)
    server.start()
    try:
        yield server
    finally:
        server.stop("fast")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_url(postgres: Postgres) -> str:
    return postgres.url
