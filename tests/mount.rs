//! The command line, mount modes and the daemon's life cycle.

mod common;

use common::*;
use std::fs::{self, OpenOptions};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn long_options_form() {
    let fx = Fixture::new(2);
    fx.lower(1).file("f", "l1").file("g", "l1");
    fx.lower(0).file("f", "l0");
    let (l0, l1) = (
        fx.lower(0).path().to_str().unwrap(),
        fx.lower(1).path().to_str().unwrap(),
    );
    let (u, w) = (fx.upper().path().to_str().unwrap(), fx.work.to_str().unwrap());
    let m = fx.mount_args(&["-f", "--lower", l0, "--lower", l1, "--upper", u, "--workdir", w]);
    assert_eq!(read_string(&m.p("f")), "l0");
    assert_eq!(read_string(&m.p("g")), "l1");
    fs::write(m.p("new"), "n").unwrap();
    assert_eq!(read_string(&fx.upper().p("new")), "n");
    m.finish();
}

#[test]
fn escaped_colon_in_lowerdir() {
    let fx = Fixture::new(0);
    let odd = Layer::new(fx.root().join("a:b"));
    odd.file("f", "colon");
    let plain = Layer::new(fx.root().join("plain"));
    plain.file("g", "plain");
    let o = format!(
        "lowerdir={},upperdir={},workdir={}",
        join_lowers(&[odd.path(), plain.path()]),
        fx.upper().path().display(),
        fx.work.display()
    );
    assert!(o.contains("a\\:b"));
    let m = fx.mount_args(&["-f", "-o", &o]);
    assert_eq!(read_string(&m.p("f")), "colon");
    assert_eq!(read_string(&m.p("g")), "plain");
    m.finish();
}

#[test]
fn read_only_mount_without_upper() {
    let fx = Fixture::new(2);
    fx.lower(1).file("f", "l1").file("d/g", "l1");
    fx.lower(0).file("h", "l0").xattr("h", "user.k", b"v");
    let m = fx.mount_ro();

    assert_eq!(read_string(&m.p("f")), "l1");
    assert_eq!(read_string(&m.p("h")), "l0");
    assert_eq!(names(m.path()), strs(&["d", "f", "h"]));
    assert_errno(fs::write(m.p("new"), "x"), libc::EROFS, "create");
    assert_errno(
        OpenOptions::new().write(true).open(m.p("f")),
        libc::EROFS,
        "open for writing",
    );
    assert_errno(
        OpenOptions::new().read(true).write(true).open(m.p("f")),
        libc::EROFS,
        "open read-write",
    );
    assert_errno(fs::create_dir(m.p("nd")), libc::EROFS, "mkdir");
    assert_errno(fs::remove_file(m.p("f")), libc::EROFS, "unlink");
    assert_errno(fs::remove_dir_all(m.p("d")), libc::EROFS, "rm -r");
    assert_errno(fs::rename(m.p("f"), m.p("f2")), libc::EROFS, "rename");
    assert_errno(chmod(&m.p("f"), 0o600), libc::EROFS, "chmod");
    assert_errno(lchown(&m.p("f"), 1, 1), libc::EROFS, "chown");
    assert_errno(set_times(&m.p("f"), (1, 0), (1, 0)), libc::EROFS, "utimes");
    assert_errno(set_xattr(&m.p("h"), "user.k", b"w"), libc::EROFS, "setxattr");
    assert_errno(remove_xattr(&m.p("h"), "user.k"), libc::EROFS, "removexattr");
    assert_errno(fs::hard_link(m.p("f"), m.p("l")), libc::EROFS, "link");
    assert_errno(std::os::unix::fs::symlink("f", m.p("s")), libc::EROFS, "symlink");
    assert_eq!(get_xattr(&m.p("h"), "user.k").unwrap(), b"v");
    // statfs reports the top lower's filesystem.
    let (sm, sl) = (statfs(m.path()).unwrap(), statfs(fx.lower(0).path()).unwrap());
    assert_eq!(
        sm.f_blocks * sm.f_frsize as u64,
        sl.f_blocks * sl.f_frsize as u64,
        "total size"
    );
    m.finish();
}

