#!/usr/bin/env bash
# The whole test suite, in one command, as root on Debian/Ubuntu:
#   1. installs what it needs when missing (fuse3, attr, a C compiler,
#      pjdfstest 0.2.2, the users pjdfstest switches to);
#   2. cargo build --workspace, cargo test --workspace (the integration tests
#      mount strata for real);
#   3. pjdfstest (POSIX conformance) inside a fresh strata mount;
#   4. the podman end-to-end test when tests/podman/run.sh exists
#      (SKIP_PODMAN=1 leaves it out);
#   5. Docker with strata as its fuse-overlayfs, and containerd's mount.fuse3
#      argv (tests/docker/run.sh; SKIP_DOCKER=1 leaves it out);
#   6. rootless podman as a test user, and strata mounted by that user by
#      hand (tests/podman/rootless.sh; SKIP_ROOTLESS=1 leaves it out);
#   7. xfstests' generic tests, a subset of the quick group (tests/xfstests/run.sh;
#      SKIP_XFSTESTS=1 leaves it out, XFSTESTS_TESTS="-g quick" runs the whole group);
#   8. unionmount-testsuite --ov and --ov=10 (tests/unionmount/run.sh;
#      SKIP_UNIONMOUNT=1 leaves it out);
#   9. the integration tests again under the FUSE-over-io_uring transport
#      (STRATA_TEST_TRANSPORT=uring) when the kernel has it: enable_uring is
#      turned on for that run and restored (SKIP_URING=1 leaves it out);
# then prints a summary and exits non-zero if anything failed. No mount or
# daemon is left behind, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$HOME/.cargo/bin:$PATH"
export NO_COLOR=1
PJDFSTEST_VERSION=0.2.2

