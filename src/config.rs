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
    /// Skip fsync/fdatasync (`volatile`, `fsync=0`).
    pub volatile: bool,
    pub uid_map: Vec<IdMap>,
    pub gid_map: Vec<IdMap>,
    pub squash_to_uid: Option<u32>,
    pub squash_to_gid: Option<u32>,
    /// fsync copied-up files before they become visible (`fsync=1`).
    pub fsync_copy_up: bool,
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
    /// Read-only mount even with an upper (`ro`).
    pub read_only: bool,
    /// Source name shown in the mount table (`fsname=`).
    pub fsname: Option<String>,
    /// Options that were not understood; warned about and ignored.
    pub unknown: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            lowers: Vec::new(),
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
            fsync_copy_up: false,
            passthrough: true,
            io_uring: UringMode::Auto,
            killpriv: true,
            unlabeled_enotsup: true,
            timeout: Duration::from_secs(86400),
            whiteout_form: WhiteoutForm::Both,
            read_only: false,
            fsname: None,
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
fn split_paths(opt: &str, v: &str) -> Result<Vec<PathBuf>, String> {
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
fn id_maps(opt: &str, v: &str) -> Result<Vec<IdMap>, String> {
    let parts: Vec<&str> = v.split(':').collect();
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

/// Ordinary mount(8)/fstab flags that mean nothing to strata itself.
const IGNORED: &[&str] = &[
    "defaults",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "strictatime",
    "nodiratime",
    "diratime",
    "async",
    "sync",
    "dirsync",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "nofail",
    "_netdev",
    "rw",
    "lazytime",
    "nolazytime",
];

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
            "workdir" => cfg.workdir = Some(split_paths(key, need(key, val)?)?.remove(0)),
            "volatile" => cfg.volatile = true,
            "fsync" => match need(key, val)? {
                "0" => cfg.volatile = true,
                "1" => {
                    cfg.volatile = false;
                    cfg.fsync_copy_up = true
                }
                v => return Err(format!("invalid value '{v}' for option 'fsync': expected 0 or 1")),
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
            // SELinux label, xattr permission mode and FUSE subtype: accepted, nothing to do.
            "context" | "fscontext" | "defcontext" | "rootcontext" | "xattr_permissions" | "subtype" | "comment" => {}
            k if IGNORED.contains(&k) || k.starts_with("x-") => {}
            _ => cfg.unknown.push(item.clone()),
        }
    }
    Ok(())
}

/// Checks a complete configuration.
pub fn finish(cfg: &Config) -> Result<(), String> {
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
        let c = parse("lowerdir=/a/l1,upperdir=/a/diff,workdir=/a/work,,volatile");
        assert!(c.volatile);
        assert!(c.unknown.is_empty());
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
    fn unknown_and_ignored_options() {
        let c = parse("lowerdir=/l,nodev,x-systemd.automount,frobnicate,noatime,bogus=1");
        assert_eq!(c.unknown, vec!["frobnicate".to_string(), "bogus=1".into()]);
    }

    #[test]
    fn bad_values_name_the_option() {
        for (o, want) in [
            ("threads=abc", "threads"),
            ("timeout=-1", "timeout"),
            ("fsync=2", "fsync"),
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
        assert!(c.read_only && c.fsync_copy_up && c.allow_other);
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
