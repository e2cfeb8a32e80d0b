//! strata command line: parses arguments into a `Config` and runs the mount.

use std::path::PathBuf;

use clap::Parser;
use strata::config::{apply_opts, finish, Config};

/// A union filesystem in userspace: read-only lower layers merged with one writable
/// upper directory.
#[derive(Parser)]
#[command(
    name = "strata",
    version,
    disable_version_flag = true,
    after_help = "OPTIONS for -o (comma-separated, as fuse-overlayfs and mount(8) take them):\n  \
lowerdir=L1:L2:...   lower layers, top first (\\: is a colon inside a path)\n  \
upperdir=U           writable layer (none: the mount is read-only)\n  \
workdir=W            staging dir on U's filesystem (default U/.wh..wh.work)\n  \
volatile, fsync=0    copy-ups are not fsynced before they appear (default: they are)\n  \
metacopy=on|off      chmod/chown/touch of a large lower file copies metadata only (default off)\n  \
timeout=SECS         kernel cache time for names and attributes (default 86400)\n  \
uidmapping=C:H:N:..., gidmapping=..., squash_to_uid=N, squash_to_gid=N, squash_to_root\n  \
allow_other, nodefault_permissions, threads=N, passthrough=0|1,\n  \
ro                   read-only; an upper is shown, never written (EROFS)\n  \
nosuid, nodev, noexec, noatime, nodiratime, relatime, strictatime, lazytime, sync,\n  \
dirsync, nosymfollow (and suid, dev, exec, atime, rw...): mount flags, as mount(8)\n  \
remount              change the flags of the strata mount at MOUNTPOINT (as root)\n  \
whiteout=both|aufs|overlay (markers honoured; see README), debug, fsname=NAME\n  \
layers_from=FILE     lower layers from FILE, one a line (see `strata layers`)\n\
Unknown options are reported and ignored.\n\n\
Logs: -d, or RUST_LOG (e.g. RUST_LOG=strata=debug).\n\n\
SUBCOMMANDS (each with --help):\n  \
export      write a mount's changes as an OCI layer tar\n  \
apply       unpack an OCI/Docker layer tar into a layer directory\n  \
mount --image   mount a docker/podman save archive or OCI layout from the layer store\n  \
store       list (ls) and prune (gc) the layer store\n  \
layers      list, add or remove the lower layers of a live mount\n\
A first argument naming a subcommand is a mount source instead when an -o gives\n\
lowerdir= or upperdir= (and `mount` is the subcommand only with --image)."
)]
struct Cli {
    /// Mount options (may be repeated; they accumulate)
    #[arg(short = 'o', value_name = "OPTS")]
    opts: Vec<String>,
    /// Lower layer, top first (repeat for more; appended after any -o lowerdir)
    #[arg(long = "lower", value_name = "DIR")]
    lower: Vec<PathBuf>,
    /// Read the lower layers from FILE, one a line, top first (as a live mount saves
    /// them at each `strata layers` change); replaces lowerdir=
    #[arg(long = "layers-from", value_name = "FILE")]
    layers_from: Option<PathBuf>,
    /// Upper (writable) layer
    #[arg(long, value_name = "DIR")]
    upper: Option<PathBuf>,
    /// Work dir, on the same filesystem as the upper layer
    #[arg(long, value_name = "DIR")]
    workdir: Option<PathBuf>,
    /// Stay in the foreground
    #[arg(short, long)]
    foreground: bool,
    /// Debug logs on stderr (implies --foreground)
    #[arg(short, long)]
    debug: bool,
    /// FUSE worker threads (default: four times the number of CPUs, 8 to 16)
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Print the version
    #[arg(short = 'V', long)]
    version: bool,
    /// [SOURCE] MOUNTPOINT (mount helpers pass the source first; it names the mount)
    #[arg(value_name = "MOUNTPOINT", num_args = 0..=2)]
    positional: Vec<PathBuf>,
}

fn config(cli: Cli) -> Result<Config, String> {
    let mut cfg = Config::default();
    for o in &cli.opts {
        apply_opts(&mut cfg, o)?;
    }
    cfg.lowers.extend(cli.lower);
    if cli.layers_from.is_some() {
        cfg.layers_from = cli.layers_from;
    }
    strata::config::read_layers_from(&mut cfg)?;
    if cli.upper.is_some() {
        cfg.upper = cli.upper;
    }
    if cli.workdir.is_some() {
        cfg.workdir = cli.workdir;
    }
    cfg.foreground |= cli.foreground || cli.debug;
    cfg.debug |= cli.debug;
    if let Some(t) = cli.threads {
        cfg.threads = t;
    }
    match cli.positional.as_slice() {
        [mp] => cfg.mountpoint = mp.clone(),
        [src, mp] => {
            cfg.fsname.get_or_insert_with(|| src.to_string_lossy().into_owned());
            cfg.mountpoint = mp.clone();
        }
        _ => {}
    }
    finish(&cfg)?;
    Ok(cfg)
}

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(name) = strata::cmd::subcommand(&args) {
        // `strata NAME …` -> the subcommand sees "strata NAME" as its program name.
        let mut sub = vec![std::ffi::OsString::from(format!("strata {name}"))];
        sub.extend(args[2..].iter().cloned());
        let code = match name {
            "export" => strata::cmd::export::main(sub),
            "apply" => strata::cmd::apply::main(sub),
            "mount" => strata::cmd::image::main(sub),
            "store" => strata::cmd::store::main(sub),
            "layers" => strata::cmd::layers::main(sub),
            _ => unreachable!(),
        };
        std::process::exit(code);
    }
    let cli = Cli::parse();
    if cli.version {
        println!("strata version {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let mut cfg = match config(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("strata: {e}");
            std::process::exit(1);
        }
    };
    for u in cfg.unknown.iter().filter(|_| !cfg.remount) {
        eprintln!("strata: warning: ignoring unknown option '{u}'");
    }
    if cfg.metacopy && !rustix::process::geteuid().is_root() {
        // Only root may write the trusted.overlay.* markers, and the kernel's overlayfs
        // takes no metacopy with user.overlay.* (userxattr) ones: full copies it is.
        eprintln!("strata: warning: metacopy=on needs root (trusted.* xattrs); copying up data in full");
        cfg.metacopy = false;
    }
    let res = match cfg.remount {
        true => strata::mount::remount(&cfg),
        false => strata::mount::run(cfg),
    };
    if let Err(e) = res {
        eprintln!("strata: {e}");
        std::process::exit(1);
    }
}
