//! Load and lifetime: several threads hammering one mount (no crash, no deadlock, no
//! lost write), the daemon's fds and memory after the kernel forgets its inodes, and
//! how the daemon ends: signals, fusermount3 -u, lazy unmounts, daemon mode.
//!
//! `STRATA_LOAD_SECS` sets the length of the load test (default 24 s, in two halves);
//! `STRATA_LOAD_SEED` replays its random choices.

mod stack;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{symlink, FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stack::*;

// ---- daemon inspection ----

fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// VmRSS in KiB.
fn rss_kib(pid: u32) -> u64 {
    let st = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    st.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn drop_caches() {
    // SAFETY: sync(2) takes no arguments.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
}

/// What the daemon's threads are blocked in, for a deadlock report.
fn daemon_stacks(pid: u32) -> String {
    let mut out = String::new();
    if let Ok(rd) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            let p = t.path();
            let name = fs::read_to_string(p.join("comm")).unwrap_or_default();
            let wchan = fs::read_to_string(p.join("wchan")).unwrap_or_default();
            let stack = fs::read_to_string(p.join("stack")).unwrap_or_default();
            out += &format!("task {:?} {} wchan={wchan}\n{stack}\n", t.file_name(), name.trim());
        }
    }
    out
}

/// Processes whose command line is `strata ... MNT`.
fn strata_pids_for(mnt: &Path) -> Vec<u32> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            let is_strata = args.first().is_some_and(|a| a.ends_with(b"strata"));
            let state = fs::read_to_string(e.path().join("stat")).ok()?;
            let zombie = state
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'));
            (is_strata && !zombie && args.contains(&mnt.as_os_str().as_encoded_bytes())).then_some(pid)
        })
        .collect()
}

// ---- the load test ----

const THREADS: usize = 4;
const SHARED_BIG: usize = 4;
const BIG_LEN: usize = 1 << 20;
const SLOT: usize = 4096;

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng::new(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&r.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// What one thread knows of its own directory.
#[derive(Default, Clone, Debug)]
struct Model {
    files: BTreeMap<String, Vec<u8>>,
    modes: BTreeMap<String, u32>,
    xattrs: BTreeMap<String, Vec<u8>>,
    dirs: Vec<String>,
    links: BTreeMap<String, String>,
    /// Recent operations per name, for failure reports.
    hist: BTreeMap<String, Vec<String>>,
    /// Lines appended to the shared log, in order.
    logged: u64,
    ops: u64,
    /// Listings of the shared directory with a name twice or missing.
    bad_listings: u64,
}

impl Model {
    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .files
            .keys()
            .chain(self.dirs.iter())
            .chain(self.links.keys())
            .cloned()
            .collect();
        v.sort();
        v
    }
}

