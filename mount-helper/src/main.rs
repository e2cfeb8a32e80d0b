//! mount.strata: the helper mount(8) runs for `mount -t strata` and for fstab lines of
//! type `strata`.
//!
//! mount(8) calls it as `mount.strata SPEC DIR [-sfnv] [-N NS] [-o OPTS] [-t TYPE]`.
//! It drops the options that only mean something to mount(8) itself and runs
//! `strata SPEC DIR -o OPTS`, which returns once the mount is live.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Exit status for bad usage (mount(8): "incorrect invocation or permissions").
const EXIT_USAGE: i32 = 1;
/// Exit status when strata cannot be run (mount(8): "mount failure").
const EXIT_MOUNT_FAILURE: i32 = 32;

const USAGE: &str = "\
usage: mount.strata SPEC DIR [-sfnv] [-o OPTIONS]

Mounts a strata union filesystem; normally run by mount(8) for `mount -t strata`
and for fstab lines such as
  strata /mnt strata lowerdir=/l1:/l2,upperdir=/u,workdir=/w 0 0

  -o OPTIONS  strata mount options (lowerdir=, upperdir=, workdir=, ...)
  -f          fake: check the arguments, mount nothing
  -v          verbose: print the strata command line
  -n, -s      accepted and ignored (strata keeps no mtab; options are lenient)

The strata program is $STRATA_BIN if set, else the one next to this helper
(or in ../bin beside it), else the first in PATH, else /usr/local/bin/strata
or /usr/bin/strata.";

/// What one call of the helper asks for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Invocation {
    spec: OsString,
    dir: OsString,
    /// The options to hand to strata, already filtered.
    options: Vec<Vec<u8>>,
    fake: bool,
    verbose: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Mount(Invocation),
    Help,
}

/// Parses the arguments after argv[0].
fn parse_args(args: &[OsString]) -> Result<Parsed, String> {
    let mut positional: Vec<OsString> = Vec::new();
    let mut raw_opts: Vec<Vec<u8>> = Vec::new();
    let mut inv = Invocation::default();
    let mut i = 0;
    let mut only_positional = false;
    while i < args.len() {
        let arg = args[i].as_bytes();
        i += 1;
        if only_positional || arg.len() < 2 || arg[0] != b'-' {
            positional.push(OsString::from_vec(arg.to_vec()));
            continue;
        }
        match arg {
            b"--" => {
                only_positional = true;
                continue;
            }
            b"-h" | b"--help" => return Ok(Parsed::Help),
            _ if arg.starts_with(b"--") => return Err(format!("unknown option {}", String::from_utf8_lossy(arg))),
            _ => {}
        }
        // A cluster of one-letter flags; -o, -N and -t take a value, either the rest
        // of the cluster or the next argument.
        let mut j = 1;
        while j < arg.len() {
            let c = arg[j];
            j += 1;
            match c {
                b'f' => inv.fake = true,
                b'v' => inv.verbose = true,
                // -r/-w (if mount(8) ever passes them rather than folding them into
                // -o) become ro/rw; -n (no mtab), -s (sloppy), -i (no helpers) need nothing.
                b'r' => raw_opts.push(b"ro".to_vec()),
                b'w' => raw_opts.push(b"rw".to_vec()),
                b'n' | b's' | b'i' => {}
                b'o' | b'N' | b't' => {
                    let value = if j < arg.len() {
                        arg[j..].to_vec()
                    } else if i < args.len() {
                        i += 1;
                        args[i - 1].as_bytes().to_vec()
                    } else {
                        return Err(format!("option -{} needs a value", c as char));
                    };
                    j = arg.len();
                    match c {
                        b'o' => raw_opts.push(value),
                        b'N' => return Err("-N (mount in another namespace) is not supported".into()),
                        _ => {} // -t strata[.subtype]: nothing to do with it
                    }
                }
                _ => return Err(format!("unknown option -{}", c as char)),
            }
        }
    }
    match positional.len() {
        0 | 1 => return Err("need a source (SPEC) and a mount point (DIR)".into()),
        2 => {}
        _ => return Err(format!("unexpected argument {}", positional[2].to_string_lossy())),
    }
    inv.dir = positional.pop().unwrap();
    inv.spec = positional.pop().unwrap();
    if inv.spec.is_empty() || inv.dir.is_empty() {
        return Err("empty source or mount point".into());
    }
    inv.options = raw_opts
        .iter()
        .flat_map(|o| split_options(o))
        .filter(|o| keep_option(o))
        .collect();
    Ok(Parsed::Mount(inv))
}

