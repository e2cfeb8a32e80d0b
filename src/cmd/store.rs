//! The content-addressed layer store of `strata mount --image`:
//!
//! - `STORE/sha256/HEX/`: one unpacked layer, HEX being its diff_id (the sha256 of
//!   the uncompressed layer tar, from the image config), verified while unpacking.
//!   A layer is unpacked once and never changed; later mounts reuse it.
//! - `STORE/images/HEX.json`: an image mounted from the store (HEX is its config's
//!   digest): its name, its layers bottom first, and whether it is pinned.
//! - `STORE/lock`: `gc` holds it exclusively; `mount --image` shares it from the
//!   first layer it looks at until its mount is live.
//!
//! `strata store gc` removes every layer that neither a live strata mount (found
//! through /proc, see `live`) nor a pinned image uses, and the records of unpinned
//! images left with missing layers. A layer leaves its name first (renamed to a
//! dot name, synced) and is removed after, so that a crash or power cut in the
//! middle never leaves a partial tree under a digest a later mount would trust;
//! gc also removes such dot names, left over by a crash in gc or in an unpacking.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use sha2::{Digest, Sha256};

/// List and prune the layer store of `strata mount --image`.
#[derive(Parser, Debug)]
#[command(
    name = "strata store",
    after_help = "Examples:\n  strata store ls\n  strata store gc --dry-run\n\n\
gc removes the layers that no live strata mount and no pinned image (mount --image --pin)\n\
uses. The store is /var/lib/strata/layers for root, ~/.local/share/strata/layers\n\
(or $XDG_DATA_HOME/strata/layers) for other users, unless --store says otherwise."
)]
pub struct Args {
    /// The store directory
    #[arg(long, value_name = "DIR", global = true)]
    pub store: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// List the layers (digest, size, images using them, whether mounted)
    Ls,
    /// Remove the layers no live mount and no pinned image uses
    Gc {
        /// Only say what would go
        #[arg(long)]
        dry_run: bool,
    },
}

pub fn main(args: Vec<OsString>) -> i32 {
    let a = Args::parse_from(args);
    let store = Store::new(a.store.clone());
    let r = match a.cmd {
        Cmd::Ls => ls(&store),
        Cmd::Gc { dry_run } => gc(&store, dry_run),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("strata store: {e}");
            1
        }
    }
}

/// The default store: /var/lib/strata/layers for root, else under the user's data dir.
pub fn default_dir() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/strata/layers");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("strata/layers");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| OsString::from("/"));
    PathBuf::from(home).join(".local/share/strata/layers")
}

pub struct Store {
    pub root: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ImageRecord {
    pub name: String,
    pub config: String,
    /// diff_ids, bottom first.
    pub layers: Vec<String>,
    pub pinned: bool,
}

impl ImageRecord {
    pub fn to_json(&self) -> String {
        let v = serde_json::json!({
            "name": self.name,
            "config": self.config,
            "layers": self.layers,
            "pinned": self.pinned,
        });
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }

    pub fn from_json(s: &str) -> Option<ImageRecord> {
        let v: serde_json::Value = serde_json::from_str(s).ok()?;
        Some(ImageRecord {
            name: v["name"].as_str()?.to_owned(),
            config: v["config"].as_str().unwrap_or_default().to_owned(),
            layers: v["layers"]
                .as_array()?
                .iter()
                .filter_map(|l| l.as_str().map(str::to_owned))
                .collect(),
            pinned: v["pinned"].as_bool().unwrap_or(false),
        })
    }
}

/// `sha256:HEX` -> HEX, checked.
pub fn hex_of(digest: &str) -> Result<&str, String> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("digest '{digest}': only sha256 is supported"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        return Err(format!("digest '{digest}': not 64 lower-case hex digits"));
    }
    Ok(hex)
}

/// Lower-case hex of bytes.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A reader that hashes what goes through it.
pub struct Hashing<R> {
    pub inner: R,
    pub hash: std::rc::Rc<std::cell::RefCell<Sha256>>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.borrow_mut().update(&buf[..n]);
        Ok(n)
    }
}

