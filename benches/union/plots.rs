//! The pictures `cargo bench` writes next to its CSV, as plain SVG: copy-up latency
//! against file size and against stack depth (one line per system), and the metadata
//! and write rows as ratios to the kernel's overlayfs.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use crate::mounts::System;
use crate::report::Report;
use crate::util::{Ctx, Res};

const COLORS: [&str; 8] = [
    "#222222", "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
];

/// "copy-up 4 KiB, depth 20" -> (bytes, depth). Rows with a suffix (volatile, ...)
/// are another comparison and are left out.
fn copy_up_point(name: &str) -> Option<(f64, f64)> {
    let rest = name.strip_prefix("copy-up ")?;
    let (size, depth) = rest.split_once(", depth ")?;
    let depth: f64 = depth.parse().ok()?;
    let (n, unit) = size.split_once(' ')?;
    let mult = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((n.parse::<f64>().ok()? * mult, depth))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn fmt_size(b: f64) -> String {
    match b {
        b if b >= 1024.0 * 1024.0 => format!("{} MiB", b / (1024.0 * 1024.0)),
        b if b >= 1024.0 => format!("{} KiB", b / 1024.0),
        b => format!("{b} B"),
    }
}

fn fmt_secs(s: f64) -> String {
    let short = |v: f64| {
        let t = format!("{v:.3}");
        t.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    match s {
        s if s >= 1.0 => format!("{} s", short(s)),
        s if s >= 1e-3 => format!("{} ms", short(s * 1e3)),
        s => format!("{:.0} µs", s * 1e6),
    }
}

/// One line of a panel: its label, color and (x, y) points.
type Series<'a> = (String, &'a str, Vec<(f64, f64)>);

/// A log-log panel: series of (x, y) points, one per system, at (`ox`, `oy`).
struct Panel<'a> {
    ox: f64,
    oy: f64,
    w: f64,
    h: f64,
    title: &'a str,
    xlabel: &'a str,
    xfmt: fn(f64) -> String,
}

impl Panel<'_> {
    fn draw(&self, svg: &mut String, series: &[Series<'_>]) {
        let pts: Vec<(f64, f64)> = series.iter().flat_map(|s| s.2.iter().copied()).collect();
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
            self.ox,
            self.oy - 12.0,
            esc(self.title)
        );
        if pts.is_empty() {
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}">no data</text>"#,
                self.ox + 20.0,
                self.oy + 40.0
            );
            return;
        }
        let lx = |v: f64| v.max(1e-12).log10();
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in &pts {
            x0 = x0.min(lx(x));
            x1 = x1.max(lx(x));
            y0 = y0.min(lx(y));
            y1 = y1.max(lx(y));
        }
        let (y0, y1) = (y0.floor(), y1.ceil().max(y0.floor() + 1.0));
        let (x0, x1) = if x1 - x0 < 1e-9 { (x0 - 0.5, x1 + 0.5) } else { (x0, x1) };
        let px = |x: f64| self.ox + (lx(x) - x0) / (x1 - x0) * self.w;
        let py = |y: f64| self.oy + self.h - (lx(y) - y0) / (y1 - y0) * self.h;
        let _ = writeln!(
            svg,
            r##"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#888"/>"##,
            self.ox, self.oy, self.w, self.h
        );
        // Decades on y, the measured sizes or depths on x.
        for e in y0 as i32..=y1 as i32 {
            let v = 10f64.powi(e);
            let y = py(v);
            let _ = writeln!(
                svg,
                r##"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" font-size="11" text-anchor="end">{}</text>"##,
                self.ox,
                self.ox + self.w,
                self.ox - 4.0,
                y + 4.0,
                fmt_secs(v)
            );
        }
        let mut xs: Vec<f64> = pts.iter().map(|p| p.0).collect();
        xs.sort_by(|a, b| a.total_cmp(b));
        xs.dedup();
        for x in xs {
            let _ = writeln!(
                svg,
                r##"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="#eee"/><text x="{0}" y="{3}" font-size="11" text-anchor="middle">{4}</text>"##,
                px(x),
                self.oy,
                self.oy + self.h,
                self.oy + self.h + 14.0,
                (self.xfmt)(x)
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">{}</text>"#,
            self.ox + self.w / 2.0,
            self.oy + self.h + 32.0,
            esc(self.xlabel)
        );
        for (_, color, s) in series {
            let mut s = s.clone();
            s.sort_by(|a, b| a.0.total_cmp(&b.0));
            let path: Vec<String> = s.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
            let _ = writeln!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
                path.join(" ")
            );
            for &(x, y) in &s {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                    px(x),
                    py(y)
                );
            }
        }
    }
}

