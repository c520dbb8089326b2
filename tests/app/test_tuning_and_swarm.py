"""The prompt-tuning tab (live loss plot, save, try in chat) and the swarm tab, against a real local swarm."""
from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from app.settings import JOIN, SettingsStore
from app.widgets.coverage import HEADER_HEIGHT, ROW_GAP, ROW_HEIGHT, CoverageView, block_counts
from app.widgets.loss_plot import nice_ticks
from core.dht.swarm_status import ModelSwarm, ServerRow
from tests.tiny_models import CORPUS


def joined_window(make_window, app_swarm, tiny_checkpoints, qtbot):
    _, converted = tiny_checkpoints["llama"]
    window = make_window(model=str(converted), swarm_mode=JOIN, initial_peers=list(app_swarm.initial_peers),
                         temperature=0.0, max_new_tokens=6)
    window.controller.begin()
    qtbot.waitUntil(lambda: window.controller.chat.target is not None, timeout=60_000)
    return window


@pytest.mark.slow
def test_tuning_run_updates_the_loss_plot_and_its_prompts_work_in_chat(qtbot, make_window, app_swarm,
                                                                       tiny_checkpoints, tmp_path: Path,
                                                                       settings_store: SettingsStore) -> None:
    window = joined_window(make_window, app_swarm, tiny_checkpoints, qtbot)
    dataset = tmp_path / "flowers.txt"
    dataset.write_text("\n".join(CORPUS[:3]) + "\n")
    tab, bridge = window.tuning, window.controller.tuning
    tab.dataset.setText(str(dataset))
    tab.steps.setValue(1000)
    with qtbot.waitSignal(bridge.training_finished, timeout=120_000) as stopped:
        qtbot.mouseClick(tab.start_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: len(tab.plot.points) >= 1, timeout=120_000)
        qtbot.mouseClick(tab.stop_button, Qt.MouseButton.LeftButton)
    assert stopped.args[0].stopped and 1 <= stopped.args[0].steps_done < 1000
    assert tab.progress_label.text().startswith(f"Stopped after {stopped.args[0].steps_done} of 1000 steps")
    qtbot.waitUntil(lambda: tab.start_button.isEnabled() and not bridge.busy, timeout=30_000)
    assert tab.save_button.isEnabled()

    tab.steps.setValue(4)
    tab.prompt_length.setValue(3)
    tab.batch_size.setValue(2)
    tab.learning_rate.setValue(0.05)
    reports = []
    bridge.step_reported.connect(reports.append)
    with qtbot.waitSignal(bridge.training_finished, timeout=120_000) as finished:
        qtbot.mouseClick(tab.start_button, Qt.MouseButton.LeftButton)
        assert tab.plot.points == []  # a new run starts a new plot, which grows while training
        qtbot.waitUntil(lambda: len(tab.plot.points) >= 1, timeout=120_000)
    result = finished.args[0]
    assert result.steps_done == 4 and not result.stopped
    assert [step for step, _ in tab.plot.points] == [1, 2, 3, 4]
    assert [loss for _, loss in tab.plot.points] == pytest.approx(result.losses)
    assert [report.step for report in reports] == [1, 2, 3, 4]
    assert tab.progress.value() == tab.progress.maximum() == 4
    assert tab.progress_label.text() == f"Finished after 4 of 4 steps · final loss {result.losses[-1]:.4f}"
    qtbot.waitUntil(lambda: tab.start_button.isEnabled() and not bridge.busy, timeout=30_000)
    assert tab.save_button.isEnabled()
    assert not tab.plot.grab().isNull()

    saved = tmp_path / "prompts" / "flowers.safetensors"
    with qtbot.waitSignal(bridge.prompts_saved, timeout=30_000):
        tab.save_requested.emit(str(saved))  # what the Save dialog sends
    assert saved.is_file() and tab.try_button.isEnabled()
    qtbot.mouseClick(tab.try_button, Qt.MouseButton.LeftButton)
    assert window.tabs.currentWidget() is window.chat and window.chat.use_prompts.isChecked()
    assert window.controller.settings.prompts_path == str(saved)
    assert settings_store.load().prompts_path == str(saved)  # kept across runs

    with qtbot.waitSignal(window.controller.chat.reply_finished, timeout=120_000) as reply:
        window.chat.input.setPlainText("hello")
        qtbot.mouseClick(window.chat.send_button, Qt.MouseButton.LeftButton)
    assert reply.args[0].text and window.chat.status.text().endswith("with trained prompts")


@pytest.mark.slow
def test_swarm_tab_lists_the_real_servers(qtbot, make_window, app_swarm, tiny_checkpoints) -> None:
    window = joined_window(make_window, app_swarm, tiny_checkpoints, qtbot)
    window.controller.swarm.start()  # as the app does: refresh now and every 15 s (a failed look-up is retried)
    tab = window.swarm
    qtbot.waitUntil(lambda: tab.table.rowCount() >= 1, timeout=120_000)
    model = tab.selected_model()
    assert model.dht_prefix == "tiny-llama" and model.total_blocks == 4 and model.uncovered == ()
    server_lines = app_swarm.servers[0].lines  # the server printed its own multiaddr with its peer id
    # the swarm's own server; other rows may be app workers of earlier tests that joined this swarm and left
    (own_row,) = [row for row in range(tab.table.rowCount())
                  if any(tab.table.item(row, 1).text() in line for line in server_lines)]
    assert tab.table.item(own_row, 2).text() == "0–3" and tab.table.item(own_row, 3).text() == "online"
    assert "every block is served" in tab.summary.text()
    qtbot.waitUntil(lambda: tab.updated.text().startswith("Updated"), timeout=60_000)
    with qtbot.waitSignal(window.controller.swarm.updated, timeout=60_000):
        qtbot.mouseClick(tab.refresh_button, Qt.MouseButton.LeftButton)


def row(peer: str, start: int, end: int, state: str = "online", name: str = "") -> ServerRow:
    return ServerRow(peer, name, start, end, state, 12.5, "bfloat16", "none", 4096, "0.1.0")


def test_coverage_picture_marks_uncovered_blocks_and_this_node(qtbot) -> None:
    model = ModelSwarm("big-model", 8, (row("QmAAAA1111", 0, 3, name="alice"), row("QmBBBB2222", 2, 5),
                                        row("QmCCCC3333", 5, 6, "offline")), (5, 6, 7))
    view = CoverageView()
    qtbot.addWidget(view)
    view.resize(800, 200)
    view.show_model(model, own_peer_id="QmBBBB2222")
    assert block_counts(model) == [1, 1, 2, 1, 1, 0, 0, 0]
    image = view.grab().toImage()
    assert not image.isNull() and view.minimumHeight() > 3 * 24
    coverage_y = HEADER_HEIGHT + 3 * (ROW_HEIGHT + ROW_GAP) + 4 + ROW_HEIGHT // 2
    last_cell = image.pixelColor(view.width() - 20, coverage_y)
    first_cell = image.pixelColor(200, coverage_y)
    assert last_cell.red() > 180 and last_cell.green() < 90  # uncovered: red
    assert first_cell.green() > first_cell.red()  # covered: green


def test_nice_ticks_cover_the_range() -> None:
    ticks = nice_ticks(2.31, 5.87)
    assert ticks[0] <= 2.31 and ticks[-1] >= 5.87 and len(ticks) <= 7
    assert nice_ticks(1, 100, 6)[:3] == [0, 20, 40]
