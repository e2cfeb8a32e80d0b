//! Uppers shared with other mounters: what strata leaves in an upper is read right by
//! the kernel's overlayfs and by fuse-overlayfs, and strata reads what the kernel
//! leaves. By default every upper file is complete on its own; with `metacopy=on`,
//! metadata-only copies use the kernel's on-disk format (`trusted.overlay.metacopy`,
//! `trusted.overlay.redirect`), which the kernel reads when mounted with `metacopy=on`
//! and refuses (an error, never zeros) without it.

mod common;

use common::*;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Large enough for a metadata-only copy (strata copies data below 256 KiB).
const BIG: usize = 1 << 20;

/// Distinct data for each file: no two files, and no zero-filled file, read alike.
fn data(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i % 251) as u8).wrapping_add(seed) | 1).collect()
}

/// The kernel's overlayfs mounted at `mnt` (unmounted on drop; the fixture's drop
/// unmounts it too if a panic comes first).
struct KernelOverlay(PathBuf);

impl KernelOverlay {
    fn mount(fx: &Fixture, name: &str, opts: &str) -> Result<KernelOverlay, String> {
        let mnt = fx.dir(&format!("{name}.mnt"));
        let work = fx.dir(&format!("{name}.work"));
        let mut o = format!(
            "lowerdir={},upperdir={},workdir={}",
            fx.lowerdir(),
            fx.upper().path().display(),
            work.display()
        );
        if !opts.is_empty() {
            o = format!("{o},{opts}");
        }
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &o])
            .arg(&mnt)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t overlay -o {o}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(KernelOverlay(mnt))
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Whether the kernel's overlayfs can be mounted here (root, and the filesystem known).
fn kernel_overlay_available() -> bool {
    let known = fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.lines().any(|l| l.ends_with("\toverlay")));
    if !known || !rustix::process::geteuid().is_root() {
        eprintln!("SKIP: the kernel's overlayfs is not available (needs root and overlay in /proc/filesystems)");
        return false;
    }
    true
}

#[track_caller]
fn assert_data(p: &Path, want: &[u8], what: &str) {
    let got = fs::read(p).unwrap_or_else(|e| panic!("{what}: read {}: {e}", p.display()));
    assert!(
        got == want,
        "{what}: {} reads {} bytes ({} zero), want {} bytes",
        p.display(),
        got.len(),
        got.iter().filter(|b| **b == 0).count(),
        want.len()
    );
}

/// The fixture used both ways: big and small lower files, one in a subdirectory.
fn fixture() -> Fixture {
    let fx = Fixture::new(1);
    fx.lower(0)
        .file("big", data(1, BIG))
        .file("big2", data(2, BIG))
        .file("big3", data(3, BIG))
        .file("d/big4", data(4, BIG))
        .file("d/big6", data(6, BIG))
        .file("small", data(5, 1000));
    fx
}

