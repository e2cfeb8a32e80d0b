#!/bin/sh
# Builds strata and its mount helper in release mode and installs them:
#   strata        -> $DESTDIR$BINDIR/strata          (BINDIR  default $PREFIX/bin, PREFIX default /usr/local)
#   mount.strata  -> $DESTDIR$SBINDIR/mount.strata   (SBINDIR default /sbin, where mount(8) looks for helpers)
#
# Usage: scripts/install.sh [--no-build] [--uninstall] [--as-fuse-overlayfs] [--no-fuse-overlayfs]
#   --no-build            install what an earlier release build left (no cargo run)
#   --uninstall           remove the installed files (and the link below, if it is there)
#   --as-fuse-overlayfs   also link $BINDIR/fuse-overlayfs -> strata, so that programs that
#                         look for `fuse-overlayfs` on PATH (dockerd's fuse-overlayfs storage
#                         driver) run strata; /usr/local/bin precedes /usr/bin on the default PATH
#   --no-fuse-overlayfs   remove only that link (the way back to the real fuse-overlayfs);
#                         nothing is built or installed
# Environment: PREFIX, BINDIR, SBINDIR, DESTDIR (staging root, e.g. for packaging),
#   CARGO (default cargo), CARGO_TARGET_DIR (honoured through cargo metadata).
# Running it again replaces the files in place (atomically, so a running strata is fine).
set -eu

PREFIX=${PREFIX:-/usr/local}
BINDIR=${BINDIR:-$PREFIX/bin}
SBINDIR=${SBINDIR:-/sbin}
DESTDIR=${DESTDIR:-}
CARGO=${CARGO:-cargo}

build=1
uninstall=0
as_fo=0
no_fo=0
for arg in "$@"; do
    case $arg in
        --no-build) build=0 ;;
        --uninstall) uninstall=1 ;;
        --as-fuse-overlayfs) as_fo=1 ;;
        --no-fuse-overlayfs) no_fo=1 ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

strata_dest=$DESTDIR$BINDIR/strata
helper_dest=$DESTDIR$SBINDIR/mount.strata
fo_link=$DESTDIR$BINDIR/fuse-overlayfs

if [ "$as_fo" = 1 ] && { [ "$no_fo" = 1 ] || [ "$uninstall" = 1 ]; }; then
    echo "install.sh: --as-fuse-overlayfs goes with neither --no-fuse-overlayfs nor --uninstall" >&2
    exit 2
fi

# remove_fo_link: removes $fo_link if it is our link to strata; anything else is left alone.
remove_fo_link() {
    if [ -L "$fo_link" ] && [ "$(readlink "$fo_link")" = strata ]; then
        rm -f "$fo_link"
        echo "removed $fo_link (fuse-overlayfs is $(command -v fuse-overlayfs || echo 'not installed') again)"
    elif [ -e "$fo_link" ] || [ -L "$fo_link" ]; then
        echo "install.sh: $fo_link is not the link to strata this script makes; left alone" >&2
    fi
}

if [ "$uninstall" = 1 ]; then
    remove_fo_link
    rm -f "$strata_dest" "$helper_dest"
    echo "removed $strata_dest $helper_dest"
    exit 0
fi
if [ "$no_fo" = 1 ]; then
    remove_fo_link
    exit 0
fi
if [ "$as_fo" = 1 ] && { [ -e "$fo_link" ] || [ -L "$fo_link" ]; } &&
    ! { [ -L "$fo_link" ] && [ "$(readlink "$fo_link")" = strata ]; }; then
    echo "install.sh: $fo_link exists and is not a link to strata; move it away first" >&2
    exit 1
fi

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [ "$build" = 1 ]; then
    "$CARGO" build --release --workspace
fi

# Where cargo put the binaries (follows CARGO_TARGET_DIR and .cargo/config).
target=$("$CARGO" metadata --format-version 1 --no-deps 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
target=${target:-${CARGO_TARGET_DIR:-$root/target}}
strata_bin=$target/release/strata
helper_bin=$target/release/mount-strata   # cargo cannot name a binary mount.strata

for f in "$strata_bin" "$helper_bin"; do
    if [ ! -x "$f" ]; then
        echo "install.sh: $f not found: build first (cargo build --release --workspace)" >&2
        exit 1
    fi
done

# Copy beside the destination, then rename over it: atomic, and works while an
# older strata daemon is still running from the old file.
put() {
    src=$1 dest=$2
    mkdir -p "$(dirname "$dest")"
    tmp="$dest.new.$$"
    cp "$src" "$tmp"
    chmod 0755 "$tmp"
    mv -f "$tmp" "$dest"
    echo "installed $dest"
}
put "$strata_bin" "$strata_dest"
put "$helper_bin" "$helper_dest"
if [ "$as_fo" = 1 ]; then
    # A relative link next to strata, swapped in atomically.
    ln -sfn strata "$fo_link.new.$$"
    mv -Tf "$fo_link.new.$$" "$fo_link"
    echo "installed $fo_link -> strata (undo: $0 --no-fuse-overlayfs)"
fi

if [ -z "$DESTDIR" ]; then
    "$strata_dest" --version 2>/dev/null || echo "note: '$strata_dest --version' failed" >&2
fi
