//! Removing and renaming entries that live in lower layers.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::MetadataExt;

#[test]
fn unlink_of_lower_file_leaves_whiteout() {
    let fx = Fixture::new(2);
    fx.lower(1).file("f", "l1").file("d/g", "l1");
    fx.lower(0).file("f", "l0");
    let m = fx.mount();

    fs::remove_file(m.p("f")).unwrap();
    fs::remove_file(m.p("d/g")).unwrap();

    for n in ["f", "d/g"] {
        assert_errno(lstat(&m.p(n)), libc::ENOENT, n);
    }
    assert_eq!(names(m.path()), strs(&["d"]));
    assert!(names(&m.p("d")).is_empty());
    for wh in [".wh.f", "d/.wh.g"] {
        let st = meta(&fx.upper().p(wh));
        assert!(st.is_file() && st.len() == 0, "{wh} must be an empty regular file");
    }
    // The name can be used again, and then shows the new file only.
    fs::write(m.p("f"), "new").unwrap();
    assert_eq!(read_string(&m.p("f")), "new");
    assert_eq!(read_string(&fx.upper().p("f")), "new");
    m.finish();
}

#[test]
fn unlink_of_upper_only_file_leaves_no_whiteout() {
    let fx = Fixture::new(1);
    fx.lower(0).dir("d");
    let m = fx.mount();
    fs::write(m.p("d/tmp"), "x").unwrap();
    fs::remove_file(m.p("d/tmp")).unwrap();
    assert_errno(lstat(&m.p("d/tmp")), libc::ENOENT, "d/tmp");
    assert!(
        !exists(&fx.upper().p("d/.wh.tmp")),
        "no whiteout needed for a name no lower has"
    );
    m.finish();
}

#[test]
fn rm_rf_then_mkdir_gives_an_empty_opaque_dir() {
    let fx = Fixture::new(2);
    fx.lower(1).file("d/a", "x").file("d/sub/b", "x");
    fx.lower(0).file("d/c", "x").file("d/sub/e", "x");
    let m = fx.mount();

    fs::remove_dir_all(m.p("d")).unwrap();
    assert_errno(lstat(&m.p("d")), libc::ENOENT, "d after rm -rf");
    fs::create_dir(m.p("d")).unwrap();

    assert!(names(&m.p("d")).is_empty(), "new d lists {:?}", names(&m.p("d")));
    for n in ["a", "c", "sub", "sub/b"] {
        assert_errno(lstat(&m.p(format!("d/{n}"))), libc::ENOENT, n);
    }
    assert!(
        meta(&fx.upper().p("d").join(OPQ)).is_file(),
        "new d must carry the opaque marker"
    );
    // New content in it is visible alone.
    fs::write(m.p("d/a"), "fresh").unwrap();
    assert_eq!(names(&m.p("d")), strs(&["a"]));
    assert_eq!(read_string(&m.p("d/a")), "fresh");
    m.finish();
}

#[test]
fn rmdir_of_non_empty_merged_dir_fails() {
    let fx = Fixture::new(1);
    fx.lower(0)
        .file("lower_only/f", "x")
        .file("merged/f", "x")
        .dir("empty")
        .file("emptied/f", "x");
    let m = fx.mount();
    fs::write(m.p("merged/u"), "x").unwrap();

    assert_errno(fs::remove_dir(m.p("lower_only")), libc::ENOTEMPTY, "rmdir lower_only");
    assert_errno(fs::remove_dir(m.p("merged")), libc::ENOTEMPTY, "rmdir merged");
    fs::remove_file(m.p("merged/u")).unwrap();
    assert_errno(
        fs::remove_dir(m.p("merged")),
        libc::ENOTEMPTY,
        "rmdir merged with lower child",
    );
    assert_eq!(names(&m.p("merged")), strs(&["f"]));

    // Once every name is gone (whited out) rmdir works and leaves a whiteout.
    fs::remove_dir(m.p("empty")).unwrap();
    fs::remove_file(m.p("emptied/f")).unwrap();
    fs::remove_dir(m.p("emptied")).unwrap();
    for d in ["empty", "emptied"] {
        assert_errno(lstat(&m.p(d)), libc::ENOENT, d);
        assert!(meta(&fx.upper().p(format!(".wh.{d}"))).is_file(), "whiteout for {d}");
    }
    assert_eq!(names(m.path()), strs(&["lower_only", "merged"]));
    m.finish();
}

#[test]
fn rename_file_across_layers_whites_out_old_name() {
    let fx = Fixture::new(2);
    fx.lower(1).file("from_l1", "one").file("dst/over", "old");
    fx.lower(0).file("d/from_l0", "zero").dir("dst");
    let m = fx.mount();

    fs::rename(m.p("from_l1"), m.p("dst/moved")).unwrap();
    fs::rename(m.p("d/from_l0"), m.p("dst/over")).unwrap(); // replaces a lower file

    assert_eq!(read_string(&m.p("dst/moved")), "one");
    assert_eq!(read_string(&m.p("dst/over")), "zero");
    assert_errno(lstat(&m.p("from_l1")), libc::ENOENT, "from_l1");
    assert_errno(lstat(&m.p("d/from_l0")), libc::ENOENT, "d/from_l0");
    assert_eq!(names(&m.p("dst")), strs(&["moved", "over"]));
    assert!(names(&m.p("d")).is_empty());

    assert!(meta(&fx.upper().p(".wh.from_l1")).is_file());
    assert!(meta(&fx.upper().p("d/.wh.from_l0")).is_file());
    assert!(meta(&fx.upper().p("dst/moved")).is_file());
    assert!(meta(&fx.upper().p("dst/over")).is_file());
    m.finish();
}

