"""A reader for a ``.desktop`` file's ``Exec=`` value, written from the desktop entry specification.

Used by the tests to check that what Blossom writes (app.autostart, installers/linux/install.sh)
reads back as the intended command line.
"""
from __future__ import annotations

STRING_ESCAPES = {"s": " ", "n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape_string(value: str) -> str:
    """The file format's string escapes (``\\s \\n \\t \\r \\\\``); other backslashes stay."""
    out, index = [], 0
    while index < len(value):
        char = value[index]
        if char == "\\" and index + 1 < len(value) and value[index + 1] in STRING_ESCAPES:
            out.append(STRING_ESCAPES[value[index + 1]])
            index += 2
            continue
        out.append(char)
        index += 1
    return "".join(out)


def parse_exec(value: str) -> list[str]:
    """Split an ``Exec=`` value into arguments: string escapes first, then quoting, then ``%%`` -> ``%``."""
    text = unescape_string(value)
    arguments: list[str] = []
    current: list[str] = []
    in_quotes = started = False
    index = 0
    while index < len(text):
        char = text[index]
        if in_quotes:
            if char == "\\" and index + 1 < len(text) and text[index + 1] in '"`$\\':
                current.append(text[index + 1])
                index += 2
                continue
            if char == '"':
                in_quotes = False
            else:
                current.append(char)
        elif char == '"':
            in_quotes = started = True
        elif char == " ":
            if started:
                arguments.append("".join(current))
                current, started = [], False
        else:
            current.append(char)
            started = True
        index += 1
    if in_quotes:
        raise ValueError(f"unterminated quote in {value!r}")
    if started:
        arguments.append("".join(current))
    return [argument.replace("%%", "%") for argument in arguments]


def read_desktop_entry(text: str) -> dict[str, str]:
    """The ``[Desktop Entry]`` group's keys and raw values."""
    entries: dict[str, str] = {}
    in_group = False
    for line in text.splitlines():
        if line.startswith("["):
            in_group = line.strip() == "[Desktop Entry]"
        elif in_group and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            entries[key.strip()] = value.strip()
    return entries