/// The view of `dir` in the mount matches the model exactly.
fn verify_model(dir: &Path, m: &Model) -> Result<(), String> {
    let got = names(dir);
    if got != m.names() {
        return Err(format!("{}: lists {got:?}, model {:?}", dir.display(), m.names()));
    }
    for (n, data) in &m.files {
        let p = dir.join(n);
        let c = fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        if &c != data {
            let first = c
                .iter()
                .zip(data.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(c.len().min(data.len()));
            return Err(format!(
                "{}: {} bytes, want {}, first difference at {first} (lost write); history {:?}",
                p.display(),
                c.len(),
                data.len(),
                m.hist.get(n)
            ));
        }
        if let Some(mode) = m.modes.get(n) {
            let got = fs::metadata(&p).unwrap().mode() & 0o7777;
            if got != *mode {
                return Err(format!("{}: mode {got:o}, want {mode:o}", p.display()));
            }
        }
        if let Some(x) = m.xattrs.get(n) {
            if getxattr(&p, "user.load").as_ref() != Ok(x) {
                return Err(format!("{}: xattr lost", p.display()));
            }
        }
    }
    for (n, t) in &m.links {
        let p = dir.join(n);
        if fs::read_link(&p).map_err(|e| format!("{}: {e}", p.display()))? != Path::new(t) {
            return Err(format!("{}: wrong target", p.display()));
        }
    }
    for d in &m.dirs {
        if !fs::metadata(dir.join(d)).is_ok_and(|md| md.is_dir()) {
            return Err(format!("{}/{d}: not a directory", dir.display()));
        }
    }
    Ok(())
}

fn note(m: &mut Model, n: &str, what: String) {
    let h = m.hist.entry(n.to_string()).or_default();
    h.push(what);
    if h.len() > 12 {
        h.remove(0);
    }
}

fn check<T>(r: std::io::Result<T>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// One worker: random operations on its own directory (verified as it goes), plus
/// shared work: a racing first write to every shared lower file, appends to a shared
/// log, reads of shared lower files, listings of a shared directory others change.
fn worker(
    t: usize,
    s: Arc<Stack>,
    seed: u64,
    until: Instant,
    mut m: Model,
    progress: Arc<AtomicU64>,
    precopy: bool,
) -> Result<Model, String> {
    let mut rng = Rng::new(seed);
    let own = s.m(&format!("own{t}"));
    let shared = s.m("shared");
    if precopy {
        // Full copy-up of this thread's lower files first (an open for writing), so no
        // metadata-only copy is ever completed by a write: see
        // `new_file_after_a_metadata_only_copy_is_filled_is_another_file`.
        for n in m.files.keys() {
            check(OpenOptions::new().write(true).open(own.join(n)), "precopy")?;
        }
    }
    // The racing first writes (copy-up of the same lower files by every thread at once).
    for k in 0..SHARED_BIG {
        let f = check(
            OpenOptions::new().write(true).open(shared.join(format!("big{k}"))),
            "open big",
        )?;
        check(
            f.write_all_at(&vec![b'A' + t as u8; SLOT], (t * SLOT) as u64),
            "write big",
        )?;
    }
    let mut log = check(OpenOptions::new().append(true).open(shared.join("log")), "open log")?;
    let mut seq = m.logged;
    while Instant::now() < until {
        progress.fetch_add(1, Ordering::Relaxed);
        m.ops += 1;
        let pick = rng.below(100);
        let keys: Vec<String> = m.files.keys().cloned().collect();
        let any = |rng: &mut Rng| keys.get(rng.below(keys.len().max(1) as u64) as usize).cloned();
        match pick {
            // create
            0..=14 => {
                let n = format!("f{}", rng.below(1000));
                if m.dirs.contains(&n) || m.links.contains_key(&n) {
                    continue;
                }
                let data = pattern(rng.next(), rng.below(65536) as usize);
                check(fs::write(own.join(&n), &data), "create")?;
                note(&mut m, &n, format!("create {}", data.len()));
                m.modes.remove(&n);
                m.xattrs.remove(&n);
                m.files.insert(n, data);
            }
            // append / overwrite a region
            15..=34 => {
                let Some(n) = any(&mut rng) else { continue };
                let extra = pattern(rng.next(), 1 + rng.below(8192) as usize);
                let append = rng.below(2) == 0;
                let len = m.files[&n].len();
                let off = if append {
                    len
                } else {
                    rng.below(len as u64 + 1) as usize
                };
                note(
                    &mut m,
                    &n,
                    format!(
                        "{} {} at {off} (len {len})",
                        if append { "append" } else { "pwrite" },
                        extra.len()
                    ),
                );
                let data = m.files.get_mut(&n).unwrap();
                if append {
                    let mut f = check(OpenOptions::new().append(true).open(own.join(&n)), "open append")?;
                    check(f.write_all(&extra), "append")?;
                    data.extend_from_slice(&extra);
                } else {
                    let f = check(OpenOptions::new().write(true).open(own.join(&n)), "open write")?;
                    check(f.write_all_at(&extra, off as u64), "pwrite")?;
                    if data.len() < off + extra.len() {
                        data.resize(off + extra.len(), 0);
                    }
                    data[off..off + extra.len()].copy_from_slice(&extra);
                    if rng.below(4) == 0 {
                        check(f.sync_data(), "fdatasync")?;
                    }
                }
                let got = check(fs::read(own.join(&n)), "read back")?;
                if &got != data {
                    return Err(format!("own{t}/{n}: read back differs right after the write"));
                }
            }
            // truncate
            35..=39 => {
                let Some(n) = any(&mut rng) else { continue };
                let len = rng.below(m.files[&n].len() as u64 + 100) as usize;
                note(&mut m, &n, format!("truncate {len}"));
                let data = m.files.get_mut(&n).unwrap();
                let f = check(OpenOptions::new().write(true).open(own.join(&n)), "open trunc")?;
                check(f.set_len(len as u64), "truncate")?;
                data.resize(len, 0);
            }
            // rename (maybe over another file)
            40..=49 => {
                let Some(n) = any(&mut rng) else { continue };
                let to = format!("f{}", rng.below(1000));
                if to == n || m.dirs.contains(&to) || m.links.contains_key(&to) {
                    continue;
                }
                check(fs::rename(own.join(&n), own.join(&to)), "rename")?;
                let h = m.hist.remove(&n).unwrap_or_default();
                m.hist.insert(to.clone(), h);
                note(&mut m, &to, format!("renamed from {n}"));
                let d = m.files.remove(&n).unwrap();
                m.files.insert(to.clone(), d);
                let mode = m.modes.remove(&n);
                m.modes.remove(&to);
                if let Some(md) = mode {
                    m.modes.insert(to.clone(), md);
                }
                let x = m.xattrs.remove(&n);
                m.xattrs.remove(&to);
                if let Some(x) = x {
                    m.xattrs.insert(to, x);
                }
            }
            // unlink
            50..=57 => {
                let Some(n) = any(&mut rng) else { continue };
                check(fs::remove_file(own.join(&n)), "unlink")?;
                m.files.remove(&n);
                m.modes.remove(&n);
                m.xattrs.remove(&n);
            }
            // hard link, then drop the old name
            58..=61 => {
                let Some(n) = any(&mut rng) else { continue };
                let to = format!("h{}", rng.below(1000));
                if m.files.contains_key(&to) || m.dirs.contains(&to) || m.links.contains_key(&to) {
                    continue;
                }
                check(fs::hard_link(own.join(&n), own.join(&to)), "link")?;
                if ino(&own.join(&n)) != ino(&own.join(&to)) {
                    return Err(format!("own{t}: link {n} -> {to} has another inode"));
                }
                check(fs::remove_file(own.join(&n)), "unlink after link")?;
                let h = m.hist.remove(&n).unwrap_or_default();
                m.hist.insert(to.clone(), h);
                note(&mut m, &to, format!("linked from {n}, {n} unlinked"));
                let d = m.files.remove(&n).unwrap();
                m.files.insert(to.clone(), d);
                if let Some(md) = m.modes.remove(&n) {
                    m.modes.insert(to.clone(), md);
                }
                if let Some(x) = m.xattrs.remove(&n) {
                    m.xattrs.insert(to, x);
                }
            }
            // mkdir / rmdir
            62..=66 => {
                if !m.dirs.is_empty() && rng.below(2) == 0 {
                    let d = m.dirs.remove(rng.below(m.dirs.len() as u64) as usize);
                    check(fs::remove_dir(own.join(&d)), "rmdir")?;
                    note(
                        &mut m,
                        &d,
                        format!("rmdir at {:?} before the end", until - Instant::now()),
                    );
                } else {
                    let d = format!("d{}", rng.below(100));
                    if m.dirs.contains(&d) {
                        continue;
                    }
                    if let Err(e) = fs::create_dir(own.join(&d)) {
                        let upper = s.u(&format!("own{t}/{d}"));
                        return Err(format!(
                            "mkdir {d}: {e}; through the mount: {:?}; in the upper: {:?}; whiteout in the upper: {}",
                            fs::symlink_metadata(own.join(&d)).map(|m| (m.file_type(), m.ino())),
                            fs::symlink_metadata(&upper).map(|m| (m.file_type(), m.ino())),
                            exists(s.u(&format!("own{t}/.wh.{d}")))
                        ) + &format!(
                            "; history: {:?}; now {:?} before the end",
                            m.hist.get(&d),
                            until.checked_duration_since(Instant::now())
                        ));
                    }
                    note(
                        &mut m,
                        &d,
                        format!("mkdir at {:?} before the end", until - Instant::now()),
                    );
                    m.dirs.push(d);
                }
            }
            // symlink / remove it
            67..=70 => {
                let l = format!("s{}", rng.below(100));
                if m.links.remove(&l).is_some() {
                    check(fs::remove_file(own.join(&l)), "unlink symlink")?;
                } else {
                    let target = format!("target-{}", rng.next());
                    check(symlink(&target, own.join(&l)), "symlink")?;
                    m.links.insert(l, target);
                }
            }
            // chmod
            71..=74 => {
                let Some(n) = any(&mut rng) else { continue };
                let mode = 0o600 | (rng.below(0o100) as u32);
                check(
                    fs::set_permissions(own.join(&n), fs::Permissions::from_mode(mode)),
                    "chmod",
                )?;
                note(&mut m, &n, format!("chmod {mode:o}"));
                m.modes.insert(n, mode);
            }
            // xattr
            75..=77 => {
                let Some(n) = any(&mut rng) else { continue };
                let v = pattern(rng.next(), 1 + rng.below(64) as usize);
                setxattr(&own.join(&n), "user.load", &v).map_err(|e| format!("setxattr: errno {e}"))?;
                note(&mut m, &n, "setxattr".into());
                m.xattrs.insert(n, v);
            }
            // shared log
            78..=85 => {
                seq += 1;
                check(log.write_all(format!("t{t} {seq:08}\n").as_bytes()), "log append")?;
                m.logged = seq;
            }
            // reads of shared lower files
            86..=91 => {
                let k = rng.below(8);
                let got = check(fs::read(shared.join(format!("data{k}"))), "read shared")?;
                if got != pattern(1000 + k, 65536) {
                    return Err(format!("shared/data{k}: wrong content"));
                }
            }
            // shared directory: an entry of our own appears and goes while others list it
            92..=96 => {
                let p = shared.join(format!("dir/t{t}-{}", rng.below(10)));
                if exists(&p) {
                    check(fs::remove_file(&p), "shared unlink")?;
                } else {
                    check(fs::write(&p, format!("{t}")), "shared create")?;
                }
                // Listings taken while others change the directory can show a name
                // twice or miss one (the kernel's readdir cache splices listings of
                // different handles): counted and reported, not failed here; see
                // `listings_during_concurrent_changes_show_each_name_once`.
                let listed = names(shared.join("dir"));
                let mut dedup = listed.clone();
                dedup.dedup();
                let missing = (0..20).any(|i| !dedup.contains(&format!("lower{i}")));
                if dedup.len() != listed.len() || missing {
                    m.bad_listings += 1;
                }
            }
            // full check of our directory
            _ => verify_model(&own, &m).map_err(|e| format!("thread {t}: {e}"))?,
        }
    }
    verify_model(&own, &m).map_err(|e| format!("thread {t} at the end: {e}"))?;
    Ok(m)
}

/// Reads the daemon's log (its stderr) as it comes, so a chatty daemon never blocks.
fn read_log(mount: &mut Mount) -> std::thread::JoinHandle<String> {
    let mut e = mount.take_stderr().expect("the daemon's stderr");
    std::thread::spawn(move || {
        let mut log = String::new();
        let _ = e.read_to_string(&mut log);
        log
    })
}

/// Unmounts; the daemon must exit 0 having logged no warning or error (it warns when
/// it finds its inode table inconsistent, which load must never cause).
fn unmount_quietly(mount: Mount, log: std::thread::JoinHandle<String>, what: &str) {
    let st = mount.unmount();
    let log = log.join().unwrap();
    assert!(st.success(), "daemon exit after {what}: {st}; its log:\n{log}");
    assert!(
        !log.contains(" WARN ") && !log.contains(" ERROR "),
        "the daemon logged during {what}:\n{log}"
    );
}

/// Fails the test with `what`, and what the daemon logged until it was unmounted.
fn fail_with_log(mount: Mount, log: std::thread::JoinHandle<String>, what: &str) -> ! {
    let st = mount.unmount();
    panic!("{what}\ndaemon exit: {st}; its log:\n{}", log.join().unwrap());
}

/// Runs the workers for `secs` against the mount, with a watchdog.
fn load_phase(
    s: &Arc<Stack>,
    mount: &mut Mount,
    models: Vec<Model>,
    seed: u64,
    secs: u64,
    precopy: bool,
) -> Result<Vec<Model>, String> {
    let until = Instant::now() + Duration::from_secs(secs);
    let progress: Vec<Arc<AtomicU64>> = (0..THREADS).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let handles: Vec<_> = models
        .into_iter()
        .enumerate()
        .map(|(t, m)| {
            let (s, p) = (s.clone(), progress[t].clone());
            std::thread::spawn(move || worker(t, s, seed.wrapping_add(t as u64 * 7919), until, m, p, precopy))
        })
        .collect();
    // Watchdog: every thread must make progress at least every 30 s.
    let mut last: Vec<(u64, Instant)> = vec![(0, Instant::now()); THREADS];
    while handles.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(200));
        if let Some(st) = mount.wait_exit(Duration::ZERO) {
            panic!("the daemon died under load: {st}");
        }
        for (t, p) in progress.iter().enumerate() {
            let n = p.load(Ordering::Relaxed);
            if n != last[t].0 {
                last[t] = (n, Instant::now());
            } else if !handles[t].is_finished() && last[t].1.elapsed() > Duration::from_secs(30) {
                panic!(
                    "thread {t} made no progress for 30 s (deadlock?); daemon threads:\n{}",
                    daemon_stacks(mount.pid())
                );
            }
        }
    }
    let mut out = Vec::new();
    for (t, h) in handles.into_iter().enumerate() {
        match h.join().unwrap() {
            Ok(m) => out.push(m),
            Err(e) => return Err(format!("thread {t}: {e}")),
        }
    }
    Ok(out)
}

