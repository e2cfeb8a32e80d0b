//! The merged view and what lands in the upper, section by section of the union
//! semantics: lookup, whiteouts and opaque directories, copy-up, inode numbers,
//! directories, rename. Every test mounts strata for real.

mod stack;

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use stack::*;

// ---- lookup ----

#[test]
fn upper_hides_lowers_and_higher_lower_hides_lower() {
    let s = Stack::new(2);
    write(s.l(1, "a"), "bottom");
    write(s.l(0, "a"), "top");
    write(s.l(1, "b"), "only bottom");
    write(s.u("c"), "upper");
    write(s.l(0, "c"), "lower c");
    let _m = s.mount();
    assert_eq!(read(s.m("a")), "top");
    assert_eq!(read(s.m("b")), "only bottom");
    assert_eq!(read(s.m("c")), "upper");
}

#[test]
fn file_in_higher_layer_hides_directory_below() {
    let s = Stack::new(2);
    write(s.l(0, "x"), "file");
    write(s.l(1, "x/inner"), "hidden");
    let _m = s.mount();
    assert!(fs::symlink_metadata(s.m("x")).unwrap().is_file());
    assert_eq!(read(s.m("x")), "file");
    assert!(!exists(s.m("x/inner")));
}

#[test]
fn directories_merge_and_listing_shows_each_name_once() {
    let s = Stack::new(3);
    write(s.l(0, "d/a"), "0");
    write(s.l(1, "d/a"), "1");
    write(s.l(1, "d/b"), "1");
    write(s.l(2, "d/c"), "2");
    write(s.u("d/u"), "u");
    let _m = s.mount();
    assert_eq!(names(s.m("d")), ["a", "b", "c", "u"]);
    assert_eq!(read(s.m("d/a")), "0");
    let dot: Vec<_> = fs::read_dir(s.m("d")).unwrap().collect();
    assert_eq!(dot.len(), 4, "read_dir hides . and ..; each name once");
}

// ---- whiteouts and opaque directories ----

#[test]
fn aufs_and_overlay_whiteouts_in_lowers_hide_names() {
    let s = Stack::new(2);
    write(s.l(1, "gone-aufs"), "x");
    write(s.l(1, "gone-ovl"), "x");
    write(s.l(1, "kept"), "x");
    write(s.l(0, ".wh.gone-aufs"), "");
    overlay_whiteout(&s.l(0, "gone-ovl"));
    let _m = s.mount();
    assert_eq!(names(&s.mnt), ["kept"]);
    assert!(!exists(s.m("gone-aufs")));
    assert!(!exists(s.m("gone-ovl")));
}

#[test]
fn opaque_directories_of_both_forms_hide_what_is_below() {
    let s = Stack::new(2);
    write(s.l(1, "o1/hidden"), "x");
    write(s.l(0, "o1/shown"), "x");
    write(s.l(0, "o1/.wh..wh..opq"), "");
    write(s.l(1, "o2/hidden"), "x");
    write(s.l(0, "o2/shown"), "x");
    setxattr(&s.l(0, "o2"), "trusted.overlay.opaque", b"y").unwrap();
    let _m = s.mount();
    assert_eq!(names(s.m("o1")), ["shown"]);
    assert_eq!(names(s.m("o2")), ["shown"]);
    assert!(!exists(s.m("o1/hidden")));
    assert!(
        !listxattr(&s.m("o2")).iter().any(|x| x.contains("overlay")),
        "format markers stay hidden"
    );
}

