//! Owners and modes kept in xattrs (`xattr_permissions=1|2`, containers-storage stores
//! with `force_mask`): what the mount shows, what chown/chmod/create record, which
//! layers are honoured, and interchange of uppers with the real fuse-overlayfs.
//! Needs root and fuse3; the interchange test also /usr/bin/fuse-overlayfs.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const CONTAINERS: &str = "user.containers.override_stat";
const LEGACY: &str = "user.fuseoverlayfs.override_stat";
const FUSE_OVERLAYFS: &str = "/usr/bin/fuse-overlayfs";

fn can_run(what: &str) -> bool {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped {what}: needs root");
        return false;
    }
    true
}

/// uid, gid and full mode of `p` (not following a symlink).
fn owner_mode(p: &Path) -> (u32, u32, u32) {
    let m = lstat(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    (m.uid(), m.gid(), m.mode())
}

fn record(p: &Path, name: &str) -> String {
    String::from_utf8(get_xattr(p, name).unwrap_or_else(|e| panic!("{name} of {}: {e}", p.display()))).unwrap()
}

/// Runs `sh -c CMD` as `uid:gid` (no supplementary groups); true when it succeeded.
fn as_user(uid: u32, gid: u32, cmd: &str) -> bool {
    Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "sh",
            "-c",
            cmd,
        ])
        .status()
        .expect("setpriv")
        .success()
}

/// A lower whose root says its files carry records, with recorded files.
fn recorded_lower(f: &Fixture) {
    let l = f.lower(0);
    l.file("own", "data\n");
    l.file("secret", "s\n");
    l.file("plain", "p\n");
    l.dir("tmp");
    for p in ["own", "secret", "plain"] {
        chmod(&l.p(p), 0o644).unwrap();
    }
    set_xattr(l.path(), CONTAINERS, b"0:0:0755:dir").unwrap();
    set_xattr(&l.p("own"), CONTAINERS, b"1000:1000:0640:file").unwrap();
    set_xattr(&l.p("secret"), CONTAINERS, b"0:0:0600").unwrap();
    set_xattr(&l.p("tmp"), CONTAINERS, b"0:0:1777").unwrap();
}

