//! The workloads: what is timed, on which layer stack, cold or warm.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::fixtures::{read_all, Fixture, Fx, Params};
use crate::util::{self, cstr, fmt_bytes, fmt_count, Ctx, Res, Rng};

/// One timed result: how long, plus a value that must be the same on every
/// system (entries seen, bytes read...) so a wrong answer is not a fast one.
pub struct Measure {
    pub time: Duration,
    pub check: Option<u64>,
}

pub fn timed<T>(f: impl FnOnce() -> Res<T>) -> Res<(Duration, T)> {
    let t = Instant::now();
    let v = f()?;
    Ok((t.elapsed(), v))
}

/// How a workload's mounts are made.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A fresh mount (fresh upper) for every run. `cold`: the page cache is
    /// dropped right before the timed part; otherwise only `sync`ed.
    Fresh { cold: bool },
    /// One mount per system for all runs; one untimed run first touches the data.
    /// `rewarm`: before each timed run the page cache is dropped and the untimed run
    /// made again, twice (the second read activates the pages), so that every system
    /// reads from a cache it filled last (reads of a page cache filled earlier were
    /// up to a quarter slower here, whichever system filled it: where the pages land
    /// in memory matters).
    Warm { rewarm: bool },
}

/// What a workload's functions get to see.
pub struct Env<'a> {
    pub mnt: &'a Path,
    pub fixture: &'a Fixture,
    pub tools: &'a Tools,
}

type Prepare = Box<dyn Fn(&Env) -> Res<()>>;
type Op = Box<dyn Fn(&Env) -> Res<Vec<Measure>>>;

pub struct Workload {
    pub group: &'static str,
    /// One table row per returned `Measure`.
    pub rows: Vec<String>,
    /// Runs unless `STRATA_BENCH_RUNS` says otherwise.
    pub runs: usize,
    /// External program the timed part starts: after the page cache is
    /// dropped it is run once (`--version`) so that loading it from disk is
    /// not counted.
    pub tool: Option<&'static str>,
    pub mode: Mode,
    pub fx: Fx,
    /// Untimed, after mounting and before each timed run (Fresh) or once (Warm).
    pub prepare: Option<Prepare>,
    pub op: Op,
    /// Extra mount options for the kernel's overlayfs and strata (`volatile`,
    /// `metacopy=on`): both take them alike. Rows with options are not run on the
    /// other systems.
    pub opts: &'static str,
}

impl Workload {
    pub fn matches(&self, only: &[String]) -> bool {
        only.is_empty()
            || self.rows.iter().any(|r| {
                let hay = format!("{}: {}", self.group, r).to_lowercase();
                only.iter().any(|o| hay.contains(o.as_str()))
            })
    }

    /// `STRATA_BENCH_RUNS` if given, else the workload's own count.
    pub fn runs(&self, explicit: Option<usize>) -> usize {
        explicit.unwrap_or(self.runs)
    }

    pub fn mode_label(&self) -> &'static str {
        match self.mode {
            Mode::Fresh { cold: true } => "cold",
            Mode::Fresh { cold: false } => "fresh",
            Mode::Warm { .. } => "warm",
        }
    }
}

pub struct Tools {
    pub fio: Option<PathBuf>,
    /// An empty HOME for git, so no personal configuration applies.
    pub home: PathBuf,
}

fn one(time: Duration, check: Option<u64>) -> Res<Vec<Measure>> {
    Ok(vec![Measure { time, check }])
}

/// Walk a tree, lstat every entry; returns the number of entries.
fn stat_tree(root: &Path) -> Res<u64> {
    let mut stack = vec![root.to_path_buf()];
    let mut count = 0u64;
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).ctx(|| format!("readdir {}", dir.display()))? {
            let e = e.ctx(|| format!("readdir {}", dir.display()))?;
            let p = e.path();
            let md = fs::symlink_metadata(&p).ctx(|| format!("lstat {}", p.display()))?;
            count += 1;
            if md.is_dir() {
                stack.push(p);
            }
        }
        util::check_interrupted()?;
    }
    Ok(count)
}

fn ls(args: &[&str], path: &Path) -> Command {
    let mut c = Command::new("ls");
    c.args(args).arg("--color=never").arg(path).env("LC_ALL", "C");
    c
}