/// Splits a comma-separated option string. Commas inside double quotes
/// (`context="a,b"`) or escaped with a backslash (`\,`) do not split; quotes and
/// backslashes are kept as they are, for strata to read.
fn split_options(s: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut quoted = false;
    let mut escaped = false;
    for &b in s {
        if escaped {
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        } else if b == b',' && !quoted {
            out.push(std::mem::take(&mut cur));
            continue;
        }
        cur.push(b);
    }
    out.push(cur);
    out
}

/// Whether an option goes on to strata: empty items and the options that only
/// mean something to mount(8) (or fstab tooling) are dropped. Ordinary mount flags
/// (rw, nodev, noatime, ...) go on; strata ignores those it has no use for.
fn keep_option(o: &[u8]) -> bool {
    const DROPPED: &[&[u8]] = &[
        b"",
        b"defaults",
        b"auto",
        b"noauto",
        b"user",
        b"nouser",
        b"users",
        b"owner",
        b"noowner",
        b"group",
        b"nogroup",
        b"nofail",
        b"_netdev",
    ];
    const DROPPED_PREFIXES: &[&[u8]] = &[b"x-", b"comment=", b"user="];
    !DROPPED.contains(&o) && !DROPPED_PREFIXES.iter().any(|p| o.starts_with(p))
}

/// Where to find the strata program: `STRATA_BIN` if set, else next to this helper or
/// in `../bin` beside it, else the first in `PATH`, else the usual install places.
fn find_strata(
    env_bin: Option<&OsStr>,
    exe: Option<&Path>,
    path_var: Option<&OsStr>,
    is_file: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    if let Some(b) = env_bin.filter(|b| !b.is_empty()) {
        return Some(PathBuf::from(b));
    }
    let mut candidates = Vec::new();
    if let Some(dir) = exe.and_then(Path::parent) {
        candidates.push(dir.join("strata"));
        if let Some(up) = dir.parent() {
            candidates.push(up.join("bin").join("strata"));
        }
    }
    if let Some(p) = path_var {
        candidates.extend(
            std::env::split_paths(p)
                .filter(|d| !d.as_os_str().is_empty())
                .map(|d| d.join("strata")),
        );
    }
    candidates.push(PathBuf::from("/usr/local/bin/strata"));
    candidates.push(PathBuf::from("/usr/bin/strata"));
    candidates.into_iter().find(|c| is_file(c))
}

/// The arguments strata gets: `SPEC DIR [-o OPTS]`.
fn strata_args(inv: &Invocation) -> Vec<OsString> {
    let mut args = vec![inv.spec.clone(), inv.dir.clone()];
    if !inv.options.is_empty() {
        args.push("-o".into());
        args.push(OsString::from_vec(inv.options.join(&b","[..])));
    }
    args
}

