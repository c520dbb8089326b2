"""The dashboard's hardware panel and recommendation for faked NVIDIA GPUs, overrides kept in QSettings, the tray."""
from __future__ import annotations

import sys

import pytest

from app.settings import SettingsStore
from app.widgets.tray import TrayIcon
from app.worker.messages import StatusEvent, WorkerState
from tests.core.test_hardware import fake_pynvml, gpu


def test_recommendation_for_faked_gpus(qtbot, make_window, tiny_checkpoints, monkeypatch: pytest.MonkeyPatch,
                                       settings_store: SettingsStore) -> None:
    cards = [gpu("NVIDIA GeForce GTX 1080", 8, 7, (6, 1), 0), gpu("NVIDIA GeForce RTX 3090", 24, 20, (8, 6), 1)]
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(cards))
    _, converted = tiny_checkpoints["llama"]
    window = make_window(model=str(converted))
    window.controller.begin()
    card = window.dashboard.recommendation
    qtbot.waitUntil(lambda: window.controller.recommendation is not None, timeout=30_000)

    hardware = window.dashboard.hardware.gpu_label.text()
    assert "NVIDIA GeForce RTX 3090" in hardware and "24.0 GiB VRAM" in hardware and "20.0 GiB free" in hardware
    assert "driver 550.54" in hardware and "compute capability 8.6" in hardware and "6.1" in hardware
    assert card.headline.text() == "4 of 4 blocks · bfloat16 · cuda:1"
    assert card.explanation.text().startswith("NVIDIA GeForce RTX 3090 (20.0 GiB free): 4 of 4 blocks in bfloat16")
    assert [card.device.itemData(i) for i in range(card.device.count())] == ["", "cpu", "cuda:0", "cuda:1"]

    card.override.click()  # "Choose myself"
    assert card.override_row.isVisibleTo(window)
    card.blocks.setValue(2)
    card.dtype.setCurrentText("float16")
    card.quant.setCurrentText("int8")
    card.device.setCurrentIndex(card.device.findData("cuda:0"))
    stored = settings_store.load()
    assert (stored.override, stored.num_blocks, stored.torch_dtype, stored.quant_type, stored.device) == (
        True, 2, "float16", "int8", "cuda:0")
    card.blocks.setValue(0)
    assert card.warning.isHidden()


def test_no_driver_means_serving_on_cpu(qtbot, make_window, tiny_checkpoints, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([], fail_init=True))
    _, converted = tiny_checkpoints["llama"]
    window = make_window(model=str(converted))
    window.controller.begin()
    qtbot.waitUntil(lambda: window.controller.recommendation is not None, timeout=30_000)
    assert window.dashboard.hardware.gpu_label.text() == "No NVIDIA GPU driver found: <b>serving on CPU</b>"
    assert window.dashboard.recommendation.headline.text() == "4 of 4 blocks · float32 · CPU"
    assert "GiB RAM" in window.dashboard.hardware.ram_label.text()


def test_a_small_card_and_more_blocks(qtbot, make_window, tiny_checkpoints, monkeypatch,
                                      settings_store: SettingsStore) -> None:
    """A card with too little free VRAM falls back to the CPU, with or without int8/nf4; the reason is shown."""
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([gpu("GT 710", 2, 1.2, (3, 5))]))
    _, converted = tiny_checkpoints["llama"]
    window = make_window(model=str(converted))
    window.controller.begin()
    qtbot.waitUntil(lambda: window.controller.recommendation is not None, timeout=30_000)
    rec = window.controller.recommendation
    assert rec.device == "cpu" and "GT 710 has only 1.2 GiB of free VRAM" in rec.explanation
    with qtbot.waitSignal(window.controller.recommendation_changed, timeout=5_000) as changed:
        window.dashboard.recommendation.more_blocks.click()
    assert settings_store.load().more_blocks  # kept across runs
    assert changed.args[0].device == "cpu"  # even int8/nf4 leave no room on this card
    assert window.dashboard.recommendation.headline.text() == "4 of 4 blocks · float32 · CPU"


