//! `strata layers MOUNTPOINT [add DIR [--at N] | del DIR]` on a live mount: after
//! every change the mount must look exactly like a fresh mount of the new stack (the
//! kernel's cached names, absences, attributes and listings included), whiteouts in
//! the upper keep hiding names in added layers, a layer in use is not removed
//! (EBUSY, naming the process), readers and writers running meanwhile see no error,
//! and the saved order mounts again with `--layers-from`.

mod common;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use common::*;

/// Where the tests' control sockets and saved stacks go (not /run/strata).
fn runtime(fx: &Fixture) -> PathBuf {
    let d = fx.root().join("run");
    fs::create_dir_all(&d).unwrap();
    d
}

/// Mounts `fx` (its lowers + upper + work dir) with the control socket in the
/// fixture.
fn mount_live(fx: &Fixture, extra: &[&str]) -> Mount {
    let o = format!(
        "lowerdir={},upperdir={},workdir={}",
        fx.lowerdir(),
        fx.upper.path().display(),
        fx.work.display()
    );
    let mut args = vec!["-f", "-o", &o];
    args.extend_from_slice(extra);
    let rt = runtime(fx);
    fx.try_mount_args_env(&args, &[("STRATA_RUNTIME_DIR", rt.to_str().unwrap())])
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `strata layers ARGS` (as root, or as `uid` when given): (exit code, stdout, stderr).
fn layers(fx: &Fixture, args: &[&str], uid: Option<u32>) -> (i32, String, String) {
    let mut c = match uid {
        Some(u) => {
            let mut c = Command::new("setpriv");
            c.args([format!("--reuid={u}"), format!("--regid={u}"), "--clear-groups".into()])
                .arg(STRATA);
            c
        }
        None => Command::new(STRATA),
    };
    let out = c
        .arg("layers")
        .arg(&fx.mnt)
        .args(args)
        .env("STRATA_RUNTIME_DIR", runtime(fx))
        .output()
        .expect("run strata layers");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[track_caller]
fn layers_ok(fx: &Fixture, args: &[&str]) -> String {
    let (code, out, err) = layers(fx, args, None);
    assert_eq!(code, 0, "strata layers {args:?} failed: {err}");
    out
}

/// The lower layers a listing shows, top first.
fn listed(out: &str) -> Vec<PathBuf> {
    out.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(char::is_whitespace)?;
            k.parse::<usize>().ok().map(|_| PathBuf::from(v.trim()))
        })
        .collect()
}

/// What a fresh read-only mount of the upper over `lowers` shows (the upper's
/// whiteouts and opaque markers are honoured in a lower as well).
fn fresh_view(fx: &Fixture, lowers: &[PathBuf]) -> Snapshot {
    fresh_views(fx, lowers, &[""])
        .remove(0)
        .expect("the root is always there")
}

/// The views of `subdirs` (each `None` where absent) of a tree.
fn views(root: &Path, subdirs: &[&str]) -> Vec<Option<Snapshot>> {
    subdirs
        .iter()
        .map(|d| {
            let p = root.join(d);
            fs::symlink_metadata(&p).ok().map(|_| Snapshot::of(&p).view())
        })
        .collect()
}

/// `fresh_view` of `subdirs` only (the rest may be changing in the upper meanwhile).
fn fresh_views(fx: &Fixture, lowers: &[PathBuf], subdirs: &[&str]) -> Vec<Option<Snapshot>> {
    let mnt = fx.root().join("fresh");
    fs::create_dir_all(&mnt).unwrap();
    let mut all = vec![fx.upper.path().to_path_buf()];
    all.extend_from_slice(lowers);
    let paths: Vec<&Path> = all.iter().map(|p| p.as_path()).collect();
    let args: Vec<OsString> = vec![
        "-f".into(),
        "-o".into(),
        format!("lowerdir={}", join_lowers(&paths)).into(),
        mnt.clone().into(),
    ];
    let m = Mount::start(&args, &mnt, &[]).unwrap_or_else(|e| panic!("{e}"));
    let v = views(&mnt, subdirs);
    m.finish();
    v
}

/// Panics, listing the differences, unless the live mount shows `want`.
#[track_caller]
fn assert_view(live: &Path, want: &Snapshot, when: &str) {
    let now = Snapshot::of(live).view();
    if &now != want {
        let diff = want.diff(&now);
        panic!("{when}: the live mount differs from a fresh mount of its stack (before: fresh, after: live):\n{diff}");
    }
}

