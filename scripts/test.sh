#!/usr/bin/env bash
# The whole test suite, in one command, as root on Debian/Ubuntu:
#   1. installs what it needs when missing (fuse3, attr, a C compiler,
#      pjdfstest 0.2.2, the users pjdfstest switches to);
#   2. cargo build --workspace, cargo test --workspace (the integration tests
#      mount strata for real; SKIP_CARGO=1 leaves cargo test out, in both passes);
#   3. pjdfstest (POSIX conformance) inside a fresh strata mount;
#   4. the podman end-to-end test when tests/podman/run.sh exists
#      (SKIP_PODMAN=1 leaves it out, in both passes);
#   5. Docker with strata as its fuse-overlayfs, and containerd's mount.fuse3
#      argv (tests/docker/run.sh; SKIP_DOCKER=1 leaves it out);
#   6. rootless podman as a test user, and strata mounted by that user by
#      hand (tests/podman/rootless.sh; SKIP_ROOTLESS=1 leaves it out);
#   7. xfstests' generic tests, a subset of the quick group (tests/xfstests/run.sh;
#      SKIP_XFSTESTS=1 leaves it out, XFSTESTS_TESTS="-g quick" runs the whole group);
#   8. unionmount-testsuite --ov and --ov=10 (tests/unionmount/run.sh;
#      SKIP_UNIONMOUNT=1 leaves it out);
#   9. the io_uring pass, when the kernel has FUSE over io_uring: steps 2 to 4
#      again (the integration tests, the differential test among them, with
#      STRATA_TEST_TRANSPORT=uring; pjdfstest; rootful podman), every strata mount
#      with -o io_uring=on, and each checked to have taken the rings (a mount that
#      fell back to /dev/fuse fails its part). enable_uring is turned on for the
#      pass and restored afterwards, on every way out; the summary says why when
#      the pass cannot run (SKIP_URING=1 leaves it out);
# then prints a summary and exits non-zero if anything failed. No mount or
# daemon is left behind, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$HOME/.cargo/bin:$PATH"
export NO_COLOR=1
PJDFSTEST_VERSION=0.2.2

