"""The first-run page: shown before anything is served, says what passes through the PC, and serving starts only
after the choice (remembered in the settings)."""
from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from app.settings import JOIN
from app.worker.messages import WorkerState


def test_not_now_opens_the_dashboard_without_serving(qtbot, make_window, tiny_checkpoints, settings_store) -> None:
    _, converted = tiny_checkpoints["llama"]
    window = make_window(model=str(converted), first_run_done=False, start_serving_at_launch=True)
    page = window.first_run
    assert window.pages.currentWidget() is page
    text = " ".join(label.text() for label in page.sections)
    assert "never files" in text.lower() and "127.0.0.1" in text and "Nothing leaves this computer" in text
    window.controller.begin()
    qtbot.waitUntil(lambda: window.controller.recommendation is not None, timeout=60_000)
    qtbot.wait(500)
    assert not window.controller.worker.running  # start_serving_at_launch waits for the first-run choice
    window.tray.start_requested.emit()  # the tray's Start shows the page instead of serving
    assert not window.controller.worker.running
    qtbot.mouseClick(page.later_button, Qt.MouseButton.LeftButton)
    assert window.pages.currentWidget() is window.tabs and window.tabs.currentWidget() is window.dashboard
    stored = settings_store.load()
    assert stored.first_run_done and not stored.start_serving_at_launch and not window.controller.worker.running


def test_a_joined_swarm_names_its_port(qtbot, make_window) -> None:
    window = make_window(first_run_done=False, swarm_mode=JOIN, port=31337,
                         initial_peers=["/ip4/203.0.113.5/tcp/31337/p2p/QmExamplePeerIdxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"])
    assert "port 31337 (TCP)" in " ".join(label.text() for label in window.first_run.sections)


@pytest.mark.slow
def test_start_now_serves_and_is_remembered(qtbot, make_window, tiny_checkpoints, settings_store) -> None:
    _, converted = tiny_checkpoints["llama"]
    window = make_window(model=str(converted), first_run_done=False, start_serving_at_launch=False)
    window.controller.begin()
    qtbot.mouseClick(window.first_run.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.controller.worker.state == WorkerState.SERVING, timeout=150_000)
    stored = settings_store.load()
    assert stored.first_run_done and stored.start_serving_at_launch
