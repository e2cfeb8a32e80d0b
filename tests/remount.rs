//! What strata writes to the upper layer is the whole state: a new mount of
//! the same layers shows the same tree.

mod common;

use common::*;
use std::fs;

#[test]
fn same_view_after_remount() {
    let fx = Fixture::new(2);
    fx.lower(1)
        .file("keep", "k")
        .file("del", "x")
        .file("d/a", "a")
        .file("d/sub/b", "b")
        .file("mv/x", "x");
    fx.lower(1)
        .file("hl1", "shared")
        .hardlink("hl1", "hl2")
        .symlink("sym", "keep");
    fx.lower(0)
        .file("chg", "lower")
        .file("meta", "m")
        .dir("opq")
        .file("opq/old", "o")
        .file("gone/f", "f");
    let m = fx.mount();

    pwrite(&m.p("chg"), 0, b"UPPER");
    chmod(&m.p("meta"), 0o600).unwrap();
    set_xattr(&m.p("meta"), "user.k", b"v").unwrap();
    fs::remove_file(m.p("del")).unwrap();
    fs::remove_dir_all(m.p("opq")).unwrap();
    fs::create_dir(m.p("opq")).unwrap();
    fs::write(m.p("opq/new"), "n").unwrap();
    fs::remove_dir_all(m.p("gone")).unwrap();
    fs::rename(m.p("mv"), m.p("moved")).unwrap();
    fs::rename(m.p("d/sub/b"), m.p("d/b2")).unwrap();
    pwrite(&m.p("hl2"), 0, b"SHARED");
    fs::write(m.p("d/new"), "new").unwrap();
    std::os::unix::fs::symlink("d/new", m.p("newsym")).unwrap();
    mkfifo(&m.p("fifo"), 0o640).unwrap();

    let before = Snapshot::of(m.path()).view();
    m.finish();

    let m = fx.mount();
    let after = Snapshot::of(m.path()).view();
    assert_eq!(
        names(m.path()),
        strs(&["chg", "d", "fifo", "hl1", "hl2", "keep", "meta", "moved", "newsym", "opq", "sym"])
    );
    assert_eq!(names(&m.p("opq")), strs(&["new"]));
    assert_eq!(read_string(&m.p("hl1")), "SHARED");
    assert_eq!(ino(&m.p("hl1")), ino(&m.p("hl2")));
    for (p, b) in &before.0 {
        match after.0.get(p) {
            Some(a) => assert_eq!(a, b, "/{} differs after remount", p.display()),
            None => panic!("/{} missing after remount", p.display()),
        }
    }
    assert_eq!(before.0.len(), after.0.len(), "entries added by the remount");
    m.finish();
}
