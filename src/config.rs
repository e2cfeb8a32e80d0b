//! Mount configuration: the `Config` the daemon runs from, and parsing of the
//! `-o a=b,c` option strings (the form container runtimes pass) into it.

use std::path::PathBuf;
use std::time::Duration;

/// Which whiteout/opaque markers are honoured in lower layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WhiteoutForm {
    /// AUFS (`.wh.NAME`, `.wh..wh..opq`) and overlayfs (char 0/0, `*.overlay.opaque`).
    #[default]
    Both,
    Aufs,
    Overlay,
}

/// Whether the mount takes FUSE over io_uring (`io_uring=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UringMode {
    /// When the kernel offers it (`enable_uring` on), quietly falling back otherwise.
    #[default]
    Auto,
    /// As auto, with a warning when the mount cannot have it.
    On,
    /// Always the classic /dev/fuse transport.
    Off,
}

/// One `container:host:size` triple of a uid/gid mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMap {
    pub container: u32,
    pub host: u32,
    pub size: u32,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Lower layers, top first.
    pub lowers: Vec<PathBuf>,
    /// `layers_from=FILE` / `--layers-from FILE`: the lower layers are read from FILE
    /// (one path a line, top first, as a live mount saves them), in place of lowerdir=.
    pub layers_from: Option<PathBuf>,
    pub upper: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    pub debug: bool,
    /// FUSE worker threads.
    pub threads: usize,
    pub allow_other: bool,
    /// Kernel-side permission checks (`default_permissions`); on unless `nodefault_permissions`.
    pub default_permissions: bool,
    /// Skip fsync/fdatasync (`volatile`, `fsync=0`): copy-ups are then not made
    /// durable before they appear, and fsync from applications is a no-op.
    pub volatile: bool,
    pub uid_map: Vec<IdMap>,
    pub gid_map: Vec<IdMap>,
    pub squash_to_uid: Option<u32>,
    pub squash_to_gid: Option<u32>,
    /// Metadata changes of large lower files copy metadata only (`metacopy=on`), in
    /// the kernel overlayfs' on-disk format.
    pub metacopy: bool,
    /// Pass reads and writes straight to backing files (FUSE passthrough) when possible.
    pub passthrough: bool,
    /// FUSE over io_uring (`io_uring=auto|on|off`).
    pub io_uring: UringMode,
    /// Clear set-id bits and file capabilities on writes here (FUSE_HANDLE_KILLPRIV_V2)
    /// instead of the kernel asking for `security.capability` before every write.
    pub killpriv: bool,
    /// A missing `security.selinux` label answers ENOTSUP, not ENODATA (`unlabeled=`).
    pub unlabeled_enotsup: bool,
    /// Kernel entry/attr cache timeout.
    pub timeout: Duration,
    pub whiteout_form: WhiteoutForm,
    /// Read-only mount (`ro`): with an upper, the upper is shown but never written.
    pub read_only: bool,
    /// VFS mount flags (`MS_*`) asked for with mount(8) options (`nosuid`, `nodev`,
    /// `noexec`, `noatime`, ...), applied to the FUSE mount; `ro` is `read_only`.
    pub vfs_set: u64,
    /// Flags explicitly turned off (`suid`, `dev`, `exec`, `atime`, ...).
    pub vfs_clear: u64,
    /// `remount`: change the flags of the strata mount already at the mount point
    /// (what mount(8) asks through mount.fuse3 for `mount -o remount,...`).
    pub remount: bool,
    /// Source name shown in the mount table (`fsname=`).
    pub fsname: Option<String>,
    /// Owners and modes kept in an xattr of the upper instead of on disk
    /// (`xattr_permissions=1|2`, see override_stat.rs); 0: on disk.
    pub xattr_permissions: u8,
    /// A fresh upper records under fuse-overlayfs's older name
    /// (`override_stat=fuseoverlayfs`), readable by fuse-overlayfs before 1.14.
    pub legacy_override_xattr: bool,
    /// A chown the daemon may not do is ignored (`ignore_chown_errors`).
    pub ignore_chown_errors: bool,
    /// Options that were not understood; warned about and ignored.
    pub unknown: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            lowers: Vec::new(),
            layers_from: None,
            upper: None,
            workdir: None,
            mountpoint: PathBuf::new(),
            foreground: false,
            debug: false,
            threads: 0,
            allow_other: false,
            default_permissions: true,
            volatile: false,
            uid_map: Vec::new(),
            gid_map: Vec::new(),
            squash_to_uid: None,
            squash_to_gid: None,
            metacopy: false,
            passthrough: true,
            io_uring: UringMode::Auto,
            killpriv: true,
            unlabeled_enotsup: true,
            timeout: Duration::from_secs(86400),
            whiteout_form: WhiteoutForm::Both,
            read_only: false,
            vfs_set: 0,
            vfs_clear: 0,
            remount: false,
            fsname: None,
            xattr_permissions: 0,
            legacy_override_xattr: false,
            ignore_chown_errors: false,
            unknown: Vec::new(),
        }
    }
}