fn verify_shared(s: &Stack, models: &[Model]) {
    for k in 0..SHARED_BIG {
        let got = fs::read(s.m(&format!("shared/big{k}"))).unwrap();
        let mut want = pattern(2000 + k as u64, BIG_LEN);
        for t in 0..THREADS {
            want[t * SLOT..(t + 1) * SLOT].fill(b'A' + t as u8);
        }
        assert!(got == want, "shared/big{k}: a racing first write was lost");
    }
    let log = read(s.m("shared/log"));
    let mut next = [1u64; THREADS];
    for line in log.lines().skip(1) {
        let (t, n) = line.split_once(' ').unwrap_or_else(|| panic!("torn log line {line:?}"));
        let t: usize = t
            .strip_prefix('t')
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("torn log line {line:?}"));
        let n: u64 = n.parse().unwrap_or_else(|_| panic!("torn log line {line:?}"));
        assert_eq!(
            n,
            next[t],
            "log: thread {t} line {n} out of order or lost; {} lines in the log, {} bytes in the lower log, first lines {:?}",
            log.lines().count(),
            fs::metadata(s.l(0, "shared/log")).unwrap().len(),
            log.lines().take(8).collect::<Vec<_>>()
        );
        next[t] += 1;
    }
    for (t, m) in models.iter().enumerate() {
        assert_eq!(next[t] - 1, m.logged, "log: thread {t} appended {} lines", m.logged);
    }
    // The whole tree: every listed name can be looked up and read, nothing reserved shows.
    for e in walkdir::WalkDir::new(&s.mnt).follow_links(false) {
        let e = e.unwrap();
        let n = e.file_name().to_string_lossy();
        assert!(!n.starts_with(".wh."), "{}", e.path().display());
        let md = fs::symlink_metadata(e.path()).unwrap_or_else(|err| panic!("{}: {err}", e.path().display()));
        if md.is_file() {
            let mut f = File::open(e.path()).unwrap();
            let mut v = Vec::new();
            f.read_to_end(&mut v).unwrap();
            assert_eq!(v.len() as u64, md.len(), "{}", e.path().display());
        }
    }
}

