"""The Windows installer's inputs that can be checked on Linux: the icon file and the Inno Setup script's references.

Compiling BlossomSetup.exe needs Inno Setup on Windows; these tests only catch what breaks before that.
"""
from __future__ import annotations

import importlib.util
import platform
import re
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.installers.helpers import run, user_env

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("build_windows", ROOT / "installers" / "build_windows.py")
build_windows = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_windows)

ISS = ROOT / "installers" / "windows" / "blossom.iss"


def test_ico_holds_the_png_images(tmp_path):
    pngs = [path.read_bytes() for path in build_windows.ICON_SOURCES]
    icon = build_windows.write_ico(pngs, tmp_path / "blossom.ico")
    data = icon.read_bytes()
    reserved, kind, count = struct.unpack("<HHH", data[:6])
    assert (reserved, kind, count) == (0, 1, len(pngs))
    sizes = []
    for index, png in enumerate(pngs):
        width, height, _, _, planes, bits, length, offset = struct.unpack("<BBBBHHII", data[6 + 16 * index:22 + 16 * index])
        assert data[offset:offset + length] == png and planes == 1 and bits == 32
        sizes.append((width or 256, height or 256))
    assert sizes == [build_windows.png_size(png) for png in pngs] == [(256, 256), (64, 64)]
    with pytest.raises(ValueError, match="not a PNG"):
        build_windows.write_ico([b"GIF89a"], tmp_path / "bad.ico")


def test_inno_script_references_files_that_exist():
    text = ISS.read_text()
    sources = re.findall(r'^Source: "([^"]+)"', text, flags=re.MULTILINE)
    assert sources, "no [Files] entries"
    for source in sources:
        if not source.startswith("{#"):
            assert (ISS.parent / source).is_file(), source
    for define in ("BundleTarball", "IconFile", "AppVersion"):
        assert f"{{#{define}}}" in text
    assert "OutputBaseFilename=BlossomSetup" in text and "PrivilegesRequired=lowest" in text
    assert "{autodesktop}" in text and "{uninstallexe}" in text


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the script accepts only x86_64, like the bundle")
def test_wsl_install_script_installs_the_tarball_next_to_it(unpacked, tmp_path):
    """What BlossomSetup.exe runs inside WSL, run here on Linux: from the folder holding the tarball."""
    windows_folder = tmp_path / "Programs" / "Blossom"
    windows_folder.mkdir(parents=True)
    with tarfile.open(windows_folder / "Blossom-0.1.0-linux-x86_64.tar.gz", "w:gz") as tarball:
        tarball.add(unpacked, arcname=unpacked.name)
    home = tmp_path / "home"
    home.mkdir()
    env = user_env(home)
    script = ROOT / "installers" / "windows" / "install_in_wsl.sh"
    result = subprocess.run(["sh", str(script)], cwd=windows_folder, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert run([str(home / ".local/bin/blossom"), "--minimized"], env).stdout.strip() == "blossom ran with: --minimized"
    assert not (home / ".local/share/applications/blossom.desktop").exists()  # Windows has its own shortcut
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = subprocess.run(["sh", str(script)], cwd=empty, env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "no Blossom-" in missing.stderr