fn legend(svg: &mut String, x: f64, y: f64, names: &[(String, &str)]) {
    for (i, (name, color)) in names.iter().enumerate() {
        let yy = y + i as f64 * 18.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="{}" width="14" height="4" fill="{color}"/><text x="{}" y="{}" font-size="12">{}</text>"#,
            yy - 4.0,
            x + 20.0,
            yy + 1.0,
            esc(name)
        );
    }
}

/// Copy-up latency: against file size at the smallest depth, and against depth for
/// the smallest file; one line per system.
fn copy_up_svg(report: &Report, systems: &[System]) -> String {
    let mut by_size: Vec<Series> = Vec::new();
    let mut by_depth: Vec<Series> = Vec::new();
    let points: Vec<(f64, f64, usize)> = report
        .rows
        .iter()
        .enumerate()
        .filter_map(|(i, r)| copy_up_point(&r.name).map(|(s, d)| (s, d, i)))
        .collect();
    let min_depth = points.iter().map(|p| p.1).fold(f64::MAX, f64::min);
    let min_size = points.iter().map(|p| p.0).fold(f64::MAX, f64::min);
    for (k, sys) in systems.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let pick = |keep: &dyn Fn(f64, f64) -> Option<f64>| -> Vec<(f64, f64)> {
            points
                .iter()
                .filter_map(|&(s, d, i)| {
                    let x = keep(s, d)?;
                    let m = report.rows[i].cells.get(k)?.median()?;
                    Some((x, m.as_secs_f64()))
                })
                .collect()
        };
        by_size.push((sys.label.clone(), color, pick(&|s, d| (d == min_depth).then_some(s))));
        by_depth.push((sys.label.clone(), color, pick(&|s, d| (s == min_size).then_some(d))));
    }
    let (w, h) = (1000.0, 470.0);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="20" y="24" font-size="16" font-weight="bold">Copy-up latency: first 1-byte append to a lower file (median, log scales)</text>"#
    );
    let t1 = format!("by file size, stack depth {min_depth}");
    let t2 = format!("by stack depth, {} file", fmt_size(min_size));
    Panel {
        ox: 90.0,
        oy: 70.0,
        w: 330.0,
        h: 320.0,
        title: &t1,
        xlabel: "file size",
        xfmt: fmt_size,
    }
    .draw(&mut svg, &by_size);
    Panel {
        ox: 510.0,
        oy: 70.0,
        w: 300.0,
        h: 320.0,
        title: &t2,
        xlabel: "lower layers",
        xfmt: |d| format!("{d}"),
    }
    .draw(&mut svg, &by_depth);
    let names: Vec<(String, &str)> = systems
        .iter()
        .enumerate()
        .map(|(k, s)| (s.label.clone(), COLORS[k % COLORS.len()]))
        .collect();
    legend(&mut svg, 835.0, 80.0, &names);
    svg.push_str("</svg>\n");
    svg
}

