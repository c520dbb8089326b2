"""One naming across the command-line tools: each names itself as installed, every option says what it does
(and its default), and the old spellings still work without being advertised."""
from __future__ import annotations

import argparse
import importlib
import re
import tomllib
from pathlib import Path

import pytest

from core.cli.common import address_line
from core.launcher import PACKAGE_ROOT, parse_addresses

SCRIPTS = tomllib.loads((Path(PACKAGE_ROOT) / "pyproject.toml").read_text())["project"]["scripts"]
PARSER_MODULES = {"app.__main__": "app.command_line"}  # the app's parser lives apart from its Qt-free entry point


def _parser(script: str) -> argparse.ArgumentParser:
    module = SCRIPTS[script].split(":")[0]
    return importlib.import_module(PARSER_MODULES.get(module, module)).build_parser()


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_each_tool_names_itself_as_installed_and_explains_every_option(script: str) -> None:
    parser = _parser(script)
    assert parser.prog == script
    assert parser.description
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:  # a hidden alias: it must store into a listed option
            assert any(other.dest == action.dest and other.help != argparse.SUPPRESS for other in parser._actions)
            continue
        assert action.help, f"{script} {action.option_strings} has no help line"
        assert all(flag == "-h" or "-" not in flag[2:] for flag in action.option_strings), \
            f"{script} {action.option_strings}: options are spelled with underscores"


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_shows_the_defaults(script: str) -> None:
    text = _parser(script).format_help()
    for action in _parser(script)._actions:
        if action.option_strings and action.help != argparse.SUPPRESS and action.default not in (
                None, False, True, "", [], (), argparse.SUPPRESS):
            help_text = " ".join(text.split())
            assert f"{action.option_strings[0]}" in help_text
            assert "default" in " ".join((action.help or "").split()) or f"(default: {action.default})" in help_text, \
                f"{script} {action.option_strings[0]} does not show its default {action.default!r}"


@pytest.mark.parametrize("script, old, new, value", [
    ("blossom-server", ["--converted_model_name_or_path", "m"], "model", "m"),
    ("blossom-train", ["--lr", "0.5"], "learning_rate", 0.5),
    ("blossom-train", ["--save", "p.safetensors"], "save_path", "p.safetensors"),
    ("blossom", ["--no-serve"], "no_serve", True),
    ("blossom", ["--self-test"], "self_test", True),
])
def test_old_spellings_are_hidden_aliases(script: str, old: list[str], new: str, value: object) -> None:
    required = {"blossom-train": ["--model", "m", "--initial_peers", "/ip4/1.2.3.4/tcp/1/p2p/Qm", "--dataset", "d"]}
    parser = _parser(script)
    args = parser.parse_args(required.get(script, []) + old)
    assert getattr(args, new) == value
    assert not re.search(re.escape(old[0]) + r"\b", parser.format_help())


def test_defaults_survive_hidden_aliases() -> None:
    args = _parser("blossom-train").parse_args(["--model", "m", "--initial_peers", "x", "--dataset", "d"])
    assert args.learning_rate == 1e-2 and args.save_path is None


@pytest.mark.parametrize("maddr, reach", [
    ("/ip4/127.0.0.1/tcp/31337/p2p/QmX", "from this computer only"),
    ("/ip6/::1/tcp/31337/p2p/QmX", "from this computer only"),
    ("/ip4/192.168.1.20/tcp/31337/p2p/QmX", "from your local network"),
    ("/ip4/10.0.0.7/tcp/31337/p2p/QmX", "from your local network"),
    ("/ip4/8.8.4.4/tcp/31337/p2p/QmX", "from the internet, unless a firewall is in the way"),
])
def test_printed_addresses_say_who_can_dial_them(maddr: str, reach: str) -> None:
    line = address_line(maddr)
    assert line == f"  {maddr}   ({reach})"
    assert parse_addresses([line]) == [maddr]  # what scripts and tests read back
