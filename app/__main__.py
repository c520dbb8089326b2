"""``python -m app``: start Blossom.

The desktop node manager (Qt window, tray, chat and tuning tabs) is being built; until it lands,
this starts the working default everywhere: a private swarm on this PC serving the bundled
SmolLM2 demo model, answering a prompt (and chatting when run in a terminal).
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from core.cli.demo import main as demo_main

    args = list(sys.argv[1:] if argv is None else argv)
    if sys.stdin.isatty() and "--interactive" not in args:
        args.append("--interactive")
    return demo_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
