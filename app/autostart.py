"""Start Blossom when the user logs in, minimised to the tray (no Qt here: plain files and the registry).

One :class:`Autostart` per machine picks how its platform does it:

- Linux and other XDG desktops: ``$XDG_CONFIG_HOME/autostart/blossom.desktop`` (``~/.config`` by default).
- Windows: the value ``Blossom`` under ``HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run``.
- Windows Subsystem for Linux (how the Windows installer runs Blossom): the same Windows value, written
  with ``reg.exe``, holding a ``wsl.exe`` command that starts Blossom in this distribution.
- macOS: ``~/Library/LaunchAgents/org.blossom.app.plist``.

The started command is this Blossom's own (the bundle's program, or ``python -m app``) plus
``--minimized``. Failures raise :class:`AutostartError` with what to do.
"""
from __future__ import annotations

import logging
import os
import plistlib
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

from core.errors import BlossomError

logger = logging.getLogger(__name__)

ENTRY_NAME = "Blossom"
DESKTOP_FILE = "blossom.desktop"
LAUNCH_AGENT_LABEL = "org.blossom.app"
RUN_KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"
MINIMIZED_FLAG = "--minimized"


class AutostartError(BlossomError):
    """Starting on login could not be switched on or off."""


def launch_command(minimized: bool = True) -> list[str]:
    """How to start this Blossom: the bundle's program when frozen, else ``python -m app``."""
    command = [sys.executable] if getattr(sys, "frozen", False) else [sys.executable, "-m", "app"]
    return [*command, MINIMIZED_FLAG] if minimized else command


def windows_command_line(command: Sequence[str]) -> str:
    """``command`` quoted for a Windows command line (each argument in double quotes when needed)."""
    return subprocess.list2cmdline(list(command))


def desktop_exec_line(command: Sequence[str]) -> str:
    """``command`` as a ``.desktop`` file's ``Exec=`` value (desktop entry specification).

    Arguments with reserved characters are double-quoted with ``"`` `` ` `` ``$`` ``\\`` escaped inside;
    then the whole value gets the string escaping of the file format (``\\`` doubled) and ``%`` is
    doubled so it is not taken for a field code.
    """
    quoted = []
    for argument in command:
        if argument and all(char.isalnum() or char in "-_./=:+,@" for char in argument):
            quoted.append(argument)
        else:
            escaped = "".join("\\" + char if char in '"`$\\' else char for char in argument)
            quoted.append(f'"{escaped}"')
    return " ".join(quoted).replace("\\", "\\\\").replace("%", "%%")


def desktop_entry(command: Sequence[str]) -> str:
    """The autostart ``.desktop`` file's text."""
    return "\n".join([
        "[Desktop Entry]",
        "Type=Application",
        f"Name={ENTRY_NAME}",
        "Comment=Serve a few blocks of a language model to your swarm (starts in the tray)",
        f"Exec={desktop_exec_line(command)}",
        "Icon=blossom",
        "Terminal=false",
        "X-GNOME-Autostart-enabled=true",
        "",
    ])