#[test]
fn records_show_and_chown_chmod_create_record() {
    if !can_run("records_show_and_chown_chmod_create_record") {
        return;
    }
    let f = Fixture::new(1);
    recorded_lower(&f);
    let m = f.mount_opts("xattr_permissions=2");
    // What the records say, the type from the file.
    assert_eq!(owner_mode(&m.p("own")), (1000, 1000, 0o100640));
    assert_eq!(owner_mode(&m.p("secret")), (0, 0, 0o100600));
    assert_eq!(owner_mode(&m.p("tmp")), (0, 0, 0o41777));
    assert_eq!(owner_mode(&m.p("plain")), (0, 0, 0o100644));
    // The upper's root got its record, from the lower's root.
    assert_eq!(record(f.upper().path(), CONTAINERS), "0:0:755:dir");
    // The kernel checks permissions against what is shown.
    assert!(as_user(1000, 1000, &format!("echo more >> {}", m.p("own").display())));
    assert!(!as_user(
        1001,
        1001,
        &format!("cat {} >/dev/null 2>&1", m.p("secret").display())
    ));
    assert!(as_user(1001, 1001, &format!("echo x > {}/mine", m.p("tmp").display())));
    // The records are not shown nor settable through the mount.
    assert!(!list_xattr(&m.p("own"))
        .unwrap()
        .iter()
        .any(|n| n.contains("override_stat")));
    assert_errno(
        get_xattr(&m.p("own"), CONTAINERS),
        libc::ENODATA,
        "getxattr of the record",
    );
    assert_errno(
        set_xattr(&m.p("plain"), CONTAINERS, b"1:1:777"),
        libc::EPERM,
        "setxattr of the record",
    );
    // A file created by uid 1001 is 1001's through the mount; on disk the daemon's.
    assert_eq!(owner_mode(&m.p("tmp/mine")).0, 1001);
    assert_eq!(owner_mode(&m.p("tmp/mine")).1, 1001);
    let disk = f.upper().p("tmp/mine");
    assert_eq!(meta(&disk).uid(), 0, "the real owner of a new file stays the daemon's");
    assert!(record(&disk, CONTAINERS).starts_with("1001:1001:"));
    // chown then chmod: both kept, in the record; the real owner and mode stay.
    lchown(&m.p("plain"), 2000, 3000).unwrap();
    chmod(&m.p("plain"), 0o640).unwrap();
    assert_eq!(owner_mode(&m.p("plain")), (2000, 3000, 0o100640));
    let up = f.upper().p("plain");
    assert_eq!(record(&up, CONTAINERS), "2000:3000:640");
    assert_eq!((meta(&up).uid(), meta(&up).gid()), (0, 0));
    assert_eq!(meta(&up).permissions().mode() & 0o7777, 0o644);
    // chmod then chown too.
    chmod(&m.p("secret"), 0o604).unwrap();
    lchown(&m.p("secret"), 7, 8).unwrap();
    assert_eq!(owner_mode(&m.p("secret")), (7, 8, 0o100604));
    // A directory made through the mount, and a chown of a directory.
    fs::create_dir(m.p("newdir")).unwrap();
    chmod(&m.p("newdir"), 0o700).unwrap();
    lchown(&m.p("newdir"), 42, 43).unwrap();
    assert_eq!(owner_mode(&m.p("newdir")), (42, 43, 0o40700));
    assert_eq!(meta(&f.upper().p("newdir")).uid(), 0);
    // Data written to a copied-up file keeps the record (copy of a metadata-only copy).
    pwrite(&m.p("plain"), 0, b"P");
    assert_eq!(owner_mode(&m.p("plain")), (2000, 3000, 0o100640));
    let shown: Vec<_> = ["own", "secret", "plain", "tmp", "tmp/mine", "newdir"]
        .iter()
        .map(|p| owner_mode(&m.p(p)))
        .collect();
    m.finish();
    // The same after a new mount.
    let m = f.mount_opts("xattr_permissions=2");
    let again: Vec<_> = ["own", "secret", "plain", "tmp", "tmp/mine", "newdir"]
        .iter()
        .map(|p| owner_mode(&m.p(p)))
        .collect();
    assert_eq!(shown, again);
    m.finish();
    // Without the option too: the upper's root says it keeps records.
    let m = f.mount();
    let plain: Vec<_> = ["own", "secret", "plain", "tmp", "tmp/mine", "newdir"]
        .iter()
        .map(|p| owner_mode(&m.p(p)))
        .collect();
    assert_eq!(shown, plain);
    lchown(&m.p("own"), 77, 78).unwrap();
    assert_eq!(meta(&f.upper().p("own")).uid(), 0);
    assert!(record(&f.upper().p("own"), CONTAINERS).starts_with("77:78:"));
    m.finish();
}

