//! Name resolution through the layer stack: which layer wins, what hides what,
//! and names that can never be seen or made through the mount.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::MetadataExt;

#[test]
fn upper_wins_over_lowers_and_higher_lower_over_lower() {
    let fx = Fixture::new(2);
    fx.lower(1).file("f", "l1").file("g", "l1").file("h", "l1");
    fx.lower(0).file("f", "l0").file("g", "l0");
    fx.upper().file("f", "upper");
    let m = fx.mount();

    assert_eq!(read_string(&m.p("f")), "upper");
    assert_eq!(read_string(&m.p("g")), "l0");
    assert_eq!(read_string(&m.p("h")), "l1");
    assert_eq!(names(m.path()), strs(&["f", "g", "h"]));
    m.finish();
}

#[test]
fn file_in_higher_layer_hides_directory_below() {
    let fx = Fixture::new(2);
    fx.lower(1).file("x/inner", "below").file("y", "file in l1");
    fx.lower(0).file("x", "file in l0").file("y/inner", "dir in l0");
    let m = fx.mount();

    let x = meta(&m.p("x"));
    assert!(x.is_file(), "x must be l0's file, got {:?}", x.file_type());
    assert_eq!(read_string(&m.p("x")), "file in l0");
    assert_errno(fs::metadata(m.p("x/inner")), libc::ENOTDIR, "stat x/inner");

    // The other way round: a directory in l0 hides l1's file, and does not merge with it.
    assert!(meta(&m.p("y")).is_dir());
    assert_eq!(names(&m.p("y")), strs(&["inner"]));

    assert_eq!(names(m.path()), strs(&["x", "y"]));
    m.finish();
}

#[test]
fn directories_merge_across_all_layers() {
    let fx = Fixture::new(2);
    fx.lower(1)
        .file("d/from_l1", "1")
        .file("d/sub/deep_l1", "1")
        .file("d/same", "l1");
    fx.lower(0)
        .file("d/from_l0", "0")
        .file("d/sub/deep_l0", "0")
        .file("d/same", "l0");
    fx.upper().file("d/from_upper", "u");
    let m = fx.mount();

    assert_eq!(
        names(&m.p("d")),
        strs(&["from_l0", "from_l1", "from_upper", "same", "sub"])
    );
    assert_eq!(names(&m.p("d/sub")), strs(&["deep_l0", "deep_l1"]));
    assert_eq!(read_string(&m.p("d/same")), "l0");
    assert_eq!(read_string(&m.p("d/sub/deep_l1")), "1");
    m.finish();
}

#[test]
fn whiteouts_of_both_forms_hide_lower_entries() {
    let fx = Fixture::new(3);
    fx.lower(2)
        .file("aufs_file", "x")
        .file("ovl_file", "x")
        .file("aufs_dir/c", "x")
        .file("ovl_dir/c", "x");
    fx.lower(2).file("kept", "x");
    fx.lower(1)
        .whiteout("aufs_file")
        .whiteout("aufs_dir")
        .ovl_whiteout("ovl_file")
        .ovl_whiteout("ovl_dir");
    // A whiteout only hides what is below it: the same name in a higher layer is visible.
    fx.lower(1).whiteout("revived");
    fx.lower(2).file("revived", "old");
    fx.lower(0).file("revived", "new");
    let m = fx.mount();

    for n in [
        "aufs_file",
        "ovl_file",
        "aufs_dir",
        "ovl_dir",
        "aufs_dir/c",
        "ovl_dir/c",
    ] {
        assert_errno(lstat(&m.p(n)), libc::ENOENT, n);
    }
    assert_eq!(read_string(&m.p("revived")), "new");
    assert_eq!(names(m.path()), strs(&["kept", "revived"]));
    m.finish();
}

#[test]
fn opaque_directories_of_all_forms_hide_lower_contents() {
    let fx = Fixture::new(2);
    for d in ["aufs", "trusted", "user", "plain"] {
        fx.lower(1).file(&format!("{d}/below"), "hidden unless plain");
        fx.lower(0).file(&format!("{d}/above"), "visible");
    }
    fx.lower(0).opaque("aufs").ovl_opaque("trusted").user_opaque("user");
    let m = fx.mount();

    for d in ["aufs", "trusted", "user"] {
        assert_eq!(names(&m.p(d)), strs(&["above"]), "{d} is opaque");
        assert_errno(lstat(&m.p(format!("{d}/below"))), libc::ENOENT, &format!("{d}/below"));
    }
    assert_eq!(names(&m.p("plain")), strs(&["above", "below"]));
    m.finish();
}

#[test]
fn opaque_directory_in_upper_hides_all_lowers() {
    let fx = Fixture::new(1);
    fx.lower(0).file("d/old", "x");
    fx.upper().opaque("d").file("d/new", "y");
    let m = fx.mount();
    assert_eq!(names(&m.p("d")), strs(&["new"]));
    assert_errno(lstat(&m.p("d/old")), libc::ENOENT, "d/old");
    m.finish();
}