/// Metadata and write rows: one group of bars per row, one bar per system, as the
/// ratio to the kernel's overlayfs (log scale, 1 = the kernel).
fn metadata_svg(report: &Report, systems: &[System]) -> Option<String> {
    let k = systems.iter().position(|s| s.id == "kernel")?;
    let rows: Vec<_> = report
        .rows
        .iter()
        .filter(|r| matches!(r.group, "metadata" | "writes"))
        .filter_map(|r| {
            let base = r.cells.get(k)?.median()?.as_secs_f64();
            let ratios: Vec<Option<f64>> = (0..systems.len())
                .map(|i| {
                    let m = r.cells.get(i)?.median()?.as_secs_f64();
                    (base > 0.0).then(|| m / base)
                })
                .collect();
            Some((r.name.clone(), ratios))
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    let others: Vec<usize> = (0..systems.len()).filter(|&i| i != k).collect();
    let bar = 11.0;
    let group_h = bar * others.len() as f64 + 12.0;
    let (left, top, plot_w) = (300.0, 60.0, 520.0);
    let h = top + group_h * rows.len() as f64 + 60.0;
    let w = left + plot_w + 200.0;
    let max = rows
        .iter()
        .flat_map(|r| r.1.iter().flatten().copied())
        .fold(1.0f64, f64::max)
        .log10()
        .ceil()
        .max(1.0);
    let min = rows
        .iter()
        .flat_map(|r| r.1.iter().flatten().copied())
        .fold(1.0f64, f64::min)
        .log10()
        .floor()
        .min(0.0);
    let px = |r: f64| left + (r.max(1e-9).log10() - min) / (max - min) * plot_w;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="20" y="24" font-size="16" font-weight="bold">Metadata and write rows: time relative to the kernel's overlayfs (median, log scale; left of the line = faster)</text>"#
    );
    let bottom = top + group_h * rows.len() as f64;
    for e in min as i32..=max as i32 {
        let v = 10f64.powi(e);
        let _ = writeln!(
            svg,
            r##"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="{3}"/><text x="{0}" y="{4}" font-size="11" text-anchor="middle">{5}x</text>"##,
            px(v),
            top - 6.0,
            bottom,
            if e == 0 { "#000" } else { "#ddd" },
            bottom + 16.0,
            v
        );
    }
    for (g, (name, ratios)) in rows.iter().enumerate() {
        let y = top + g as f64 * group_h;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" font-size="12" text-anchor="end">{}</text>"#,
            left - 8.0,
            y + group_h / 2.0,
            esc(name)
        );
        for (j, &i) in others.iter().enumerate() {
            let Some(r) = ratios[i] else { continue };
            let (x0, x1) = (px(1.0).min(px(r)), px(1.0).max(px(r)));
            let _ = writeln!(
                svg,
                r#"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{}" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="9">{r:.2}x</text>"#,
                y + j as f64 * bar,
                (x1 - x0).max(1.0),
                bar - 2.0,
                COLORS[i % COLORS.len()],
                x1 + 3.0,
                y + j as f64 * bar + bar - 3.0
            );
        }
    }
    let names: Vec<(String, &str)> = others
        .iter()
        .map(|&i| (systems[i].label.clone(), COLORS[i % COLORS.len()]))
        .collect();
    legend(&mut svg, left + plot_w + 30.0, top + 10.0, &names);
    svg.push_str("</svg>\n");
    Some(svg)
}

/// Writes the pictures next to the CSV (`NAME-copy-up.svg`, `NAME-metadata.svg`);
/// returns their paths.
pub fn write(report: &Report, systems: &[System], csv: &Path) -> Res<Vec<PathBuf>> {
    let stem = csv.with_extension("");
    let mut out = Vec::new();
    let p = PathBuf::from(format!("{}-copy-up.svg", stem.display()));
    fs::write(&p, copy_up_svg(report, systems)).ctx(|| format!("writing {}", p.display()))?;
    out.push(p);
    if let Some(svg) = metadata_svg(report, systems) {
        let p = PathBuf::from(format!("{}-metadata.svg", stem.display()));
        fs::write(&p, svg).ctx(|| format!("writing {}", p.display()))?;
        out.push(p);
    }
    Ok(out)
}