#[test]
fn reserved_names_are_invisible_and_cannot_be_created() {
    let s = Stack::new(1);
    write(s.l(0, "f"), "x");
    write(s.l(0, "d/.wh..wh..opq"), "");
    let _m = s.mount();
    for n in [".wh.foo", ".wh..wh..opq", ".wh..wh.work"] {
        assert!(!exists(s.m(n)), "{n} must not be stat-able");
        let e = fs::write(s.m(n), "x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "creating {n}");
    }
    assert_eq!(
        fs::create_dir(s.m(".wh.dir")).unwrap_err().raw_os_error(),
        Some(libc::EPERM)
    );
    assert_eq!(
        symlink("f", s.m(".wh.sl")).unwrap_err().raw_os_error(),
        Some(libc::EPERM)
    );
    assert_eq!(
        fs::hard_link(s.m("f"), s.m(".wh.hl")).unwrap_err().raw_os_error(),
        Some(libc::EPERM)
    );
    assert_eq!(
        fs::rename(s.m("f"), s.m(".wh.f")).unwrap_err().raw_os_error(),
        Some(libc::EPERM)
    );
    assert!(names(&s.mnt).iter().all(|n| !n.starts_with(".wh.")));
    assert!(
        names(&s.upper).iter().all(|n| n != ".wh.foo" && n != ".wh.f"),
        "nothing written"
    );
    assert_eq!(read(s.m("f")), "x");
}

#[test]
fn unlink_of_lower_file_leaves_aufs_whiteout() {
    let s = Stack::new(1);
    write(s.l(0, "dir/f"), "x");
    let snap = snapshot(s.lower(0));
    let m = s.mount();
    fs::remove_file(s.m("dir/f")).unwrap();
    assert!(!exists(s.m("dir/f")));
    assert!(names(s.m("dir")).is_empty());
    let wh = fs::metadata(s.u("dir/.wh.f")).unwrap();
    assert!(wh.is_file() && wh.len() == 0);
    drop(m);
    assert_eq!(snapshot(s.lower(0)), snap, "lower layer unchanged");
}

#[test]
fn rm_rf_then_mkdir_gives_an_empty_opaque_directory() {
    let s = Stack::new(2);
    write(s.l(1, "d/old1"), "x");
    write(s.l(0, "d/sub/old2"), "x");
    let _m = s.mount();
    fs::remove_dir_all(s.m("d")).unwrap();
    assert!(!exists(s.m("d")));
    assert!(exists(s.u(".wh.d")));
    fs::create_dir(s.m("d")).unwrap();
    assert!(names(s.m("d")).is_empty());
    assert!(!exists(s.m("d/old1")));
    assert!(!exists(s.m("d/sub")));
    assert!(exists(s.u("d/.wh..wh..opq")), "new directory is opaque");
    assert!(!exists(s.u(".wh.d")));
}

#[test]
fn rmdir_of_non_empty_merged_directory_fails() {
    let s = Stack::new(1);
    write(s.l(0, "d/f"), "x");
    let _m = s.mount();
    assert_eq!(
        fs::remove_dir(s.m("d")).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    fs::remove_file(s.m("d/f")).unwrap();
    fs::remove_dir(s.m("d")).unwrap();
    assert!(exists(s.u(".wh.d")));
}

// ---- copy-up ----

#[test]
fn copy_up_keeps_metadata_and_parent_chain() {
    let s = Stack::new(1);
    write(s.l(0, "a/b/f"), "data");
    fs::set_permissions(s.l(0, "a/b"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::set_permissions(s.l(0, "a/b/f"), fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::lchown(s.l(0, "a/b/f"), Some(1234), Some(2345)).unwrap();
    setxattr(&s.l(0, "a/b/f"), "user.k", b"v").unwrap();
    setxattr(&s.l(0, "a/b"), "user.d", b"dv").unwrap();
    let t = filetime(&s.l(0, "a/b/f"));
    let _m = s.mount();
    let mut f = OpenOptions::new().append(true).open(s.m("a/b/f")).unwrap();
    f.write_all(b"+more").unwrap();
    drop(f);
    assert_eq!(read(s.m("a/b/f")), "data+more");
    assert_eq!(read(s.u("a/b/f")), "data+more");
    assert_eq!(read(s.l(0, "a/b/f")), "data", "lower untouched");
    let md = fs::metadata(s.u("a/b/f")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (1234, 2345, 0o640));
    assert_eq!(getxattr(&s.u("a/b/f"), "user.k").unwrap(), b"v");
    assert_eq!(mode(&s.u("a/b")), 0o750);
    assert_eq!(getxattr(&s.u("a/b"), "user.d").unwrap(), b"dv");
    assert!(filetime(&s.u("a/b/f")) >= t);
}

fn filetime(p: &Path) -> i64 {
    fs::metadata(p).unwrap().mtime()
}

#[test]
fn opening_for_read_never_copies_up() {
    let s = Stack::new(1);
    write(s.l(0, "d/f"), "x");
    let _m = s.mount();
    assert_eq!(read(s.m("d/f")), "x");
    let _ = fs::metadata(s.m("d/f")).unwrap();
    let _ = listxattr(&s.m("d/f"));
    assert!(!exists(s.u("d")), "nothing copied for reads");
}

#[test]
fn each_kind_of_change_copies_up() {
    let s = Stack::new(1);
    for n in ["trunc", "chmod", "chown", "utimes", "xattr", "link", "ren"] {
        write(s.l(0, n), "content");
    }
    let _m = s.mount();
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(s.m("trunc"))
        .unwrap();
    fs::set_permissions(s.m("chmod"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(s.m("chown"), Some(7), Some(8)).unwrap();
    let f = fs::File::options().write(true).open(s.m("utimes")).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
        .unwrap();
    drop(f);
    setxattr(&s.m("xattr"), "user.x", b"1").unwrap();
    fs::hard_link(s.m("link"), s.m("link2")).unwrap();
    fs::rename(s.m("ren"), s.m("ren2")).unwrap();
    assert_eq!(fs::metadata(s.u("trunc")).unwrap().len(), 0);
    assert_eq!(mode(&s.u("chmod")), 0o600);
    assert_eq!(fs::metadata(s.u("chown")).unwrap().uid(), 7);
    assert_eq!(fs::metadata(s.m("utimes")).unwrap().mtime(), 1_000_000);
    assert_eq!(getxattr(&s.m("xattr"), "user.x").unwrap(), b"1");
    assert_eq!(ino(&s.u("link")), ino(&s.u("link2")));
    assert_eq!(read(s.m("ren2")), "content");
    assert!(!exists(s.m("ren")) && exists(s.u(".wh.ren")));
    for n in ["chmod", "chown", "xattr", "ren2"] {
        assert_eq!(read(s.m(n)), "content", "{n} keeps its data");
    }
}

#[test]
fn chmod_of_large_lower_file_copies_metadata_only() {
    let s = Stack::new(1);
    let f = fs::File::create(s.l(0, "big")).unwrap();
    f.set_len(64 << 20).unwrap();
    drop(f);
    let mut f = OpenOptions::new().write(true).open(s.l(0, "big")).unwrap();
    f.seek(SeekFrom::Start(10 << 20)).unwrap();
    f.write_all(b"payload").unwrap();
    drop(f);
    let _m = s.mount_with("metacopy=on");
    fs::set_permissions(s.m("big"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(mode(&s.m("big")), 0o600);
    assert_eq!(
        fs::metadata(s.u("big")).unwrap().blocks(),
        0,
        "no data copied for chmod"
    );
    let data = fs::read(s.m("big")).unwrap();
    assert_eq!(data.len(), 64 << 20);
    assert_eq!(&data[10 << 20..(10 << 20) + 7], b"payload");
    let mut f = OpenOptions::new().append(true).open(s.m("big")).unwrap();
    f.write_all(b"!").unwrap();
    drop(f);
    let data = fs::read(s.m("big")).unwrap();
    assert_eq!(
        &data[10 << 20..(10 << 20) + 7],
        b"payload",
        "data copied on first write"
    );
    assert_eq!(data.last(), Some(&b'!'));
    assert_eq!(mode(&s.m("big")), 0o600);
}

#[test]
fn sparse_1gib_file_copies_up_sparse() {
    let s = Stack::new(1);
    let f = fs::File::create(s.l(0, "sparse")).unwrap();
    f.set_len(1 << 30).unwrap();
    drop(f);
    let mut f = OpenOptions::new().write(true).open(s.l(0, "sparse")).unwrap();
    f.seek(SeekFrom::Start(512 << 20)).unwrap();
    f.write_all(b"middle").unwrap();
    drop(f);
    let _m = s.mount();
    let mut f = OpenOptions::new().write(true).open(s.m("sparse")).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(b"x").unwrap();
    drop(f);
    let md = fs::metadata(s.u("sparse")).unwrap();
    assert_eq!(md.len(), 1 << 30);
    assert!(
        md.blocks() * 512 < 1 << 20,
        "upper copy allocates {} bytes",
        md.blocks() * 512
    );
    let mut f = fs::File::open(s.m("sparse")).unwrap();
    f.seek(SeekFrom::Start(512 << 20)).unwrap();
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut f, &mut buf).unwrap();
    assert_eq!(&buf, b"middle");
}

#[test]
fn concurrent_first_writes_copy_up_once() {
    let s = Stack::new(1);
    write(s.l(0, "shared"), &"-".repeat(8 * 4096));
    let _m = s.mount();
    let path = s.m("shared");
    std::thread::scope(|sc| {
        for t in 0..8u64 {
            let path = path.clone();
            sc.spawn(move || {
                let f = OpenOptions::new().write(true).open(&path).unwrap();
                std::os::unix::fs::FileExt::write_all_at(&f, &[b'a' + t as u8; 4096], t * 4096).unwrap();
            });
        }
    });
    let data = fs::read(s.m("shared")).unwrap();
    for t in 0..8usize {
        assert!(
            data[t * 4096..(t + 1) * 4096].iter().all(|b| *b == b'a' + t as u8),
            "region {t} lost"
        );
    }
    assert_eq!(fs::read(s.u("shared")).unwrap(), data);
    assert!(names(s.work.join("staging")).is_empty(), "no staged leftovers");
}

#[test]
fn symlinks_and_fifos_copy_up_as_themselves() {
    let s = Stack::new(1);
    symlink("target/of/link", s.l(0, "sl")).unwrap();
    mknod(&s.l(0, "fifo"), libc::S_IFIFO | 0o644, 0).unwrap();
    let _m = s.mount();
    std::os::unix::fs::lchown(s.m("sl"), Some(5), Some(5)).unwrap();
    fs::set_permissions(s.m("fifo"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::read_link(s.u("sl")).unwrap(), Path::new("target/of/link"));
    assert_eq!(fs::symlink_metadata(s.u("sl")).unwrap().uid(), 5);
    assert!(fs::symlink_metadata(s.u("fifo")).unwrap().file_type().is_fifo());
    assert_eq!(mode(&s.m("fifo")), 0o600);
}

// ---- hard links and inode numbers ----

#[test]
fn hard_links_in_a_lower_stay_one_file_across_copy_up() {
    let s = Stack::new(1);
    write(s.l(0, "h1"), "orig");
    fs::create_dir(s.l(0, "d")).unwrap();
    fs::hard_link(s.l(0, "h1"), s.l(0, "d/h2")).unwrap();
    let m = s.mount();
    let (i1, i2) = (ino(&s.m("h1")), ino(&s.m("d/h2")));
    assert_eq!(i1, i2);
    assert_eq!(fs::metadata(s.m("h1")).unwrap().nlink(), 2);
    let mut f = OpenOptions::new().append(true).open(s.m("h1")).unwrap();
    f.write_all(b"+new").unwrap();
    drop(f);
    assert_eq!(read(s.m("d/h2")), "orig+new");
    assert_eq!(ino(&s.m("d/h2")), i1);
    assert_eq!(fs::metadata(s.m("h1")).unwrap().nlink(), 2);
    drop(m);
    // After a remount the other name still shows the written data.
    let _m = s.mount();
    assert_eq!(read(s.m("d/h2")), "orig+new");
    assert_eq!(ino(&s.m("d/h2")), ino(&s.m("h1")));
    fs::remove_file(s.m("h1")).unwrap();
    assert_eq!(fs::metadata(s.m("d/h2")).unwrap().nlink(), 1);
    fs::hard_link(s.m("d/h2"), s.m("h3")).unwrap();
    assert_eq!(fs::metadata(s.m("h3")).unwrap().nlink(), 2);
    assert_eq!(read(s.m("h3")), "orig+new");
}

/// `ls -l` of each name (READDIRPLUS: a lookup of every entry, in listing order),
/// like the kernel does it: the listing itself, then a stat of every name.
fn list_with_stats(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let md = fs::symlink_metadata(e.path()).unwrap();
            (e.file_name().to_string_lossy().into_owned(), md.ino())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn hard_linked_lower_file_survives_listing_rename_and_listing() {
    // A listing with stats makes the node of a file with two names known by both; the
    // rename copies one name up, and the next listing looks the other (lower) name up
    // again. Every name must then still open, stat and read the same data.
    for (second_name_first, rename_back) in [(false, false), (true, false), (false, true), (true, true)] {
        let s = Stack::new(1);
        let (a, b) = match second_name_first {
            false => ("h1", "h2"),
            true => ("h2", "h1"),
        };
        write(s.l(0, a), "hard");
        fs::hard_link(s.l(0, a), s.l(0, b)).unwrap();
        let _m = s.mount();
        let before = list_with_stats(&s.mnt);
        assert_eq!(before.len(), 2);
        assert_eq!(before[0].1, before[1].1, "two names, one inode");
        fs::rename(s.m("h1"), s.m("h1.moved")).unwrap();
        list_with_stats(&s.mnt);
        assert_eq!(read(s.m("h1.moved")), "hard", "renamed name reads (order {a},{b})");
        assert_eq!(read(s.m("h2")), "hard");
        let mut live = vec!["h1.moved", "h2"];
        if rename_back {
            fs::rename(s.m("h1.moved"), s.m("h1")).unwrap();
            list_with_stats(&s.mnt);
            live = vec!["h1", "h2"];
        }
        for n in &live {
            assert_eq!(
                read(s.m(n)),
                "hard",
                "{n} after rename (order {a},{b}, back {rename_back})"
            );
            assert_eq!(ino(&s.m(n)), before[0].1, "{n} keeps its inode number");
            assert_eq!(fs::metadata(s.m(n)).unwrap().nlink(), 2, "{n}: two names");
        }
        // A write through one name shows through the other, and removing the name
        // used for I/O leaves the other readable.
        let mut f = OpenOptions::new().append(true).open(s.m(live[1])).unwrap();
        f.write_all(b"+more").unwrap();
        drop(f);
        assert_eq!(read(s.m(live[0])), "hard+more");
        fs::remove_file(s.m(live[0])).unwrap();
        list_with_stats(&s.mnt);
        assert_eq!(read(s.m(live[1])), "hard+more");
        assert_eq!(fs::metadata(s.m(live[1])).unwrap().nlink(), 1);
        assert_eq!(read(s.l(0, a)), "hard", "the lower is unchanged");
    }
}

#[test]
fn a_fifo_put_behind_the_mount_in_place_of_a_file_never_hangs_an_open() {
    // The kernel opens only regular files through the daemon; if the name the daemon
    // does I/O by leads to a fifo now (the upper changed behind the mount), the open
    // must fail, not wait for a writer forever.
    let s = Stack::new(1);
    write(s.l(0, "f"), "data");
    let _m = s.mount();
    fs::set_permissions(s.m("f"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(read(s.m("f")), "data");
    fs::remove_file(s.u("f")).unwrap();
    let c = std::ffi::CString::new(s.u("f").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let p = s.m("f");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::os::unix::fs::OpenOptionsExt;
        let f = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&p);
        let _ = tx.send(f.map(|f| f.metadata().unwrap().file_type()));
    });
    let r = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("a non-blocking open through the mount hung on a fifo in the upper");
    // The kernel, told the file is stale, looks the name up again: it is a fifo now,
    // and opens as one.
    if let Ok(t) = r {
        assert!(t.is_fifo(), "a fifo served as a regular file's data: {t:?}");
    }
}

#[test]
fn opens_racing_with_exchanges_read_the_file_they_opened() {
    // A rename moves the node's names while the kernel may already be asking for the
    // node (an OPEN, a READLINK): answered from the name a rename just gave another
    // entry, an open read the other file's data under this file's inode number.
    let s = Stack::new(1);
    write(s.l(0, "a"), "AAAA");
    write(s.l(0, "b"), "BBBB");
    let _m = s.mount();
    rename2(&s.m("a"), &s.m("b"), libc::RENAME_EXCHANGE).unwrap();
    rename2(&s.m("a"), &s.m("b"), libc::RENAME_EXCHANGE).unwrap();
    let (ia, ib) = (ino(&s.m("a")), ino(&s.m("b")));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (st, ap, bp) = (stop.clone(), s.m("a"), s.m("b"));
    let swapper = std::thread::spawn(move || {
        let mut n = 0;
        while !st.load(std::sync::atomic::Ordering::Relaxed) {
            rename2(&ap, &bp, libc::RENAME_EXCHANGE).unwrap();
            n += 1;
        }
        n
    });
    let t0 = std::time::Instant::now();
    let (mut bad, mut opens) = (Vec::new(), 0);
    while t0.elapsed() < std::time::Duration::from_secs(3) {
        for name in ["a", "b"] {
            let Ok(mut f) = fs::File::open(s.m(name)) else { continue };
            opens += 1;
            let i = f.metadata().unwrap().ino();
            let mut d = String::new();
            std::io::Read::read_to_string(&mut f, &mut d).unwrap();
            let want = if i == ia {
                "AAAA"
            } else if i == ib {
                "BBBB"
            } else {
                "?"
            };
            if d != want {
                bad.push(format!("{name}: inode {i:#x} read {d:?}"));
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 0 && opens > 0);
    assert!(
        bad.is_empty(),
        "{} opens of {opens} read another file's data ({swaps} exchanges): {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
}

#[test]
fn inode_numbers_are_stable_across_copy_up_and_unique_across_layers() {
    let s = Stack::new(3);
    for i in 0..3 {
        write(s.l(i, &format!("f{i}")), "x");
    }
    write(s.l(2, "d/inner"), "x");
    let _m = s.mount();
    let before: Vec<u64> = (0..3).map(|i| ino(&s.m(&format!("f{i}")))).collect();
    let mut all = before.clone();
    all.push(ino(&s.m("d")));
    all.push(ino(&s.m("d/inner")));
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 5, "inode numbers unique across layers");
    let dino = ino(&s.m("d"));
    for i in 0..3 {
        let mut f = OpenOptions::new().append(true).open(s.m(&format!("f{i}"))).unwrap();
        f.write_all(b"y").unwrap();
    }
    write(s.m("d/new"), "n");
    let after: Vec<u64> = (0..3).map(|i| ino(&s.m(&format!("f{i}")))).collect();
    assert_eq!(before, after);
    assert_eq!(ino(&s.m("d")), dino, "directory keeps its number after copy-up");
    let listed: Vec<u64> = fs::read_dir(&s.mnt)
        .unwrap()
        .map(|e| std::os::unix::fs::DirEntryExt::ino(&e.unwrap()))
        .collect();
    for i in &after {
        assert!(listed.contains(i), "readdir d_ino matches st_ino");
    }
}

// ---- rename ----

#[test]
fn rename_file_across_layers_whites_out_old_name() {
    let s = Stack::new(2);
    write(s.l(1, "src/f"), "data");
    write(s.l(0, "dst/g"), "old");
    let _m = s.mount();
    fs::rename(s.m("src/f"), s.m("dst/g")).unwrap();
    assert_eq!(read(s.m("dst/g")), "data");
    assert!(!exists(s.m("src/f")));
    assert!(exists(s.u("src/.wh.f")));
}

#[test]
fn rename_lower_directory_moves_whole_subtree() {
    let s = Stack::new(2);
    write(s.l(1, "d/a"), "a");
    write(s.l(0, "d/sub/b"), "b");
    write(s.l(1, "d/sub/c"), "c");
    let _m = s.mount();
    fs::rename(s.m("d"), s.m("e")).unwrap();
    assert!(!exists(s.m("d")));
    assert_eq!(names(s.m("e")), ["a", "sub"]);
    assert_eq!(names(s.m("e/sub")), ["b", "c"]);
    assert_eq!(read(s.m("e/sub/c")), "c");
    fs::create_dir(s.m("d")).unwrap();
    assert!(
        names(s.m("d")).is_empty(),
        "old name does not come back with old children"
    );
}

#[test]
fn rename_noreplace_and_exchange() {
    let s = Stack::new(1);
    write(s.l(0, "a"), "A");
    write(s.l(0, "b"), "B");
    write(s.l(0, "da/x"), "x");
    write(s.l(0, "db/y"), "y");
    let _m = s.mount();
    assert_eq!(rename2(&s.m("a"), &s.m("b"), libc::RENAME_NOREPLACE), Err(libc::EEXIST));
    rename2(&s.m("a"), &s.m("b"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!((read(s.m("a")), read(s.m("b"))), ("B".into(), "A".into()));
    rename2(&s.m("da"), &s.m("db"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(names(s.m("da")), ["y"]);
    assert_eq!(names(s.m("db")), ["x"]);
    assert_eq!(
        rename2(&s.m("a"), &s.m("nonexistent"), libc::RENAME_EXCHANGE),
        Err(libc::ENOENT)
    );
    rename2(&s.m("a"), &s.m("c"), libc::RENAME_NOREPLACE).unwrap();
    assert_eq!(read(s.m("c")), "B");
}

#[test]
fn rename_directory_over_empty_lower_directory() {
    let s = Stack::new(1);
    write(s.l(0, "src/keep"), "k");
    fs::create_dir_all(s.l(0, "dst")).unwrap();
    write(s.l(0, "full/x"), "x");
    let _m = s.mount();
    assert_eq!(
        fs::rename(s.m("src"), s.m("full")).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    fs::rename(s.m("src"), s.m("dst")).unwrap();
    assert_eq!(names(s.m("dst")), ["keep"]);
}

// ---- everything else ----

#[test]
fn xattrs_roundtrip_and_statfs() {
    let s = Stack::new(1);
    write(s.l(0, "f"), "x");
    let _m = s.mount();
    let f = s.m("f");
    assert_eq!(getxattr(&f, "user.a"), Err(libc::ENODATA));
    setxattr(&f, "user.a", b"1").unwrap();
    setxattr(&f, "user.b", b"22").unwrap();
    assert_eq!(listxattr(&f), ["user.a", "user.b"]);
    assert_eq!(getxattr(&f, "user.b").unwrap(), b"22");
    removexattr(&f, "user.a").unwrap();
    assert_eq!(listxattr(&f), ["user.b"]);
    assert_eq!(removexattr(&f, "user.zz"), Err(libc::ENODATA));
    // SAFETY: statvfs on a valid path into a zeroed struct.
    let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
    let p = std::ffi::CString::new(s.mnt.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::statvfs(p.as_ptr(), &mut sv) }, 0);
    assert!(sv.f_blocks > 0 && sv.f_namemax == 255);
}

#[test]
fn read_only_mount_without_upper() {
    let s = Stack::new(2);
    write(s.l(1, "f"), "x");
    let _m = s.mount_ro();
    assert_eq!(read(s.m("f")), "x");
    assert_eq!(fs::write(s.m("f"), "y").unwrap_err().raw_os_error(), Some(libc::EROFS));
    assert_eq!(
        fs::write(s.m("new"), "y").unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    assert_eq!(fs::remove_file(s.m("f")).unwrap_err().raw_os_error(), Some(libc::EROFS));
    assert_eq!(read(s.l(1, "f")), "x");
}

#[test]
fn open_unlinked_file_still_works() {
    let s = Stack::new(1);
    let _m = s.mount();
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(s.m("tmp"))
        .unwrap();
    fs::remove_file(s.m("tmp")).unwrap();
    f.write_all(b"still here").unwrap();
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut s2 = String::new();
    std::io::Read::read_to_string(&mut f, &mut s2).unwrap();
    assert_eq!(s2, "still here");
}

/// fstat of an open directory whose name is gone works as on ext4 (nlink 0), for a
/// directory made through the mount and for a lower one (replaced by a whiteout).
#[test]
fn open_removed_directory_can_still_be_stated() {
    let s = Stack::new(1);
    fs::create_dir(s.l(0, "lowdir")).unwrap();
    let _m = s.mount();
    fs::create_dir(s.m("newdir")).unwrap();
    for name in ["newdir", "lowdir"] {
        let d = fs::File::open(s.m(name)).unwrap();
        let ino = d.metadata().unwrap().ino();
        fs::remove_dir(s.m(name)).unwrap();
        assert!(!exists(s.m(name)), "{name} still visible");
        let md = d.metadata().unwrap_or_else(|e| panic!("fstat of removed {name}: {e}"));
        assert!(md.is_dir(), "{name}");
        assert_eq!(md.ino(), ino, "{name}");
        assert_eq!(md.nlink(), 0, "{name}");
    }
}

#[test]
fn uid_and_gid_mappings_apply_to_ownership() {
    let s = Stack::new(1);
    write(s.l(0, "root-owned"), "x");
    write(s.l(0, "user-owned"), "x");
    std::os::unix::fs::lchown(s.l(0, "user-owned"), Some(5), Some(5)).unwrap();
    std::os::unix::fs::lchown(s.l(0, "root-owned"), Some(0), Some(0)).unwrap();
    {
        let _m = s.mount_with("uidmapping=0:1000:1:1:100000:65536,gidmapping=0:2000:1:1:200000:65536");
        let md = fs::metadata(s.m("root-owned")).unwrap();
        assert_eq!((md.uid(), md.gid()), (1000, 2000));
        let md = fs::metadata(s.m("user-owned")).unwrap();
        assert_eq!((md.uid(), md.gid()), (100004, 200004));
        std::os::unix::fs::chown(s.m("root-owned"), Some(100009), Some(200009)).unwrap();
        let md = fs::metadata(s.u("root-owned")).unwrap();
        assert_eq!((md.uid(), md.gid()), (10, 10), "stored as container ids");
    }
    let _m = s.mount_with("squash_to_uid=77,squash_to_gid=88");
    let md = fs::metadata(s.m("user-owned")).unwrap();
    assert_eq!((md.uid(), md.gid()), (77, 88));
}

#[test]
fn truncating_a_metadata_only_copy_drops_its_lower_data() {
    let s = Stack::new(1);
    // Large enough for metadata-only copies.
    let lower = |n: &str| format!("lower data {n}").repeat(30_000);
    for n in ["a", "b", "c"] {
        write(s.l(0, n), &lower(n));
    }
    let _m = s.mount_with("metacopy=on");
    for n in ["a", "b", "c"] {
        fs::set_permissions(s.m(n), fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(fs::metadata(s.u(n)).unwrap().blocks(), 0, "{n}: metadata-only copy");
    }
    OpenOptions::new().write(true).truncate(true).open(s.m("a")).unwrap();
    fs::File::options()
        .write(true)
        .open(s.m("b"))
        .unwrap()
        .set_len(0)
        .unwrap();
    let c = std::ffi::CString::new(s.m("c").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; the fd is closed right away.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_TRUNC) };
    assert!(fd >= 0, "open O_RDONLY|O_TRUNC: {}", errno());
    // SAFETY: fd is a valid open descriptor.
    unsafe { libc::close(fd) };
    for n in ["a", "b", "c"] {
        assert_eq!(read(s.m(n)), "", "{n} is empty after truncation");
        assert_eq!(read(s.l(0, n)), lower(n), "lower {n} untouched");
    }
}

#[test]
fn reading_through_the_mount_leaves_lower_access_times_alone() {
    let s = Stack::new(1);
    write(s.l(0, "d/f"), "data");
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_500_000_000);
    for p in [s.l(0, "d/f"), s.l(0, "d")] {
        let f = fs::File::open(&p).unwrap();
        f.set_times(fs::FileTimes::new().set_accessed(old)).unwrap();
    }
    let _m = s.mount();
    assert_eq!(read(s.m("d/f")), "data");
    assert_eq!(names(s.m("d")), ["f"]);
    for p in [s.l(0, "d/f"), s.l(0, "d")] {
        assert_eq!(
            fs::metadata(&p).unwrap().atime(),
            1_500_000_000,
            "{} atime",
            p.display()
        );
    }
}

#[test]
fn write_only_opens_bring_data_up_only_when_written() {
    let s = Stack::new(1);
    let data: Vec<u8> = (0..(4 << 20)).map(|i| (i % 251) as u8).collect();
    fs::write(s.l(0, "touched"), &data).unwrap();
    fs::write(s.l(0, "written"), &data).unwrap();
    fs::write(s.l(0, "replaced"), &data).unwrap();
    let _m = s.mount_with("metacopy=on");
    // touch: open for writing, set times, close
    let f = OpenOptions::new().write(true).open(s.m("touched")).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(2_000_000))
        .unwrap();
    drop(f);
    assert_eq!(
        fs::metadata(s.u("touched")).unwrap().blocks(),
        0,
        "touch copies no data"
    );
    assert_eq!(fs::metadata(s.m("touched")).unwrap().mtime(), 2_000_000);
    assert_eq!(fs::read(s.m("touched")).unwrap(), data);
    // a write in the middle: the rest of the data comes up with it
    let f = OpenOptions::new().write(true).open(s.m("written")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"XYZ", 1000).unwrap();
    drop(f);
    let mut want = data.clone();
    want[1000..1003].copy_from_slice(b"XYZ");
    assert_eq!(fs::read(s.m("written")).unwrap(), want);
    assert_eq!(fs::read(s.u("written")).unwrap(), want);
    // > file: truncated, nothing of the old data copied
    fs::write(s.m("replaced"), "new").unwrap();
    assert_eq!(read(s.m("replaced")), "new");
    assert_eq!(fs::read(s.l(0, "replaced")).unwrap(), data, "lower untouched");
}

#[test]
fn readers_and_writers_of_one_file_open_together() {
    let s = Stack::new(1);
    write(s.l(0, "f"), "lower");
    let _m = s.mount();
    // A reader of the lower file stays open while writers copy it up and write.
    let mut r = fs::File::open(s.m("f")).unwrap();
    let mut w1 = OpenOptions::new().read(true).write(true).open(s.m("f")).unwrap();
    w1.write_all(b"UPPER").unwrap();
    let mut w2 = OpenOptions::new().append(true).open(s.m("f")).unwrap();
    w2.write_all(b"+more").unwrap();
    let mut got = String::new();
    std::io::Read::read_to_string(&mut r, &mut got).unwrap();
    assert!(!got.is_empty());
    let r2 = fs::read_to_string(s.m("f")).unwrap();
    assert_eq!(r2, "UPPER+more");
    w1.seek(SeekFrom::Start(0)).unwrap();
    let mut via_w1 = String::new();
    std::io::Read::read_to_string(&mut w1, &mut via_w1).unwrap();
    assert_eq!(via_w1, "UPPER+more");
    // The writes went to the copy, not through the reader's file to the lower (a
    // union filesystem that passes lower files through can get this wrong).
    assert_eq!(fs::read_to_string(s.l(0, "f")).unwrap(), "lower", "lower layer changed");
    assert_eq!(fs::read_to_string(s.u("f")).unwrap(), "UPPER+more");
}

#[test]
fn renamed_lower_directory_keeps_its_mtime() {
    let s = Stack::new(1);
    write(s.l(0, "d/f"), "x");
    let f = fs::File::open(s.l(0, "d")).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000))
        .unwrap();
    drop(f);
    let _m = s.mount();
    fs::rename(s.m("d"), s.m("e")).unwrap();
    assert_eq!(fs::metadata(s.m("e")).unwrap().mtime(), 1_000_000_000);
    assert_eq!(fs::metadata(s.u("e")).unwrap().mtime(), 1_000_000_000);
}

/// The second lookup in a directory reads its small lower directories once, and
/// later names in them are answered from those listings: whiteouts of both forms,
/// opaque directories (both forms) and plain names must come out as on disk, in a
/// small directory (kept whole) and in one too large to keep (asked on disk).
#[test]
fn lookups_answered_from_kept_listings_see_what_is_on_disk() {
    let s = Stack::new(3);
    let big = 700; // more entries than a lookup keeps
    for (dir, n) in [("small", 20), ("big", big)] {
        for i in 0..n {
            write(s.l(2, &format!("{dir}/bottom{i}")), "2");
            if i % 2 == 0 {
                write(s.l(1, &format!("{dir}/mid{i}")), "1");
            }
        }
        write(s.l(0, &format!("{dir}/first")), "0");
        // Whiteouts in the top lower: AUFS form and overlayfs form.
        write(s.l(0, &format!("{dir}/.wh.bottom1")), "");
        overlay_whiteout(&s.l(0, &format!("{dir}/bottom2")));
        write(s.l(1, &format!("{dir}/.wh.bottom3")), "");
        // Opaque directories in the middle layer hide the bottom's.
        for (sub, aufs) in [("opq_aufs", true), ("opq_xattr", false)] {
            write(s.l(2, &format!("{dir}/{sub}/hidden")), "2");
            write(s.l(1, &format!("{dir}/{sub}/shown")), "1");
            if aufs {
                write(s.l(1, &format!("{dir}/{sub}/.wh..wh..opq")), "");
            } else {
                setxattr(&s.l(1, &format!("{dir}/{sub}")), "trusted.overlay.opaque", b"y").unwrap();
            }
        }
        write(s.l(2, &format!("{dir}/merged/low")), "2");
        write(s.l(0, &format!("{dir}/merged/high")), "0");
    }
    let m = s.mount();
    for dir in ["small", "big"] {
        let p = |n: &str| s.m(&format!("{dir}/{n}"));
        // The first lookup in the directory asks each layer on disk; the ones after
        // it use the listings.
        assert_eq!(read(p("first")), "0", "{dir}");
        for (name, want) in [
            ("bottom0", Some("2")),
            ("bottom1", None),
            ("bottom2", None),
            ("bottom3", None),
            ("bottom4", Some("2")),
            ("mid4", Some("1")),
            ("mid5", None),
            ("nothing", None),
            ("opq_aufs/shown", Some("1")),
            ("opq_aufs/hidden", None),
            ("opq_xattr/shown", Some("1")),
            ("opq_xattr/hidden", None),
            ("merged/low", Some("2")),
            ("merged/high", Some("0")),
            (".wh.bottom1", None),
        ] {
            match want {
                Some(v) => assert_eq!(read(p(name)), v, "{dir}/{name}"),
                None => assert!(!exists(p(name)), "{dir}/{name} must not be visible"),
            }
        }
        let listed = names(s.m(dir));
        assert!(!listed
            .iter()
            .any(|n| n == "bottom1" || n == "bottom2" || n == "bottom3"));
        assert!(listed.iter().any(|n| n == "bottom5") && listed.iter().any(|n| n == "mid6"));
    }
    assert_eq!(names(s.m("big")).len(), big - 3 + big / 2 + 4);
    m.finish();
}
