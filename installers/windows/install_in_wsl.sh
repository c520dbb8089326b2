#!/bin/sh
# Run by BlossomSetup.exe inside the default WSL 2 distribution, in Blossom's Windows install folder:
# unpacks the Linux bundle shipped next to this script and installs it for this Linux user
# (~/.local/share/blossom, ~/.local/bin/blossom), exactly as installers/linux/install.sh does on Linux.
set -eu

tarball=
for candidate in Blossom-*-linux-x86_64.tar.gz; do
    [ -f "$candidate" ] && tarball=$candidate
done
if [ -z "$tarball" ]; then
    echo "install_in_wsl.sh: no Blossom-*-linux-x86_64.tar.gz in $(pwd)" >&2
    exit 1
fi
case $(uname -m) in
    x86_64) ;;
    *) echo "install_in_wsl.sh: this WSL distribution runs on $(uname -m); the bundle is for x86_64" >&2; exit 1 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
tar -xzf "$tarball" -C "$work"
for folder in "$work"/Blossom-*; do
    "$folder/install.sh" --no-menu
done
