"""The program inside Blossom's frozen bundle (PyInstaller builds ``blossom`` / ``Blossom.exe`` from this file).

``blossom [options]`` opens the desktop app (``app.__main__``: ``--self_test``, ``--minimized``,
``--headless`` and the window's own options).

``blossom --run-module MODULE [args]`` runs ``MODULE`` as ``__main__``, like ``python -m MODULE``
outside a bundle. A bundle has no Python interpreter to start, so this is how Blossom starts its
own child processes there: the DHT peer and block servers of a private swarm
(``core.launcher.python_command``) and the app's server worker (``app.worker``).
"""
from __future__ import annotations

import multiprocessing
import runpy
import sys

RUN_MODULE = "--run-module"  # the same flag as core.launcher.FROZEN_RUN_MODULE
ALLOWED_PREFIXES = ("core.", "app.")


def run_module(argv: list[str]) -> int:
    """Run ``argv[0]`` (a ``core.*`` or ``app.*`` module) as ``__main__`` with ``argv[1:]`` as its arguments."""
    if not argv or not argv[0].startswith(ALLOWED_PREFIXES):
        print(f"blossom: {RUN_MODULE} needs a core.* or app.* module name, got {argv[:1]}", file=sys.stderr)
        return 2
    module, *rest = argv
    sys.argv = [sys.argv[0], *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)  # its SystemExit(code) ends the program
    return 0


def main() -> int:
    multiprocessing.freeze_support()  # a no-op except in children started with the "spawn" method
    if len(sys.argv) > 1 and sys.argv[1] == RUN_MODULE:
        return run_module(sys.argv[2:])
    from app.__main__ import main as app_main

    return app_main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