#[test]
fn four_threads_of_mixed_operations_lose_nothing() {
    let secs: u64 = std::env::var("STRATA_LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    mixed_load(secs, true);
}

/// The same load with metadata-only copies completed by writes (rename or chmod of a
/// lower file, then a write): files soon read another file's data.
#[test]
fn four_threads_of_mixed_operations_with_metadata_only_copies_lose_nothing() {
    mixed_load(10, false);
}

fn mixed_load(secs: u64, precopy: bool) {
    let mut seed_rng = Rng::from_env("STRATA_LOAD_SEED");
    let seed = seed_rng.next();
    let s = Arc::new(Stack::new(2));
    for i in 0..2 {
        fs::create_dir_all(s.l(i, "shared")).unwrap();
    }
    for k in 0..8u64 {
        fs::write(s.l(1, &format!("shared/data{k}")), pattern(1000 + k, 65536)).unwrap();
    }
    for k in 0..SHARED_BIG {
        fs::write(s.l(0, &format!("shared/big{k}")), pattern(2000 + k as u64, BIG_LEN)).unwrap();
    }
    write(s.l(0, "shared/log"), "lower line\n");
    for i in 0..20 {
        write(s.l(i % 2, &format!("shared/dir/lower{i}")), "x");
    }
    // Each thread starts with lower files of its own (copied up as it changes them).
    let mut models = vec![Model::default(); THREADS];
    for (t, m) in models.iter_mut().enumerate() {
        for j in 0..20 {
            let data = pattern((t * 100 + j) as u64, 1000 + j * 100);
            let n = format!("f{}", 900 + j);
            fs::create_dir_all(s.l(j % 2, &format!("own{t}"))).unwrap();
            fs::write(s.l(j % 2, &format!("own{t}/{n}")), &data).unwrap();
            m.files.insert(n, data);
        }
    }
    let lowers_before: Vec<_> = (0..2).map(|i| snapshot(s.lower(i))).collect();

    let started = Instant::now();
    // Metadata-only copies are opt-in.
    let meta = if precopy { ",metacopy=on" } else { "" };
    let mut mount = s.mount_with(meta.trim_start_matches(','));
    let log = read_log(&mut mount);
    let models = match load_phase(&s, &mut mount, models, seed, secs / 2, precopy) {
        Ok(m) => m,
        Err(e) => fail_with_log(mount, log, &e),
    };
    verify_shared(&s, &models);
    unmount_quietly(mount, log, "the first half");
    // Second half: no passthrough (every read and write through the daemon), 2 threads.
    let mut mount = s.mount_with(&format!("passthrough=0,threads=2{meta}"));
    let log = read_log(&mut mount);
    for (t, m) in models.iter().enumerate() {
        verify_model(&s.m(&format!("own{t}")), m).unwrap();
    }
    let models = match load_phase(&s, &mut mount, models, seed ^ 0x5555, secs - secs / 2, precopy) {
        Ok(m) => m,
        Err(e) => fail_with_log(mount, log, &e),
    };
    verify_shared(&s, &models);
    unmount_quietly(mount, log, "the second half");
    let ops: u64 = models.iter().map(|m| m.ops).sum();
    let bad: u64 = models.iter().map(|m| m.bad_listings).sum();
    eprintln!(
        "{ops} operations by {THREADS} threads in {:?}; {bad} listings of the shared dir showed a name twice or missed one",
        started.elapsed()
    );

    let m = s.mount();
    assert!(
        fs::read_dir(s.work.join("staging")).unwrap().next().is_none(),
        "staging not empty"
    );
    for (t, md) in models.iter().enumerate() {
        verify_model(&s.m(&format!("own{t}")), md).unwrap();
    }
    verify_shared(&s, &models);
    m.finish();
    for (i, before) in lowers_before.iter().enumerate() {
        assert_eq!(&snapshot(s.lower(i)), before, "lower {i} changed");
    }
}

/// Completing a metadata-only copy (`fill_data`) renames a new upper file over the
/// metadata-only one but leaves the old upper inode number recorded as a copy of the
/// node. ext4 hands that inode number to the next file created nearby, which is then
/// given the existing node's id: the kernel takes it for the same inode, and reads and
/// writes through the new name reach the old file.
#[test]
fn new_file_after_a_metadata_only_copy_is_filled_is_another_file() {
    let s = Stack::new(1);
    write(s.l(0, "d/a"), "lower a\n");
    let _m = s.mount_with("metacopy=on");
    fs::set_permissions(s.m("d/a"), fs::Permissions::from_mode(0o600)).unwrap(); // metadata-only copy
    let freed = fs::metadata(s.u("d/a")).unwrap().ino();
    OpenOptions::new()
        .append(true)
        .open(s.m("d/a"))
        .unwrap()
        .write_all(b"more\n")
        .unwrap(); // filled
    for i in 0..50 {
        let n = format!("d/n{i}");
        fs::write(s.m(&n), format!("new file {i}\n")).unwrap();
        let reused = fs::metadata(s.u(&n)).unwrap().ino() == freed;
        assert_ne!(
            ino(&s.m(&n)),
            ino(&s.m("d/a")),
            "{n} (backing inode reused: {reused}) has the st_ino of d/a"
        );
        assert_eq!(
            read(s.m(&n)),
            format!("new file {i}\n"),
            "{n} (backing inode reused: {reused})"
        );
    }
    assert_eq!(read(s.m("d/a")), "lower a\nmore\n");
}

/// O_TRUNC on a file whose only change so far was to its metadata (chmod, chown,
/// utimes, xattr, rename: a metadata-only copy) truncates and writes the upper file
/// but leaves the metadata-only marker on it: reads still come from the lower file,
/// also after a remount. `chmod 600 f; echo new > f` on a lower file loses the write.
/// (`copy_up_with` returns early for an upper node unless the fill is `Data`, so the
/// `Empty` fill of an O_TRUNC open never drops the marker.)
#[test]
fn truncating_write_after_a_metadata_only_copy_is_kept() {
    let s = Stack::new(1);
    let names_ = ["chmodded", "chowned", "utimed", "moved"];
    for n in ["chmodded", "chowned", "utimed", "renamed"] {
        write(s.l(0, n), "lower data");
    }
    let m = s.mount_with("metacopy=on");
    fs::set_permissions(s.m("chmodded"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(s.m("chowned"), Some(7), None).unwrap();
    let ts = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec { tv_sec: 1, tv_nsec: 0 },
        last_modification: rustix::fs::Timespec { tv_sec: 1, tv_nsec: 0 },
    };
    rustix::fs::utimensat(rustix::fs::CWD, s.m("utimed"), &ts, rustix::fs::AtFlags::empty()).unwrap();
    fs::rename(s.m("renamed"), s.m("moved")).unwrap();
    for n in names_ {
        fs::write(s.m(n), "new").unwrap(); // open(O_WRONLY | O_CREAT | O_TRUNC)
    }
    let now: Vec<String> = names_.iter().map(|n| read(s.m(n))).collect();
    m.finish();
    let _m = s.mount();
    let after: Vec<String> = names_.iter().map(|n| read(s.m(n))).collect();
    assert_eq!((now, after), (vec!["new".to_string(); 4], vec!["new".to_string(); 4]));
}

// ---- fds and memory ----

/// Lower directories stay open once looked into (a lower never changes), but only a
/// bounded number of them: with 64 lowers, each keeps at most 4096 / 64 = 64 (and at
/// least 4, however low the fd limit).
#[test]
fn kept_lower_directories_are_bounded() {
    let s = Stack::new(64);
    for d in 0..400 {
        fs::create_dir_all(s.l(63, &format!("d{d}"))).unwrap();
        fs::write(s.l(63, &format!("d{d}/f")), "x").unwrap();
    }
    let m = s.mount();
    let pid = m.pid();
    // One answered request first: the daemon's own fds (its transport's, opened
    // around INIT) are all there by then.
    fs::metadata(s.m("")).unwrap();
    let fd0 = fd_count(pid);
    for d in 0..400 {
        assert_eq!(read(s.m(&format!("d{d}/f"))), "x");
    }
    // 64 kept in the bottom layer, plus the kept knowledge that 63 layers have no
    // such directory (no fd), plus a few for files still open in the kernel's cache:
    // their RELEASE is sent in the background after close(2), and may still be on its
    // way.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut fd1 = fd_count(pid);
    while fd1 > fd0 + 64 + 8 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        fd1 = fd_count(pid);
    }
    assert!(
        fd1 <= fd0 + 64 + 8,
        "daemon fds: {fd0} before, {fd1} after 400 directories"
    );
    assert!(fd1 >= fd0 + 4, "lower directories are not kept: {fd0} -> {fd1} fds");
    m.finish();
}

#[test]
fn fds_and_memory_come_back_after_the_kernel_forgets() {
    let s = Stack::new(1);
    // 10k lower files too: looked up, and some opened, through the mount.
    for d in 0..10 {
        fs::create_dir_all(s.l(0, &format!("low{d}"))).unwrap();
        for i in 0..1000 {
            fs::write(s.l(0, &format!("low{d}/f{i}")), "lower").unwrap();
        }
    }
    let m = s.mount();
    let pid = m.pid();
    // Warm up (threads, allocator arenas, first listings, and the lower directories,
    // whose fds are kept, a bounded number per layer), then take the baseline.
    for i in 0..200 {
        fs::write(s.m(&format!("warm{i}")), "w").unwrap();
        fs::metadata(s.m(&format!("low{}/f{i}", i % 10))).unwrap();
    }
    drop_caches();
    std::thread::sleep(Duration::from_millis(300));
    let fd0 = fd_count(pid);
    let rss0 = rss_kib(pid);

    let round = |r: usize| {
        for d in 0..20 {
            let dir = s.m(&format!("r{r}/d{d}"));
            fs::create_dir_all(&dir).unwrap();
            for i in 0..1000 {
                let p = dir.join(format!("file{i}"));
                let mut f = File::create(&p).unwrap();
                f.write_all(b"some data").unwrap();
                drop(f);
                fs::metadata(&p).unwrap();
            }
        }
        // Lower files: stat all, open and read some.
        for d in 0..10 {
            for i in 0..1000 {
                let p = s.m(&format!("low{d}/f{i}"));
                fs::metadata(&p).unwrap();
                if i % 10 == 0 {
                    assert_eq!(read(&p), "lower");
                }
            }
        }
        // Listings held and dropped.
        for d in 0..20 {
            assert_eq!(fs::read_dir(s.m(&format!("r{r}/d{d}"))).unwrap().count(), 1000);
        }
    };
    let settle = |what: &str| -> (usize, u64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            drop_caches();
            std::thread::sleep(Duration::from_millis(300));
            let (fd, rss) = (fd_count(pid), rss_kib(pid));
            if fd <= fd0 + 4 || Instant::now() > deadline {
                eprintln!("{what}: fds {fd0} -> {fd}, VmRSS {rss0} -> {rss} KiB");
                return (fd, rss);
            }
        }
    };
    round(0);
    let peak_fd = fd_count(pid);
    let (fd1, rss1) = settle("after 20k files created and stat-ed, 10k lower files stat-ed");
    assert!(
        fd1 <= fd0 + 4,
        "daemon fds: {fd0} at the start, {peak_fd} at the peak, {fd1} after drop_caches"
    );
    // Removing them all, and a second round: memory must not keep growing per file.
    fs::remove_dir_all(s.m("r0")).unwrap();
    round(1);
    fs::remove_dir_all(s.m("r1")).unwrap();
    let (fd2, rss2) = settle("after a second round and removing both");
    assert!(fd2 <= fd0 + 4, "daemon fds: {fd0} at the start, {fd2} at the end");
    assert!(
        rss2 <= rss1 + 8 * 1024,
        "VmRSS keeps growing: {rss0} KiB at the start, {rss1} after one round, {rss2} after two"
    );
    assert!(
        rss2 <= rss0 + 64 * 1024,
        "VmRSS {rss0} KiB at the start, {rss2} at the end"
    );
    m.finish();
}

