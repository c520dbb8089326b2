"""The chat while this PC serves its private swarm: ready (never "Not connected"), and while paused it says so
with the way out instead of a missing-blocks error naming a command line."""
from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from app.worker.messages import WorkerState


@pytest.mark.slow
def test_chat_says_ready_while_serving_and_paused_with_resume(qtbot, make_window, tiny_checkpoints) -> None:
    _, converted = tiny_checkpoints["llama"]
    window = make_window(model=str(converted))
    assert window.chat.status.text().startswith("No swarm to chat with yet")
    assert window.chat.temperature.value() == 0.0 and window.chat.temperature.text() == "0 (greedy)"
    worker = window.controller.worker
    window.controller.begin()
    window.controller.start_serving()
    qtbot.waitUntil(lambda: worker.state == WorkerState.SERVING, timeout=150_000)
    qtbot.waitUntil(lambda: window.chat.status.text().startswith("Ready: the model runs on this PC"), timeout=10_000)

    window.controller.pause_serving()
    qtbot.waitUntil(lambda: worker.state == WorkerState.PAUSED, timeout=60_000)
    assert window.chat.status.text().startswith("Serving is paused: press Resume")
    window.chat.input.setPlainText("hello")
    qtbot.mouseClick(window.chat.send_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "Serving is paused" in window.chat.transcript_text(), timeout=5_000)
    assert "run_server" not in window.chat.transcript_text()
    window.controller.resume_serving()
    qtbot.waitUntil(lambda: window.chat.status.text().startswith("Ready"), timeout=60_000)
