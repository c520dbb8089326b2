"""``blossom``'s command line: one parser for the window, the self-test and the terminal demo.

No Qt here: ``blossom --help`` and the fallback to the terminal demo work on a machine without a
display (or without PySide6). Options use underscores like every Blossom tool; the hyphenated
spellings of earlier versions (``--no-serve``, ``--self-test``) are still accepted.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from core.cli.common import add_hidden_alias, build_parser as new_parser
from core.cli.demo import add_demo_arguments

TAB_NAMES = ("dashboard", "chat", "tuning", "swarm", "settings")
WINDOW_ONLY_OPTIONS = ("tab", "no_serve", "minimized", "settings")


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(
        "blossom",
        "Blossom's desktop app: serve blocks of a language model to a swarm from this PC, chat with the model "
        "and train prompts. Without a display (or with --headless) it runs the terminal demo instead.",
    )
    window = parser.add_argument_group("the window")
    window.add_argument("--tab", choices=TAB_NAMES, default="dashboard", help="the tab to open")
    window.add_argument("--no_serve", action="store_true", help="do not start serving at launch this time")
    add_hidden_alias(window, "--no-serve", "no_serve", action="store_true")
    window.add_argument("--minimized", action="store_true",
                        help="start in the tray without opening the window (how Blossom starts on login)")
    window.add_argument("--settings", type=Path, default=None,
                        help="keep settings in this INI file (default: the platform's usual place)")
    modes = parser.add_argument_group("without the window")
    modes.add_argument("--headless", action="store_true",
                       help="run the terminal demo even where a display is available")
    modes.add_argument("--self_test", action="store_true",
                       help="check this installation (a private swarm with the demo model) and exit: 0 if it works")
    add_hidden_alias(modes, "--self-test", "self_test", action="store_true")
    demo = parser.add_argument_group("the terminal demo (--servers and --max_new_tokens also set the self-test's)")
    add_demo_arguments(demo, max_new_tokens_default=None,  # each mode has its own default answer length
                       max_new_tokens_help="longest answer, in tokens (default: 60 in the demo, 8 in the self-test)")
    add_hidden_alias(demo, "--max-new-tokens", "max_new_tokens", type=int)
    parser.add_argument("--verbose", action="store_true", help="log every detail (debug level) on stderr")
    return parser


def window_options_given(args: argparse.Namespace) -> list[str]:
    """The window-only options set on the command line (they do nothing in the terminal demo)."""
    defaults = build_parser().parse_args([])
    return [f"--{name}" for name in WINDOW_ONLY_OPTIONS if getattr(args, name) != getattr(defaults, name)]


def self_test_arguments(args: argparse.Namespace) -> list[str]:
    """``args`` as ``app.self_test``'s command line."""
    argv = ["--servers", str(args.servers)] + ["--verbose"] * args.verbose
    return argv + (["--max_new_tokens", str(args.max_new_tokens)] if args.max_new_tokens is not None else [])


def demo_arguments(args: argparse.Namespace) -> list[str]:
    """``args`` as ``core.cli.demo``'s command line."""
    argv = ["--prompt", args.prompt, "--servers", str(args.servers)]
    if args.max_new_tokens is not None:
        argv += ["--max_new_tokens", str(args.max_new_tokens)]
    return argv + ["--interactive"] * args.interactive + ["--verbose"] * args.verbose
