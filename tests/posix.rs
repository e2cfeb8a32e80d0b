//! POSIX details that xfstests checks and strata once got wrong: the umask against a
//! default ACL, set-group-id inheritance and its clearing by an access-ACL change,
//! and the times set by writes through a shared mapping with FUSE passthrough.
//! Each case is compared with the same steps on the host filesystem itself.

mod stack;

use std::fs::{self, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use stack::*;

const NOBODY: u32 = 65534;

/// A POSIX ACL in its xattr form: (tag, perm, id) entries.
fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}
const USER_OBJ: u16 = 1;
const USER: u16 = 2;
const GROUP_OBJ: u16 = 4;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const UNDEFINED: u32 = u32::MAX;

/// `setfacl -d -m u:101:rwx` on a 0755 directory.
fn default_acl() -> Vec<u8> {
    acl(&[
        (USER_OBJ, 7, UNDEFINED),
        (USER, 7, 101),
        (GROUP_OBJ, 5, UNDEFINED),
        (MASK, 7, UNDEFINED),
        (OTHER, 5, UNDEFINED),
    ])
}

fn set_xattr(p: &Path, name: &str, v: &[u8]) {
    rustix::fs::setxattr(p, name, v, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", p.display()));
}

fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    match rustix::fs::getxattr(p, name, &mut buf[..]) {
        Ok(n) => {
            buf.truncate(n);
            Some(buf)
        }
        Err(_) => None,
    }
}

fn mode_of(p: &Path) -> u32 {
    fs::metadata(p).unwrap().mode() & 0o7777
}

