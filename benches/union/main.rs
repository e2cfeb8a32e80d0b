//! strata benchmarks: the same workloads on strata, the kernel's overlayfs
//! and fuse-overlayfs 1.x / 2.x, side by side, each on fresh mounts.
//!
//! Run as root with `cargo bench --bench union`; see docs/benchmarks.md for
//! the workloads and the `STRATA_BENCH_*` variables.

mod config;
mod density;
mod fixtures;
mod layers;
mod mounts;
mod plots;
mod report;
mod util;
mod workloads;

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use config::Config;
use fixtures::{Fixture, Fixtures};
use mounts::{Kind, Mount, System, Watchdog};
use report::{Cell, Report, Row};
use util::{fmt_duration, Ctx, Res};
use workloads::{Env, Measure, Mode, Tools, Workload};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes --bench; `cargo test --all-targets` does not, and
    // must not start mounting filesystems.
    if !args.iter().any(|a| a == "--bench") {
        println!("strata union benchmarks: run them with `cargo bench --bench union` (as root)");
        return;
    }
    match run(&args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

/// Everything shared by the runs of all workloads.
struct Bench<'a> {
    cfg: &'a Config,
    systems: &'a [System],
    tools: Tools,
    run_dir: PathBuf,
    log_dir: PathBuf,
    seq: std::cell::Cell<u32>,
}

static NO_DROP_WARNED: AtomicBool = AtomicBool::new(false);

