"""Serving from the dashboard: a real worker process through start -> serving -> pause -> resume -> stop, and a crash."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from app.worker.messages import WorkerState
from core.dht.records import get_block_servers
from core.dht.schema import ServerState

START_TIMEOUT = 150_000


def announced_states(client_dht_factory, window) -> dict[str, str]:
    """peer id -> state of every server record for block 0 of the served model, read from the swarm's DHT."""
    status = window.controller.worker.status
    dht = client_dht_factory(list(status.swarm_peers))
    (servers,) = get_block_servers(dht, status.model_name or "tiny-llama", [0])
    return {peer: info.state.value for peer, info in servers.items()}


def wait_state(qtbot, window, state: WorkerState, timeout: int = START_TIMEOUT) -> None:
    qtbot.waitUntil(lambda: window.controller.worker.state == state, timeout=timeout)


@pytest.mark.slow
def test_start_pause_resume_stop_from_the_dashboard(qtbot, make_window, tiny_checkpoints, client_dht_factory) -> None:
    _, converted = tiny_checkpoints["llama"]
    window = make_window(model=str(converted), public_name="test-node")
    window.controller.begin()
    card = window.dashboard.status
    assert not card.start_button.isHidden()
    qtbot.waitUntil(lambda: window.controller.recommendation is not None, timeout=60_000)
    assert card.start_button.isEnabled()  # greyed only while the model is prepared
    qtbot.mouseClick(card.start_button, Qt.MouseButton.LeftButton)
    wait_state(qtbot, window, WorkerState.SERVING)
    assert window.controller.recommendation is not None

    status = window.controller.worker.status
    assert (status.start_block, status.end_block, status.total_blocks) == (0, 4, 4)
    assert status.swarm_peers and status.swarm_peers[0].startswith("/ip4/127.0.0.1/")
    assert window.dashboard.status.title.text() == "Serving"
    assert window.dashboard.tiles["blocks"].value.text() == "4 / 4"
    assert window.tray.state == WorkerState.SERVING and window.tray.toggle_action.text() == "Pause serving"
    worker_pid = window.controller.worker.process_id
    assert worker_pid and worker_pid != os.getpid()
    first_peer = status.peer_id
    assert announced_states(client_dht_factory, window)[first_peer] == ServerState.ONLINE.value

    qtbot.mouseClick(card.pause_button, Qt.MouseButton.LeftButton)
    wait_state(qtbot, window, WorkerState.PAUSED, 60_000)
    assert "Paused" in window.dashboard.status.title.text()
    assert window.controller.worker.process_id == worker_pid  # the worker lives on, without its server
    assert announced_states(client_dht_factory, window)[first_peer] == ServerState.OFFLINE.value
    assert window.tray.toggle_action.text() == "Resume serving"

    window.tray.toggle_action.trigger()  # resume from the tray menu
    wait_state(qtbot, window, WorkerState.SERVING, 60_000)
    resumed = window.controller.worker.status
    assert (resumed.start_block, resumed.end_block) == (0, 4)
    assert resumed.peer_id == first_peer  # the app's identity file: the swarm sees the same server come back
    assert announced_states(client_dht_factory, window)[resumed.peer_id] == ServerState.ONLINE.value

    with qtbot.waitSignal(window.controller.worker.exited, timeout=60_000):
        qtbot.mouseClick(card.stop_button, Qt.MouseButton.LeftButton)
    assert window.controller.worker.state == WorkerState.STOPPED
    assert not window.controller.worker.running
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)
    assert "Serving blocks 0–3" in window.dashboard.log.toPlainText()


@pytest.mark.slow
def test_worker_failure_is_shown_with_its_reason_and_a_restart(qtbot, make_window, tiny_checkpoints,
                                                               tmp_path: Path) -> None:
    _, converted = tiny_checkpoints["llama"]
    broken = tmp_path / "broken-model"
    shutil.copytree(converted, broken)
    block = broken / "block_2" / "model.safetensors"
    block.write_bytes(block.read_bytes()[:-64] + bytes(64))  # same size, wrong bytes: fails the sha256 check
    window = make_window(model=str(broken))
    crashes: list[str] = []
    window.controller.worker.crashed.connect(crashes.append)
    window.controller.begin()
    qtbot.waitUntil(lambda: window.controller.recommendation is not None, timeout=30_000)
    with qtbot.waitSignal(window.controller.worker.crashed, timeout=START_TIMEOUT):
        window.controller.start_serving()
    assert window.controller.worker.state == WorkerState.ERROR
    assert crashes and "block_2" in crashes[0] and "sha256" in crashes[0]
    card = window.dashboard.status
    assert card.title.text() == "The server stopped with an error"
    assert "block_2" in card.subtitle.text()
    assert not card.restart_button.isHidden() and card.start_button.isHidden()
    assert window.tray.state == WorkerState.ERROR and window.tray.toggle_action.text() == "Restart serving"

    block.write_bytes((converted / "block_2" / "model.safetensors").read_bytes())  # repaired: a restart works
    qtbot.mouseClick(card.restart_button, Qt.MouseButton.LeftButton)
    wait_state(qtbot, window, WorkerState.SERVING)
    assert window.dashboard.status.problem.isHidden()
