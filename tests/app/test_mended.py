"""Small things volunteers saw and that are mended: the loss plot keeps its points inside the axes, the tuning
tab offers the shipped example and remembers the last run, no GPU advice without a GPU, the activity log has
times and keeps following its end."""
from __future__ import annotations

import re

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor

from app.theme import ACCENT
from core.hardware import HardwareReport, HostInfo, detect_hardware


def test_the_first_loss_point_is_drawn_inside_the_plot(qtbot) -> None:
    from app.widgets.loss_plot import MARGIN_TOP, LossPlot

    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(600, 300)
    plot.clear(8)
    for step, loss in enumerate((6.2, 5.1, 4.6, 3.6), start=1):  # the first loss is the highest (seen: above 6)
        plot.add_point(step, loss)
    image = plot.grab().toImage()
    accent = QColor(ACCENT)
    above = [(x, y) for y in range(MARGIN_TOP - 3) for x in range(0, 330)  # the "step 4: …" label is on the right
             if abs(image.pixelColor(x, y).red() - accent.red()) < 30
             and abs(image.pixelColor(x, y).green() - accent.green()) < 30
             and abs(image.pixelColor(x, y).blue() - accent.blue()) < 30]
    assert above == []


def test_tuning_offers_the_example_remembers_the_run_and_explains_try_in_chat(qtbot, make_window,
                                                                               settings_store) -> None:
    from app.widgets.tuning import EXAMPLE_DATASET, TuningTab

    tab = TuningTab()
    qtbot.addWidget(tab)
    assert tab.dataset.text() == str(EXAMPLE_DATASET) and EXAMPLE_DATASET.exists()
    assert not tab.try_button.isEnabled() and "Save the prompts first" in tab.try_button.toolTip()
    width = tab.progress_label.width()
    tab.show_status("Finished after 123 of 123 steps · final loss 2.3456 and a longer line")
    assert tab.progress_label.width() == width

    window = make_window(tuning_dataset="/data/mine.jsonl", tuning_steps=7)
    assert window.tuning.dataset.text() == "/data/mine.jsonl" and window.tuning.steps.value() == 7
    window.tuning.dataset.setText(str(EXAMPLE_DATASET))
    window.tuning.steps.setValue(3)
    window.tuning.start_button.click()  # the model is not ready: refused, but the choice is kept
    stored = settings_store.load()
    assert (stored.tuning_dataset, stored.tuning_steps) == (str(EXAMPLE_DATASET), 3)


def test_no_gpu_advice_without_a_gpu(qtbot) -> None:
    from app.widgets.hardware_panel import RecommendationCard

    card = RecommendationCard()
    qtbot.addWidget(card)
    card.show_hardware(HardwareReport(gpus=(), host=HostInfo("cpu", 2, 2, 8 * 2**30, 4 * 2**30)))
    assert card.more_blocks.isHidden()
    assert detect_hardware().gpus == ()  # this machine has none, as the report above says


def test_activity_log_writes_block_ranges_as_the_rest_of_the_app(qtbot) -> None:
    from app.widgets.dashboard import DashboardTab

    dashboard = DashboardTab()
    qtbot.addWidget(dashboard)
    dashboard.append_log("INFO", "Loading blocks 0..29 of 'SmolLM2-135M-Instruct' (torch.float32 on cpu)")
    dashboard.append_log("INFO", "Moving from blocks 0..14 to 15..29; version 0.1.0 stays")
    lines = [line.split("  ", 1)[1] for line in dashboard.log.toPlainText().splitlines()]
    assert lines == ["Loading blocks 0–29 of 'SmolLM2-135M-Instruct' (torch.float32 on cpu)",
                     "Moving from blocks 0–14 to 15–29; version 0.1.0 stays"]


def test_activity_log_has_times_and_follows_its_end(qtbot) -> None:
    from app.widgets.dashboard import DashboardTab

    dashboard = DashboardTab()
    qtbot.addWidget(dashboard)
    dashboard.resize(1000, 700)
    dashboard.show()
    for index in range(300):
        dashboard.append_log("INFO", f"line {index}")
    bar = dashboard.log.verticalScrollBar()
    assert bar.value() == bar.maximum() > 0
    assert re.fullmatch(r"\d\d:\d\d:\d\d  line 299", dashboard.log.toPlainText().splitlines()[-1])
    bar.setValue(0)  # the user scrolls up to read: the view stays there
    dashboard.append_log("WARNING", "more")
    assert bar.value() == 0


def test_start_waits_while_the_model_is_prepared(qtbot, make_window) -> None:
    window = make_window()
    start = window.dashboard.status.start_button
    window.controller.model_status_changed.emit("Preparing the bundled demo model (converted on first run only)…")
    assert not start.isEnabled() and "Start is possible once it is ready" in start.toolTip()
    assert window.dashboard.status.note.text().startswith("Preparing the bundled demo model")
    window.controller.model_status_changed.emit("")
    assert start.isEnabled() and window.dashboard.status.note.isHidden()


def test_the_first_conversion_shows_a_real_progress_bar(qtbot, make_window) -> None:
    """A fresh home: the bundled demo model is converted for real, and the dashboard shows each stage, then
    counts the blocks, then hides the bar and enables Start."""
    window = make_window()  # the bundled demo model, not converted yet in this fresh Blossom home
    status = window.dashboard.status
    bar, stage_label, start = status.preparation, status.stage, status.start_button
    formats: list[str] = []
    window.controller.model_progress.connect(lambda stage, done, total: formats.append(f"{stage_label.text()} "
                                                                                      f"{bar.format()}".strip()),
                                             Qt.ConnectionType.QueuedConnection)  # after the dashboard's own slot
    window.controller.begin()
    qtbot.waitUntil(lambda: window.controller.model is not None, timeout=600_000)
    assert any(text.startswith("Reading the config and tokenizer of SmolLM2") for text in formats), formats
    assert any(text.startswith("Dequantizing") for text in formats), formats
    assert "Converting blocks… 29 of 30" in formats, formats
    assert bar.isHidden() and stage_label.isHidden() and start.isEnabled()