#[test]
fn whiteout_names_are_never_visible() {
    let fx = Fixture::new(1);
    fx.lower(0)
        .file("a", "x")
        .whiteout("gone")
        .opaque("d")
        .file("d/f", "x")
        .file(".wh.orphan", "");
    fx.upper().whiteout("b");
    let m = fx.mount();

    for n in [".wh.gone", ".wh.b", ".wh.orphan", "d/.wh..wh..opq", ".wh..wh..opq"] {
        assert_errno(lstat(&m.p(n)), libc::ENOENT, n);
    }
    let listed: Vec<String> = readdir_raw(m.path()).unwrap().into_iter().map(|e| e.name).collect();
    assert!(
        listed.iter().all(|n| !n.starts_with(WH)),
        "listing shows a .wh. name: {listed:?}"
    );
    assert_eq!(names(&m.p("d")), strs(&["f"]));
    m.finish();
}

#[test]
fn creating_whiteout_names_fails_eperm_and_writes_nothing() {
    let fx = Fixture::new(1);
    fx.lower(0).file("src", "data").dir("lowerdir");
    fx.upper().file("usrc", "upper data");
    let m = fx.mount();
    let upper_before = Snapshot::of(fx.upper().path()).without_atimes();

    for dir in ["", "lowerdir/"] {
        let name = |n: &str| m.p(format!("{dir}{n}"));
        assert_errno(fs::write(name(".wh.new"), "x"), libc::EPERM, "create .wh.new");
        assert_errno(fs::create_dir(name(".wh.dir")), libc::EPERM, "mkdir .wh.dir");
        assert_errno(fs::create_dir(name(".wh..wh..opq")), libc::EPERM, "mkdir .wh..wh..opq");
        assert_errno(
            std::os::unix::fs::symlink("src", name(".wh.sym")),
            libc::EPERM,
            "symlink .wh.sym",
        );
        assert_errno(mkfifo(&name(".wh.fifo"), 0o644), libc::EPERM, "mkfifo .wh.fifo");
        assert_errno(
            fs::hard_link(m.p("usrc"), name(".wh.link")),
            libc::EPERM,
            "link upper file to .wh.link",
        );
        assert_errno(
            fs::hard_link(m.p("src"), name(".wh.link")),
            libc::EPERM,
            "link lower file to .wh.link",
        );
        assert_errno(
            fs::rename(m.p("usrc"), name(".wh.ren")),
            libc::EPERM,
            "rename upper file to .wh.ren",
        );
        assert_errno(
            fs::rename(m.p("src"), name(".wh.ren")),
            libc::EPERM,
            "rename lower file to .wh.ren",
        );
    }
    // Nothing moved, nothing was written to the upper layer.
    assert_eq!(read_string(&m.p("src")), "data");
    assert_eq!(read_string(&m.p("usrc")), "upper data");
    assert_eq!(names(m.path()), strs(&["lowerdir", "src", "usrc"]));
    upper_before.assert_unchanged(fx.upper().path());
    m.finish();
}

#[test]
fn char_device_0_0_made_through_the_mount_is_an_ordinary_device() {
    let fx = Fixture::new(1);
    fx.lower(0).file("shadowed", "lower");
    let m = fx.mount();

    mknod(&m.p("dev"), libc::S_IFCHR | 0o600, 0, 0).unwrap();
    let st = meta(&m.p("dev"));
    assert_eq!(st.mode() & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(st.rdev(), 0);
    assert!(names(m.path()).contains(&"dev".to_string()));
    assert!(is_whiteout_char(&fx.upper().p("dev")));
    // Marked as made through the mount (the upper reads other char 0/0 as whiteouts),
    // and the marker is not shown.
    assert_eq!(get_xattr(&fx.upper().p("dev"), "trusted.strata.device").unwrap(), b"y");
    assert!(list_xattr(&m.p("dev")).unwrap().is_empty());

    // Even in place of a lower file (which is first whited out) it stays a device.
    fs::remove_file(m.p("shadowed")).unwrap();
    mknod(&m.p("shadowed"), libc::S_IFCHR | 0o600, 0, 0).unwrap();
    assert_eq!(meta(&m.p("shadowed")).mode() & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(names(m.path()), strs(&["dev", "shadowed"]));
    // Renamed, linked and after a remount too.
    fs::rename(m.p("dev"), m.p("dev2")).unwrap();
    fs::hard_link(m.p("dev2"), m.p("dev3")).unwrap();
    m.finish();
    let m = fx.mount();
    assert_eq!(names(m.path()), strs(&["dev2", "dev3", "shadowed"]));
    assert_eq!(meta(&m.p("shadowed")).rdev(), 0);
    m.finish();
}

#[test]
fn symlinks_resolve_inside_the_mount() {
    let fx = Fixture::new(2);
    fx.lower(1)
        .file("target", "l1 target")
        .symlink("rel", "target")
        .symlink("dirlink", "d");
    fx.lower(0).file("d/f", "in d");
    let m = fx.mount();
    assert_eq!(fs::read_link(m.p("rel")).unwrap(), std::path::PathBuf::from("target"));
    assert_eq!(read_string(&m.p("rel")), "l1 target");
    assert_eq!(read_string(&m.p("dirlink/f")), "in d");
    m.finish();
}
