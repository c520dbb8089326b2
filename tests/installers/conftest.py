"""Fixtures for the installer tests: a folder shaped like the unpacked Linux tarball, a throwaway user."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINUX = ROOT / "installers" / "linux"


@pytest.fixture
def unpacked(tmp_path: Path) -> Path:
    """A folder laid out like the unpacked tarball."""
    folder = tmp_path / "unpacked" / "Blossom-0.1.0-linux-x86_64"
    (folder / "_internal").mkdir(parents=True)
    (folder / "_internal" / "marker.txt").write_text("bundle payload")
    program = folder / "blossom"
    program.write_text('#!/bin/sh\necho "blossom ran with: $*"\n')
    program.chmod(0o755)
    for name in ("install.sh", "blossom.desktop"):
        shutil.copy2(LINUX / name, folder / name)
    shutil.copy2(ROOT / "resources" / "icons" / "blossom.png", folder / "blossom.png")
    return folder
