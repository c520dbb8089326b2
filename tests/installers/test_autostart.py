"""Start on login (app.autostart): real files in a temporary config folder; the registry only on Windows."""
from __future__ import annotations

import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.autostart import (
    ENTRY_NAME,
    Autostart,
    AutostartError,
    desktop_exec_line,
    launch_command,
    windows_command_line,
)
from tests.installers.desktop_exec import parse_exec, read_desktop_entry

COMMAND = ["/home/volunteer/.local/share/blossom/blossom", "--minimized"]


def linux_autostart(tmp_path: Path, command=COMMAND, **environ: str) -> Autostart:
    return Autostart(command, platform="linux", environ={"HOME": str(tmp_path / "home"), **environ})


def test_xdg_entry_is_written_read_and_removed(tmp_path):
    autostart = linux_autostart(tmp_path, XDG_CONFIG_HOME=str(tmp_path / "config"))
    assert autostart.method == "xdg"
    assert autostart.path == tmp_path / "config" / "autostart" / "blossom.desktop"
    assert not autostart.is_enabled()
    autostart.set_enabled(True)
    entry = read_desktop_entry(autostart.path.read_text())
    assert entry["Type"] == "Application" and entry["Name"] == ENTRY_NAME
    assert parse_exec(entry["Exec"]) == COMMAND
    assert autostart.is_enabled()
    if shutil.which("desktop-file-validate"):  # Debian's desktop-file-utils, where installed
        subprocess.run(["desktop-file-validate", str(autostart.path)], check=True)
    autostart.set_enabled(True)  # again: replaced, still one entry
    assert autostart.is_enabled() and len(list(autostart.path.parent.iterdir())) == 1
    autostart.set_enabled(False)
    assert not autostart.path.exists() and not autostart.is_enabled()
    autostart.disable()  # nothing left to remove: no error


def test_xdg_defaults_to_home_config(tmp_path):
    autostart = linux_autostart(tmp_path)
    assert autostart.path == tmp_path / "home" / ".config" / "autostart" / "blossom.desktop"
    autostart.enable()
    assert autostart.path.is_file()


def test_entry_switched_off_by_the_desktop_counts_as_off(tmp_path):
    autostart = linux_autostart(tmp_path)
    autostart.enable()
    autostart.path.write_text(autostart.path.read_text() + "Hidden=true\n")
    assert not autostart.is_enabled()


@pytest.mark.parametrize("command", [
    ["/opt/My Apps/blossom", "--minimized"],
    ["/usr/bin/python3", "-m", "app", "--minimized"],
    ['/weird/$HOME/"quoted"/back\\slash/`tick`', "100%", "--minimized"],
])
def test_exec_line_reads_back_as_the_command(tmp_path, command):
    assert parse_exec(desktop_exec_line(command)) == command
    autostart = linux_autostart(tmp_path, command=command)
    autostart.enable()
    assert parse_exec(read_desktop_entry(autostart.path.read_text())["Exec"]) == command


def test_unwritable_config_folder_gives_an_actionable_error(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the config folder should be")
    autostart = linux_autostart(tmp_path, XDG_CONFIG_HOME=str(blocker))
    with pytest.raises(AutostartError, match="start on login"):
        autostart.enable()
    assert not autostart.is_enabled()


def test_macos_launch_agent(tmp_path):
    autostart = Autostart(COMMAND, platform="darwin", environ={"HOME": str(tmp_path)})
    autostart.enable()
    agent = plistlib.loads(autostart.path.read_bytes())
    assert autostart.path == tmp_path / "Library" / "LaunchAgents" / "org.blossom.app.plist"
    assert agent["ProgramArguments"] == COMMAND and agent["RunAtLoad"] is True
    assert autostart.is_enabled()
    autostart.disable()
    assert not autostart.is_enabled()


def test_windows_values_are_quoted_command_lines():
    assert windows_command_line([r"C:\Program Files\Blossom\Blossom.exe", "--minimized"]) == (
        r'"C:\Program Files\Blossom\Blossom.exe" --minimized')
    autostart = Autostart(COMMAND, platform="win32", environ={})
    assert autostart.method == "windows" and autostart.path is None
    assert autostart.location.endswith(r"CurrentVersion\Run\Blossom")


def test_wsl_starts_through_wsl_exe_in_the_same_distribution():
    autostart = Autostart(["/home/v/.local/share/blossom/blossom", "--minimized"], platform="linux",
                          environ={"WSL_DISTRO_NAME": "Ubuntu 24.04", "HOME": "/home/v"})
    assert autostart.method == "wsl"
    assert autostart.wsl_run_value() == (
        'wsl.exe --distribution "Ubuntu 24.04" --exec /home/v/.local/share/blossom/blossom --minimized')


def test_launch_command_of_a_python_install_and_of_a_bundle(monkeypatch):
    assert launch_command() == [sys.executable, "-m", "app", "--minimized"]
    assert launch_command(minimized=False) == [sys.executable, "-m", "app"]
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert launch_command() == [sys.executable, "--minimized"]


@pytest.mark.skipif(sys.platform != "win32", reason="the Windows registry exists only on Windows")
def test_windows_run_key_round_trip():
    autostart = Autostart([sys.executable, "-m", "app", "--minimized"])
    if autostart.is_enabled():
        pytest.skip("Blossom already starts on login for this user; the test leaves that alone")
    try:
        autostart.enable()
        assert autostart.is_enabled()
        autostart.disable()
        assert not autostart.is_enabled()
    finally:
        autostart.disable()