pub fn lock(root: &Path, exclusive: bool) -> Result<OwnedFd, String> {
    fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let p = root.join("lock");
    let fd = rustix::fs::open(
        &p,
        rustix::fs::OFlags::CREATE | rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .map_err(|e| format!("{}: {e}", p.display()))?;
    let op = if exclusive {
        rustix::fs::FlockOperation::LockExclusive
    } else {
        rustix::fs::FlockOperation::LockShared
    };
    rustix::fs::flock(&fd, op).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(fd)
}

impl Store {
    pub fn new(dir: Option<PathBuf>) -> Store {
        let root = dir.unwrap_or_else(default_dir);
        // Absolute: the layer paths go into a mount's options.
        let root = match std::env::current_dir() {
            Ok(cwd) if root.is_relative() => cwd.join(root),
            _ => root,
        };
        Store { root }
    }

    pub fn layer_dir(&self, digest: &str) -> Result<PathBuf, String> {
        Ok(self.root.join("sha256").join(hex_of(digest)?))
    }

    /// The layer `digest` (a diff_id), unpacked from `input` unless the store has it.
    /// The uncompressed stream must hash to `digest`, else nothing is kept.
    /// Returns the layer dir and whether it was unpacked now.
    pub fn ensure_layer(&self, digest: &str, input: impl Read) -> Result<(PathBuf, bool), String> {
        let dir = self.layer_dir(digest)?;
        if dir.is_dir() {
            return Ok((dir, false));
        }
        let parent = self.root.join("sha256");
        fs::create_dir_all(&parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        let hash = std::rc::Rc::new(std::cell::RefCell::new(Sha256::new()));
        let decompressed = super::apply::decompress(input).map_err(|e| format!("layer {digest}: {e}"))?;
        let reader = Hashing {
            inner: decompressed,
            hash: hash.clone(),
        };
        let verify = || {
            let got = format!("sha256:{}", hex(&hash.borrow().clone().finalize()));
            if got != digest {
                return Err(format!("layer {digest}: its content hashes to {got}: refused"));
            }
            Ok(())
        };
        match super::apply::apply_verified(reader, &dir, true, verify) {
            Ok(_) => Ok((dir, true)),
            // Another mount unpacked it meanwhile.
            Err(_) if dir.is_dir() => Ok((dir, false)),
            Err(e) => Err(e),
        }
    }

    pub fn save_image(&self, rec: &ImageRecord) -> Result<(), String> {
        let d = self.root.join("images");
        fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        let hex = hex_of(&rec.config)?;
        let p = d.join(format!("{hex}.json"));
        crate::durable::write_file(&p, rec.to_json().as_bytes()).map_err(|e| format!("{}: {e}", p.display()))
    }

    pub fn images(&self) -> Vec<(PathBuf, ImageRecord)> {
        let mut out = Vec::new();
        if let Ok(rd) = fs::read_dir(self.root.join("images")) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "json") && !e.file_name().to_string_lossy().starts_with('.') {
                    if let Some(r) = fs::read_to_string(&p).ok().and_then(|s| ImageRecord::from_json(&s)) {
                        out.push((p, r));
                    }
                }
            }
        }
        out.sort_by(|a, b| a.1.name.cmp(&b.1.name));
        out
    }

    /// The layers in the store: digest -> dir.
    pub fn layers(&self) -> BTreeMap<String, PathBuf> {
        let mut out = BTreeMap::new();
        if let Ok(rd) = fs::read_dir(self.root.join("sha256")) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if !n.starts_with('.') && e.path().is_dir() {
                    out.insert(format!("sha256:{n}"), e.path());
                }
            }
        }
        out
    }

    /// Layer dirs used by live strata mounts.
    fn mounted(&self) -> BTreeSet<PathBuf> {
        let mut out = BTreeSet::new();
        let live = super::live::strata_mounts();
        for d in super::live::daemons() {
            // A daemon whose mount is gone is on its way out.
            if !live.contains(&d.mountpoint)
                && !super::live::canonical_mountpoint(&d.mountpoint).is_some_and(|c| live.contains(&c))
            {
                continue;
            }
            for l in d.lowers.iter().chain(d.upper.iter()) {
                out.insert(fs::canonicalize(l).unwrap_or_else(|_| l.clone()));
            }
        }
        out
    }
}

fn du(p: &Path) -> u64 {
    walkdir::WalkDir::new(p)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

fn ls(s: &Store) -> Result<(), String> {
    let images = s.images();
    let mounted = s.mounted();
    println!("{:<71} {:>10}  {:<7}  IMAGES", "LAYER", "SIZE", "MOUNTED");
    for (digest, dir) in s.layers() {
        let users: Vec<String> = images
            .iter()
            .filter(|(_, r)| r.layers.contains(&digest))
            .map(|(_, r)| format!("{}{}", r.name, if r.pinned { " (pinned)" } else { "" }))
            .collect();
        let canon = fs::canonicalize(&dir).unwrap_or(dir.clone());
        println!(
            "{:<71} {:>10}  {:<7}  {}",
            digest,
            du(&dir),
            if mounted.contains(&canon) { "yes" } else { "no" },
            users.join(", ")
        );
    }
    Ok(())
}

fn gc(s: &Store, dry_run: bool) -> Result<(), String> {
    if !s.root.is_dir() {
        return Ok(());
    }
    let _lock = lock(&s.root, true)?;
    let mounted = s.mounted();
    let images = s.images();
    let pinned: BTreeSet<&String> = images
        .iter()
        .filter(|(_, r)| r.pinned)
        .flat_map(|(_, r)| &r.layers)
        .collect();
    let mut removed = BTreeSet::new();
    for (digest, dir) in s.layers() {
        let canon = fs::canonicalize(&dir).unwrap_or(dir.clone());
        if mounted.contains(&canon) || pinned.contains(&digest) {
            continue;
        }
        println!("{}{digest}", if dry_run { "would remove " } else { "removed " });
        if !dry_run {
            let mut gone = OsString::from(".gc-");
            gone.push(dir.file_name().unwrap_or_default());
            let gone = dir.with_file_name(gone);
            crate::durable::rename_synced(&dir, &gone).map_err(|e| format!("{}: {e}", dir.display()))?;
            super::apply::remove_tree(&gone).map_err(|e| format!("{}: {e}", gone.display()))?;
        }
        removed.insert(digest);
    }
    // Under the exclusive lock no unpacking runs: every dot name in sha256/ is what
    // a crash left behind (a layer half removed, or half unpacked).
    if let Ok(rd) = fs::read_dir(s.root.join("sha256")) {
        for e in rd.flatten() {
            if e.file_name().as_encoded_bytes().starts_with(b".") {
                println!(
                    "{}{}",
                    if dry_run {
                        "would remove leftover "
                    } else {
                        "removed leftover "
                    },
                    e.path().display()
                );
                if !dry_run {
                    super::apply::remove_tree(&e.path()).map_err(|err| format!("{}: {err}", e.path().display()))?;
                }
            }
        }
    }
    for (p, r) in images {
        if !r.pinned && r.layers.iter().any(|l| removed.contains(l)) && !dry_run {
            let _ = fs::remove_file(&p);
        }
    }
    Ok(())
}
