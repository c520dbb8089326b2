"""The app's switch for the OpenAI-compatible API: the setting, a real ``blossom-api`` process (never the GUI's
own), its address on the dashboard, a clear reason when it cannot start, and stopping it from Settings."""
from __future__ import annotations

import json
import os
import socket
import urllib.request

import pytest
from PySide6.QtCore import Qt

from app.api_process import FAILED, RUNNING, WAITING
from app.settings import JOIN, AppSettings, SettingsStore
from app.widgets.settings import SettingsTab

START_TIMEOUT = 180_000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_switch_and_port_round_trip_through_the_settings_tab_and_file(qtbot, tmp_path) -> None:
    tab = SettingsTab()
    qtbot.addWidget(tab)
    tab.show_settings(AppSettings(api_enabled=True, api_port=8123))
    assert tab.api_enabled.isChecked() and tab.api_port.value() == 8123 and tab.api_port.isEnabled()
    tab.api_enabled.setChecked(False)
    assert not tab.api_port.isEnabled()
    tab.api_enabled.setChecked(True)
    tab.api_port.setValue(9001)
    with qtbot.waitSignal(tab.apply_requested) as applied:
        qtbot.mouseClick(tab.apply_button, Qt.MouseButton.LeftButton)
    assert (applied.args[0].api_enabled, applied.args[0].api_port) == (True, 9001)

    store = SettingsStore(tmp_path / "settings.ini")
    store.save(applied.args[0])
    reloaded = SettingsStore(tmp_path / "settings.ini").load()
    assert (reloaded.api_enabled, reloaded.api_port) == (True, 9001)
    assert AppSettings().api_enabled is False  # off unless asked for


def test_a_port_clash_with_the_node_is_refused_in_settings(qtbot) -> None:
    settings = AppSettings(swarm_mode=JOIN, initial_peers=[], port=31330, api_enabled=True, api_port=31330)
    assert any("cannot both use port 31330" in problem for problem in settings.problems())
    tab = SettingsTab()
    qtbot.addWidget(tab)
    tab.show_settings(AppSettings(port=31330, api_enabled=True, api_port=31330))
    with qtbot.assertNotEmitted(tab.apply_requested):
        qtbot.mouseClick(tab.apply_button, Qt.MouseButton.LeftButton)
    assert "cannot both use port 31330" in tab.problem.text()


@pytest.mark.slow
def test_the_app_runs_the_api_in_its_own_process_and_shows_where(qtbot, make_window, app_swarm,
                                                                 tiny_checkpoints) -> None:
    _, converted = tiny_checkpoints["llama"]
    window = make_window(model=str(converted), swarm_mode=JOIN, initial_peers=list(app_swarm.initial_peers),
                         api_enabled=True)
    api = window.controller.api
    try:
        check_the_api_process(qtbot, window, api)
    finally:  # whatever happened, no API process outlives the test
        api.kill()


def check_the_api_process(qtbot, window, api) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))  # another program holds this port
    taken.listen(1)
    busy = taken.getsockname()[1]
    try:
        window.settings.api_port.setValue(busy)
        qtbot.mouseClick(window.settings.apply_button, Qt.MouseButton.LeftButton)
        assert api.status.state == WAITING and "starts once" in window.dashboard.status.api.text()
        window.controller.begin()
        qtbot.waitUntil(lambda: api.status.state == FAILED, timeout=START_TIMEOUT)
        line = window.dashboard.status.api
        assert not line.isHidden() and f"cannot listen on 127.0.0.1:{busy}" in line.text()
        assert line.objectName() == "errorText"
    finally:
        taken.close()

    port = free_port()  # the user picks another port in Settings and applies it
    window.settings.api_port.setValue(port)
    qtbot.mouseClick(window.settings.apply_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: api.status.state == RUNNING, timeout=START_TIMEOUT)
    url = f"http://127.0.0.1:{port}/v1"
    assert api.status.url == url and url in window.dashboard.status.api.text()
    pid = api.process_id
    assert pid and pid != os.getpid()  # its own program, not the GUI process
    with urllib.request.urlopen(f"{url}/models", timeout=30) as response:
        (model,) = json.loads(response.read())["data"]
    request = urllib.request.Request(f"{url}/completions", data=json.dumps(
        {"model": model["id"], "prompt": "hello", "max_tokens": 3, "temperature": 0}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        assert json.loads(response.read())["usage"]["completion_tokens"] >= 1

    window.settings.api_enabled.setChecked(False)  # switched off: the program ends, the line goes
    qtbot.mouseClick(window.settings.apply_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not api.running, timeout=30_000)
    assert window.dashboard.status.api.isHidden()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
