//! Results: the table printed at the end, and the CSV.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::mounts::System;
use crate::util::{fmt_duration, Ctx, Res};

/// Two decimals, or three significant digits below 0.1.
fn fmt_ratio(r: f64) -> String {
    if r >= 0.1 || r <= 0.0 {
        format!("{r:.2}")
    } else {
        let digits = (2 - r.log10().floor() as i32).clamp(2, 8) as usize;
        format!("{r:.digits$}")
    }
}

/// One system's outcome on one table row.
#[derive(Clone, Default)]
pub struct Cell {
    pub samples: Vec<Duration>,
    /// The check value of the first run.
    pub check: Option<u64>,
    /// Runs disagreed on the check value.
    pub unstable: bool,
    pub error: Option<String>,
}

impl Cell {
    pub fn record(&mut self, time: Duration, check: Option<u64>) {
        if self.samples.is_empty() {
            self.check = check;
        } else if self.check != check {
            self.unstable = true;
        }
        self.samples.push(time);
    }

    pub fn median(&self) -> Option<Duration> {
        if self.samples.is_empty() {
            return None;
        }
        let mut v = self.samples.clone();
        v.sort();
        let n = v.len();
        Some(if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2
        })
    }

    /// A cell with results is valid even if a later run failed; a cell
    /// without any result shows its error.
    pub fn ok(&self) -> bool {
        !self.samples.is_empty()
    }
}

pub struct Row {
    pub group: &'static str,
    pub name: String,
    pub mode: &'static str,
    /// Indexed like the systems.
    pub cells: Vec<Cell>,
}

pub struct Report<'a> {
    pub systems: &'a [System],
    pub rows: Vec<Row>,
    pub scale: f64,
}

impl Report<'_> {
    fn kernel(&self) -> Option<usize> {
        self.systems.iter().position(|s| s.id == "kernel")
    }

    fn ratio(&self, row: &Row, i: usize) -> Option<f64> {
        let k = self.kernel()?;
        let base = row.cells[k].median()?.as_secs_f64();
        let v = row.cells[i].median()?.as_secs_f64();
        (base > 0.0).then(|| v / base)
    }

    /// A check value that differs from the kernel's (or the first system's).
    fn mismatch(&self, row: &Row, i: usize) -> Option<(u64, u64)> {
        let reference = self
            .kernel()
            .filter(|&k| row.cells[k].ok())
            .or_else(|| row.cells.iter().position(Cell::ok))?;
        let (a, b) = (row.cells[i].check?, row.cells[reference].check?);
        (i != reference && row.cells[i].ok() && a != b).then_some((a, b))
    }

    pub fn table(&self) -> String {
        let mut notes: Vec<String> = Vec::new();
        let mut head = vec!["workload".to_string()];
        head.extend(self.systems.iter().map(|s| s.label.clone()));
        let mut lines: Vec<Option<Vec<String>>> = Vec::new(); // None = blank line
        let mut group = "";
        for row in &self.rows {
            if row.group != group {
                if !group.is_empty() {
                    lines.push(None);
                }
                group = row.group;
            }
            let mut cells = vec![row.name.clone()];
            for (i, c) in row.cells.iter().enumerate() {
                let mut s = match c.median() {
                    Some(m) => {
                        let mut s = fmt_duration(m);
                        if Some(i) != self.kernel() {
                            if let Some(r) = self.ratio(row, i) {
                                s.push_str(&format!("  {}x", fmt_ratio(r)));
                            }
                        }
                        s
                    }
                    None if c.error.is_some() => "FAILED".into(),
                    None => "-".into(),
                };
                if let Some(e) = &c.error {
                    notes.push(format!("{}, {}: {e}", self.systems[i].label, row.name));
                    s.push_str(&format!(" [{}]", notes.len()));
                }
                if let Some((got, want)) = self.mismatch(row, i) {
                    notes.push(format!(
                        "{}, {}: check value {got} differs from {want} (entries, lines or bytes seen): its result is suspect",
                        self.systems[i].label, row.name
                    ));
                    s.push_str(&format!(" ![{}]", notes.len()));
                } else if c.unstable {
                    notes.push(format!(
                        "{}, {}: runs disagreed on the check value",
                        self.systems[i].label, row.name
                    ));
                    s.push_str(&format!(" ?[{}]", notes.len()));
                }
                cells.push(s);
            }
            lines.push(Some(cells));
        }
        let mut width: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
        for l in lines.iter().flatten() {
            for (w, c) in width.iter_mut().zip(l) {
                *w = (*w).max(c.chars().count());
            }
        }
        let fmt_line = |cells: &[String]| {
            let mut s = String::new();
            for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
                let pad = w - c.chars().count();
                if i == 0 {
                    s.push_str(c);
                    s.push_str(&" ".repeat(pad));
                } else {
                    s.push_str(" | ");
                    s.push_str(&" ".repeat(pad));
                    s.push_str(c);
                }
            }
            s.trim_end().to_string()
        };
        let mut out = String::new();
        let _ = writeln!(out, "{}", fmt_line(&head));
        let total: usize = width.iter().sum::<usize>() + 3 * (width.len() - 1);
        let _ = writeln!(out, "{}", "-".repeat(total));
        for l in &lines {
            match l {
                Some(cells) => {
                    let _ = writeln!(out, "{}", fmt_line(cells));
                }
                None => out.push('\n'),
            }
        }
        if self.kernel().is_some() {
            out.push_str("\nmedian wall time per operation; NNx = ratio to the kernel's overlayfs (>1 = slower)\n");
        } else {
            out.push_str("\nmedian wall time per operation (kernel overlayfs not run: no ratios)\n");
        }
        for (i, n) in notes.iter().enumerate() {
            let _ = writeln!(out, "[{}] {n}", i + 1);
        }
        out
    }

    pub fn write_csv(&self, path: &Path) -> Res<()> {
        fn q(s: &str) -> String {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        }
        let mut out = String::from(
            "group,workload,mode,system,system_label,runs,median_s,min_s,max_s,ratio_vs_kernel,check,status,scale\n",
        );
        for row in &self.rows {
            for (i, c) in row.cells.iter().enumerate() {
                let secs = |d: Option<Duration>| d.map(|d| format!("{:.6}", d.as_secs_f64())).unwrap_or_default();
                let status = match (&c.error, c.ok()) {
                    (None, _) => "ok".to_string(),
                    (Some(e), true) => format!("partial: {e}"),
                    (Some(e), false) => format!("failed: {e}"),
                };
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{},{},{},{},{}",
                    q(row.group),
                    q(&row.name),
                    row.mode,
                    self.systems[i].id,
                    q(&self.systems[i].label),
                    c.samples.len(),
                    secs(c.median()),
                    secs(c.samples.iter().min().copied()),
                    secs(c.samples.iter().max().copied()),
                    self.ratio(row, i).map(|r| format!("{r:.3}")).unwrap_or_default(),
                    c.check.map(|v| v.to_string()).unwrap_or_default(),
                    q(&status),
                    self.scale
                );
            }
        }
        if let Some(d) = path.parent() {
            fs::create_dir_all(d).ctx(|| format!("creating {}", d.display()))?;
        }
        fs::write(path, out).ctx(|| format!("writing {}", path.display()))
    }
}
