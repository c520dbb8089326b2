"""``python -m app`` opens the window where there is a display and runs the terminal demo where there is none."""
from __future__ import annotations

import os
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
    assert ran[1][ran[1].index("--max_new_tokens") + 1] == "3"


def test_window_options_without_a_display_still_run_the_demo(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """``blossom --tab chat --no-serve`` on a machine without a display: the demo, not "unrecognized arguments"."""
    ran: list[list[str]] = []
    monkeypatch.setattr("core.cli.demo.main", lambda args: ran.append(args) or 0)
    monkeypatch.setattr(entry, "display_available", lambda: False)
    assert entry.main(["--tab", "chat", "--no-serve", "--servers", "1"]) == 0
    assert ran[0][ran[0].index("--servers") + 1] == "1"
    assert "(--tab --no_serve: options of the window, not used by the demo)" in capsys.readouterr().err


def test_self_test_is_reached_by_both_spellings(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[list[str]] = []
    monkeypatch.setattr("app.self_test.main", lambda args: ran.append(args) or 0)
    assert entry.main(["--self_test"]) == 0 and entry.main(["--self-test", "--servers", "3", "--verbose"]) == 0
    assert entry.main(["--self_test", "--max-new-tokens", "6"]) == 0
    assert ran == [["--servers", "2"], ["--servers", "3", "--verbose"], ["--servers", "2", "--max_new_tokens", "6"]]


def test_help_without_a_display_lists_the_apps_options() -> None:
    env = {key: value for key, value in os.environ.items()
           if key not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    result = subprocess.run([sys.executable, "-m", "app", "--help"], capture_output=True, text=True, timeout=120,
                            env=env, check=True)
    assert result.stdout.startswith("usage: blossom ")
    for option in ("--tab", "--no_serve", "--headless", "--self_test", "--minimized", "--prompt", "--servers"):
        assert option in result.stdout, option
    assert "--no-serve" not in result.stdout  # the old spellings work but are not advertised


def test_gui_imports_no_torch() -> None:
    """The window and its tabs load without torch, transformers or hivemind (they load lazily in threads)."""
    code = ("import sys, app.application, app.widgets.main_window; "
            "print(sorted(m for m in ('torch', 'transformers', 'hivemind') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"
