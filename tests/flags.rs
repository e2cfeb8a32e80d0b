//! VFS mount flags given with `-o` (`nosuid`, `nodev`, `noexec`, `noatime`, `ro`, ...)
//! reach the FUSE mount and take effect; `ro` with an upper shows the upper read-only;
//! overlayfs-style whiteouts and opaque markers in the upper are honoured, also in a
//! store written by fuse-overlayfs and handed back to it.

mod common;

use common::*;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The options of the mount at `mnt` in /proc/mounts.
fn proc_opts(mnt: &Path) -> Vec<String> {
    let want = mnt.to_str().unwrap();
    let table = fs::read_to_string("/proc/mounts").unwrap();
    let line = table
        .lines()
        .rev()
        .find(|l| l.split(' ').nth(1) == Some(want))
        .unwrap_or_else(|| panic!("{want} not in /proc/mounts"));
    line.split(' ').nth(3).unwrap().split(',').map(String::from).collect()
}

fn has(opts: &[String], o: &str) -> bool {
    opts.iter().any(|x| x == o)
}

/// Runs `cmd args` as user and group 65534 (nobody), returning its stdout (trimmed),
/// or the error of the exec.
fn as_nobody(cmd: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("setpriv: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn every_vfs_flag_is_in_the_mount_table() {
    let fx = Fixture::new(1);
    fx.lower(0).file("f", "x");
    let m = fx.mount_opts("nosuid,nodev,noexec,noatime,nodiratime,sync,dirsync");
    let o = proc_opts(m.path());
    for f in [
        "rw",
        "nosuid",
        "nodev",
        "noexec",
        "noatime",
        "nodiratime",
        "sync",
        "dirsync",
    ] {
        assert!(has(&o, f), "{f} missing: {o:?}");
    }
    m.finish();

    let m = fx.mount_opts("lazytime,nosymfollow,ro");
    let o = proc_opts(m.path());
    for f in ["ro", "lazytime", "nosymfollow", "relatime"] {
        assert!(has(&o, f), "{f} missing: {o:?}");
    }
    m.finish();

    // strictatime shows as the absence of relatime; later options win.
    let m = fx.mount_opts("nosuid,noatime,strictatime,suid,ro,rw");
    let o = proc_opts(m.path());
    assert!(
        has(&o, "rw") && !has(&o, "nosuid") && !has(&o, "noatime") && !has(&o, "relatime"),
        "{o:?}"
    );
    m.finish();

    // Without flags, a mount by root is what mount(2) makes by default.
    let m = fx.mount();
    let o = proc_opts(m.path());
    assert!(has(&o, "rw") && has(&o, "relatime"), "{o:?}");
    for f in ["nosuid", "nodev", "noexec", "noatime"] {
        assert!(!has(&o, f), "{f} present: {o:?}");
    }
    m.finish();
}

#[test]
fn nosuid_keeps_a_setuid_binary_from_gaining_privilege() {
    let fx = Fixture::new(1);
    fs::copy("/usr/bin/id", fx.lower(0).p("id")).unwrap();
    fx.lower(0).owner("id", 0, 0).mode("id", 0o4755);
    let m = fx.mount();
    assert_eq!(
        as_nobody(&m.p("id"), &["-u"]).unwrap(),
        "0",
        "setuid root honoured without nosuid"
    );
    m.finish();
    let m = fx.mount_opts("nosuid");
    assert_eq!(
        as_nobody(&m.p("id"), &["-u"]).unwrap(),
        "65534",
        "setuid honoured under nosuid"
    );
    m.finish();
}

#[test]
fn nodev_keeps_device_nodes_from_being_opened() {
    let fx = Fixture::new(1);
    mknod(&fx.lower(0).p("null"), libc::S_IFCHR | 0o666, 1, 3).unwrap();
    let m = fx.mount();
    fs::File::open(m.p("null")).expect("a device node opens without nodev");
    m.finish();
    let m = fx.mount_opts("nodev");
    assert_errno(
        fs::File::open(m.p("null")),
        libc::EACCES,
        "open of a device under nodev",
    );
    assert_errno(
        fs::OpenOptions::new().write(true).open(m.p("null")),
        libc::EACCES,
        "open for write under nodev",
    );
    m.finish();
}

#[test]
fn noexec_keeps_programs_from_running() {
    let fx = Fixture::new(1);
    fx.lower(0).file("run", "#!/bin/sh\necho ran\n").mode("run", 0o755);
    fs::copy("/usr/bin/true", fx.lower(0).p("true")).unwrap();
    fx.lower(0).mode("true", 0o755);
    let m = fx.mount();
    let out = Command::new(m.p("run")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
    assert!(Command::new(m.p("true")).status().unwrap().success());
    m.finish();
    let m = fx.mount_opts("noexec");
    for p in ["run", "true"] {
        let e = Command::new(m.p(p)).status().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "exec of {p} under noexec: {e}");
    }
    // Also as another user, and through a fresh upper copy.
    assert!(as_nobody(&m.p("true"), &[]).is_err());
    m.finish();
}

/// atime of `p` (seconds).
fn atime(p: &Path) -> i64 {
    fs::symlink_metadata(p).unwrap().atime()
}

#[test]
fn noatime_keeps_access_times_and_lowers_never_change() {
    let fx = Fixture::new(1);
    // Old atimes, after the mtime: relatime would update them on a read.
    fx.lower(0)
        .file("lf", "lower data")
        .times("lf", 1_000_000_000, 900_000_000);
    fx.upper()
        .file("uf", "upper data")
        .times("uf", 1_000_000_000, 900_000_000);
    fx.lower(0).dir("ld").times("ld", 1_000_000_000, 900_000_000);

    for opts in ["noatime", "noatime,passthrough=1", "noatime,passthrough=0"] {
        let m = fx.mount_opts(opts);
        for f in ["lf", "uf"] {
            let _ = read(&m.p(f));
            let _ = read(&m.p(f));
            assert_eq!(atime(&m.p(f)), 1_000_000_000, "{f}: atime changed under {opts}");
        }
        let _ = names(&m.p("ld"));
        assert_eq!(atime(&m.p("ld")), 1_000_000_000, "ld: atime changed under {opts}");
        m.finish();
        assert_eq!(
            atime(&fx.upper().p("uf")),
            1_000_000_000,
            "upper uf changed under {opts}"
        );
    }

    // Without noatime a read through the mount updates the upper file's atime (the
    // upper's filesystem is relatime), and never a lower file's.
    let m = fx.mount();
    let _ = read(&m.p("uf"));
    let _ = read(&m.p("lf"));
    let _ = names(&m.p("ld"));
    m.finish();
    assert!(
        atime(&fx.upper().p("uf")) > 1_000_000_000,
        "uf: read without noatime kept its atime"
    );
    assert_eq!(
        atime(&fx.lower(0).p("lf")),
        1_000_000_000,
        "a lower file's atime changed"
    );
    assert_eq!(
        atime(&fx.lower(0).p("ld")),
        1_000_000_000,
        "a lower dir's atime changed"
    );
}

/// Writes to the upper through a read-write mount, then mounts `ro`.
fn ro_fixture() -> Fixture {
    let fx = Fixture::new(1);
    fx.lower(0)
        .file("keep", "k")
        .file("del", "d")
        .file("chg", "lower")
        .file("d/x", "x");
    let m = fx.mount();
    fs::write(m.p("made"), "made").unwrap();
    fs::create_dir(m.p("newdir")).unwrap();
    fs::remove_file(m.p("del")).unwrap();
    fs::write(m.p("chg"), "upper").unwrap();
    m.finish();
    fx
}

#[test]
fn ro_with_an_upper_shows_it_and_refuses_writes() {
    let fx = ro_fixture();
    let upper_before = fx.upper().snapshot();
    let work_before = Snapshot::of(&fx.work);
    let m = fx.mount_opts("ro");
    assert!(has(&proc_opts(m.path()), "ro"));
    assert_eq!(names(m.path()), strs(&["chg", "d", "keep", "made", "newdir"]));
    assert_eq!(read_string(&m.p("made")), "made");
    assert_eq!(read_string(&m.p("chg")), "upper");
    // What existed answers EEXIST where that is the answer; writes answer EROFS.
    assert_errno(fs::create_dir(m.p("newdir")), libc::EEXIST, "mkdir of an upper dir");
    assert_errno(fs::create_dir(m.p("other")), libc::EROFS, "mkdir");
    assert_errno(fs::write(m.p("new"), "n"), libc::EROFS, "create");
    assert_errno(
        fs::OpenOptions::new().append(true).open(m.p("made")),
        libc::EROFS,
        "open for write",
    );
    assert_errno(
        fs::OpenOptions::new().write(true).open(m.p("keep")),
        libc::EROFS,
        "open a lower file for write",
    );
    assert_errno(fs::remove_file(m.p("made")), libc::EROFS, "unlink");
    assert_errno(fs::remove_file(m.p("keep")), libc::EROFS, "unlink of a lower file");
    assert_errno(fs::rename(m.p("made"), m.p("m2")), libc::EROFS, "rename");
    assert_errno(chmod(&m.p("keep"), 0o600), libc::EROFS, "chmod");
    assert_errno(set_xattr(&m.p("made"), "user.k", b"v"), libc::EROFS, "setxattr");
    assert_errno(fs::hard_link(m.p("made"), m.p("l")), libc::EROFS, "link");
    m.finish();
    upper_before.assert_unchanged(fx.upper().path());
    work_before.assert_unchanged(&fx.work);
}

#[test]
fn ro_mount_beside_a_live_read_write_one_changes_nothing_of_it() {
    // `mount -o remount,ro` through mount.fuse3 starts a second daemon with `ro` on
    // the same layers while the first still serves.
    let fx = ro_fixture();
    let rw = fx.mount();
    let mnt2 = fx.dir("mnt2");
    let o = format!(
        "lowerdir={},upperdir={},workdir={},ro",
        fx.lowerdir(),
        fx.upper().path().display(),
        fx.work.display()
    );
    let args: Vec<OsString> = ["-f", "-o", &o].iter().map(OsString::from).collect::<Vec<_>>();
    let mut a = args;
    a.push(mnt2.clone().into_os_string());
    let ro = Mount::start(&a, &mnt2, &[]).unwrap();
    assert_eq!(names(&mnt2), strs(&["chg", "d", "keep", "made", "newdir"]));
    assert_errno(fs::write(mnt2.join("x"), "x"), libc::EROFS, "create in the ro mount");
    // The read-write mount still copies up (its work dir was left alone). (Like the
    // kernel's overlayfs, strata does not follow changes made to its layers by another
    // mount while mounted; a name never looked up before is found.)
    fs::write(m_p(&rw, "d/x"), "changed").unwrap();
    assert_eq!(read_string(&m_p(&rw, "d/x")), "changed");
    fs::write(m_p(&rw, "late"), "late").unwrap();
    assert_eq!(read_string(&mnt2.join("late")), "late");
    ro.finish();
    rw.finish();
}

#[test]
fn remount_changes_the_flags_of_the_live_mount() {
    // What mount(8) runs through mount.fuse3 for `mount -o remount,ro MNT`: the flags
    // kept and changed, `remount`, and the kernel's FUSE options from the mount table.
    let fx = ro_fixture();
    let m = fx.mount();
    fs::write(m.p("before"), "b").unwrap();
    let remount = |o: &str| {
        let out = Command::new(STRATA).args(["-o", o]).arg(m.path()).output().unwrap();
        assert!(
            out.status.success(),
            "strata -o {o}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    remount("ro,nosuid,remount,user_id=0,group_id=0,default_permissions,allow_other");
    let o = proc_opts(m.path());
    assert!(has(&o, "ro") && has(&o, "nosuid"), "{o:?}");
    assert_eq!(names(m.path()), strs(&["before", "chg", "d", "keep", "made", "newdir"]));
    assert_eq!(read_string(&m.p("before")), "b");
    assert_errno(fs::write(m.p("x"), "x"), libc::EROFS, "create after remount,ro");
    assert_errno(fs::create_dir(m.p("newdir")), libc::EEXIST, "mkdir of an existing dir");
    assert_errno(fs::remove_file(m.p("made")), libc::EROFS, "unlink after remount,ro");
    remount("rw,remount");
    let o = proc_opts(m.path());
    assert!(has(&o, "rw") && !has(&o, "nosuid"), "{o:?}");
    fs::write(m.p("x"), "x").unwrap();
    m.finish();
    // Not a FUSE mount: refused.
    let out = Command::new(STRATA)
        .args(["-o", "remount,ro"])
        .arg(&fx.work)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a FUSE"));
}

fn m_p(m: &Mount, rel: &str) -> PathBuf {
    m.p(rel)
}

#[test]
fn overlay_whiteouts_and_opaque_dirs_in_the_upper_are_honoured() {
    let fx = Fixture::new(1);
    fx.lower(0)
        .file("keep", "k")
        .file("del", "d")
        .file("gone/f", "f")
        .file("mvto", "lower mvto")
        .file("lnk", "lower lnk")
        .file("dir/x", "x")
        .file("dir/y", "y")
        .file("opq/old", "o")
        .file("uopq/old", "o");
    fx.upper()
        .ovl_whiteout("del")
        .ovl_whiteout("gone")
        .ovl_whiteout("mvto")
        .ovl_whiteout("lnk")
        .ovl_whiteout("newonly")
        .ovl_whiteout("dir/x")
        .ovl_opaque("opq")
        .file("opq/new", "n")
        .user_opaque("uopq")
        .file("src", "src data");
    let m = fx.mount();
    assert_eq!(names(m.path()), strs(&["dir", "keep", "opq", "src", "uopq"]));
    assert_eq!(names(&m.p("dir")), strs(&["y"]));
    assert_eq!(names(&m.p("opq")), strs(&["new"]));
    assert!(names(&m.p("uopq")).is_empty());
    assert_errno(
        fs::symlink_metadata(m.p("del")),
        libc::ENOENT,
        "stat of a whited-out name",
    );
    // A removed dir can be made again, empty; a deleted file made again.
    fs::create_dir(m.p("gone")).unwrap();
    assert!(names(&m.p("gone")).is_empty());
    fs::write(m.p("del"), "new del").unwrap();
    fs::create_dir(m.p("newonly")).unwrap();
    fs::write(m.p("dir/x"), "new x").unwrap();
    fs::rename(m.p("src"), m.p("mvto")).unwrap();
    fs::hard_link(m.p("mvto"), m.p("lnk")).unwrap();
    // A character device 0/0 made through the mount is a device (marked in the upper),
    // while one put there by another mounter is a whiteout.
    mknod(&m.p("c00"), libc::S_IFCHR | 0o600, 0, 0).unwrap();
    fx.upper().ovl_whiteout("c00b");
    assert!(!names(m.path()).contains(&"c00b".to_string()));
    let view = Snapshot::of(m.path()).view();
    m.finish();
    assert!(get_xattr(&fx.upper().p("c00"), "trusted.strata.device").is_ok());
    for n in ["gone", "del", "newonly", "mvto", "lnk", "dir/x"] {
        let md = fs::symlink_metadata(fx.upper().p(n)).unwrap();
        assert!(
            !(md.file_type().is_char_device() && md.rdev() == 0),
            "{n}: still a char 0/0 whiteout"
        );
    }
    let m = fx.mount();
    assert_eq!(
        Snapshot::of(m.path()).view().0,
        view.0,
        "the view changed across a remount"
    );
    assert_eq!(
        names(m.path()),
        strs(&["c00", "del", "dir", "gone", "keep", "lnk", "mvto", "newonly", "opq", "uopq"])
    );
    assert_eq!(read_string(&m.p("del")), "new del");
    assert_eq!(read_string(&m.p("lnk")), "src data");
    assert_eq!(names(&m.p("dir")), strs(&["x", "y"]));
    assert_eq!(read_string(&m.p("dir/x")), "new x");
    assert!(names(&m.p("gone")).is_empty());
    m.finish();
}

#[test]
fn whiteout_aufs_leaves_overlay_markers_in_the_upper_alone() {
    let fx = Fixture::new(1);
    fx.lower(0).file("del", "d");
    fx.upper().ovl_whiteout("del");
    let m = fx.mount_opts("whiteout=aufs");
    let md = fs::symlink_metadata(m.p("del")).unwrap();
    assert!(md.file_type().is_char_device() && md.rdev() == 0);
    m.finish();
}

// ---- a store written by fuse-overlayfs, used by strata, handed back ----

const FUSE_OVERLAYFS: &str = "/usr/bin/fuse-overlayfs";

fn fuse_overlayfs(fx: &Fixture) {
    assert!(
        Path::new(FUSE_OVERLAYFS).exists(),
        "{FUSE_OVERLAYFS} is missing: apt-get install -y fuse-overlayfs (scripts/test.sh does)"
    );
    let o = format!(
        "lowerdir={},upperdir={},workdir={}",
        fx.lowerdir(),
        fx.upper().path().display(),
        fx.work.display()
    );
    let st = Command::new(FUSE_OVERLAYFS)
        .args(["-o", &o])
        .arg(&fx.mnt)
        .status()
        .unwrap();
    assert!(st.success(), "fuse-overlayfs did not mount");
    assert!(is_fuse_mount(&fx.mnt));
}

fn fuse_overlayfs_unmount(fx: &Fixture) {
    assert!(force_unmount(&fx.mnt), "fuse-overlayfs mount busy");
}

/// Files with content, directories, and the type of everything else, below `root`.
fn content_tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for p in tree(root) {
        let md = fs::symlink_metadata(root.join(&p)).unwrap();
        let kind = if md.is_dir() {
            "dir".to_string()
        } else if md.is_file() {
            format!("file {:?}", fs::read_to_string(root.join(&p)).unwrap())
        } else {
            format!("other {:o}", md.mode() & libc::S_IFMT)
        };
        out.push(format!("{p} {kind} {:o}", md.permissions().mode() & 0o7777));
    }
    out
}

#[test]
fn a_fuse_overlayfs_store_switches_to_strata_and_back() {
    let fx = Fixture::new(2);
    fx.lower(1)
        .file("keep", "k")
        .file("del", "d")
        .file("dir/x", "x")
        .file("dir/y", "y");
    fx.lower(0)
        .file("opq/old", "o")
        .file("opq/sub/deep", "d")
        .file("mod", "lower mod");

    fuse_overlayfs(&fx);
    let m = &fx.mnt;
    fs::remove_file(m.join("del")).unwrap();
    fs::remove_file(m.join("dir/x")).unwrap();
    fs::create_dir(m.join("newdir")).unwrap();
    fs::write(m.join("newdir/f"), "f").unwrap();
    fs::remove_dir_all(m.join("newdir")).unwrap();
    fs::remove_dir_all(m.join("opq")).unwrap();
    fs::create_dir(m.join("opq")).unwrap();
    fs::write(m.join("opq/new"), "n").unwrap();
    fs::write(m.join("mod"), "fo mod").unwrap();
    let by_fo = content_tree(m);
    fuse_overlayfs_unmount(&fx);
    // fuse-overlayfs wrote overlay-style whiteouts.
    assert!(
        is_whiteout_char(&fx.upper().p("del")),
        "fuse-overlayfs wrote no char 0/0 whiteout"
    );

    let s = fx.mount();
    assert_eq!(
        content_tree(s.path()),
        by_fo,
        "strata shows another tree than fuse-overlayfs"
    );
    // A removed dir can be made again; strata's own changes.
    fs::create_dir(s.p("newdir")).unwrap();
    fs::write(s.p("newdir/g"), "g").unwrap();
    fs::write(s.p("del"), "del again").unwrap();
    fs::remove_file(s.p("keep")).unwrap();
    fs::remove_file(s.p("dir/y")).unwrap();
    fs::remove_file(s.p("opq/new")).unwrap();
    fs::write(s.p("opq/new2"), "n2").unwrap();
    fs::rename(s.p("mod"), s.p("mod2")).unwrap();
    let by_strata = content_tree(s.path());
    s.finish();
    assert!(by_strata.iter().any(|l| l.starts_with("newdir/g ")));

    fuse_overlayfs(&fx);
    let back = content_tree(&fx.mnt);
    fuse_overlayfs_unmount(&fx);
    assert_eq!(back, by_strata, "fuse-overlayfs shows another tree than strata left");
}

#[test]
fn ro_takes_an_upper_on_a_read_only_filesystem() {
    let fx = Fixture::new(1);
    fx.lower(0).file("a", "lower");
    let up = fx.dir("roupper");
    fx.mount_tmpfs(&up);
    fs::write(up.join("b"), "upper").unwrap();
    let st = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&up)
        .status()
        .unwrap();
    assert!(st.success());
    let o = format!("lowerdir={},upperdir={}", fx.lowerdir(), up.display());
    // Read-write: refused, naming the path and the reason.
    let out = Command::new(STRATA)
        .args(["-f", "-o", &o])
        .arg(&fx.mnt)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("read-only filesystem") && err.contains("roupper"), "{err}");
    assert!(!is_fuse_mount(&fx.mnt));
    // ro: shown, nothing written.
    let m = fx.mount_args(&["-f", "-o", &format!("{o},ro")]);
    assert_eq!(names(m.path()), strs(&["a", "b"]));
    assert_eq!(read_string(&m.p("b")), "upper");
    assert_errno(fs::write(m.p("c"), "c"), libc::EROFS, "create");
    m.finish();
    force_unmount(&up);
}
