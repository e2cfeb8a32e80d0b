#!/usr/bin/env bash
# Builds strata and mounts the example layers in examples/layers (patch over app over
# base, with AUFS whiteouts and an opaque directory in them), then shows the merged
# view, a copy-up and a deletion, and what landed in the upper directory.
#   scripts/demo.sh          run the demo and unmount at the end
#   scripts/demo.sh --keep   leave the mount in place (prints how to unmount)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v fusermount3 >/dev/null || ! command -v cargo >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq fuse3 >/dev/null
fi
cargo build --release --quiet

layers=$PWD/examples/layers
demo=$(mktemp -d /tmp/strata-demo.XXXXXX)
mkdir -p "$demo"/{upper,work,merged}
mnt=$demo/merged
keep=${1:-}
cleanup() {
    if [ "$keep" != "--keep" ]; then
        fusermount3 -u "$mnt" 2>/dev/null || true
        rm -rf "$demo"
    fi
}
trap cleanup EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; eval "$@"; }

echo "Layers (top first): patch, app, base — upper: $demo/upper"
step target/release/strata -o "lowerdir=$layers/patch:$layers/app:$layers/base,upperdir=$demo/upper,workdir=$demo/work" "$mnt"
step "grep ' $mnt ' /proc/mounts"
step "cd $mnt && find . | sort; cd - >/dev/null"
step cat "$mnt/etc/motd"
step ls "$mnt/var/cache/apt"
step "echo 'written through the mount' >> $mnt/usr/share/doc/README"
step cat "$mnt/usr/share/doc/README"
step rm "$mnt/srv/www/index.html"
step ls -la "$mnt/srv/www"
step "cd $demo/upper && find . | sort; cd - >/dev/null"
step "cat $layers/base/usr/share/doc/README   # the lower layer is untouched"
if [ "$keep" = "--keep" ]; then
    echo
    echo "Mounted on $mnt. Unmount with: fusermount3 -u $mnt"
fi
