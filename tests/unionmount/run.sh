#!/usr/bin/env bash
# unionmount-testsuite (the union mount tests overlayfs is checked with) against
# strata, as root:
#
#   tests/unionmount/run.sh        # `./run --ov --fuse=strata`, then `./run --ov=10 --fuse=strata`
#
# Environment:
#   UNIONMOUNT_SRC   the suite: a checkout dir or a .tar.gz (default: the newest
#                    unionmount-testsuite-*.tar.gz in a shared/third-party dir next
#                    to the repo or one of its parents)
#   STRATA           the strata binary (default target/debug/strata, built if missing)
#   UNIONMOUNT_RUNS  the runs, `;`-separated (default "--ov;--ov=10")
#
# The suite mounts with `mount -t fuse.strata`; mount.fuse3 then runs `strata`
# with the shell's default PATH. The run lives in a mount namespace of its own in
# which a dir holding the binary is bind-mounted on /usr/local/sbin: nothing is
# installed, and its mounts are seen by nothing else. Each test is one line of
# the suite's output; the last line is `N passed, M failed`. Exit status 77:
# no copy of the suite was found.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
die() { echo "tests/unionmount/run.sh: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "run as root: the suite mounts filesystems"
if [ -z "${STRATA_UNIONMOUNT_NS:-}" ]; then
    exec unshare -m --propagation private env STRATA_UNIONMOUNT_NS=1 "$0" "$@"
fi

find_src() {
    if [ -n "${UNIONMOUNT_SRC:-}" ]; then
        [ -e "$UNIONMOUNT_SRC" ] || die "UNIONMOUNT_SRC=$UNIONMOUNT_SRC: no such file or directory"
        echo "$UNIONMOUNT_SRC"
        return
    fi
    local d=$ROOT t
    while [ "$d" != / ]; do
        d=$(dirname "$d")
        t=$(ls -1 "$d"/shared/third-party/unionmount-testsuite-*.tar.gz 2>/dev/null | tail -1 || true)
        if [ -n "$t" ]; then
            echo "$t"
            return
        fi
    done
    echo "no unionmount-testsuite: set UNIONMOUNT_SRC to a checkout or a tarball (github.com/amir73il/unionmount-testsuite)" >&2
    exit 77
}
SRC=$(find_src) || exit $?
command -v python3 >/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3
}

STRATA=${STRATA:-$ROOT/target/debug/strata}
[ -x "$STRATA" ] || (cd "$ROOT" && cargo build --bin strata)
[ -x "$STRATA" ] || die "no strata binary at $STRATA"
STRATA=$(cd "$(dirname "$STRATA")" && pwd)/$(basename "$STRATA")

WORK=$(mktemp -d /tmp/strata-unionmount.XXXXXX)
chmod 755 "$WORK"
cleanup() {
    local rc=$? mp
    for mp in $(awk -v w="$WORK/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
        fusermount3 -u -q "$mp" 2>/dev/null || umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
    done
    umount /usr/local/sbin 2>/dev/null || true
    if [ "$rc" -eq 0 ]; then rm -rf "$WORK"; else echo "logs kept in $WORK" >&2; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

SUITE=$WORK/suite
mkdir -p "$SUITE" "$WORK/bin" "$WORK/base"
if [ -f "$SRC" ]; then
    tar xzf "$SRC" -C "$SUITE" --strip-components=1
else
    cp -a "$SRC"/. "$SUITE"/
fi
ln -s "$STRATA" "$WORK/bin/strata"
chmod 755 "$WORK/bin" "$WORK/base"
mount --bind "$WORK/bin" /usr/local/sbin

pass=0 fail=0
IFS=';' read -r -a runs <<< "${UNIONMOUNT_RUNS:---ov;--ov=10}"
for r in "${runs[@]}"; do
    log=$WORK/run${r//[^a-z0-9]/_}.log
    echo "==> unionmount-testsuite: ./run $r --fuse=strata"
    set +e
    (cd "$SUITE" && UNIONMOUNT_BASEDIR=$WORK/base timeout -k 30 "${UNIONMOUNT_TIMEOUT:-1800}" ./run "$r" --fuse=strata) > "$log" 2>&1
    rc=$?
    set -e
    # Each test starts with a line "*** ./run --ov ... TEST"; the suite stops at
    # the first failure (non-zero exit), so all but the last one started passed.
    started=$(grep -c '^\*\*\* .' "$log" || true)
    if [ "$rc" -eq 0 ]; then
        p=$started f=0
    else
        p=$((started > 0 ? started - 1 : 0)) f=1
        echo "failed (exit $rc) in: $(grep '^\*\*\* .' "$log" | tail -1)"
        tail -15 "$log"
    fi
    echo "./run $r --fuse=strata: $p passed, $f failed"
    pass=$((pass + p))
    fail=$((fail + f))
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