/// Splits an option string at commas that are outside double quotes; empty items go.
fn split_items(opts: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = opts.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            '\\' => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ',' if !quoted => items.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    items.push(cur);
    items.into_iter().filter(|i| !i.is_empty()).collect()
}

/// A value with surrounding double quotes removed.
fn unquote(v: &str) -> &str {
    v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v)
}

/// `A:B\:C` -> [A, B:C]: a colon separates paths, `\:` is a colon inside one, `\\` a
/// backslash.
pub fn split_paths(opt: &str, v: &str) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.push(chars.next().unwrap_or('\\')),
            ':' => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    if out.iter().any(|p| p.is_empty()) {
        return Err(format!("invalid value '{v}' for option '{opt}': empty path"));
    }
    Ok(out.into_iter().map(PathBuf::from).collect())
}

fn number<T: std::str::FromStr>(opt: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("invalid value '{v}' for option '{opt}': expected a number"))
}

/// `C:H:N[:C:H:N...]` (container id, host id, count), as fuse-overlayfs takes them.
/// Empty fields are skipped, as fuse-overlayfs does: podman 4.3 passes the maps with a
/// leading colon (`:0:1:1005:1005:0:1:...`).
fn id_maps(opt: &str, v: &str) -> Result<Vec<IdMap>, String> {
    let parts: Vec<&str> = v.split(':').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() || !parts.len().is_multiple_of(3) {
        return Err(format!(
            "invalid value '{v}' for option '{opt}': expected container:host:size triples"
        ));
    }
    let maps: Vec<IdMap> = parts
        .chunks(3)
        .map(|t| {
            Ok(IdMap {
                container: number(opt, t[0])?,
                host: number(opt, t[1])?,
                size: number(opt, t[2])?,
            })
        })
        .collect::<Result<_, String>>()?;
    // Each id must map one way only, in both directions.
    let end = |start: u32, size: u32| start as u64 + size as u64;
    for (i, a) in maps.iter().enumerate() {
        if a.size == 0 {
            return Err(format!("invalid value '{v}' for option '{opt}': a range of size 0"));
        }
        for b in &maps[i + 1..] {
            let over = |x: u32, y: u32| (x as u64) < end(y, b.size) && (y as u64) < end(x, a.size);
            if over(a.container, b.container) || over(a.host, b.host) {
                return Err(format!("invalid value '{v}' for option '{opt}': ranges overlap"));
            }
        }
    }
    Ok(maps)
}

fn need<'a>(key: &str, v: Option<&'a str>) -> Result<&'a str, String> {
    v.ok_or_else(|| format!("option '{key}' needs a value"))
}

/// Ordinary mount(8)/fstab options that mean nothing to the mount itself.
const IGNORED: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "nofail",
    "_netdev",
    "silent",
    "loud",
    "mand",
    "nomand",
    "iversion",
    "noiversion",
];

/// The VFS mount flags mount(8) knows, by option name: (flags set, flags cleared).
fn vfs_flag(name: &str) -> Option<(u64, u64)> {
    use libc::{
        MS_DIRSYNC, MS_LAZYTIME, MS_NOATIME, MS_NODEV, MS_NODIRATIME, MS_NOEXEC, MS_NOSUID, MS_NOSYMFOLLOW,
        MS_RELATIME, MS_STRICTATIME, MS_SYNCHRONOUS,
    };
    let times = MS_NOATIME | MS_RELATIME | MS_STRICTATIME;
    Some(match name {
        "nosuid" => (MS_NOSUID, 0),
        "suid" => (0, MS_NOSUID),
        "nodev" => (MS_NODEV, 0),
        "dev" => (0, MS_NODEV),
        "noexec" => (MS_NOEXEC, 0),
        "exec" => (0, MS_NOEXEC),
        "noatime" => (MS_NOATIME, times & !MS_NOATIME),
        "atime" => (0, MS_NOATIME),
        "relatime" => (MS_RELATIME, times & !MS_RELATIME),
        "norelatime" => (0, MS_RELATIME),
        "strictatime" => (MS_STRICTATIME, times & !MS_STRICTATIME),
        "nostrictatime" => (0, MS_STRICTATIME),
        "nodiratime" => (MS_NODIRATIME, 0),
        "diratime" => (0, MS_NODIRATIME),
        "lazytime" => (MS_LAZYTIME, 0),
        "nolazytime" => (0, MS_LAZYTIME),
        "sync" => (MS_SYNCHRONOUS, 0),
        "async" => (0, MS_SYNCHRONOUS),
        "dirsync" => (MS_DIRSYNC, 0),
        "nosymfollow" => (MS_NOSYMFOLLOW, 0),
        "symfollow" => (0, MS_NOSYMFOLLOW),
        _ => return None,
    })
}

