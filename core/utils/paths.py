"""Where Blossom keeps its files on this machine."""
from __future__ import annotations

import os
from pathlib import Path


def blossom_home() -> Path:
    """``$BLOSSOM_HOME`` or ``~/.cache/blossom``: converted models, measured speeds."""
    return Path(os.environ.get("BLOSSOM_HOME") or Path.home() / ".cache" / "blossom")
