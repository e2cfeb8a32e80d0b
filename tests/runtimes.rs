//! How container runtimes start strata when they take it for fuse-overlayfs: containerd's
//! fuse-overlayfs snapshotter mounts through `mount.fuse3 overlay MNT -o OPTS -t
//! fuse-overlayfs`, which runs `fuse-overlayfs overlay MNT -o OPTS` (the source first, the
//! options last) from the caller's PATH; Docker's driver runs `fuse-overlayfs -o OPTS MNT`.
//! Here a temp bin dir holds `fuse-overlayfs` -> the built strata. Needs root and fuse3.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Whether the test can run here; says why not.
fn can_run(what: &str) -> bool {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped {what}: needs root");
        return false;
    }
    true
}

fn find_mount_fuse3() -> Option<PathBuf> {
    ["/sbin/mount.fuse3", "/usr/sbin/mount.fuse3"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A bin dir with `fuse-overlayfs` -> strata, and PATH with it first.
fn fake_fuse_overlayfs(f: &Fixture) -> String {
    let bin = f.root().join("bin");
    fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(STRATA, bin.join("fuse-overlayfs")).unwrap();
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default())
}

/// Pids of strata daemons whose command line names `under`.
fn daemons_under(under: &Path) -> Vec<u32> {
    let strata = fs::canonicalize(STRATA).unwrap();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let exe = fs::read_link(e.path().join("exe")).ok();
        let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
        let names = String::from_utf8_lossy(&cmd).contains(under.to_str().unwrap());
        if exe.as_deref() == Some(strata.as_path()) && names {
            out.push(pid);
        }
    }
    out
}

/// Checks the union at `f.mnt` served by strata (an AUFS whiteout in the upper, which
/// fuse-overlayfs would not make as root), then unmounts with `fusermount3 -u` and waits
/// for the daemon to end.
fn check_then_unmount(f: &Fixture) {
    assert!(is_fuse_mount(&f.mnt), "not mounted: {}", f.mnt.display());
    assert_eq!(read_string(&f.mnt.join("low.txt")), "low\n");
    assert_eq!(daemons_under(f.root()).len(), 1, "one strata daemon serves the mount");
    write(&f.mnt.join("up.txt"), "up\n");
    fs::remove_file(f.mnt.join("gone.txt")).unwrap();
    assert!(!exists(&f.mnt.join("gone.txt")));
    assert_eq!(read_string(&f.upper().p("up.txt")), "up\n");
    assert!(
        f.upper().p(".wh.gone.txt").is_file(),
        "strata's AUFS whiteout in the upper"
    );
    assert!(f.lower(0).p("gone.txt").is_file(), "the lower is untouched");
    let st = Command::new("fusermount3").arg("-u").arg(&f.mnt).status().unwrap();
    assert!(st.success(), "fusermount3 -u");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemons_under(f.root()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the daemon did not exit after fusermount3 -u"
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(!is_fuse_mount(&f.mnt));
}

fn layers() -> (Fixture, String) {
    let f = Fixture::new(1);
    f.lower(0).file("low.txt", "low\n").file("gone.txt", "gone\n");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        f.lower(0).path().display(),
        f.upper().path().display(),
        f.work.display()
    );
    (f, opts)
}

#[test]
fn containerd_argv_through_mount_fuse3() {
    if !can_run("containerd_argv_through_mount_fuse3") {
        return;
    }
    let Some(helper) = find_mount_fuse3() else {
        eprintln!("skipped containerd_argv_through_mount_fuse3: fuse3's mount.fuse3 is not installed");
        return;
    };
    let (f, opts) = layers();
    let path = fake_fuse_overlayfs(&f);
    let out = Command::new(&helper)
        .arg("overlay")
        .arg(&f.mnt)
        .args(["-o", &opts, "-t", "fuse-overlayfs"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount.fuse3 overlay MNT -o ... -t fuse-overlayfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // strata names itself in the mount table whatever name it was started under.
    assert_eq!(mount_type(&f.mnt).as_deref(), Some("fuse.strata"));
    check_then_unmount(&f);
}

#[test]
fn source_first_options_last() {
    if !can_run("source_first_options_last") {
        return;
    }
    // What mount.fuse3 runs, called directly under the name fuse-overlayfs.
    let (f, opts) = layers();
    let path = fake_fuse_overlayfs(&f);
    let out = Command::new("fuse-overlayfs")
        .arg("overlay")
        .arg(&f.mnt)
        .args(["-o", &opts])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    check_then_unmount(&f);
}

#[test]
fn docker_argv() {
    if !can_run("docker_argv") {
        return;
    }
    // Docker's fuse-overlayfs driver: options first, the mount point last, no source.
    let (f, opts) = layers();
    let path = fake_fuse_overlayfs(&f);
    let out = Command::new("fuse-overlayfs")
        .args(["-o", &opts])
        .arg(&f.mnt)
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    check_then_unmount(&f);
}