impl Bench<'_> {
    fn mount(&self, sys: &System, fx: &Fixture, opts: &str) -> Res<Mount> {
        if !opts.is_empty() && !matches!(sys.kind, Kind::Kernel | Kind::Strata) {
            return Err(format!("not run: `-o {opts}` rows compare the kernel and strata"));
        }
        let n = self.seq.get();
        self.seq.set(n + 1);
        let scratch = self.run_dir.join(format!("{n:05}-{}", sys.id));
        Mount::new(
            sys,
            &fx.lowers,
            scratch,
            &self.log_dir.join(format!("{}.log", sys.id)),
            opts,
        )
    }

    /// The timed part, under the watchdog.
    fn timed_op(&self, w: &Workload, m: &Mount, fx: &Fixture) -> Res<Vec<Measure>> {
        util::check_interrupted()?;
        let env = Env {
            mnt: &m.point,
            fixture: fx,
            tools: &self.tools,
        };
        let token = Watchdog::arm(m, self.cfg.timeout);
        let r = (w.op)(&env);
        if token.disarm() {
            return Err(if util::interrupted() {
                "interrupted; FUSE connection aborted".into()
            } else {
                format!(
                    "took longer than {} s; FUSE connection aborted",
                    self.cfg.timeout.as_secs()
                )
            });
        }
        let v = r?;
        if v.len() != w.rows.len() {
            return Err(format!(
                "workload returned {} results for {} rows",
                v.len(),
                w.rows.len()
            ));
        }
        Ok(v)
    }

    fn prepare(&self, w: &Workload, m: &Mount, fx: &Fixture) -> Res<()> {
        if let Some(p) = &w.prepare {
            p(&Env {
                mnt: &m.point,
                fixture: fx,
                tools: &self.tools,
            })?;
        }
        Ok(())
    }

    /// Before a timed run: `sync`, and for cold runs drop the page cache, then
    /// page the workload's tool back in (its loading is not what is measured).
    fn settle(w: &Workload, cold: bool) {
        if !cold {
            util::sync_all();
            return;
        }
        if let Err(e) = util::drop_caches() {
            if !NO_DROP_WARNED.swap(true, Ordering::SeqCst) {
                eprintln!("warning: cannot drop the page cache ({e}): cold runs are not cold");
            }
        }
        if let Some(tool) = w.tool {
            let _ = Command::new(tool)
                .arg("--version")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Run one workload on every system; one `Cell` per (row, system).
    fn workload(&self, w: &Workload, fixtures: &Fixtures) -> Vec<Vec<Cell>> {
        let n = self.systems.len();
        let mut cells = vec![vec![Cell::default(); n]; w.rows.len()];
        let fail = |cells: &mut Vec<Vec<Cell>>, i: usize, e: String| {
            for row in cells.iter_mut() {
                row[i].error.get_or_insert(e.clone());
            }
        };
        let fx = match fixtures.get(w.fx) {
            Ok(f) => f,
            Err(e) => {
                for i in 0..n {
                    fail(&mut cells, i, e.clone());
                }
                return cells;
            }
        };
        let runs = w.runs(self.cfg.runs);
        let record = |cells: &mut Vec<Vec<Cell>>, i: usize, v: Vec<Measure>| {
            for (row, m) in cells.iter_mut().zip(v) {
                row[i].record(m.time, m.check);
            }
        };
        let failed = |cells: &Vec<Vec<Cell>>, i: usize| cells[0][i].error.is_some();
        match w.mode {
            Mode::Fresh { cold } => {
                for r in 0..runs {
                    // Rotate the order so no system always goes first.
                    for k in 0..n {
                        let i = (k + r) % n;
                        if failed(&cells, i) || util::interrupted() {
                            continue;
                        }
                        let sys = &self.systems[i];
                        let res = self.mount(sys, &fx, w.opts).and_then(|m| {
                            self.prepare(w, &m, &fx)?;
                            Self::settle(w, cold);
                            self.timed_op(w, &m, &fx)
                            // `m` unmounts here
                        });
                        match res {
                            Ok(v) => record(&mut cells, i, v),
                            Err(e) => fail(&mut cells, i, e),
                        }
                    }
                }
            }
            Mode::Warm { rewarm } => {
                // All systems mounted side by side; runs interleaved.
                let mut mounts: Vec<Option<Mount>> = Vec::new();
                for (i, sys) in self.systems.iter().enumerate() {
                    let m = self.mount(sys, &fx, w.opts).and_then(|m| {
                        self.prepare(w, &m, &fx)?;
                        self.timed_op(w, &m, &fx)?; // warm-up, not recorded
                        Ok(m)
                    });
                    match m {
                        Ok(m) => mounts.push(Some(m)),
                        Err(e) => {
                            fail(&mut cells, i, e);
                            mounts.push(None);
                        }
                    }
                }
                for r in 0..runs {
                    for k in 0..n {
                        let i = (k + r) % n;
                        let Some(m) = &mounts[i] else { continue };
                        if failed(&cells, i) || util::interrupted() {
                            continue;
                        }
                        if rewarm {
                            // Twice: the second read moves the pages to the active
                            // list, which the timed read would pay for otherwise.
                            Self::settle(w, true);
                            if let Err(e) = self.timed_op(w, m, &fx).and_then(|_| self.timed_op(w, m, &fx)) {
                                fail(&mut cells, i, e);
                                continue;
                            }
                        }
                        Self::settle(w, false);
                        match self.timed_op(w, m, &fx) {
                            Ok(v) => record(&mut cells, i, v),
                            Err(e) => fail(&mut cells, i, e),
                        }
                    }
                }
                drop(mounts);
            }
        }
        cells
    }
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn lock(dir: &Path) -> Res<File> {
    let p = dir.join(".lock");
    let f = File::create(&p).ctx(|| format!("creating {}", p.display()))?;
    // SAFETY: valid fd owned by `f`.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!("another benchmark run is using {}", dir.display()));
    }
    Ok(f)
}

fn run(args: &[String]) -> Res<i32> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "the strata benchmarks mount filesystems (kernel overlayfs, FUSE) and drop the page cache, \
             so they must run as root: e.g. `sudo -E cargo bench --bench union`"
                .into(),
        );
    }
    let cfg = Config::load(args)?;
    fs::create_dir_all(&cfg.work_dir).ctx(|| format!("creating {}", cfg.work_dir.display()))?;
    let work_dir = fs::canonicalize(&cfg.work_dir).ctx(|| format!("resolving {}", cfg.work_dir.display()))?;
    let cfg = Config { work_dir, ..cfg };
    let _lock = lock(&cfg.work_dir)?;

    util::install_signal_handlers();
    Watchdog::start();

    fs::create_dir_all(&cfg.scratch).ctx(|| format!("creating {}", cfg.scratch.display()))?;
    let scratch = fs::canonicalize(&cfg.scratch).ctx(|| format!("resolving {}", cfg.scratch.display()))?;
    let run_dir = scratch.join("strata-bench-run");
    mounts::cleanup_stale(&run_dir);
    util::remove_tree(&run_dir)?;
    let log_dir = cfg.work_dir.join("logs");
    let _ = fs::remove_dir_all(&log_dir);
    let home = cfg.work_dir.join("home");
    for d in [&run_dir, &log_dir, &home] {
        fs::create_dir_all(d).ctx(|| format!("creating {}", d.display()))?;
    }

    let (systems, skipped) = mounts::detect(&cfg)?;
    for s in &skipped {
        eprintln!("skipping {s}");
    }
    if systems.is_empty() {
        return Err("no system to benchmark".into());
    }
    let _uring = mounts::UringSwitch::on_if_needed(&systems)?;

    let fixtures = Fixtures::new(&cfg)?;
    let fio = util::which("fio");
    let all = workloads::all(&fixtures.p, fio.is_some());
    let names: Vec<String> = all
        .iter()
        .flat_map(|w| w.rows.iter().map(move |r| format!("{}: {r}", w.group)))
        .collect();
    let selected: Vec<Workload> = all.into_iter().filter(|w| w.matches(&cfg.only)).collect();
    let idle_n: usize = match std::env::var("STRATA_BENCH_IDLE") {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("STRATA_BENCH_IDLE={v}: expected a whole number"))?,
        Err(_) => 100,
    };
    let idle = idle_n > 0 && (cfg.only.is_empty() || cfg.only.iter().any(|o| "idle mounts".contains(o.as_str())));
    let layer_tools = std::env::var("STRATA_BENCH_LAYERS").map_or(true, |v| v.trim() != "0")
        && (cfg.only.is_empty() || cfg.only.iter().any(|o| "layer tools".contains(o.as_str())));
    if selected.is_empty() && !idle && !layer_tools {
        return Err(format!(
            "STRATA_BENCH_ONLY matches no workload; there are:\n  {}",
            names.join("\n  ")
        ));
    }

    let runs = match cfg.runs {
        Some(r) => format!("{r} runs"),
        None => "3-9 runs per workload".into(),
    };
    eprintln!(
        "strata union benchmarks: scale {}, {runs}, kernel {}, {} CPUs",
        cfg.scale,
        kernel_release(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    eprintln!(
        "systems: {}",
        systems.iter().map(|s| s.label.as_str()).collect::<Vec<_>>().join(", ")
    );
    if let Some(s) = systems.iter().find(|s| s.id == "strata") {
        eprintln!(
            "strata binary: {}",
            s.bin.as_ref().map(|b| b.display().to_string()).unwrap_or_default()
        );
    }
    eprintln!("work dir: {} (fixtures are kept and reused)", cfg.work_dir.display());
    eprintln!("upper/work dirs and mount points: {}", run_dir.display());
    if fio.is_none() {
        eprintln!("fio not installed: random reads use a pread loop");
    }

    let bench = Bench {
        cfg: &cfg,
        systems: &systems,
        tools: Tools { fio, home },
        run_dir,
        log_dir,
        seq: 0.into(),
    };
    let started = Instant::now();
    let mut rows = Vec::new();
    let total = selected.len();
    for (k, w) in selected.iter().enumerate() {
        if util::interrupted() {
            break;
        }
        let runs = w.runs(cfg.runs);
        eprintln!(
            "[{}/{total}] {} ({} mounts, {runs} runs) ...",
            k + 1,
            w.rows.join(" + "),
            w.mode_label()
        );
        let t = Instant::now();
        let cells = bench.workload(w, &fixtures);
        for (name, cells) in w.rows.iter().zip(cells) {
            let summary: Vec<String> = systems
                .iter()
                .zip(&cells)
                .map(|(s, c)| match (c.median(), &c.error) {
                    (Some(m), _) => format!("{} {}", s.id, fmt_duration(m)),
                    (None, Some(e)) => format!("{} FAILED: {e}", s.id),
                    (None, None) => format!("{} -", s.id),
                })
                .collect();
            eprintln!("      {name}: {}", summary.join(" | "));
            rows.push(Row {
                group: w.group,
                name: name.clone(),
                mode: w.mode_label(),
                cells,
            });
        }
        eprintln!("      ({} for this workload)", fmt_duration(t.elapsed()));
    }
    let mut idle_rows = Vec::new();
    if idle && !util::interrupted() {
        eprintln!("idle mounts: {idle_n} of each system ...");
        let fx = fixtures.get(fixtures::Fx::Untar)?;
        for sys in &systems {
            let log = bench.log_dir.join(format!("{}-idle.log", sys.id));
            match density::measure(sys, &fx, &bench.run_dir, &log, idle_n) {
                Ok(r) => idle_rows.push(r),
                Err(e) => eprintln!("      idle mounts of {}: FAILED: {e}", sys.label),
            }
        }
    }
    let mut layer_rows = Vec::new();
    let layer_runs = cfg.runs.unwrap_or(5);
    if layer_tools && !util::interrupted() {
        match systems.iter().find(|s| s.id == "strata").and_then(|s| s.bin.clone()) {
            Some(bin) => {
                eprintln!("layer tools: strata export/apply against tar, {layer_runs} runs ...");
                let fx = fixtures.get(fixtures::Fx::Untar)?;
                match layers::measure(
                    &bin,
                    &fx.dir.join("small.tar"),
                    &bench.run_dir.join("layer-tools"),
                    layer_runs,
                    cfg.scale,
                ) {
                    Ok(r) => layer_rows = r,
                    Err(e) => eprintln!("      layer tools: FAILED: {e}"),
                }
            }
            None => eprintln!("layer tools: not run (strata is not among the systems)"),
        }
    }
    let _ = util::remove_tree(&bench.run_dir);

    let report = Report {
        systems: &systems,
        rows,
        scale: cfg.scale,
    };
    println!();
    println!(
        "strata union benchmarks — scale {}, kernel {}, total {}",
        cfg.scale,
        kernel_release(),
        fmt_duration(started.elapsed())
    );
    if !report.rows.is_empty() {
        println!();
        print!("{}", report.table());
    }
    if !idle_rows.is_empty() {
        println!();
        print!("{}", density::table(&idle_rows));
    }
    if !layer_rows.is_empty() {
        println!();
        print!("{}", layers::table(&layer_rows, layer_runs));
    }
    // Only the idle or layer-tool tables: an earlier run's CSV and plots stay.
    if !report.rows.is_empty() {
        report.write_csv(&cfg.csv)?;
        println!("CSV: {}", cfg.csv.display());
        for p in plots::write(&report, &systems, &cfg.csv)? {
            println!("plot: {}", p.display());
        }
    }
    if util::interrupted() {
        eprintln!("interrupted: results above are partial");
        return Ok(130);
    }
    Ok(0)
}