impl Config {
    /// Whether VFS flag `MS_*` `f` was asked for.
    pub fn vfs(&self, f: u64) -> bool {
        self.vfs_set & f != 0
    }
}

/// Applies one `-o` option string (`a=b,c,...`) to `cfg`.
pub fn apply_opts(cfg: &mut Config, opts: &str) -> Result<(), String> {
    for item in split_items(opts) {
        let (key, val) = match item.split_once('=') {
            Some((k, v)) => (k, Some(unquote(v))),
            None => (item.as_str(), None),
        };
        match key {
            "lowerdir" => cfg.lowers = split_paths(key, need(key, val)?)?,
            "upperdir" => cfg.upper = Some(split_paths(key, need(key, val)?)?.remove(0)),
            "layers_from" => cfg.layers_from = Some(PathBuf::from(need(key, val)?)),
            "workdir" => cfg.workdir = Some(split_paths(key, need(key, val)?)?.remove(0)),
            "volatile" => cfg.volatile = true,
            "fsync" => match need(key, val)? {
                "0" => cfg.volatile = true,
                // Durable copy-ups are the default; kept for command lines that ask for it.
                "1" => cfg.volatile = false,
                v => return Err(format!("invalid value '{v}' for option 'fsync': expected 0 or 1")),
            },
            "metacopy" => match need(key, val)? {
                "on" => cfg.metacopy = true,
                "off" => cfg.metacopy = false,
                v => return Err(format!("invalid value '{v}' for option 'metacopy': expected on or off")),
            },
            "uidmapping" => cfg.uid_map = id_maps(key, need(key, val)?)?,
            "gidmapping" => cfg.gid_map = id_maps(key, need(key, val)?)?,
            "squash_to_uid" => cfg.squash_to_uid = Some(number(key, need(key, val)?)?),
            "squash_to_gid" => cfg.squash_to_gid = Some(number(key, need(key, val)?)?),
            "squash_to_root" => {
                cfg.squash_to_uid = Some(0);
                cfg.squash_to_gid = Some(0);
            }
            "allow_other" | "allow_root" => cfg.allow_other = true,
            "default_permissions" => cfg.default_permissions = true,
            "nodefault_permissions" => cfg.default_permissions = false,
            "timeout" => {
                let v = need(key, val)?;
                let secs: f64 = number(key, v)?;
                if !(secs.is_finite() && secs >= 0.0) {
                    return Err(format!(
                        "invalid value '{v}' for option 'timeout': expected seconds >= 0"
                    ));
                }
                cfg.timeout = Duration::from_secs_f64(secs);
            }
            "threads" => cfg.threads = number(key, need(key, val)?)?,
            "passthrough" => cfg.passthrough = number::<u8>(key, need(key, val)?)? != 0,
            "io_uring" => {
                cfg.io_uring = match need(key, val)? {
                    "auto" => UringMode::Auto,
                    "on" | "1" => UringMode::On,
                    "off" | "0" => UringMode::Off,
                    v => return Err(format!("io_uring={v}: expected auto, on or off")),
                }
            }
            "killpriv" => cfg.killpriv = number::<u8>(key, need(key, val)?)? != 0,
            "unlabeled" => {
                cfg.unlabeled_enotsup = match need(key, val)? {
                    "enotsup" => true,
                    "enodata" => false,
                    v => {
                        return Err(format!(
                            "invalid value '{v}' for option 'unlabeled': expected enotsup or enodata"
                        ))
                    }
                }
            }
            "ro" => cfg.read_only = true,
            "rw" => cfg.read_only = false,
            "remount" => cfg.remount = true,
            // What mount(8) repeats from the mount table on a remount: the kernel's
            // own FUSE options.
            "user_id" | "group_id" | "rootmode" | "max_read" | "blksize" => {}
            k if val.is_none() && vfs_flag(k).is_some() => {
                let (set, clear) = vfs_flag(k).unwrap_or_default();
                cfg.vfs_set = (cfg.vfs_set | set) & !clear;
                cfg.vfs_clear = (cfg.vfs_clear | clear) & !set;
            }
            "whiteout" => {
                cfg.whiteout_form = match need(key, val)? {
                    "both" => WhiteoutForm::Both,
                    "aufs" => WhiteoutForm::Aufs,
                    "overlay" => WhiteoutForm::Overlay,
                    v => {
                        return Err(format!(
                            "invalid value '{v}' for option 'whiteout': expected both, aufs or overlay"
                        ))
                    }
                }
            }
            "debug" => {
                cfg.debug = true;
                cfg.foreground = true;
            }
            "fsname" => cfg.fsname = Some(need(key, val)?.to_string()),
            // Stores with `force_mask`: owners and modes kept in an xattr (override_stat.rs).
            "xattr_permissions" => {
                cfg.xattr_permissions = match need(key, val)? {
                    "0" => 0,
                    "1" => 1,
                    "2" => 2,
                    v => {
                        return Err(format!(
                            "invalid value '{v}' for option 'xattr_permissions': expected 0, 1 or 2"
                        ))
                    }
                }
            }
            "override_stat" => {
                cfg.legacy_override_xattr = match need(key, val)? {
                    "containers" => false,
                    "fuseoverlayfs" => true,
                    v => {
                        return Err(format!(
                            "invalid value '{v}' for option 'override_stat': expected containers or fuseoverlayfs"
                        ))
                    }
                }
            }
            "ignore_chown_errors" => cfg.ignore_chown_errors = true,
            // SELinux label and FUSE subtype: accepted, nothing to do.
            "context" | "fscontext" | "defcontext" | "rootcontext" | "subtype" | "comment" => {}
            k if IGNORED.contains(&k) || k.starts_with("x-") => {}
            _ => cfg.unknown.push(item.clone()),
        }
    }
    Ok(())
}