/// Quotes one word for display the way a shell would read it back.
fn shell_quote(w: &OsStr) -> String {
    let s = w.to_string_lossy();
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-=:,+@%".contains(&b));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn is_executable_file(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let inv = match parse_args(&args) {
        Ok(Parsed::Mount(inv)) => inv,
        Ok(Parsed::Help) => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("mount.strata: {e}\n{USAGE}");
            std::process::exit(EXIT_USAGE);
        }
    };
    let exe = std::env::current_exe().ok();
    let Some(strata) = find_strata(
        std::env::var_os("STRATA_BIN").as_deref(),
        exe.as_deref(),
        std::env::var_os("PATH").as_deref(),
        is_executable_file,
    ) else {
        eprintln!(
            "mount.strata: cannot find the strata program (set STRATA_BIN, or install it \
             next to mount.strata or in PATH)"
        );
        std::process::exit(EXIT_MOUNT_FAILURE);
    };
    let args = strata_args(&inv);
    if inv.verbose {
        let words: Vec<String> = std::iter::once(strata.as_os_str())
            .chain(args.iter().map(|a| a.as_os_str()))
            .map(shell_quote)
            .collect();
        println!(
            "mount.strata: {}{}",
            if inv.fake { "would run: " } else { "running: " },
            words.join(" ")
        );
    }
    if inv.fake {
        return;
    }
    let err = Command::new(&strata).args(&args).exec();
    eprintln!("mount.strata: cannot run {}: {err}", strata.display());
    std::process::exit(EXIT_MOUNT_FAILURE);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    fn mount(a: &[&str]) -> Invocation {
        match parse_args(&args(a)) {
            Ok(Parsed::Mount(inv)) => inv,
            other => panic!("{a:?}: {other:?}"),
        }
    }

    fn opts(inv: &Invocation) -> Vec<String> {
        inv.options
            .iter()
            .map(|o| String::from_utf8(o.clone()).unwrap())
            .collect()
    }

    fn shown(a: &[OsString]) -> Vec<String> {
        a.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn fstab_line_as_mount_passes_it() {
        // What mount(8) passes for `strata /mnt strata lowerdir=/l1:/l2,upperdir=/u,workdir=/w 0 0`.
        let inv = mount(&["strata", "/mnt", "-o", "rw,lowerdir=/l1:/l2,upperdir=/u,workdir=/w"]);
        assert_eq!(inv.spec, "strata");
        assert_eq!(inv.dir, "/mnt");
        assert!(!inv.fake && !inv.verbose);
        assert_eq!(
            shown(&strata_args(&inv)),
            ["strata", "/mnt", "-o", "rw,lowerdir=/l1:/l2,upperdir=/u,workdir=/w"]
        );
    }

    #[test]
    fn mount_only_options_are_dropped() {
        let inv = mount(&[
            "s",
            "/m",
            "-o",
            "defaults,auto,noauto,user,users,nouser,user=bob,owner,group,nofail,_netdev,\
             x-systemd.automount,x-gvfs-show,comment=systemd.foo,lowerdir=/l,,nodev,noatime",
        ]);
        assert_eq!(opts(&inv), ["lowerdir=/l", "nodev", "noatime"]);
    }

    #[test]
    fn strata_options_pass_through() {
        let o = "lowerdir=/a\\:b:/c,upperdir=/u,workdir=/w,volatile,uidmapping=0:1000:1:1:100000:65536,\
                 gidmapping=0:1000:1,squash_to_uid=0,squash_to_gid=0,xattr_permissions=2,ro";
        let inv = mount(&["strata", "/m", "-o", o]);
        assert_eq!(inv.options.join(&b","[..]), o.as_bytes());
    }

    #[test]
    fn quoted_and_escaped_commas_do_not_split() {
        let inv = mount(&[
            "s",
            "/m",
            "-o",
            "context=\"system_u:object_r:container_file_t:s0:c1,c2\",lowerdir=/a\\,b,defaults",
        ]);
        assert_eq!(
            opts(&inv),
            [
                "context=\"system_u:object_r:container_file_t:s0:c1,c2\"",
                "lowerdir=/a\\,b"
            ]
        );
    }

    #[test]
    fn flags_clustered_and_separate() {
        let inv = mount(&["s", "/m", "-sfnv", "-o", "lowerdir=/l"]);
        assert!(inv.fake && inv.verbose);
        let inv = mount(&["-f", "s", "-v", "/m", "-olowerdir=/l", "-t", "strata"]);
        assert!(inv.fake && inv.verbose);
        assert_eq!(opts(&inv), ["lowerdir=/l"]);
        let inv = mount(&["s", "/m", "-n", "-ttype.sub"]);
        assert!(!inv.fake && !inv.verbose);
        assert!(inv.options.is_empty());
        let inv = mount(&["s", "/m", "-r", "-o", "lowerdir=/l"]);
        assert_eq!(opts(&inv), ["ro", "lowerdir=/l"]);
    }

    #[test]
    fn several_o_options_are_joined() {
        let inv = mount(&[
            "s",
            "/m",
            "-o",
            "lowerdir=/l",
            "-o",
            "upperdir=/u,nofail",
            "-o",
            "workdir=/w",
        ]);
        assert_eq!(opts(&inv), ["lowerdir=/l", "upperdir=/u", "workdir=/w"]);
    }

    #[test]
    fn no_options_means_no_dash_o() {
        let inv = mount(&["s", "/m", "-o", "defaults,nofail"]);
        assert_eq!(shown(&strata_args(&inv)), ["s", "/m"]);
    }

    #[test]
    fn double_dash_ends_flags() {
        let inv = mount(&["--", "-weird", "/m"]);
        assert_eq!(inv.spec, "-weird");
        // a lone "-" is a word, not a flag
        let inv = mount(&["-", "/m"]);
        assert_eq!(inv.spec, "-");
    }

    #[test]
    fn bad_usage_is_an_error() {
        for bad in [
            &[][..],
            &["only-one"],
            &["a", "b", "c"],
            &["a", "b", "-o"],
            &["a", "b", "-x"],
            &["a", "b", "--bogus"],
            &["a", "b", "-N", "/proc/1/ns/mnt"],
            &["", "/m"],
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad:?} should fail");
        }
        assert_eq!(parse_args(&args(&["-h"])), Ok(Parsed::Help));
        assert_eq!(parse_args(&args(&["a", "--help"])), Ok(Parsed::Help));
    }

    #[test]
    fn non_utf8_paths_survive() {
        let dir = OsString::from_vec(b"/mnt/\xff".to_vec());
        let opt = OsString::from_vec(b"lowerdir=/l\xfe".to_vec());
        let inv = match parse_args(&[OsString::from("s"), dir.clone(), "-o".into(), opt.clone()]) {
            Ok(Parsed::Mount(inv)) => inv,
            other => panic!("{other:?}"),
        };
        assert_eq!(inv.dir, dir);
        assert_eq!(strata_args(&inv)[3], opt);
    }

    #[test]
    fn finding_strata() {
        let exists = |set: &'static [&'static str]| move |p: &Path| set.iter().any(|s| Path::new(s) == p);
        let exe = Some(Path::new("/usr/sbin/mount.strata"));
        let path = Some(OsStr::new("/opt/x/bin::/usr/local/bin"));
        // STRATA_BIN wins, even unchecked
        assert_eq!(
            find_strata(Some(OsStr::new("/my/strata")), exe, path, exists(&[])),
            Some(PathBuf::from("/my/strata"))
        );
        // an empty STRATA_BIN is as if unset
        assert_eq!(
            find_strata(Some(OsStr::new("")), exe, path, exists(&["/usr/sbin/strata"])),
            Some(PathBuf::from("/usr/sbin/strata"))
        );
        // next to itself, then ../bin
        assert_eq!(
            find_strata(None, exe, path, exists(&["/usr/bin/strata", "/opt/x/bin/strata"])),
            Some(PathBuf::from("/usr/bin/strata"))
        );
        // then PATH, in order
        assert_eq!(
            find_strata(None, exe, path, exists(&["/usr/local/bin/strata", "/opt/x/bin/strata"])),
            Some(PathBuf::from("/opt/x/bin/strata"))
        );
        // then the usual places, even with PATH unset
        assert_eq!(
            find_strata(None, None, None, exists(&["/usr/local/bin/strata"])),
            Some(PathBuf::from("/usr/local/bin/strata"))
        );
        assert_eq!(find_strata(None, exe, path, exists(&[])), None);
    }

    #[test]
    fn quoting_for_display() {
        assert_eq!(
            shell_quote(OsStr::new("lowerdir=/a:/b,upperdir=/u")),
            "lowerdir=/a:/b,upperdir=/u"
        );
        assert_eq!(shell_quote(OsStr::new("a b")), "'a b'");
        assert_eq!(shell_quote(OsStr::new("it's")), r"'it'\''s'");
        assert_eq!(shell_quote(OsStr::new("")), "''");
    }
}