def test_tray_follows_the_state_and_asks_for_actions(qtbot) -> None:
    tray = TrayIcon()
    requested: list[str] = []
    for name in ("pause", "resume", "start", "open", "quit"):
        getattr(tray, f"{name}_requested").connect(lambda name=name: requested.append(name))
    cache_keys = []
    for state, text in ((WorkerState.SERVING, "Pause serving"), (WorkerState.PAUSED, "Resume serving"),
                        (WorkerState.STOPPED, "Start serving"), (WorkerState.ERROR, "Restart serving")):
        tray.show_state(state, "detail")
        assert tray.toggle_action.text() == text and tray.toggle_action.isEnabled()
        cache_keys.append(tray.icon.icon().cacheKey())
        tray.toggle_action.trigger()
    assert len(set(cache_keys)) == 4  # one icon per state
    tray.show_state(WorkerState.STARTING)
    assert not tray.toggle_action.isEnabled()
    tray.open_action.trigger()
    tray.quit_action.trigger()
    assert requested == ["pause", "resume", "start", "start", "open", "quit"]


def test_close_hides_to_the_tray_once_with_a_notice_else_quits(qtbot, make_window, tiny_checkpoints,
                                                               settings_store: SettingsStore) -> None:
    _, converted = tiny_checkpoints["llama"]
    window = make_window(model=str(converted))
    window.show()
    window.tray.available = True  # as on a desktop with a tray host (offscreen Qt has none)
    notices: list[str] = []
    window.tray.notify = lambda title, text: notices.append(title)
    window.close()
    assert not window.isVisible() and not window.quitting and notices == ["Blossom is still running"]
    assert settings_store.load().close_notice_shown
    window.show()
    window.close()
    assert notices == ["Blossom is still running"]  # the notice is shown once

    window.tray.available = False  # no tray: closing quits (after stopping the worker)
    window.show()
    with qtbot.waitSignal(window.quit_finished, timeout=30_000):
        window.close()
    assert window.quitting and window.controller.closed


def test_dashboard_shows_a_worker_status(qtbot) -> None:
    from app.widgets.dashboard import DashboardTab

    dashboard = DashboardTab()
    qtbot.addWidget(dashboard)
    dashboard.show_status(StatusEvent(WorkerState.SERVING, model_name="m", start_block=10, end_block=20,
                                      total_blocks=30, peers=3, requests=48, inference_sessions=2,
                                      training_requests=1232, tokens=56789, uptime=3725,
                                      throughput=49.7, tokens_per_second=12.3, torch_dtype="bfloat16",
                                      device="cuda:0"), "joined swarm")
    tiles = {key: tile.value.text() for key, tile in dashboard.tiles.items()}
    assert tiles == {"blocks": "10 / 30", "peers": "3", "requests": "1,234", "tokens": "56.8 k",
                     "uptime": "1 h 2 min", "speed": "12.3"}
    assert "2 inference sessions" in dashboard.tiles["requests"].toolTip()  # 48 token steps are not 48 requests
    assert "49.7 tokens/s per block" in dashboard.tiles["speed"].toolTip()
    assert dashboard.status.subtitle.text() == ("Blocks 10–19 of m (10 of 30) · bfloat16 on cuda:0 · joined swarm")
    assert not dashboard.status.pause_button.isHidden() and dashboard.status.start_button.isHidden()
    dashboard.show_status(StatusEvent(WorkerState.PAUSED, detail="Blocks 10..19 are free for others"), "x")
    assert dashboard.status.title.text() == "Paused" and not dashboard.status.resume_button.isHidden()


def test_a_model_that_cannot_be_used_is_reported(qtbot, make_window, tmp_path) -> None:
    window = make_window(model=str(tmp_path / "no-such-model"))
    problems: list[str] = []
    window.controller.serve_problem.connect(problems.append)
    window.controller.begin()
    qtbot.waitUntil(lambda: bool(problems), timeout=60_000)
    assert problems[0].startswith("Cannot use this model: the folder") and "does not exist" in problems[0]
    assert not window.dashboard.status.problem.isHidden()
    assert window.dashboard.status.problem.text() == problems[0]
    assert not window.controller.start_serving() and not window.controller.worker.running