/// chmod, chown, touch and rename: the metadata changes that may copy metadata only.
fn change_metadata(root: &Path) {
    fs::set_permissions(root.join("big"), fs::Permissions::from_mode(0o600)).unwrap();
    lchown(&root.join("big2"), 1234, 5678).unwrap();
    set_times(&root.join("d/big4"), (2_000_000, 0), (2_000_000, 0)).unwrap();
    fs::set_permissions(root.join("big3"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::rename(root.join("big3"), root.join("d/moved")).unwrap();
    // Within its directory: the kernel writes a relative redirect for it.
    fs::set_permissions(root.join("d/big6"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::rename(root.join("d/big6"), root.join("d/big6.moved")).unwrap();
    fs::set_permissions(root.join("small"), fs::Permissions::from_mode(0o600)).unwrap();
}

/// What `change_metadata` leaves visible: (path, data).
fn expected() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("big", data(1, BIG)),
        ("big2", data(2, BIG)),
        ("d/moved", data(3, BIG)),
        ("d/big4", data(4, BIG)),
        ("d/big6.moved", data(6, BIG)),
        ("small", data(5, 1000)),
    ]
}

fn check_view(root: &Path, what: &str) {
    for (rel, want) in expected() {
        assert_data(&root.join(rel), &want, what);
    }
    assert_eq!(meta(&root.join("big")).mode() & 0o7777, 0o600, "{what}: mode of big");
    assert_eq!(meta(&root.join("big2")).uid(), 1234, "{what}: owner of big2");
    assert_eq!(meta(&root.join("d/big4")).mtime(), 2_000_000, "{what}: mtime of d/big4");
}

/// By default strata copies data along with metadata: every upper file is whole, and
/// the kernel (without metacopy) and fuse-overlayfs read the upper right.
#[test]
fn default_uppers_are_complete_for_the_kernel_and_fuse_overlayfs() {
    let fx = fixture();
    let m = fx.mount();
    change_metadata(m.path());
    check_view(m.path(), "strata");
    m.finish();
    for (rel, want) in expected() {
        let up = fx.upper().p(rel);
        assert_data(&up, &want, "the upper file itself");
        assert!(
            get_xattr(&up, "trusted.overlay.metacopy").is_err() && get_xattr(&up, "trusted.strata.metacopy").is_err(),
            "{rel}: no metacopy marker by default"
        );
    }
    if kernel_overlay_available() {
        let k = KernelOverlay::mount(&fx, "kernel", "").unwrap();
        check_view(&k.0, "kernel overlayfs");
        drop(k);
    }
    if Path::new("/usr/bin/fuse-overlayfs").exists() {
        let mnt = fx.dir("fo.mnt");
        let work = fx.dir("fo.work");
        let o = format!(
            "lowerdir={},upperdir={},workdir={}",
            fx.lowerdir(),
            fx.upper().path().display(),
            work.display()
        );
        let st = Command::new("/usr/bin/fuse-overlayfs")
            .args(["-o", &o])
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(st.success(), "fuse-overlayfs -o {o}");
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                force_unmount(&self.0);
            }
        }
        let _g = Unmount(mnt.clone());
        check_view(&mnt, "fuse-overlayfs");
    } else {
        eprintln!("SKIP (part): /usr/bin/fuse-overlayfs is not installed (apt-get install fuse-overlayfs)");
    }
}