/// Reads every name the test cares about through the mount, so that the kernel
/// holds entries, absences, attributes, data and listings from before a change.
fn warm(m: &Mount, names: &[&str]) {
    for n in names {
        let p = m.p(n);
        if let Ok(md) = fs::symlink_metadata(&p) {
            if md.is_file() {
                let _ = fs::read(&p);
            } else if md.is_dir() {
                let _ = fs::read_dir(&p).map(|d| d.count());
            }
        }
    }
    let _ = Snapshot::of(m.path());
}

const NAMES: &[&str] = &[
    "a",
    "b",
    "shadow",
    "d",
    "d/x",
    "d/y",
    "d/z",
    "only",
    "only/f",
    "gone",
    "dirfile",
    "dirfile/in",
    "u1",
    "opq",
    "opq/low",
    "opq/new",
];

fn build(fx: &Fixture, extra: &Layer) {
    fx.lower(0)
        .file("a", "a from l0\n")
        .file("shadow", "shadow from l0\n")
        .file("d/y", "y\n")
        .file("dirfile", "a file in l0\n")
        .file("opq/low", "below an opaque dir\n");
    fx.lower(1)
        .file("d/x", "x\n")
        .file("gone", "whited out by l0\n")
        .file("shadow", "shadow from l1\n");
    fx.lower(0).whiteout("gone");
    extra
        .file("b", "b from n\n")
        .file("shadow", "shadow from n\n")
        .file("d/z", "z from n\n")
        .file("d/x", "x from n: the upper's whiteout hides it\n")
        .file("only/f", "in n only\n")
        .file("gone", "n brings it back above l0's whiteout\n")
        .dir("dirfile")
        .file("dirfile/in", "a directory in n where l0 has a file\n")
        .opaque("opq")
        .file("opq/new", "n's opaque dir\n")
        .whiteout("a");
}