// ---- how the daemon ends ----

fn stack_with_file() -> Stack {
    let s = Stack::new(1);
    write(s.l(0, "f"), "lower");
    s
}

#[test]
fn sigterm_sigint_and_sighup_unmount_and_exit_0() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let s = stack_with_file();
        let mut m = s.mount();
        write(s.m("g"), "upper");
        m.signal(sig);
        let st = m
            .wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("signal {sig}: still running after 10 s"));
        assert!(st.success(), "signal {sig}: {st}");
        assert!(!is_mounted(&s.mnt), "signal {sig}: still mounted");
        let mut err = String::new();
        m.take_stderr().unwrap().read_to_string(&mut err).unwrap();
        // Log lines on the way out are checked in `clean_shutdowns_log_no_errors`.
        assert!(!err.contains("panicked"), "signal {sig}: {err}");
        assert_eq!(read(s.u("g")), "upper");
    }
}

/// A clean unmount is not an error: yet after `fusermount3 -u` the daemon logs
/// "WARN fuser::session: Failed to umount filesystem: Invalid argument" (it unmounts
/// again what is already gone), and after SIGTERM/SIGINT/SIGHUP it often logs
/// "ERROR fuser::reply: Failed to send FUSE reply: No such file or directory" (a reply
/// to a request the kernel dropped when the connection went away, e.g. the RELEASE of
/// a file closed just before). Container runtimes show a daemon's stderr to users.
#[test]
fn clean_shutdowns_log_no_errors() {
    let mut logs = Vec::new();
    for how in ["fusermount3", "SIGTERM", "SIGINT", "SIGTERM", "SIGINT"] {
        let s = stack_with_file();
        let mut m = s.mount();
        write(s.m("g"), "upper");
        match how {
            "fusermount3" => assert!(Command::new("fusermount3")
                .arg("-u")
                .arg(&s.mnt)
                .status()
                .unwrap()
                .success()),
            "SIGTERM" => m.signal(libc::SIGTERM),
            _ => m.signal(libc::SIGINT),
        }
        let st = m.wait_exit(Duration::from_secs(10)).unwrap();
        assert!(st.success());
        let mut err = String::new();
        m.take_stderr().unwrap().read_to_string(&mut err).unwrap();
        if !err.is_empty() {
            logs.push(format!("{how}: {err}"));
        }
    }
    assert!(logs.is_empty(), "{logs:#?}");
}

