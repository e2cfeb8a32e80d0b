//! Idle mounts: what N mounts that do nothing cost each FUSE system (the daemons'
//! resident memory and threads) and how long one mount takes. Container hosts run
//! hundreds of mounts; this is the table for that question. `STRATA_BENCH_IDLE=N`
//! sets N (default 100, 0 leaves the table out); `STRATA_BENCH_ONLY` runs it when
//! it names `idle`.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::fixtures::Fixture;
use crate::mounts::{Mount, System};
use crate::util::Res;

/// What N idle mounts of one system cost.
pub struct Idle {
    pub label: String,
    pub mounts: usize,
    /// Median time of one mount (the mount command until the mount is live).
    pub mount_time: Duration,
    /// Resident memory of all their daemons, in KiB: all of it (program text and
    /// libraries, shared between the daemons, included), and the anonymous part
    /// (each daemon's own).
    pub rss_kib: u64,
    pub anon_kib: u64,
    pub threads: u64,
    pub daemons: usize,
}

/// Mounts `sys` `n` times over `fx`, waits for the daemons to settle, and counts.
pub fn measure(sys: &System, fx: &Fixture, run_dir: &Path, log: &Path, n: usize) -> Res<Idle> {
    let mut mounts = Vec::new();
    let mut times = Vec::new();
    for i in 0..n {
        crate::util::check_interrupted()?;
        let t = Instant::now();
        let m = Mount::new(
            sys,
            &fx.lowers,
            run_dir.join(format!("idle-{}-{i:03}", sys.id)),
            log,
            "",
        )?;
        times.push(t.elapsed());
        mounts.push(m);
    }
    // Idle: whatever a daemon starts on demand has had its chance to go away.
    std::thread::sleep(Duration::from_secs(2));
    let points: Vec<String> = mounts.iter().map(|m| m.point.display().to_string()).collect();
    let (mut rss_kib, mut anon_kib, mut threads, mut daemons) = (0, 0, 0, 0);
    for pid in daemon_pids(&points) {
        let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        rss_kib += field("VmRSS:");
        anon_kib += field("RssAnon:");
        threads += field("Threads:");
        daemons += 1;
    }
    drop(mounts);
    times.sort();
    Ok(Idle {
        label: sys.label.clone(),
        mounts: n,
        mount_time: times.get(times.len() / 2).copied().unwrap_or_default(),
        rss_kib,
        anon_kib,
        threads,
        daemons,
    })
}

/// The processes whose command line names one of the mount points `points`.
fn daemon_pids(points: &[String]) -> Vec<u32> {
    strata::cmd::live::command_lines()
        .into_iter()
        .filter(|(_, args)| {
            args.iter()
                .any(|a| points.iter().any(|p| a.to_str() == Some(p.as_str())))
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// The table, one row per system.
pub fn table(rows: &[Idle]) -> String {
    let mut s = String::from(
        "idle mounts          mounts  daemons   RSS total  RSS/mount  anon/mount  threads  threads/mount  one mount (median)\n",
    );
    for r in rows {
        let per = |v: u64| v as f64 / r.mounts.max(1) as f64;
        s.push_str(&format!(
            "{:<20} {:>6}  {:>7}  {:>7.1} MiB  {:>5.2} MiB  {:>6.2} MiB  {:>7}  {:>13.1}  {:>8.1} ms\n",
            r.label,
            r.mounts,
            r.daemons,
            r.rss_kib as f64 / 1024.0,
            per(r.rss_kib) / 1024.0,
            per(r.anon_kib) / 1024.0,
            r.threads,
            per(r.threads),
            r.mount_time.as_secs_f64() * 1000.0
        ));
    }
    s
}
