"""Fixtures for the desktop app's tests: a settings file, an app controller and a local swarm, all cleaned up."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Iterator

import pytest

from app.settings import AppSettings, SettingsStore


@pytest.fixture
def blossom_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh Blossom home (logs, measured speeds, saved prompts) for this test and its worker."""
    home = tmp_path / "blossom-home"
    monkeypatch.setenv("BLOSSOM_HOME", str(home))
    return home


@pytest.fixture
def settings_store(tmp_path: Path) -> SettingsStore:
    return SettingsStore(tmp_path / "settings.ini")


@pytest.fixture
def make_window(qtbot, settings_store: SettingsStore, blossom_home: Path) -> Iterator[Callable]:
    """Build the real main window around an AppController with the given settings (the first-run page already
    answered unless ``first_run_done=False``); everything is stopped after."""
    from app.app_controller import AppController
    from app.widgets.main_window import MainWindow

    made: list = []

    def make(**changes: object):
        settings = dataclasses.replace(AppSettings(start_serving_at_launch=False, first_run_done=True), **changes)
        settings_store.save(settings)
        controller = AppController(settings_store, log_dir=blossom_home / "logs")
        window = MainWindow(controller)
        qtbot.addWidget(window)
        made.append(window)
        return window

    yield make
    for window in made:  # pytest-qt may have closed the window already, which starts the same shutdown
        window.controller.shutdown(kill_after=60)
        qtbot.waitUntil(lambda window=window: window.controller.closed, timeout=90_000)
        window.controller.worker.kill()


@pytest.fixture(scope="package")
def app_swarm(tiny_checkpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A local swarm (a DHT peer and one server with all 4 blocks of the tiny Llama) shared by the app's tests,
    stopped as soon as they are done."""
    from core.launcher import LocalSwarm

    _, converted = tiny_checkpoints["llama"]
    swarm = LocalSwarm(converted, [(0, 4)], log_dir=tmp_path_factory.mktemp("app-swarm-logs"))
    try:
        swarm.start()
        yield swarm
    finally:
        swarm.stop()
