//! The layer tools against tar(1) on the same trees: `strata export` against
//! `tar -c`, `strata apply` against `tar -x`, in MiB/s and files/s. Two trees: many
//! small files (the untar workload's 20k files) and a few large ones. The page cache
//! is warm for both tools (this measures the tools, not the disk). Like with like:
//! export and `apply --no-sync` against plain tar; the default, synced `apply`
//! against `tar -x` followed by `sync -f`. `STRATA_BENCH_ONLY="layer tools"` runs it
//! alone; `STRATA_BENCH_LAYERS=0` leaves it out.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::report::Cell;
use crate::util::{self, fmt_bytes, fmt_count, fmt_duration, Ctx, Res, Rng};
use crate::workloads;

/// One operation on one tree: the median time of strata's tool and of tar.
pub struct Row {
    pub tree: String,
    pub op: &'static str,
    pub strata: Duration,
    pub tar: Duration,
    pub bytes: u64,
    pub files: u64,
}

/// Files and bytes of regular-file data under `dir`.
fn count(dir: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    for e in walkdir::WalkDir::new(dir).into_iter().flatten() {
        if e.file_type().is_file() {
            files += 1;
            bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    (files, bytes)
}

/// The time `cmd` takes to run to its end (it must succeed).
fn timed(cmd: &mut Command) -> Res<Duration> {
    workloads::timed(|| util::run(cmd)).map(|(t, ())| t)
}

/// The large-file tree: 8 files of 32 MiB times `scale` (at least 1 MiB), random.
fn large_tree(dir: &Path, scale: f64) -> Res<()> {
    let size = ((32.0 * scale).max(1.0) as usize) << 20;
    let d = dir.join("large");
    fs::create_dir_all(&d).ctx(|| format!("creating {}", d.display()))?;
    let mut rng = Rng::new(17);
    let mut buf = vec![0u8; size];
    for k in 0..8 {
        rng.fill(&mut buf);
        let p = d.join(format!("blob{k}.bin"));
        fs::write(&p, &buf).ctx(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// Measures both trees; `small_tar` is the untar fixture's tarball, `work` a scratch
/// directory (removed at the end).
pub fn measure(strata: &Path, small_tar: &Path, work: &Path, runs: usize, scale: f64) -> Res<Vec<Row>> {
    let _ = util::remove_tree(work);
    let mut trees: Vec<(String, PathBuf)> = Vec::new();
    let small = work.join("small-tree");
    fs::create_dir_all(&small).ctx(|| format!("creating {}", small.display()))?;
    util::run(Command::new("tar").arg("-xf").arg(small_tar).arg("-C").arg(&small))?;
    trees.push(("small files".into(), small));
    let large = work.join("large-tree");
    large_tree(&large, scale)?;
    trees.push(("large files".into(), large));

    let mut rows = Vec::new();
    for (name, tree) in &trees {
        let (files, bytes) = count(tree);
        let label = format!("{name} ({} files, {})", fmt_count(files), fmt_bytes(bytes));
        let s_tar = work.join("strata.tar");
        let t_tar = work.join("tar.tar");
        // [operation][tool]: export, apply --no-sync, apply; strata, tar.
        let mut cells: [[Cell; 2]; 3] = Default::default();
        // One untimed round first: both tools then read from a warm page cache.
        for r in 0..=runs {
            util::check_interrupted()?;
            // Alternating which tool goes first, against drift on a noisy machine.
            let order: [usize; 2] = if r % 2 == 0 { [0, 1] } else { [1, 0] };
            // The first round is not kept.
            let mut keep = |op: usize, k: usize, t: Duration| {
                if r > 0 {
                    cells[op][k].record(t, None);
                }
            };
            for &k in &order {
                let t = if k == 0 {
                    let out = File::create(&s_tar).ctx(|| format!("creating {}", s_tar.display()))?;
                    timed(
                        Command::new(strata)
                            .arg("export")
                            .arg("--upper")
                            .arg(tree)
                            .stdout(Stdio::from(out)),
                    )?
                } else {
                    timed(
                        Command::new("tar")
                            .args(["--xattrs", "--sparse", "-cf"])
                            .arg(&t_tar)
                            .arg("-C")
                            .arg(tree)
                            .arg("."),
                    )?
                };
                keep(0, k, t);
            }
            for &k in &order {
                for (op, synced) in [(1, false), (2, true)] {
                    let dest = work.join(format!("dest-{k}"));
                    util::remove_tree(&dest)?;
                    util::sync_all();
                    let t = if k == 0 {
                        let mut c = Command::new(strata);
                        c.arg("apply");
                        if !synced {
                            c.arg("--no-sync");
                        }
                        timed(c.arg(&s_tar).arg(&dest))?
                    } else {
                        fs::create_dir(&dest).ctx(|| format!("creating {}", dest.display()))?;
                        let tar = format!(
                            "tar --xattrs -xf '{}' -C '{}'{}",
                            s_tar.display(),
                            dest.display(),
                            if synced {
                                format!(" && sync -f '{}'", dest.display())
                            } else {
                                String::new()
                            }
                        );
                        timed(Command::new("sh").arg("-c").arg(tar))?
                    };
                    keep(op, k, t);
                }
            }
        }
        let ops = [
            "export (to a file) | tar -c",
            "apply --no-sync | tar -x",
            "apply (synced) | tar -x; sync -f",
        ];
        for (op, [s, t]) in ops.into_iter().zip(cells) {
            rows.push(Row {
                tree: label.clone(),
                op,
                strata: s.median().unwrap_or_default(),
                tar: t.median().unwrap_or_default(),
                bytes,
                files,
            });
        }
    }
    util::remove_tree(work)?;
    Ok(rows)
}

/// The table.
pub fn table(rows: &[Row], runs: usize) -> String {
    let mut s = format!(
        "layer tools (warm page cache, median of {runs})  {:>9} {:>9} {:>7}  {:>11} {:>9}  {:>11} {:>9}\n",
        "strata", "tar", "ratio", "strata MiB/s", "files/s", "tar MiB/s", "files/s"
    );
    let mut tree = "";
    for r in rows {
        if r.tree != tree {
            tree = &r.tree;
            s.push_str(&format!("{tree}\n"));
        }
        let mib = |d: Duration| r.bytes as f64 / (1 << 20) as f64 / d.as_secs_f64();
        let fps = |d: Duration| r.files as f64 / d.as_secs_f64();
        s.push_str(&format!(
            "  {:<43} {:>9} {:>9} {:>6.2}x  {:>11.0} {:>9}  {:>11.0} {:>9}\n",
            r.op,
            fmt_duration(r.strata),
            fmt_duration(r.tar),
            r.strata.as_secs_f64() / r.tar.as_secs_f64(),
            mib(r.strata),
            fmt_count(fps(r.strata) as u64),
            mib(r.tar),
            fmt_count(fps(r.tar) as u64),
        ));
    }
    s
}
