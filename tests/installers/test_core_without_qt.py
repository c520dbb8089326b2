"""``pip install`` of Blossom without the ``app`` extra: ``import core`` and core's CLIs need no Qt."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLI_MODULES = ["core.cli.run_server", "core.cli.run_dht", "core.cli.convert_model", "core.cli.demo",
               "core.cli.train_prompts", "core.cli.swarm_status"]

# Runs in a fresh interpreter where importing PySide6 (or shiboken6) fails as if it were not installed.
BLOCKED_QT_SCRIPT = textwrap.dedent("""
    import importlib, importlib.abc, sys

    class NoQt(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("PySide6", "shiboken6"):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, NoQt())
    import core
    for name in core.__all__:
        getattr(core, name)
    for module in sys.argv[1:]:
        main = importlib.import_module(module).main
        try:
            main(["--help"])
        except SystemExit as stop:
            assert stop.code in (0, None), (module, stop.code)
    import app.autostart, app.self_test  # the Qt-free parts of the app
    assert app.self_test.check_qt(None).startswith("skipped"), "the self-test must skip Qt without PySide6"
    loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("PySide6", "shiboken6"))
    assert not loaded, loaded
    print("core imported without Qt:", len(sys.modules), "modules")
""")


def test_core_and_its_clis_import_without_pyside6():
    result = subprocess.run([sys.executable, "-c", BLOCKED_QT_SCRIPT, *CLI_MODULES], cwd=ROOT,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "core imported without Qt" in result.stdout
    assert result.stdout.count("usage:") == len(CLI_MODULES)  # each CLI printed its --help


def test_qt_is_only_in_the_app_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [dep for dep in project["dependencies"] if dep.lower().startswith("pyside6")]
    assert any(dep.startswith("PySide6") for dep in project["optional-dependencies"]["app"])
    assert any(dep.startswith("pyinstaller") for dep in project["optional-dependencies"]["bundle"])
