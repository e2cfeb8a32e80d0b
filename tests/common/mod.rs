//! Shared harness for the integration tests.
//!
//! - [`Fixture`]: a temporary directory holding lower layers `l0` (top) … `lN`,
//!   an upper layer, a work dir and a mount point, plus a [`Layer`] builder to
//!   fill the layers (files, dirs, symlinks, fifos, hard links, xattrs and both
//!   forms of whiteouts and opaque markers).
//! - [`Mount`]: a running `strata -f` daemon. Created by [`Fixture::mount`] and
//!   friends, it waits until the mount is live, and always unmounts and reaps
//!   the daemon when dropped, also when the test panics.
//! - [`Snapshot`]: the state of a directory tree (names, types, sizes, content
//!   hashes, modes, owners, times, xattrs) to check that lower layers are never
//!   written.
//! - Thin wrappers over syscalls that `std` does not offer (renameat2, mknod,
//!   xattrs, statfs, utimensat, raw readdir).

#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::hash::Hasher;
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The binary under test.
pub const STRATA: &str = env!("CARGO_BIN_EXE_strata");
/// How long a mount may take to show up, and a daemon to exit after unmount.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// A mount still up after this long is taken for a hung daemon and killed, so
/// that a test blocked in a system call on it fails instead of hanging.
pub const WATCHDOG: Duration = Duration::from_secs(120);

/// AUFS whiteout prefix and opaque marker.
pub const WH: &str = ".wh.";
pub const OPQ: &str = ".wh..wh..opq";

// ---------------------------------------------------------------------------
// Syscall wrappers
// ---------------------------------------------------------------------------

pub fn cstr<P: AsRef<OsStr>>(p: P) -> CString {
    CString::new(p.as_ref().as_bytes()).expect("path with NUL byte")
}

fn cvt(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// The errno of a failed result; panics (naming `what`) if it succeeded.
#[track_caller]
pub fn errno<T: std::fmt::Debug>(r: io::Result<T>, what: &str) -> i32 {
    match r {
        Ok(v) => panic!("{what}: expected an error, got Ok({v:?})"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("{what}: not an OS error: {e}")),
    }
}

/// Asserts that `r` failed with `expected` (a libc errno constant).
#[track_caller]
pub fn assert_errno<T: std::fmt::Debug>(r: io::Result<T>, expected: i32, what: &str) {
    let got = errno(r, what);
    assert_eq!(
        got,
        expected,
        "{what}: expected {}, got {}",
        io::Error::from_raw_os_error(expected),
        io::Error::from_raw_os_error(got)
    );
}

pub fn mknod(path: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()> {
    let p = cstr(path);
    cvt(unsafe { libc::mknod(p.as_ptr(), mode as libc::mode_t, libc::makedev(major, minor)) })
}

pub fn mkfifo(path: &Path, perm: u32) -> io::Result<()> {
    mknod(path, libc::S_IFIFO | perm, 0, 0)
}

pub fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
    let (f, t) = (cstr(from), cstr(to));
    cvt(unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), flags) })
}

/// Sets an xattr without following symlinks.
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let (p, n) = (cstr(path), cstr(name));
    cvt(unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) })
}

pub fn get_xattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let (p, n) = (cstr(path), cstr(name));
    loop {
        let len = cvt_size(unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) })?;
        let mut buf = vec![0u8; len + 1];
        match cvt_size(unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

pub fn list_xattr(path: &Path) -> io::Result<Vec<String>> {
    let p = cstr(path);
    loop {
        let len = cvt_size(unsafe { libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) })?;
        let mut buf = vec![0u8; len + 1];
        match cvt_size(unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }) {
            Ok(n) => {
                buf.truncate(n);
                let mut names: Vec<String> = buf
                    .split(|&b| b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect();
                names.sort();
                return Ok(names);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

pub fn remove_xattr(path: &Path, name: &str) -> io::Result<()> {
    let (p, n) = (cstr(path), cstr(name));
    cvt(unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) })
}

/// All xattrs of `path` (not following symlinks) with their values.
pub fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let names = match list_xattr(path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return BTreeMap::new(),
        Err(e) => panic!("llistxattr {}: {e}", path.display()),
    };
    names
        .into_iter()
        .filter_map(|n| get_xattr(path, &n).ok().map(|v| (n, v)))
        .collect()
}

pub fn statfs(path: &Path) -> io::Result<libc::statfs> {
    let p = cstr(path);
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::statfs(p.as_ptr(), &mut st) })?;
    Ok(st)
}

