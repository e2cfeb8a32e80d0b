//! Copy-up: what triggers it, what it preserves, what it must not do.

mod common;

use common::*;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Barrier};

const UID: u32 = 1234;
const GID: u32 = 5678;
const ATIME: i64 = 1_000_000_000; // 2001-09-09
const MTIME: i64 = 981_173_106; // 2001-02-03

/// A lower file with distinctive metadata: mode 0640, owner UID:GID,
/// fixed atime/mtime and xattrs in the user and trusted namespaces.
fn distinctive(l: &Layer, rel: &str, content: &str) {
    l.file(rel, content)
        .mode(rel, 0o640)
        .owner(rel, UID, GID)
        .xattr(rel, "user.colour", b"blue")
        .xattr(rel, "trusted.secret", b"42")
        .times(rel, ATIME, MTIME);
}

/// Asserts the metadata set by `distinctive` (mtime only if `same_mtime`).
#[track_caller]
fn assert_distinctive(p: &Path, same_mtime: bool) {
    let st = meta(p);
    assert_eq!(st.mode() & 0o7777, 0o640, "mode of {}", p.display());
    assert_eq!((st.uid(), st.gid()), (UID, GID), "owner of {}", p.display());
    if same_mtime {
        assert_eq!(st.mtime(), MTIME, "mtime of {}", p.display());
    }
    assert_eq!(
        get_xattr(p, "user.colour").unwrap(),
        b"blue",
        "user.colour of {}",
        p.display()
    );
    assert_eq!(
        get_xattr(p, "trusted.secret").unwrap(),
        b"42",
        "trusted.secret of {}",
        p.display()
    );
}

#[test]
fn reading_never_copies_up() {
    let fx = Fixture::new(1);
    fx.lower(0)
        .file("f", "content")
        .file("d/g", "more")
        .symlink("s", "f")
        .xattr("f", "user.a", b"1");
    let m = fx.mount();

    assert_eq!(read_string(&m.p("f")), "content");
    let mut buf = String::new();
    OpenOptions::new()
        .read(true)
        .open(m.p("d/g"))
        .unwrap()
        .read_to_string(&mut buf)
        .unwrap();
    assert_eq!(buf, "more");
    let _ = names(m.path());
    let _ = names(&m.p("d"));
    let _ = fs::read_link(m.p("s")).unwrap();
    let _ = read(&m.p("s"));
    assert_eq!(get_xattr(&m.p("f"), "user.a").unwrap(), b"1");
    let _ = list_xattr(&m.p("f")).unwrap();
    let _ = fs::metadata(m.p("d/g")).unwrap();
    // (Only read-only opens are promised not to copy up; an O_RDWR open that
    // never writes is not checked here.)

    assert!(
        tree(fx.upper().path()).is_empty(),
        "upper got {:?}",
        tree(fx.upper().path())
    );
    m.finish();
}

