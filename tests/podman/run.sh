#!/bin/bash
# End-to-end test: strata as the mount_program of containers-storage's overlay driver,
# driven through podman. Run as root on Debian 12:
#
#   tests/podman/run.sh                     # tests $STRATA (default <target>/debug/strata)
#   STRATA=/usr/bin/fuse-overlayfs tests/podman/run.sh   # prove the harness itself
#
# Environment:
#   STRATA          the mount program under test (default: <cargo target dir>/debug/strata,
#                   built with cargo if missing)
#   FUSE_OVERLAYFS  what to compare start times with (default /usr/bin/fuse-overlayfs)
#   RUNS            container starts timed per mount program (default 5; 0 skips timing)
#   KEEP=1          keep the temp dir (for a look after a failure; mounts are still undone)
#   STRATA_OPTS     more -o options for every strata mount (its mount_program shim adds
#                   them, as containers-storage's mountopt would), e.g. io_uring=on. With
#                   io_uring=on every strata mount must take FUSE over io_uring: checked
#                   from each daemon's start-up log and, for a running container, from
#                   its rings in /proc; a mount that fell back to /dev/fuse fails.
#
# Everything podman keeps lives in a private temp dir (its own --root, --runroot, tmpdir,
# storage.conf and containers.conf); no registry is needed: the image is a busybox rootfs
# imported with `podman import`. Prints PASS/FAIL per check, then "N passed, M failed";
# exits non-zero on any failure; always removes its containers, mounts and temp dir.

set -u
export LC_ALL=C

REPO=$(cd "$(dirname "$0")/../.." && pwd)
FUSE_OVERLAYFS=${FUSE_OVERLAYFS:-/usr/bin/fuse-overlayfs}
RUNS=${RUNS:-5}
KEEP=${KEEP:-0}
STRATA_OPTS=${STRATA_OPTS:-}
URING=0
case ",$STRATA_OPTS," in *,io_uring=on,*) URING=1 ;; esac

passed=0
failed=0
T=

. "$(dirname "$0")/../e2e-lib.sh"

[ "$(id -u)" = 0 ] || die "must run as root"

# ---------------------------------------------------------------------------------------
# What the test needs on the machine.