/// Sets atime and mtime (seconds, nanoseconds) without following symlinks.
pub fn set_times(path: &Path, atime: (i64, i64), mtime: (i64, i64)) -> io::Result<()> {
    let p = cstr(path);
    let ts = [
        libc::timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1,
        },
        libc::timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1,
        },
    ];
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
}

pub fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

pub fn chmod(path: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

pub fn lstat(path: &Path) -> io::Result<fs::Metadata> {
    fs::symlink_metadata(path)
}

#[track_caller]
pub fn meta(path: &Path) -> fs::Metadata {
    lstat(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()))
}

pub fn exists(path: &Path) -> bool {
    lstat(path).is_ok()
}

#[track_caller]
pub fn ino(path: &Path) -> u64 {
    meta(path).ino()
}

#[track_caller]
pub fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[track_caller]
pub fn read_string(path: &Path) -> String {
    String::from_utf8(read(path)).expect("utf-8 content")
}

#[track_caller]
pub fn write(path: &Path, data: impl AsRef<[u8]>) {
    fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()))
}

/// Opens an existing file for writing, without truncating it.
#[track_caller]
pub fn open_write(path: &Path) -> File {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open for writing {}: {e}", path.display()))
}

#[track_caller]
pub fn pwrite(path: &Path, offset: u64, data: &[u8]) {
    open_write(path)
        .write_all_at(data, offset)
        .unwrap_or_else(|e| panic!("pwrite {}: {e}", path.display()))
}

/// One entry of a raw directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub ino: u64,
    pub dtype: u8,
}

/// Every entry `readdir(3)` returns, `.` and `..` included, in order.
pub fn readdir_raw(dir: &Path) -> io::Result<Vec<DirEntry>> {
    readdir_flags(dir, 0)
}