/// With metacopy=on, strata's metadata-only copies are the kernel's: it reads them
/// with metacopy=on, and refuses them without (never zeros). strata reads them after
/// a remount, and the first write completes them.
#[test]
fn strata_metacopy_uppers_read_by_the_kernel_or_refused() {
    if !kernel_overlay_available() {
        return;
    }
    let fx = fixture();
    let m = fx.mount_opts("metacopy=on");
    change_metadata(m.path());
    check_view(m.path(), "strata metacopy=on");
    m.finish();
    for rel in ["big", "big2", "d/moved", "d/big4", "d/big6.moved"] {
        let up = fx.upper().p(rel);
        assert_eq!(meta(&up).blocks(), 0, "{rel}: metadata-only copy");
        assert_eq!(meta(&up).len(), BIG as u64, "{rel}: size of the metadata-only copy");
        assert_eq!(
            get_xattr(&up, "trusted.overlay.metacopy").unwrap(),
            b"",
            "{rel}: marker"
        );
    }
    assert_eq!(
        get_xattr(&fx.upper().p("d/moved"), "trusted.overlay.redirect").unwrap(),
        b"/big3",
        "where the renamed copy's data is"
    );

    let k = KernelOverlay::mount(&fx, "kernel", "metacopy=on").unwrap();
    check_view(&k.0, "kernel overlayfs metacopy=on");
    drop(k);

    let k = KernelOverlay::mount(&fx, "kernel-nometa", "").unwrap();
    for rel in ["big", "big2", "d/moved", "d/big4", "d/big6.moved"] {
        match fs::read(k.p(rel)) {
            Ok(got) => panic!(
                "kernel overlayfs without metacopy read {rel} ({} bytes, {} zero) instead of refusing it",
                got.len(),
                got.iter().filter(|b| **b == 0).count()
            ),
            Err(e) => {
                eprintln!("kernel without metacopy=on refuses {rel}: {e}");
                assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{rel}: the kernel's refusal");
            }
        }
    }
    assert_data(&k.p("small"), &data(5, 1000), "small (copied whole)");
    drop(k);

    // strata again, metacopy off: still reads them, and a write completes one.
    let m = fx.mount();
    check_view(m.path(), "strata remounted");
    OpenOptions::new()
        .append(true)
        .open(m.p("d/moved"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    let mut want = data(3, BIG);
    want.push(b'+');
    assert_data(&m.p("d/moved"), &want, "strata after append");
    m.finish();
    let up = fx.upper().p("d/moved");
    assert_data(&up, &want, "the completed upper file");
    assert!(
        get_xattr(&up, "trusted.overlay.metacopy").is_err(),
        "marker gone once complete"
    );
    assert!(
        get_xattr(&up, "trusted.overlay.redirect").is_err(),
        "redirect gone once complete"
    );
    let k = KernelOverlay::mount(&fx, "kernel-after", "").unwrap();
    assert_data(&k.p("d/moved"), &want, "kernel reads the completed file");
    drop(k);
}

/// Metadata-only copies the kernel wrote (mounted with metacopy=on) read right
/// through strata, with or without metacopy=on, and complete on a write.
#[test]
fn kernel_metacopy_uppers_read_by_strata() {
    if !kernel_overlay_available() {
        return;
    }
    let fx = fixture();
    let k = KernelOverlay::mount(&fx, "kernel", "metacopy=on").unwrap();
    change_metadata(&k.0);
    check_view(&k.0, "kernel overlayfs metacopy=on");
    drop(k);
    let up = fx.upper().p("big");
    assert!(
        get_xattr(&up, "trusted.overlay.metacopy").is_ok(),
        "the kernel wrote a metadata-only copy of big"
    );
    // (An xattr block may be counted, not the data.)
    assert!(meta(&up).blocks() * 512 < 64 << 10, "no data in the kernel's copy");
    assert!(
        get_xattr(&fx.upper().p("d/moved"), "trusted.overlay.redirect").is_ok(),
        "the kernel redirects the renamed copy"
    );
    eprintln!(
        "the kernel's redirects: d/moved {:?}, d/big6.moved {:?}",
        get_xattr(&fx.upper().p("d/moved"), "trusted.overlay.redirect")
            .map(|v| String::from_utf8_lossy(&v).into_owned()),
        get_xattr(&fx.upper().p("d/big6.moved"), "trusted.overlay.redirect")
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    );
    for opts in ["", "metacopy=on"] {
        let m = fx.mount_opts(opts);
        check_view(m.path(), &format!("strata -o {opts:?} on the kernel's upper"));
        assert!(
            list_xattr(&m.p("big")).unwrap().iter().all(|n| !n.contains("overlay")),
            "the markers stay hidden"
        );
        m.finish();
    }
    let m = fx.mount();
    OpenOptions::new()
        .append(true)
        .open(m.p("big"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    let mut want = data(1, BIG);
    want.push(b'+');
    assert_data(&m.p("big"), &want, "strata after append");
    m.finish();
    assert_data(&up, &want, "the completed upper file");
    let k = KernelOverlay::mount(&fx, "kernel-after", "metacopy=on").unwrap();
    assert_data(&k.p("big"), &want, "the kernel reads strata's completed copy");
    assert_data(&k.p("d/moved"), &data(3, BIG), "the kernel's own redirect");
}

/// Metadata-only copies left by earlier strata versions (`trusted.strata.metacopy` =
/// "LAYER\0PATH") still read right, and complete on a write.
#[test]
fn older_strata_metacopy_uppers_still_read() {
    let fx = fixture();
    let up = fx.upper().p("big");
    let f = fs::File::create(&up).unwrap();
    f.set_len(BIG as u64).unwrap();
    drop(f);
    fs::set_permissions(&up, fs::Permissions::from_mode(0o600)).unwrap();
    set_xattr(&up, "trusted.strata.metacopy", b"1\0big").unwrap();
    // Renamed by that version: the path names the lower file.
    let up2 = fx.upper().p("d/renamed");
    fs::create_dir_all(up2.parent().unwrap()).unwrap();
    fs::File::create(&up2).unwrap().set_len(BIG as u64).unwrap();
    set_xattr(&up2, "trusted.strata.metacopy", b"1\0big2").unwrap();
    let m = fx.mount();
    assert_data(&m.p("big"), &data(1, BIG), "older metacopy");
    assert_data(&m.p("d/renamed"), &data(2, BIG), "older metacopy, renamed");
    assert!(list_xattr(&m.p("big")).unwrap().is_empty(), "the marker stays hidden");
    OpenOptions::new()
        .append(true)
        .open(m.p("big"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    let mut want = data(1, BIG);
    want.push(b'+');
    assert_data(&m.p("big"), &want, "after append");
    m.finish();
    assert_data(&up, &want, "the completed upper file");
    assert!(
        get_xattr(&up, "trusted.strata.metacopy").is_err(),
        "marker gone once complete"
    );
}
