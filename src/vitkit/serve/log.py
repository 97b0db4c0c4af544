"""The request log: every answered image, and the feedback that later names its true label.

SQLAlchemy, so a SQLite file (the default, in WAL mode) and a PostgreSQL URL work the same.
Rows are queued by the request path and written in batches by one background thread: a slow
disk never slows an answer.

Nothing answered is lost when the database goes away. The writer retries for as long as it
takes (with back-off, never giving up and never exiting); meanwhile rows wait in memory up to
``max_memory_rows`` and beyond that are appended to a local spill file (JSON lines), which is
written back once the database answers again — also by the next server when this one stops
before the database returns. Inserts ignore rows already present, so a batch retried after a
lost acknowledgement is written once. :attr:`RequestLog.backlog` and
:attr:`RequestLog.healthy` tell the service what is pending (``vitkit_log_backlog``,
``/readyz`` "degraded").
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    Boolean,
    Column,
    Float,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine

from vitkit.errors import first_line

logger = logging.getLogger("vitkit.serve")

metadata = MetaData()
predictions = Table(
    "predictions", metadata,
    Column("request_id", String(64), primary_key=True),
    Column("time", Float, nullable=False),
    Column("route", String(128)),
    Column("model", String(128), nullable=False),
    Column("version", String(64)),
    Column("arm", String(128)),
    Column("label", String(256)),
    Column("score", Float),
    Column("unknown", Boolean),
    Column("latency_ms", Float),
    Column("fallback_from", String(128)),
    Column("feedback", String(256)),
    Column("feedback_time", Float),
)
FEEDBACK_MAX_CHARS = 256  # the width of the feedback column (PostgreSQL refuses longer)

RETRY_FIRST_S = 0.1
RETRY_MAX_S = 2.0  # back-off cap: a returning database is used within 2 s


class LogUnavailable(Exception):
    """The request-log database does not answer (feedback and reports need it)."""


def make_engine(url: str) -> Engine:
    engine = create_engine(url, future=True, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _wal(connection: Any, _record: Any) -> None:  # readers never block the writer
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()
    return engine


def default_spill_path(url: str) -> Path:
    """Beside a SQLite file (``log.db`` → ``log.db.spill.jsonl``); for a server database, in
    the current folder, named after the database so two logs never share a file."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url[len("sqlite:///"):]).with_name(
            Path(url[len("sqlite:///"):]).name + ".spill.jsonl")
    digest = hashlib.sha256(url.encode()).hexdigest()[:10]
    return Path(f"vitkit-request-log-{digest}.spill.jsonl")


