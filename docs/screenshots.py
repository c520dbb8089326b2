"""Take the README's screenshots of every tab of a real, working Blossom.

    ../shared/tools/xshot docs/screenshots/desktop.png 420 -- python docs/screenshots.py

Starts the app with a throwaway settings file and its defaults (a private swarm on this PC serving
the bundled SmolLM2 demo model), saves the first-run page and answers it with "Start serving now",
asks the chat a question, trains prompts for a few steps on
``resources/examples/flower_facts.txt`` and tries them in the chat, refreshes the swarm view, and
saves each tab with ``QWidget.grab()`` into ``docs/screenshots/``. Then it shows the dashboard with
the tray menu open until it is killed (``xshot`` takes the whole screen at that point).
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PySide6.QtCore import QPoint, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from app.app_controller import AppController  # noqa: E402
from app.icons import app_icon  # noqa: E402
from app.orphans import exit_children_with_parent  # noqa: E402
from app.settings import AppSettings, SettingsStore  # noqa: E402
from app.theme import apply_theme  # noqa: E402
from app.widgets.main_window import MainWindow  # noqa: E402
from app.widgets.tray import TrayIcon  # noqa: E402
from app.worker.messages import WorkerState  # noqa: E402

logger = logging.getLogger("screenshots")
QUESTION = "Name three flowers that bloom in spring, in one sentence."
DATASET = ROOT / "resources" / "examples" / "flower_facts.txt"


class Tour:
    """Drives the window through one chat, one short training run and a swarm refresh, grabbing each tab."""

    def __init__(self, window: MainWindow, out: Path, steps: int) -> None:
        self.window, self.out, self.steps = window, out, steps
        self.controller = window.controller
        self._chatted = False

    def begin(self) -> None:
        self.controller.worker.state_changed.connect(self._on_state)
        self.controller.begin()
        self.controller.swarm.start()
        QTimer.singleShot(1500, self.first_run)

    def first_run(self) -> None:
        """The first-run page, then its "Start serving now" (nothing is served before)."""
        page = self.window.first_run
        if page is None:
            return
        path = self.out / "first_run.png"
        self.window.grab().save(str(path))
        logger.info("Saved %s", path)
        page.start_button.click()

    def _on_state(self, state: WorkerState) -> None:
        if state == WorkerState.SERVING and not self._chatted:
            self._chatted = True
            QTimer.singleShot(2000, self.chat)

    def grab(self, name: str, widget: object) -> None:
        self.window.tabs.setCurrentWidget(widget)
        QApplication.processEvents()
        path = self.out / f"{name}.png"
        self.window.grab().save(str(path))
        logger.info("Saved %s", path)

    def chat(self) -> None:
        self.window.tabs.setCurrentWidget(self.window.chat)
        self.controller.chat.reply_finished.connect(self._after_chat)
        self.window.chat.input.setPlainText(QUESTION)
        self.window.chat.send_button.click()

    def _after_chat(self, *_: object) -> None:
        self.controller.chat.reply_finished.disconnect(self._after_chat)
        self.grab("chat", self.window.chat)
        tab = self.window.tuning
        tab.dataset.setText(str(DATASET))
        tab.steps.setValue(self.steps)
        tab.prompt_length.setValue(8)
        tab.batch_size.setValue(4)
        tab.learning_rate.setValue(0.01)
        self.window.tabs.setCurrentWidget(tab)
        self.controller.tuning.training_finished.connect(self._after_training)
        tab.start_button.click()

    def _after_training(self, *_: object) -> None:
        self.controller.tuning.prompts_saved.connect(self._after_saving)
        self.window.tuning.save_requested.emit(self.controller.suggested_prompts_path("ptune"))

    def _after_saving(self, *_: object) -> None:
        self.grab("tuning", self.window.tuning)
        self.controller.swarm.updated.connect(self._after_swarm)
        self.controller.swarm.refresh()

    def _after_swarm(self, *_: object) -> None:
        self.controller.swarm.updated.disconnect(self._after_swarm)
        self.grab("swarm", self.window.swarm)
        self.grab("settings", self.window.settings)
        self.grab("dashboard", self.window.dashboard)
        self.window.tabs.setCurrentWidget(self.window.dashboard)
        tray = self.window.tray
        if tray.available:
            geometry = tray.icon.geometry()
            tray.menu.popup(QPoint(geometry.left() - 120, geometry.bottom() + 4))
        logger.info("Tour done; showing the dashboard until killed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--steps", type=int, default=8, help="prompt-tuning steps")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    application = QApplication(sys.argv[:1])
    application.setWindowIcon(app_icon())
    application.setQuitOnLastWindowClosed(False)
    apply_theme(application)
    exit_children_with_parent()
    settings_file = Path(tempfile.mkdtemp(prefix="blossom-shots-")) / "settings.ini"
    SettingsStore(settings_file).save(AppSettings(public_name="my-gaming-pc", max_new_tokens=40, first_run_done=False,
                                                  start_serving_at_launch=False))
    controller = AppController(SettingsStore(settings_file))
    tray = TrayIcon()
    window = MainWindow(controller, tray)
    window.resize(1180, 760)
    window.quit_finished.connect(application.quit)
    tray.show()
    window.show()
    tour = Tour(window, args.out, args.steps)
    tour.begin()
    return application.exec()


if __name__ == "__main__":
    raise SystemExit(main())
