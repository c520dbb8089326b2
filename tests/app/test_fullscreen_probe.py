"""The full-screen and idle probes against a real X server (Xvfb), another program's window (xmessage) and real input.

There is no window manager here, so the test sets the two properties a window manager keeps (which window is
active, and that it is full-screen) with xprop; the probe reads them as it does on a desktop."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Iterator

import pytest

from app.pause_policy import PauseRules, decide
from app.pause_probes import fullscreen_window, observe

TOOLS = ("Xvfb", "xmessage", "xdotool", "xprop")
pytestmark = pytest.mark.skipif(not all(shutil.which(tool) for tool in TOOLS),
                                reason=f"needs {', '.join(TOOLS)} (Debian: xvfb x11-utils xdotool)")


def xprop(*arguments: str) -> None:
    subprocess.run(["xprop", *arguments], check=True, capture_output=True, timeout=10)


@pytest.fixture
def game_window(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, subprocess.Popen]]:
    """A full-screen-sized window of another program on a fresh X display: (window id, its process)."""
    display = f":{200 + os.getpid() % 500}"
    server = subprocess.Popen(["Xvfb", display, "-screen", "0", "800x600x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    monkeypatch.setenv("DISPLAY", display)
    program = None
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(["xprop", "-root"], capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "Xvfb did not start"
            time.sleep(0.2)
        program = subprocess.Popen(["xmessage", "-geometry", "800x600+0+0", "a game"])
        window = ""
        while not window:
            assert time.monotonic() < deadline, "xmessage shows no window"
            time.sleep(0.2)
            found = subprocess.run(["xdotool", "search", "--class", "xmessage"], capture_output=True, text=True)
            window = found.stdout.split()[-1] if found.stdout.split() else ""
        xprop("-id", window, "-f", "_NET_WM_PID", "32c", "-set", "_NET_WM_PID", str(program.pid))
        xprop("-id", window, "-f", "_NET_WM_NAME", "8u", "-set", "_NET_WM_NAME", "Space Game")
        xprop("-root", "-f", "_NET_ACTIVE_WINDOW", "32x", "-set", "_NET_ACTIVE_WINDOW", window)
        yield int(window), program
    finally:
        for process in (program, server):
            if process is not None:
                process.kill()
                process.wait()


def test_a_full_screen_window_of_another_program_pauses(game_window) -> None:
    window, program = game_window
    assert fullscreen_window(set()) == (None, "")  # active, but not full-screen
    xprop("-id", str(window), "-f", "_NET_WM_STATE", "32a", "-set", "_NET_WM_STATE", "_NET_WM_STATE_FULLSCREEN")
    assert fullscreen_window(set()) == ("Space Game", "")
    assert fullscreen_window({program.pid}) == (None, "")  # Blossom's own full-screen window never counts
    seen = observe([], [], check_idle=False)
    assert decide(seen, PauseRules()).reason == "A full-screen program is open (Space Game)"
    assert decide(seen, PauseRules(when_fullscreen=False)).pause is False


def test_keyboard_or_mouse_input_counts_as_someone_using_the_pc(game_window) -> None:
    from app.pause_probes import idle_seconds

    subprocess.run(["xdotool", "mousemove", "10", "10"], check=True, timeout=10)  # real input on the X server
    idle, note = idle_seconds()
    assert note == "" and idle is not None and idle < 5
    seen = observe([], [], check_idle=True)
    rules = PauseRules(when_user_active=True, idle_minutes=2)
    assert decide(seen, rules).reason == "You are using this PC (serving resumes after 2 min idle)"
    assert decide(observe([], [], check_idle=False), rules).pause is False  # the rule is off: idle is not read
