"""Pieces shared by the command-line tools: argument parsers, logging set-up, signal handling, error exits.

Naming, the same in every tool: options are spelled with underscores (``--max_new_tokens``); ``--model``
always names a model (a converted folder or Hub repo, or for ``blossom-convert`` the original one) and
``--dht_prefix`` its name in the swarm. Old spellings stay accepted as hidden aliases
(:func:`add_hidden_alias`).
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
import threading
from typing import Callable

from core.errors import BlossomError


class _HelpWithDefaults(argparse.HelpFormatter):
    """Every option's help line ends with its default, unless it has none worth showing or says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (action.option_strings and "default" not in text and default is not argparse.SUPPRESS
                and default not in (None, False, True, "", [], ())):
            text += " (default: %(default)s)"
        return text


def build_parser(prog: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """A tool's parser: named as installed (``prog``, e.g. ``blossom-server``), with defaults in the help."""
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                   formatter_class=_HelpWithDefaults)


def add_hidden_alias(parser: argparse.ArgumentParser | argparse._ArgumentGroup, alias: str, dest: str,
                     **kwargs: object) -> None:
    """Accept ``alias`` as an old spelling of the option stored in ``dest``, without listing it in ``--help``."""
    parser.add_argument(alias, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


def address_line(maddr: str) -> str:
    """A multiaddr to print for people, with who can dial it: a peer listening on every interface prints
    one address per interface, and the loopback one works only on this computer."""
    parts = str(maddr).split("/")
    try:
        ip = ipaddress.ip_address(parts[2])
    except (IndexError, ValueError):
        return f"  {maddr}"
    if ip.is_loopback:
        reach = "from this computer only"
    elif ip.is_private or ip.is_link_local:
        reach = "from your local network"
    else:
        reach = "from the internet, unless a firewall is in the way"
    return f"  {maddr}   ({reach})"


def setup_logging(verbose: bool = False) -> None:
    """Human-readable logs on stderr; hivemind's own handler is kept quieter."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("hivemind", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def on_termination(callback: Callable[[], None], again: Callable[[], None] | None = None) -> threading.Event:
    """Call ``callback`` on the first SIGINT or SIGTERM and ``again`` (if given) on any later one; returns an
    event set when the first came. Either may raise (e.g. ``KeyboardInterrupt``) to interrupt the main thread."""
    fired = threading.Event()

    def handle(signum: int, frame: object) -> None:
        if not fired.is_set():
            fired.set()
            callback()
        elif again is not None:
            again()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    return fired


def add_exit_with_stdin_argument(parser: argparse.ArgumentParser, tool: str) -> None:
    """``--exit_with_stdin``: for programs that run ``tool`` as their child and hold its standard input."""
    parser.add_argument("--exit_with_stdin", action="store_true",
                        help=f"stop when standard input closes, for programs that run {tool} as their child "
                             f"(blossom-api's private swarm, the desktop app) (default: off)")


def exit_when_stdin_closes() -> None:
    """Send ourselves SIGTERM once standard input reaches its end: the parent that holds it is gone, even killed."""

    def watch() -> None:
        # os.read on the descriptor, not sys.stdin: a thread blocked inside sys.stdin holds its lock, and a
        # process forked meanwhile (hivemind forks its DHT) hangs when it closes its copy of sys.stdin
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        logging.getLogger(__name__).info("Standard input closed; stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="blossom-stdin-watch", daemon=True).start()


def interrupt() -> None:
    """Stop what the main thread is doing now (used from a signal handler)."""
    raise KeyboardInterrupt


def fail(error: BlossomError | ValueError) -> int:
    """Print a one-line error for a person and return the CLI's error exit code."""
    print(f"error: {error}", file=sys.stderr)
    return 2
