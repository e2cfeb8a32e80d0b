//! Merged directory listings.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::fs;

#[test]
fn each_name_listed_once_with_dot_and_dotdot() {
    let fx = Fixture::new(2);
    for l in [fx.lower(1), fx.lower(0), fx.upper()] {
        l.file("same", "x").file("d/same", "x").dir("d/sub");
    }
    fx.lower(1).file("only_l1", "").file("d/only_l1", "");
    fx.lower(0).file("only_l0", "").file("d/only_l0", "");
    fx.upper().file("only_upper", "");
    let m = fx.mount();

    for (dir, expect) in [
        ("", vec!["d", "only_l0", "only_l1", "only_upper", "same"]),
        ("d", vec!["only_l0", "only_l1", "same", "sub"]),
    ] {
        let raw: Vec<String> = readdir_raw(&m.p(dir)).unwrap().into_iter().map(|e| e.name).collect();
        let mut sorted = raw.clone();
        sorted.sort();
        let mut want: Vec<&str> = expect.clone();
        want.extend([".", ".."]);
        want.sort();
        assert_eq!(sorted, want, "listing of /{dir} (raw order {raw:?})");
    }
    m.finish();
}

#[test]
fn listing_honours_whiteouts_and_opaque_dirs_of_both_forms() {
    let fx = Fixture::new(3);
    let bottom = fx.lower(2);
    for n in ["aufs_wh", "ovl_wh", "kept"] {
        bottom.file(&format!("top/{n}"), "x");
    }
    for d in ["aufs_opq", "trusted_opq", "user_opq"] {
        bottom.file(&format!("top/{d}/below"), "x");
        fx.lower(1).file(&format!("top/{d}/middle"), "x");
    }
    fx.lower(1).whiteout("top/aufs_wh").ovl_whiteout("top/ovl_wh");
    fx.lower(1)
        .opaque("top/aufs_opq")
        .ovl_opaque("top/trusted_opq")
        .user_opaque("top/user_opq");
    // A whiteout in the upper layer, as strata writes them.
    bottom.file("top/upper_wh", "x");
    fx.upper().whiteout("top/upper_wh");
    let m = fx.mount();

    assert_eq!(
        names(&m.p("top")),
        strs(&["aufs_opq", "kept", "trusted_opq", "user_opq"])
    );
    for d in ["aufs_opq", "trusted_opq", "user_opq"] {
        assert_eq!(names(&m.p(format!("top/{d}"))), strs(&["middle"]), "{d}");
    }
    m.finish();
}

#[test]
fn listing_types_match_the_winning_entries() {
    let fx = Fixture::new(2);
    fx.lower(1).dir("x").file("y", "").file("z", "");
    fx.lower(0).file("x", "").dir("y").symlink("z", "y").fifo("p");
    let m = fx.mount();

    let ents = readdir_raw(m.path()).unwrap();
    let dtype = |n: &str| {
        ents.iter()
            .find(|e| e.name == n)
            .unwrap_or_else(|| panic!("{n} not listed"))
            .dtype
    };
    for (n, t) in [
        ("x", libc::DT_REG),
        ("y", libc::DT_DIR),
        ("z", libc::DT_LNK),
        ("p", libc::DT_FIFO),
    ] {
        let got = dtype(n);
        assert!(got == t || got == libc::DT_UNKNOWN, "d_type of {n}: {got}, want {t}");
    }
    m.finish();
}

#[test]
fn listed_inode_numbers_match_stat() {
    let fx = Fixture::new(2);
    fx.lower(1).file("a", "").file("d/b", "");
    fx.lower(0).file("c", "").file("d/e", "");
    fx.upper().file("u", "");
    let m = fx.mount();
    for dir in ["", "d"] {
        for e in readdir_raw(&m.p(dir)).unwrap() {
            if e.name == ".." && dir.is_empty() {
                continue; // the mount root's parent lies outside the mount
            }
            let st = ino(&m.p(dir).join(&e.name));
            assert_eq!(e.ino, st, "d_ino of /{dir}/{} is {} but st_ino is {st}", e.name, e.ino);
        }
    }
    m.finish();
}