#[test]
fn missing_lower_fails_with_its_name_and_mounts_nothing() {
    let fx = Fixture::new(1);
    let missing = fx.root().join("no-such-layer");
    let o = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        fx.lower(0).path().display(),
        missing.display(),
        fx.upper().path().display(),
        fx.work.display()
    );
    let mut child = Command::new(STRATA)
        .args(["-f", "-o", &o])
        .arg(&fx.mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (st, killed) = wait_timeout(&mut child, TIMEOUT);
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let mounted = is_fuse_mount(&fx.mnt);
    force_unmount(&fx.mnt);
    assert!(!killed, "strata kept running with a missing lower layer");
    assert!(!st.success(), "strata exited {st} with a missing lower layer");
    assert!(!mounted, "something got mounted");
    assert!(
        err.contains(missing.to_str().unwrap()),
        "error message does not name {}: {err:?}",
        missing.display()
    );
    assert!(
        tree(fx.upper().path()).is_empty(),
        "upper written to: {:?}",
        tree(fx.upper().path())
    );
}

/// Mounts with `workdir=w` and expects a refusal whose message names `w`.
fn assert_workdir_refused(fx: &Fixture, w: &Path) {
    let o = format!(
        "lowerdir={},upperdir={},workdir={}",
        fx.lowerdir(),
        fx.upper().path().display(),
        w.display()
    );
    match fx.try_mount_args(&["-f", "-o", &o]) {
        Ok(m) => {
            drop(m);
            panic!("mounted with the unusable work dir {}", w.display());
        }
        Err(e) => {
            assert!(e.contains("exited"), "{e}");
            let output = e.split_once("its output:").map(|x| x.1).unwrap_or("");
            assert!(
                output.contains(w.to_str().unwrap()),
                "the error does not name the work dir: {e}"
            );
        }
    }
    assert!(!is_fuse_mount(&fx.mnt));
}

#[test]
fn workdir_on_another_filesystem_is_refused() {
    let fx = Fixture::new(1);
    let w = fx.dir("tmpfs-work");
    fx.mount_tmpfs(&w);
    assert_workdir_refused(&fx, &w);
}

#[test]
fn foreign_non_empty_workdir_is_refused() {
    let fx = Fixture::new(1);
    let w = fx.dir("busy-work");
    fs::write(w.join("precious"), "not strata's").unwrap();
    assert_workdir_refused(&fx, &w);
    assert_eq!(read_string(&w.join("precious")), "not strata's");
}

#[test]
fn unmount_ends_the_daemon_with_status_0() {
    let fx = Fixture::new(1);
    fx.lower(0).file("f", "x");
    let m = fx.mount();
    assert_eq!(read_string(&m.p("f")), "x");
    let mnt = m.path().to_path_buf();
    let st = m.unmount();
    assert!(st.success(), "exit status {st}");
    assert!(!is_fuse_mount(&mnt));
}

#[test]
fn sigterm_and_sigint_unmount_cleanly() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let fx = Fixture::new(1);
        fx.lower(0).file("f", "x");
        let m = fx.mount();
        assert_eq!(read_string(&m.p("f")), "x");
        unsafe { libc::kill(m.pid() as i32, sig) };
        let deadline = Instant::now() + TIMEOUT;
        while is_fuse_mount(&fx.mnt) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let gone = !is_fuse_mount(&fx.mnt);
        let st = m.unmount();
        assert!(gone, "still mounted {TIMEOUT:?} after signal {sig}");
        assert!(st.success(), "exit status {st} after signal {sig}");
    }
}

#[test]
fn debug_flag_stays_in_foreground_and_logs() {
    let fx = Fixture::new(1);
    fx.lower(0).file("f", "x");
    let o = format!(
        "lowerdir={},upperdir={},workdir={}",
        fx.lowerdir(),
        fx.upper().path().display(),
        fx.work.display()
    );
    let m = fx.mount_args(&["-d", "-o", &o]);
    assert_eq!(read_string(&m.p("f")), "x");
    std::thread::sleep(Duration::from_millis(100));
    assert!(!m.log().trim().is_empty(), "-d printed nothing");
    m.finish();
}

/// Reads a pipe to EOF in a thread; the receiver gets its content at EOF.
fn drain(mut r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    rx
}

