//! The systems under test, mounting them, and the guard that always unmounts.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::util::{self, Ctx, Res};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The kernel's overlayfs: the baseline every ratio is taken against.
    Kernel,
    Strata,
    /// fuse-overlayfs 1.x, the C implementation (Debian package).
    FuseOverlayfs1,
    /// fuse-overlayfs 2.x, the Rust rewrite (`cargo install fuse-overlayfs`).
    FuseOverlayfs2,
}

pub struct System {
    pub kind: Kind,
    /// Name used in `STRATA_BENCH_SYSTEMS` and in the CSV.
    pub id: &'static str,
    /// Column heading, with the version where known.
    pub label: String,
    pub bin: Option<PathBuf>,
    /// Extra `-o` options for this system's mounts.
    pub opts: &'static str,
}

impl System {
    pub fn is_fuse(&self) -> bool {
        self.kind != Kind::Kernel
    }
}

pub const ALL_IDS: [&str; 6] = [
    "kernel",
    "strata",
    "strata-uring",
    "strata-base",
    "fuse-overlayfs",
    "fuse-overlayfs2",
];

/// The kernel's switch for FUSE over io_uring (off by default).
pub const URING_PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// Turns enable_uring on for the run when a `strata-uring` column is benchmarked,
/// and puts back what it was when dropped (also on an error or an interruption).
pub struct UringSwitch {
    prev: Option<String>,
}

impl UringSwitch {
    pub fn on_if_needed(systems: &[System]) -> Res<UringSwitch> {
        if !systems.iter().any(|s| s.id == "strata-uring") {
            return Ok(UringSwitch { prev: None });
        }
        let prev = fs::read_to_string(URING_PARAM).ctx(|| format!("reading {URING_PARAM}"))?;
        let prev = prev.trim().to_string();
        fs::write(URING_PARAM, "Y").ctx(|| format!("turning {URING_PARAM} on"))?;
        eprintln!("{URING_PARAM} turned on for this run (was {prev}; restored at the end): strata-uring mounts with -o io_uring=on, strata with -o io_uring=off");
        Ok(UringSwitch { prev: Some(prev) })
    }
}

impl Drop for UringSwitch {
    fn drop(&mut self) {
        if let Some(prev) = self.prev.take() {
            match fs::write(URING_PARAM, &prev) {
                Ok(()) => eprintln!("{URING_PARAM} restored to {prev}"),
                Err(e) => eprintln!("could not restore {URING_PARAM} to {prev}: {e}"),
            }
        }
    }
}

fn version_of(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").stdin(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines()
        .find_map(|l| l.strip_prefix("fuse-overlayfs: version ").map(|v| v.trim().to_string()))
}

/// The strata binary: `STRATA_BIN`, else the one cargo built for this bench,
/// else `target/release/strata`, else build it.
fn strata_bin(cfg: &Config) -> Res<PathBuf> {
    if let Ok(p) = std::env::var("STRATA_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("STRATA_BIN={} does not exist", p.display()))
        };
    }
    if let Some(p) = option_env!("CARGO_BIN_EXE_strata").map(PathBuf::from) {
        if p.is_file() {
            return Ok(p);
        }
    }
    let p = cfg.target_dir.join("release/strata");
    if p.is_file() {
        return Ok(p);
    }
    eprintln!("strata binary not found: building it (cargo build --release --bin strata)");
    util::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--bin", "strata"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CARGO_TARGET_DIR", &cfg.target_dir)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit()),
    )?;
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("cargo build finished but {} is missing", p.display()))
    }
}

