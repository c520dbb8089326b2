"""``python -m app`` opens the window where there is a display and runs the terminal demo where there is none."""
from __future__ import annotations

import subprocess
import sys

import pytest

import app.__main__ as entry


@pytest.mark.parametrize("environ, platform, expected", [
    ({}, "linux", False),
    ({"DISPLAY": ":0"}, "linux", True),
    ({"WAYLAND_DISPLAY": "wayland-0"}, "linux", True),
    ({"QT_QPA_PLATFORM": "offscreen"}, "linux", True),
    ({}, "win32", True),
    ({}, "darwin", True),
])
def test_display_available(environ: dict, platform: str, expected: bool) -> None:
    assert entry.display_available(environ, platform) is expected


def test_without_a_display_the_demo_runs_and_says_so(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    ran: list[list[str]] = []
    monkeypatch.setattr("core.cli.demo.main", lambda args: ran.append(args) or 0)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert entry.main(["--prompt", "hi"]) == 0
    assert ran and ran[0][:2] == ["--prompt", "hi"]
    assert "no display found (DISPLAY and WAYLAND_DISPLAY are unset)" in capsys.readouterr().err
    assert entry.main(["--headless", "--max_new_tokens", "3"]) == 0
    assert ran[1][:2] == ["--max_new_tokens", "3"]


def test_gui_imports_no_torch() -> None:
    """The window and its tabs load without torch, transformers or hivemind (they load lazily in threads)."""
    code = ("import sys, app.application, app.widgets.main_window; "
            "print(sorted(m for m in ('torch', 'transformers', 'hivemind') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"
