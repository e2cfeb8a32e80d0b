//! Inode numbers and hard links.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// st_ino of every entry below `root`, by relative path.
fn all_inos(root: &Path) -> BTreeMap<String, u64> {
    tree(root)
        .into_iter()
        .map(|rel| (rel.clone(), ino(&root.join(&rel))))
        .collect()
}

#[test]
fn hard_links_in_a_lower_share_an_inode_before_and_after_copy_up() {
    let fx = Fixture::new(1);
    fx.lower(0)
        .file("a", "original")
        .hardlink("a", "b")
        .hardlink("a", "d/c");
    let m = fx.mount();

    let (a, b, c) = (meta(&m.p("a")), meta(&m.p("b")), meta(&m.p("d/c")));
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.ino(), c.ino());
    assert_eq!(a.nlink(), 3);

    pwrite(&m.p("b"), 0, b"REWRITTEN");
    for n in ["a", "b", "d/c"] {
        assert_eq!(read_string(&m.p(n)), "REWRITTEN", "{n} after writing through b");
        assert_eq!(ino(&m.p(n)), a.ino(), "st_ino of {n} after copy-up");
    }
    assert_eq!(meta(&m.p("a")).nlink(), 3);
    // The inode went up under at least one of its names, with the new data.
    let up: Vec<&str> = ["a", "b", "d/c"]
        .into_iter()
        .filter(|n| exists(&fx.upper().p(n)))
        .collect();
    assert!(!up.is_empty(), "no name of the written inode is in the upper layer");
    for n in &up {
        assert_eq!(read_string(&fx.upper().p(n)), "REWRITTEN", "upper {n}");
    }
    m.finish();

    // All names still agree after a remount.
    let m = fx.mount();
    let i = ino(&m.p("a"));
    for n in ["a", "b", "d/c"] {
        assert_eq!(read_string(&m.p(n)), "REWRITTEN", "{n} after remount");
        assert_eq!(ino(&m.p(n)), i, "st_ino of {n} after remount");
    }
    assert_eq!(meta(&m.p("b")).nlink(), 3);

    // Removing one name drops the count and leaves the others intact.
    fs::remove_file(m.p("a")).unwrap();
    assert_eq!(meta(&m.p("b")).nlink(), 2);
    assert_eq!(read_string(&m.p("d/c")), "REWRITTEN");
    m.finish();
}

#[test]
fn hard_link_made_through_the_mount() {
    let fx = Fixture::new(1);
    fx.lower(0).file("f", "data");
    let m = fx.mount();
    fs::hard_link(m.p("f"), m.p("g")).unwrap();
    let (f, g) = (meta(&m.p("f")), meta(&m.p("g")));
    assert_eq!(f.ino(), g.ino());
    assert_eq!(f.nlink(), 2);
    pwrite(&m.p("g"), 0, b"DA");
    assert_eq!(read_string(&m.p("f")), "DAta");
    let (uf, ug) = (meta(&fx.upper().p("f")), meta(&fx.upper().p("g")));
    assert_eq!(uf.ino(), ug.ino(), "the upper holds one inode for both names");
    m.finish();
}

#[test]
fn st_ino_is_stable_across_copy_up() {
    let fx = Fixture::new(2);
    fx.lower(1).file("d/f", "x").dir("d/sub").symlink("d/s", "f");
    fx.lower(0).file("g", "y");
    let m = fx.mount();
    let names = ["d", "d/f", "d/sub", "d/s", "g"];
    let before: Vec<u64> = names.iter().map(|n| ino(&m.p(n))).collect();

    pwrite(&m.p("d/f"), 0, b"X");
    chmod(&m.p("g"), 0o600).unwrap();
    fs::write(m.p("d/sub/new"), "").unwrap(); // copies up d and d/sub
    lchown(&m.p("d/s"), 1, 1).unwrap();

    let after: Vec<u64> = names.iter().map(|n| ino(&m.p(n))).collect();
    assert_eq!(before, after, "st_ino of {names:?} changed by copy-up");
    for n in ["d/f", "g", "d/sub", "d/s"] {
        assert!(exists(&fx.upper().p(n)), "{n} should be copied up");
    }
    // Also as seen through an open file handle.
    let f = fs::File::open(m.p("d/f")).unwrap();
    assert_eq!(f.metadata().unwrap().ino(), before[1]);
    drop(f);
    m.finish();
}

