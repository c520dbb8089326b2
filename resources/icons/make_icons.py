"""Render Blossom's icons (drawn in ``app/icons.py``) to PNG files here: ``python resources/icons/make_icons.py``."""
from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtGui import QGuiApplication  # noqa: E402

from app.icons import ICON_STATES, render_pixmap  # noqa: E402


def main() -> None:
    application = QGuiApplication(sys.argv)
    render_pixmap("serving", 256).save(str(HERE / "blossom.png"))
    for state in ICON_STATES:
        render_pixmap(state, 64).save(str(HERE / f"blossom-{state}.png"))
    print(f"wrote {len(ICON_STATES) + 1} icons to {HERE}")
    del application


if __name__ == "__main__":
    main()
