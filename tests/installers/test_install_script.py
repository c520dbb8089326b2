"""installers/linux/install.sh: a per-user install without root, run on a small real folder shaped like the bundle.

The bundle's program is a two-line shell script here (the real bundle is tested in test_bundle.py),
so this runs in a second and checks the installer's own work: files, menu entry, command, reinstall
and uninstall, in a home folder whose path has a space in it.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.installers.helpers import run, user_env
from tests.installers.desktop_exec import parse_exec, read_desktop_entry

ROOT = Path(__file__).resolve().parents[2]
LINUX = ROOT / "installers" / "linux"


def test_install_reinstall_and_uninstall(unpacked, tmp_path):
    home = tmp_path / "volunteer home"
    home.mkdir()
    env = user_env(home)
    output = run([str(unpacked / "install.sh")], env).stdout
    prefix = home / ".local" / "share" / "blossom"
    assert "Blossom is installed" in output
    assert (prefix / "_internal" / "marker.txt").read_text() == "bundle payload"
    assert not (prefix / "install.sh").exists() and (prefix / "uninstall.sh").is_file()

    assert run(["blossom", "--self-test", "a b"], env).stdout.strip() == "blossom ran with: --self-test a b"

    entry = read_desktop_entry((home / ".local/share/applications/blossom.desktop").read_text())
    assert parse_exec(entry["Exec"]) == [str(prefix / "blossom")]
    assert entry["Icon"] == str(prefix / "blossom.png") and Path(entry["Icon"]).is_file()
    assert (home / ".local/share/icons/hicolor/256x256/apps/blossom.png").is_file()
    if shutil.which("desktop-file-validate"):
        run(["desktop-file-validate", str(home / ".local/share/applications/blossom.desktop")], env)

    (home / ".cache" / "blossom").mkdir(parents=True)
    (home / ".cache" / "blossom" / "kept.txt").write_text("a converted model")
    (prefix / "stale-file-from-an-old-version").write_text("x")
    run([str(unpacked / "install.sh")], env)  # again: replaces the program, keeps the user's data
    assert not (prefix / "stale-file-from-an-old-version").exists()
    assert (home / ".cache" / "blossom" / "kept.txt").is_file()

    autostart = home / ".config" / "autostart" / "blossom.desktop"
    autostart.parent.mkdir(parents=True)
    autostart.write_text("[Desktop Entry]\n")
    assert "uninstalled" in run([str(prefix / "uninstall.sh")], env).stdout
    for gone in (prefix, home / ".local/bin/blossom", home / ".local/share/applications/blossom.desktop", autostart):
        assert not gone.exists(), gone
    assert (home / ".cache" / "blossom" / "kept.txt").is_file()


def test_prefix_option_purge_and_bad_use(unpacked, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = user_env(home)
    prefix = tmp_path / "apps" / "blossom here"
    run([str(unpacked / "install.sh"), "--prefix", str(prefix), "--no-menu"], env)
    assert (prefix / "blossom").is_file()
    assert not (home / ".local/share/applications/blossom.desktop").exists()
    assert run([str(home / ".local/bin/blossom"), "x"], env).stdout.strip() == "blossom ran with: x"
    (home / ".cache" / "blossom").mkdir(parents=True)
    run([str(prefix / "uninstall.sh"), "--purge"], env)
    assert not prefix.exists() and not (home / ".cache" / "blossom").exists()

    (unpacked / "_internal" / "marker.txt").unlink()
    (unpacked / "_internal").rmdir()
    broken = subprocess.run([str(unpacked / "install.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert broken.returncode == 1 and "unpacked Blossom folder" in broken.stderr
    unknown = subprocess.run([str(LINUX / "install.sh"), "--frobnicate"], env=env, capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown option" in unknown.stderr