class RequestLog:
    """Rows in, written in the background; see the module docstring for the guarantees.

    Args:
        url: SQLAlchemy URL.
        flush_ms: How long the writer waits to fill a batch.
        batch: Rows per insert at most.
        max_memory_rows: Rows held in memory while the database is away; beyond, the spill
            file takes them (one JSON line, ~300 bytes, each).
        spill_path: The spill file (default: :func:`default_spill_path`).
    """

    def __init__(self, url: str, flush_ms: float = 200.0, batch: int = 512,
                 max_memory_rows: int = 10_000, spill_path: str | Path | None = None) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.flush_s = flush_ms / 1000
        self.batch = batch
        self.max_memory_rows = max_memory_rows
        self.spill_path = Path(spill_path) if spill_path else default_spill_path(url)
        self._memory: collections.deque[dict[str, Any]] = collections.deque()
        self._in_flight = 0
        self._spilled = self._count_spilled()
        self._lock = threading.Condition()
        self._spill_lock = threading.Lock()
        self._closing = False
        self._close_deadline = math.inf
        self._schema_ready = False
        self.written = 0
        self.failing_since: float | None = None
        self.last_error: str | None = None
        with contextlib.suppress(Exception):  # a database down at start: the writer retries
            self._ensure_schema()
        self._writer = threading.Thread(target=self._write_loop, name="vitkit-request-log",
                                        daemon=True)
        self._writer.start()

    # ------------------------------------------------------------------ state
    @property
    def backlog(self) -> int:
        """Rows answered but not yet in the database (memory, in flight, spill file)."""
        with self._lock:
            return len(self._memory) + self._in_flight + self._spilled

    @property
    def healthy(self) -> bool:
        return self.failing_since is None

    def status(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "backlog": self.backlog, "written": self.written,
                "spilled": self._spilled, "last_error": self.last_error,
                "failing_for_s": (None if self.failing_since is None
                                  else round(time.monotonic() - self.failing_since, 1))}

    # ------------------------------------------------------------------ request path
    def add(self, row: dict[str, Any]) -> None:
        """Queues one row; never blocks on the database (past ``max_memory_rows`` the row is
        appended to the spill file)."""
        with self._lock:
            if len(self._memory) < self.max_memory_rows:
                self._memory.append(row)
                self._lock.notify()
                return
        self._spill([row])

    def flush(self, timeout: float = 10.0) -> bool:
        """Waits until every row queued so far is in the database; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._lock.notify()
            while self._memory or self._in_flight or self._spilled:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(min(remaining, 0.05))
        return True

    def lookup(self, request_id: str) -> dict[str, Any] | None:
        """The logged row of an answer (after a flush), or None.

        Raises:
            LogUnavailable: The database does not answer.
        """
        self.flush(timeout=2.0)
        try:
            with self.engine.connect() as connection:
                row = connection.execute(select(predictions).where(
                    predictions.c.request_id == request_id)).first()
        except Exception as exc:  # noqa: BLE001 - any driver error: the database is away
            raise LogUnavailable(_short(exc)) from None
        return dict(row._mapping) if row is not None else None

    def feedback(self, request_id: str, label: str, replace: bool = False) -> str:
        """Records the true label of an answered image. Returns ``"recorded"``,
        ``"unknown"`` (no such request id) or ``"conflict"`` (another label was recorded
        before and ``replace`` is False; nothing is changed).

        Raises:
            LogUnavailable: The database does not answer.
        """
        self.flush(timeout=2.0)
        condition = predictions.c.request_id == request_id
        if not replace:
            condition = condition & ((predictions.c.feedback.is_(None))
                                     | (predictions.c.feedback == label))
        try:
            with self.engine.begin() as connection:
                result = connection.execute(update(predictions).where(condition)
                                            .values(feedback=label, feedback_time=time.time()))
                if result.rowcount > 0:
                    return "recorded"
                exists = connection.execute(select(predictions.c.request_id).where(
                    predictions.c.request_id == request_id)).first()
        except Exception as exc:  # noqa: BLE001 - any driver error: the database is away
            raise LogUnavailable(_short(exc)) from None
        return "conflict" if exists is not None else "unknown"

    def rows(self) -> list[dict[str, Any]]:
        """Every logged row (after a flush).

        Raises:
            LogUnavailable: The database does not answer.
        """
        self.flush()
        try:
            with self.engine.connect() as connection:
                return [dict(r._mapping) for r in connection.execute(select(predictions))]
        except Exception as exc:  # noqa: BLE001 - any driver error: the database is away
            raise LogUnavailable(_short(exc)) from None

    def close(self, timeout: float = 10.0) -> None:
        """Writes what is queued within ``timeout``; what the database does not take by then
        goes to the spill file (written back by the next server)."""
        with self._lock:
            self._closing = True
            self._close_deadline = time.monotonic() + timeout
            self._lock.notify()
        self._writer.join(timeout=timeout + 30)
        self.engine.dispose()

    # ------------------------------------------------------------------ writer thread
    def _write_loop(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            with self._lock:
                if not self._memory and not self._closing:
                    self._lock.wait(timeout=max(self.flush_s, 0.05) if self._spilled else None)
                if self._memory and len(self._memory) < self.batch and not self._closing:
                    self._lock.wait(timeout=self.flush_s)  # let a batch gather
                rows = [self._memory.popleft()
                        for _ in range(min(self.batch, len(self._memory)))]
                self._in_flight = len(rows)
                closing, deadline = self._closing, self._close_deadline
            try:
                if rows:
                    self._insert(rows)
                if self._spilled:
                    self._replay_spill()
            except Exception as exc:  # noqa: BLE001 - the database is away: keep the rows
                self._note_failure(exc)
                if closing and time.monotonic() >= deadline:
                    self._spill(rows)
                    with self._lock:
                        self._in_flight = 0
                        rest = list(self._memory)
                        self._memory.clear()
                    self._spill(rest)
                    logger.error("request log: the database did not come back before the "
                                 "stop; %d rows are kept in %s for the next start",
                                 self._spilled, self.spill_path)
                    return
                with self._lock:
                    # Back to the front, so they go first once the database answers.
                    self._memory.extendleft(reversed(rows))
                    self._in_flight = 0
                    overflow = len(self._memory) - self.max_memory_rows
                    moved = [self._memory.pop() for _ in range(max(0, overflow))]
                self._spill(list(reversed(moved)))
                time.sleep(delay)
                delay = min(2 * delay, RETRY_MAX_S)
                continue
            delay = RETRY_FIRST_S
            if self.failing_since is not None:
                logger.warning("request log: the database answers again after %.1f s",
                               time.monotonic() - self.failing_since)
            self.failing_since = None
            with self._lock:
                self._in_flight = 0
                self._lock.notify_all()
                if self._closing and not self._memory and not self._spilled:
                    return

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        self._ensure_schema()
        with self.engine.begin() as connection:
            _insert_ignoring_duplicates(connection, rows)
        self.written += len(rows)

    def _ensure_schema(self) -> None:
        if not self._schema_ready:
            metadata.create_all(self.engine)
            self._schema_ready = True

    def _note_failure(self, exc: BaseException) -> None:
        self.last_error = _short(exc)
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            logger.error("request log: cannot write to the database (%s); rows are kept and "
                         "written when it answers again", self.last_error)

    # ------------------------------------------------------------------ spill file
    def _spill(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        lines = "".join(json.dumps(_finite(row), default=_json_default) + "\n"
                        for row in rows)
        with self._spill_lock:
            self.spill_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.spill_path, "a", encoding="utf-8") as spill:
                spill.write(lines)
            with self._lock:
                self._spilled += len(rows)

    def _replay_spill(self) -> None:
        """Writes the spill file back into the database, then removes it. A row in both (a
        crash after the insert, before the removal) is written once: inserts skip present
        ids."""
        with self._spill_lock:
            if not self.spill_path.is_file():
                with self._lock:
                    self._spilled = 0
                return
            written = 0
            for chunk in _read_spill(self.spill_path, self.batch):
                self._insert(chunk)
                written += len(chunk)
            os.unlink(self.spill_path)
            with self._lock:
                self._spilled = 0
                self._lock.notify_all()
        logger.warning("request log: %d spilled rows written back from %s", written,
                       self.spill_path)

    def _count_spilled(self) -> int:
        if not self.spill_path.is_file():
            return 0
        return sum(len(chunk) for chunk in _read_spill(self.spill_path, 4096))


def read_rows(url: str) -> list[dict[str, Any]]:
    """Every row of a request log, read without starting a writer (reports, the CLI)."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return [dict(r._mapping) for r in connection.execute(select(predictions))]
    finally:
        engine.dispose()


def _read_spill(path: Path, chunk: int) -> Iterator[list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as spill:
        for line in spill:
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line cut short by a crash mid-write: the rest is good
                continue
            if len(rows) >= chunk:
                yield rows
                rows = []
    if rows:
        yield rows


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in row.items()}


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _insert_ignoring_duplicates(connection: Connection, rows: list[dict[str, Any]]) -> None:
    dialect = connection.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]
    else:
        connection.execute(insert(predictions), rows)
        return
    statement = dialect_insert(predictions).on_conflict_do_nothing(
        index_elements=["request_id"])
    connection.execute(statement, rows)


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc)}"
