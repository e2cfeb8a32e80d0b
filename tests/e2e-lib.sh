# Helpers shared by the end-to-end scripts (tests/docker/run.sh, tests/podman/run.sh,
# tests/podman/rootless.sh): PASS/FAIL counting, what lives under the run's temp
# dir $T, and the checks that strata mounts took FUSE over io_uring (also used by
# scripts/test.sh). Sourced, not run; the scripts set `passed`, `failed` and `T`.

say() { printf '%s\n' "$*"; }

pass() { passed=$((passed + 1)); say "PASS: $1"; }

# fail NAME [DETAIL]: DETAIL (a program's output, a diff, ...) is shown indented.
fail() {
    failed=$((failed + 1))
    say "FAIL: $1"
    if [ -n "${2:-}" ]; then printf '%s\n' "$2" | head -n 40 | sed 's/^/    | /'; fi
}

die() { say "${0##*/}: $*" >&2; exit 2; }

# Mounts under $T, deepest first.
mounts_under_t() {
    awk -v t="$T/" 'index($5, t) == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

fuse_mounts_under_t() {
    awk -v t="$T/" 'index($5, t) == 1 && $0 ~ / - fuse/ { print $5 }' /proc/self/mountinfo
}

# Pids of processes whose command line names a path under $T (mount daemons, ...).
pids_under_t() {
    local f pid
    for f in /proc/[0-9]*/cmdline; do
        pid=${f#/proc/}
        pid=${pid%/cmdline}
        [ "$pid" = $$ ] || [ "$pid" = "$BASHPID" ] && continue
        { tr '\0' ' ' <"$f"; } 2>/dev/null | grep -qF -- "$T/" && echo "$pid"
    done
    return 0
}

# Pids whose program is $1 (a canonical path), among those function $2 lists
# (default pids_under_t).
pids_of() {
    local p
    for p in $("${2:-pids_under_t}"); do
        [ "$(readlink -f "/proc/$p/exe" 2>/dev/null)" = "$1" ] && echo "$p"
    done
    return 0
}

# expect_listing NAME EXPECTED CMD...: runs CMD (which prints a listing), compares.
expect_listing() {
    local name=$1 want=$2 got
    shift 2
    if got=$("$@" 2>&1) && [ "$got" = "$want" ]; then
        pass "$name"
    else
        fail "$name" "$(printf '(< expected, > got)\n'; diff <(printf '%s\n' "$want") <(printf '%s\n' "$got"))"
    fi
}

# check NAME CMD...: PASS if CMD succeeds, else FAIL with its output.
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then pass "$name"; else fail "$name" "$out"; fi
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# The end of a run: unmounts what is left under $T, ends the processes that name it,
# and removes it (kept with KEEP=1, or while something is still mounted there).
remove_t() {
    local m pid
    for m in $(mounts_under_t); do
        fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done
    for pid in $(pids_under_t); do
        kill "$pid" 2>/dev/null
    done
    if [ -n "$(mounts_under_t)" ]; then
        say "${0##*/}: mounts left under $T, not removing it:" >&2
        mounts_under_t >&2
    elif [ "${KEEP:-0}" = 1 ]; then
        say "${0##*/}: kept $T"
    else
        rm -rf "$T"
    fi
}

# Sets STRATA to the program under test: as given, or the workspace's debug build
# (built if missing); an absolute path.
find_strata() {
    local target
    if [ -z "${STRATA:-}" ]; then
        target=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
            sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
        STRATA=${target:-${CARGO_TARGET_DIR:-$REPO/target}}/debug/strata
        if [ ! -x "$STRATA" ]; then
            say "building strata (cargo build --bin strata)"
            (cd "$REPO" && nice cargo build --bin strata) || die "cargo build failed"
        fi
    fi
    [ -x "$STRATA" ] || die "program $STRATA not found or not executable (set STRATA)"
    STRATA=$(readlink -f "$STRATA")
}

# ---------------------------------------------------------------------------------------
# FUSE over io_uring. With -o io_uring=on strata falls back to /dev/fuse, with a
# warning, when the kernel does not offer the rings or refuses their registration;
# these turn that into a failure.

# The daemon's log filter for such runs: its warnings, plus the line saying which
# transport each mount got and the one each queue logs at its first request.
URING_LOG_FILTER='warn,fuser=off,strata::uring=info'

# uring_log_problems LOG: prints what in a strata log (written with URING_LOG_FILTER)
# shows a mount that did not take the rings; nothing when none did.
uring_log_problems() {
    grep -q 'transport: io_uring (' "$1" || echo "no 'transport: io_uring' line in $1"
    grep -aE 'transport: /dev/fuse|serving through /dev/fuse' "$1"
    return 0
}

# uring_served PID: true when strata daemon PID has an io_uring whose completion
# queue has moved, i.e. requests came over the rings (/proc/PID/fdinfo).
uring_served() {
    local fd head
    for fd in /proc/"$1"/fd/*; do
        [ "$(readlink "$fd" 2>/dev/null)" = "anon_inode:[io_uring]" ] || continue
        head=$(awk '$1 == "CqHead:" { print $2 }' "/proc/$1/fdinfo/${fd##*/}" 2>/dev/null)
        [ "${head:-0}" -gt 0 ] && return 0
    done
    return 1
}