#[test]
fn add_and_del_show_at_once_like_a_fresh_mount() {
    let fx = Fixture::new(2);
    let n = Layer::new(fx.root().join("n"));
    build(&fx, &n);
    let m = mount_live(&fx, &[]);
    // Changes of the mount: an upper whiteout over a lower name (that `n` has too),
    // a file of its own.
    fs::remove_file(m.p("d/x")).unwrap();
    write(&m.p("u1"), "upper\n");
    warm(&m, NAMES);
    let l0 = fx.lower(0).path().to_path_buf();
    let l1 = fx.lower(1).path().to_path_buf();
    let np = n.path().to_path_buf();
    let d_ino = ino(&m.p("d"));

    // Listing.
    assert_eq!(listed(&layers_ok(&fx, &[])), vec![l0.clone(), l1.clone()]);

    // Add on top of the lowers (the default position).
    let out = layers_ok(&fx, &["add", np.to_str().unwrap()]);
    assert_eq!(listed(&out), vec![np.clone(), l0.clone(), l1.clone()]);
    assert_eq!(read_string(&m.p("shadow")), "shadow from n\n");
    assert_eq!(read_string(&m.p("b")), "b from n\n");
    assert!(!exists(&m.p("a")), "n's whiteout hides l0's a");
    assert!(
        !exists(&m.p("d/x")),
        "the upper's whiteout hides d/x in an added layer too"
    );
    assert_eq!(ino(&m.p("d")), d_ino, "a directory keeps its inode number");
    assert!(m.p("dirfile").is_dir(), "n's directory replaces l0's file");
    assert_eq!(names(&m.p("opq")), strs(&["new"]), "n's opaque directory hides l0's");
    assert_view(
        m.path(),
        &fresh_view(&fx, &[np.clone(), l0.clone(), l1.clone()]),
        "after add",
    );

    // Remove it again: everything as before.
    warm(&m, NAMES);
    let out = layers_ok(&fx, &["del", np.to_str().unwrap()]);
    assert_eq!(listed(&out), vec![l0.clone(), l1.clone()]);
    assert_eq!(read_string(&m.p("shadow")), "shadow from l0\n");
    assert_eq!(read_string(&m.p("a")), "a from l0\n");
    assert!(!exists(&m.p("b")) && !exists(&m.p("only")) && !exists(&m.p("gone")));
    assert_view(m.path(), &fresh_view(&fx, &[l0.clone(), l1.clone()]), "after del");

    // At the bottom, and between.
    warm(&m, NAMES);
    layers_ok(&fx, &["add", np.to_str().unwrap(), "--at", "2"]);
    assert_eq!(read_string(&m.p("shadow")), "shadow from l0\n");
    assert_eq!(read_string(&m.p("b")), "b from n\n");
    assert_eq!(
        read_string(&m.p("a")),
        "a from l0\n",
        "a whiteout at the bottom hides nothing above it"
    );
    assert_view(
        m.path(),
        &fresh_view(&fx, &[l0.clone(), l1.clone(), np.clone()]),
        "after add --at 2",
    );
    warm(&m, NAMES);
    layers_ok(&fx, &["del", np.to_str().unwrap()]);
    warm(&m, NAMES);
    let out = layers_ok(&fx, &["add", np.to_str().unwrap(), "--at", "1"]);
    assert_eq!(listed(&out), vec![l0.clone(), np.clone(), l1.clone()]);
    assert!(!exists(&m.p("gone")), "l0's whiteout still hides gone in n below it");
    assert_view(
        m.path(),
        &fresh_view(&fx, &[l0.clone(), np.clone(), l1.clone()]),
        "after add --at 1",
    );

    // Writes after a change land in the upper, over the new layer.
    write(&m.p("only/f"), "changed\n");
    assert_eq!(read_string(&fx.upper.p("only/f")), "changed\n");
    assert_eq!(
        read_string(&n.p("only/f")),
        "in n only\n",
        "a lower layer is never written"
    );

    // The order is saved: an unmount and a mount with --layers-from restores it.
    let saved = layers_ok(&fx, &[])
        .lines()
        .find_map(|l| l.strip_prefix("saved").map(|s| PathBuf::from(s.trim())))
        .expect("the listing names the saved file");
    let before = Snapshot::of(m.path()).view();
    m.finish();
    let m = mount_live(&fx, &["--layers-from", saved.to_str().unwrap()]);
    assert_eq!(listed(&layers_ok(&fx, &[])), vec![l0.clone(), np.clone(), l1.clone()]);
    assert_view(m.path(), &before, "mounted again with --layers-from");
    m.finish();
}

#[test]
fn a_layer_in_use_is_not_removed_and_the_user_is_named() {
    let fx = Fixture::new(2);
    fx.lower(0).file("top", "t\n");
    fx.lower(1).file("f", "in l1\n").file("dir/g", "g\n").dir("cwd_only");
    fx.lower(0).file("dir/h", "h\n");
    let m = mount_live(&fx, &[]);
    let l1 = fx.lower(1).path().to_str().unwrap().to_string();

    // `strata layers del l1` while a `sleep` holds something of the mount: (exit
    // code, stderr, the holder's pid).
    let del_while = |holder: &mut Command| {
        let mut child = holder.spawn().unwrap();
        // Until it has become `sleep`, the child is a copy of this test.
        let comm = format!("/proc/{}/comm", child.id());
        while fs::read_to_string(&comm).unwrap_or_default().trim() != "sleep" {
            thread::sleep(std::time::Duration::from_millis(5));
        }
        let (code, _, err) = layers(&fx, &["del", &l1], None);
        let _ = child.kill();
        let _ = child.wait();
        (code, err, child.id())
    };
    let sleeper = || {
        let mut c = Command::new("sleep");
        c.arg("300");
        c
    };

    // An open file of the layer.
    let (code, err, pid) = del_while(sleeper().stdin(fs::File::open(m.p("f")).unwrap()));
    assert_ne!(code, 0, "removing a layer with an open file must fail");
    assert!(
        err.contains("in use") && err.contains(&format!("process {pid}")) && err.contains("sleep"),
        "the refusal names the file's user: {err}"
    );
    assert!(err.contains("busy"), "EBUSY: {err}");

    // A working directory found only in that layer.
    let (code, err, pid) = del_while(sleeper().current_dir(m.p("cwd_only")));
    assert_ne!(code, 0);
    assert!(
        err.contains("working directory") && err.contains(&pid.to_string()),
        "{err}"
    );

    // A merged directory that stays (l0 has it too) does not hold the layer.
    let (code, err, _) = del_while(sleeper().current_dir(m.p("dir")));
    assert_eq!(code, 0, "a merged directory that stays does not block: {err}");
    assert_eq!(names(&m.p("dir")), strs(&["h"]));
    assert!(!exists(&m.p("f")));
    m.finish();
}

