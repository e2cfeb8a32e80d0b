#!/bin/bash
# End-to-end test: rootless podman with strata as the overlay driver's mount_program, and
# strata mounted by hand by an unprivileged user (through fusermount3). Run as root on
# Debian 12:
#
#   tests/podman/rootless.sh                # tests $STRATA (default <target>/debug/strata)
#   STRATA=/usr/bin/fuse-overlayfs tests/podman/rootless.sh   # prove the harness itself
#
# Environment:
#   STRATA          the mount program under test (default: <cargo target dir>/debug/strata)
#   FUSE_OVERLAYFS  what to compare start times with (default /usr/bin/fuse-overlayfs)
#   RUNS            container starts timed per mount program (default 5; 0 skips timing)
#   RL_USER         the test user (default strata-rootless)
#   KEEP=1          keep the temp dir
#
# What it changes on the machine, and undoes on exit (trap), whatever happens:
#   - creates the user $RL_USER (no home outside the temp dir) unless it exists, and deletes
#     it again if it created it; adds "$RL_USER:START:65536" to /etc/subuid and /etc/subgid
#     (START past every range there) unless a line for it is there, and removes the lines it
#     added (and the files, if it made them). A user left by a killed run is reused, so
#     running again is safe;
#   - gives /dev/fuse mode 0666 for the run and puts its old mode back;
#   - stops every process of $RL_USER it started (podman's pause process, conmon, mount
#     daemons), by pid, and removes podman's /dev/shm lock file of a user it deleted.
# podman runs as $RL_USER (runuser, XDG_RUNTIME_DIR and HOME in the temp dir), with runc,
# cgroupfs, no network, its own storage.conf naming the mount program; the image is a busybox
# rootfs imported with `podman import` (no registry). Prints PASS/FAIL per check, then
# "N passed, M failed".

set -u
export LC_ALL=C

REPO=$(cd "$(dirname "$0")/../.." && pwd)
FUSE_OVERLAYFS=${FUSE_OVERLAYFS:-/usr/bin/fuse-overlayfs}
RUNS=${RUNS:-5}
KEEP=${KEEP:-0}
RL_USER=${RL_USER:-strata-rootless}

passed=0
failed=0
T=

. "$(dirname "$0")/../e2e-lib.sh"

[ "$(id -u)" = 0 ] || die "must run as root (it creates the test user)"