#[test]
fn work_dir_is_never_visible() {
    let fx = Fixture::new(1);
    fx.lower(0).file("f", "lower").file("d/g", "lower");
    // No workdir= option: staging happens in upper/.wh..wh.work.
    let o = format!("lowerdir={},upperdir={}", fx.lowerdir(), fx.upper().path().display());
    let m = fx.mount_args(&["-f", "-o", &o]);

    // Copy-ups go through the work dir.
    write(&m.p("f"), "changed");
    write(&m.p("d/g"), "changed");
    fs::write(m.p("new"), "new").unwrap();

    assert_eq!(names(m.path()), strs(&["d", "f", "new"]));
    assert_errno(lstat(&m.p(".wh..wh.work")), libc::ENOENT, "stat the work dir");
    assert_errno(
        fs::read_dir(m.p(".wh..wh.work")).map(|_| ()),
        libc::ENOENT,
        "open the work dir",
    );
    assert!(
        fx.upper().p(".wh..wh.work").is_dir(),
        "the default work dir is upper/.wh..wh.work"
    );
    assert_eq!(read_string(&fx.upper().p("f")), "changed");
    m.finish();
}

#[test]
fn readdir_handle_stays_consistent_across_seekdir_while_entries_change() {
    let fx = Fixture::new(1);
    for i in 0..150 {
        fx.lower(0).file(&format!("d/lower{i:03}"), "");
    }
    for i in 0..150 {
        fx.upper().file(&format!("d/upper{i:03}"), "");
    }
    let m = fx.mount();
    let dir = m.p("d");
    let all: BTreeSet<String> = names(&dir).into_iter().collect();
    assert_eq!(all.len(), 300);

    let c = cstr(&dir);
    let d = unsafe { libc::opendir(c.as_ptr()) };
    assert!(!d.is_null(), "opendir: {}", std::io::Error::last_os_error());
    let next = |d: *mut libc::DIR| -> Option<String> {
        let e = unsafe { libc::readdir64(d) };
        if e.is_null() {
            return None;
        }
        let n = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) };
        Some(n.to_string_lossy().into_owned())
    };
    let mut first = Vec::new();
    for _ in 0..120 {
        first.push(next(d).expect("entry"));
    }
    let pos = unsafe { libc::telldir(d) };
    let rest_a: Vec<String> = std::iter::from_fn(|| next(d)).collect();

    // Change the directory, then go back and read the rest again.
    let removed: Vec<String> = rest_a
        .iter()
        .filter(|n| n.starts_with("lower") || n.starts_with("upper"))
        .take(10)
        .cloned()
        .collect();
    for n in &removed {
        fs::remove_file(dir.join(n)).unwrap();
    }
    for i in 0..20 {
        fs::write(dir.join(format!("added{i:02}")), "").unwrap();
    }
    unsafe { libc::seekdir(d, pos) };
    let rest_b: Vec<String> = std::iter::from_fn(|| next(d)).collect();
    unsafe { libc::closedir(d) };

    // Every name that existed all along is returned exactly once, whichever
    // way the rest was read; removed or added names may or may not appear.
    for rest in [&rest_a, &rest_b] {
        let mut seen = BTreeSet::new();
        for n in first.iter().chain(rest.iter()) {
            assert!(seen.insert(n.clone()), "{n} returned twice");
        }
        for n in &all {
            if !removed.contains(n) {
                assert!(seen.contains(n), "{n} never returned");
            }
        }
        for n in &seen {
            assert!(
                all.contains(n) || n == "." || n == ".." || n.starts_with("added"),
                "unknown name {n} returned"
            );
        }
    }
    // What was removed stays removed for a new listing.
    let now: BTreeSet<String> = names(&dir).into_iter().collect();
    assert_eq!(now.len(), 300 - removed.len() + 20);
    m.finish();
}

