"""``python -m app --self-test`` outside a bundle: the same report the bundle prints, from a Python install."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_self_test_passes_without_a_display(tmp_path):
    env = {key: value for key, value in os.environ.items() if key not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(BLOSSOM_HOME=str(tmp_path / "blossom-home"), QT_QPA_PLATFORM="")
    result = subprocess.run([sys.executable, "-m", "app", "--self-test", "--max-new-tokens", "6"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=850)
    report = result.stdout
    assert result.returncode == 0, report + result.stderr[-4000:]
    assert report.startswith("Blossom self-test\n  Python install: ")
    for step in ("p2pd", "model", "swarm", "generate", "qt"):
        assert re.search(rf"^  {step} +ok ", report, flags=re.MULTILINE), step
    assert re.search(r"generate +ok .*6 tokens in .*Paris", report)
    assert "Self-test passed" in report
    assert not processes_mentioning(str(tmp_path)), "the self-test left its swarm's processes running"


def processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that contain ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command:
            found.append(command)
    return found


def test_self_test_reports_a_failure_and_exits_1(tmp_path):
    """No place to convert the demo model into: the model step fails, the rest is skipped, exit code 1."""
    home = tmp_path / "blossom-home"
    home.write_text("a file where Blossom's data folder should be")
    env = dict(os.environ, BLOSSOM_HOME=str(home))
    result = subprocess.run([sys.executable, "-m", "app", "--self-test"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    assert re.search(r"^  p2pd +ok ", result.stdout, flags=re.MULTILINE)
    assert re.search(r"^  model +FAIL ", result.stdout, flags=re.MULTILINE)
    assert re.search(r"^  swarm +FAIL +0.0 s  skipped after the failure above", result.stdout, flags=re.MULTILINE)
    assert "Self-test FAILED" in result.stdout