/// Systems to run, kernel first; messages for the ones skipped.
pub fn detect(cfg: &Config) -> Res<(Vec<System>, Vec<String>)> {
    if let Some(sel) = &cfg.systems {
        for s in sel {
            if !ALL_IDS.contains(&s.as_str()) {
                return Err(format!(
                    "STRATA_BENCH_SYSTEMS: unknown system `{s}` (known: {})",
                    ALL_IDS.join(", ")
                ));
            }
        }
    }
    let wanted = |id: &str| cfg.systems.as_ref().is_none_or(|s| s.iter().any(|x| x == id));
    let mut systems = Vec::new();
    let mut skipped = Vec::new();
    let fuse_ok = Path::new("/dev/fuse").exists();

    if wanted("kernel") {
        let fs = fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if fs.lines().any(|l| l.trim_end().ends_with("\toverlay")) {
            systems.push(System {
                kind: Kind::Kernel,
                id: "kernel",
                label: "kernel".into(),
                bin: None,
                opts: "",
            });
        } else {
            skipped.push("kernel: overlay is not in /proc/filesystems (modprobe overlay?)".into());
        }
    }
    if wanted("strata") {
        if !fuse_ok {
            skipped.push("strata: /dev/fuse is missing".into());
        } else {
            match strata_bin(cfg) {
                Ok(bin) => systems.push(System {
                    kind: Kind::Strata,
                    id: "strata",
                    label: "strata".into(),
                    bin: Some(bin),
                    opts: "io_uring=off",
                }),
                Err(e) => skipped.push(format!("strata: {e}")),
            }
        }
    }
    // The same binary over FUSE-over-io_uring (enable_uring is turned on for the run).
    if wanted("strata-uring") {
        if !fuse_ok {
            skipped.push("strata-uring: /dev/fuse is missing".into());
        } else if !Path::new(URING_PARAM).exists() {
            skipped.push(format!(
                "strata-uring: no {URING_PARAM} (kernel without CONFIG_FUSE_IO_URING)"
            ));
        } else {
            match strata_bin(cfg) {
                Ok(bin) => systems.push(System {
                    kind: Kind::Strata,
                    id: "strata-uring",
                    label: "strata-uring".into(),
                    bin: Some(bin),
                    opts: "io_uring=on",
                }),
                Err(e) => skipped.push(format!("strata-uring: {e}")),
            }
        }
    }
    // Before and after in the same run: another strata build, e.g. of an older commit.
    if let (true, Ok(base)) = (wanted("strata-base"), std::env::var("STRATA_BENCH_BASE")) {
        let bin = PathBuf::from(base);
        if bin.is_file() && fuse_ok {
            systems.push(System {
                kind: Kind::Strata,
                id: "strata-base",
                label: "strata (base)".into(),
                bin: Some(bin),
                opts: "",
            });
        } else {
            skipped.push(format!(
                "strata-base: STRATA_BENCH_BASE={} is not usable",
                bin.display()
            ));
        }
    }
    let home_cargo = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|_| PathBuf::from("/root/.cargo"));
    for (id, kind, var, default, major) in [
        (
            "fuse-overlayfs",
            Kind::FuseOverlayfs1,
            "STRATA_BENCH_FUSE_OVERLAYFS",
            PathBuf::from("/usr/bin/fuse-overlayfs"),
            "1.",
        ),
        (
            "fuse-overlayfs2",
            Kind::FuseOverlayfs2,
            "STRATA_BENCH_FUSE_OVERLAYFS2",
            home_cargo.join("bin/fuse-overlayfs"),
            "2.",
        ),
    ] {
        if !wanted(id) {
            continue;
        }
        let bin = std::env::var(var).map(PathBuf::from).unwrap_or(default);
        if !fuse_ok {
            skipped.push(format!("{id}: /dev/fuse is missing"));
        } else if !bin.is_file() {
            let how = if major == "1." {
                "apt-get install fuse-overlayfs"
            } else {
                "cargo install fuse-overlayfs --version 2.0.0"
            };
            skipped.push(format!("{id}: {} not installed ({how}, or set {var})", bin.display()));
        } else {
            let v = version_of(&bin).unwrap_or_else(|| "?".into());
            if v != "?" && !v.starts_with(major) {
                skipped.push(format!(
                    "{id}: {} is version {v}, expected {major}x (set {var})",
                    bin.display()
                ));
                continue;
            }
            systems.push(System {
                kind,
                id,
                label: format!("fuse-overlayfs {v}"),
                bin: Some(bin),
                opts: "",
            });
        }
    }
    if systems.iter().any(System::is_fuse) && util::which("fusermount3").is_none() {
        eprintln!("note: fusermount3 not found; FUSE mounts are unmounted with umount");
    }
    Ok((systems, skipped))
}

/// Longest common ancestor directory of absolute paths.
fn common_dir(paths: &[PathBuf]) -> PathBuf {
    let mut base = paths[0].parent().unwrap_or(Path::new("/")).to_path_buf();
    while !paths.iter().all(|p| p.starts_with(&base)) {
        if !base.pop() {
            break;
        }
    }
    base
}