#[test]
fn directory_mtime_follows_changes_and_matches_upper() {
    let fx = Fixture::new(1);
    for dir in ["d/", ""] {
        fx.lower(0)
            .file(&format!("{dir}f"), "x")
            .file(&format!("{dir}g"), "x")
            .dir(&format!("{dir}sub"));
    }
    fx.lower(0).times("d", 1_000_000_000, 1_000_000_000);
    let m = fx.mount();
    let mtime = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        let st = meta(p);
        (st.mtime(), st.mtime_nsec())
    };
    for dir in ["d", ""] {
        let d = m.p(dir);
        type Op<'a> = (&'a str, Box<dyn Fn() + 'a>);
        let ops: Vec<Op> = vec![
            ("create", Box::new(|| fs::write(d.join("new"), "").unwrap())),
            ("mkfifo", Box::new(|| mkfifo(&d.join("fifo"), 0o644).unwrap())),
            (
                "symlink",
                Box::new(|| std::os::unix::fs::symlink("f", d.join("sym")).unwrap()),
            ),
            ("mkdir", Box::new(|| fs::create_dir(d.join("nd")).unwrap())),
            ("unlink lower file", Box::new(|| fs::remove_file(d.join("f")).unwrap())),
            (
                "rename lower file",
                Box::new(|| fs::rename(d.join("g"), d.join("g2")).unwrap()),
            ),
            ("rmdir lower dir", Box::new(|| fs::remove_dir(d.join("sub")).unwrap())),
            (
                "unlink upper file",
                Box::new(|| fs::remove_file(d.join("new")).unwrap()),
            ),
        ];
        for (what, op) in ops {
            let before = mtime(&d);
            std::thread::sleep(std::time::Duration::from_millis(20));
            op();
            let (through, upper) = (mtime(&d), mtime(&fx.upper().p(dir)));
            assert!(
                through > before,
                "/{dir}: {what}: mtime did not move ({before:?} -> {through:?})"
            );
            assert_eq!(
                through, upper,
                "/{dir}: {what}: mtime through the mount differs from the upper's"
            );
        }
    }
    m.finish();
}

/// The kernel keeps listings between opens. Every change through the mount shows in
/// the next listing, including a directory removed and made again while a handle on
/// the old one is still open (the new one must not show the old one's listing, nor
/// the lower entries it now hides).
#[test]
fn kept_listings_follow_every_change_through_the_mount() {
    let fx = Fixture::new(2);
    fx.lower(1).file("d/a", "").file("d/sub/below", "").file("d/gone", "");
    fx.lower(0).file("d/b", "").file("d/sub/middle", "");
    let m = fx.mount();
    let d = m.p("d");
    // Listed twice: the second listing comes from the kernel's cache.
    for _ in 0..2 {
        assert_eq!(names(&d), strs(&["a", "b", "gone", "sub"]));
        assert_eq!(names(&d.join("sub")), strs(&["below", "middle"]));
    }
    fs::write(d.join("new"), "").unwrap();
    assert_eq!(names(&d), strs(&["a", "b", "gone", "new", "sub"]));
    fs::remove_file(d.join("gone")).unwrap();
    assert_eq!(names(&d), strs(&["a", "b", "new", "sub"]));
    fs::rename(d.join("a"), d.join("sub/a")).unwrap();
    assert_eq!(names(&d), strs(&["b", "new", "sub"]));
    assert_eq!(names(&d.join("sub")), strs(&["a", "below", "middle"]));
    fs::hard_link(d.join("b"), d.join("b2")).unwrap();
    fs::create_dir(d.join("nd")).unwrap();
    std::os::unix::fs::symlink("b", d.join("ln")).unwrap();
    assert_eq!(names(&d), strs(&["b", "b2", "ln", "nd", "new", "sub"]));

    let old = fs::File::open(d.join("sub")).unwrap();
    fs::remove_dir_all(d.join("sub")).unwrap();
    assert_eq!(names(&d), strs(&["b", "b2", "ln", "nd", "new"]));
    fs::create_dir(d.join("sub")).unwrap();
    assert_eq!(
        names(&d.join("sub")),
        Vec::<String>::new(),
        "a new directory lists the old one's entries"
    );
    fs::write(d.join("sub/x"), "").unwrap();
    assert_eq!(names(&d.join("sub")), strs(&["x"]));
    drop(old);
    // And what the kernel kept agrees with a fresh mount.
    let want = names(&d);
    m.finish();
    let m = fx.mount();
    assert_eq!(names(&m.p("d")), want);
    assert_eq!(names(&m.p("d/sub")), strs(&["x"]));
    m.finish();
}
