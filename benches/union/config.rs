//! Settings from the environment (and the command line `cargo bench` passes).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::util::Res;

pub struct Config {
    /// Fixtures, scratch mounts and logs live here.
    pub work_dir: PathBuf,
    /// Upper, work dirs and mount points go in `strata-bench-run/` here.
    pub scratch: PathBuf,
    /// Where the CSV goes.
    pub csv: PathBuf,
    /// Fixture size factor (1.0 = full size).
    pub scale: f64,
    /// Runs per workload; `None` = the workload's default (3 to 9).
    pub runs: Option<usize>,
    /// Lower-case substrings; a workload runs when its name matches any.
    pub only: Vec<String>,
    /// System ids to run; `None` = every one installed.
    pub systems: Option<Vec<String>>,
    /// Longest a single timed operation may take before its FUSE mount is aborted.
    pub timeout: Duration,
    /// Target directory of this build (`target/`).
    pub target_dir: PathBuf,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `target/` of the running bench: the binary is `target/<profile>/deps/union-HASH`.
fn target_dir() -> PathBuf {
    if let Some(d) = env("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target")))
}

impl Config {
    /// `args`: what follows the program name; `cargo bench -- WORDS` adds
    /// WORDS, used like `STRATA_BENCH_ONLY`. Flags (`--bench`...) are ignored.
    pub fn load(args: &[String]) -> Res<Config> {
        let target_dir = target_dir();
        let work_dir = env("STRATA_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| target_dir.join("strata-bench"));
        let scratch = env("STRATA_BENCH_SCRATCH")
            .map(PathBuf::from)
            .unwrap_or_else(|| work_dir.clone());
        let csv = env("STRATA_BENCH_CSV")
            .map(PathBuf::from)
            .unwrap_or_else(|| target_dir.join("bench-results.csv"));
        let scale = match env("STRATA_BENCH_SCALE") {
            None => 1.0,
            Some(v) => match v.trim().parse::<f64>() {
                Ok(s) if s > 0.0 && s <= 4.0 => s,
                _ => {
                    return Err(format!(
                        "STRATA_BENCH_SCALE={v}: expected a number in (0, 4], e.g. 0.05"
                    ))
                }
            },
        };
        let runs = match env("STRATA_BENCH_RUNS") {
            None => None,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if n >= 1 => Some(n),
                _ => return Err(format!("STRATA_BENCH_RUNS={v}: expected a whole number >= 1")),
            },
        };
        let mut only = env("STRATA_BENCH_ONLY").map(|v| list(&v)).unwrap_or_default();
        only.extend(args.iter().filter(|a| !a.starts_with('-')).map(|a| a.to_lowercase()));
        let systems = env("STRATA_BENCH_SYSTEMS").map(|v| list(&v));
        let timeout = match env("STRATA_BENCH_TIMEOUT") {
            None => Duration::from_secs(600),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) if n >= 1 => Duration::from_secs(n),
                _ => return Err(format!("STRATA_BENCH_TIMEOUT={v}: expected seconds >= 1")),
            },
        };
        for (var, p) in [("STRATA_BENCH_DIR", &work_dir), ("STRATA_BENCH_SCRATCH", &scratch)] {
            let dir = p.to_string_lossy();
            if dir.contains([',', ':', ' ']) {
                return Err(format!(
                    "{var}={dir}: the path may not contain ',', ':' or spaces (they end up in mount options)"
                ));
            }
        }
        Ok(Config {
            work_dir,
            scratch,
            csv,
            scale,
            runs,
            only,
            systems,
            timeout,
            target_dir,
        })
    }

    /// `n` scaled, at least `min`.
    pub fn count(&self, n: u64, min: u64) -> u64 {
        ((n as f64 * self.scale).round() as u64).max(min)
    }

    /// `bytes` scaled, a multiple of 4 KiB, at least 4 KiB.
    pub fn size(&self, bytes: u64) -> u64 {
        let s = (bytes as f64 * self.scale) as u64 / 4096 * 4096;
        s.max(4096)
    }
}
