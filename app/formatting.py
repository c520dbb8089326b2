"""Numbers and errors as a person reads them (shared by the GUI and the worker; no Qt, no torch)."""
from __future__ import annotations

import re

from core.errors import BlossomError


def describe_error(error: BaseException) -> str:
    """A one-line reason: Blossom's own messages as they are, other errors with their type."""
    if isinstance(error, (BlossomError, ValueError, OSError)):
        return str(error) or type(error).__name__
    return f"{type(error).__name__}: {error}"


def format_duration(seconds: float) -> str:
    """``3725`` -> ``'1 h 2 min'``; ``42`` -> ``'42 s'``."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def format_count(value: float) -> str:
    """``1234567`` -> ``'1.2 M'``; small numbers stay exact."""
    value = float(value)
    for limit, suffix in ((1e9, " G"), (1e6, " M"), (1e4, " k")):
        if abs(value) >= limit:
            return f"{value / (limit if suffix != ' k' else 1e3):.1f}{suffix}"
    return f"{int(value):,}" if value == int(value) else f"{value:.1f}"


def format_rate(value: float) -> str:
    """A speed without a pointless decimal: ``49.73`` -> ``'49.7'``, ``3311.0`` -> ``'3311'``, ``0.0`` -> ``'0'``,
    ``56548.7`` -> ``'56.5 k'``."""
    if abs(value) >= 1e4:
        return format_count(value)
    return f"{value:.0f}" if abs(value) >= 100 or value == int(value) else f"{value:.1f}"


def format_blocks(start: int, end: int) -> str:
    """Blocks ``[start, end)`` as people count them: ``'0–14'`` (both ends included)."""
    return f"{start}–{end - 1}" if end - start > 1 else f"{start}"


_DOTTED_RANGE = re.compile(r"\b(\d+)\.\.(\d+)\b")


def block_ranges_as_people_write_them(text: str) -> str:
    """The server's ``blocks 0..29`` (its CLI's START..END, both included) as the app writes ranges: ``0–29``."""
    return _DOTTED_RANGE.sub("\\1–\\2", text)


def short_peer_id(peer_id: str) -> str:
    """The last characters of a peer id, which tell peers apart (their first ones are all alike)."""
    return f"…{peer_id[-8:]}" if len(peer_id) > 10 else peer_id