def running_in_wsl(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this Linux runs inside the Windows Subsystem for Linux (where login means Windows' login)."""
    return bool(environ.get("WSL_DISTRO_NAME")) or Path("/proc/sys/fs/binfmt_misc/WSLInterop").exists()


class Autostart:
    """Switches starting on login on and off for the current user."""

    def __init__(self, command: Sequence[str] | None = None, platform: str = sys.platform,
                 environ: Mapping[str, str] | None = None) -> None:
        self.command = list(command) if command is not None else launch_command()
        self.platform = platform
        self.environ = dict(os.environ if environ is None else environ)
        if platform == "win32":
            self.method = "windows"
        elif platform == "darwin":
            self.method = "launchagent"
        elif platform.startswith("linux") and running_in_wsl(self.environ):
            self.method = "wsl"
        else:
            self.method = "xdg"

    # ---- where ----------------------------------------------------------------------------------
    def _home(self) -> Path:
        return Path(self.environ.get("HOME") or Path.home())

    @property
    def path(self) -> Path | None:
        """The file this method writes (None for the registry)."""
        if self.method == "xdg":
            config = self.environ.get("XDG_CONFIG_HOME") or str(self._home() / ".config")
            return Path(config) / "autostart" / DESKTOP_FILE
        if self.method == "launchagent":
            return self._home() / "Library" / "LaunchAgents" / f"{LAUNCH_AGENT_LABEL}.plist"
        return None

    @property
    def location(self) -> str:
        """Where the setting lives, for a person."""
        path = self.path
        return str(path) if path is not None else f"HKEY_CURRENT_USER\\{RUN_KEY}\\{ENTRY_NAME}"

    def wsl_run_value(self) -> str:
        """The Windows Run value that starts Blossom inside this WSL distribution."""
        distro = self.environ.get("WSL_DISTRO_NAME", "")
        command = ["wsl.exe", *(["--distribution", distro] if distro else []), "--exec", *self.command]
        return windows_command_line(command)

    # ---- state ----------------------------------------------------------------------------------
    def is_enabled(self) -> bool:
        """Whether Blossom starts on login now (an entry exists and is not switched off)."""
        path = self.path
        try:
            if path is None:
                return self._read_run_value() is not None
            if not path.is_file():
                return False
            if self.method == "xdg":
                text = path.read_text(errors="replace")
                return "Hidden=true" not in text and "X-GNOME-Autostart-enabled=false" not in text
            return True
        except (OSError, AutostartError) as error:
            logger.warning("Cannot tell whether Blossom starts on login (%s): %s", self.location, error)
            return False

    def set_enabled(self, enabled: bool) -> None:
        """Switch starting on login on or off."""
        if enabled:
            self.enable()
        else:
            self.disable()

    def enable(self) -> None:
        """Start Blossom (``command``) on every login from now on."""
        try:
            if self.method == "xdg":
                self._write(desktop_entry(self.command).encode())
            elif self.method == "launchagent":
                agent = {"Label": LAUNCH_AGENT_LABEL, "ProgramArguments": self.command, "RunAtLoad": True,
                         "ProcessType": "Interactive"}
                self._write(plistlib.dumps(agent))
            elif self.method == "windows":
                self._set_windows_value(windows_command_line(self.command))
            else:
                self._reg_exe(["add", f"HKCU\\{RUN_KEY}", "/v", ENTRY_NAME, "/t", "REG_SZ",
                               "/d", self.wsl_run_value(), "/f"])
        except OSError as error:
            raise AutostartError(f"could not set Blossom to start on login in {self.location}: {error}") from error
        logger.info("Blossom starts on login: %s", self.location)

    def disable(self) -> None:
        """Stop starting Blossom on login (nothing to do when it does not)."""
        try:
            path = self.path
            if path is not None:
                path.unlink(missing_ok=True)
            elif self.method == "windows":
                self._delete_windows_value()
            elif self._read_run_value() is not None:
                self._reg_exe(["delete", f"HKCU\\{RUN_KEY}", "/v", ENTRY_NAME, "/f"])
        except OSError as error:
            raise AutostartError(f"could not stop Blossom starting on login ({self.location}): {error}") from error
        logger.info("Blossom no longer starts on login (%s)", self.location)

    # ---- files ----------------------------------------------------------------------------------
    def _write(self, content: bytes) -> None:
        path = self.path
        assert path is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(content)
        os.replace(partial, path)

    # ---- the Windows registry -------------------------------------------------------------------
    def _read_run_value(self) -> str | None:
        if self.method == "windows":
            import winreg  # only on Windows

            try:
                with winreg.OpenKey(winreg.HKEY_CURRENT_USER, RUN_KEY) as key:
                    return str(winreg.QueryValueEx(key, ENTRY_NAME)[0])
            except FileNotFoundError:
                return None
        result = self._reg_exe(["query", f"HKCU\\{RUN_KEY}", "/v", ENTRY_NAME], check=False)
        if result.returncode != 0:
            return None
        for line in result.stdout.splitlines():
            parts = line.split(None, 2)
            if len(parts) == 3 and parts[0] == ENTRY_NAME:
                return parts[2]
        return None

    def _set_windows_value(self, value: str) -> None:
        import winreg  # only on Windows

        with winreg.CreateKey(winreg.HKEY_CURRENT_USER, RUN_KEY) as key:
            winreg.SetValueEx(key, ENTRY_NAME, 0, winreg.REG_SZ, value)

    def _delete_windows_value(self) -> None:
        import winreg  # only on Windows

        try:
            with winreg.OpenKey(winreg.HKEY_CURRENT_USER, RUN_KEY, 0, winreg.KEY_SET_VALUE) as key:
                winreg.DeleteValue(key, ENTRY_NAME)
        except FileNotFoundError:
            pass

    def _reg_exe(self, args: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run Windows' ``reg.exe`` from inside WSL (through WSL's Windows interop)."""
        reg = shutil.which("reg.exe", path=self.environ.get("PATH")) or "/mnt/c/Windows/System32/reg.exe"
        if not Path(reg).exists():
            raise AutostartError("Windows' reg.exe is not reachable from this WSL distribution; "
                                 "turn on WSL interop, or add Blossom to shell:startup by hand")
        result = subprocess.run([reg, *args], capture_output=True, text=True, timeout=30)
        if check and result.returncode != 0:
            raise AutostartError(f"reg.exe {' '.join(args[:2])} failed: {result.stderr.strip() or result.stdout.strip()}")
        return result


def describe(autostart: Autostart) -> str:
    """One line for the settings tab: what is started and from where."""
    return f"Starts {shlex.join(autostart.command)} from {autostart.location}"
