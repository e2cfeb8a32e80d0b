//! `strata layers MOUNTPOINT [add DIR [--at N] | del DIR]`: lists or changes the
//! lower layers of a live mount, through the mount's control socket (see control.rs
//! for where it lives and what is said over it).

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::control::{self, Answer};

use clap::{Parser, Subcommand};

/// List, add or remove the lower layers of a live strata mount.
///
/// The change shows at once to every process using the mount: the kernel is told to
/// ask again for what it cached. Whiteouts and opaque directories in the upper keep
/// hiding names in an added layer. A layer is not removed while a file of it is open
/// or a directory found only in it is a process's working directory (EBUSY, naming
/// the process). After each change the lower layers are saved (the `saved` line of
/// the listing): `strata --layers-from FILE …` (or `-o layers_from=FILE`) mounts them
/// again in that order.
#[derive(Parser)]
#[command(name = "strata layers")]
struct Args {
    /// The mount point of a live strata mount (of this user, or any as root)
    mountpoint: PathBuf,
    #[command(subcommand)]
    change: Option<Op>,
}

#[derive(Subcommand)]
enum Op {
    /// Add directory DIR as a lower layer
    Add {
        dir: PathBuf,
        /// Position among the lower layers: 0 (the default) is the top one, right
        /// under the upper; the number of lowers puts it at the bottom
        #[arg(long, value_name = "N", default_value_t = 0)]
        at: usize,
    },
    /// Remove the lower layer DIR (nothing on disk is touched)
    Del { dir: PathBuf },
}

pub fn main(args: Vec<std::ffi::OsString>) -> i32 {
    let a = Args::parse_from(args);
    match run(&a) {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(e) => {
            eprintln!("strata layers: {e}");
            1
        }
    }
}

fn run(a: &Args) -> Result<String, String> {
    let mp = std::fs::canonicalize(&a.mountpoint).map_err(|e| format!("{}: {e}", a.mountpoint.display()))?;
    let request: Vec<u8> = match &a.change {
        None => b"list".to_vec(),
        Some(Op::Add { dir, at }) => {
            let d = absolute(dir)?;
            [format!("add\t{at}\t").as_bytes(), d.as_os_str().as_bytes()].concat()
        }
        Some(Op::Del { dir }) => [b"del\t".as_slice(), absolute(dir)?.as_os_str().as_bytes()].concat(),
    };
    // A change waits for the requests in flight (30 s at most) before it is made.
    match control::ask(&mp, &request, Duration::from_secs(120))? {
        Answer::Ok(body) => Ok(show(&body)),
        Answer::Refused(errno, msg) => {
            let what = match &a.change {
                None => String::new(),
                Some(Op::Add { dir, .. }) => format!("add {}: ", dir.display()),
                Some(Op::Del { dir }) => format!("del {}: ", dir.display()),
            };
            Err(format!("{what}{msg} ({})", std::io::Error::from_raw_os_error(errno)))
        }
    }
}

/// A path to send: absolute, so that the daemon (in another directory) finds it.
fn absolute(p: &Path) -> Result<PathBuf, String> {
    std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// The listing as a table: position, then path.
fn show(body: &str) -> String {
    let mut out = String::new();
    for line in body.lines() {
        let (k, v) = line.split_once('\t').unwrap_or((line, ""));
        out.push_str(&format!("{k:<7}{v}\n"));
    }
    out
}