say() { printf '\n==> %s\n' "$*"; }
die() { echo "scripts/test.sh: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: the tests mount filesystems, make devices and switch users"
command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain first"

# ---------------------------------------------------------------- set-up
pkgs=()
command -v fusermount3 >/dev/null || pkgs+=(fuse3)
command -v setfattr >/dev/null || pkgs+=(attr)
command -v cc >/dev/null || pkgs+=(gcc libc6-dev)
command -v useradd >/dev/null || pkgs+=(passwd)
command -v mountpoint >/dev/null || pkgs+=(util-linux)
# tests/powercut.rs: an ext4 on a loop device; tests/metacopy.rs reads uppers with fuse-overlayfs,
command -v mkfs.ext4 >/dev/null || pkgs+=(e2fsprogs)
[ -x /usr/bin/fuse-overlayfs ] || pkgs+=(fuse-overlayfs) # tests/flags.rs, override_stat.rs: interchange
command -v python3 >/dev/null || pkgs+=(python3)            # tests/layers.rs: an OCI applier
[ -x /bin/busybox ] || pkgs+=(busybox-static)              # tests/layers.rs: image rootfs
if [ ${#pkgs[@]} -gt 0 ]; then
    say "installing ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${pkgs[@]}"
fi
[ -c /dev/fuse ] || modprobe fuse 2>/dev/null || true
[ -c /dev/fuse ] || die "/dev/fuse is missing"

if ! pjdfstest --version 2>/dev/null | grep -qx "pjdfstest $PJDFSTEST_VERSION"; then
    say "installing pjdfstest $PJDFSTEST_VERSION"
    cargo install pjdfstest --version "$PJDFSTEST_VERSION" --locked
fi

# pjdfstest switches to "nobody" and "tests", each with its primary group.
getent group nogroup >/dev/null || getent passwd nobody >/dev/null || groupadd -r nogroup
getent passwd nobody >/dev/null || useradd -r -M -g nogroup -s /usr/sbin/nologin nobody
getent passwd tests >/dev/null || useradd -r -M -U -s /usr/sbin/nologin tests

# ---------------------------------------------------------------- clean-up
WORK=$(mktemp -d /tmp/strata-suite.XXXXXX)
chmod 755 "$WORK"
STRATA_PID=

# Unmounts everything below $WORK (deepest first) and stops our daemons.
unmount_all() {
    local mp
    for mp in $(awk -v w="$WORK/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
        fusermount3 -u -q "$mp" 2>/dev/null || umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
    done
    if [ -n "$STRATA_PID" ] && kill -0 "$STRATA_PID" 2>/dev/null; then
        kill "$STRATA_PID" 2>/dev/null || true
        sleep 1
        kill -9 "$STRATA_PID" 2>/dev/null || true
    fi
}
leaked_mounts() {
    awk -v w="$WORK/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo
}
URING_PARAM=/sys/module/fuse/parameters/enable_uring
URING_PREV=
restore_uring() {
    if [ -n "$URING_PREV" ]; then
        echo "$URING_PREV" > "$URING_PARAM" || echo "could not restore $URING_PARAM to $URING_PREV" >&2
        URING_PREV=
    fi
}
finish() {
    local rc=$?
    unmount_all
    restore_uring
    if [ "$rc" -eq 0 ]; then
        rm -rf "$WORK"
    else
        echo "logs kept in $WORK" >&2
    fi
    exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

failures=0
summary=()
total_pass=0
total_fail=0
total_skip=0

# ---------------------------------------------------------------- cargo
say "cargo build --workspace"
cargo build --workspace
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/strata
[ -x "$BIN" ] || die "no binary at $BIN after the build"

say "cargo test --workspace"
# The tests' temporary dirs (and so their mounts) live under $WORK, so that a
# leaked mount is found and removed below.
mkdir -p "$WORK/tmp"
set +e
# Tests that skip a part (a missing tool) append "test: reason" lines here.
export STRATA_SKIP_LOG=$WORK/cargo-skipped.txt
: > "$STRATA_SKIP_LOG"
STRATA_POWERCUT_REPORT=$WORK/powercut.txt TMPDIR=$WORK/tmp timeout -k 30 1200 cargo test --workspace --no-fail-fast 2>&1 | tee "$WORK/cargo-test.log"
cargo_rc=${PIPESTATUS[0]}
set -e
read -r c_pass c_fail c_ign < <(awk '/^test result:/ {p += $4; f += $6; i += $8} END {print p+0, f+0, i+0}' "$WORK/cargo-test.log")
if [ "$cargo_rc" -ne 0 ] && [ "$c_fail" -eq 0 ]; then
    c_fail=1 # did not build, crashed or timed out: count it
fi
summary+=("cargo test:  $c_pass passed, $c_fail failed, $c_ign ignored (exit $cargo_rc)")
# Ignored tests count as skipped; each says why (listed at the end).
total_skip=$((total_skip + c_ign))
grep -aE "^test .* \.\.\. ignored" "$WORK/cargo-test.log" | sed 's/^/    /' > "$WORK/cargo-ignored.txt" || true
# The power-cut rounds (tests/powercut.rs; STRATA_POWERCUT_ROUNDS for more).
if [ -s "$WORK/powercut.txt" ]; then
    while IFS= read -r l; do summary+=("  power cut: $l"); done < "$WORK/powercut.txt"
    if grep -q '^skipped' "$WORK/powercut.txt"; then total_skip=$((total_skip + 1)); fi
fi
if [ -s "$STRATA_SKIP_LOG" ]; then
    summary+=("cargo test:  $(wc -l < "$STRATA_SKIP_LOG") parts skipped (listed below)")
fi
total_pass=$((total_pass + c_pass))
total_fail=$((total_fail + c_fail))
grep -E "^test .* FAILED$" "$WORK/cargo-test.log" | sed 's/^/    /' > "$WORK/cargo-failed.txt" || true

leaks=$(leaked_mounts)
if [ -n "$leaks" ]; then
    summary+=("leaked mounts after cargo test: $(echo $leaks)")
    total_fail=$((total_fail + 1))
    unmount_all
fi

# ---------------------------------------------------------------- pjdfstest
say "pjdfstest $PJDFSTEST_VERSION on a fresh strata mount"
PJD=$WORK/pjdfstest
mkdir -p "$PJD"/{lower,upper,work,secondary}
chmod 755 "$PJD" "$PJD"/*
# The suite runs in a directory that comes from the lower layer, so its very
# first change copies a directory up.
mkdir -m 0755 "$PJD/lower/suite"
# pjdfstest 0.2.2 builds paths of PATH_MAX bytes in 127-byte steps below two
# 10-byte temp dirs and panics (usize underflow) when nothing remains after
# the last step: keep the mount point's length off that case.
MNT=$PJD/mnt
while [ $(( (4095 - ${#MNT} - 6 - 22) % 127 )) -eq 0 ]; do MNT=${MNT}x; done # 6: "/suite"
mkdir -p "$MNT"

# Users and groups from the config, matched to this system's group names.
cfg=$PJD/pjdfstest.toml
sed -e "s/\[\"nobody\", \"nogroup\"\]/[\"nobody\", \"$(id -gn nobody)\"]/" \
    -e "s/\[\"tests\", \"tests\"\]/[\"tests\", \"$(id -gn tests)\"]/" tests/pjdfstest.toml > "$cfg"
# The EROFS cases remount the filesystem read-only; they run in a pjdfstest
# process of their own (see tests/pjdfstest.toml).
sed -e 's/^allow_remount = false/allow_remount = true/' "$cfg" > "$PJD/pjdfstest-erofs.toml"
grep -q '^allow_remount = true' "$PJD/pjdfstest-erofs.toml" || die "tests/pjdfstest.toml: no allow_remount line"
# pjdfstest remounts with `mount -o remount,ro MNT`. For a fuse.* mount,
# mount(8) hands that to the FUSE mount helper, which would start a second
# daemon instead; with -i it makes the remount call, mount(2), itself, as it
# does for kernel filesystems. This shim adds -i for the EROFS pass.
mkdir -p "$PJD/bin"
printf '#!/bin/sh\nexec %s -i "$@"\n' "$(command -v mount)" > "$PJD/bin/mount"
chmod 755 "$PJD/bin/mount"

"$BIN" -f -o "lowerdir=$PJD/lower,upperdir=$PJD/upper,workdir=$PJD/work,allow_other" "$MNT" > "$PJD/strata.log" 2>&1 &
STRATA_PID=$!
for _ in $(seq 100); do
    mountpoint -q "$MNT" && break
    kill -0 "$STRATA_PID" 2>/dev/null || break
    sleep 0.1
done

pjd_pass=0 pjd_fail=0 pjd_skip=0
run_pjdfstest() { # log config [patterns...]
    local log=$1 conf=$2
    shift 2
    set +e
    (cd "$MNT/suite" && timeout -k 30 1800 pjdfstest -c "$conf" -p "$MNT/suite" -s "$PJD/secondary" "$@") > "$log" 2>&1
    local rc=$?
    set -e
    local line
    line=$(grep -a '^Summary:' "$log" || true)
    if [ -z "$line" ]; then
        echo "pjdfstest did not finish (exit $rc); end of its output:"
        tail -20 "$log"
        pjd_fail=$((pjd_fail + 1))
        return
    fi
    echo "$line"
    read -r f s p e < <(echo "$line" | sed -E 's/Summary: ([0-9]+) failed, ([0-9]+) skipped, ([0-9]+) passed, ([0-9]+) expected.*/\1 \2 \3 \4/')
    pjd_fail=$((pjd_fail + f))
    pjd_pass=$((pjd_pass + p))
    if [ "$e" -ne 0 ]; then echo "note: $e expected failures (tests/pjdfstest.toml lists none)"; fi
    pjd_skip=$((pjd_skip + s))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        pjd_fail=$((pjd_fail + 1))
    fi
}

if mountpoint -q "$MNT"; then
    run_pjdfstest "$PJD/pass1.log" "$cfg"
    PATH="$PJD/bin:$PATH" run_pjdfstest "$PJD/pass2-erofs.log" "$PJD/pjdfstest-erofs.toml" erofs
    # The EROFS cases were skipped in the first pass and run in the second.
    pjd_skip=$((pjd_skip - $(grep -ac 'erofs.* skipped$' "$PJD/pass1.log" || true)))
    grep -ah -A3 'FAILED$' "$PJD/pass1.log" "$PJD/pass2-erofs.log" | grep -av '^ *[0-9]*: \|^ *at \|^Backtrace' \
        | sed 's/^/    /' > "$PJD/failed.txt" || true
    awk '/ skipped$/ { keep = ($1 !~ /erofs/); if (keep) print; next }
         /^\t/ { if (keep) print; next }
         { keep = 0 }' "$PJD/pass1.log" | sed 's/^/    /' > "$PJD/skipped.txt"

    fusermount3 -u "$MNT" || { sleep 1; fusermount3 -u "$MNT"; } || umount -l "$MNT" || true
    set +e
    wait "$STRATA_PID"
    strata_rc=$?
    set -e
    STRATA_PID=
    if [ "$strata_rc" -ne 0 ]; then
        pjd_fail=$((pjd_fail + 1))
        echo "strata exited $strata_rc after unmount; end of its log:"
        tail -20 "$PJD/strata.log"
    fi
else
    echo "strata did not mount; its log:"
    cat "$PJD/strata.log"
    pjd_fail=$((pjd_fail + 1))
fi
summary+=("pjdfstest:   $pjd_pass passed, $pjd_fail failed, $pjd_skip skipped")
total_skip=$((total_skip + pjd_skip))
total_pass=$((total_pass + pjd_pass))
total_fail=$((total_fail + pjd_fail))

# ---------------------------------------------------------------- podman
if [ -x tests/podman/run.sh ]; then
    if [ -n "${SKIP_PODMAN:-}" ]; then
        summary+=("podman:      skipped (SKIP_PODMAN set)")
    else
        say "podman end-to-end (tests/podman/run.sh)"
        set +e
        STRATA=$BIN tests/podman/run.sh 2>&1 | tee "$WORK/podman.log"
        podman_rc=${PIPESTATUS[0]}
        set -e
        read -r pp pf < <(grep -aE '^[0-9]+ passed, [0-9]+ failed' "$WORK/podman.log" | tail -1 | awk '{print $1, $3}')
        pp=${pp:-0} pf=${pf:-0}
        if [ "$podman_rc" -ne 0 ] && [ "$pf" -eq 0 ]; then pf=1; fi
        summary+=("podman:      $pp passed, $pf failed (exit $podman_rc)")
        total_pass=$((total_pass + pp))
        total_fail=$((total_fail + pf))
    fi
fi

# ---------------------------------------------------------------- other end-to-end and outside suites
# xfstests and unionmount-testsuite are not shipped: their source comes from
# XFSTESTS_SRC / UNIONMOUNT_SRC or a shared/third-party dir next to the repo.
# Exit status 77 from a harness: no source found (counted as skipped, with why).
# Each harness ends with "N passed, M failed[, K skipped]".
run_suite() { # label skipvar script timeout-seconds [env...]
    local label=$1 skipvar=$2 script=$3 limit=$4 log rc sp sf ss
    shift 4
    [ -x "$script" ] || return 0
    if [ -n "${!skipvar:-}" ]; then
        summary+=("$(printf '%-12s' "$label:") skipped ($skipvar set)")
        return
    fi
    log=$WORK/$label.log
    say "$label ($script)"
    set +e
    env STRATA="$BIN" "$@" timeout -k 30 "$limit" "$script" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" -eq 77 ]; then
        summary+=("$(printf '%-12s' "$label:") skipped: $(tail -1 "$log")")
        total_skip=$((total_skip + 1))
        return
    fi
    read -r sp sf ss < <(grep -aE '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -1 |
        awk '{print $1, $3, ($5 == "" ? 0 : $5)}')
    sp=${sp:-0} sf=${sf:-0} ss=${ss:-0}
    if [ "$rc" -ne 0 ] && [ "$sf" -eq 0 ]; then sf=1; fi
    summary+=("$(printf '%-12s' "$label:") $sp passed, $sf failed, $ss skipped (exit $rc)")
    total_pass=$((total_pass + sp))
    total_fail=$((total_fail + sf))
    total_skip=$((total_skip + ss))
}
# The default xfstests subset (tests/xfstests/README.md); XFSTESTS_TESTS="-g quick"
# runs the whole quick group.
run_suite docker SKIP_DOCKER tests/docker/run.sh 900
run_suite rootless SKIP_ROOTLESS tests/podman/rootless.sh 900
run_suite xfstests SKIP_XFSTESTS tests/xfstests/run.sh 2400
run_suite unionmount SKIP_UNIONMOUNT tests/unionmount/run.sh 900

leaks=$(leaked_mounts)
if [ -n "$leaks" ]; then
    summary+=("leaked mounts: $(echo $leaks)")
    total_fail=$((total_fail + 1))
fi

# ---------------------------------------------------------------- io_uring
# The integration tests a second time, mounted with -o io_uring=on. The kernel
# offers FUSE over io_uring only while enable_uring is on (off by default).
if [ -n "${SKIP_URING:-}" ]; then
    summary+=("io_uring:    skipped (SKIP_URING set)")
elif [ ! -w "$URING_PARAM" ]; then
    summary+=("io_uring:    skipped (no $URING_PARAM: kernel without CONFIG_FUSE_IO_URING)")
else
    say "cargo test (integration tests) under the io_uring transport"
    URING_PREV=$(cat "$URING_PARAM")
    if ! echo Y > "$URING_PARAM" 2>/dev/null; then
        URING_PREV=
        summary+=("io_uring:    skipped (could not turn $URING_PARAM on)")
    else
        echo "enable_uring turned on for this run (was $URING_PREV; restored afterwards)"
        set +e
        STRATA_TEST_TRANSPORT=uring TMPDIR=$WORK/tmp timeout -k 30 1200 \
            cargo test -p strata --tests --no-fail-fast 2>&1 | tee "$WORK/cargo-test-uring.log"
        uring_rc=${PIPESTATUS[0]}
        set -e
        restore_uring
        read -r u_pass u_fail u_ign < <(awk '/^test result:/ {p += $4; f += $6; i += $8} END {print p+0, f+0, i+0}' "$WORK/cargo-test-uring.log")
        if [ "$uring_rc" -ne 0 ] && [ "$u_fail" -eq 0 ]; then u_fail=1; fi
        summary+=("io_uring:    $u_pass passed, $u_fail failed, $u_ign ignored (exit $uring_rc)")
        total_skip=$((total_skip + u_ign))
        total_pass=$((total_pass + u_pass))
        total_fail=$((total_fail + u_fail))
        grep -E "^test .* FAILED$" "$WORK/cargo-test-uring.log" | sed 's/^/    (io_uring) /' >> "$WORK/cargo-failed.txt" || true
    fi
    leaks=$(leaked_mounts)
    if [ -n "$leaks" ]; then
        summary+=("leaked mounts after the io_uring run: $(echo $leaks)")
        total_fail=$((total_fail + 1))
        unmount_all
    fi
fi

# ---------------------------------------------------------------- summary
say "summary"
for line in "${summary[@]}"; do echo "$line"; done
if [ -s "$WORK/cargo-failed.txt" ]; then
    echo "failed Rust tests:"
    cat "$WORK/cargo-failed.txt"
fi
if [ -s "$WORK/cargo-skipped.txt" ]; then
    echo "skipped parts of Rust tests:"
    sed 's/^/    /' "$WORK/cargo-skipped.txt"
fi
if [ -s "$PJD/failed.txt" ]; then
    echo "failed pjdfstest cases:"
    cat "$PJD/failed.txt"
fi
if [ -s "$WORK/cargo-ignored.txt" ]; then
    echo "ignored Rust tests (each with its reason):"
    cat "$WORK/cargo-ignored.txt"
fi
if [ -s "$PJD/skipped.txt" ]; then
    echo "skipped pjdfstest cases (pjdfstest's own reasons):"
    cat "$PJD/skipped.txt"
fi
echo
if [ "$total_skip" -gt 0 ]; then
    echo "total: $total_pass passed, $total_fail failed, $total_skip skipped"
else
    echo "total: $total_pass passed, $total_fail failed"
fi
[ "$total_fail" -eq 0 ]
