//! Harness of the union, differential, crash, hostile and lifetime tests: layer
//! stacks on temp dirs and a real strata mount that is always unmounted (also when a
//! test fails).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const STRATA: &str = env!("CARGO_BIN_EXE_strata");

/// A stack of layers on a temp dir: lowers `l0` (top) .. `lN`, `upper`, `work`, `mnt`.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
}

impl Stack {
    pub fn new(lowers: usize) -> Stack {
        let dir = tempfile::Builder::new().prefix("strata-test.").tempdir().unwrap();
        let lowers: Vec<PathBuf> = (0..lowers).map(|i| dir.path().join(format!("l{i}"))).collect();
        for l in &lowers {
            fs::create_dir(l).unwrap();
        }
        let (upper, work, mnt) = (
            dir.path().join("upper"),
            dir.path().join("work"),
            dir.path().join("mnt"),
        );
        for d in [&upper, &work, &mnt] {
            fs::create_dir(d).unwrap();
        }
        Stack {
            dir,
            lowers,
            upper,
            work,
            mnt,
        }
    }

    pub fn lower(&self, i: usize) -> &Path {
        &self.lowers[i]
    }

    /// The `-o` string for this stack (with the upper and work dir).
    pub fn opts(&self) -> String {
        let lowers: Vec<String> = self.lowers.iter().map(|l| l.display().to_string()).collect();
        format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            self.upper.display(),
            self.work.display()
        )
    }

    pub fn mount(&self) -> Mount {
        Mount::start(&self.opts(), &self.mnt)
    }

    /// Mounts with extra `-o` options appended.
    pub fn mount_with(&self, extra: &str) -> Mount {
        Mount::start(&format!("{},{extra}", self.opts()), &self.mnt)
    }

    pub fn mount_ro(&self) -> Mount {
        let lowers: Vec<String> = self.lowers.iter().map(|l| l.display().to_string()).collect();
        Mount::start(&format!("lowerdir={}", lowers.join(":")), &self.mnt)
    }

    /// A path in the merged view.
    pub fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// A path in the upper layer.
    pub fn u(&self, rel: &str) -> PathBuf {
        self.upper.join(rel)
    }

    /// A path in lower `i`.
    pub fn l(&self, i: usize, rel: &str) -> PathBuf {
        self.lowers[i].join(rel)
    }
}

/// A running `strata -f` on a mount point; unmounted and reaped on drop.
pub struct Mount {
    child: Option<Child>,
    /// The daemon's stderr once it has been reaped by `wait_exit`.
    stderr: Option<std::process::ChildStderr>,
    pub path: PathBuf,
    /// Mounted under STRATA_TEST_TRANSPORT=uring with nothing of the test choosing
    /// otherwise: `end` checks that the mount kept the rings.
    rings: bool,
}

pub fn is_mounted(path: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let p = path.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4) == Some(&p))
}

/// The daemon's stderr: a pipe, or with `STRATA_TEST_DAEMON_LOG=FILE` that file
/// (appended to), to read a daemon's log (`RUST_LOG=strata=debug`) after a run.
fn daemon_stderr() -> Stdio {
    match std::env::var_os("STRATA_TEST_DAEMON_LOG") {
        Some(p) => fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::piped()),
        None => Stdio::piped(),
    }
}

impl Mount {
    pub fn start(opts: &str, mnt: &Path) -> Mount {
        Mount::start_env(opts, mnt, &[])
    }