/// Checks a complete configuration.
/// Reads the lower layers from `cfg.layers_from`, when given: one path a line, top
/// first (what a live mount saves at each change of its stack; see control.rs).
pub fn read_layers_from(cfg: &mut Config) -> Result<(), String> {
    let Some(f) = &cfg.layers_from else {
        return Ok(());
    };
    let text = std::fs::read(f).map_err(|e| format!("layers_from {}: {e}", f.display()))?;
    use std::os::unix::ffi::OsStrExt;
    let lowers: Vec<PathBuf> = text
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| PathBuf::from(std::ffi::OsStr::from_bytes(l)))
        .collect();
    if lowers.is_empty() {
        return Err(format!("layers_from {}: names no layer", f.display()));
    }
    cfg.lowers = lowers;
    Ok(())
}

pub fn finish(cfg: &Config) -> Result<(), String> {
    if cfg.remount {
        return match cfg.mountpoint.as_os_str().is_empty() {
            true => Err("no mount point given".into()),
            false => Ok(()),
        };
    }
    if cfg.lowers.is_empty() {
        return Err("no lower layer given (use -o lowerdir=DIR[:DIR...] or --lower DIR)".into());
    }
    if cfg.mountpoint.as_os_str().is_empty() {
        return Err("no mount point given".into());
    }
    if cfg.workdir.is_some() && cfg.upper.is_none() {
        return Err("workdir given without upperdir".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(o: &str) -> Config {
        let mut c = Config::default();
        apply_opts(&mut c, o).unwrap();
        c
    }

    #[test]
    fn podman_forms() {
        let c = parse("lowerdir=/a/l1:/a/l2:/a/l3,upperdir=/a/diff,workdir=/a/work");
        assert_eq!(c.lowers, vec![PathBuf::from("/a/l1"), "/a/l2".into(), "/a/l3".into()]);
        assert_eq!(c.upper, Some("/a/diff".into()));
        assert_eq!(c.workdir, Some("/a/work".into()));
        assert!(!c.volatile);
        assert!(!c.metacopy);
        let c = parse("lowerdir=/a/l1,upperdir=/a/diff,workdir=/a/work,,volatile");
        assert!(c.volatile);
        assert!(c.unknown.is_empty());
        // Fedora's storage.conf mountopt, passed on by containers-storage.
        let c = parse("lowerdir=/a/l1,upperdir=/a/diff,workdir=/a/work,nodev,metacopy=on");
        assert!(c.metacopy && !c.volatile);
        let c = parse("lowerdir=/a/l1,fsync=0");
        assert!(c.volatile);
        let c = parse("lowerdir=/a/l1,fsync=0,fsync=1,metacopy=on,metacopy=off");
        assert!(!c.volatile && !c.metacopy);
        let c = parse("lowerdir=/x/diff:/y");
        assert_eq!(c.lowers.len(), 2);
        assert_eq!(c.upper, None);
    }

    #[test]
    fn quoted_context_keeps_its_commas() {
        let c = parse(r#"lowerdir=/l,context="system_u:object_r:container_file_t:s0:c1,c2",upperdir=/u"#);
        assert_eq!(c.upper, Some("/u".into()));
        assert!(c.unknown.is_empty());
    }

    #[test]
    fn id_mappings() {
        let c = parse("lowerdir=/l,uidmapping=0:1000:1:1:100000:65536,gidmapping=0:1000:1");
        assert_eq!(c.uid_map.len(), 2);
        assert_eq!(
            c.uid_map[1],
            IdMap {
                container: 1,
                host: 100000,
                size: 65536
            }
        );
        assert_eq!(
            c.gid_map,
            vec![IdMap {
                container: 0,
                host: 1000,
                size: 1
            }]
        );
        let mut c = Config::default();
        let e = apply_opts(&mut c, "uidmapping=0:1000").unwrap_err();
        assert!(e.contains("uidmapping") && e.contains("0:1000"), "{e}");
        // Container ids 5..9 would map twice; host 1005 would come from two ids.
        for bad in [
            "uidmapping=0:1000:10:5:2000:10",
            "gidmapping=0:1000:10:20:1005:1",
            "uidmapping=0:0:0",
        ] {
            let e = apply_opts(&mut Config::default(), bad).unwrap_err();
            assert!(e.contains(&bad[11..]), "{bad}: {e}");
        }
        assert!(apply_opts(&mut Config::default(), "uidmapping=0:1000:10:10:2000:10").is_ok());
    }

    #[test]
    fn id_mappings_as_podman_passes_them() {
        let m = |c, h, s| IdMap {
            container: c,
            host: h,
            size: s,
        };
        // podman 4.3, --userns=keep-id for uid 1005 (host ids are the user namespace's).
        let c = parse(
            "lowerdir=/l,uidmapping=:0:1:1005:1005:0:1:1006:1006:64531,gidmapping=:0:1:1005:1005:0:1:1006:1006:64531",
        );
        let want = vec![m(0, 1, 1005), m(1005, 0, 1), m(1006, 1006, 64531)];
        assert_eq!(c.uid_map, want);
        assert_eq!(c.gid_map, want);
        // --uidmap 0:1:5000
        assert_eq!(parse("uidmapping=:0:1:5000").uid_map, vec![m(0, 1, 5000)]);
        // Empty fields anywhere are skipped; triples still have to be whole.
        assert_eq!(parse("uidmapping=0::1:1000:").uid_map, vec![m(0, 1, 1000)]);
        for bad in [
            "uidmapping=:",
            "uidmapping=::",
            "uidmapping=:0:1",
            "uidmapping=:0:1:5000:7",
        ] {
            let e = apply_opts(&mut Config::default(), bad).unwrap_err();
            assert!(e.contains("uidmapping") && e.contains("triples"), "{bad}: {e}");
        }
        // Overlap is still refused with the leading colon.
        assert!(apply_opts(&mut Config::default(), "uidmapping=:0:1:10:5:100:10")
            .unwrap_err()
            .contains("overlap"));
    }

    #[test]
    fn escaped_colons_and_empty_items() {
        let c = parse(r"lowerdir=/a\:b:/c,,,upperdir=/u\:1");
        assert_eq!(c.lowers, vec![PathBuf::from("/a:b"), "/c".into()]);
        assert_eq!(c.upper, Some("/u:1".into()));
        let mut c = Config::default();
        assert!(apply_opts(&mut c, "lowerdir=/a::/b")
            .unwrap_err()
            .contains("empty path"));
    }

    #[test]
    fn xattr_permissions_and_chown_options() {
        assert_eq!(parse("lowerdir=/l,xattr_permissions=0").xattr_permissions, 0);
        let c = parse("lowerdir=/l,xattr_permissions=2,ignore_chown_errors,override_stat=fuseoverlayfs");
        assert!(c.unknown.is_empty());
        assert_eq!(c.xattr_permissions, 2);
        assert!(c.ignore_chown_errors && c.legacy_override_xattr);
        assert_eq!(parse("lowerdir=/l,xattr_permissions=1").xattr_permissions, 1);
        let e = apply_opts(&mut Config::default(), "xattr_permissions=3").unwrap_err();
        assert!(e.contains("invalid value '3'"), "{e}");
        let e = apply_opts(&mut Config::default(), "override_stat=x").unwrap_err();
        assert!(e.contains("override_stat"), "{e}");
    }

    #[test]
    fn unknown_and_ignored_options() {
        let c = parse("lowerdir=/l,nodev,x-systemd.automount,frobnicate,noatime,bogus=1");
        assert_eq!(c.unknown, vec!["frobnicate".to_string(), "bogus=1".into()]);
    }

    #[test]
    fn vfs_flags_later_wins() {
        let c = parse("lowerdir=/l,nosuid,nodev,noexec,noatime,nodiratime,sync,dirsync,ro");
        for f in [
            libc::MS_NOSUID,
            libc::MS_NODEV,
            libc::MS_NOEXEC,
            libc::MS_NOATIME,
            libc::MS_NODIRATIME,
            libc::MS_SYNCHRONOUS,
            libc::MS_DIRSYNC,
        ] {
            assert!(c.vfs(f), "{f:x}");
        }
        assert!(c.read_only && c.unknown.is_empty());
        let c = parse("lowerdir=/l,nosuid,noatime,suid,strictatime,ro,rw,exec");
        assert!(!c.vfs(libc::MS_NOSUID) && c.vfs_clear & libc::MS_NOSUID != 0);
        assert!(!c.vfs(libc::MS_NOATIME) && c.vfs(libc::MS_STRICTATIME));
        assert!(!c.read_only && c.vfs_clear & libc::MS_NOEXEC != 0);
        let c = parse("lowerdir=/l,relatime,lazytime,nosymfollow,defaults,_netdev");
        assert!(c.vfs(libc::MS_RELATIME) && c.vfs(libc::MS_LAZYTIME) && c.vfs(libc::MS_NOSYMFOLLOW));
        assert!(c.unknown.is_empty());
    }

    #[test]
    fn remount_needs_only_a_mount_point() {
        let mut c = parse("ro,nosuid,nodev,remount,user_id=0,group_id=0,default_permissions,allow_other");
        assert!(c.remount && c.read_only && c.vfs(libc::MS_NOSUID) && c.unknown.is_empty());
        assert!(finish(&c).unwrap_err().contains("mount point"));
        c.mountpoint = "/m".into();
        assert!(finish(&c).is_ok());
    }

    #[test]
    fn bad_values_name_the_option() {
        for (o, want) in [
            ("threads=abc", "threads"),
            ("timeout=-1", "timeout"),
            ("fsync=2", "fsync"),
            ("metacopy=yes", "metacopy"),
            ("whiteout=nope", "whiteout"),
            ("squash_to_uid=x", "squash_to_uid"),
            ("upperdir", "upperdir"),
        ] {
            let mut c = Config::default();
            let e = apply_opts(&mut c, o).unwrap_err();
            assert!(e.contains(want), "{o}: {e}");
        }
    }

    #[test]
    fn numbers_and_flags() {
        let c =
            parse("lowerdir=/l,timeout=0.5,threads=3,ro,whiteout=aufs,fsync=1,squash_to_root,allow_root,killpriv=0");
        assert!(!c.killpriv && c.passthrough);
        assert!(parse("lowerdir=/l").killpriv);
        assert!(parse("lowerdir=/l").unlabeled_enotsup);
        assert!(!parse("lowerdir=/l,unlabeled=enodata").unlabeled_enotsup);
        assert_eq!(c.timeout, Duration::from_millis(500));
        assert_eq!(c.threads, 3);
        assert!(c.read_only && !c.volatile && c.allow_other);
        assert_eq!(c.whiteout_form, WhiteoutForm::Aufs);
        assert_eq!((c.squash_to_uid, c.squash_to_gid), (Some(0), Some(0)));
    }

    #[test]
    fn finish_requires_a_lower_and_a_mount_point() {
        let mut c = Config::default();
        assert!(finish(&c).unwrap_err().contains("lower"));
        c.lowers.push("/l".into());
        assert!(finish(&c).unwrap_err().contains("mount point"));
        c.mountpoint = "/m".into();
        assert!(finish(&c).is_ok());
    }
}
