#!/bin/sh
# Install Blossom for this user only (no root): run ./install.sh from the unpacked tarball.
#
#   program    ${XDG_DATA_HOME:-~/.local/share}/blossom/          (this folder, copied)
#   menu       ${XDG_DATA_HOME:-~/.local/share}/applications/blossom.desktop
#   icon       ${XDG_DATA_HOME:-~/.local/share}/icons/hicolor/256x256/apps/blossom.png
#   command    ~/.local/bin/blossom                                 (a small script that starts it)
#
# Installing again replaces the program and keeps your settings, models and logs.
# Uninstall with ~/.local/share/blossom/uninstall.sh (add --purge to delete models and settings too).
# Options: --prefix DIR installs the program into DIR instead; --no-menu skips the menu entry.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
data_home=${XDG_DATA_HOME:-$HOME/.local/share}
prefix=$data_home/blossom
bin_dir=$HOME/.local/bin
menu=yes

while [ $# -gt 0 ]; do
    case $1 in
        --prefix) [ $# -ge 2 ] || { echo "install.sh: --prefix needs a folder" >&2; exit 2; }; prefix=$2; shift 2 ;;
        --no-menu) menu=no; shift ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done

if [ ! -x "$here/blossom" ] || [ ! -d "$here/_internal" ]; then
    echo "install.sh: run me from the unpacked Blossom folder (blossom and _internal/ are missing in $here)" >&2
    exit 1
fi
case $prefix in
    /*) ;;
    *) prefix=$(pwd)/$prefix ;;
esac
if [ "$(cd "$here" && pwd -P)" = "$(mkdir -p "$prefix" && cd "$prefix" && pwd -P)" ]; then
    echo "install.sh: $prefix is this folder already; unpack the tarball somewhere else first" >&2
    exit 1
fi

echo "Installing Blossom into $prefix ..."
staging=$prefix.installing
rm -rf "$staging"
mkdir -p "$staging"
# everything but the installer's own helpers goes into the program folder
(cd "$here" && tar -cf - --exclude=./install.sh .) | (cd "$staging" && tar -xf -)
cat > "$staging/uninstall.sh" <<UNINSTALL
#!/bin/sh
# Remove Blossom (installed by install.sh). --purge also deletes converted models, logs and settings.
set -eu
rm -f "$bin_dir/blossom" "$data_home/applications/blossom.desktop" \\
      "$data_home/icons/hicolor/256x256/apps/blossom.png" "\${XDG_CONFIG_HOME:-\$HOME/.config}/autostart/blossom.desktop"
if [ "\${1:-}" = "--purge" ]; then
    rm -rf "\${BLOSSOM_HOME:-\$HOME/.cache/blossom}" "\${XDG_CONFIG_HOME:-\$HOME/.config}/Blossom"
fi
command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database "$data_home/applications" 2>/dev/null || true
rm -rf "$prefix"
echo "Blossom is uninstalled."
UNINSTALL
chmod 755 "$staging/uninstall.sh"
rm -rf "$prefix"
mv "$staging" "$prefix"

mkdir -p "$bin_dir"
cat > "$bin_dir/blossom" <<LAUNCHER
#!/bin/sh
exec "$prefix/blossom" "\$@"
LAUNCHER
chmod 755 "$bin_dir/blossom"

if [ "$menu" = yes ]; then
    mkdir -p "$data_home/applications" "$data_home/icons/hicolor/256x256/apps"
    cp "$prefix/blossom.png" "$data_home/icons/hicolor/256x256/apps/blossom.png"
    # Exec= quoting of the desktop entry spec (\ " ` $ escaped, then \ doubled; % doubled),
    # then escaping for sed's replacement text (\ | & escaped)
    exec_path=$(printf '%s' "$prefix/blossom" | sed -e 's/\\/\\\\\\\\/g' -e 's/["`$]/\\\\&/g' -e 's/%/%%/g' \
        -e 's/[\\|&]/\\&/g')
    icon_path=$(printf '%s' "$prefix/blossom.png" | sed -e 's/[\\|&]/\\&/g')
    sed -e "s|@EXEC@|\"$exec_path\"|" -e "s|@ICON@|$icon_path|" \
        "$prefix/blossom.desktop" > "$data_home/applications/blossom.desktop"
    chmod 644 "$data_home/applications/blossom.desktop"
    command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database "$data_home/applications" 2>/dev/null || true
fi

echo "Blossom is installed."
[ "$menu" = yes ] && echo "  Start it from your applications menu (Blossom), or run: $bin_dir/blossom"
[ "$menu" = yes ] || echo "  Run: $bin_dir/blossom"
echo "  Check it works without a window: $bin_dir/blossom --self_test"
echo "  Uninstall: $prefix/uninstall.sh"
case ":$PATH:" in
    *":$bin_dir:"*) ;;
    *) echo "  ($bin_dir is not on your PATH; add it to call plain 'blossom')" ;;
esac
