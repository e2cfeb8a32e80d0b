//! Small helpers: errors, a deterministic PRNG, page-cache control, running
//! external tools, mount-table parsing, interruption and formatting.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Errors are plain messages: they end up in the report as they are.
pub type Res<T> = Result<T, String>;

/// Attach context to an `io::Error` (or anything printable).
pub trait Ctx<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Res<T>;
}

impl<T, E: std::fmt::Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: impl FnOnce() -> String) -> Res<T> {
        self.map_err(|e| format!("{}: {e}", what()))
    }
}

pub fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path contains NUL")
}

/// xorshift64*: fast, deterministic, good enough for file contents and offsets.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

pub fn sync_all() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() }
}

/// `sync; echo 3 > /proc/sys/vm/drop_caches`.
pub fn drop_caches() -> io::Result<()> {
    sync_all();
    fs::write("/proc/sys/vm/drop_caches", b"3")
}

/// Whether a program can be found on PATH (or is an existing path).
pub fn which(prog: &str) -> Option<PathBuf> {
    if prog.contains('/') {
        let p = PathBuf::from(prog);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(prog)).find(|p| p.is_file())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    if s.len() > 200 {
        s.truncate(200);
        s.push_str("...");
    }
    s
}

fn tail(bytes: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim();
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &s[start..])
}

/// Run a command to completion; fail with its stderr when it exits non-zero.
pub fn run(cmd: &mut Command) -> Res<()> {
    let what = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .ctx(|| format!("cannot run `{what}`"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`{what}` failed ({}): {}", out.status, tail(&out.stderr, 400)))
    }
}

/// Run a command, consuming its stdout as it comes; returns (lines, bytes) of
/// stdout. Stdout goes to a pipe, never to /dev/null (GNU tar skips reading
/// file data when it writes to /dev/null).
pub fn run_counting(cmd: &mut Command) -> Res<(u64, u64)> {
    let what = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ctx(|| format!("cannot run `{what}`"))?;
    let mut err_pipe = child.stderr.take().expect("stderr piped");
    let err_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let mut out = child.stdout.take().expect("stdout piped");
    let mut buf = vec![0u8; 1 << 16];
    let (mut lines, mut bytes) = (0u64, 0u64);
    loop {
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                bytes += n as u64;
                lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading output of `{what}`: {e}")),
        }
    }
    let status = child.wait().ctx(|| format!("waiting for `{what}`"))?;
    let stderr = err_thread.join().unwrap_or_default();
    if status.success() {
        Ok((lines, bytes))
    } else {
        Err(format!("`{what}` failed ({status}): {}", tail(&stderr, 400)))
    }
}

/// Undo the octal escapes of /proc/self/mountinfo (`\040` for a space...).
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') as u32 * 64 + (b[i + 2] - b'0') as u32 * 8 + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// One line of /proc/self/mountinfo: mount point and fs type.
pub struct MountInfo {
    pub point: PathBuf,
    pub fstype: String,
}

pub fn mount_table() -> Vec<MountInfo> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let sep = f.iter().position(|&x| x == "-")?;
            Some(MountInfo {
                point: unescape(f.get(4)?),
                fstype: f.get(sep + 1)?.to_string(),
            })
        })
        .collect()
}

pub fn is_mountpoint(p: &Path) -> bool {
    mount_table().iter().any(|m| m.point == p)
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    let msg = b"\nstrata bench: interrupted, unmounting and cleaning up...\n";
    // SAFETY: write(2) is async-signal-safe; the buffer is valid.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
    }
}

/// SIGINT/SIGTERM/SIGHUP only set a flag: the bench stops at the next check
/// and unwinds normally, so every mount guard unmounts. A watchdog aborts a
/// FUSE mount that keeps an operation stuck (see `mounts::Watchdog`).
pub fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    // SAFETY: a zeroed sigaction with a valid handler and empty mask.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub fn check_interrupted() -> Res<()> {
    if interrupted() {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

/// Three significant digits in a fitting unit.
pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    let (v, unit) = if s < 1e-3 {
        (s * 1e6, "µs")
    } else if s < 1.0 {
        (s * 1e3, "ms")
    } else {
        (s, "s")
    };
    format!("{} {unit}", sig3(v))
}

fn sig3(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("B", 1)];
    for (unit, size) in UNITS {
        if n >= size {
            if n.is_multiple_of(size) {
                return format!("{} {unit}", n / size);
            }
            let v = n as f64 / size as f64;
            let s = sig3(v);
            let s = s.trim_end_matches('0').trim_end_matches('.');
            return format!("{s} {unit}");
        }
    }
    "0 B".into()
}

/// 49750 -> "49.8k", 10000 -> "10k", 640 -> "640".
pub fn fmt_count(n: u64) -> String {
    if n < 1000 {
        return n.to_string();
    }
    let v = n as f64 / 1000.0;
    let s = if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    };
    format!("{}k", s.trim_end_matches(".0"))
}

/// rm -rf that refuses to descend into anything that is still mounted.
pub fn remove_tree(p: &Path) -> Res<()> {
    if !p.exists() && p.symlink_metadata().is_err() {
        return Ok(());
    }
    let busy: Vec<PathBuf> = mount_table()
        .into_iter()
        .map(|m| m.point)
        .filter(|m| m.starts_with(p))
        .collect();
    if !busy.is_empty() {
        return Err(format!(
            "refusing to remove {}: {} is still mounted",
            p.display(),
            busy[0].display()
        ));
    }
    fs::remove_dir_all(p).ctx(|| format!("removing {}", p.display()))
}