/// Pids of processes whose command line mentions `needle`.
fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.to_str().unwrap().as_bytes();
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn daemon_mode_detaches_with_pipes_closed() {
    let fx = Fixture::new(1);
    fx.lower(0).file("f", "daemon");
    let before = fx.lower(0).snapshot();
    let o = format!(
        "lowerdir={},upperdir={},workdir={}",
        fx.lowerdir(),
        fx.upper().path().display(),
        fx.work.display()
    );
    let mut child = Command::new(STRATA)
        .args(["-o", &o])
        .arg(&fx.mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let (st, killed) = wait_timeout(&mut child, TIMEOUT);
    // Whatever happens next, the Fixture's drop unmounts what is left.
    assert!(!killed, "strata without -f did not exit within {TIMEOUT:?}");
    let err_text = err.recv_timeout(TIMEOUT);
    let out_text = out.recv_timeout(TIMEOUT);
    assert!(st.success(), "strata exited {st}; stderr: {err_text:?}");
    assert!(
        out_text.is_ok() && err_text.is_ok(),
        "stdout/stderr still open {TIMEOUT:?} after the launcher exited: the daemon kept them"
    );
    assert!(is_fuse_mount(&fx.mnt), "not mounted when the launcher returned");
    assert_eq!(read_string(&fx.mnt.join("f")), "daemon");
    fs::write(fx.mnt.join("g"), "via daemon").unwrap();

    let daemons = processes_mentioning(&fx.mnt);
    assert!(!daemons.is_empty(), "no daemon process found");
    let st = Command::new("fusermount3").arg("-u").arg(&fx.mnt).status().unwrap();
    assert!(st.success(), "fusermount3 -u failed");
    assert!(!is_fuse_mount(&fx.mnt));
    let deadline = Instant::now() + TIMEOUT;
    while !processes_mentioning(&fx.mnt).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        processes_mentioning(&fx.mnt).is_empty(),
        "daemon still running after unmount"
    );
    assert_eq!(read_string(&fx.upper().p("g")), "via daemon");
    before.assert_unchanged(fx.lower(0).path());
}

#[test]
fn xattrs_set_get_list_remove() {
    let fx = Fixture::new(1);
    fx.lower(0)
        .file("lower", "x")
        .xattr("lower", "user.from_lower", b"L")
        .dir("d");
    let m = fx.mount();
    fs::write(m.p("upper"), "y").unwrap();

    for n in ["lower", "upper", "d"] {
        let p = m.p(n);
        set_xattr(&p, "user.one", b"1").unwrap();
        set_xattr(&p, "user.two", b"").unwrap();
        set_xattr(&p, "trusted.three", &[0u8, 255, 7]).unwrap();
        let big = vec![b'z'; 3000];
        set_xattr(&p, "user.big", &big).unwrap();
        assert_eq!(get_xattr(&p, "user.one").unwrap(), b"1", "{n}");
        assert_eq!(get_xattr(&p, "user.two").unwrap(), b"", "{n}");
        assert_eq!(get_xattr(&p, "trusted.three").unwrap(), &[0u8, 255, 7], "{n}");
        assert_eq!(get_xattr(&p, "user.big").unwrap(), big, "{n}");
        let list = list_xattr(&p).unwrap();
        for want in ["user.one", "user.two", "trusted.three", "user.big"] {
            assert!(list.contains(&want.to_string()), "{n}: {want} not in {list:?}");
        }
        set_xattr(&p, "user.one", b"changed").unwrap();
        assert_eq!(get_xattr(&p, "user.one").unwrap(), b"changed");
        remove_xattr(&p, "user.one").unwrap();
        assert_errno(get_xattr(&p, "user.one"), libc::ENODATA, "removed xattr");
        assert_errno(remove_xattr(&p, "user.one"), libc::ENODATA, "remove twice");
        assert_errno(get_xattr(&p, "user.never"), libc::ENODATA, "missing xattr");
        assert!(!list_xattr(&p).unwrap().contains(&"user.one".to_string()));
    }
    assert_eq!(get_xattr(&m.p("lower"), "user.from_lower").unwrap(), b"L");
    assert_eq!(get_xattr(&fx.upper().p("lower"), "user.two").unwrap(), b"");
    assert_eq!(get_xattr(&fx.upper().p("d"), "trusted.three").unwrap(), &[0u8, 255, 7]);
    m.finish();
}

#[test]
fn statfs_reports_the_upper_filesystem() {
    let fx = Fixture::new(1);
    fx.lower(0).file("f", "x");
    let m = fx.mount();
    let (sm, su) = (statfs(m.path()).unwrap(), statfs(fx.upper().path()).unwrap());
    assert!(
        sm.f_bsize > 0 && sm.f_blocks > 0,
        "empty statfs: bsize {} blocks {}",
        sm.f_bsize,
        sm.f_blocks
    );
    assert_eq!(
        sm.f_blocks * sm.f_frsize as u64,
        su.f_blocks * su.f_frsize as u64,
        "total size"
    );
    assert!(sm.f_namelen > 0);
    assert_eq!(sm.f_files, su.f_files, "total inodes");
    m.finish();
}