fn git(env: &Env, args: &[&str]) -> Command {
    let mut c = Command::new("git");
    c.arg("-C")
        .arg(env.mnt.join("src"))
        .args(args)
        .env("LC_ALL", "C")
        .env("HOME", &env.tools.home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null");
    c
}

/// open(O_WRONLY|O_APPEND) + 1-byte write + close: the copy-up a first write triggers.
fn append_byte(p: &Path) -> Res<Vec<Measure>> {
    let (t, ()) = timed(|| {
        let mut f = OpenOptions::new()
            .append(true)
            .open(p)
            .ctx(|| format!("open {}", p.display()))?;
        f.write_all(b"!").ctx(|| format!("write {}", p.display()))?;
        drop(f);
        Ok(())
    })?;
    let len = fs::metadata(p).ctx(|| format!("stat {}", p.display()))?.len();
    one(t, Some(len))
}

/// Read the lower file outside the mount so copy-up reads it from the page cache.
fn warm_lower(tag: &'static str) -> Prepare {
    Box::new(move |env: &Env| read_all(&env.fixture.dir.join("layer/data").join(format!("f-{tag}"))).map(|_| ()))
}

fn random_reads(env: &Env, file: &Path, size: u64, n: u64) -> Res<Vec<Measure>> {
    if let Some(fio) = &env.tools.fio {
        let mut cmd = Command::new(fio);
        cmd.args([
            "--name=randread",
            "--readonly",
            "--rw=randread",
            "--bs=4k",
            "--ioengine=psync",
            "--randrepeat=1",
            "--randseed=42",
            "--norandommap",
            "--invalidate=0",
            "--output-format=json",
        ])
        .arg(format!("--filename={}", file.display()))
        .arg(format!("--size={size}"))
        .arg(format!("--io_size={}", n * 4096))
        .arg(format!("--number_ios={n}"));
        let out = cmd.output().ctx(|| "running fio".into())?;
        if !out.status.success() {
            return Err(format!("fio failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        let json = String::from_utf8_lossy(&out.stdout);
        let (mean_ns, ios) = parse_fio(&json).ok_or_else(|| "cannot parse fio's JSON output".to_string())?;
        // Total latency of the reads: fio's own start-up is not part of it.
        return one(Duration::from_nanos((mean_ns * ios as f64) as u64), Some(ios));
    }
    let f = File::open(file).ctx(|| format!("open {}", file.display()))?;
    let blocks = size / 4096;
    let mut rng = Rng::new(42);
    let mut buf = vec![0u8; 4096];
    let (t, ()) = timed(|| {
        for _ in 0..n {
            let off = rng.below(blocks) * 4096;
            f.read_exact_at(&mut buf, off).ctx(|| "pread".into())?;
        }
        Ok(())
    })?;
    one(t, Some(n))
}

/// jobs[0].read.{lat_ns.mean, total_ios} from fio's JSON, without a JSON parser.
fn parse_fio(json: &str) -> Option<(f64, u64)> {
    let read = &json[json.find("\"read\" : {")?..];
    let num = |s: &str, key: &str| -> Option<f64> {
        let rest = &s[s.find(key)? + key.len()..];
        let rest = rest.trim_start_matches([' ', ':']);
        let end = rest.find([',', '\n', '}']).unwrap_or(rest.len());
        rest[..end].trim().parse().ok()
    };
    let ios = num(read, "\"total_ios\"")? as u64;
    let lat = &read[read.find("\"lat_ns\" : {")?..];
    Some((num(lat, "\"mean\"")?, ios))
}

pub fn all(p: &Params, fio: bool) -> Vec<Workload> {
    let mut w = Vec::new();

    // copy-up: first write to a lower file, by size and stack depth; durable by
    // default in both strata and the kernel, and again at depth 1 with `volatile`.
    let first = p.depths.first().copied();
    for &(tag, size) in &p.copy_sizes {
        let variants = p.depths.iter().map(|&d| (d, "")).chain(first.map(|d| (d, "volatile")));
        for (depth, opts) in variants {
            let suffix = if opts.is_empty() {
                String::new()
            } else {
                format!(" ({opts})")
            };
            w.push(Workload {
                group: "copy-up",
                rows: vec![format!("copy-up {}, depth {depth}{suffix}", fmt_bytes(size))],
                runs: if size >= 64 << 20 { 3 } else { 9 },
                tool: None,
                mode: Mode::Fresh { cold: false },
                opts,
                fx: Fx::CopyUp(depth),
                prepare: Some(warm_lower(tag)),
                op: Box::new(move |env| append_byte(&env.mnt.join(format!("data/f-{tag}")))),
            });
        }
    }
    let (big_tag, big) = *p.copy_sizes.last().expect("copy sizes");
    w.push(Workload {
        group: "copy-up",
        rows: vec![format!("chmod {} lower file (metacopy=on)", fmt_bytes(big))],
        runs: if big >= 64 << 20 { 3 } else { 5 },
        tool: None,
        mode: Mode::Fresh { cold: false },
        opts: "metacopy=on",
        fx: Fx::CopyUp(1),
        prepare: Some(warm_lower(big_tag)),
        op: Box::new(move |env| {
            let f = env.mnt.join(format!("data/f-{big_tag}"));
            let (t, ()) = timed(|| {
                fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).ctx(|| format!("chmod {}", f.display()))
            })?;
            let mode = fs::metadata(&f).ctx(|| "stat".into())?.permissions().mode() & 0o7777;
            one(t, Some(mode as u64))
        }),
    });
    w.push(Workload {
        group: "copy-up",
        rows: vec![format!("touch {} lower file", fmt_bytes(big))],
        runs: if big >= 64 << 20 { 3 } else { 5 },
        tool: None,
        mode: Mode::Fresh { cold: false },
        opts: "",
        fx: Fx::CopyUp(1),
        prepare: Some(warm_lower(big_tag)),
        op: Box::new(move |env| {
            let f = env.mnt.join(format!("data/f-{big_tag}"));
            let c = cstr(&f);
            let (t, ()) = timed(|| {
                // SAFETY: valid path; NULL times = now.
                let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), std::ptr::null(), 0) };
                if r == 0 {
                    Ok(())
                } else {
                    Err(format!(
                        "utimensat {}: {}",
                        f.display(),
                        std::io::Error::last_os_error()
                    ))
                }
            })?;
            let len = fs::metadata(&f).ctx(|| "stat".into())?.len();
            one(t, Some(len))
        }),
    });

    // metadata
    let files = fmt_count(p.meta_visible());
    w.push(Workload {
        group: "metadata",
        rows: vec![format!("stat {files} files, {} layers (cold)", p.meta_layers)],
        runs: 5,
        tool: None,
        mode: Mode::Fresh { cold: true },
        opts: "",
        fx: Fx::Meta,
        prepare: None,
        op: Box::new(|env| {
            let (t, n) = timed(|| stat_tree(&env.mnt.join("tree")))?;
            one(t, Some(n))
        }),
    });
    for (when, mode) in [
        ("cold", Mode::Fresh { cold: true }),
        ("warm", Mode::Warm { rewarm: false }),
    ] {
        w.push(Workload {
            group: "metadata",
            rows: vec![format!("ls -lR {files} files, {} layers ({when})", p.meta_layers)],
            runs: 5,
            tool: Some("ls"),
            mode,
            opts: "",
            fx: Fx::Meta,
            prepare: None,
            op: Box::new(|env| {
                let (t, (lines, _)) = timed(|| util::run_counting(&mut ls(&["-lR"], &env.mnt.join("tree"))))?;
                one(t, Some(lines))
            }),
        });
    }
    let entries = fmt_count(p.bigdir_entries);
    w.push(Workload {
        group: "metadata",
        rows: vec![format!("readdir (ls -f) {entries}-entry dir, 3 layers (cold)")],
        runs: 5,
        tool: None,
        mode: Mode::Fresh { cold: true },
        opts: "",
        fx: Fx::BigDir,
        prepare: None,
        op: Box::new(|env| {
            let dir = env.mnt.join("big");
            let (t, n) = timed(|| {
                let mut n = 0u64;
                for e in fs::read_dir(&dir).ctx(|| format!("readdir {}", dir.display()))? {
                    e.ctx(|| format!("readdir {}", dir.display()))?;
                    n += 1;
                }
                Ok(n)
            })?;
            one(t, Some(n))
        }),
    });
    w.push(Workload {
        group: "metadata",
        rows: vec![format!("ls -l {entries}-entry dir, 3 layers (cold)")],
        runs: 5,
        tool: Some("ls"),
        mode: Mode::Fresh { cold: true },
        opts: "",
        fx: Fx::BigDir,
        prepare: None,
        op: Box::new(|env| {
            let (t, (lines, _)) = timed(|| util::run_counting(&mut ls(&["-l"], &env.mnt.join("big"))))?;
            one(t, Some(lines))
        }),
    });

    // data
    let data_size = p.data_size;
    w.push(Workload {
        group: "data",
        rows: vec![format!("sequential read {} (warm)", fmt_bytes(data_size))],
        runs: if data_size >= 256 << 20 { 3 } else { 5 },
        tool: None,
        mode: Mode::Warm { rewarm: true },
        opts: "",
        fx: Fx::Data,
        prepare: None,
        op: Box::new(|env| {
            let (t, n) = timed(|| read_all(&env.mnt.join("data/big.bin")))?;
            one(t, Some(n))
        }),
    });
    let reads = p.rand_reads;
    w.push(Workload {
        group: "data",
        rows: vec![format!(
            "random 4 KiB reads x{} (cold, {})",
            fmt_count(reads),
            if fio { "fio" } else { "pread" }
        )],
        runs: 5,
        tool: fio.then_some("fio"),
        mode: Mode::Fresh { cold: true },
        opts: "",
        fx: Fx::Data,
        prepare: None,
        op: Box::new(move |env| random_reads(env, &env.mnt.join("data/big.bin"), data_size, reads)),
    });

    // writes
    let n = fmt_count(p.untar_files);
    w.push(Workload {
        group: "writes",
        rows: vec![format!("untar {n} small files"), format!("rm -rf {n} files")],
        runs: 3,
        tool: None,
        mode: Mode::Fresh { cold: false },
        opts: "",
        fx: Fx::Untar,
        prepare: None,
        op: Box::new(|env| {
            let dst = env.mnt.join("untar");
            fs::create_dir(&dst).ctx(|| format!("mkdir {}", dst.display()))?;
            let tarball = env.fixture.dir.join("small.tar");
            let (t1, ()) = timed(|| util::run(Command::new("tar").arg("-xf").arg(&tarball).arg("-C").arg(&dst)))?;
            let count = stat_tree(&dst)?;
            let (t2, ()) = timed(|| util::run(Command::new("rm").arg("-rf").arg(dst.join("small"))))?;
            let left = fs::read_dir(&dst).ctx(|| "readdir".into())?.count() as u64;
            Ok(vec![
                Measure {
                    time: t1,
                    check: Some(count),
                },
                Measure {
                    time: t2,
                    check: Some(left),
                },
            ])
        }),
    });
    let writes = p.small_writes;
    w.push(Workload {
        group: "writes",
        rows: vec![format!("{} 4 KiB writes to a new file", fmt_count(writes))],
        runs: 5,
        tool: None,
        mode: Mode::Fresh { cold: false },
        opts: "",
        fx: Fx::Base,
        prepare: None,
        op: Box::new(move |env| {
            let p = env.mnt.join("small-writes");
            let block = [0x5au8; 4096];
            let (t, ()) = timed(|| {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&p)
                    .ctx(|| format!("create {}", p.display()))?;
                for _ in 0..writes {
                    f.write_all(&block).ctx(|| format!("write {}", p.display()))?;
                }
                Ok(())
            })?;
            let len = fs::metadata(&p).ctx(|| "stat".into())?.len();
            one(t, Some(len))
        }),
    });
    let count = p.create_files;
    let n = fmt_count(count);
    w.push(Workload {
        group: "writes",
        rows: vec![format!("create {n} empty files"), format!("unlink {n} files")],
        runs: 3,
        tool: None,
        mode: Mode::Fresh { cold: false },
        opts: "",
        fx: Fx::Base,
        prepare: None,
        op: Box::new(move |env| {
            let dir = env.mnt.join("created");
            fs::create_dir(&dir).ctx(|| format!("mkdir {}", dir.display()))?;
            let names: Vec<PathBuf> = (0..count).map(|i| dir.join(format!("f{i:06}"))).collect();
            let (t1, ()) = timed(|| {
                for p in &names {
                    OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(p)
                        .ctx(|| format!("create {}", p.display()))?;
                }
                Ok(())
            })?;
            let (t2, ()) = timed(|| {
                for p in &names {
                    fs::remove_file(p).ctx(|| format!("unlink {}", p.display()))?;
                }
                Ok(())
            })?;
            let left = fs::read_dir(&dir).ctx(|| "readdir".into())?.count() as u64;
            Ok(vec![
                Measure {
                    time: t1,
                    check: Some(count),
                },
                Measure {
                    time: t2,
                    check: Some(left),
                },
            ])
        }),
    });

    // a real workload: a git work tree in a layered image
    let n = fmt_count(p.src_files);
    w.push(Workload {
        group: "real",
        rows: vec![format!("git status, {n}-file repo, first run (cold)")],
        runs: 5,
        tool: Some("git"),
        mode: Mode::Fresh { cold: true },
        opts: "",
        fx: Fx::Src,
        prepare: None,
        op: Box::new(|env| {
            let (t, (lines, _)) = timed(|| util::run_counting(&mut git(env, &["status"])))?;
            one(t, Some(lines))
        }),
    });
    w.push(Workload {
        group: "real",
        rows: vec![format!("git status, {n}-file repo (warm)")],
        runs: 5,
        tool: None,
        mode: Mode::Warm { rewarm: false },
        opts: "",
        fx: Fx::Src,
        prepare: None,
        op: Box::new(|env| {
            let (t, (lines, _)) = timed(|| util::run_counting(&mut git(env, &["status"])))?;
            one(t, Some(lines))
        }),
    });
    w.push(Workload {
        group: "real",
        rows: vec![format!("tar c {n}-file repo (cold)")],
        runs: 5,
        tool: Some("tar"),
        mode: Mode::Fresh { cold: true },
        opts: "",
        fx: Fx::Src,
        prepare: None,
        op: Box::new(|env| {
            let mut cmd = Command::new("tar");
            cmd.arg("-cf").arg("-").arg("-C").arg(env.mnt).arg("src");
            let (t, (_, bytes)) = timed(|| util::run_counting(&mut cmd))?;
            one(t, Some(bytes))
        }),
    });
    w
}
