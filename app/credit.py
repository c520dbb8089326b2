"""What this PC gave to the swarm, per day and in total, kept in a local SQLite database.

Why the GUI keeps it and not the worker: the worker's counters live as long as its process, and a
worker can crash or be killed at any moment. The GUI adds each status message's *increase* to
today's row as it arrives (about once a second), so a crash loses at most the last second, and a
new worker (after a crash, a restart or a new app start) adds from zero again. Days are local
calendar days; a day with nothing served simply has no row, and :meth:`CreditLedger.days` fills it in
with zeros so a chart has no holes.

:class:`CreditLedger` is the database (stdlib :mod:`sqlite3`, no Qt, no torch);
:class:`CreditRecorder` turns a stream of :class:`~app.worker.messages.StatusEvent` into increases.
"""
from __future__ import annotations

import csv
import datetime
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

from app.worker.messages import StatusEvent, WorkerState

logger = logging.getLogger(__name__)

MAX_GAP = 15.0
"""Seconds between two status messages counted as online at most: a longer gap (the PC slept, the
app hung) is not time served."""


@dataclass(frozen=True)
class DayCredit:
    """One day's (or, summed, a lifetime's) work: what a person counts, not the server's steps."""

    day: str = ""
    tokens: int = 0
    inference_sessions: int = 0
    training_requests: int = 0
    seconds_online: float = 0.0
    block_seconds: float = 0.0
    max_blocks: int = 0

    @property
    def hours_online(self) -> float:
        return self.seconds_online / 3600

    @property
    def block_hours(self) -> float:
        """Blocks held × hours: 3 blocks for 2 hours are 6 block-hours."""
        return self.block_seconds / 3600


COUNTERS = ("tokens", "inference_sessions", "training_requests", "seconds_online", "block_seconds")
CSV_COLUMNS = ("day", "tokens", "inference_sessions", "training_requests", "hours_online", "block_hours",
               "max_blocks")