#[test]
fn every_kind_of_change_copies_up() {
    let fx = Fixture::new(1);
    let ops = [
        "write",
        "append",
        "truncate",
        "open_trunc",
        "chmod",
        "chown",
        "utimes",
        "setxattr",
        "removexattr",
        "link",
        "rename",
    ];
    for op in ops {
        fx.lower(0)
            .file(&format!("d/{op}"), "lower data")
            .xattr(&format!("d/{op}"), "user.x", b"1");
    }
    let m = fx.mount();
    let p = |n: &str| m.p(format!("d/{n}"));

    pwrite(&p("write"), 0, b"LOWER");
    OpenOptions::new()
        .append(true)
        .open(p("append"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    OpenOptions::new()
        .write(true)
        .open(p("truncate"))
        .unwrap()
        .set_len(5)
        .unwrap();
    File::create(p("open_trunc")).unwrap().write_all(b"new").unwrap();
    chmod(&p("chmod"), 0o600).unwrap();
    lchown(&p("chown"), UID, GID).unwrap();
    set_times(&p("utimes"), (ATIME, 0), (MTIME, 0)).unwrap();
    set_xattr(&p("setxattr"), "user.y", b"2").unwrap();
    remove_xattr(&p("removexattr"), "user.x").unwrap();
    fs::hard_link(p("link"), p("link2")).unwrap();
    fs::rename(p("rename"), p("renamed")).unwrap();

    // The merged view.
    let expect = [
        ("write", "LOWER data"),
        ("append", "lower data+"),
        ("truncate", "lower"),
        ("open_trunc", "new"),
        ("chmod", "lower data"),
        ("link", "lower data"),
        ("link2", "lower data"),
        ("renamed", "lower data"),
    ];
    for (n, c) in expect {
        assert_eq!(read_string(&p(n)), c, "{n} through the mount");
    }
    assert_eq!(meta(&p("chmod")).mode() & 0o7777, 0o600);
    assert_eq!((meta(&p("chown")).uid(), meta(&p("chown")).gid()), (UID, GID));
    assert_eq!(meta(&p("utimes")).mtime(), MTIME);
    assert_eq!(meta(&p("utimes")).atime(), ATIME);
    assert_eq!(get_xattr(&p("setxattr"), "user.y").unwrap(), b"2");
    assert_eq!(get_xattr(&p("setxattr"), "user.x").unwrap(), b"1");
    assert_errno(get_xattr(&p("removexattr"), "user.x"), libc::ENODATA, "removed xattr");
    assert_errno(lstat(&p("rename")), libc::ENOENT, "old name after rename");

    // What landed in the upper layer: each changed entry, with the change.
    let u = |n: &str| fx.upper().p(format!("d/{n}"));
    for (n, c) in &expect[..4] {
        assert_eq!(read_string(&u(n)), *c, "upper copy of {n}");
    }
    for n in [
        "chmod",
        "chown",
        "utimes",
        "setxattr",
        "removexattr",
        "link",
        "link2",
        "renamed",
    ] {
        assert!(meta(&u(n)).is_file(), "{n} not copied up");
    }
    assert_eq!(meta(&u("chmod")).mode() & 0o7777, 0o600);
    assert_eq!(meta(&u("chown")).uid(), UID);
    assert_eq!(meta(&u("utimes")).mtime(), MTIME);
    assert_eq!(get_xattr(&u("setxattr"), "user.y").unwrap(), b"2");
    assert_errno(
        get_xattr(&u("removexattr"), "user.x"),
        libc::ENODATA,
        "removed xattr in upper",
    );
    assert!(
        meta(&u(".wh.rename")).is_file(),
        "renamed-away lower name must be whited out"
    );
    // Only the directory holding them was copied besides.
    assert_eq!(fx.upper_names(), strs(&["d"]));
    m.finish();
}

#[test]
fn copy_up_preserves_mode_owner_times_and_xattrs() {
    let fx = Fixture::new(1);
    distinctive(fx.lower(0), "meta_only", "data");
    distinctive(fx.lower(0), "written", "data");
    let m = fx.mount();

    // A metadata change that leaves mode, owner and times alone.
    set_xattr(&m.p("meta_only"), "user.extra", b"x").unwrap();
    for p in [m.p("meta_only"), fx.upper().p("meta_only")] {
        assert_distinctive(&p, true);
        assert_eq!(meta(&p).atime(), ATIME, "atime of {}", p.display());
    }
    assert_eq!(read_string(&m.p("meta_only")), "data");

    // A data write keeps mode, owner, xattrs (mtime moves on, as on ext4).
    pwrite(&m.p("written"), 4, b"!");
    for p in [m.p("written"), fx.upper().p("written")] {
        assert_distinctive(&p, false);
    }
    assert_eq!(read_string(&m.p("written")), "data!");
    assert_eq!(read_string(&fx.upper().p("written")), "data!");
    // The user-visible xattrs are exactly the lower's plus the one added.
    let mut want = strs(&["trusted.secret", "user.colour", "user.extra"]);
    want.sort();
    assert_eq!(list_xattr(&m.p("meta_only")).unwrap(), want);
    m.finish();
}

#[test]
fn creating_in_a_lower_dir_copies_the_parent_chain() {
    let fx = Fixture::new(1);
    let l = fx.lower(0);
    l.file("a/b/c/existing", "x");
    for (i, d) in ["a", "a/b", "a/b/c"].into_iter().enumerate() {
        let i = i as u32;
        l.mode(d, 0o750 - i * 0o10)
            .owner(d, UID + i, GID + i)
            .xattr(d, "user.level", d.as_bytes())
            .xattr(d, "trusted.level", d.as_bytes());
    }
    for d in ["a/b/c", "a/b", "a"] {
        l.times(d, ATIME, MTIME);
    }
    let m = fx.mount();

    fs::write(m.p("a/b/c/new"), "new").unwrap();

    assert_eq!(read_string(&fx.upper().p("a/b/c/new")), "new");
    for (i, d) in ["a", "a/b", "a/b/c"].into_iter().enumerate() {
        let i = i as u32;
        for p in [m.p(d), fx.upper().p(d)] {
            let st = meta(&p);
            assert!(st.is_dir());
            assert_eq!(st.mode() & 0o7777, 0o750 - i * 0o10, "mode of {}", p.display());
            assert_eq!((st.uid(), st.gid()), (UID + i, GID + i), "owner of {}", p.display());
            assert_eq!(
                get_xattr(&p, "user.level").unwrap(),
                d.as_bytes(),
                "user xattr of {}",
                p.display()
            );
            assert_eq!(
                get_xattr(&p, "trusted.level").unwrap(),
                d.as_bytes(),
                "trusted xattr of {}",
                p.display()
            );
            if d != "a/b/c" {
                // Untouched ancestors keep their times; c got a new child.
                assert_eq!(st.mtime(), MTIME, "mtime of {}", p.display());
            }
        }
    }
    assert_eq!(names(&m.p("a/b/c")), strs(&["existing", "new"]));
    // The sibling stays in the lower: only the chain was copied.
    assert!(!exists(&fx.upper().p("a/b/c/existing")));
    m.finish();
}

#[test]
fn symlinks_fifos_and_devices_copy_up_as_themselves() {
    let fx = Fixture::new(1);
    fx.lower(0)
        .symlink("link", "some/target")
        .fifo("fifo")
        .char_dev("null", 1, 3)
        .owner("link", UID, GID);
    let m = fx.mount();

    lchown(&m.p("link"), UID + 1, GID + 1).unwrap();
    chmod(&m.p("fifo"), 0o600).unwrap();
    chmod(&m.p("null"), 0o600).unwrap();

    for base in [m.path(), fx.upper().path()] {
        let l = meta(&base.join("link"));
        assert!(l.file_type().is_symlink(), "{}/link", base.display());
        assert_eq!(fs::read_link(base.join("link")).unwrap(), Path::new("some/target"));
        assert_eq!((l.uid(), l.gid()), (UID + 1, GID + 1));

        let f = meta(&base.join("fifo"));
        assert_eq!(f.mode() & libc::S_IFMT, libc::S_IFIFO, "{}/fifo", base.display());
        assert_eq!(f.permissions().mode() & 0o7777, 0o600);

        let n = meta(&base.join("null"));
        assert_eq!(n.mode() & libc::S_IFMT, libc::S_IFCHR, "{}/null", base.display());
        assert_eq!(n.rdev(), libc::makedev(1, 3));
        assert_eq!(n.permissions().mode() & 0o7777, 0o600);
    }
    m.finish();
}

#[test]
fn sparse_file_stays_sparse() {
    const GIB: u64 = 1 << 30;
    let fx = Fixture::new(1);
    fx.lower(0).sparse("big", GIB, GIB / 2, b"middle");
    let m = fx.mount();

    pwrite(&m.p("big"), 4096, b"x");

    let up = fx.upper().p("big");
    let st = meta(&up);
    assert_eq!(st.len(), GIB, "size of the upper copy");
    let allocated = st.blocks() * 512;
    assert!(
        allocated < 1 << 20,
        "upper copy allocates {allocated} bytes: not sparse"
    );
    let f = File::open(&up).unwrap();
    let mut buf = [0u8; 6];
    f.read_exact_at(&mut buf, GIB / 2).unwrap();
    assert_eq!(&buf, b"middle");
    f.read_exact_at(&mut buf[..1], 4096).unwrap();
    assert_eq!(buf[0], b'x');
    let through = File::open(m.p("big")).unwrap();
    through.read_exact_at(&mut buf, GIB / 2).unwrap();
    assert_eq!(&buf, b"middle", "through the mount");
    drop(through);
    m.finish();
}

#[test]
fn concurrent_first_writes_copy_up_once() {
    const THREADS: usize = 8;
    const CHUNK: usize = 64 * 1024;
    let fx = Fixture::new(1);
    fx.lower(0).file("d/shared", vec![b'.'; THREADS * CHUNK]);
    let m = fx.mount();
    let path = m.p("d/shared");
    let barrier = Arc::new(Barrier::new(THREADS));

    let handles: Vec<_> = (0..THREADS)
        .map(|i| {
            let (path, barrier) = (path.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let f = OpenOptions::new().write(true).open(&path).unwrap();
                let data = vec![b'a' + i as u8; CHUNK];
                // Several writes each, so first writes of all threads overlap.
                for part in data.chunks(CHUNK / 4).enumerate() {
                    f.write_all_at(part.1, (i * CHUNK + part.0 * CHUNK / 4) as u64).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }

    let merged = read(&path);
    let upper = read(&fx.upper().p("d/shared"));
    for (what, data) in [("merged view", &merged), ("upper copy", &upper)] {
        assert_eq!(data.len(), THREADS * CHUNK, "{what} size");
        for i in 0..THREADS {
            let region = &data[i * CHUNK..(i + 1) * CHUNK];
            assert!(
                region.iter().all(|&b| b == b'a' + i as u8),
                "{what}: writes of thread {i} missing"
            );
        }
    }
    assert_eq!(names(&fx.upper().p("d")), strs(&["shared"]), "exactly one upper file");
    m.finish();
}

#[test]
fn metadata_changes_copy_the_data_too() {
    // Copy-up copies type, data, mode, owner, times and xattrs, whatever
    // triggered it: the upper layer holds complete files (small ones here;
    // large files may stay metadata-only, see features.rs).
    let fx = Fixture::new(1);
    for n in ["chmod", "chown", "utimes", "setxattr", "rename", "link"] {
        fx.lower(0).file(n, format!("data of {n}"));
    }
    let m = fx.mount();
    chmod(&m.p("chmod"), 0o600).unwrap();
    lchown(&m.p("chown"), UID, GID).unwrap();
    set_times(&m.p("utimes"), (ATIME, 0), (MTIME, 0)).unwrap();
    set_xattr(&m.p("setxattr"), "user.y", b"2").unwrap();
    fs::rename(m.p("rename"), m.p("renamed")).unwrap();
    fs::hard_link(m.p("link"), m.p("link2")).unwrap();
    m.finish();

    for (upper_name, was) in [
        ("chmod", "chmod"),
        ("chown", "chown"),
        ("utimes", "utimes"),
        ("setxattr", "setxattr"),
        ("renamed", "rename"),
        ("link", "link"),
        ("link2", "link"),
    ] {
        assert_eq!(
            read_string(&fx.upper().p(upper_name)),
            format!("data of {was}"),
            "upper {upper_name}"
        );
    }
}

/// A missing SELinux label answers "not supported", so that `ls -l` stops asking
/// for the rest of the mount; a label that is there reads, lists, copies up and is
/// removed as on ext4. `unlabeled=enodata` gives ext4's answer for a missing one.
#[test]
fn missing_selinux_labels_answer_not_supported() {
    if Path::new("/sys/fs/selinux/enforce").exists() {
        eprintln!("skipped: SELinux is active here, so the kernel answers for labels itself");
        return;
    }
    let label = b"system_u:object_r:etc_t:s0";
    let fx = Fixture::new(1);
    fx.lower(0)
        .file("plain", "p")
        .file("labelled", "l")
        .xattr("labelled", "security.selinux", label);
    let m = fx.mount();
    assert_errno(
        get_xattr(&m.p("plain"), "security.selinux"),
        libc::EOPNOTSUPP,
        "label of an unlabelled file",
    );
    assert_errno(
        get_xattr(m.path(), "security.selinux"),
        libc::EOPNOTSUPP,
        "label of the root",
    );
    // Other names keep ext4's answer.
    assert_errno(
        get_xattr(&m.p("plain"), "user.none"),
        libc::ENODATA,
        "missing user xattr",
    );
    assert_errno(
        get_xattr(&m.p("plain"), "security.ima"),
        libc::ENODATA,
        "missing security xattr",
    );
    assert_eq!(get_xattr(&m.p("labelled"), "security.selinux").unwrap(), label);
    assert!(list_xattr(&m.p("labelled"))
        .unwrap()
        .contains(&"security.selinux".to_string()));
    // ls -l asks once, is told "not supported", and still lists every file.
    let out = std::process::Command::new("ls")
        .arg("-l")
        .arg(m.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "ls -l: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        3,
        "total line + 2 files"
    );
    // Removing a label that is not there is ENODATA, as on ext4; one that is goes.
    assert_errno(
        remove_xattr(&m.p("plain"), "security.selinux"),
        libc::ENODATA,
        "remove missing label",
    );
    set_xattr(&m.p("plain"), "security.selinux", label).unwrap();
    assert_eq!(get_xattr(&m.p("plain"), "security.selinux").unwrap(), label);
    remove_xattr(&m.p("labelled"), "security.selinux").unwrap();
    assert_errno(
        get_xattr(&m.p("labelled"), "security.selinux"),
        libc::EOPNOTSUPP,
        "removed label",
    );
    m.finish();
    assert_eq!(
        get_xattr(&fx.lower(0).path().join("labelled"), "security.selinux").unwrap(),
        label
    );

    let m = fx.mount_opts("unlabeled=enodata");
    assert_errno(
        get_xattr(&m.p("labelled"), "security.selinux"),
        libc::ENODATA,
        "with unlabeled=enodata",
    );
    assert_eq!(get_xattr(&m.p("plain"), "security.selinux").unwrap(), label);
    m.finish();
}
