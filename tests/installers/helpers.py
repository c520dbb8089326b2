"""Running installer scripts as a throwaway user (HOME in a temporary folder, no XDG_* overrides)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path


def user_env(home: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("XDG_")}
    env.update(HOME=str(home), PATH=f"{home}/.local/bin:/usr/bin:/bin")
    return env


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result
