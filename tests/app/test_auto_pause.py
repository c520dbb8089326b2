"""Auto-pause with real parts: a real child process with a listed name, a faked battery (psutil), other programs
on a faked NVIDIA GPU (only pynvml is mocked: there is no NVIDIA GPU here), and a real worker that pauses,
says why on the dashboard and the tray, and resumes with the same peer id."""
from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from app import pause_probes
from app.pause_probes import NO_GPU_NOTE, gpu_usage, listed_programs_running, on_battery
from app.worker.messages import WorkerState


@pytest.fixture
def run_program(tmp_path: Path) -> Iterator:
    """Start a real process under a chosen name (a copy of ``sleep``); all are ended after the test."""
    started: list[subprocess.Popen] = []

    def run(name: str) -> subprocess.Popen:
        program = tmp_path / name
        shutil.copy(shutil.which("sleep"), program)
        process = subprocess.Popen([str(program), "600"])
        started.append(process)
        return process

    yield run
    for process in started:
        process.kill()
        process.wait()


def fake_pynvml(processes: list[tuple[int, int]], utilization: int) -> types.ModuleType:
    """A pynvml with one GPU whose graphics processes are ``(pid, MiB)`` and whose load is ``utilization`` %."""
    module = types.ModuleType("pynvml")
    module.nvmlInit = lambda: None
    module.nvmlShutdown = lambda: None
    module.nvmlDeviceGetCount = lambda: 1
    module.nvmlDeviceGetHandleByIndex = lambda index: "gpu0"
    module.nvmlDeviceGetComputeRunningProcesses = lambda handle: []
    module.nvmlDeviceGetGraphicsRunningProcesses = lambda handle: [
        types.SimpleNamespace(pid=pid, usedGpuMemory=mib * 2**20) for pid, mib in processes]

    def no_samples(handle: object, since: int) -> list:
        raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")

    module.nvmlDeviceGetProcessUtilization = no_samples
    module.nvmlDeviceGetUtilizationRates = lambda handle: types.SimpleNamespace(gpu=utilization, memory=10)
    return module


def battery(plugged: bool | None) -> object:
    """A ``psutil.sensors_battery`` for a laptop on mains (True), on battery (False) or a desktop (None)."""
    return lambda: None if plugged is None else types.SimpleNamespace(percent=55, secsleft=3600, power_plugged=plugged)


def test_a_listed_program_is_found_by_its_process_name(run_program) -> None:
    assert listed_programs_running(["FakeGameLauncher.exe", "steam"], set()) == ()
    game = run_program("FakeGameLauncher")  # 16 characters: Linux keeps 15 of them
    assert listed_programs_running(["steam", "fakegamelauncher.EXE"], set()) == ("fakegamelauncher.EXE",)
    assert listed_programs_running(["FakeGameLauncher"], {game.pid}) == ()  # Blossom's own processes never count
    game.kill()
    game.wait()
    assert listed_programs_running(["FakeGameLauncher"], set()) == ()


def test_gpu_users_are_other_programs_and_no_nvidia_is_said(run_program, monkeypatch: pytest.MonkeyPatch) -> None:
    assert gpu_usage(set()) == (None, (), NO_GPU_NOTE)  # this machine: no NVIDIA driver
    game, desktop, worker = run_program("game.exe"), run_program("Xorg"), run_program("python3")
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([(game.pid, 3000), (desktop.pid, 200),
                                                            (worker.pid, 5000)], utilization=91))
    load, users, note = gpu_usage({worker.pid})
    assert (load, note) == (91, "")
    assert [(user.name, user.pid, user.memory_mib) for user in users] == [("game.exe", game.pid, 3000)]
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([(desktop.pid, 200), (worker.pid, 5000)], 99))
    assert gpu_usage({worker.pid}) == (0, (), "")  # only the desktop and Blossom: nothing to give way to


def test_battery_is_read_from_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    for plugged, expected in ((False, True), (True, False), (None, None)):
        monkeypatch.setattr(psutil, "sensors_battery", battery(plugged))
        assert on_battery() is expected


@pytest.mark.slow
def test_serving_pauses_for_a_game_a_busy_gpu_and_battery_and_resumes(
        qtbot, make_window, tiny_checkpoints, run_program, monkeypatch: pytest.MonkeyPatch) -> None:
    _, converted = tiny_checkpoints["llama"]
    monkeypatch.setattr(psutil, "sensors_battery", battery(True))  # a desktop on mains
    window = make_window(model=str(converted), pause_programs=["FakeGameLauncher"], pause_gpu_percent=50)
    controller, worker = window.controller, window.controller.worker
    pauser = controller.auto_pause
    pauser._timer.setInterval(300)  # look often: the test waits for each change
    controller.begin()
    pauser.set_rules(dataclasses.replace(pauser.rules, resume_after=0.0))
    assert pauser.rules.enabled and pauser.rules.programs == ("FakeGameLauncher",)
    controller.start_serving()
    qtbot.waitUntil(lambda: worker.state == WorkerState.SERVING, timeout=150_000)
    peer_id = worker.status.peer_id

    def paused_for(reason: str) -> None:
        qtbot.waitUntil(lambda: worker.state == WorkerState.PAUSED and reason in controller.auto_pause_reason,
                        timeout=60_000)
        assert reason in window.dashboard.status.subtitle.text()
        assert window.dashboard.status.subtitle.text().startswith("By itself: ")
        assert reason in window.tray.icon.toolTip()

    def resumed() -> None:
        qtbot.waitUntil(lambda: worker.state == WorkerState.SERVING, timeout=60_000)
        assert controller.auto_pause_reason == "" and worker.status.peer_id == peer_id

    game = run_program("FakeGameLauncher")
    paused_for("FakeGameLauncher is running")
    game.kill()
    game.wait()
    resumed()

    other = run_program("game.exe")
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([(other.pid, 4000)], utilization=88))
    paused_for("game keeps the GPU busy (88 %)")
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([(other.pid, 4000)], utilization=3))
    resumed()

    monkeypatch.setattr(psutil, "sensors_battery", battery(False))
    paused_for("This PC runs on battery")
    window.dashboard.status.resume_button.click()  # the user insists: no new pause for the same reason
    qtbot.waitUntil(lambda: worker.state == WorkerState.SERVING, timeout=60_000)
    qtbot.wait(1500)
    assert worker.state == WorkerState.SERVING and pause_probes.on_battery() is True


def test_rules_edited_in_settings_apply_and_notes_say_what_cannot_be_checked(qtbot, make_window,
                                                                             settings_store) -> None:
    window = make_window()
    controller, box = window.controller, window.settings.pause_box
    controller.begin()
    assert "steam" in box.programs.toPlainText() and box.enabled.isChecked()  # the shipped launcher list
    qtbot.waitUntil(lambda: not box.notes.isHidden(), timeout=20_000)
    assert "No NVIDIA GPU" in box.notes.text()  # this machine: the GPU rule cannot work, and it says so
    box.programs.setPlainText("MyGame.exe\n\n  other  ")
    box.schedule.setChecked(True)
    box.gpu_percent.setValue(0)
    window.settings.apply_button.click()
    rules = controller.auto_pause.rules
    assert rules.programs == ("MyGame.exe", "other") and rules.schedule and rules.gpu_busy_percent == 0
    assert settings_store.load().pause_programs == ["MyGame.exe", "other"]
    box.enabled.setChecked(False)
    window.settings.apply_button.click()
    assert not controller.auto_pause.rules.enabled and not controller.auto_pause._timer.isActive()