#[test]
fn lower_records_honoured_when_the_layer_root_has_one() {
    if !can_run("lower_records_honoured_when_the_layer_root_has_one") {
        return;
    }
    let f = Fixture::new(3);
    // Layer 0: records under the older fuse-overlayfs name, root marked.
    f.lower(0).file("a", "a");
    chmod(&f.lower(0).p("a"), 0o644).unwrap();
    set_xattr(f.lower(0).path(), LEGACY, b"0:0:755").unwrap();
    set_xattr(&f.lower(0).p("a"), LEGACY, b"11:12:600").unwrap();
    // Layer 1: a record on a file, but the root has none: not honoured (as fuse-overlayfs).
    f.lower(1).file("b", "b");
    chmod(&f.lower(1).p("b"), 0o644).unwrap();
    set_xattr(&f.lower(1).p("b"), CONTAINERS, b"21:22:600").unwrap();
    // Layer 2: containers-storage's name, root marked.
    f.lower(2).file("c", "c");
    chmod(&f.lower(2).p("c"), 0o644).unwrap();
    set_xattr(f.lower(2).path(), CONTAINERS, b"0:0:755").unwrap();
    set_xattr(&f.lower(2).p("c"), CONTAINERS, b"31:32:0444:file").unwrap();
    // Without xattr_permissions too: lower records are read whenever the root has one.
    for opts in ["", "xattr_permissions=2"] {
        let m = f.mount_opts(opts);
        assert_eq!(owner_mode(&m.p("a")), (11, 12, 0o100600), "{opts}");
        assert_eq!(owner_mode(&m.p("b")), (0, 0, 0o100644), "{opts}");
        assert_eq!(owner_mode(&m.p("c")), (31, 32, 0o100444), "{opts}");
        // A copy-up (a write) keeps what was shown.
        chmod(&m.p("c"), 0o644).unwrap();
        assert_eq!(owner_mode(&m.p("c")), (31, 32, 0o100644), "{opts}");
        chmod(&m.p("c"), 0o444).unwrap();
        m.finish();
        if opts.is_empty() {
            // No records kept in the upper: the copy got them on disk.
            let c = meta(&f.upper().p("c"));
            assert_eq!((c.uid(), c.gid(), c.mode() & 0o7777), (31, 32, 0o444));
            assert!(get_xattr(f.upper().path(), CONTAINERS).is_err());
            fs::remove_dir_all(f.upper().path()).unwrap();
            fs::create_dir(f.upper().path()).unwrap();
        }
    }
    // The copy-up in the record-keeping upper: recorded, real owner the daemon's.
    let c = f.upper().p("c");
    assert_eq!(record(&c, CONTAINERS), "31:32:444:file");
}

#[test]
fn xattr_permissions_1_uses_the_privileged_record() {
    if !can_run("xattr_permissions_1_uses_the_privileged_record") {
        return;
    }
    let f = Fixture::new(1);
    f.lower(0).file("x", "x");
    let m = f.mount_opts("xattr_permissions=1");
    lchown(&m.p("x"), 5, 6).unwrap();
    assert_eq!((owner_mode(&m.p("x")).0, owner_mode(&m.p("x")).1), (5, 6));
    m.finish();
    let up = f.upper().p("x");
    assert!(record(&up, "security.fuseoverlayfs.override_stat").starts_with("5:6:"));
    assert_eq!(meta(&up).uid(), 0);
}

#[test]
fn ignore_chown_errors_and_bad_option() {
    if !can_run("ignore_chown_errors_and_bad_option") {
        return;
    }
    let f = Fixture::new(1);
    f.lower(0).file("x", "x");
    let e = f.try_mount_args(&["-f", "-o", &format!("lowerdir={},xattr_permissions=3", f.lowerdir())]);
    assert!(e.is_err_and(|e| e.contains("xattr_permissions")));
    let m = f.mount_opts("ignore_chown_errors");
    lchown(&m.p("x"), 5, 6).unwrap();
    assert_eq!((meta(&m.p("x")).uid(), meta(&m.p("x")).gid()), (5, 6));
    m.finish();
}

// ---------------------------------------------------------------------------
// Interchange with fuse-overlayfs
// ---------------------------------------------------------------------------

/// A fuse-overlayfs mount (it daemonizes); unmounted on drop.
struct Fo {
    mnt: PathBuf,
}

impl Fo {
    fn mount(f: &Fixture, extra: &str) -> Fo {
        let o = format!(
            "lowerdir={},upperdir={},workdir={},xattr_permissions=2{extra}",
            f.lowerdir(),
            f.upper().path().display(),
            f.work.display()
        );
        let out = Command::new(FUSE_OVERLAYFS)
            .args(["-o", &o])
            .arg(&f.mnt)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "fuse-overlayfs -o {o}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + TIMEOUT;
        while !is_fuse_mount(&f.mnt) {
            assert!(Instant::now() < deadline, "fuse-overlayfs: no mount");
            std::thread::sleep(Duration::from_millis(10));
        }
        Fo { mnt: f.mnt.clone() }
    }
}

impl Drop for Fo {
    fn drop(&mut self) {
        assert!(force_unmount(&self.mnt), "fuse-overlayfs mount busy");
        // fuse-overlayfs exits once unmounted; wait until no daemon serves it.
        std::thread::sleep(Duration::from_millis(100));
    }
}

const PATHS: [&str; 7] = ["own", "secret", "plain", "tmp", "made", "madedir", "madedir/inner"];