#[test]
fn fusermount_u_makes_the_daemon_exit_0() {
    let s = stack_with_file();
    let mut m = s.mount();
    let _ = read(s.m("f"));
    let st = Command::new("fusermount3").arg("-u").arg(&s.mnt).status().unwrap();
    assert!(st.success());
    let st = m
        .wait_exit(Duration::from_secs(10))
        .expect("daemon still running 10 s after fusermount3 -u");
    assert!(st.success(), "{st}");
    assert!(!is_mounted(&s.mnt));
}

/// An unmount that comes before the daemon has read the kernel's first request (a
/// caller that unmounts the moment the mount shows in the table, on a busy machine)
/// ends the daemon with exit 0 like any other unmount. `STRATA_TEST_PAUSE_BEFORE_INIT_MS`
/// holds the daemon between its mount(2) and its first read of the connection, so the
/// test does not depend on the scheduler.
#[test]
fn unmount_before_the_first_request_makes_the_daemon_exit_0() {
    let s = stack_with_file();
    for round in 0..3 {
        let mut m = Mount::start_env(&s.opts(), &s.mnt, &[("STRATA_TEST_PAUSE_BEFORE_INIT_MS", "300")]);
        let st = Command::new("fusermount3").arg("-u").arg(&s.mnt).status().unwrap();
        assert!(st.success(), "round {round}: fusermount3 -u: {st}");
        let st = m
            .wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("round {round}: daemon still running 10 s after fusermount3 -u"));
        let mut err = String::new();
        m.take_stderr().unwrap().read_to_string(&mut err).unwrap();
        assert!(
            st.success(),
            "round {round}: strata exited with {st} after an early unmount: {err}"
        );
    }
    assert!(!is_mounted(&s.mnt));
    // And a mount that is used works as before.
    let m = s.mount();
    assert_eq!(read(s.m("f")), read(s.l(0, "f")));
    m.finish();
}

#[test]
fn lazy_unmount_with_an_open_file_keeps_it_working_then_the_daemon_exits_0() {
    let s = stack_with_file();
    let mut m = s.mount();
    let mut f = OpenOptions::new().read(true).write(true).open(s.m("f")).unwrap();
    let dir = File::open(s.m("")).unwrap();
    let st = Command::new("umount").arg("-l").arg(&s.mnt).status().unwrap();
    assert!(st.success());
    assert!(!is_mounted(&s.mnt), "umount -l leaves nothing in the mount table");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        m.wait_exit(Duration::ZERO).is_none(),
        "the daemon quit while a file is still open"
    );
    // The open file and directory still work.
    let mut c = String::new();
    f.read_to_string(&mut c).unwrap();
    assert_eq!(c, "lower");
    f.write_all_at(b"LOWER", 0).unwrap();
    f.sync_all().unwrap();
    let listed: Vec<_> = rfs_list(&dir);
    assert_eq!(listed, ["f"]);
    assert_eq!(read(s.u("f")), "LOWER");
    drop(f);
    drop(dir);
    let st = m
        .wait_exit(Duration::from_secs(10))
        .expect("daemon still running 10 s after the last file closed");
    let mut err = String::new();
    if let Some(mut e) = m.take_stderr() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(st.success(), "{st}; daemon stderr: {err}");
}