#[test]
fn refusals_name_the_path_and_the_reason() {
    let fx = Fixture::new(1);
    fx.lower(0).file("f", "f\n");
    let m = mount_live(&fx, &[]);
    let l0 = fx.lower(0).path().to_str().unwrap().to_string();
    let missing = fx.root().join("missing");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["add".into(), missing.to_str().unwrap().into()], "missing"),
        (vec!["add".into(), fx.upper.path().to_str().unwrap().into()], "upper"),
        (vec!["add".into(), l0.clone()], "already a layer"),
        (vec!["add".into(), fx.root().to_str().unwrap().into()], "nested"),
        (
            vec!["del".into(), fx.upper.path().to_str().unwrap().into()],
            "not a lower layer",
        ),
        (vec!["del".into(), l0.clone()], "only lower layer"),
    ];
    fs::create_dir(fx.root().join("spare")).unwrap();
    let spare = fx.root().join("spare").to_str().unwrap().to_string();
    let mut all = cases;
    all.push((vec!["add".into(), spare, "--at".into(), "5".into()], "--at 5"));
    for (args, want) in &all {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, err) = layers(&fx, &a, None);
        assert_ne!(code, 0, "{a:?} must be refused");
        assert!(err.contains(want), "{a:?}: the error should say {want:?}: {err}");
    }
    // Another user may not use the socket at all.
    let (code, _, err) = layers(&fx, &[], Some(65534));
    assert_ne!(code, 0, "uid 65534 listed root's mount: {err}");
    // Not a strata mount.
    let out = Command::new(STRATA)
        .args(["layers", fx.root().to_str().unwrap()])
        .env("STRATA_RUNTIME_DIR", runtime(&fx))
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no control socket"));
    assert_eq!(listed(&layers_ok(&fx, &[])), vec![fx.lower(0).path().to_path_buf()]);
    m.finish();
}

#[test]
fn metacopy_mounts_refuse_changes() {
    let fx = Fixture::new(1);
    fx.lower(0).file("f", "f\n");
    let m = mount_live(&fx, &["-o", "metacopy=on"]);
    let extra = fx.root().join("extra");
    fs::create_dir(&extra).unwrap();
    let (code, _, err) = layers(&fx, &["add", extra.to_str().unwrap()], None);
    assert_ne!(code, 0);
    assert!(err.contains("metacopy"), "{err}");
    m.finish();
}

