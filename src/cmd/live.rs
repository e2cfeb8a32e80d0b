//! Finding a live strata mount's layers from outside its daemon: the mount is looked
//! up in /proc/self/mountinfo, its daemon among the processes whose command line
//! names that mount point, and the layers are read from that command line (relative
//! paths against the daemon's /proc/PID/cwd). Needs read access to the daemon's
//! /proc entries: the same user, or root.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::config::{apply_opts, Config};

/// A running mount's layers.
#[derive(Debug, Clone)]
pub struct Live {
    pub pid: u32,
    pub mountpoint: PathBuf,
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
}

/// A path escaped for `lowerdir=` / `upperdir=` inside an `-o` option string.
pub fn escape_opt(p: &Path) -> String {
    let mut s = String::new();
    for c in p.to_string_lossy().chars() {
        if matches!(c, '\\' | ':' | ',') {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

/// Mount points of the strata (fuse.strata) mounts, from /proc/self/mountinfo.
pub fn strata_mounts() -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split(' ').next()?;
            if fstype != "fuse.strata" && fstype != "fuse" {
                return None;
            }
            Some(PathBuf::from(unescape_mountinfo(pre.split(' ').nth(4)?)))
        })
        .collect()
}

fn unescape_mountinfo(s: &str) -> OsString {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push(u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap(), 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    OsString::from_vec(out)
}

/// The layers of a strata daemon's command line (`None` if it is not a mount).
fn parse_cmdline(args: &[OsString], cwd: &Path) -> Option<(PathBuf, Config)> {
    let mut cfg = Config::default();
    let mut positional = Vec::new();
    let mut i = 1;
    let abs = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { cwd.join(p) };
    while i < args.len() {
        let a = args[i].to_string_lossy().into_owned();
        let mut value = || {
            i += 1;
            args.get(i).map(|v| v.to_string_lossy().into_owned())
        };
        if a == "-o" {
            let _ = apply_opts(&mut cfg, &value()?);
        } else if let Some(o) = a.strip_prefix("-o") {
            let _ = apply_opts(&mut cfg, o);
        } else if a == "--lower" {
            cfg.lowers.push(PathBuf::from(value()?));
        } else if a == "--upper" {
            cfg.upper = Some(PathBuf::from(value()?));
        } else if a == "--workdir" {
            cfg.workdir = Some(PathBuf::from(value()?));
        } else if a == "--layers-from" {
            cfg.layers_from = Some(abs(Path::new(&value()?)));
        } else if a == "--threads" {
            value();
        } else if let Some(v) = a.strip_prefix("--lower=") {
            cfg.lowers.push(PathBuf::from(v));
        } else if let Some(v) = a.strip_prefix("--upper=") {
            cfg.upper = Some(PathBuf::from(v));
        } else if !a.starts_with('-') {
            positional.push(PathBuf::from(&args[i]));
        }
        i += 1;
    }
    let mp = positional.last()?;
    cfg.lowers = cfg.lowers.iter().map(|l| abs(l)).collect();
    cfg.upper = cfg.upper.as_deref().map(abs);
    cfg.workdir = cfg.workdir.as_deref().map(abs);
    Some((abs(mp), cfg))
}

/// Every process's command line: (pid, arguments), for those this process may read.
pub fn command_lines() -> Vec<(u32, Vec<OsString>)> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<OsString> = cmd
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| OsString::from_vec(a.to_vec()))
            .collect();
        out.push((pid, args));
    }
    out
}

/// The strata daemons serving mounts: (pid, mount point as given, layers).
pub fn daemons() -> Vec<Live> {
    let mut out = Vec::new();
    for (pid, args) in command_lines() {
        let Some(argv0) = args.first() else { continue };
        let base = Path::new(argv0)
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_default();
        let exe = fs::read_link(format!("/proc/{pid}/exe")).ok();
        let exe_base = exe.as_deref().and_then(Path::file_name).map(|n| n.as_bytes().to_vec());
        if base != b"strata" && exe_base.as_deref() != Some(&b"strata"[..]) {
            continue;
        }
        if super::subcommand(&args).is_some() {
            continue;
        }
        let cwd = fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_else(|_| PathBuf::from("/"));
        if let Some((mp, mut cfg)) = parse_cmdline(&args, &cwd) {
            // The stack may have changed since the daemon started (`strata layers`):
            // its control socket says what it is now, else the file it was mounted from.
            let canon = canonical_mountpoint(&mp).unwrap_or_else(|| mp.clone());
            match crate::control::ask(&canon, b"list", std::time::Duration::from_secs(5)) {
                Ok(crate::control::Answer::Ok(body)) => cfg.lowers = crate::control::listed_lowers(&body),
                _ if cfg.layers_from.is_some() => {
                    let _ = crate::config::read_layers_from(&mut cfg);
                    cfg.lowers = cfg
                        .lowers
                        .iter()
                        .map(|l| if l.is_absolute() { l.clone() } else { cwd.join(l) })
                        .collect();
                }
                _ => {}
            }
            out.push(Live {
                pid,
                mountpoint: mp,
                lowers: cfg.lowers,
                upper: cfg.upper,
                workdir: cfg.workdir,
            });
        }
    }
    out
}

/// A mount point made canonical without looking at the mount itself (only at its
/// parent directories): a stopped daemon's mount would hang a stat of its root.
pub fn canonical_mountpoint(mp: &Path) -> Option<PathBuf> {
    let name = mp.file_name()?;
    let parent = mp
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Some(fs::canonicalize(parent).ok()?.join(name))
}

/// The live strata mount at `mp`.
pub fn find(mp: &Path) -> Result<Live, String> {
    let canon = fs::canonicalize(mp).map_err(|e| format!("{}: {e}", mp.display()))?;
    if !strata_mounts().contains(&canon) {
        return Err(format!(
            "{}: not a strata mount (see /proc/self/mountinfo)",
            mp.display()
        ));
    }
    let found: Vec<Live> = daemons()
        .into_iter()
        .filter(|d| d.mountpoint == canon || canonical_mountpoint(&d.mountpoint).as_deref() == Some(&canon))
        .collect();
    match found.as_slice() {
        [] => Err(format!(
            "{}: no strata daemon found for this mount (its /proc entries must be readable: same user or root); use --upper/--lower",
            mp.display()
        )),
        [one] => Ok(one.clone()),
        [first, rest @ ..] => {
            if rest.iter().all(|d| d.lowers == first.lowers && d.upper == first.upper) {
                Ok(first.clone())
            } else {
                Err(format!(
                    "{}: several strata daemons name this mount point with different layers; use --upper/--lower",
                    mp.display()
                ))
            }
        }
    }
}