install_missing() {
    local pkgs=() p
    command -v podman >/dev/null || pkgs+=(podman)
    command -v runc >/dev/null || pkgs+=(runc)
    command -v fusermount3 >/dev/null || pkgs+=(fuse3)
    command -v newuidmap >/dev/null || pkgs+=(uidmap)
    command -v runuser >/dev/null || pkgs+=(util-linux)
    dpkg -s busybox-static >/dev/null 2>&1 || pkgs+=(busybox-static)
    [ -x "$FUSE_OVERLAYFS" ] || [ "$FUSE_OVERLAYFS" != /usr/bin/fuse-overlayfs ] || pkgs+=(fuse-overlayfs)
    [ ${#pkgs[@]} -eq 0 ] && return 0
    say "installing: ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq >/dev/null && apt-get install -y -qq "${pkgs[@]}" >/dev/null; }; then
        die "apt-get install ${pkgs[*]} failed"
    fi
    for p in podman runc fusermount3 newuidmap runuser; do command -v $p >/dev/null || die "$p still missing"; done
}
install_missing
[ -e /dev/fuse ] || die "/dev/fuse missing"

find_strata
NAME=$(basename "$STRATA")

# ---------------------------------------------------------------------------------------
# Set-up, each step recorded so that cleanup undoes exactly what was done.

T=$(mktemp -d /tmp/strata-rl.XXXXXX) || die "mktemp failed"
chmod 755 "$T"
ADDED_USER=0
ADDED_SUBID=0
MADE_SUBID_FILES=()
FUSE_MODE=
RL_UID=

# Pids of $RL_USER's processes.
user_pids() {
    [ -n "$RL_UID" ] || return 0
    local f pid
    for f in /proc/[0-9]*/status; do
        pid=${f#/proc/}
        pid=${pid%/status}
        awk -v u="$RL_UID" '/^Uid:/ { exit !($2 == u) }' "$f" 2>/dev/null && echo "$pid"
    done
    return 0
}

cleanup() {
    local rc=$? pid m i
    trap - EXIT INT TERM
    if [ -n "$RL_UID" ] && [ -d "$T/home" ]; then
        as_user podman rm -af -t 0 >/dev/null 2>&1
        as_user podman unshare sh -c 'for m in $(awk -v t="'"$T"'/" "index(\$5, t) == 1 { print \$5 }" /proc/self/mountinfo | sort -r); do umount -l "$m"; done' >/dev/null 2>&1
        for m in $(awk -v t="$T/" 'index($5, t) == 1 { print $5 }' /proc/self/mountinfo | sort -r); do
            fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
        done
        for i in 1 2 3; do
            for pid in $(user_pids); do kill "$pid" 2>/dev/null; done
            [ -z "$(user_pids)" ] && break
            sleep 1
        done
        for pid in $(user_pids); do kill -9 "$pid" 2>/dev/null; done
    fi
    [ -n "$FUSE_MODE" ] && chmod "$FUSE_MODE" /dev/fuse
    if [ "$ADDED_SUBID" = 1 ]; then
        sed -i "/^$RL_USER:/d" /etc/subuid /etc/subgid
    fi
    for f in "${MADE_SUBID_FILES[@]}"; do
        [ -s "$f" ] || rm -f "$f"
    done
    if [ "$ADDED_USER" = 1 ]; then
        userdel "$RL_USER" 2>/dev/null || say "rootless.sh: could not delete user $RL_USER" >&2
        # podman's shared-memory lock file of the user goes with it.
        [ -n "$RL_UID" ] && rm -f "/dev/shm/libpod_rootless_lock_$RL_UID"
    fi
    if [ -n "$T" ] && [ -d "$T" ]; then
        if [ -n "$(awk -v t="$T/" 'index($5, t) == 1' /proc/self/mountinfo)" ]; then
            say "rootless.sh: mounts left under $T, not removing it" >&2
        elif [ "$KEEP" = 1 ]; then
            say "rootless.sh: kept $T"
        else
            rm -rf "$T"
        fi
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! getent passwd "$RL_USER" >/dev/null; then
    useradd -M -d "$T/home" -s /bin/sh -U "$RL_USER" || die "useradd $RL_USER failed"
    ADDED_USER=1
fi
RL_UID=$(id -u "$RL_USER")
RL_GID=$(id -g "$RL_USER")
for f in /etc/subuid /etc/subgid; do
    if [ ! -e "$f" ]; then
        : >"$f"
        MADE_SUBID_FILES+=("$f")
    fi
done
if ! grep -q "^$RL_USER:" /etc/subuid || ! grep -q "^$RL_USER:" /etc/subgid; then
    sed -i "/^$RL_USER:/d" /etc/subuid /etc/subgid
    start=$(cat /etc/subuid /etc/subgid | awk -F: 'BEGIN { m = 400000 } NF == 3 && $2 + $3 > m { m = $2 + $3 } END { print m }')
    echo "$RL_USER:$start:65536" >>/etc/subuid
    echo "$RL_USER:$start:65536" >>/etc/subgid
    ADDED_SUBID=1
fi
SUB_UID=$(awk -F: -v u="$RL_USER" '$1 == u { print $2; exit }' /etc/subuid)
SUB_GID=$(awk -F: -v u="$RL_USER" '$1 == u { print $2; exit }' /etc/subgid)
FUSE_MODE=$(stat -c %a /dev/fuse)
chmod 666 /dev/fuse

mkdir -p "$T/home" "$T/run" "$T/bin"
# The user runs its own copy: the build tree may not be readable by others.
cp "$STRATA" "$T/bin/$NAME"
PROG=$T/bin/$NAME
chmod 755 "$T/bin" "$PROG"
chmod 700 "$T/run"
chown -R "$RL_UID:$RL_GID" "$T/home" "$T/run"

# as_user CMD...: runs CMD as the test user, in its environment.
as_user() {
    (cd "$T/home" && runuser -u "$RL_USER" -- env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
        HOME="$T/home" USER="$RL_USER" LOGNAME="$RL_USER" XDG_RUNTIME_DIR="$T/run" LC_ALL=C \
        CONTAINERS_STORAGE_CONF="$T/home/storage.conf" CONTAINERS_CONF="$T/home/containers.conf" \
        CONTAINERS_REGISTRIES_CONF="$T/home/registries.conf" "$@")
}

# set_program PROGRAM: the mount program of the user's store.
set_program() {
    cat >"$T/home/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$T/home/storage"
runroot = "$T/run/storage"
[storage.options.overlay]
mount_program = "$1"
EOF
    chown "$RL_UID:$RL_GID" "$T/home/storage.conf"
}
set_program "$PROG"
cat >"$T/home/containers.conf" <<EOF
[containers]
netns = "none"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
: >"$T/home/registries.conf"
chown "$RL_UID:$RL_GID" "$T/home/containers.conf" "$T/home/registries.conf"

pm() { as_user podman --cgroup-manager cgroupfs --events-backend file --runtime runc "$@"; }

expect() {
    local name=$1 want=$2 got
    shift 2
    if got=$("$@" 2>&1) && [ "$got" = "$want" ]; then
        pass "$name"
    else
        fail "$name" "$(printf '(< expected, > got)\n'; diff <(printf '%s\n' "$want") <(printf '%s\n' "$got"))"
    fi
}
cx() { pm exec "$1" sh -c "$2"; }

# FUSE mounts under $T, seen from podman's user and mount namespace (the pause process).
fuse_mounts() {
    local p
    p=$(cat "$T/run/libpod/tmp/pause.pid" 2>/dev/null) || return 0
    awk -v t="$T/" 'index($5, t) == 1 && $0 ~ / - fuse/ { print $5 }' "/proc/$p/mountinfo" 2>/dev/null
    awk -v t="$T/" 'index($5, t) == 1 && $0 ~ / - fuse/ { print $5 }' /proc/self/mountinfo
}
prog_pids() { pids_of "$1" user_pids; }
nothing_left() {
    local left procs
    for _ in $(seq 50); do
        left=$(fuse_mounts)
        procs=$(for p in $(prog_pids "$PROG"); do ps -o pid=,args= -p "$p"; done)
        [ -z "$left$procs" ] && return 0
        sleep 0.1
    done
    printf 'mounts:\n%s\nmount daemons:\n%s\n' "$left" "$procs"
    return 1
}
# owner PATH: uid:gid of PATH, seen from the host.
owner() { stat -c %u:%g "$1"; }

# ---------------------------------------------------------------------------------------

make_base_tar() {
    local r=$T/rootfs
    mkdir -p "$r"/{bin,etc,proc,sys,dev,tmp,root,run,var} "$r"/data/{dir-old,keep}
    cp /bin/busybox "$r/bin/busybox"
    chroot "$r" /bin/busybox --install -s /bin || return 1
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$r/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
    chmod 1777 "$r/tmp"
    echo "hello from the lower layer" >"$r/data/hello.txt"
    echo line1 >"$r/data/append.txt"
    echo doomed >"$r/data/delete-me.txt"
    echo x >"$r/data/dir-old/x.txt"
    echo k >"$r/data/keep/k.txt"
    tar -C "$r" --numeric-owner -cf "$T/rootfs.tar" .
    chmod 644 "$T/rootfs.tar"
}
BASE=localhost/strata-rl-base

# Host id of container id $1 under podman's default rootless mapping (0 -> the user,
# N -> subordinate start + N - 1).
host_uid() { if [ "$1" = 0 ]; then echo "$RL_UID"; else echo $((SUB_UID + $1 - 1)); fi; }
host_gid() { if [ "$1" = 0 ]; then echo "$RL_GID"; else echo $((SUB_GID + $1 - 1)); fi; }

by_hand_checks() {
    say "== $NAME mounted by $RL_USER by hand (fusermount3)"
    local h=$T/home/hand out
    as_user mkdir -p "$h"/{lower,upper,work,mnt}
    as_user sh -c "echo low >'$h/lower/low.txt' && echo gone >'$h/lower/gone.txt'"
    if out=$(as_user "$PROG" -o "lowerdir=$h/lower,upperdir=$h/upper,workdir=$h/work" "$h/mnt" 2>&1) &&
        awk -v m="$h/mnt" '$5 == m' /proc/self/mountinfo | grep -q ' - fuse'; then
        pass "an unprivileged user mounts $NAME"
    else
        fail "an unprivileged user mounts $NAME" "$out"
        return
    fi
    check "... the union works for that user" as_user sh -c "grep -qx low '$h/mnt/low.txt' &&
        echo up >'$h/mnt/up.txt' && rm '$h/mnt/gone.txt' && test -f '$h/upper/up.txt' &&
        test -f '$h/lower/gone.txt' && ! test -e '$h/mnt/gone.txt'"
    expect "... files are the user's on disk" "$RL_UID:$RL_GID" owner "$h/upper/up.txt"
    check "... fusermount3 -u by the user unmounts it" as_user fusermount3 -u "$h/mnt"
    local left
    for _ in $(seq 50); do
        left=$(awk -v m="$h/mnt" '$5 == m' /proc/self/mountinfo; prog_pids "$PROG")
        [ -z "$left" ] && break
        sleep 0.1
    done
    if [ -z "$left" ]; then pass "... and the daemon exits"; else fail "... and the daemon exits" "$left"; fi
}

main_checks() {
    say "== rootless podman as $RL_USER (uid $RL_UID, subuids $SUB_UID+65536), mount program $NAME"
    check "import the busybox base image" pm import -q "$T/rootfs.tar" "$BASE" || return
    expect "run a container" "hello from the lower layer" pm run --rm "$BASE" cat /data/hello.txt
    local out up
    if ! out=$(pm run -d --name c1 "$BASE" sleep 1000000 2>&1); then
        fail "start a long-running container" "$out"
        return
    fi
    pass "start a long-running container"
    check "the container root is served by $NAME" test -n "$(prog_pids "$PROG")"
    up=$(pm inspect c1 --format '{{.GraphDriver.Data.UpperDir}}')
    check "chown to several container ids" cx c1 'echo a >/data/u0 && echo b >/data/u1 && echo c >/data/u1000 &&
        echo d >/data/u65534 && chown 1:1 /data/u1 && chown 1000:1000 /data/u1000 &&
        chown 65534:65534 /data/u65534 && chown 33:44 /data/hello.txt'
    expect "the container sees the owners" "$(printf '0:0\n1:1\n1000:1000\n65534:65534\n33:44')" \
        cx c1 'cd /data && stat -c %u:%g u0 u1 u1000 u65534 hello.txt'
    local want got f
    want=""
    got=""
    for f in 0:u0 1:u1 1000:u1000 65534:u65534; do
        want+="${f#*:} $(host_uid "${f%%:*}"):$(host_gid "${f%%:*}")"$'\n'
        got+="${f#*:} $(owner "$up/data/${f#*:}" 2>&1)"$'\n'
    done
    want+="hello.txt $(host_uid 33):$(host_gid 44)"$'\n'
    got+="hello.txt $(owner "$up/data/hello.txt" 2>&1)"$'\n'
    expect "owners on disk in the upper are the mapped host ids" "${want%$'\n'}" printf '%s' "${got%$'\n'}"
    expect "exec --user 1000 runs as 1000" "1000
1000" pm exec --user 1000:1000 c1 sh -c 'id -u; id -g'
    check "exec --user 1000 writes a file" pm exec --user 1000:1000 c1 sh -c 'echo mine >/tmp/by1000'
    expect "... owned on disk by the mapped id" "$(host_uid 1000):$(host_gid 1000)" owner "$up/tmp/by1000"
    check "exec --user 1000 cannot write root's file" pm exec --user 1000 c1 sh -c '! echo x 2>/dev/null >>/data/append.txt'
    check "delete, append to and chmod lower files" cx c1 'rm /data/delete-me.txt && rm -r /data/dir-old &&
        echo line2 >>/data/append.txt && chmod 600 /data/keep/k.txt'
    local missing
    if got=$(pm diff c1 2>&1); then
        missing=$(comm -23 <(printf 'A /data/u1000\nC /data/append.txt\nC /data/keep/k.txt\nD /data/delete-me.txt\nD /data/dir-old\n' | sort) \
            <(printf '%s\n' "$got" | sort))
        if [ -z "$missing" ] && ! grep -q 'dir-old/' <<<"$got"; then
            pass "podman diff shows the changes"
        else
            fail "podman diff shows the changes" "$(printf 'missing:\n%s\n%s lines, those under /data and /tmp:\n%s' \
                "$missing" "$(printf '%s\n' "$got" | wc -l)" "$(grep -E ' /(data|tmp)' <<<"$got")")"
        fi
    else
        fail "podman diff shows the changes" "$got"
    fi
    check "stop the container" pm stop -t 0 c1
    check "podman commit" pm commit -q c1 localhost/strata-rl-c1
    expect "the committed image keeps owners and changes" \
        "$(printf '1:1\n1000:1000\n65534:65534\n33:44\nline1\nline2\n600\ngone')" \
        pm run --rm localhost/strata-rl-c1 sh -c 'cd /data && stat -c %u:%g u1 u1000 u65534 hello.txt &&
            cat append.txt && stat -c %a keep/k.txt && { test -e delete-me.txt || echo gone; }'

    mkdir -p "$T/ctx"
    cat >"$T/ctx/Containerfile" <<EOF
FROM localhost/strata-rl-c1
RUN echo built >/data/built.txt && chown 7:8 /data/built.txt && rm /data/u1
RUN cat /data/built.txt >>/data/append.txt && chown 9:9 /data/append.txt
EOF
    chmod -R a+rX "$T/ctx"
    if out=$(pm build --network none -q -t localhost/strata-rl-built "$T/ctx" 2>&1); then
        pass "podman build with two RUN steps"
        expect "a container of the built image sees the RUN changes" \
            "$(printf '7:8\n9:9\nline1\nline2\nbuilt\nno u1')" \
            pm run --rm localhost/strata-rl-built sh -c 'cd /data && stat -c %u:%g built.txt append.txt &&
                cat append.txt && { test -e u1 || echo no u1; }'
    else
        fail "podman build with two RUN steps" "$out"
    fi

    # --userns=keep-id: the user's own id inside; podman passes uid/gid maps to the program
    # (`uidmapping=:0:1:UID:UID:0:1:...`), which stores ids as the image sees them: a layer
    # written under keep-id has the same owners on disk as one written under the default
    # mapping (container id N is namespace id N), so that a commit is portable.
    if out=$(pm run -d --name k1 --userns=keep-id "$BASE" sleep 1000000 2>&1); then
        pass "run --userns=keep-id"
        expect "... runs as the user's id, image files owned by root" "$RL_UID 0:0" \
            cx k1 'echo "$(id -u) $(stat -c %u:%g /data/hello.txt)"'
        up=$(pm inspect k1 --format '{{.GraphDriver.Data.UpperDir}}')
        check "... writes a file" cx k1 'echo k >/tmp/keep-id.txt'
        expect "... stored on disk as container id $RL_UID" "$(host_uid "$RL_UID"):$(host_gid "$RL_GID")" \
            owner "$up/tmp/keep-id.txt"
        check "... root inside chowns" pm exec --user 0 k1 sh -c 'echo r >/tmp/root.txt && chown 42:43 /tmp/root.txt &&
            test "$(stat -c %u:%g /tmp/root.txt)" = 42:43'
        expect "... stored on disk as container ids 42:43" "$(host_uid 42):$(host_gid 43)" owner "$up/tmp/root.txt"
        pm stop -t 0 k1 >/dev/null 2>&1
        check "... commit" pm commit -q k1 localhost/strata-rl-k1
        expect "... the committed image keeps the owners" "$(printf '42:43\n%s:%s' "$RL_UID" "$RL_GID")" \
            pm run --rm --userns=keep-id localhost/strata-rl-k1 stat -c %u:%g /tmp/root.txt /tmp/keep-id.txt
    else
        fail "run --userns=keep-id" "$out"
    fi

    # --uidmap 0:1:5000: container 0 runs as namespace id 1; files are stored as the image
    # sees them (container id N as namespace id N), as with keep-id.
    if out=$(pm run -d --name m1 --uidmap 0:1:5000 --gidmap 0:1:5000 "$BASE" sleep 1000000 2>&1); then
        pass "run --uidmap 0:1:5000"
        up=$(pm inspect m1 --format '{{.GraphDriver.Data.UpperDir}}')
        check "... chown inside" cx m1 'echo a >/tmp/m0 && echo b >/tmp/m7 && chown 7:7 /tmp/m7 &&
            test "$(stat -c %u:%g /tmp/m0 /tmp/m7 | tr "\n" " ")" = "0:0 7:7 "'
        expect "... stored on disk as container ids 0 and 7" \
            "$(host_uid 0):$(host_gid 0) $(host_uid 7):$(host_gid 7)" \
            sh -c "echo \$(stat -c %u:%g '$up/tmp/m0' '$up/tmp/m7')"
        expect "... reads the image" "hello from the lower layer" cx m1 'cat /data/hello.txt'
    else
        fail "run --uidmap 0:1:5000" "$out"
    fi

    check "podman rm -a" pm rm -af -t 0
    check "rmi" pm rmi -f localhost/strata-rl-built localhost/strata-rl-c1 localhost/strata-rl-k1
    check "no FUSE mount or mount daemon left after rm" nothing_left

    # A store with force_mask: podman passes xattr_permissions=2; owners and modes are kept
    # in override_stat xattrs (user.containers.* by strata, user.fuseoverlayfs.* by
    # fuse-overlayfs 1.10) and the files on disk stay the user's.
    local fm=(--root "$T/home/fm" --runroot "$T/run/fm" --storage-opt "overlay.mount_program=$PROG"
        --storage-opt overlay.force_mask=700)
    if pm "${fm[@]}" import -q "$T/rootfs.tar" "$BASE" >/dev/null 2>&1; then
        # /tmp is 1777 in the image; podman 4.3's containers-storage records it as 777
        # (no sticky bit), and fuse-overlayfs shows 777 too. A process as --user 1000
        # does not start in such a store (sh not found), with either mount program.
        expect "a force_mask store shows the image's owners and modes" "0:0:777 0:0:644" \
            pm "${fm[@]}" run --rm "$BASE" sh -c 'echo $(stat -c %u:%g:%a /tmp /data/hello.txt)'
        if out=$(pm "${fm[@]}" run -d --name f1 "$BASE" sleep 1000000 2>&1); then
            pass "... run -d"
            check "... chmod then chown inside" pm "${fm[@]}" exec f1 sh -c 'echo a >/tmp/c && chmod 640 /tmp/c &&
                chown 42:43 /tmp/c && test "$(stat -c %u:%g:%a /tmp/c)" = 42:43:640'
            local up
            up=$(pm "${fm[@]}" inspect f1 --format '{{.GraphDriver.Data.UpperDir}}')
            expect "... on disk the file stays the user's" "$RL_UID:$RL_GID" owner "$up/tmp/c"
            if [ "$NAME" = strata ]; then
                expect "... the owner and mode are in user.containers.override_stat" "42:43:640" \
                    getfattr --absolute-names --only-values -n user.containers.override_stat "$up/tmp/c"
                # fuse-overlayfs 1.10 drops the owner on a chmod after a chown.
                check "... chown then chmod inside keeps both" pm "${fm[@]}" exec f1 sh -c 'echo b >/tmp/d &&
                    chown 7:8 /tmp/d && chmod 604 /tmp/d && test "$(stat -c %u:%g:%a /tmp/d)" = 7:8:604'
            fi
            pm "${fm[@]}" stop -t 0 f1 >/dev/null 2>&1
            check "... commit" pm "${fm[@]}" commit -q f1 localhost/strata-rl-fm1
            expect "... the committed image keeps the owner and mode" "42:43:640" \
                pm "${fm[@]}" run --rm localhost/strata-rl-fm1 stat -c %u:%g:%a /tmp/c
        else
            fail "... run -d" "$out"
        fi
        pm "${fm[@]}" rm -af -t 0 >/dev/null 2>&1
        pm "${fm[@]}" rmi -af >/dev/null 2>&1
        check "... with nothing left mounted" nothing_left
    else
        fail "a force_mask store: import the base image"
    fi
}


timing() {
    [ "$RUNS" -gt 0 ] 2>/dev/null || return 0
    say "== rootless container start times: podman run --rm IMAGE true, $RUNS runs each"
    local progs=("$PROG") labels=("$NAME") i t0 t1 out
    declare -A times=()
    if [ -x "$FUSE_OVERLAYFS" ] && [ "$(readlink -f "$FUSE_OVERLAYFS")" != "$STRATA" ]; then
        progs+=("$FUSE_OVERLAYFS")
        labels+=(fuse-overlayfs)
    fi
    # One store, the mount program switched between runs (in turns, as load comes and goes).
    for i in "${!progs[@]}"; do
        set_program "${progs[$i]}"
        pm run --rm "$BASE" true >/dev/null 2>&1 # warm-up
    done
    for _ in $(seq "$RUNS"); do
        for i in "${!progs[@]}"; do
            [ -n "${times[$i]-x}" ] || continue
            set_program "${progs[$i]}"
            t0=$(now_ms)
            if out=$(pm run --rm "$BASE" true 2>&1); then
                t1=$(now_ms)
                times[$i]+="$((t1 - t0)) "
            else
                fail "timing: container start with ${labels[$i]}" "$out"
                times[$i]=""
            fi
        done
    done
    set_program "$PROG"
    printf '%-24s %9s %8s %8s\n' "mount_program" "median" "min" "max"
    for i in "${!progs[@]}"; do
        [ -n "${times[$i]-}" ] || continue
        pass "timing: $RUNS rootless container starts with ${labels[$i]}"
        printf '%s\n' ${times[$i]} | sort -n | awk -v l="${labels[$i]}" \
            '{ a[NR] = $1 } END { printf "%-24s %6d ms %5d ms %5d ms\n", l, a[int((NR + 1) / 2)], a[1], a[NR] }'
    done
}

make_base_tar || die "could not build the busybox rootfs"
by_hand_checks
main_checks
timing
pm rmi -af >/dev/null 2>&1
check "no FUSE mount or mount daemon left at the end" nothing_left
say "$passed passed, $failed failed"
[ "$failed" = 0 ]
