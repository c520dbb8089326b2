"""The desktop app's start: QApplication, theme, settings, the controller, the window and the tray."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from app.app_controller import AppController
from app.icons import app_icon
from app.orphans import exit_children_with_parent
from app.settings import APPLICATION, ORGANIZATION, SettingsStore
from app.theme import apply_theme
from app.widgets.main_window import MainWindow
from app.widgets.tray import TrayIcon

logger = logging.getLogger(__name__)

TAB_NAMES = ("dashboard", "chat", "tuning", "swarm", "settings")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="blossom", description="Blossom's desktop node manager.")
    parser.add_argument("--settings", type=Path, default=None,
                        help="keep settings in this INI file instead of the platform's usual place")
    parser.add_argument("--no-serve", action="store_true", help="do not start serving at launch this time")
    parser.add_argument("--tab", choices=TAB_NAMES, default="dashboard", help="the tab to open")
    parser.add_argument("--minimized", action="store_true",
                        help="start in the tray without opening the window (how Blossom starts on login)")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("hivemind", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def handle_termination(window: MainWindow) -> QTimer:
    """Ctrl-C or SIGTERM quits cleanly (the worker is stopped first); the timer lets Python see signals."""
    def on_signal(signum: int, frame: object) -> None:
        logger.info("Signal %d: quitting", signum)
        window.request_quit()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    timer = QTimer(window)
    timer.timeout.connect(lambda: None)
    timer.start(250)
    return timer


def run_gui(argv: list[str]) -> int:
    """Open the main window; returns the exit code when the app quits."""
    args = parse_args(argv)
    setup_logging(args.verbose)
    application = QApplication.instance() or QApplication([sys.argv[0]])
    application.setApplicationName(APPLICATION)
    application.setOrganizationName(ORGANIZATION)
    application.setWindowIcon(app_icon())
    application.setQuitOnLastWindowClosed(False)  # closing the window leaves Blossom serving in the tray
    apply_theme(application)
    exit_children_with_parent()
    store = SettingsStore(args.settings)
    controller = AppController(store)
    if args.no_serve:
        controller.settings.start_serving_at_launch = False
    tray = TrayIcon()
    window = MainWindow(controller, tray)
    window.quit_finished.connect(application.quit)
    window.tabs.setCurrentIndex(TAB_NAMES.index(args.tab))
    handle_termination(window)
    tray.show()
    if not args.minimized:
        window.show()
    elif not tray.available:
        window.showMinimized()  # no tray to start in: a minimised window is still reachable
    controller.begin()
    controller.swarm.start()
    logger.info("Blossom started; settings in %s", store.location)
    return application.exec()