fn rfs_list(dir: &File) -> Vec<String> {
    let d = rustix::fs::Dir::read_from(dir).unwrap();
    let mut v: Vec<String> = d
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "." && n != "..")
        .collect();
    v.sort();
    v
}

/// SIGTERM while a file on the mount is open: the unmount fails (EBUSY), the daemon
/// logs a warning and keeps serving, and the signal thread is gone, so every later
/// SIGTERM/SIGINT is ignored even once nothing is open any more. libfuse daemons
/// detach lazily on SIGTERM instead; here only fusermount3 -u or SIGKILL end it.
#[test]
fn sigterm_while_a_file_is_open_still_ends_the_daemon() {
    let s = stack_with_file();
    let mut m = s.mount();
    let f = File::open(s.m("f")).unwrap();
    m.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    drop(f);
    let mut st = m.wait_exit(Duration::from_secs(3));
    if st.is_none() {
        // Nothing open now: ask again.
        m.signal(libc::SIGTERM);
        st = m.wait_exit(Duration::from_secs(5));
    }
    assert!(
        st.is_some(),
        "daemon still running after SIGTERM twice (still mounted: {})",
        is_mounted(&s.mnt)
    );
    assert!(st.unwrap().success());
    assert!(!is_mounted(&s.mnt));
}

/// A daemon started without `-f`, cleaned up (unmounted, killed) when the test ends.
struct Daemon {
    mnt: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3").arg("-u").arg(&self.mnt).status();
            lazy_unmount(&self.mnt);
        }
        for pid in strata_pids_for(&self.mnt) {
            // SAFETY: kill(2) of a strata daemon this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

#[test]
fn daemon_mode_returns_at_once_closes_pipes_and_goes_away_on_unmount() {
    let s = stack_with_file();
    let _guard = Daemon { mnt: s.mnt.clone() };
    let started = Instant::now();
    let child = Command::new(STRATA)
        .args(["-o", &s.opts()])
        .arg(&s.mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // wait_with_output returns only once the parent exited AND both pipes are at EOF,
    // i.e. the daemon kept no copy of them.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("strata without -f: no exit with both pipes closed within 10 s")
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "{:?} {:?}",
        out.stdout,
        out.stderr
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(is_mounted(&s.mnt), "returned before the mount was live");
    assert_eq!(read(s.m("f")), "lower");
    write(s.m("g"), "new");
    let pids = strata_pids_for(&s.mnt);
    assert_eq!(pids.len(), 1, "one daemon: {pids:?}");
    let pid = pids[0];
    // Detached: its own session, stdio on /dev/null.
    for fd in 0..3 {
        let target = fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert_eq!(target, Path::new("/dev/null"), "daemon fd {fd}");
    }
    let st = Command::new("fusermount3").arg("-u").arg(&s.mnt).status().unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !strata_pids_for(&s.mnt).is_empty() {
        assert!(
            Instant::now() < deadline,
            "daemon {pid} still running 10 s after fusermount3 -u"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!is_mounted(&s.mnt));
    assert_eq!(read(s.u("g")), "new");
}

/// Many mounts and unmounts in a row: no daemon, mount or staging leftovers.
#[test]
fn repeated_mounts_leave_nothing_behind() {
    let s = stack_with_file();
    for i in 0..30 {
        let m = s.mount();
        write(s.m(&format!("n{i}")), "x");
        OpenOptions::new()
            .append(true)
            .open(s.m("f"))
            .unwrap()
            .write_all(b"+")
            .unwrap();
        let st = m.unmount();
        assert!(st.success(), "round {i}: {st}");
        assert!(!is_mounted(&s.mnt));
    }
    assert!(strata_pids_for(&s.mnt).is_empty());
    let _m = s.mount();
    assert_eq!(read(s.m("f")), format!("lower{}", "+".repeat(30)));
    assert_eq!(names(&s.mnt).len(), 31);
}

/// Concurrent first writes to one lower file copy it up once, and every writer ends up
/// writing to the same upper file (the semantics' copy-up rule), with O_APPEND lines
/// never lost or torn.
#[test]
fn concurrent_first_appends_to_a_lower_file_all_land_in_one_copy() {
    for round in 0..20 {
        let s = Arc::new(Stack::new(1));
        write(s.l(0, "log"), "lower line\n");
        let m = s.mount();
        let barrier = Arc::new(std::sync::Barrier::new(THREADS));
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                let (s, b) = (s.clone(), barrier.clone());
                std::thread::spawn(move || {
                    b.wait();
                    let mut f = OpenOptions::new().append(true).open(s.m("log")).unwrap();
                    for i in 0..200 {
                        f.write_all(format!("t{t} {i:08}\n").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let log = read(s.m("log"));
        let mut per = vec![Vec::new(); THREADS];
        for l in log.lines().skip(1) {
            let (t, i) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("round {round}: torn line {l:?}"));
            per[t[1..].parse::<usize>().unwrap()].push(i.parse::<u64>().unwrap());
        }
        for (t, v) in per.iter().enumerate() {
            let want: Vec<u64> = (0..200).collect();
            assert!(
                *v == want,
                "round {round}: thread {t} has {} of 200 lines (first {:?}); lower now {:?}",
                v.len(),
                v.first(),
                fs::read_to_string(s.l(0, "log")).unwrap().len()
            );
        }
        assert_eq!(
            read(s.l(0, "log")),
            "lower line\n",
            "round {round}: the lower file was written"
        );
        m.finish();
    }
}

/// Listings of a merged directory that other threads change and list at the same time
/// show every name once (each listing is a fresh opendir). strata answers readdir from
/// a snapshot per open handle, with offsets that are indices into that snapshot, but
/// opens directories with FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE: the kernel's readdir
/// cache is per inode and appends entries from whichever handle reaches the cache's
/// end offset, so it can splice two handles' different snapshots. About 1% of the
/// listings here show a name twice (checked: gone without FOPEN_CACHE_DIR).
#[test]
fn listings_during_concurrent_changes_show_each_name_once() {
    let s = Arc::new(Stack::new(2));
    for i in 0..20 {
        write(s.l(i % 2, &format!("shared/dir/lower{i}")), "x");
    }
    let m = s.mount();
    let until = Instant::now() + Duration::from_secs(8);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut bad = Vec::new();
                let mut i = 0u64;
                while Instant::now() < until {
                    let p = s.m(&format!("shared/dir/t{t}-{}", i % 10));
                    if exists(&p) {
                        fs::remove_file(&p).unwrap();
                    } else {
                        fs::write(&p, "x").unwrap();
                    }
                    i += 1;
                    let mut v: Vec<String> = fs::read_dir(s.m("shared/dir"))
                        .unwrap()
                        .map(|e| e.unwrap().file_name().into_string().unwrap())
                        .collect();
                    v.sort();
                    let all = v.clone();
                    v.dedup();
                    let missing: Vec<_> = (0..20).filter(|i| !v.contains(&format!("lower{i}"))).collect();
                    if v.len() != all.len() || !missing.is_empty() {
                        bad.push(format!(
                            "thread {t} listing {i}: {} duplicates, missing lower {missing:?}: {all:?}",
                            all.len() - v.len()
                        ));
                    }
                }
                (i, bad)
            })
        })
        .collect();
    let mut bad = Vec::new();
    let mut listings = 0;
    for h in threads {
        let (n, b) = h.join().unwrap();
        listings += n;
        bad.extend(b);
    }
    m.finish();
    assert!(
        bad.is_empty(),
        "{} of {listings} listings wrong: {:#?}",
        bad.len(),
        &bad[..bad.len().min(3)]
    );
}

/// Opens answered only after another open completed a copy and passes I/O through to
/// it move to the completed copy first: a write-only open that found a metadata-only
/// copy, and a read-only open that found the lower file. The kernel takes no other I/O
/// mode for the inode then, and fails an open answered otherwise with EIO (seen once in
/// `racing_first_writes…` on a busy machine). `STRATA_TEST_PAUSE_IO_MODE_MS` holds the
/// first open's answer, so the test does not depend on the scheduler.
#[test]
fn opens_answered_after_a_copy_was_completed_meanwhile_succeed() {
    if std::env::var("STRATA_TEST_TRANSPORT").is_ok_and(|v| v == "uring") {
        // Opens answered over the rings never pass through, and the pause this test
        // injects then holds every open, so its order of events does not happen.
        eprintln!("skipped: no FUSE passthrough under the io_uring transport");
        return;
    }
    for writer in [true, false] {
        let what = if writer { "write-only open" } else { "read-only open" };
        let s = Stack::new(1);
        fs::write(s.l(0, "big"), pattern(7, BIG_LEN)).unwrap();
        let opts = format!("{},metacopy=on", s.opts());
        let m = Mount::start_env(&opts, &s.mnt, &[("STRATA_TEST_PAUSE_IO_MODE_MS", "2000")]);
        let path = s.m("big");
        let late = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
            let f = OpenOptions::new().read(!writer).write(writer).open(&path)?;
            if writer {
                f.write_all_at(b"late", 0)?;
            }
            let mut head = vec![0u8; 105];
            if !writer {
                f.read_exact_at(&mut head, 0)?;
            }
            Ok(head)
        });
        std::thread::sleep(Duration::from_millis(200));
        // Completes the copy, and stays open while the first open is answered.
        let early = OpenOptions::new().read(true).write(true).open(s.m("big")).unwrap();
        early.write_all_at(b"early", 100).unwrap();
        let head = late
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{what} answered after the copy was completed: {e}"));
        drop(early);
        let mut want = pattern(7, BIG_LEN);
        if writer {
            want[..4].copy_from_slice(b"late");
        } else {
            assert!(head[100..] == *b"early", "{what} reads the copy's data");
        }
        want[100..105].copy_from_slice(b"early");
        assert!(
            fs::read(s.m("big")).unwrap() == want,
            "{what}: the file holds the writes"
        );
        m.finish();
    }
}