# The io_uring checks shared with the end-to-end scripts (uring_log_problems,
# URING_LOG_FILTER); say and die are this script's own, defined after it.
. tests/e2e-lib.sh
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
# strata mounted by root keeps its control sockets in /run/strata (the end-to-end
# tests' daemons too; the Rust tests keep theirs in their temp dirs): a directory
# this run made goes again, if nothing is left in it.
RUN_STRATA_EXISTED=
[ -e /run/strata ] && RUN_STRATA_EXISTED=1
finish() {
    local rc=$?
    unmount_all
    restore_uring
    [ -n "$RUN_STRATA_EXISTED" ] || rmdir /run/strata 2>/dev/null || true
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

# line LABEL TEXT: a summary line.
line() { summary+=("$(printf '%-23s' "$1:") $2"); }

# Mounts left below $WORK after a part: named in the summary, counted as a
# failure, and undone.
check_leaks() { # label
    local leaks
    leaks=$(leaked_mounts)
    if [ -n "$leaks" ]; then
        line "$1" "leaked mounts: $(echo $leaks)"
        total_fail=$((total_fail + 1))
        unmount_all
    fi
}

# cargo_pass LABEL TAG CMD...: one cargo test run, its output in
# $WORK/cargo-test-TAG.log. The tests' temporary dirs (and so their mounts) live
# under $WORK, so that a leaked mount is found and removed. Tests that skip a part
# (a missing tool) append "test: reason" lines to $STRATA_SKIP_LOG.
cargo_pass() {
    local label=$1 tag=$2 log rc p f i prefix=
    shift 2
    [ "$tag" = classic ] || prefix="($tag) "
    log=$WORK/cargo-test-$tag.log
    local skiplog=$WORK/cargo-skipped-$tag.txt
    : > "$skiplog"
    say "$label"
    set +e
    STRATA_SKIP_LOG=$skiplog TMPDIR=$WORK/tmp "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    read -r p f i < <(awk '/^test result:/ {p += $4; f += $6; i += $8} END {print p+0, f+0, i+0}' "$log")
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        f=1 # did not build, crashed or timed out: count it
    fi
    line "$label" "$p passed, $f failed, $i ignored (exit $rc)"
    # Ignored tests count as skipped; each says why (listed at the end, once: the
    # same tests are ignored in every pass).
    total_skip=$((total_skip + i))
    total_pass=$((total_pass + p))
    total_fail=$((total_fail + f))
    [ -s "$WORK/cargo-ignored.txt" ] ||
        grep -aE "^test .* \.\.\. ignored" "$log" | sed 's/^/    /' > "$WORK/cargo-ignored.txt" || true
    grep -aE "^test .* FAILED$" "$log" | sed "s/^/    $prefix/" >> "$WORK/cargo-failed.txt" || true
    if [ -s "$skiplog" ]; then
        line "$label" "$(wc -l < "$skiplog") parts skipped (listed below)"
        sed "s/^/$prefix/" "$skiplog" >> "$WORK/cargo-skipped.txt"
    fi
    check_leaks "$label"
}

mkdir -p "$WORK/tmp"
: > "$WORK/cargo-failed.txt"
: > "$WORK/cargo-skipped.txt"
if [ -n "${SKIP_CARGO:-}" ]; then
    line "cargo test" "skipped (SKIP_CARGO set)"
else
    STRATA_POWERCUT_REPORT=$WORK/powercut.txt cargo_pass "cargo test" classic \
        timeout -k 30 1200 cargo test --workspace --no-fail-fast
    # The power-cut rounds (tests/powercut.rs; STRATA_POWERCUT_ROUNDS for more).
    if [ -s "$WORK/powercut.txt" ]; then
        while IFS= read -r l; do summary+=("  power cut: $l"); done < "$WORK/powercut.txt"
        if grep -q '^skipped' "$WORK/powercut.txt"; then total_skip=$((total_skip + 1)); fi
    fi
fi

# ---------------------------------------------------------------- pjdfstest
# pjdfstest users and groups from the config, matched to this system's group names.
PJD_CFG=$WORK/pjdfstest.toml
sed -e "s/\[\"nobody\", \"nogroup\"\]/[\"nobody\", \"$(id -gn nobody)\"]/" \
    -e "s/\[\"tests\", \"tests\"\]/[\"tests\", \"$(id -gn tests)\"]/" tests/pjdfstest.toml > "$PJD_CFG"
# The EROFS cases remount the filesystem read-only; they run in a pjdfstest
# process of their own (see tests/pjdfstest.toml).
sed -e 's/^allow_remount = false/allow_remount = true/' "$PJD_CFG" > "$WORK/pjdfstest-erofs.toml"
grep -q '^allow_remount = true' "$WORK/pjdfstest-erofs.toml" || die "tests/pjdfstest.toml: no allow_remount line"
# pjdfstest remounts with `mount -o remount,ro MNT`. For a fuse.* mount,
# mount(8) hands that to the FUSE mount helper, which would start a second
# daemon instead; with -i it makes the remount call, mount(2), itself, as it
# does for kernel filesystems. This shim adds -i for the EROFS pass.
mkdir -p "$WORK/pjd-bin"
printf '#!/bin/sh\nexec %s -i "$@"\n' "$(command -v mount)" > "$WORK/pjd-bin/mount"
chmod 755 "$WORK/pjd-bin/mount"

# The pjdfstest passes' labels and dirs, for the lists at the end.
pjd_labels=()
pjd_dirs=()

# run_pjdfstest LOG CONFIG [PATTERNS...]: one pjdfstest process in $mnt/suite;
# adds to the caller's pjd_pass, pjd_fail and pjd_skip.
run_pjdfstest() {
    local log=$1 conf=$2 rc line f s p e
    shift 2
    set +e
    (cd "$mnt/suite" && timeout -k 30 1800 pjdfstest -c "$conf" -p "$mnt/suite" -s "$pjd/secondary" "$@") > "$log" 2>&1
    rc=$?
    set -e
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

# pjdfstest_pass LABEL DIR [OPTIONS]: pjdfstest, then its EROFS cases, in a fresh
# strata mount under $WORK/DIR, mounted with -o OPTIONS added. Keep DIR short: the
# socket cases bind(2) paths below the mount point, and a socket's path has room
# for 107 bytes. With
# io_uring=on among them the mount must have taken FUSE over io_uring, as its log
# tells (a mount that fell back to /dev/fuse counts as a failure).
pjdfstest_pass() {
    local label=$1 dir=$2 opts=${3:-} pjd mnt strata_rc uring=0 problems note=
    local pjd_pass=0 pjd_fail=0 pjd_skip=0
    case ",$opts," in *,io_uring=on,*) uring=1 ;; esac
    pjd=$WORK/$dir
    pjd_labels+=("$label")
    pjd_dirs+=("$pjd")
    say "$label: pjdfstest $PJDFSTEST_VERSION on a fresh strata mount${opts:+ (-o $opts)}"
    mkdir -p "$pjd"/{lower,upper,work,secondary}
    chmod 755 "$pjd" "$pjd"/*
    # The suite runs in a directory that comes from the lower layer, so its very
    # first change copies a directory up.
    mkdir -m 0755 "$pjd/lower/suite"
    # pjdfstest 0.2.2 builds paths of PATH_MAX bytes in 127-byte steps below two
    # 10-byte temp dirs and panics (usize underflow) when nothing remains after
    # the last step: keep the mount point's length off that case.
    mnt=$pjd/mnt
    while [ $(( (4095 - ${#mnt} - 6 - 22) % 127 )) -eq 0 ]; do mnt=${mnt}x; done # 6: "/suite"
    mkdir -p "$mnt"

    # With io_uring=on the daemon also logs which transport the mount got and
    # when each queue serves its first request.
    local envs=()
    [ "$uring" = 0 ] || envs=("RUST_LOG=$URING_LOG_FILTER")
    env "${envs[@]}" "$BIN" -f -o "lowerdir=$pjd/lower,upperdir=$pjd/upper,workdir=$pjd/work,allow_other${opts:+,$opts}" \
        "$mnt" > "$pjd/strata.log" 2>&1 &
    STRATA_PID=$!
    for _ in $(seq 100); do
        mountpoint -q "$mnt" && break
        kill -0 "$STRATA_PID" 2>/dev/null || break
        sleep 0.1
    done

    if mountpoint -q "$mnt"; then
        run_pjdfstest "$pjd/pass1.log" "$PJD_CFG"
        PATH="$WORK/pjd-bin:$PATH" run_pjdfstest "$pjd/pass2-erofs.log" "$WORK/pjdfstest-erofs.toml" erofs
        # The EROFS cases were skipped in the first pass and run in the second.
        pjd_skip=$((pjd_skip - $(grep -ac 'erofs.* skipped$' "$pjd/pass1.log" || true)))
        grep -ah -A3 'FAILED$' "$pjd/pass1.log" "$pjd/pass2-erofs.log" | grep -av '^ *[0-9]*: \|^ *at \|^Backtrace' \
            | sed 's/^/    /' > "$pjd/failed.txt" || true
        awk '/ skipped$/ { keep = ($1 !~ /erofs/); if (keep) print; next }
             /^\t/ { if (keep) print; next }
             { keep = 0 }' "$pjd/pass1.log" | sed 's/^/    /' > "$pjd/skipped.txt"

        fusermount3 -u "$mnt" || { sleep 1; fusermount3 -u "$mnt"; } || umount -l "$mnt" || true
        set +e
        wait "$STRATA_PID"
        strata_rc=$?
        set -e
        STRATA_PID=
        if [ "$strata_rc" -ne 0 ]; then
            pjd_fail=$((pjd_fail + 1))
            echo "strata exited $strata_rc after unmount; end of its log:"
            tail -20 "$pjd/strata.log"
        fi
        if [ "$uring" = 1 ]; then
            problems=$(uring_log_problems "$pjd/strata.log"
                grep -qaE 'io_uring queue [0-9]+: serving requests' "$pjd/strata.log" ||
                    echo "no io_uring queue served a request")
            if [ -n "$problems" ]; then
                echo "the mount did not serve over io_uring:"
                printf '%s\n' "$problems" | sed 's/^/    /'
                pjd_fail=$((pjd_fail + 1))
                note="; NOT over io_uring: $(printf '%s\n' "$problems" | head -1)"
            else
                note="; served over io_uring (its log)"
            fi
        fi
    else
        echo "strata did not mount; its log:"
        cat "$pjd/strata.log"
        pjd_fail=$((pjd_fail + 1))
    fi
    line "$label" "$pjd_pass passed, $pjd_fail failed, $pjd_skip skipped$note"
    total_skip=$((total_skip + pjd_skip))
    total_pass=$((total_pass + pjd_pass))
    total_fail=$((total_fail + pjd_fail))
    check_leaks "$label"
}

pjdfstest_pass pjdfstest pjd

# ---------------------------------------------------------------- end-to-end and outside suites
# xfstests and unionmount-testsuite are not shipped: their source comes from
# XFSTESTS_SRC / UNIONMOUNT_SRC or a shared/third-party dir next to the repo.
# Exit status 77 from a harness: no source found (counted as skipped, with why).
# Each harness ends with "N passed, M failed[, K skipped]".
run_suite() { # label skipvar script timeout-seconds [env...]
    local label=$1 skipvar=$2 script=$3 limit=$4 log rc sp sf ss
    shift 4
    [ -x "$script" ] || return 0
    if [ -n "${!skipvar:-}" ]; then
        line "$label" "skipped ($skipvar set)"
        return
    fi
    log=$WORK/${label//[^a-z0-9_]/_}.log
    say "$label ($script${*:+ with $*})"
    set +e
    env STRATA="$BIN" "$@" timeout -k 30 "$limit" "$script" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" -eq 77 ]; then
        line "$label" "skipped: $(tail -1 "$log")"
        total_skip=$((total_skip + 1))
        return
    fi
    read -r sp sf ss < <(grep -aE '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -1 |
        awk '{print $1, $3, ($5 == "" ? 0 : $5)}')
    sp=${sp:-0} sf=${sf:-0} ss=${ss:-0}
    if [ "$rc" -ne 0 ] && [ "$sf" -eq 0 ]; then sf=1; fi
    line "$label" "$sp passed, $sf failed, $ss skipped (exit $rc)"
    total_pass=$((total_pass + sp))
    total_fail=$((total_fail + sf))
    total_skip=$((total_skip + ss))
    check_leaks "$label"
}
run_suite podman SKIP_PODMAN tests/podman/run.sh 1800
# The default xfstests subset (tests/xfstests/README.md); XFSTESTS_TESTS="-g quick"
# runs the whole quick group.
run_suite docker SKIP_DOCKER tests/docker/run.sh 900
run_suite rootless SKIP_ROOTLESS tests/podman/rootless.sh 900
run_suite xfstests SKIP_XFSTESTS tests/xfstests/run.sh 2400
run_suite unionmount SKIP_UNIONMOUNT tests/unionmount/run.sh 900

# ---------------------------------------------------------------- io_uring
# The integration tests, pjdfstest and rootful podman a second time, every strata
# mount with -o io_uring=on. The kernel offers FUSE over io_uring only while
# enable_uring is on (off by default): on for this pass, then restored (here, or
# by the exit trap on any other way out).
uring_skip=
if [ -n "${SKIP_URING:-}" ]; then
    line "io_uring pass" "skipped (SKIP_URING set)"
elif [ ! -w "$URING_PARAM" ]; then
    uring_skip="no $URING_PARAM: kernel without CONFIG_FUSE_IO_URING"
else
    URING_PREV=$(cat "$URING_PARAM")
    if ! echo Y > "$URING_PARAM" 2>/dev/null; then
        URING_PREV=
        uring_skip="could not turn $URING_PARAM on"
    fi
fi
if [ -n "$uring_skip" ]; then
    line "io_uring pass" "skipped ($uring_skip)"
    total_skip=$((total_skip + 1))
elif [ -n "$URING_PREV" ]; then
    say "io_uring pass: enable_uring turned on (was $URING_PREV; restored afterwards)"
    if [ -n "${SKIP_CARGO:-}" ]; then
        line "cargo test (io_uring)" "skipped (SKIP_CARGO set)"
    else
        cargo_pass "cargo test (io_uring)" io_uring \
            env STRATA_TEST_TRANSPORT=uring timeout -k 30 1200 cargo test -p strata --tests --no-fail-fast
    fi
    pjdfstest_pass "pjdfstest (io_uring)" pjd-uring io_uring=on
    run_suite "podman (io_uring)" SKIP_PODMAN tests/podman/run.sh 1800 STRATA_OPTS=io_uring=on
    # The switch is global: something else on the machine may have turned it off
    # meanwhile, which makes mounts fall back (and fail their checks above).
    if [ "$(cat "$URING_PARAM")" != Y ]; then
        line "io_uring pass" "note: $URING_PARAM was turned off during the pass by something else"
    fi
    restore_uring
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
for i in "${!pjd_dirs[@]}"; do
    if [ -s "${pjd_dirs[$i]}/failed.txt" ]; then
        echo "failed pjdfstest cases (${pjd_labels[$i]}):"
        cat "${pjd_dirs[$i]}/failed.txt"
    fi
done
if [ -s "$WORK/cargo-ignored.txt" ]; then
    echo "ignored Rust tests (each with its reason):"
    cat "$WORK/cargo-ignored.txt"
fi
# Skipped pjdfstest cases: the first pass's list, and another pass's only where it
# differs.
for i in "${!pjd_dirs[@]}"; do
    [ -s "${pjd_dirs[$i]}/skipped.txt" ] || continue
    if [ "$i" -gt 0 ] && cmp -s "${pjd_dirs[0]}/skipped.txt" "${pjd_dirs[$i]}/skipped.txt"; then continue; fi
    echo "skipped pjdfstest cases, ${pjd_labels[$i]} (pjdfstest's own reasons):"
    cat "${pjd_dirs[$i]}/skipped.txt"
done
echo
if [ "$total_skip" -gt 0 ]; then
    echo "total: $total_pass passed, $total_fail failed, $total_skip skipped"
else
    echo "total: $total_pass passed, $total_fail failed"
fi
[ "$total_fail" -eq 0 ]
