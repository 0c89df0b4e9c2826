"""Call history in a SQL database (SQLite by default, PostgreSQL by URL).

Two parts with one job each:

* ``HistoryStore`` — synchronous database access through SQLAlchemy Core: the
  ``calls`` table, batch writes and the queries the CLI needs. Blocking; use it
  from the CLI or from a worker thread, never on the event loop.
* ``CallHistory`` — the engine's writer. ``record()`` only appends to an in-memory
  buffer, so the audio path never waits for a database. A single writer task
  moves the buffer into the store in a worker thread (``asyncio.to_thread``).
  While the database is down the records stay buffered (bounded; the oldest are
  dropped, counted and logged) and the writer retries with exponential backoff;
  they are written when it is back. Writes are idempotent per ``call_id`` (delete
  then insert in one transaction), so a batch retried after an ambiguous failure
  is not duplicated.

A call record is a plain dict. Known keys map to columns: ``call_id`` (required),
``started_at``/``ended_at`` (epoch seconds, ``datetime`` or ISO text), ``duration_s``,
``mode``, ``provider``, ``end_reason`` (or ``outcome``), ``caller_id``, ``metrics``
(dict), ``transcript`` (list), ``tuning_hint`` (text), ``timeline`` (list, see
``voiceline.telemetry.timeline``). Every other key is merged into ``metrics``, so
``app.call_summary(call)`` can be passed as it is.

Nothing is lost while the database is away: a failed write drops the pooled
connections (a deleted or replaced SQLite file, a restarted server) and the batch goes
back to the front of the buffer; an unexpected error is logged with its traceback
and retried the same way; a record the database can never take (or that cannot be
converted, e.g. a time out of range) is dropped alone, logged. Only a full buffer or
a shutdown while the database is still down loses records, and both say so.
Formatting for people lives in ``voiceline.history_format``.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import (
    JSON,
    Column,
    ColumnElement,
    DateTime,
    Engine,
    Float,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    insert,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

__all__ = [
    "CallHistory",
    "HistoryStore",
    "calls_table",
    "record_to_row",
]

log = structlog.get_logger("voiceline.history")

DEFAULT_MAX_BUFFERED = 10_000
DEFAULT_BATCH_SIZE = 100
DEFAULT_RETRY_INITIAL_S = 0.5
DEFAULT_RETRY_MAX_S = 30.0
# Once shutdown has begun the flush window is short: retry at least this often.
STOPPING_RETRY_S = 0.25

# Errors that mean "the database is not usable right now": keep the records, retry.
_OUTAGE_ERRORS = (SQLAlchemyError, OSError)
# Errors that mean "the database refuses this row": retrying would never succeed.
_REJECTED_ERRORS = (IntegrityError, DataError)

metadata = MetaData()
calls_table = Table(
    "calls",
    metadata,
    Column("call_id", String(128), primary_key=True),
    Column("started_at", DateTime(timezone=True), index=True),
    Column("ended_at", DateTime(timezone=True)),
    Column("duration_s", Float),
    Column("mode", String(32)),
    Column("provider", String(64)),
    Column("end_reason", String(64)),
    Column("caller_id", String(128)),
    Column("metrics", JSON),
    Column("transcript", JSON),
    Column("tuning_hint", Text),
    Column("timeline", JSON),
)

_COLUMNS = tuple(c.name for c in calls_table.columns)
_ALIASES = {"outcome": "end_reason"}


# ---- record <-> row -----------------------------------------------------------------


def record_to_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """Column values for one call record (see the module docstring)."""
    call_id = record.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise ValueError(f"a call record needs a non-empty string call_id, got {call_id!r}")
    if len(call_id) > calls_table.c.call_id.type.length:
        raise ValueError(f"call_id longer than {calls_table.c.call_id.type.length} characters: {call_id!r}")
    known: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in record.items():
        column = _ALIASES.get(key, key)
        if column in _COLUMNS:
            known[column] = value
        else:
            extra[key] = value
    started, ended = _to_datetime(known.get("started_at")), _to_datetime(known.get("ended_at"))
    duration = known.get("duration_s")
    if duration is None and started is not None and ended is not None:
        duration = (ended - started).total_seconds()
    metrics = dict(known.get("metrics") or {})
    metrics.update(extra)
    hint = known.get("tuning_hint")
    return {
        "call_id": call_id,
        "started_at": started,
        "ended_at": ended,
        "duration_s": float(duration) if duration is not None else None,
        "mode": _text(known.get("mode"), "mode"),
        "provider": _text(known.get("provider"), "provider"),
        "end_reason": _text(known.get("end_reason"), "end_reason"),
        "caller_id": _text(known.get("caller_id"), "caller_id"),
        "metrics": _json_safe(metrics),
        "transcript": _json_safe(list(known.get("transcript") or [])),
        "tuning_hint": str(hint) if hint is not None else None,
        "timeline": _json_safe(list(known.get("timeline") or [])),
    }


def _row_to_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in ("started_at", "ended_at"):
        value = out.get(key)
        if isinstance(value, datetime):
            # SQLite hands back naive datetimes; everything is stored in UTC.
            aware = value if value.tzinfo else value.replace(tzinfo=UTC)
            out[key] = aware.astimezone(UTC).isoformat()
    return out


def _to_datetime(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, tz=UTC)
    if isinstance(value, str):
        return _to_datetime(datetime.fromisoformat(value))
    raise ValueError(f"cannot read {value!r} as a time")


def _text(value: Any, column: str) -> str | None:
    """Text cut to the column's length: PostgreSQL would reject the row forever."""
    if value is None:
        return None
    return str(value)[: calls_table.c[column].type.length]


