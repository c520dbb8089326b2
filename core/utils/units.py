"""Human-readable quantities for messages and summaries."""
from __future__ import annotations


def format_bytes(size: int) -> str:
    """``1536`` -> ``'1.5 KiB'``; sizes under 1 KiB stay in bytes (``'512 B'``)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
