"""``python -m app`` (or ``blossom``): open Blossom's desktop node manager.

Without a display (Linux with neither ``DISPLAY`` nor ``WAYLAND_DISPLAY`` set, and no
``QT_QPA_PLATFORM`` chosen) or with ``--headless``, it says so and runs the terminal demo
instead: a private swarm on this PC serving the bundled SmolLM2 model, answering a prompt (and
chatting when run in a terminal).

``--self_test`` checks this installation without a display (``app.self_test``) and exits 0 when it
works. ``--minimized`` (used when Blossom starts on login, see ``app.autostart``) starts in the tray.
Every option is in ``app.command_line`` (``blossom --help``).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Mapping

from app.command_line import build_parser, demo_arguments, self_test_arguments, window_options_given

HEADLESS_NOTICE = ("Blossom: no display found ({why}), so the window cannot open. Running the terminal demo "
                   "instead: a private swarm on this PC serving the bundled SmolLM2 model.")


def display_available(environ: Mapping[str, str] = os.environ, platform: str = sys.platform) -> bool:
    """Whether Qt can show a window: always on Windows and macOS; on Linux/BSD only with a display server
    (or a platform plugin chosen through ``QT_QPA_PLATFORM``, e.g. ``offscreen``)."""
    if environ.get("QT_QPA_PLATFORM"):
        return True
    if platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        return bool(environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))
    return True


def run_demo(args: argparse.Namespace, why: str) -> int:
    """The terminal demo (``core.cli.demo``), chatting when stdin is a terminal."""
    from core.cli.demo import main as demo_main

    print(HEADLESS_NOTICE.format(why=why), file=sys.stderr, flush=True)
    ignored = window_options_given(args)
    if ignored:
        print(f"({' '.join(ignored)}: options of the window, not used by the demo)", file=sys.stderr, flush=True)
    if sys.stdin.isatty():
        args.interactive = True
    return demo_main(demo_arguments(args))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.self_test:
        from app.self_test import main as self_test_main

        return self_test_main(self_test_arguments(args))
    if args.headless:
        return run_demo(args, "--headless was given")
    if not display_available():
        return run_demo(args, "DISPLAY and WAYLAND_DISPLAY are unset")
    try:
        from app.application import run_gui
    except ImportError as error:
        return run_demo(args, f"PySide6 is missing ({error}); install it with pip install -e '.[app]'")
    return run_gui(args)


if __name__ == "__main__":
    raise SystemExit(main())