#[test]
fn readers_and_writers_see_no_error_while_layers_come_and_go() {
    let fx = Fixture::new(2);
    for i in 0..50 {
        fx.lower(1).file(&format!("base/f{i}"), format!("base {i}\n"));
    }
    fx.lower(0).file("top/t", "t\n");
    let n = Layer::new(fx.root().join("n"));
    for i in 0..50 {
        n.file(&format!("extra/e{i}"), format!("extra {i}\n"));
    }
    n.file("top/from_n", "n\n");
    let m = mount_live(&fx, &[]);
    fs::create_dir(m.p("scratch")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (stop, ops, root) = (stop.clone(), ops.clone(), m.path().to_path_buf());
        workers.push(thread::spawn(move || -> Result<(), String> {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                if w % 2 == 0 {
                    // A reader of what every stack of the test holds.
                    let k = i % 50;
                    let p = root.join(format!("base/f{k}"));
                    let got = fs::read_to_string(&p).map_err(|e| format!("read {}: {e}", p.display()))?;
                    if got != format!("base {k}\n") {
                        return Err(format!("{}: read {got:?}", p.display()));
                    }
                    let listed = fs::read_dir(root.join("base"))
                        .map_err(|e| format!("readdir base: {e}"))?
                        .count();
                    if listed != 50 {
                        return Err(format!("base listed {listed} entries"));
                    }
                } else {
                    // A writer in a directory of its own.
                    let p = root.join(format!("scratch/w{w}-{}", i % 8));
                    let data = format!("{w} {i}\n");
                    fs::write(&p, &data).map_err(|e| format!("write {}: {e}", p.display()))?;
                    let back = fs::read_to_string(&p).map_err(|e| format!("read {}: {e}", p.display()))?;
                    if back != data {
                        return Err(format!("{}: wrote {data:?}, read {back:?}", p.display()));
                    }
                    if i.is_multiple_of(3) {
                        fs::remove_file(&p).map_err(|e| format!("unlink {}: {e}", p.display()))?;
                    }
                }
                ops.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    let np = n.path().to_str().unwrap().to_string();
    let (l0, l1) = (fx.lower(0).path().to_path_buf(), fx.lower(1).path().to_path_buf());
    // Everything but the writers' directory, compared with a fresh mount of the stack.
    let watched = ["base", "top", "extra"];
    let rounds = 12;
    for r in 0..rounds {
        let at = r % 3;
        layers_ok(&fx, &["add", &np, "--at", &at.to_string()]);
        let mut stack = vec![l0.clone(), l1.clone()];
        stack.insert(at, n.path().to_path_buf());
        assert!(
            views(m.path(), &watched) == fresh_views(&fx, &stack, &watched),
            "round {r}: after add --at {at}, the live mount differs from a fresh mount of its stack"
        );
        assert_eq!(
            names(&m.p("extra")).len(),
            50,
            "round {r}: the added layer shows at once"
        );
        assert_eq!(read_string(&m.p("extra/e7")), "extra 7\n");
        assert!(names(&m.p("top")).contains(&"from_n".to_string()));
        layers_ok(&fx, &["del", &np]);
        assert!(!exists(&m.p("extra")), "round {r}: the removed layer is gone at once");
        assert!(
            views(m.path(), &watched) == fresh_views(&fx, &[l0.clone(), l1.clone()], &watched),
            "round {r}: after del, the live mount differs from a fresh mount of its stack"
        );
        assert!(!names(&m.p("top")).contains(&"from_n".to_string()));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join()
            .unwrap()
            .unwrap_or_else(|e| panic!("a worker saw an error while layers changed: {e}"));
    }
    assert!(
        ops.load(Ordering::Relaxed) > 100,
        "the workers ran ({} ops)",
        ops.load(Ordering::Relaxed)
    );
    // Quiet now: the whole mount equals a fresh mount of its stack.
    assert_view(m.path(), &fresh_view(&fx, &[l0, l1]), "after the load");
    m.finish();
}

#[test]
fn export_of_a_live_mount_follows_its_changed_stack() {
    let fx = Fixture::new(1);
    fx.lower(0).file("base", "b\n");
    let n = Layer::new(fx.root().join("n"));
    n.file("hl/a", "one file, two names\n").hardlink("hl/a", "hl/b");
    let m = mount_live(&fx, &[]);
    layers_ok(&fx, &["add", n.path().to_str().unwrap()]);
    // Written through one name: the copy goes through the hard-link index, and the
    // other name (found in the lowers) shows it too, so it belongs in the export.
    write(&m.p("hl/a"), "changed through a\n");
    assert_eq!(read_string(&m.p("hl/b")), "changed through a\n");
    let export = |args: &[&str]| {
        let out = Command::new(STRATA)
            .arg("export")
            .args(args)
            .env("STRATA_RUNTIME_DIR", runtime(&fx))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "strata export {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let live = export(&[m.path().to_str().unwrap(), "--mtime", "0"]);
    let lowers = format!("{}:{}", n.path().display(), fx.lower(0).path().display());
    let explicit = export(&[
        "--upper",
        fx.upper.path().to_str().unwrap(),
        "--lower",
        &lowers,
        "--workdir",
        fx.work.to_str().unwrap(),
        "--mtime",
        "0",
    ]);
    assert!(
        live == explicit,
        "export of the live mount differs from an export of its current stack"
    );
    let as_mounted = export(&[
        "--upper",
        fx.upper.path().to_str().unwrap(),
        "--lower",
        fx.lower(0).path().to_str().unwrap(),
        "--workdir",
        fx.work.to_str().unwrap(),
        "--mtime",
        "0",
    ]);
    assert!(
        live != as_mounted,
        "the stack the daemon was started with gives another layer"
    );
    let names = String::from_utf8_lossy(&live).into_owned();
    assert!(
        names.contains("hl/b"),
        "the other name of the written file is in the layer"
    );
    m.finish();
}