#[test]
fn st_ino_unique_across_layers_on_different_filesystems() {
    let fx = Fixture::new(2);
    // Two fresh tmpfs instances number their inodes the same way, so the
    // same build order gives the same inode numbers in both lowers.
    fx.mount_tmpfs(fx.lower(0).path());
    fx.mount_tmpfs(fx.lower(1).path());
    for (i, l) in fx.lowers.iter().enumerate() {
        for n in ["a", "b", "c"] {
            l.file(&format!("d{i}/{n}"), n);
        }
        l.file(&format!("top{i}"), "")
            .dir("shared")
            .file(&format!("shared/f{i}"), "");
    }
    let collide = ino(&fx.lower(0).p("d0/a")) == ino(&fx.lower(1).p("d1/a"));
    if !collide {
        eprintln!("note: the two tmpfs lowers do not share inode numbers here; uniqueness is still checked");
    }
    let m = fx.mount();
    fs::write(m.p("upper_file"), "").unwrap();
    fs::create_dir(m.p("upper_dir")).unwrap();

    let inos = all_inos(m.path());
    let mut by_ino: BTreeMap<u64, Vec<&String>> = BTreeMap::new();
    for (n, i) in &inos {
        by_ino.entry(*i).or_default().push(n);
    }
    let dups: Vec<_> = by_ino.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(dups.is_empty(), "entries sharing an st_ino: {dups:?}");
    assert!(
        !inos.values().any(|&i| i == ino(m.path())),
        "an entry shares the root's st_ino"
    );

    // st_dev is the mount's own for every entry.
    let dev = meta(m.path()).dev();
    for n in inos.keys() {
        assert_eq!(meta(&m.p(n)).dev(), dev, "st_dev of {n}");
    }
    m.finish();
}

#[test]
fn st_ino_stays_unique_after_removal_and_new_files() {
    let fx = Fixture::new(1);
    fx.lower(0).file("a", "").file("b", "");
    let m = fx.mount();
    let ib = ino(&m.p("b"));
    fs::remove_file(m.p("a")).unwrap();
    for i in 0..20 {
        fs::write(m.p(format!("n{i}")), "").unwrap();
    }
    let inos = all_inos(m.path());
    let mut seen: Vec<u64> = inos.values().copied().collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), inos.len(), "duplicate st_ino in {inos:?}");
    assert_eq!(inos["b"], ib);
    m.finish();
}

#[test]
fn reading_another_name_of_a_copied_up_hard_link_changes_nothing() {
    let fx = Fixture::new(1);
    fx.lower(0).file("d/a", "original").hardlink("d/a", "d/b");
    let m = fx.mount();
    pwrite(&m.p("d/a"), 0, b"CHANGED!");
    let mtime = |p: &Path| {
        let st = meta(p);
        (st.mtime(), st.mtime_nsec())
    };
    let (dir_before, upper_before) = (mtime(&m.p("d")), Snapshot::of(fx.upper().path()).without_atimes());
    std::thread::sleep(std::time::Duration::from_millis(20));

    // Reading (open for reading, stat, list) is no change: opening for reading
    // never copies up, and on ext4 it never moves a directory's mtime.
    assert_eq!(read_string(&m.p("d/b")), "CHANGED!");
    assert_eq!(names(&m.p("d")), strs(&["a", "b"]));

    assert_eq!(mtime(&m.p("d")), dir_before, "reading d/b changed the mtime of d");
    upper_before.assert_unchanged(fx.upper().path());
    m.finish();
}
