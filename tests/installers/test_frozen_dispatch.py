"""How a frozen bundle starts its own child processes: ``blossom --run-module MODULE`` instead of ``python -m``.

The DHT test plays the bundle without building one: ``sys.frozen`` is set and ``sys.executable``
is a small program that runs ``installers/blossom_entry.py`` (the bundle's real entry point) with
its arguments, so :class:`core.launcher.ChildProcess` must start a working DHT peer through it.
"""
from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from core.launcher import ChildProcess, parse_addresses, python_command

ROOT = Path(__file__).resolve().parents[2]
ENTRY = ROOT / "installers" / "blossom_entry.py"


def test_python_command_outside_and_inside_a_bundle(monkeypatch):
    assert python_command(["-m", "core.cli.run_dht", "--x"]) == [sys.executable, "-m", "core.cli.run_dht", "--x"]
    assert python_command(["-m", "app.worker"], "/opt/py") == ["/opt/py", "-m", "app.worker"]
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert python_command(["-m", "core.cli.run_dht", "--x"]) == [sys.executable, "--run-module", "core.cli.run_dht",
                                                                 "--x"]


def test_entry_point_runs_modules_and_refuses_others():
    help_run = subprocess.run([sys.executable, str(ENTRY), "--run-module", "core.cli.run_server", "--help"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert help_run.returncode == 0, help_run.stderr[-2000:]
    assert "usage: blossom-server" in help_run.stdout and "--model" in help_run.stdout
    refused = subprocess.run([sys.executable, str(ENTRY), "--run-module", "os"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "core.* or app.*" in refused.stderr


def test_child_process_of_a_bundle_runs_a_dht_peer(tmp_path, monkeypatch):
    program = tmp_path / "blossom"
    program.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{ENTRY}" "$@"\n')
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(program))
    dht = ChildProcess("dht", ["-m", "core.cli.run_dht", "--host_maddrs", "/ip4/127.0.0.1/tcp/0"],
                       tmp_path / "dht.log")
    try:
        assert dht.process.args[:2] == [str(program), "--run-module"]
        after = dht.wait_for_line("Running a DHT peer", timeout=120)
        assert parse_addresses(after), dht.tail()
    finally:
        dht.stop()
    assert dht.process.returncode is not None