/// Runs a shell script in `dir` as `uid:gid` (no supplementary groups).
fn sh_as(uid: u32, gid: u32, dir: &Path, script: &str) {
    let out = Command::new("setpriv")
        .args([
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--clear-groups".into(),
            "--".into(),
        ])
        .args(["sh", "-c", script])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("running setpriv");
    assert!(
        out.status.success(),
        "`{script}` as {uid}:{gid} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The same set-up in `base` (through the mount, and on the host filesystem):
/// `acl/` with a default ACL, `plain/` without, `sgid/` owned by nobody, mode 2755,
/// with the default ACL (generic/444).
fn make_dirs(base: &Path) {
    for d in ["acl", "plain", "sgid"] {
        fs::create_dir(base.join(d)).unwrap();
        fs::set_permissions(base.join(d), fs::Permissions::from_mode(0o777)).unwrap();
    }
    set_xattr(&base.join("acl"), "system.posix_acl_default", &default_acl());
    let sg = base.join("sgid");
    set_xattr(&sg, "system.posix_acl_default", &default_acl());
    rustix::fs::chown(
        &sg,
        Some(rustix::fs::Uid::from_raw(NOBODY)),
        Some(rustix::fs::Gid::from_raw(NOBODY)),
    )
    .unwrap();
    fs::set_permissions(&sg, fs::Permissions::from_mode(0o2755)).unwrap();
}

fn make_entries(base: &Path) {
    let script = "umask 027; mkdir d; : > f; mkfifo p";
    sh_as(0, 0, &base.join("acl"), script);
    sh_as(0, 0, &base.join("plain"), script);
    sh_as(NOBODY, NOBODY, &base.join("sgid"), "umask 022; mkdir d; : > f");
    // Not in the directory's group: the group is still inherited.
    sh_as(NOBODY, 4242, &base.join("sgid"), "umask 022; mkdir d2; : > f2");
}

#[test]
fn default_acl_not_umask_decides_new_modes_and_setgid_is_inherited() {
    let s = Stack::new(1);
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let reference = s.dir.path().join("host");
    fs::create_dir(&reference).unwrap();
    // The stack's directories come from the lower layer: copied up, with their ACLs.
    make_dirs(s.lower(0));
    make_dirs(&reference);
    let m = s.mount_with("");
    make_entries(&s.mnt);
    make_entries(&reference);
    for rel in [
        "acl/d", "acl/f", "acl/p", "plain/d", "plain/f", "plain/p", "sgid/d", "sgid/f", "sgid/d2", "sgid/f2",
    ] {
        let (got, want) = (s.m(rel), reference.join(rel));
        assert_eq!(mode_of(&got), mode_of(&want), "mode of {rel}: {:o}", mode_of(&want));
        assert_eq!(
            fs::metadata(&got).unwrap().gid(),
            fs::metadata(&want).unwrap().gid(),
            "group of {rel}"
        );
        for x in ["system.posix_acl_access", "system.posix_acl_default"] {
            assert_eq!(get_xattr(&got, x), get_xattr(&want, x), "{x} of {rel}");
        }
    }
    // The cases that went wrong: the umask (027) was applied under a default ACL.
    assert_eq!(mode_of(&s.m("acl/d")), 0o775);
    assert_eq!(mode_of(&s.m("sgid/d")), 0o2775);
    assert_eq!(mode_of(&s.m("plain/d")), 0o750);
    m.finish();
}

/// An access-ACL change by the owner clears set-group-id when the owner is not in the
/// file's group, as chmod(2) does (generic/375); a member keeps it.
#[test]
fn access_acl_change_by_owner_outside_the_group_clears_setgid() {
    let s = Stack::new(1);
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let reference = s.dir.path().join("host");
    fs::create_dir(&reference).unwrap();
    fs::set_permissions(&reference, fs::Permissions::from_mode(0o777)).unwrap();
    let m = s.mount_with("");
    fs::set_permissions(&s.mnt, fs::Permissions::from_mode(0o777)).unwrap();
    // u::rwx,g::rwx,o::rwx plus a named user, so that the ACL stays.
    let full = acl(&[
        (USER_OBJ, 7, UNDEFINED),
        (USER, 7, 101),
        (GROUP_OBJ, 7, UNDEFINED),
        (MASK, 7, UNDEFINED),
        (OTHER, 7, UNDEFINED),
    ]);
    let hex: String = full.iter().map(|b| format!("{b:02x}")).collect();
    for base in [s.mnt.as_path(), reference.as_path()] {
        for (name, dir) in [("f", false), ("d", true)] {
            for (member, gid) in [("in", NOBODY), ("out", 4242)] {
                let p = base.join(format!("{name}-{member}"));
                if dir {
                    fs::create_dir(&p).unwrap();
                } else {
                    fs::write(&p, "x").unwrap();
                }
                rustix::fs::chown(
                    &p,
                    Some(rustix::fs::Uid::from_raw(NOBODY)),
                    Some(rustix::fs::Gid::from_raw(NOBODY)),
                )
                .unwrap();
                fs::set_permissions(&p, fs::Permissions::from_mode(0o2755)).unwrap();
                let script = format!(
                    "setfattr -n system.posix_acl_access -v 0x{hex} '{}'",
                    p.file_name().unwrap().to_str().unwrap()
                );
                sh_as(NOBODY, gid, base, &script);
            }
        }
    }
    for rel in ["f-in", "f-out", "d-in", "d-out"] {
        assert_eq!(mode_of(&s.m(rel)), mode_of(&reference.join(rel)), "mode of {rel}");
    }
    assert_eq!(mode_of(&s.m("f-out")) & 0o2000, 0, "set-group-id cleared");
    assert_eq!(mode_of(&s.m("f-in")) & 0o2000, 0o2000, "set-group-id kept");
    m.finish();
}

/// Writes through a shared mapping set the file's mtime and ctime, and stat shows them
/// at once: with passthrough, where the kernel does not see these writes, and without
/// (generic/080, 215). For a file made through the mount and for a lower file.
#[test]
fn writes_through_a_shared_mapping_update_mtime_and_ctime() {
    for opts in ["", "passthrough=0"] {
        let s = Stack::new(1);
        fs::write(s.lower(0).join("low"), vec![1u8; 8192]).unwrap();
        let m = s.mount_with(opts);
        fs::write(s.m("new"), vec![2u8; 8192]).unwrap();
        for name in ["new", "low"] {
            let p = s.m(name);
            let before = fs::metadata(&p).unwrap(); // cached by the kernel from here
            std::thread::sleep(Duration::from_millis(50));
            let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
            // SAFETY: a fresh shared mapping of 4096 bytes of an open file, written
            // within its bounds and unmapped before the file is closed.
            unsafe {
                let a = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    f.as_raw_fd(),
                    0,
                );
                assert_ne!(a, libc::MAP_FAILED, "mmap {name} ({opts})");
                std::ptr::write_bytes(a as *mut u8, b'm', 4096);
                // While still open and mapped (without passthrough, the kernel sends
                // mapped writes at writeback: the times follow then). Opens answered
                // over io_uring never pass through (STRATA_TEST_TRANSPORT=uring).
                let passthrough =
                    opts.is_empty() && !std::env::var("STRATA_TEST_TRANSPORT").is_ok_and(|v| v == "uring");
                let mid = fs::metadata(&p).unwrap();
                assert!(
                    !passthrough || (mid.mtime(), mid.mtime_nsec()) > (before.mtime(), before.mtime_nsec()),
                    "mtime of {name} after a mapped write, file still mapped ({opts})"
                );
                libc::munmap(a, 4096);
            }
            drop(f);
            let after = fs::metadata(&p).unwrap();
            assert!(
                (after.mtime(), after.mtime_nsec()) > (before.mtime(), before.mtime_nsec()),
                "mtime of {name} after a mapped write ({opts})"
            );
            assert!(
                (after.ctime(), after.ctime_nsec()) > (before.ctime(), before.ctime_nsec()),
                "ctime of {name} after a mapped write ({opts})"
            );
            assert_eq!(&fs::read(&p).unwrap()[..4096], &[b'm'; 4096][..], "{name} ({opts})");
        }
        m.finish();
    }
}