install_missing() {
    local pkgs=() p
    command -v podman >/dev/null || pkgs+=(podman)
    command -v runc >/dev/null || pkgs+=(runc)
    command -v fusermount3 >/dev/null || pkgs+=(fuse3)
    dpkg -s busybox-static >/dev/null 2>&1 || pkgs+=(busybox-static)
    [ -x "$FUSE_OVERLAYFS" ] || [ "$FUSE_OVERLAYFS" != /usr/bin/fuse-overlayfs ] || pkgs+=(fuse-overlayfs)
    [ ${#pkgs[@]} -eq 0 ] && return 0
    say "installing: ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq >/dev/null && apt-get install -y -qq "${pkgs[@]}" >/dev/null; }; then
        die "apt-get install ${pkgs[*]} failed"
    fi
    for p in podman runc fusermount3; do command -v $p >/dev/null || die "$p still missing"; done
}
install_missing
[ -e /dev/fuse ] || die "/dev/fuse missing"

find_strata

# ---------------------------------------------------------------------------------------
# Private podman set-up. A "store" is one graphroot/runroot/tmpdir with its own
# storage.conf naming one mount program; $STORE selects the one `pm` talks to.

T=$(mktemp -d /tmp/strata-pm.XXXXXX) || die "mktemp failed"
STORE=

# podman 4.3 drops storage.conf's driver options when --root/--runroot are given on the
# command line, so the mount program is passed with --storage-opt as well.
pm() {
    local prog opt=()
    prog=$(cat "$STORE/program")
    [ -n "$prog" ] && opt=(--storage-opt "overlay.mount_program=$prog")
    CONTAINERS_STORAGE_CONF=$STORE/storage.conf podman \
        --root "$STORE/root" --runroot "$STORE/runroot" --tmpdir "$STORE/tmp" \
        --storage-driver overlay "${opt[@]}" \
        --cgroup-manager cgroupfs --events-backend file --runtime runc "$@"
}

# new_store NAME PROGRAM: PROGRAM empty means the kernel's overlayfs (no mount_program).
# Keep NAME short: podman refuses a runroot path longer than 50 characters.
new_store() {
    local dir=$T/$1
    mkdir -p "$dir/tmp"
    printf '%s' "$2" >"$dir/program"
    {
        printf '[storage]\ndriver = "overlay"\ngraphroot = "%s"\nrunroot = "%s"\n' \
            "$dir/root" "$dir/runroot"
        if [ -n "$2" ]; then
            printf '[storage.options.overlay]\nmount_program = "%s"\n' "$2"
        fi
    } >"$dir/storage.conf"
    STORE=$dir
}

# set_program PROGRAM: switches the current store to another mount program.
set_program() {
    printf '%s' "$1" >"$STORE/program"
    sed -i "s|^mount_program = .*|mount_program = \"$1\"|" "$STORE/storage.conf"
}

# ulimits podman asks runc to set must not exceed this shell's hard limits.
limit() { # limit WANTED HARD
    if [ "$2" = unlimited ] || [ "$2" -ge "$1" ]; then echo "$1"; else echo "$2"; fi
}
nofile=$(limit 20000 "$(ulimit -Hn)")
nproc=$(limit 32768 "$(ulimit -Hu)")
cat >"$T/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
netns = "none"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF=$T/containers.conf
: >"$T/registries.conf"
export CONTAINERS_REGISTRIES_CONF=$T/registries.conf

cleanup() {
    local rc=$? d
    trap - EXIT INT TERM
    [ -n "$T" ] && [ -d "$T" ] || exit $rc
    for d in "$T"/*/; do
        [ -f "$d/program" ] || continue
        STORE=${d%/}
        pm rm -af -t 0 >/dev/null 2>&1
    done
    remove_t
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------
# The base image: static busybox plus a /data tree the checks work on.

make_base_tar() {
    local r=$T/rootfs
    mkdir -p "$r"/{bin,etc,proc,sys,dev,tmp,root,run,var} \
        "$r"/data/{dir-old/sub,dir-gone/b,recreate,recreate3,keep}
    cp /bin/busybox "$r/bin/busybox"
    chroot "$r" /bin/busybox --install -s /bin || return 1
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$r/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
    chmod 1777 "$r/tmp"
    echo "hello from the lower layer" >"$r/data/hello.txt"
    echo line1 >"$r/data/append.txt"
    echo doomed >"$r/data/delete-me.txt"
    echo x >"$r/data/dir-old/x.txt"
    echo y >"$r/data/dir-old/sub/y.txt"
    echo a >"$r/data/dir-gone/a"
    echo c >"$r/data/dir-gone/b/c"
    echo old >"$r/data/recreate/old.txt"
    echo old3 >"$r/data/recreate3/old3.txt"
    echo k >"$r/data/keep/k.txt"
    chmod 644 "$r/data/keep/k.txt"
    tar -C "$r" --numeric-owner -cf "$T/rootfs.tar" .
}

BASE=localhost/strata-test-base

# import_base: the base image into the current store.
import_base() {
    pm import -q "$T/rootfs.tar" "$BASE" >/dev/null
}

# A listing of /data that the checks compare against: one line per path, files with
# their content (newlines shown as |) and k.txt with its mode.
LISTING='cd /data && find . | sort | while read -r p; do
    if [ -f "$p" ]; then echo "$p: $(tr "\n" "|" <"$p")"; else echo "$p/"; fi
done; stat -c "mode %a" keep/k.txt 2>/dev/null'

# cx CONTAINER SCRIPT: runs a shell script in a running container.
cx() { pm exec "$1" sh -c "$2"; }

# ---------------------------------------------------------------------------------------

# The mount program containers-storage is given for strata: a shim that logs how it
# is called, runs strata with the -o $STRATA_OPTS added, and keeps what the daemon
# says before it lets go of its caller's stderr (which transport the mount got, with
# io_uring=on) in $T/strata-daemons.log, passing it on to containers-storage too.
make_shim() {
    local env= opts=
    [ "$URING" = 1 ] && env="RUST_LOG='$URING_LOG_FILTER' "
    [ -n "$STRATA_OPTS" ] && opts="-o '$STRATA_OPTS' "
    cat >"$T/trace-mount-program" <<EOF
#!/bin/sh
printf '%s\n' "\$*" >>"$T/mount-program.log"
log=\$(mktemp "$T/daemon.XXXXXX") || exit 1
$env"$STRATA" $opts"\$@" 2>"\$log"
rc=\$?
cat "\$log" >&2
cat "\$log" >>"$T/strata-daemons.log"
rm -f "\$log"
exit \$rc
EOF
    chmod +x "$T/trace-mount-program"
}


main_checks() {
    say "== mount program under test: $STRATA${STRATA_OPTS:+ (-o $STRATA_OPTS)}"
    "$STRATA" --version 2>&1 | head -n 1 | sed 's/^/   /'
    new_store m "$T/trace-mount-program"

    check "build and import the busybox base image" import_base || return
    pm image exists "$BASE" || return

    local out up low
    if ! out=$(pm run -d --name c1 "$BASE" sleep 1000000 2>&1); then
        fail "start a container" "$out"
        say "    (mount program calls so far:)"
        sed 's/^/    | /' "$T/mount-program.log" 2>/dev/null
        return
    fi
    pass "start a container"
    say "   containers-storage ran: $(head -n 1 "$T/mount-program.log" 2>/dev/null | sed "s|$T|\$T|g")"
    check "the container root is a FUSE mount" test -n "$(fuse_mounts_under_t)"
    up=$(pm inspect c1 --format '{{.GraphDriver.Data.UpperDir}}')
    low=$(pm inspect c1 --format '{{.GraphDriver.Data.LowerDir}}')

    expect_listing "read a lower file" "hello from the lower layer" cx c1 'cat /data/hello.txt'
    expect_listing "list a lower directory" "$(printf 'sub\nx.txt')" cx c1 'ls /data/dir-old'
    expect_listing "write a new file" "new" cx c1 'echo new >/data/new.txt && cat /data/new.txt'
    check "the new file is in the upper layer" test -f "$up/data/new.txt"
    expect_listing "append to a lower file" "$(printf 'line1\nline2')" \
        cx c1 'echo line2 >>/data/append.txt && cat /data/append.txt'
    expect_listing "the lower copy is untouched" "line1" cat "${low%%:*}/data/append.txt"
    check "delete a lower file" cx c1 'rm /data/delete-me.txt && ! test -e /data/delete-me.txt &&
        ! ls /data | grep -q delete-me'
    check "delete a lower directory" cx c1 'rm -r /data/dir-gone && ! test -e /data/dir-gone &&
        ! ls /data | grep -q dir-gone'
    expect_listing "rename a lower directory" "$(printf 'gone\n./sub\n./sub/y.txt\n./x.txt')" \
        cx c1 'mv /data/dir-old /data/dir-new && { test -e /data/dir-old || echo gone; } &&
            cd /data/dir-new && find . -mindepth 1 | sort'
    expect_listing "delete and recreate a lower directory" "fresh.txt" \
        cx c1 'rm -r /data/recreate && mkdir /data/recreate && echo fresh >/data/recreate/fresh.txt &&
            ls -A /data/recreate'
    expect_listing "chmod a lower file" "600" cx c1 'chmod 600 /data/keep/k.txt && stat -c %a /data/keep/k.txt'

    local layer1
    layer1=$(
        cat <<'EOF'
./
./append.txt: line1|line2|
./dir-new/
./dir-new/sub/
./dir-new/sub/y.txt: y|
./dir-new/x.txt: x|
./hello.txt: hello from the lower layer|
./keep/
./keep/k.txt: k|
./new.txt: new|
./recreate/
./recreate/fresh.txt: fresh|
./recreate3/
./recreate3/old3.txt: old3|
mode 600
EOF
    )
    expect_listing "the container sees all its changes" "$layer1" cx c1 "$LISTING"
    if [ "$URING" = 1 ]; then
        local d p served=
        d=$(pids_of "$(readlink -f "$STRATA")")
        for p in $d; do uring_served "$p" && served+="$p "; done
        if [ -n "$d" ] && [ -n "$served" ]; then
            pass "the container root's requests came over io_uring (/proc/PID/fdinfo of strata ${served% })"
        else
            fail "the container root's requests came over io_uring" \
                "strata daemons: ${d:-none}; none has an io_uring that completed a request"
        fi
    fi

    # podman diff: the lines that must be there, and paths that must not show up.
    local want got missing extra
    want=$(
        cat <<'EOF'
A /data/dir-new
A /data/dir-new/sub
A /data/dir-new/sub/y.txt
A /data/dir-new/x.txt
A /data/new.txt
A /data/recreate/fresh.txt
C /data/append.txt
C /data/keep/k.txt
D /data/delete-me.txt
D /data/dir-gone
D /data/dir-old
EOF
    )
    if got=$(pm diff c1 2>&1); then
        missing=$(comm -23 <(printf '%s\n' "$want" | sort) <(printf '%s\n' "$got" | sort))
        # The recreated directory: overlayfs reports the opaque dir as deleted and
        # re-added, a tree comparison reports its old entry deleted; either is right.
        grep -qxE 'D /data/recreate(/old\.txt)?' <<<"$got" ||
            missing+=$'\nD /data/recreate/old.txt (or D /data/recreate)'

        extra=$(printf '%s\n' "$got" | grep -E 'hello\.txt|recreate3|/data/dir-(gone|old)/|D /data/new\.txt|A /data/recreate$' || true)
        if [ -z "$missing$extra" ]; then
            pass "podman diff shows the changes"
        else
            fail "podman diff shows the changes" \
                "$(printf 'missing:\n%s\nunexpected:\n%s\nfull output:\n%s' "$missing" "$extra" "$got")"
        fi
    else
        fail "podman diff shows the changes" "$got"
    fi

    check "stop the container" pm stop -t 0 c1
    check "stopping unmounts the container root" test -z "$(fuse_mounts_under_t)"
    check "restart the container" pm start c1
    expect_listing "changes survive a restart" "$layer1" cx c1 "$LISTING"
    pm stop -t 0 c1 >/dev/null 2>&1

    # Layer 2: the committed container, then more changes, committed again.
    local L2=localhost/strata-test-l2 L3=localhost/strata-test-l3
    check "podman commit (layer 2)" pm commit -q c1 "$L2" || return
    expect_listing "a container of the committed image sees the changes" "$layer1" \
        pm run --rm "$L2" sh -c "$LISTING"
    if ! out=$(pm run -d --name c2 "$L2" sleep 1000000 2>&1); then
        fail "start a container on layer 2" "$out"
        return
    fi
    check "change files of layers 1 and 2" cx c2 '
        rm /data/new.txt &&
        echo line3 >>/data/append.txt &&
        rm -r /data/dir-new && mkdir /data/dir-new && echo again >/data/dir-new/again.txt &&
        rm -r /data/recreate3 && mkdir /data/recreate3 && echo fresh3 >/data/recreate3/fresh3.txt &&
        echo l3 >/data/l3.txt &&
        mkdir -p /data/deep/a/b && echo deep >/data/deep/a/b/f'
    pm stop -t 0 c2 >/dev/null 2>&1
    check "podman commit (layer 3)" pm commit -q c2 "$L3" || return
    expect_listing "the image has three layers" 3 pm image inspect "$L3" --format '{{len .RootFS.Layers}}'
    local layer3
    layer3=$(
        cat <<'EOF'
./
./append.txt: line1|line2|line3|
./deep/
./deep/a/
./deep/a/b/
./deep/a/b/f: deep|
./dir-new/
./dir-new/again.txt: again|
./hello.txt: hello from the lower layer|
./keep/
./keep/k.txt: k|
./l3.txt: l3|
./recreate/
./recreate/fresh.txt: fresh|
./recreate3/
./recreate3/fresh3.txt: fresh3|
mode 600
EOF
    )
    expect_listing "a container of the 3-layer image sees all changes" "$layer3" \
        pm run --rm "$L3" sh -c "$LISTING"
    expect_listing "write on top of three layers" "$(printf 'line1\nline2\nline3\nline4')" \
        pm run --rm "$L3" sh -c 'echo line4 >>/data/append.txt && rm -r /data/recreate3 &&
            ! test -e /data/recreate3 && cat /data/append.txt'

    # podman build: two RUN steps, with runc (oci) and with chroot isolation.
    mkdir -p "$T/ctx"
    cat >"$T/ctx/Containerfile" <<EOF
FROM $BASE
RUN echo built >/data/built.txt && rm /data/hello.txt && echo more >>/data/append.txt
RUN cat /data/built.txt /data/append.txt >/data/built2.txt && rm -r /data/dir-old && mkdir /data/built-dir
EOF
    local built
    built=$(
        cat <<'EOF'
append.txt: line1|more|
built.txt: built|
built2.txt: built|line1|more|
built-dir/
no hello
no dir-old
EOF
    )
    local SHOW='cd /data && for p in append.txt built.txt built2.txt; do echo "$p: $(tr "\n" "|" <$p)"; done;
        test -d built-dir && echo built-dir/; test -e hello.txt || echo no hello; test -e dir-old || echo no dir-old'
    local iso net
    for iso in oci chroot; do
        # chroot isolation makes no network namespace and refuses any --network but host
        net=(--network none)
        [ "$iso" = chroot ] && net=()
        if out=$(pm build "${net[@]}" --isolation "$iso" -t "localhost/strata-test-built-$iso" "$T/ctx" 2>&1); then
            pass "podman build with two RUN steps (isolation $iso)"
            expect_listing "a container of the built image ($iso) sees the RUN changes" "$built" \
                pm run --rm "localhost/strata-test-built-$iso" sh -c "$SHOW"
        else
            fail "podman build with two RUN steps (isolation $iso)" "$out"
        fi
    done

    # After podman rm nothing of the mount program may be left.
    check "podman rm -a" pm rm -af -t 0
    local left procs
    for _ in $(seq 50); do
        left=$(fuse_mounts_under_t)
        procs=$(for p in $(pids_under_t); do ps -o pid=,args= -p "$p"; done)
        [ -z "$left$procs" ] && break
        sleep 0.1
    done
    if [ -z "$left" ]; then pass "no FUSE mount left after podman rm"; else fail "no FUSE mount left after podman rm" "$left"; fi
    if [ -z "$procs" ]; then pass "no mount daemon left after podman rm"; else fail "no mount daemon left after podman rm" "$procs"; fi
}

# ---------------------------------------------------------------------------------------
# Switching the mount program of existing containers: a container written with
# fuse-overlayfs started with strata, and the other way round.

compat_checks() {
    [ -x "$FUSE_OVERLAYFS" ] && [ "$(readlink -f "$FUSE_OVERLAYFS")" != "$STRATA" ] || return 0
    say "== existing containers across mount programs (fuse-overlayfs <-> $(basename "$STRATA"))"
    local changes view out
    changes='echo new >/data/new.txt && echo line2 >>/data/append.txt && rm /data/delete-me.txt &&
        rm -r /data/dir-gone && rm -r /data/recreate && mkdir /data/recreate && echo fresh >/data/recreate/fresh.txt'
    view=$(
        cat <<'EOF'
./
./append.txt: line1|line2|
./dir-old/
./dir-old/sub/
./dir-old/sub/y.txt: y|
./dir-old/x.txt: x|
./hello.txt: hello from the lower layer|
./keep/
./keep/k.txt: k|
./new.txt: new|
./recreate/
./recreate/fresh.txt: fresh|
./recreate3/
./recreate3/old3.txt: old3|
mode 644
EOF
    )
    new_store c "$FUSE_OVERLAYFS"
    import_base || { fail "compat: import the base image"; return; }
    # written by fuse-overlayfs, then run with strata
    if out=$(pm run -d --name by-fo "$BASE" sleep 1000000 2>&1 && cx by-fo "$changes" 2>&1 &&
        pm stop -t 0 by-fo 2>&1); then
        set_program "$T/trace-mount-program"
        if out=$(pm start by-fo 2>&1); then
            pass "a container written with fuse-overlayfs starts with $(basename "$STRATA")"
            # fuse-overlayfs marks deletions in the upper with 0/0 character devices
            # and opaque directories with an xattr: read as such in strata's upper too.
            expect_listing "... and shows the same files (deletions as deletions)" "$view" cx by-fo "$LISTING"
            check "... where a directory removed under fuse-overlayfs can be made again" cx by-fo \
                'mkdir /data/dir-gone && rmdir /data/dir-gone && rm /data/new.txt && echo new >/data/new.txt &&
                 echo s >/data/by-strata.txt'
            pm stop -t 0 by-fo >/dev/null 2>&1
            # ... and changed by strata, back with fuse-overlayfs.
            set_program "$FUSE_OVERLAYFS"
            if out=$(pm start by-fo 2>&1); then
                expect_listing "... and, changed by $(basename "$STRATA"), the same files with fuse-overlayfs again" \
                    "$(printf '%s\n' "$view" | sed 's|^\./append\.txt: .*|&\n./by-strata.txt: s\||')" cx by-fo "$LISTING"
                pm stop -t 0 by-fo >/dev/null 2>&1
            else
                fail "a container changed by $(basename "$STRATA") starts with fuse-overlayfs again" "$out"
            fi
        else
            fail "a container written with fuse-overlayfs starts with $(basename "$STRATA")" "$out"
        fi
    else
        fail "compat: prepare a container with fuse-overlayfs" "$out"
    fi
    # written by strata, then run with fuse-overlayfs
    set_program "$T/trace-mount-program"
    if out=$(pm run -d --name by-strata "$BASE" sleep 1000000 2>&1 && cx by-strata "$changes" 2>&1 &&
        pm stop -t 0 by-strata 2>&1); then
        set_program "$FUSE_OVERLAYFS"
        if out=$(pm start by-strata 2>&1); then
            pass "a container written with $(basename "$STRATA") starts with fuse-overlayfs"
            expect_listing "... and shows the same files" "$view" cx by-strata "$LISTING"
        else
            fail "a container written with $(basename "$STRATA") starts with fuse-overlayfs" "$out"
        fi
    else
        fail "compat: prepare a container with $(basename "$STRATA")" "$out"
    fi
    pm rm -af -t 0 >/dev/null 2>&1
}

# ---------------------------------------------------------------------------------------
# Start times: `podman run --rm IMAGE true`, median of $RUNS, per mount program.


# The stores are set up first, then timed in turns (one start each per round), so that
# load from elsewhere on the machine spreads over all of them alike.
timing() {
    [ "$RUNS" -gt 0 ] 2>/dev/null || return 0
    say "== container start times: podman run --rm IMAGE true, $RUNS runs each"
    local stores=() labels=() i s t0 t1 out
    declare -A times=()
    add_timed() { # add_timed STORE LABEL PROGRAM
        new_store "$1" "$3"
        if import_base && out=$(pm run --rm "$BASE" true 2>&1); then # also a warm-up
            stores+=("$1")
            labels+=("$2")
        else
            fail "timing: container start with $2" "$out"
        fi
    }
    if [ -n "$STRATA_OPTS" ]; then
        add_timed t1 "$(basename "$STRATA") -o $STRATA_OPTS" "$T/trace-mount-program"
    else
        add_timed t1 "$(basename "$STRATA")" "$STRATA"
    fi
    if [ -x "$FUSE_OVERLAYFS" ] && [ "$(readlink -f "$FUSE_OVERLAYFS")" != "$STRATA" ]; then
        add_timed t2 fuse-overlayfs "$FUSE_OVERLAYFS"
    fi
    add_timed t3 "kernel overlay (none)" ""
    for _ in $(seq "$RUNS"); do
        for i in "${!stores[@]}"; do
            s=${stores[$i]}
            [ -n "${times[$s]-x}" ] || continue # failed before
            STORE=$T/$s
            t0=$(now_ms)
            if out=$(pm run --rm "$BASE" true 2>&1); then
                t1=$(now_ms)
                times[$s]+="$((t1 - t0)) "
            else
                fail "timing: container start with ${labels[$i]}" "$out"
                times[$s]=""
            fi
        done
    done
    : >"$T/timing"
    for i in "${!stores[@]}"; do
        s=${stores[$i]}
        [ -n "${times[$s]-}" ] || continue
        pass "timing: $RUNS container starts with ${labels[$i]}"
        printf '%s\n' ${times[$s]} | sort -n | awk -v l="${labels[$i]}" \
            '{ a[NR] = $1 } END { printf "%-24s %6d ms %5d ms %5d ms\n", l, a[int((NR + 1) / 2)], a[1], a[NR] }' \
            >>"$T/timing"
    done
    printf '%-24s %9s %8s %8s\n' "mount_program" "median" "min" "max"
    cat "$T/timing"
}

# With io_uring=on: every strata mount of the run said it took the rings, and none
# fell back.
uring_checks() {
    [ "$URING" = 1 ] || return 0
    local calls took problems
    calls=$(wc -l <"$T/mount-program.log" 2>/dev/null || echo 0)
    took=$(grep -c 'transport: io_uring (' "$T/strata-daemons.log" 2>/dev/null)
    problems=$(uring_log_problems "$T/strata-daemons.log" 2>&1)
    if [ "$calls" -gt 0 ] && [ "${took:-0}" = "$calls" ] && [ -z "$problems" ]; then
        pass "each of the $calls strata mounts took FUSE over io_uring (daemon logs)"
    else
        fail "each strata mount took FUSE over io_uring (daemon logs)" \
            "$(printf '%s mounts, %s said transport: io_uring\n%s' "$calls" "${took:-0}" "$problems")"
    fi
}

make_base_tar || die "could not build the busybox rootfs"
make_shim
main_checks
compat_checks
timing
uring_checks
say "$passed passed, $failed failed"
[ "$failed" = 0 ]