fn views(mnt: &Path) -> Vec<(String, (u32, u32, u32))> {
    PATHS
        .iter()
        .filter(|p| exists(&mnt.join(p)))
        .map(|p| (p.to_string(), owner_mode(&mnt.join(p))))
        .collect()
}

/// Changes through a mount at `mnt` (no chmod after a chown of the same file:
/// fuse-overlayfs 1.10 loses the owner then).
fn change(mnt: &Path, base: u32) {
    lchown(&mnt.join("own"), base + 1, base + 2).unwrap();
    chmod(&mnt.join("secret"), 0o640).unwrap();
    write(&mnt.join("made"), "new");
    chmod(&mnt.join("made"), 0o600).unwrap();
    lchown(&mnt.join("made"), base + 3, base + 4).unwrap();
    fs::create_dir_all(mnt.join("madedir/inner")).unwrap();
    chmod(&mnt.join("madedir"), 0o750).unwrap();
    lchown(&mnt.join("madedir"), base + 5, base + 6).unwrap();
}

/// `recorded_lower` where every file has a record: fuse-overlayfs 1.10 hides a file
/// without one in a layer whose root has one (an ENODATA it does not suppress), where
/// strata and later fuse-overlayfs show the file as it is on disk.
fn all_recorded_lower(f: &Fixture) {
    recorded_lower(f);
    set_xattr(&f.lower(0).p("plain"), CONTAINERS, b"0:0:644").unwrap();
}

fn fuse_overlayfs_here(what: &str) -> bool {
    if !Path::new(FUSE_OVERLAYFS).exists() {
        eprintln!("skipped {what}: {FUSE_OVERLAYFS} not installed (apt-get install -y fuse-overlayfs)");
        return false;
    }
    can_run(what)
}

#[test]
fn interchange_from_fuse_overlayfs_and_back() {
    if !fuse_overlayfs_here("interchange_from_fuse_overlayfs_and_back") {
        return;
    }
    let f = Fixture::new(1);
    all_recorded_lower(&f);
    // fuse-overlayfs writes the upper.
    let fo = Fo::mount(&f, "");
    change(&f.mnt, 100);
    let theirs = views(&f.mnt);
    drop(fo);
    assert!(
        get_xattr(f.upper().path(), LEGACY).is_ok(),
        "fuse-overlayfs 1.10 marks the upper root"
    );
    // strata shows the same, then changes more.
    let m = f.mount_opts("xattr_permissions=2");
    assert_eq!(
        views(m.path()),
        theirs,
        "an upper written by fuse-overlayfs, through strata"
    );
    lchown(&m.p("plain"), 500, 501).unwrap();
    chmod(&m.p("plain"), 0o604).unwrap();
    chmod(&m.p("own"), 0o660).unwrap();
    fs::create_dir(m.p("madedir/more")).unwrap();
    lchown(&m.p("madedir/more"), 9, 9).unwrap();
    let ours = views(m.path());
    let more = owner_mode(&m.p("madedir/more"));
    assert_eq!(ours.iter().find(|v| v.0 == "plain").unwrap().1, (500, 501, 0o100604));
    m.finish();
    // And fuse-overlayfs shows what strata wrote.
    let fo = Fo::mount(&f, "");
    assert_eq!(
        views(&f.mnt),
        ours,
        "an upper written by strata, through fuse-overlayfs"
    );
    assert_eq!(owner_mode(&f.mnt.join("madedir/more")), more);
    drop(fo);
}