def _json_default(value: Any) -> Any:
    # numpy arrays and scalars have .tolist(); anything else is kept as its text.
    to_list = getattr(value, "tolist", None)
    if callable(to_list):
        return to_list()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _json_safe(value: Any) -> Any:
    """Plain JSON data (NaN/inf become null), so the JSON column never rejects a record."""
    return json.loads(json.dumps(_finite(value), default=_json_default))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# ---- the database -----------------------------------------------------------------


class HistoryStore:
    """Blocking access to the ``calls`` table. The schema is created on first use."""

    def __init__(self, url: str) -> None:
        self._url = make_url(url)  # a malformed URL is a config error: raise now
        self._engine: Engine | None = None
        self._schema_ready = False

    @property
    def dialect(self) -> str:
        return self._url.get_backend_name()

    def engine(self) -> Engine:
        if self._engine is None:
            connect_args: dict[str, Any] = {}
            if self.dialect == "sqlite":
                # The writer runs in whichever pool thread to_thread picks.
                connect_args["check_same_thread"] = False
            self._engine = create_engine(self._url, connect_args=connect_args, pool_pre_ping=True)
        return self._engine

    def ensure_schema(self) -> None:
        if self._schema_ready:
            return
        if self.dialect == "sqlite":
            database = self._url.database
            if database and database != ":memory:" and not database.startswith("file:"):
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        metadata.create_all(self.engine())
        self._schema_ready = True

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert or replace the rows (by call_id) in one transaction."""
        if not rows:
            return
        try:
            self.ensure_schema()
            with self.engine().begin() as conn:
                conn.execute(delete(calls_table).where(calls_table.c.call_id.in_([r["call_id"] for r in rows])))
                conn.execute(insert(calls_table), [dict(r) for r in rows])
        except _OUTAGE_ERRORS:
            # The database may have been replaced (file deleted, server rebuilt): a
            # pooled connection to the old one would fail (or write into a deleted
            # file) forever. Reconnect and check the schema on the next attempt.
            self.close()
            raise

    def list_calls(self, limit: int = 20, offset: int = 0, *,
                   where: Sequence[ColumnElement[bool]] = ()) -> list[dict[str, Any]]:
        """Newest first, without the bulky transcript and timeline; ``where``: conditions
        on ``calls_table`` a call must meet (the console's search)."""
        self.ensure_schema()
        c = calls_table.c
        query = (
            select(c.call_id, c.started_at, c.ended_at, c.duration_s, c.mode, c.provider, c.end_reason,
                   c.caller_id, c.tuning_hint)
            .where(*where)
            .order_by(c.started_at.desc(), c.call_id)
            .limit(limit)
            .offset(offset)
        )
        with self.engine().connect() as conn:
            return [_row_to_dict(row._mapping) for row in conn.execute(query)]

    def get_call(self, call_id: str) -> dict[str, Any] | None:
        self.ensure_schema()
        with self.engine().connect() as conn:
            row = conn.execute(select(calls_table).where(calls_table.c.call_id == call_id)).first()
        return _row_to_dict(row._mapping) if row is not None else None

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
            self._schema_ready = False


# ---- the engine's buffered writer -----------------------------------------------------


class CallHistory:
    """Buffered, non-blocking call history for the running engine.

    ``record()`` is safe to call from the event loop at any time (it only appends);
    records given before ``start()`` wait in the buffer. ``status()`` is meant for
    ``/health``.
    """

    def __init__(
        self,
        url: str,
        *,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        batch_size: int = DEFAULT_BATCH_SIZE,
        retry_initial_s: float = DEFAULT_RETRY_INITIAL_S,
        retry_max_s: float = DEFAULT_RETRY_MAX_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_buffered < 1 or batch_size < 1:
            raise ValueError("max_buffered and batch_size must be at least 1")
        if not 0 < retry_initial_s <= retry_max_s:
            raise ValueError("need 0 < retry_initial_s <= retry_max_s")
        self.store = HistoryStore(url)
        self._max_buffered = max_buffered
        self._batch_size = batch_size
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._clock = clock
        self._buffer: deque[dict[str, Any]] = deque()
        self._in_flight = 0
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.dropped = 0
        self.failed_since: float | None = None
        self.last_error: str | None = None

    # ---- engine side

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("call history already started")
        # Resolving the dialect imports its driver: a missing driver is a config error.
        await asyncio.to_thread(self.store.engine)
        self._task = asyncio.create_task(self._run(), name="call-history-writer")
        self._task.add_done_callback(self._writer_finished)
        if self._buffer:
            self._wake.set()

    def record(self, call_record: Mapping[str, Any]) -> None:
        """Queue one finished call for writing. Never blocks."""
        call_id = call_record.get("call_id")
        if not isinstance(call_id, str) or not call_id:
            raise ValueError(f"a call record needs a non-empty string call_id, got {call_id!r}")
        if len(self._buffer) + self._in_flight >= self._max_buffered:
            self._drop_oldest(1)
        self._buffer.append(dict(call_record))
        self._idle.clear()
        self._wake.set()

    async def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Write what can be written within ``flush_timeout_s``, then stop the writer."""
        if self._task is None:
            if self._buffer:
                log.error("call history stopped before it started, records not written",
                          records=len(self._buffer))
            return
        self._stopping.set()
        self._wake.set()
        try:
            await asyncio.wait_for(self._idle.wait(), flush_timeout_s)
        except TimeoutError:
            log.error("call history not flushed before shutdown, records lost",
                      records=self.pending, flush_timeout_s=flush_timeout_s, last_error=self.last_error)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            if not self._task.cancelled():
                raise  # stop() itself was cancelled
        await asyncio.to_thread(self.store.close)

    @property
    def pending(self) -> int:
        return len(self._buffer) + self._in_flight

    def status(self) -> dict[str, Any]:
        failing = self.failed_since is not None
        return {
            "backend": self.store.dialect,
            "pending": self.pending,
            "written": self.written,
            "dropped": self.dropped,
            "failing": failing,
            "failing_for_s": round(self._clock() - self.failed_since, 1) if failing else 0.0,
            "last_error": self.last_error,
        }

    # ---- CLI side (blocking)

    def list_calls(self, limit: int = 20, offset: int = 0) -> list[dict[str, Any]]:
        return self.store.list_calls(limit, offset)

    def get_call(self, call_id: str) -> dict[str, Any] | None:
        return self.store.get_call(call_id)

    # ---- the writer

    async def _run(self) -> None:
        delay_s = self._retry_initial_s
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._buffer:
                batch = [self._buffer.popleft() for _ in range(min(self._batch_size, len(self._buffer)))]
                self._in_flight = len(batch)
                try:
                    rejected = await asyncio.to_thread(self._write_batch, batch)
                except Exception as exc:
                    self._in_flight = 0
                    self._buffer.extendleft(reversed(batch))
                    # Records that came in while the batch was out may have overfilled it.
                    self._drop_oldest(len(self._buffer) - self._max_buffered)
                    if not isinstance(exc, _OUTAGE_ERRORS):
                        # Not a known outage: a bug here or in a driver. Keep the records
                        # (the next attempt may work) and show the traceback.
                        log.error("call history write failed unexpectedly, will retry",
                                  pending=self.pending, retry_in_s=delay_s, exc_info=exc)
                    self._note_failure(exc, delay_s)
                    await self._backoff(delay_s)
                    delay_s = min(delay_s * 2, self._retry_max_s)
                    continue
                self._in_flight = 0
                for call_id, error in rejected:
                    self.dropped += 1
                    log.error("call record cannot be stored, dropped", call_id=call_id, error=error)
                self._note_success(len(batch) - len(rejected))
                delay_s = self._retry_initial_s
            self._idle.set()

    def _write_batch(self, records: Sequence[Mapping[str, Any]]) -> list[tuple[Any, str]]:
        """Runs in a worker thread. Returns (call_id, error) of the records the
        database can never take; raises on an outage."""
        rejected: list[tuple[Any, str]] = []
        rows: dict[str, dict[str, Any]] = {}
        for record in records:
            try:
                row = record_to_row(record)
            except (TypeError, ValueError, OverflowError) as exc:  # e.g. a time out of range
                rejected.append((record.get("call_id"), str(exc)))
                continue
            rows[row["call_id"]] = row  # a call recorded twice: the last record wins
        try:
            self.store.write(list(rows.values()))
        except _REJECTED_ERRORS as exc:
            if len(rows) == 1:
                rejected.extend((call_id, _first_line(exc)) for call_id in rows)
                return rejected
            # One bad row fails the whole batch: write one by one to find it.
            for row in rows.values():
                try:
                    self.store.write([row])
                except _REJECTED_ERRORS as exc:
                    rejected.append((row["call_id"], _first_line(exc)))
        return rejected

    async def _backoff(self, delay_s: float) -> None:
        """Wait before the next attempt; shutdown cuts the wait short, and while it lasts
        attempts come at least every STOPPING_RETRY_S (the flush window is short)."""
        if self._stopping.is_set():
            await asyncio.sleep(min(delay_s, STOPPING_RETRY_S))
            return
        try:
            await asyncio.wait_for(self._stopping.wait(), delay_s)
        except TimeoutError:
            return  # the usual case: the backoff simply elapsed

    def _note_failure(self, exc: BaseException, delay_s: float) -> None:
        self.last_error = f"{type(exc).__name__}: {_first_line(exc)}"
        if self.failed_since is None:
            self.failed_since = self._clock()
            log.warning("call history database unavailable, buffering records",
                        error=self.last_error, pending=self.pending, retry_in_s=delay_s)
        else:
            log.debug("call history retry failed", error=self.last_error, pending=self.pending,
                      retry_in_s=delay_s)

    def _note_success(self, count: int) -> None:
        self.written += count
        if self.failed_since is not None:
            log.info("call history database back, buffered records written",
                     outage_s=round(self._clock() - self.failed_since, 1), pending=self.pending,
                     dropped=self.dropped)
            self.failed_since = None
            self.last_error = None

    def _drop_oldest(self, count: int) -> None:
        for _ in range(max(0, min(count, len(self._buffer)))):
            dropped = self._buffer.popleft()
            self.dropped += 1
            # First drop and then every 1000th: an outage can last long, the log should not flood.
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("call history buffer full, oldest record dropped",
                            call_id=dropped.get("call_id"), dropped_total=self.dropped,
                            max_buffered=self._max_buffered)

    def _writer_finished(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("call history writer crashed; records are no longer written",
                      pending=self.pending, exc_info=exc)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).splitlines()
    return lines[0][:300] if lines else ""