fn readdir_flags(dir: &Path, extra_flags: libc::c_int) -> io::Result<Vec<DirEntry>> {
    let p = cstr(dir);
    let fd = unsafe {
        libc::open(
            p.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | extra_flags,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let d = unsafe { libc::fdopendir(fd) };
    if d.is_null() {
        let e = io::Error::last_os_error();
        unsafe { libc::close(fd) };
        return Err(e);
    }
    let mut out = Vec::new();
    let res = loop {
        unsafe { *libc::__errno_location() = 0 };
        let ent = unsafe { libc::readdir64(d) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            break if e.raw_os_error() == Some(0) { Ok(()) } else { Err(e) };
        }
        let ent = unsafe { &*ent };
        let name = unsafe { CStr::from_ptr(ent.d_name.as_ptr()) };
        out.push(DirEntry {
            name: String::from_utf8_lossy(name.to_bytes()).into_owned(),
            ino: ent.d_ino,
            dtype: ent.d_type,
        });
    };
    unsafe { libc::closedir(d) };
    res.map(|()| out)
}

/// Sorted names in `dir` without `.` and `..`.
#[track_caller]
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Sorted relative paths of everything below `root` (not `root` itself).
pub fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut ents: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        ents.sort_by_key(|e| e.file_name());
        for e in ents {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// `names` with `&str` literals, for comparisons.
pub fn strs(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

pub fn is_whiteout_char(path: &Path) -> bool {
    lstat(path).map(|m| is_char_00(&m)).unwrap_or(false)
}

fn is_char_00(m: &fs::Metadata) -> bool {
    m.mode() & libc::S_IFMT == libc::S_IFCHR && m.rdev() == 0
}

// ---------------------------------------------------------------------------
// Mounts
// ---------------------------------------------------------------------------

/// Undoes the octal escapes (`\040` …) of /proc/self/mountinfo.
fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// (mount point, fs type) of every mount in this mount namespace.
pub fn mounts() -> Vec<(PathBuf, String)> {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    info.lines()
        .filter_map(|l| {
            let mut halves = l.splitn(2, " - ");
            let first: Vec<&str> = halves.next()?.split(' ').collect();
            let fstype = halves.next()?.split(' ').next()?.to_string();
            let mp = PathBuf::from(OsString::from_vec(unescape_mountinfo(first.get(4)?)));
            Some((mp, fstype))
        })
        .collect()
}

/// The fs type mounted at `path`, if something is (the topmost mount).
pub fn mount_type(path: &Path) -> Option<String> {
    mounts().into_iter().rev().find(|(mp, _)| mp == path).map(|(_, t)| t)
}

pub fn is_fuse_mount(path: &Path) -> bool {
    mount_type(path).is_some_and(|t| t == "fuse" || t.starts_with("fuse."))
}

/// Unmounts `path`: `fusermount3 -u` (retried briefly: a just-closed file can
/// keep it busy for a moment), then a lazy `umount -l` as a last resort.
/// Returns false if the lazy unmount was needed (files were left open on it).
pub fn force_unmount(path: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while mount_type(path).is_some() {
        let fuse = is_fuse_mount(path);
        let ok = if fuse {
            Command::new("fusermount3")
                .arg("-u")
                .arg("-q")
                .arg(path)
                .stderr(Stdio::null())
                .status()
        } else {
            Command::new("umount").arg(path).stderr(Stdio::null()).status()
        }
        .map(|s| s.success())
        .unwrap_or(false);
        if ok {
            continue;
        }
        if Instant::now() > deadline {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(path)
                .stderr(Stdio::null())
                .status();
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Waits for `child` to exit, killing it after `timeout`. Returns the status
/// and whether it had to be killed.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> (ExitStatus, bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return (st, false);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return (child.wait().expect("wait after kill"), true);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Collects a child's stdout and stderr into one buffer, so that the pipes
/// never fill up however much the daemon logs.
struct Output {
    buf: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Output {
    fn capture(child: &mut Child) -> Output {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let streams: Vec<Box<dyn Read + Send>> = [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .collect();
        for mut s in streams {
            let buf = buf.clone();
            readers.push(thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                while let Ok(n) = s.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    buf.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            }));
        }
        Output { buf, readers }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }

    /// Waits (bounded) for both pipes to reach EOF.
    fn join(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        for r in std::mem::take(&mut self.readers) {
            if r.is_finished() {
                let _ = r.join();
            }
        }
    }
}

/// The transport the tests run under: `STRATA_TEST_TRANSPORT=uring` mounts with
/// `-o io_uring=on` (scripts/test.sh turns /sys/module/fuse/parameters/enable_uring
/// on for that run and restores it); anything else, the default, is the classic one,
/// asked for with `-o io_uring=off` so that a module switch turned on meanwhile by
/// something else on the machine does not move the classic run onto the rings.
pub fn uring_transport() -> bool {
    std::env::var("STRATA_TEST_TRANSPORT").is_ok_and(|v| v == "uring")
}

/// Whether the kernel offers FUSE over io_uring now (the module switch is on).
pub fn uring_enabled() -> bool {
    fs::read_to_string("/sys/module/fuse/parameters/enable_uring").is_ok_and(|v| v.trim() == "Y")
}

fn transport_args() -> Vec<OsString> {
    if uring_transport() {
        vec!["-o".into(), "io_uring=on".into()]
    } else {
        vec!["-o".into(), "io_uring=off".into()]
    }
}

/// What a daemon mounted with `-o io_uring=on` logs (as a warning) when the mount
/// did not get the rings after all: the kernel did not offer them, they could not be
/// set up, or the kernel refused their registration. `None` when it logged none.
pub fn uring_fallback(log: &str) -> Option<&str> {
    log.lines()
        .find(|l| l.contains("transport: /dev/fuse") || l.contains("serving through /dev/fuse"))
}

/// A live strata mount served by a foreground daemon that this test owns.
pub struct Mount {
    mnt: PathBuf,
    child: Option<Child>,
    output: Output,
    /// Snapshots of the lower layers taken before mounting.
    lowers: Vec<(PathBuf, Snapshot)>,
    /// Set when the daemon is about to be reaped: stops the watchdog.
    done: Arc<AtomicBool>,
    /// Mounted under STRATA_TEST_TRANSPORT=uring with nothing of the test choosing
    /// otherwise: `finish` checks that the mount kept the rings.
    rings: bool,
}

/// Kills `pid` after [`WATCHDOG`] unless `done` is set first.
fn watchdog(pid: u32, mnt: PathBuf, done: Arc<AtomicBool>) {
    thread::spawn(move || {
        let deadline = Instant::now() + WATCHDOG;
        while Instant::now() < deadline {
            if done.load(Ordering::SeqCst) {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        if !done.load(Ordering::SeqCst) {
            eprintln!(
                "watchdog: {} mounted for {WATCHDOG:?}, killing strata (pid {pid})",
                mnt.display()
            );
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    });
}

impl Mount {
    /// Starts `strata ARGS` (ARGS must keep it in the foreground and end with
    /// the mount point `mnt`) and waits until `mnt` is a FUSE mount. Errors
    /// carry the daemon's output when it exits first or the wait times out.
    pub fn start(args: &[OsString], mnt: &Path, lowers: &[PathBuf]) -> Result<Mount, String> {
        Mount::start_env(args, mnt, lowers, &[])
    }

    /// Like [`Mount::start`], with extra environment variables for the daemon.
    pub fn start_env(args: &[OsString], mnt: &Path, lowers: &[PathBuf], env: &[(&str, &str)]) -> Result<Mount, String> {
        let lowers = lowers.iter().map(|l| (l.clone(), Snapshot::of(l))).collect();
        // A test that names a transport itself, or injects a ring failure, expects
        // what it asked for (tests/transport.rs).
        let rings = uring_transport()
            && !args.iter().any(|a| a.to_string_lossy().contains("io_uring="))
            && !env.iter().any(|(k, _)| k.starts_with("STRATA_TEST_URING"));
        let mut child = Command::new(STRATA)
            .args(transport_args())
            .args(args)
            // The control socket goes beside the mount point, not in /run/strata
            // (a daemon a test kills leaves its socket behind); a test may name another.
            .env("STRATA_RUNTIME_DIR", runtime_dir_for(mnt))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {STRATA}: {e}"))?;
        let mut output = Output::capture(&mut child);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if is_fuse_mount(mnt) {
                let done = Arc::new(AtomicBool::new(false));
                watchdog(child.id(), mnt.to_path_buf(), done.clone());
                return Ok(Mount {
                    mnt: mnt.to_path_buf(),
                    child: Some(child),
                    output,
                    lowers,
                    done,
                    rings,
                });
            }
            if let Some(st) = child.try_wait().expect("try_wait") {
                output.join(Duration::from_secs(2));
                force_unmount(mnt);
                return Err(format!(
                    "strata {args:?} exited ({st}) before the mount was live; its output:\n{}",
                    output.text()
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                output.join(Duration::from_secs(2));
                force_unmount(mnt);
                return Err(format!(
                    "strata {args:?}: no mount at {} after {TIMEOUT:?}; its output:\n{}",
                    mnt.display(),
                    output.text()
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// `rel` below the mount point.
    pub fn p(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mnt.join(rel)
    }

    /// What the daemon printed so far.
    pub fn log(&self) -> String {
        self.output.text()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon reaped").id()
    }

    /// Unmounts with `fusermount3 -u` and returns the daemon's exit status
    /// (it is killed if it does not exit within the timeout, and this panics).
    pub fn unmount(mut self) -> ExitStatus {
        let (st, killed) = self.stop();
        assert!(
            !killed,
            "strata did not exit after unmount (killed); output:\n{}",
            self.log()
        );
        st
    }

    /// Ends a test: unmounts, asserts that the daemon exited 0 and that no
    /// lower layer changed while mounted.
    pub fn finish(mut self) {
        let lowers = std::mem::take(&mut self.lowers);
        let (st, killed) = self.stop();
        assert!(
            !killed,
            "strata did not exit after unmount (killed); output:\n{}",
            self.log()
        );
        assert!(
            st.success(),
            "strata exited with {st} after unmount; output:\n{}",
            self.log()
        );
        if self.rings {
            let log = self.log();
            if let Some(l) = uring_fallback(&log) {
                panic!("mounted with -o io_uring=on, the mount fell back to /dev/fuse: {l}\noutput:\n{log}");
            }
        }
        for (root, before) in &lowers {
            before.assert_unchanged(root);
        }
    }

    /// Asserts now, while mounted, that no lower layer changed.
    pub fn assert_lowers_unchanged(&self) {
        for (root, before) in &self.lowers {
            before.assert_unchanged(root);
        }
    }

    fn stop(&mut self) -> (ExitStatus, bool) {
        // From here on the waits below are bounded and kill by themselves.
        self.done.store(true, Ordering::SeqCst);
        let clean = force_unmount(&self.mnt);
        if !clean {
            eprintln!(
                "{}: busy, unmounted lazily (a file or directory still open on it?)",
                self.mnt.display()
            );
        }
        let mut child = self.child.take().expect("daemon already reaped");
        // After a lazy unmount the daemon serves until the last open file is
        // closed: do not wait long for it.
        let r = wait_timeout(&mut child, if clean { TIMEOUT } else { Duration::from_secs(2) });
        self.output.join(Duration::from_secs(2));
        r
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.is_some() {
            let (st, killed) = self.stop();
            if thread::panicking() || killed || !st.success() {
                eprintln!(
                    "--- strata at {} exited with {st}{}; its output:\n{}\n---",
                    self.mnt.display(),
                    if killed { " (killed after timeout)" } else { "" },
                    self.log()
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Layers and fixtures
// ---------------------------------------------------------------------------

/// A directory used as a layer, with builder methods. Paths are relative to
/// the layer root; missing parent directories are created (mode 0755).
#[derive(Clone, Debug)]
pub struct Layer {
    root: PathBuf,
}

impl Layer {
    pub fn new(root: impl Into<PathBuf>) -> Layer {
        let root = root.into();
        fs::create_dir_all(&root).unwrap();
        Layer { root }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn p(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    fn prep(&self, rel: &str) -> PathBuf {
        let p = self.p(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        p
    }

    pub fn file(&self, rel: &str, content: impl AsRef<[u8]>) -> &Self {
        fs::write(self.prep(rel), content).unwrap();
        self
    }

    pub fn dir(&self, rel: &str) -> &Self {
        fs::create_dir_all(self.p(rel)).unwrap();
        self
    }

    pub fn symlink(&self, rel: &str, target: &str) -> &Self {
        std::os::unix::fs::symlink(target, self.prep(rel)).unwrap();
        self
    }

    pub fn fifo(&self, rel: &str) -> &Self {
        mkfifo(&self.prep(rel), 0o644).unwrap();
        self
    }

    pub fn char_dev(&self, rel: &str, major: u32, minor: u32) -> &Self {
        mknod(&self.prep(rel), libc::S_IFCHR | 0o644, major, minor).unwrap();
        self
    }

    /// A hard link `new` to the existing `existing`.
    pub fn hardlink(&self, existing: &str, new: &str) -> &Self {
        fs::hard_link(self.p(existing), self.prep(new)).unwrap();
        self
    }

    /// A sparse file of `len` bytes with `data` written at `offset`.
    pub fn sparse(&self, rel: &str, len: u64, offset: u64, data: &[u8]) -> &Self {
        let f = File::create(self.prep(rel)).unwrap();
        f.set_len(len).unwrap();
        f.write_all_at(data, offset).unwrap();
        self
    }

    /// AUFS whiteout: an empty `.wh.NAME` beside `rel`.
    pub fn whiteout(&self, rel: &str) -> &Self {
        let p = Path::new(rel);
        let name = format!("{WH}{}", p.file_name().unwrap().to_str().unwrap());
        let wh = p.parent().unwrap_or(Path::new("")).join(name);
        fs::write(self.prep(wh.to_str().unwrap()), b"").unwrap();
        self
    }

    /// AUFS opaque directory: `rel` (created if missing) with `.wh..wh..opq`.
    pub fn opaque(&self, rel: &str) -> &Self {
        self.dir(rel);
        fs::write(self.p(rel).join(OPQ), b"").unwrap();
        self
    }

    /// overlayfs whiteout: a character device 0/0 named `rel`.
    pub fn ovl_whiteout(&self, rel: &str) -> &Self {
        self.char_dev(rel, 0, 0)
    }

    /// overlayfs opaque directory: `trusted.overlay.opaque=y` on `rel`.
    pub fn ovl_opaque(&self, rel: &str) -> &Self {
        self.dir(rel).xattr(rel, "trusted.overlay.opaque", b"y")
    }

    /// overlayfs opaque directory, unprivileged form: `user.overlay.opaque=y`.
    pub fn user_opaque(&self, rel: &str) -> &Self {
        self.dir(rel).xattr(rel, "user.overlay.opaque", b"y")
    }

    pub fn xattr(&self, rel: &str, name: &str, value: &[u8]) -> &Self {
        set_xattr(&self.p(rel), name, value).unwrap();
        self
    }

    pub fn mode(&self, rel: &str, mode: u32) -> &Self {
        chmod(&self.p(rel), mode).unwrap();
        self
    }

    pub fn owner(&self, rel: &str, uid: u32, gid: u32) -> &Self {
        lchown(&self.p(rel), uid, gid).unwrap();
        self
    }

    /// Sets atime and mtime (whole seconds).
    pub fn times(&self, rel: &str, atime: i64, mtime: i64) -> &Self {
        set_times(&self.p(rel), (atime, 0), (mtime, 0)).unwrap();
        self
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot::of(&self.root)
    }
}

/// A temporary directory with lower layers `l0` (top) … `lN`, `upper`,
/// `work` and `mnt`. Anything still mounted below it is unmounted on drop.
pub struct Fixture {
    tmp: TempDir,
    root: PathBuf,
    pub lowers: Vec<Layer>,
    pub upper: Layer,
    pub work: PathBuf,
    pub mnt: PathBuf,
}

impl Fixture {
    pub fn new(n_lowers: usize) -> Fixture {
        let tmp = tempfile::Builder::new().prefix("strata-it.").tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        chmod(&root, 0o755).unwrap();
        let lowers = (0..n_lowers).map(|i| Layer::new(root.join(format!("l{i}")))).collect();
        let upper = Layer::new(root.join("upper"));
        let work = root.join("work");
        let mnt = root.join("mnt");
        fs::create_dir(&work).unwrap();
        fs::create_dir(&mnt).unwrap();
        Fixture {
            tmp,
            root,
            lowers,
            upper,
            work,
            mnt,
        }
    }

    /// The fixture's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Lower layer `i` (0 is the top one).
    pub fn lower(&self, i: usize) -> &Layer {
        &self.lowers[i]
    }

    pub fn upper(&self) -> &Layer {
        &self.upper
    }

    /// A new empty directory `name` in the fixture, e.g. for another layer.
    pub fn dir(&self, name: &str) -> PathBuf {
        let p = self.root.join(name);
        fs::create_dir_all(&p).unwrap();
        p
    }

    /// Mounts a fresh tmpfs on `dir` (unmounted when the fixture drops).
    pub fn mount_tmpfs(&self, dir: &Path) {
        fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=0755", "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", dir.display());
    }

    /// `lowerdir=` value: the lower layers top first, `:` escaped as `\:`.
    pub fn lowerdir(&self) -> String {
        self.lowers
            .iter()
            .map(|l| l.path().to_str().unwrap().replace(':', "\\:"))
            .collect::<Vec<_>>()
            .join(":")
    }

    fn lower_paths(&self) -> Vec<PathBuf> {
        self.lowers.iter().map(|l| l.path().to_path_buf()).collect()
    }

    /// The usual read-write mount: `strata -f -o lowerdir=…,upperdir=…,workdir=… MNT`.
    #[track_caller]
    pub fn mount(&self) -> Mount {
        self.mount_opts("")
    }

    /// Like [`Fixture::mount`] with extra comma-separated `-o` options.
    #[track_caller]
    pub fn mount_opts(&self, extra: &str) -> Mount {
        let mut o = format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lowerdir(),
            self.upper.path().display(),
            self.work.display()
        );
        if !extra.is_empty() {
            o.push(',');
            o.push_str(extra);
        }
        self.mount_args(&["-f", "-o", &o])
    }

    /// A read-only mount: lower layers only.
    #[track_caller]
    pub fn mount_ro(&self) -> Mount {
        let o = format!("lowerdir={}", self.lowerdir());
        self.mount_args(&["-f", "-o", &o])
    }

    /// Mounts with the given arguments followed by the mount point; panics
    /// with the daemon's output if it does not mount.
    #[track_caller]
    pub fn mount_args(&self, args: &[&str]) -> Mount {
        self.try_mount_args(args).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_mount_args(&self, args: &[&str]) -> Result<Mount, String> {
        self.try_mount_args_env(args, &[])
    }

    /// Like [`Fixture::try_mount_args`], with extra environment variables for the daemon.
    pub fn try_mount_args_env(&self, args: &[&str], env: &[(&str, &str)]) -> Result<Mount, String> {
        let mut a: Vec<OsString> = args.iter().map(OsString::from).collect();
        a.push(self.mnt.clone().into_os_string());
        Mount::start_env(&a, &self.mnt, &self.lower_paths(), env)
    }

    /// Names the upper layer holds at its top level, work dir excluded.
    pub fn upper_names(&self) -> Vec<String> {
        names(self.upper.path())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Never let TempDir's removal walk into a live mount: unmount anything
        // below the fixture, deepest first.
        let mut below: Vec<PathBuf> = mounts()
            .into_iter()
            .map(|(mp, _)| mp)
            .filter(|mp| mp.starts_with(&self.root))
            .collect();
        below.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for mp in below {
            eprintln!("fixture cleanup: unmounting {}", mp.display());
            force_unmount(&mp);
        }
    }
}

/// Bundles a fixture path list for ad-hoc mounts (`lowerdir=` strings).
pub fn join_lowers(paths: &[&Path]) -> String {
    paths
        .iter()
        .map(|p| p.to_str().unwrap().replace(':', "\\:"))
        .collect::<Vec<_>>()
        .join(":")
}

// ---------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------

/// The state of one entry of a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryState {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub size: u64,
    pub rdev: u64,
    pub ino: u64,
    /// Hash of the data (regular files: of each data extent with its offset).
    pub content: u64,
    pub link_target: Option<PathBuf>,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    /// None for symlinks: reading a link's target updates its atime.
    pub atime: Option<(i64, i64)>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// A recursive record of a directory tree, read without touching atimes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot(pub BTreeMap<PathBuf, EntryState>);

fn kind_of(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "file",
        libc::S_IFDIR => "dir",
        libc::S_IFLNK => "symlink",
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR => "chardev",
        libc::S_IFBLK => "blockdev",
        _ => "unknown",
    }
}

/// Hashes the data extents of a file (found with SEEK_DATA/SEEK_HOLE, so
/// sparse files cost only their data), opened with O_NOATIME.
fn hash_content(path: &Path, size: u64) -> u64 {
    use std::os::fd::AsRawFd;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let fd = f.as_raw_fd();
    let mut h = DefaultHasher::new();
    let mut pos: i64 = 0;
    let mut buf = vec![0u8; 1 << 16];
    while (pos as u64) < size {
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: only a hole remains
        }
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let end = if hole < 0 { size as i64 } else { hole };
        let mut off = data;
        while off < end {
            let want = ((end - off) as usize).min(buf.len());
            let n = f.read_at(&mut buf[..want], off as u64).unwrap();
            if n == 0 {
                break;
            }
            // Runs of zeros hash the same whether stored or a hole.
            if buf[..n].iter().any(|&b| b != 0) {
                h.write_i64(off);
                h.write(&buf[..n]);
            }
            off += n as i64;
        }
        pos = end;
    }
    h.finish()
}

impl Snapshot {
    pub fn of(root: &Path) -> Snapshot {
        let mut map = BTreeMap::new();
        Self::walk(root, Path::new(""), &mut map);
        Snapshot(map)
    }

    fn walk(root: &Path, rel: &Path, map: &mut BTreeMap<PathBuf, EntryState>) {
        let path = if rel.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        let m = meta(&path);
        let kind = kind_of(m.mode());
        let is_link = kind == "symlink";
        let state = EntryState {
            kind,
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            nlink: m.nlink(),
            size: m.size(),
            rdev: m.rdev(),
            ino: m.ino(),
            content: if kind == "file" {
                hash_content(&path, m.size())
            } else {
                0
            },
            link_target: if is_link {
                Some(fs::read_link(&path).unwrap())
            } else {
                None
            },
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            atime: if is_link {
                None
            } else {
                Some((m.atime(), m.atime_nsec()))
            },
            xattrs: xattrs(&path),
        };
        map.insert(rel.to_path_buf(), state);
        if kind == "dir" {
            let mut ents =
                readdir_flags(&path, libc::O_NOATIME).unwrap_or_else(|e| panic!("readdir {}: {e}", path.display()));
            ents.retain(|e| e.name != "." && e.name != "..");
            ents.sort_by(|a, b| a.name.cmp(&b.name));
            for e in ents {
                Self::walk(root, &rel.join(&e.name), map);
            }
        }
    }

    /// The same snapshot with access times left out: for the upper layer,
    /// where reads through the mount may legitimately update them.
    pub fn without_atimes(mut self) -> Snapshot {
        for e in self.0.values_mut() {
            e.atime = None;
        }
        self
    }

    /// Only what a user sees of a tree across mounts: inode numbers, ctimes
    /// and atimes left out (st_ino is stable for the life of one mount only).
    pub fn view(mut self) -> Snapshot {
        for e in self.0.values_mut() {
            e.ino = 0;
            e.ctime = (0, 0);
            e.atime = None;
        }
        self
    }

    /// Panics with a list of differences if `root` no longer matches
    /// (access times are compared only if this snapshot has them).
    #[track_caller]
    pub fn assert_unchanged(&self, root: &Path) {
        let mut now = Snapshot::of(root);
        for (p, e) in now.0.iter_mut() {
            if self.0.get(p).is_some_and(|b| b.atime.is_none()) {
                e.atime = None;
            }
        }
        if &now == self {
            return;
        }
        panic!("layer {} changed:\n{}", root.display(), self.diff(&now));
    }

    /// The differences from this snapshot to `now`, one entry a line (or two).
    pub fn diff(&self, now: &Snapshot) -> String {
        let mut diff = String::new();
        for (p, before) in &self.0 {
            match now.0.get(p) {
                None => writeln!(diff, "  removed: {}", p.display()).unwrap(),
                Some(after) if after != before => writeln!(
                    diff,
                    "  changed: {}\n    before: {before:?}\n    after:  {after:?}",
                    p.display()
                )
                .unwrap(),
                _ => {}
            }
        }
        for p in now.0.keys().filter(|p| !self.0.contains_key(*p)) {
            writeln!(diff, "  added: {}", p.display()).unwrap();
        }
        diff
    }
}

/// Where the daemon of a test mount at `mnt` keeps its control socket: beside the
/// mount point, inside the test's temp dir.
pub fn runtime_dir_for(mnt: &Path) -> PathBuf {
    mnt.parent().unwrap_or(Path::new("/tmp")).join(".strata-run")
}