    /// Like [`Mount::start`], with extra environment variables for the daemon.
    pub fn start_env(opts: &str, mnt: &Path, env: &[(&str, &str)]) -> Mount {
        // STRATA_TEST_TRANSPORT=uring: the io_uring transport (see tests/common).
        let uring = std::env::var("STRATA_TEST_TRANSPORT").is_ok_and(|v| v == "uring");
        // A daemon log sent to a file (STRATA_TEST_DAEMON_LOG) is not read here.
        let rings = uring
            && !opts.contains("io_uring=")
            && !env.iter().any(|(k, _)| k.starts_with("STRATA_TEST_URING"))
            && std::env::var_os("STRATA_TEST_DAEMON_LOG").is_none();
        let child = Command::new(STRATA)
            .args(if uring { &["-o", "io_uring=on"][..] } else { &[] })
            .args(["-f", "-o", opts])
            .arg(mnt)
            // The control socket goes beside the mount point, not in /run/strata
            // (a daemon a test kills leaves its socket behind); a test may name another.
            .env("STRATA_RUNTIME_DIR", runtime_dir_for(mnt))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(daemon_stderr())
            .spawn()
            .expect("starting strata");
        let mut m = Mount {
            child: Some(child),
            stderr: None,
            path: mnt.to_path_buf(),
            rings,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_mounted(mnt) {
            if let Some(st) = m.child.as_mut().unwrap().try_wait().unwrap() {
                let mut err = String::new();
                let _ = m.child.take().unwrap().stderr.unwrap().read_to_string(&mut err);
                panic!("strata exited ({st}) before mounting: {err}");
            }
            assert!(
                Instant::now() < deadline,
                "strata did not mount {} in 10 s",
                mnt.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        m
    }

    /// Unmounts and returns the daemon's exit status.
    pub fn unmount(mut self) -> std::process::ExitStatus {
        self.stop().expect("daemon already gone")
    }

    /// Ends a test's mount: unmounts and asserts that the daemon exited 0 (and, under
    /// STRATA_TEST_TRANSPORT=uring, that the mount kept the rings), showing what it
    /// printed otherwise.
    #[track_caller]
    pub fn finish(self) {
        if let Err(e) = self.end() {
            panic!("{e}");
        }
    }

    /// [`Mount::finish`], with the failure returned instead.
    pub fn end(mut self) -> Result<(), String> {
        let st = self.stop().ok_or("daemon already gone")?;
        let mut err = String::new();
        if let Some(mut e) = self.take_stderr() {
            let _ = e.read_to_string(&mut err);
        }
        if !st.success() {
            return Err(format!(
                "strata on {} exited with {st} after unmount; stderr:\n{err}",
                self.path.display()
            ));
        }
        // What a daemon mounted with -o io_uring=on warns when the mount did not get
        // the rings after all (not offered, not set up, or registration refused).
        let fell_back = |l: &&str| l.contains("transport: /dev/fuse") || l.contains("serving through /dev/fuse");
        if let Some(l) = err.lines().find(fell_back).filter(|_| self.rings) {
            return Err(format!(
                "strata on {}, mounted with -o io_uring=on, fell back to /dev/fuse: {l}",
                self.path.display()
            ));
        }
        Ok(())
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon already reaped").id()
    }

    /// Sends `sig` to the daemon (it stays this guard's to reap).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own, not yet reaped, child.
        let r = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(r, 0, "kill({}, {sig}): {}", self.pid(), std::io::Error::last_os_error());
    }

    /// Waits up to `timeout` for the daemon to exit by itself; its status, or `None`
    /// if it is still running (it then stays this guard's).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.as_mut()?.try_wait().unwrap() {
                self.stderr = self.child.take().and_then(|mut c| c.stderr.take());
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The daemon's stderr (read it to the end once the daemon has exited, e.g. after
    /// `wait_exit`).
    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        match self.child.as_mut() {
            Some(c) => c.stderr.take(),
            None => self.stderr.take(),
        }
    }

    /// A crash: SIGKILLs the daemon, reaps it and lazily detaches the dead mount
    /// (requests in flight fail with ENOTCONN). Nothing of strata runs after the kill.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        lazy_unmount(&self.path);
    }

    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            // The daemon is gone (killed, or it exited): only a dead mount may be left.
            if is_mounted(&self.path) {
                lazy_unmount(&self.path);
            }
            return None;
        };
        if is_mounted(&self.path) {
            let ok = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.path)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.path).status();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        self.stderr = child.stderr.take();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Detaches a mount at once, even one whose daemon is dead (`umount -l`).