/// The start of the load test alone, many times: every thread opens each of a few
/// large lower files for writing (a metadata-only copy completed by the first write,
/// handles moving between I/O modes) and writes its own slot, twice over. Every open
/// and write must succeed and every slot land. (The kernel fails an open with EIO
/// when strata offers it an I/O mode that clashes with the inode's; that happened
/// about once in 100 rounds when direct-I/O opens were not yet counted.)
#[test]
fn racing_first_writes_to_large_lower_files_all_succeed() {
    const FILES: usize = 4;
    let rounds: usize = std::env::var("STRATA_RACE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    for round in 0..rounds {
        let s = Arc::new(Stack::new(1));
        for k in 0..FILES {
            fs::write(s.l(0, &format!("big{k}")), pattern(k as u64, BIG_LEN)).unwrap();
        }
        let mut m = s.mount_with(&std::env::var("STRATA_RACE_OPTS").unwrap_or_else(|_| "metacopy=on".into()));
        let log = read_log(&mut m);
        let barrier = Arc::new(std::sync::Barrier::new(THREADS));
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                let (s, b) = (s.clone(), barrier.clone());
                std::thread::spawn(move || -> Result<(), String> {
                    b.wait();
                    for wave in 0..2u8 {
                        for k in 0..FILES {
                            let f = OpenOptions::new()
                                .write(true)
                                .open(s.m(&format!("big{k}")))
                                .map_err(|e| {
                                    format!(
                                        "wave {wave}: open big{k} by {}: {e}",
                                        rustix::thread::gettid().as_raw_nonzero()
                                    )
                                })?;
                            f.write_all_at(&vec![b'A' + t as u8 + wave; SLOT], (t * SLOT) as u64)
                                .map_err(|e| format!("wave {wave}: write big{k}: {e}"))?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        let errors: Vec<String> = hs.into_iter().filter_map(|h| h.join().unwrap().err()).collect();
        if !errors.is_empty() {
            fail_with_log(m, log, &format!("round {round}: {errors:?}"));
        }
        for k in 0..FILES {
            let got = fs::read(s.m(&format!("big{k}"))).unwrap();
            assert_eq!(got.len(), BIG_LEN, "round {round}: big{k}");
            for t in 0..THREADS {
                assert!(
                    got[t * SLOT..(t + 1) * SLOT].iter().all(|&b| b == b'A' + t as u8 + 1),
                    "round {round}: big{k}, slot of thread {t}"
                );
            }
        }
        unmount_quietly(m, log, &format!("round {round}"));
    }
}