class CreditLedger:
    """The per-day table in ``path`` (created on first use); safe to use from one thread at a time."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=5.0)
        self._db.execute("PRAGMA journal_mode=WAL")  # a crash mid-write leaves the last committed rows intact
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS days (day TEXT PRIMARY KEY, tokens INTEGER NOT NULL DEFAULT 0,"
            " inference_sessions INTEGER NOT NULL DEFAULT 0, training_requests INTEGER NOT NULL DEFAULT 0,"
            " seconds_online REAL NOT NULL DEFAULT 0, block_seconds REAL NOT NULL DEFAULT 0,"
            " max_blocks INTEGER NOT NULL DEFAULT 0)")
        self._db.commit()

    def add(self, day: str, tokens: int = 0, inference_sessions: int = 0, training_requests: int = 0,
            seconds_online: float = 0.0, block_seconds: float = 0.0, blocks: int = 0) -> None:
        """Add increases to ``day``'s row (``YYYY-MM-DD``) and raise its ``max_blocks`` to ``blocks``; committed at once."""
        with self._lock:
            self._db.execute(
                "INSERT INTO days (day, tokens, inference_sessions, training_requests, seconds_online, block_seconds,"
                " max_blocks) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(day) DO UPDATE SET"
                " tokens = tokens + excluded.tokens,"
                " inference_sessions = inference_sessions + excluded.inference_sessions,"
                " training_requests = training_requests + excluded.training_requests,"
                " seconds_online = seconds_online + excluded.seconds_online,"
                " block_seconds = block_seconds + excluded.block_seconds,"
                " max_blocks = MAX(max_blocks, excluded.max_blocks)",
                (day, tokens, inference_sessions, training_requests, seconds_online, block_seconds, blocks))
            self._db.commit()

    def day(self, day: str) -> DayCredit:
        """One day's row (zeros when nothing was served that day)."""
        with self._lock:
            row = self._db.execute(f"SELECT day, {', '.join(COUNTERS)}, max_blocks FROM days WHERE day = ?",
                                   (day,)).fetchone()
        return DayCredit(*row) if row else DayCredit(day)

    def days(self, last: int, today: datetime.date | None = None) -> list[DayCredit]:
        """The ``last`` days up to ``today``, oldest first, days without a row as zeros."""
        today = today or datetime.date.today()
        first = today - datetime.timedelta(days=last - 1)
        with self._lock:
            rows = self._db.execute(f"SELECT day, {', '.join(COUNTERS)}, max_blocks FROM days WHERE day >= ?",
                                    (first.isoformat(),)).fetchall()
        found = {row[0]: DayCredit(*row) for row in rows}
        dates = ((first + datetime.timedelta(days=offset)).isoformat() for offset in range(last))
        return [found.get(day, DayCredit(day)) for day in dates]

    def lifetime(self) -> DayCredit:
        """Everything since the database was created (``max_blocks``: the most ever held on one day)."""
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(f'COALESCE(SUM({name}), 0)' for name in COUNTERS)},"
                                   " COALESCE(MAX(max_blocks), 0) FROM days").fetchone()
        return DayCredit("", *row)

    def export_csv(self, path: Path) -> int:
        """Write every day as a CSV row (hours, not seconds); returns the number of days written."""
        with self._lock:
            rows = self._db.execute(f"SELECT day, {', '.join(COUNTERS)}, max_blocks FROM days ORDER BY day").fetchall()
        with open(path, "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(CSV_COLUMNS)
            for credit in (DayCredit(*row) for row in rows):
                writer.writerow((credit.day, credit.tokens, credit.inference_sessions, credit.training_requests,
                                 f"{credit.hours_online:.3f}", f"{credit.block_hours:.3f}", credit.max_blocks))
        return len(rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass
class _Seen:
    """The last counters of the current worker, so only increases are added."""

    tokens: int = 0
    inference_sessions: int = 0
    training_requests: int = 0


class CreditRecorder:
    """Adds the increase of each worker status to the ledger.

    A worker's counters only grow while it lives; a smaller value means a new worker (after a crash
    or a restart), whose counts are all new. :meth:`worker_gone` says so explicitly when the
    process ends. Time online is counted from a serving status to the next status, at most
    :data:`MAX_GAP` seconds per gap (a pause's first status ends the time served).
    """

    def __init__(self, ledger: CreditLedger, clock: Callable[[], float] = time.time) -> None:
        self.ledger = ledger
        self.clock = clock
        self._seen = _Seen()
        self._serving_at: float | None = None
        self._blocks = 0

    def observe(self, status: StatusEvent) -> None:
        """Record what ``status`` adds to today's row."""
        now = self.clock()
        increases = {}
        for item in fields(_Seen):
            value, before = getattr(status, item.name), getattr(self._seen, item.name)
            increases[item.name] = value - before if value >= before else value  # smaller: a new worker
            setattr(self._seen, item.name, value)
        seconds = 0.0
        if self._serving_at is not None:  # served since the last status (up to this one, whatever it says)
            seconds = min(max(now - self._serving_at, 0.0), MAX_GAP)
        serving = status.state == WorkerState.SERVING
        blocks = status.num_blocks if serving else 0
        held = max(blocks, self._blocks)
        block_seconds = seconds * self._blocks
        self._serving_at, self._blocks = (now, blocks) if serving else (None, 0)
        if any(increases.values()) or seconds or held:
            day = datetime.date.fromtimestamp(now).isoformat()
            try:
                self.ledger.add(day, seconds_online=seconds, block_seconds=block_seconds, blocks=held, **increases)
            except sqlite3.Error as error:  # a full disk must not stop serving
                logger.warning("Could not record statistics in %s: %s", self.ledger.path, error)

    def worker_gone(self) -> None:
        """The worker process ended: the next one counts from zero."""
        self._seen = _Seen()
        self._serving_at, self._blocks = None, 0