pub fn lazy_unmount(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_mounted(path) {
        let ok = Command::new("fusermount3")
            .arg("-uz")
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(path)
                .stderr(Stdio::null())
                .status();
        }
        if Instant::now() > deadline {
            panic!("{} still mounted after lazy unmounts", path.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A small seeded pseudo-random generator (xorshift64*), so randomised tests can be
/// replayed from the seed they print.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `$var` when set, else from the clock; prints the seed.
    pub fn from_env(var: &str) -> Rng {
        let seed = std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
        eprintln!("{var}={seed} (set it to replay this run)");
        Rng::new(seed)
    }

    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e3779b97f4a7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545f4914f6cdd1d)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Runs `argv` as the unprivileged user nobody (uid/gid 65534, no supplementary
/// groups); its exit status and stderr.
pub fn as_nobody(argv: &[&std::ffi::OsStr]) -> (std::process::ExitStatus, String) {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(argv)
        .stdin(Stdio::null())
        .output()
        .expect("running setpriv");
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

pub fn write(path: impl AsRef<Path>, data: &str) {
    let p = path.as_ref();
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(p, data).unwrap();
}

pub fn read(path: impl AsRef<Path>) -> String {
    fs::read_to_string(path.as_ref()).unwrap_or_else(|e| panic!("reading {}: {e}", path.as_ref().display()))
}

pub fn exists(path: impl AsRef<Path>) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// Sorted names of a directory.
pub fn names(dir: impl AsRef<Path>) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// errno of the last failed libc call.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

/// mknod(2); `Err(errno)` on failure.
pub fn mknod(p: &Path, mode: u32, dev: u64) -> Result<(), i32> {
    // SAFETY: a valid NUL-terminated path.
    let r = unsafe { libc::mknod(cstr(p).as_ptr(), mode, dev) };
    if r == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// renameat2(2) with flags; `Err(errno)` on failure.
pub fn rename2(from: &Path, to: &Path, flags: u32) -> Result<(), i32> {
    // SAFETY: valid NUL-terminated paths.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cstr(from).as_ptr(),
            libc::AT_FDCWD,
            cstr(to).as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

pub fn setxattr(p: &Path, name: &str, value: &[u8]) -> Result<(), i32> {
    let n = CString::new(name).unwrap();
    // SAFETY: valid path, name and value buffer.
    let r = unsafe { libc::lsetxattr(cstr(p).as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

pub fn getxattr(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid path and name; the buffer is writable for its length.
    let r = unsafe { libc::lgetxattr(cstr(p).as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(errno());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

pub fn listxattr(p: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid path; the buffer is writable for its length.
    let r = unsafe { libc::llistxattr(cstr(p).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(r >= 0, "listxattr {}: {}", p.display(), errno());
    let mut v: Vec<String> = buf[..r as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    v.sort();
    v
}

pub fn removexattr(p: &Path, name: &str) -> Result<(), i32> {
    let n = CString::new(name).unwrap();
    // SAFETY: valid path and name.
    let r = unsafe { libc::lremovexattr(cstr(p).as_ptr(), n.as_ptr()) };
    if r == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// An overlayfs-style whiteout (character device 0/0) in a lower layer.
pub fn overlay_whiteout(p: &Path) {
    mknod(p, libc::S_IFCHR | 0o600, 0).unwrap();
}

/// What a tree holds, for comparing a layer before and after: per path, type and
/// mode, size, content hash or link target, and xattrs.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).follow_links(false) {
        let e = e.unwrap();
        let md = e.metadata().unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
        let content = if md.is_file() {
            let data = fs::read(e.path()).unwrap();
            format!("{:x}", fnv(&data))
        } else if md.file_type().is_symlink() {
            fs::read_link(e.path()).unwrap().display().to_string()
        } else {
            String::new()
        };
        let x = listxattr(e.path());
        let xv: Vec<String> = x
            .iter()
            .map(|n| format!("{n}={:?}", getxattr(e.path(), n).unwrap_or_default()))
            .collect();
        let mtime = if md.is_dir() { 0 } else { md.mtime() };
        out.insert(
            rel,
            format!(
                "mode={:o} uid={} size={} mtime={} {} {:?}",
                md.mode(),
                md.uid(),
                if md.is_dir() { 0 } else { md.size() },
                mtime,
                content,
                xv
            ),
        );
    }
    out
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

pub fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

pub fn ino(p: &Path) -> u64 {
    fs::symlink_metadata(p).unwrap().ino()
}

/// Where the daemon of a test mount at `mnt` keeps its control socket: beside the
/// mount point, inside the test's temp dir.
pub fn runtime_dir_for(mnt: &Path) -> PathBuf {
    mnt.parent().unwrap_or(Path::new("/tmp")).join(".strata-run")
}
