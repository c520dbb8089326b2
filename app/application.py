"""The desktop app's start: QApplication, theme, settings, the controller, the window and the tray."""
from __future__ import annotations

import argparse
import logging
import signal
import sys

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from app.app_controller import AppController
from app.command_line import TAB_NAMES
from app.icons import app_icon
from app.orphans import exit_children_with_parent
from app.settings import APPLICATION, ORGANIZATION, SettingsStore
from app.theme import apply_theme
from app.widgets.main_window import MainWindow
from app.widgets.tray import TrayIcon

logger = logging.getLogger(__name__)



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


def run_gui(args: argparse.Namespace) -> int:
    """Open the main window as ``args`` (``app.command_line``) say; returns the exit code when the app quits."""
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