/// A live mount with its own fresh upper and work dirs. Dropping it unmounts
/// (retrying, lazily as a last resort) and deletes the upper/work dirs — also
/// when the bench unwinds from a panic or an interruption.
pub struct Mount {
    pub point: PathBuf,
    pub upper: PathBuf,
    scratch: PathBuf,
    fuse: bool,
    label: String,
}

impl Mount {
    /// Mount `sys` over `lowers` (top first) using `scratch` (created fresh)
    /// for upper, work and mount point. Daemon output goes to `log`.
    /// `extra`: more `-o` options, appended after the layers.
    pub fn new(sys: &System, lowers: &[PathBuf], scratch: PathBuf, log: &Path, extra: &str) -> Res<Mount> {
        if scratch.exists() {
            util::remove_tree(&scratch)?;
        }
        let upper = scratch.join("u");
        let work = scratch.join("w");
        let point = scratch.join("m");
        for d in [&upper, &work, &point] {
            fs::create_dir_all(d).ctx(|| format!("creating {}", d.display()))?;
        }
        // From here on the guard exists, so a failure below still cleans up.
        let m = Mount {
            point,
            upper,
            scratch,
            fuse: sys.is_fuse(),
            label: sys.label.clone(),
        };
        let mut cmd;
        match sys.kind {
            Kind::Kernel => {
                // mount(2) takes one page of options: give the lower dirs
                // relative to their common ancestor and mount from there.
                let base = common_dir(lowers);
                let rel: Vec<String> = lowers
                    .iter()
                    .map(|l| l.strip_prefix(&base).unwrap_or(l).to_string_lossy().into_owned())
                    .map(|s| if s.is_empty() { ".".into() } else { s })
                    .collect();
                let mut opts = format!(
                    "lowerdir={},upperdir={},workdir={}",
                    rel.join(":"),
                    m.upper.display(),
                    work.display()
                );
                if !extra.is_empty() {
                    opts = format!("{opts},{extra}");
                }
                if opts.len() > 4000 {
                    return Err(format!("overlay option string too long ({} bytes)", opts.len()));
                }
                cmd = Command::new("mount");
                cmd.args(["-t", "overlay", "overlay", "-o", &opts])
                    .arg(&m.point)
                    .current_dir(base);
            }
            _ => {
                let lowerdir: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
                let mut opts = format!(
                    "lowerdir={},upperdir={},workdir={}",
                    lowerdir.join(":"),
                    m.upper.display(),
                    work.display()
                );
                if !sys.opts.is_empty() {
                    opts = format!("{opts},{}", sys.opts);
                }
                if !extra.is_empty() {
                    opts = format!("{opts},{extra}");
                }
                cmd = Command::new(sys.bin.as_ref().expect("FUSE systems have a binary"));
                cmd.args(["-o", &opts]).arg(&m.point);
                // strata's control socket beside the mount, not in /run/strata: the
                // bench leaves nothing behind outside its own directory.
                cmd.env("STRATA_RUNTIME_DIR", m.scratch.join("run"));
            }
        }
        let logf = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .ctx(|| format!("opening {}", log.display()))?;
        let logf2 = logf.try_clone().ctx(|| "dup log".into())?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(logf))
            .stderr(Stdio::from(logf2))
            .spawn()
            .ctx(|| format!("starting {}", sys.label))?;
        // The command returns once the mount is live (FUSE daemons fork).
        let start = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().ctx(|| "waiting for mount".into())? {
                break st;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{}: mount command did not return within 30 s (log: {})",
                    sys.label,
                    log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        if !status.success() {
            return Err(format!("{}: mount failed ({status}): {}", sys.label, log_tail(log)));
        }
        let start = Instant::now();
        while !util::is_mountpoint(&m.point) {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(format!(
                    "{}: mount command succeeded but nothing is mounted at {} ({})",
                    sys.label,
                    m.point.display(),
                    log_tail(log)
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(m)
    }

    fn unmount(&self) -> Res<()> {
        let use_fusermount = self.fuse && util::which("fusermount3").is_some();
        for attempt in 0..15u64 {
            if !util::is_mountpoint(&self.point) {
                return Ok(());
            }
            let mut cmd = if use_fusermount {
                let mut c = Command::new("fusermount3");
                c.args(["-u", "-q"]);
                c
            } else {
                Command::new("umount")
            };
            let _ = cmd
                .arg(&self.point)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !util::is_mountpoint(&self.point) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50 * (attempt + 1)));
        }
        eprintln!(
            "warning: {} at {} stays busy; unmounting lazily",
            self.label,
            self.point.display()
        );
        let _ = if use_fusermount {
            Command::new("fusermount3")
                .args(["-u", "-z", "-q"])
                .arg(&self.point)
                .status()
        } else {
            Command::new("umount").arg("-l").arg(&self.point).status()
        };
        if util::is_mountpoint(&self.point) {
            Err(format!("could not unmount {}", self.point.display()))
        } else {
            Ok(())
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        match self.unmount() {
            Ok(()) => {
                if let Err(e) = util::remove_tree(&self.scratch) {
                    eprintln!("warning: {e}");
                }
            }
            Err(e) => eprintln!("ERROR: {e}; leaving {} in place", self.scratch.display()),
        }
    }
}

fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    if lines.is_empty() {
        format!("no output (log: {})", log.display())
    } else {
        let v: Vec<&str> = lines.into_iter().rev().collect();
        format!("{} (log: {})", v.join(" | "), log.display())
    }
}

/// Unmount whatever an earlier, killed run left mounted under `dir`.
pub fn cleanup_stale(dir: &Path) {
    for m in util::mount_table() {
        if m.point.starts_with(dir) {
            eprintln!("unmounting stale {} mount {}", m.fstype, m.point.display());
            let fuse = m.fstype.starts_with("fuse");
            let ok = if fuse && util::which("fusermount3").is_some() {
                Command::new("fusermount3").args(["-u", "-q"]).arg(&m.point).status()
            } else {
                Command::new("umount").arg(&m.point).status()
            }
            .map(|s| s.success())
            .unwrap_or(false);
            if !ok && util::is_mountpoint(&m.point) {
                let _ = Command::new("umount").arg("-l").arg(&m.point).status();
            }
        }
    }
}

/// Aborts a FUSE mount whose operation overran its time limit, or that keeps
/// the bench from stopping after Ctrl-C: `umount -f` on FUSE aborts the
/// connection, so the stuck system calls return ENOTCONN and the bench can
/// unwind and unmount.
pub struct Watchdog;

struct Armed {
    point: PathBuf,
    fuse: bool,
    deadline: Instant,
    fired: bool,
}

static ARMED: Mutex<Option<Armed>> = Mutex::new(None);

impl Watchdog {
    pub fn start() {
        std::thread::spawn(|| {
            let mut interrupted_at: Option<Instant> = None;
            loop {
                std::thread::sleep(Duration::from_millis(200));
                if util::interrupted() && interrupted_at.is_none() {
                    interrupted_at = Some(Instant::now());
                }
                let mut g = ARMED.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(a) = g.as_mut() {
                    let late = Instant::now() > a.deadline
                        || interrupted_at.is_some_and(|t| t.elapsed() > Duration::from_secs(3));
                    if late && !a.fired {
                        a.fired = true;
                        if a.fuse {
                            eprintln!("watchdog: aborting the FUSE connection of {}", a.point.display());
                            let _ = Command::new("umount")
                                .arg("-f")
                                .arg(&a.point)
                                .stderr(Stdio::null())
                                .status();
                        }
                    }
                }
            }
        });
    }

    /// Watch one timed operation on `m`; returns a token to `disarm`.
    pub fn arm(m: &Mount, limit: Duration) -> WatchToken {
        *ARMED.lock().unwrap_or_else(|e| e.into_inner()) = Some(Armed {
            point: m.point.clone(),
            fuse: m.fuse,
            deadline: Instant::now() + limit,
            fired: false,
        });
        WatchToken
    }
}

pub struct WatchToken;

impl WatchToken {
    /// True when the watchdog had to abort the mount.
    pub fn disarm(self) -> bool {
        ARMED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .is_some_and(|a| a.fired)
    }
}

impl Drop for WatchToken {
    fn drop(&mut self) {
        if let Ok(mut g) = ARMED.lock() {
            *g = None;
        }
    }
}
