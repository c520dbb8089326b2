"""Credit statistics: the SQLite ledger, increases from worker statuses, a real worker crash and an app restart."""
from __future__ import annotations

import csv
import datetime
import os
import signal
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from app.credit import MAX_GAP, CreditLedger, CreditRecorder
from app.worker.messages import StatusEvent, WorkerState

DAY = datetime.date(2026, 3, 14)


class Clock:
    """A settable clock for the recorder (local noon on ``DAY``)."""

    def __init__(self) -> None:
        self.now = datetime.datetime.combine(DAY, datetime.time(12)).timestamp()

    def __call__(self) -> float:
        return self.now


def serving(**counters: int) -> StatusEvent:
    return StatusEvent(WorkerState.SERVING, start_block=0, end_block=3, total_blocks=3, **counters)


def test_only_increases_are_added_and_a_new_worker_counts_from_zero(tmp_path: Path) -> None:
    ledger, clock = CreditLedger(tmp_path / "credit.sqlite3"), Clock()
    recorder = CreditRecorder(ledger, clock)
    recorder.observe(serving(tokens=10, inference_sessions=1))
    clock.now += 2
    recorder.observe(serving(tokens=25, inference_sessions=2, training_requests=1))
    clock.now += 3600  # the PC slept: not an hour online
    recorder.observe(serving(tokens=30, inference_sessions=2, training_requests=1))
    clock.now += 1
    recorder.observe(serving(tokens=4, inference_sessions=1))  # smaller: a new worker after a crash
    recorder.worker_gone()
    clock.now += 1
    recorder.observe(serving(tokens=6, inference_sessions=1))  # and another one, announced by worker_gone
    day = ledger.day(DAY.isoformat())
    assert (day.tokens, day.inference_sessions, day.training_requests) == (30 + 4 + 6, 2 + 1 + 1, 1)
    assert day.seconds_online == pytest.approx(2 + MAX_GAP + 1)  # the gap after worker_gone starts afresh
    assert day.block_seconds == pytest.approx(3 * day.seconds_online) and day.max_blocks == 3
    clock.now += 1
    recorder.observe(StatusEvent(WorkerState.PAUSED, tokens=6, inference_sessions=1))  # served until now
    clock.now += 100
    recorder.observe(StatusEvent(WorkerState.PAUSED, tokens=6, inference_sessions=1))  # paused: not online
    assert ledger.day(DAY.isoformat()).seconds_online == pytest.approx(2 + MAX_GAP + 1 + 1)


def test_days_survive_a_reopen_chart_has_no_holes_and_csv_exports(tmp_path: Path) -> None:
    path = tmp_path / "credit.sqlite3"
    ledger = CreditLedger(path)
    ledger.add("2026-03-10", tokens=100, inference_sessions=2, seconds_online=7200, block_seconds=14400, blocks=2)
    ledger.add("2026-03-12", tokens=50, training_requests=5, seconds_online=3600, blocks=4)
    ledger.close()
    reopened = CreditLedger(path)  # the app restarted
    days = reopened.days(5, today=datetime.date(2026, 3, 13))
    assert [day.day for day in days] == ["2026-03-09", "2026-03-10", "2026-03-11", "2026-03-12", "2026-03-13"]
    assert [day.tokens for day in days] == [0, 100, 0, 50, 0]
    total = reopened.lifetime()
    assert (total.tokens, total.inference_sessions, total.training_requests, total.max_blocks) == (150, 2, 5, 4)
    assert total.hours_online == pytest.approx(3.0) and total.block_hours == pytest.approx(4.0)
    assert reopened.export_csv(tmp_path / "out.csv") == 2
    rows = list(csv.DictReader(open(tmp_path / "out.csv", encoding="utf-8")))
    assert rows[0] == {"day": "2026-03-10", "tokens": "100", "inference_sessions": "2", "training_requests": "0",
                       "hours_online": "2.000", "block_hours": "4.000", "max_blocks": "2"}


@pytest.mark.slow
def test_credit_survives_a_worker_crash_and_an_app_restart(qtbot, make_window, tiny_checkpoints, blossom_home,
                                                            settings_store, tmp_path: Path) -> None:
    """Two chat replies on a real worker are 2 requests (not one per token); a SIGKILLed worker and a new app
    keep every token counted."""
    from app.app_controller import AppController

    _, converted = tiny_checkpoints["llama"]
    window = make_window(model=str(converted), temperature=0.0, max_new_tokens=6)
    window.controller.begin()
    window.controller.start_serving()
    qtbot.waitUntil(lambda: window.controller.chat.target is not None, timeout=150_000)
    for text in ("hello", "and again"):
        with qtbot.waitSignal(window.controller.chat.reply_finished, timeout=120_000):
            window.chat.input.setPlainText(text)
            qtbot.mouseClick(window.chat.send_button, Qt.MouseButton.LeftButton)
    worker = window.controller.worker
    qtbot.waitUntil(lambda: worker.status.inference_sessions == 2, timeout=10_000)
    status = worker.status
    assert status.requests > 2  # one computing step per token
    assert window.dashboard.tiles["requests"].value.text() == "2"
    ledger = window.controller.ledger
    qtbot.waitUntil(lambda: ledger.lifetime().seconds_online >= 2, timeout=10_000)
    before = ledger.lifetime()
    assert before.inference_sessions == 2 and before.tokens == status.tokens and before.max_blocks == 4
    assert "2 inference sessions" in window.dashboard.credit.today.text()

    with qtbot.waitSignal(worker.crashed, timeout=30_000):
        os.kill(worker.process_id, signal.SIGKILL)
    assert ledger.lifetime().tokens == before.tokens  # nothing lost with the worker
    window.controller.shutdown()
    qtbot.waitUntil(lambda: window.controller.closed, timeout=30_000)

    restarted = AppController(settings_store, log_dir=blossom_home / "logs")  # the app starts again
    shown: list = []
    restarted.credit_changed.connect(lambda today, lifetime, days: shown.append(lifetime))
    restarted.emit_credit()
    assert shown[0].tokens == before.tokens and shown[0].inference_sessions == 2
    assert (blossom_home / "identity.key").exists()  # the server's peer id is the app's own, kept for next time
