"""Build ``BlossomSetup.exe`` (Inno Setup 6): ``python installers/build_windows.py --tarball dist/Blossom-…-linux-x86_64.tar.gz``.

Runs on Windows with Inno Setup 6 installed (``ISCC.exe`` on PATH or in its default folder). The
installer ships the Linux bundle made by ``installers/build_linux.py`` (on Linux, or inside WSL on
the same PC) and installs it into WSL 2, because hivemind does not run on native Windows (see
``installers/windows/blossom.iss`` and installers/README.md). Steps:

1. ``installers/build/blossom.ico`` from ``resources/icons`` (PNG images inside an ICO container);
2. ``ISCC.exe`` with ``installers/windows/blossom.iss`` -> ``installers/dist/BlossomSetup.exe``.

``--icon-only`` writes just the icon (used by ``installers/blossom.spec`` for a native Windows build).
"""
from __future__ import annotations

import argparse
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INSTALLERS = ROOT / "installers"
ICON_SOURCES = [ROOT / "resources" / "icons" / "blossom.png", ROOT / "resources" / "icons" / "blossom-serving.png"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ISCC_PLACES = [Path(os.environ.get("ProgramFiles(x86)", r"C:\Program Files (x86)")) / "Inno Setup 6" / "ISCC.exe",
               Path(os.environ.get("ProgramFiles", r"C:\Program Files")) / "Inno Setup 6" / "ISCC.exe"]


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG file's IHDR chunk."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    return struct.unpack(">II", data[16:24])


def write_ico(pngs: list[bytes], target: Path) -> Path:
    """An ICO file holding ``pngs`` as they are (Windows Vista and later read PNG images in icons)."""
    header = struct.pack("<HHH", 0, 1, len(pngs))
    entries, offset = [], 6 + 16 * len(pngs)
    for data in pngs:
        width, height = png_size(data)
        if width > 256 or height > 256:
            raise ValueError(f"icon images are at most 256x256, got {width}x{height}")
        entries.append(struct.pack("<BBBBHHII", width % 256, height % 256, 0, 0, 1, 32, len(data), offset))
        offset += len(data)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(header + b"".join(entries) + b"".join(pngs))
    return target


def find_iscc(given: Path | None) -> Path:
    """The Inno Setup compiler."""
    candidates = [given] if given else [Path(found) for found in [shutil.which("ISCC"), shutil.which("iscc")] if found]
    candidates += [] if given else ISCC_PLACES
    for candidate in candidates:
        if candidate and candidate.is_file():
            return candidate
    raise SystemExit("ISCC.exe (Inno Setup 6) was not found; install it from jrsoftware.org or pass --iscc PATH")


def project_version() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Build BlossomSetup.exe with Inno Setup 6.")
    parser.add_argument("--tarball", type=Path, help="the Linux bundle from installers/build_linux.py")
    parser.add_argument("--output", type=Path, default=INSTALLERS / "dist", help="where BlossomSetup.exe goes")
    parser.add_argument("--iscc", type=Path, default=None, help="path of ISCC.exe")
    parser.add_argument("--icon-only", action="store_true", help="only write installers/build/blossom.ico")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    icon = write_ico([path.read_bytes() for path in ICON_SOURCES], INSTALLERS / "build" / "blossom.ico")
    print(f"wrote {icon}")
    if args.icon_only:
        return 0
    if args.tarball is None or not args.tarball.is_file():
        print("--tarball must name the Linux bundle (python installers/build_linux.py makes it)", file=sys.stderr)
        return 2
    iscc = find_iscc(args.iscc)
    args.output.mkdir(parents=True, exist_ok=True)
    command = [str(iscc), f"/DAppVersion={project_version()}", f"/DBundleTarball={args.tarball.resolve()}",
               f"/DIconFile={icon}", f"/O{args.output.resolve()}", str(INSTALLERS / "windows" / "blossom.iss")]
    print("$", " ".join(command))
    result = subprocess.run(command)
    if result.returncode == 0:
        print(f"Built {args.output.resolve() / 'BlossomSetup.exe'}")
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