#[test]
fn rename_of_lower_directory_moves_whole_subtree() {
    let fx = Fixture::new(2);
    fx.lower(1).file("d/a", "a").file("d/sub/b", "b").symlink("d/link", "a");
    fx.lower(0).file("d/c", "c").file("d/sub/deeper/e", "e");
    let m = fx.mount();
    let inos: Vec<u64> = ["d/a", "d/sub/b", "d/c"].iter().map(|n| ino(&m.p(n))).collect();

    fs::rename(m.p("d"), m.p("renamed")).unwrap();

    assert_errno(lstat(&m.p("d")), libc::ENOENT, "old name");
    assert_errno(lstat(&m.p("d/a")), libc::ENOENT, "old child");
    assert_eq!(names(m.path()), strs(&["renamed"]));
    assert_eq!(names(&m.p("renamed")), strs(&["a", "c", "link", "sub"]));
    assert_eq!(names(&m.p("renamed/sub")), strs(&["b", "deeper"]));
    for (n, c) in [
        ("a", "a"),
        ("c", "c"),
        ("sub/b", "b"),
        ("sub/deeper/e", "e"),
        ("link", "a"),
    ] {
        assert_eq!(read_string(&m.p(format!("renamed/{n}"))), c, "renamed/{n}");
    }
    let after: Vec<u64> = ["renamed/a", "renamed/sub/b", "renamed/c"]
        .iter()
        .map(|n| ino(&m.p(n)))
        .collect();
    assert_eq!(inos, after, "inode numbers survive the rename");
    assert!(meta(&fx.upper().p(".wh.d")).is_file(), "old name whited out in upper");
    assert!(meta(&fx.upper().p("renamed")).is_dir());

    // A new directory under the old name is empty.
    fs::create_dir(m.p("d")).unwrap();
    assert!(names(&m.p("d")).is_empty());
    m.finish();
}

#[test]
fn rename_noreplace() {
    let fx = Fixture::new(1);
    fx.lower(0).file("a", "A").file("b", "B");
    let m = fx.mount();

    assert_errno(
        renameat2(&m.p("a"), &m.p("b"), libc::RENAME_NOREPLACE),
        libc::EEXIST,
        "NOREPLACE onto b",
    );
    assert_eq!(read_string(&m.p("a")), "A");
    assert_eq!(read_string(&m.p("b")), "B");
    fs::write(m.p("u"), "U").unwrap();
    assert_errno(
        renameat2(&m.p("u"), &m.p("a"), libc::RENAME_NOREPLACE),
        libc::EEXIST,
        "NOREPLACE upper onto a",
    );

    renameat2(&m.p("a"), &m.p("c"), libc::RENAME_NOREPLACE).unwrap();
    assert_eq!(read_string(&m.p("c")), "A");
    assert_errno(lstat(&m.p("a")), libc::ENOENT, "a after rename");
    // A whited-out name counts as free.
    renameat2(&m.p("b"), &m.p("a"), libc::RENAME_NOREPLACE).unwrap();
    assert_eq!(read_string(&m.p("a")), "B");
    assert_eq!(names(m.path()), strs(&["a", "c", "u"]));
    m.finish();
}

#[test]
fn rename_exchange() {
    let fx = Fixture::new(1);
    fx.lower(0)
        .file("a", "A")
        .file("b", "B")
        .file("d/inner", "I")
        .file("e", "E");
    let m = fx.mount();
    fs::write(m.p("u"), "U").unwrap();
    let (ia, ib) = (ino(&m.p("a")), ino(&m.p("b")));

    renameat2(&m.p("a"), &m.p("b"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(read_string(&m.p("a")), "B");
    assert_eq!(read_string(&m.p("b")), "A");
    assert_eq!(
        (ino(&m.p("a")), ino(&m.p("b"))),
        (ib, ia),
        "inodes travel with the data"
    );

    // Lower with upper-only.
    renameat2(&m.p("e"), &m.p("u"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(read_string(&m.p("e")), "U");
    assert_eq!(read_string(&m.p("u")), "E");

    // A lower directory with a file.
    renameat2(&m.p("d"), &m.p("a"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(read_string(&m.p("a/inner")), "I");
    assert_eq!(read_string(&m.p("d")), "B");

    assert_errno(
        renameat2(&m.p("a"), &m.p("missing"), libc::RENAME_EXCHANGE),
        libc::ENOENT,
        "EXCHANGE with a missing name",
    );
    assert_eq!(names(m.path()), strs(&["a", "b", "d", "e", "u"]));
    for n in ["b", "d", "e", "u"] {
        assert!(meta(&fx.upper().p(n)).is_file(), "upper {n}");
    }
    assert!(meta(&fx.upper().p("a")).is_dir(), "upper a");
    assert_eq!(names(&m.p("a")), strs(&["inner"]));
    m.finish();
}

#[test]
fn rename_over_lower_dir_requires_it_empty() {
    let fx = Fixture::new(1);
    fx.lower(0)
        .file("full/f", "x")
        .dir("empty")
        .dir("src")
        .file("src/g", "g");
    let m = fx.mount();
    assert_errno(
        fs::rename(m.p("src"), m.p("full")),
        libc::ENOTEMPTY,
        "rename onto non-empty dir",
    );
    fs::rename(m.p("src"), m.p("empty")).unwrap();
    assert_eq!(names(&m.p("empty")), strs(&["g"]));
    assert!(meta(&m.p("empty")).nlink() >= 2);
    assert_errno(lstat(&m.p("src")), libc::ENOENT, "src after rename");
    m.finish();
}