#[test]
fn interchange_from_strata_to_fuse_overlayfs() {
    if !fuse_overlayfs_here("interchange_from_strata_to_fuse_overlayfs") {
        return;
    }
    // A fresh upper written by strata; with override_stat=fuseoverlayfs it records
    // under the name fuse-overlayfs before 1.14 reads.
    let f = Fixture::new(1);
    all_recorded_lower(&f);
    let m = f.mount_opts("xattr_permissions=2,override_stat=fuseoverlayfs");
    change(m.path(), 200);
    chmod(&m.p("own"), 0o600).unwrap(); // after the chown: both kept
    let ours = views(m.path());
    assert_eq!(ours[0], ("own".to_string(), (201, 202, 0o100600)));
    m.finish();
    let fo = Fo::mount(&f, "");
    assert_eq!(views(&f.mnt), ours, "a fresh strata upper, through fuse-overlayfs");
    drop(fo);
    // The default name (user.containers.override_stat, current fuse-overlayfs and
    // containers-storage) is read back by strata whatever wrote it.
    let g = Fixture::new(1);
    recorded_lower(&g);
    let m = g.mount_opts("xattr_permissions=2");
    change(m.path(), 300);
    let ours = views(m.path());
    m.finish();
    assert!(get_xattr(&g.upper().p("own"), CONTAINERS).is_ok());
    let m = g.mount_opts("xattr_permissions=2");
    assert_eq!(views(m.path()), ours);
    m.finish();
}

// ---------------------------------------------------------------------------
// A normal user's mount (no user namespace range)
// ---------------------------------------------------------------------------

const USER: u32 = 1000;

/// Runs `sh -c CMD` as USER and returns its stdout, or None when it failed.
fn user_output(cmd: &str) -> Option<String> {
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={USER}"),
            &format!("--regid={USER}"),
            "--clear-groups",
            "sh",
            "-c",
            cmd,
        ])
        .output()
        .expect("setpriv");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// strata mounted by USER (through fusermount3) on a fixture whose upper, work dir and
/// mount point are USER's; the lower file `shared` is root's, mode 0666. Returns the
/// answer of USER appending to `shared` and then showing its owner and mode, and the
/// fixture.
fn user_mount_append(opts: &str) -> (Option<String>, Fixture) {
    let f = Fixture::new(1);
    f.lower(0).file("shared", "root's\n");
    chmod(&f.lower(0).p("shared"), 0o666).unwrap();
    for d in [f.upper().path(), &f.work, &f.mnt] {
        lchown(d, USER, USER).unwrap();
    }
    let o = format!(
        "lowerdir={},upperdir={},workdir={}{opts}",
        f.lowerdir(),
        f.upper().path().display(),
        f.work.display()
    );
    let mut child = Command::new("setpriv")
        .args([
            &format!("--reuid={USER}"),
            &format!("--regid={USER}"),
            "--clear-groups",
            STRATA,
            "-f",
            "-o",
            &o,
        ])
        .arg(&f.mnt)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while !is_fuse_mount(&f.mnt) {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("strata as uid {USER} -o {o}: no mount");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let shared = f.mnt.join("shared");
    let r = user_output(&format!("echo more >> {0} && stat -c %u:%g:%a {0}", shared.display()));
    assert!(force_unmount(&f.mnt));
    let (st, killed) = wait_timeout(&mut child, TIMEOUT);
    assert!(!killed && st.success(), "strata as uid {USER}: {st}");
    (r, f)
}

#[test]
fn a_users_mount_ignores_or_records_chowns_it_may_not_do() {
    if !can_run("a_users_mount_ignores_or_records_chowns_it_may_not_do") {
        return;
    }
    let mode = meta(Path::new("/dev/fuse")).permissions().mode();
    if mode & 0o006 != 0o006 {
        eprintln!("skipped a_users_mount_ignores_or_records_chowns_it_may_not_do: /dev/fuse is not open to users");
        return;
    }
    // The copy-up of root's file cannot give the copy to root: an error...
    assert_eq!(user_mount_append("").0, None);
    // ... unless chown errors are ignored: the copy is the user's on disk.
    let (r, f) = user_mount_append(",ignore_chown_errors");
    assert!(r.is_some(), "append with ignore_chown_errors");
    let up = meta(&f.upper().p("shared"));
    assert_eq!((up.uid(), up.gid()), (USER, USER));
    // With records, the copy shows root's owner still: the record says so.
    let (r, f) = user_mount_append(",xattr_permissions=2");
    assert_eq!(r.as_deref(), Some("0:0:666"));
    assert_eq!(record(&f.upper().p("shared"), CONTAINERS), "0:0:666");
    assert_eq!(meta(&f.upper().p("shared")).uid(), USER);
}
