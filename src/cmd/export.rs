//! `strata export`: the changes held in an upper layer, written as an OCI layer tar.
//!
//! Whiteouts go in AUFS form (`.wh.NAME`, `.wh..wh..opq`), also those the upper holds
//! in overlayfs form (a character device 0/0, an `overlay.opaque` xattr), and before
//! their siblings. strata's own entries (the work dir, other `.wh..wh.*` names) and
//! its xattrs stay out. Metadata-only copies take their data from the lowers. Hard
//! links become tar hard links, files with holes GNU sparse entries, xattrs PAX
//! `SCHILY.xattr.*` records. Entries are sorted and carry no user names, so the same
//! tree gives the same bytes; `--mtime` clamps times.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use clap::Parser;
use tar::EntryType;

use super::tarfmt::{self, Meta};
use crate::whiteout;

/// Write a mount's changes (its upper layer) as an OCI layer tar.
#[derive(Parser, Debug)]
#[command(
    name = "strata export",
    after_help = "Examples:\n  strata export --upper /srv/c1/upper --lower /srv/l2:/srv/l1 -o change.tar\n  \
strata export /mnt/c1 | gzip > change.tar.gz\n\n\
MOUNTPOINT names a live strata mount: its layers are read from its daemon's command\n\
line (/proc/PID/cmdline). Export a quiet mount: changes made while the export runs may\n\
or may not be in the tar."
)]
pub struct Args {
    /// A live strata mount to export (instead of --upper/--lower)
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: Option<PathBuf>,
    /// The upper layer to export
    #[arg(long, value_name = "DIR")]
    pub upper: Option<PathBuf>,
    /// The lower layers, top first, colon-separated (needed for metadata-only copies)
    #[arg(long = "lower", value_name = "L1:L2…")]
    pub lower: Vec<String>,
    /// The mount's work dir, if not the default (UPPER/.wh..wh.work)
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// Write the tar here instead of stdout
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Clamp every time to at most this (seconds since the epoch)
    #[arg(long, value_name = "SECS")]
    pub mtime: Option<u64>,
}

pub fn main(args: Vec<OsString>) -> i32 {
    let a = Args::parse_from(args);
    match run(&a) {
        Ok(s) => {
            if std::env::var_os("STRATA_STATS").is_some() {
                eprintln!("strata export: {} entries, {} bytes of data", s.entries, s.bytes);
            }
            0
        }
        Err(e) => {
            eprintln!("strata export: {e}");
            1
        }
    }
}

#[derive(Default, Debug)]
pub struct Stats {
    pub entries: u64,
    pub bytes: u64,
}

pub fn run(a: &Args) -> Result<Stats, String> {
    let (upper, lowers, workdir) = match (&a.mountpoint, &a.upper) {
        (Some(_), Some(_)) => return Err("give either MOUNTPOINT or --upper, not both".into()),
        (None, None) => return Err("nothing to export: give MOUNTPOINT or --upper DIR".into()),
        (Some(mp), None) => {
            let l = super::live::find(mp)?;
            match l.upper {
                Some(u) => (u, l.lowers, l.workdir),
                None => return Err(format!("{}: a read-only mount has no changes to export", mp.display())),
            }
        }
        (None, Some(u)) => {
            let mut lowers = Vec::new();
            for l in &a.lower {
                lowers.extend(crate::config::split_paths("--lower", l)?);
            }
            (u.clone(), lowers, a.workdir.clone())
        }
    };
    let md = fs::metadata(&upper).map_err(|e| format!("{}: {e}", upper.display()))?;
    if !md.is_dir() {
        return Err(format!("{}: not a directory", upper.display()));
    }
    // To FILE through a temporary name beside it, synced before it is renamed into
    // place: a failed export, a crash or a power cut leaves no FILE or a whole one.
    // (temporary name, the file to sync) for `-o FILE`.
    let mut tmp: Option<(PathBuf, File)> = None;
    let out: Box<dyn Write> = match &a.output {
        Some(p) => {
            let t = crate::durable::temp_beside(p);
            let f = File::create(&t).map_err(|e| format!("{}: {e}", t.display()))?;
            let sync = f.try_clone().map_err(|e| format!("{}: {e}", t.display()))?;
            tmp = Some((t, sync));
            Box::new(f)
        }
        None => Box::new(io::stdout().lock()),
    };
    let mut x = Exporter {
        out: BufWriter::with_capacity(1 << 20, out),
        lowers,
        clamp: a.mtime,
        links: HashMap::new(),
        stats: Stats::default(),
        buf: vec![0; 1 << 20],
        extras: BTreeMap::new(),
    };
    let index = workdir
        .unwrap_or_else(|| upper.join(whiteout::WORK_IN_UPPER))
        .join("index");
    let r = (|| {
        x.extras = index_extras(&index, &upper, &x.lowers)?;
        x.dir(Some(&upper), b"")?;
        tarfmt::finish(&mut x.out).map_err(|e| format!("writing the tar: {e}"))?;
        x.out.flush().map_err(|e| format!("writing the tar: {e}"))
    })();
    let r = match (&tmp, &a.output) {
        (Some((t, f)), Some(p)) => {
            let r = r.and_then(|()| {
                f.sync_all()
                    .and_then(|()| crate::durable::rename_synced(t, p))
                    .map_err(|e| format!("{}: {e}", p.display()))
            });
            if r.is_err() {
                let _ = fs::remove_file(t);
            }
            r
        }
        _ => r,
    };
    r.map(|()| x.stats)
}

struct Exporter<W: Write> {
    out: W,
    lowers: Vec<PathBuf>,
    clamp: Option<u64>,
    /// (dev, ino) of regular files with more than one name: the first name written.
    links: HashMap<(u64, u64), Vec<u8>>,
    stats: Stats,
    buf: Vec<u8>,
    /// Lower names (path in the layer -> the upper copy in the work dir's index) of
    /// files with several names in a lower layer, one of which was written through
    /// the mount: the mount shows the upper copy under every name, also those that
    /// have no entry in the upper.
    extras: BTreeMap<Vec<u8>, PathBuf>,
}

enum Child {
    Upper(PathBuf, fs::Metadata),
    Extra(PathBuf),
    LowerDir,
}

const OVERRIDE_STAT: &str = "user.containers.override_stat";

fn join(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = rel.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn xattr_list(p: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut names = vec![0u8; 4096];
    let n = loop {
        match rustix::fs::llistxattr(p, &mut names[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let mut v = vec![0u8; 256];
        let len = loop {
            match rustix::fs::lgetxattr(p, OsStr::from_bytes(name), &mut v[..]) {
                Ok(l) => break Some(l),
                Err(rustix::io::Errno::RANGE) => v.resize(v.len() * 8, 0),
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(l) = len {
            out.push((name.to_vec(), v[..l].to_vec()));
        }
    }
    out.sort();
    Ok(out)
}

impl<W: Write> Exporter<W> {
    fn err(&self, p: &Path, e: impl std::fmt::Display) -> String {
        format!("{}: {e}", p.display())
    }

    fn time(&self, t: i64) -> u64 {
        let t = t.max(0) as u64;
        self.clamp.map_or(t, |c| t.min(c))
    }

    /// Writes the entries below the upper directory `abs` (at `rel` in the layer).
    fn dir(&mut self, abs: Option<&Path>, rel: &[u8]) -> Result<(), String> {
        let mut names: Vec<OsString> = Vec::new();
        if let Some(abs) = abs {
            for e in fs::read_dir(abs).map_err(|e| self.err(abs, e))? {
                names.push(e.map_err(|e| self.err(abs, e))?.file_name());
            }
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let opaque_file = names.iter().any(|n| n == whiteout::OPAQUE);
        let opaque = match abs {
            Some(abs) => {
                opaque_file || {
                    let d = File::open(abs).map_err(|e| self.err(abs, e))?;
                    whiteout::has_opaque_xattr(std::os::fd::AsFd::as_fd(&d))
                }
            }
            None => false,
        };
        // Whiteouts first (the opaque marker before them), then the other entries.
        let mut whiteouts: Vec<(Vec<u8>, fs::Metadata)> = Vec::new();
        let mut entries: BTreeMap<Vec<u8>, Child> = BTreeMap::new();
        for n in names {
            let p = abs.unwrap_or(Path::new("")).join(&n);
            let md = fs::symlink_metadata(&p).map_err(|e| self.err(&p, e))?;
            let b = n.as_bytes();
            if b.starts_with(b".wh..wh.") {
                // The opaque marker (handled above) and strata's own entries.
                continue;
            }
            if let Some(hidden) = whiteout::hidden_name(&n) {
                whiteouts.push((hidden.as_bytes().to_vec(), md));
            } else if md.file_type().is_char_device() && md.rdev() == 0 {
                whiteouts.push((b.to_vec(), md));
            } else {
                entries.insert(b.to_vec(), Child::Upper(p, md));
            }
        }
        // Lower names of hard-linked files written through another name (see `extras`).
        let prefix = if rel.is_empty() { Vec::new() } else { join(rel, b"") };
        for (path, idx) in self.extras.range(prefix.clone()..) {
            let Some(rest) = path.strip_prefix(&prefix[..]) else {
                break;
            };
            match rest.iter().position(|b| *b == b'/') {
                None => {
                    entries
                        .entry(rest.to_vec())
                        .or_insert_with(|| Child::Extra(idx.clone()));
                }
                Some(i) => {
                    entries.entry(rest[..i].to_vec()).or_insert(Child::LowerDir);
                }
            }
        }
        whiteouts.sort_by(|a, b| a.0.cmp(&b.0));
        whiteouts.dedup_by(|a, b| a.0 == b.0);
        if let (true, Some(abs)) = (opaque, abs) {
            let md = fs::symlink_metadata(abs).map_err(|e| self.err(abs, e))?;
            self.marker(&join(rel, whiteout::OPAQUE.as_bytes()), &md)?;
        }
        for (hidden, md) in &whiteouts {
            let mut n = whiteout::PREFIX.as_bytes().to_vec();
            n.extend_from_slice(hidden);
            self.marker(&join(rel, &n), md)?;
        }
        for (n, child) in entries {
            let r = join(rel, &n);
            match child {
                Child::Upper(p, md) => {
                    self.entry(&p, &r, &md)?;
                    if md.is_dir() {
                        self.dir(Some(&p), &r)?;
                    }
                }
                Child::Extra(idx) => {
                    let md = fs::symlink_metadata(&idx).map_err(|e| self.err(&idx, e))?;
                    self.entry(&idx, &r, &md)?;
                }
                Child::LowerDir => {
                    // The directory as the mount shows it: the top lower that has it.
                    let rp = PathBuf::from(OsStr::from_bytes(&r));
                    let Some(d) = self.lowers.iter().map(|l| l.join(&rp)).find(|d| d.is_dir()) else {
                        continue;
                    };
                    let md = fs::symlink_metadata(&d).map_err(|e| self.err(&d, e))?;
                    self.entry(&d, &r, &md)?;
                    self.dir(None, &r)?;
                }
            }
        }
        Ok(())
    }

    /// A whiteout or opaque marker: an empty regular file.
    fn marker(&mut self, path: &[u8], md: &fs::Metadata) -> Result<(), String> {
        let m = Meta {
            path: path.to_vec(),
            kind: EntryType::Regular,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: self.time(md.mtime()),
            size: 0,
            link: None,
            dev: None,
            xattrs: Vec::new(),
        };
        self.stats.entries += 1;
        tarfmt::write_header(&mut self.out, &m, None).map_err(|e| format!("writing the tar: {e}"))
    }

    fn entry(&mut self, p: &Path, rel: &[u8], md: &fs::Metadata) -> Result<(), String> {
        let mut xattrs = xattr_list(p).map_err(|e| self.err(p, e))?;
        let (mut uid, mut gid, mut mode) = (md.uid() as u64, md.gid() as u64, md.mode() & 0o7777);
        let mut metacopy = None;
        for (k, v) in &xattrs {
            match k.as_slice() {
                b"trusted.strata.metacopy" | b"user.strata.metacopy" | b"trusted.overlay.metacopy" => {
                    metacopy = Some((k.clone(), v.clone()))
                }
                k if k == OVERRIDE_STAT.as_bytes() => {
                    // "UID:GID:MODE" (MODE octal), as containers/storage writes it.
                    let s = String::from_utf8_lossy(v);
                    let f: Vec<&str> = s.trim_end_matches('\0').split(':').collect();
                    if let [u, g, m, ..] = f.as_slice() {
                        if let (Ok(u), Ok(g), Ok(m)) = (u.parse(), g.parse(), u32::from_str_radix(m, 8)) {
                            (uid, gid, mode) = (u, g, m & 0o7777);
                        }
                    }
                }
                _ => {}
            }
        }
        xattrs.retain(|(k, _)| !whiteout::is_internal_xattr(OsStr::from_bytes(k)) && k != OVERRIDE_STAT.as_bytes());
        let ft = md.file_type();
        let mut m = Meta {
            path: rel.to_vec(),
            kind: EntryType::Regular,
            mode,
            uid,
            gid,
            mtime: self.time(md.mtime()),
            size: 0,
            link: None,
            dev: None,
            xattrs,
        };
        self.stats.entries += 1;
        let w = |e: io::Error| format!("writing the tar: {e}");
        if ft.is_dir() {
            m.kind = EntryType::Directory;
        } else if ft.is_symlink() {
            m.kind = EntryType::Symlink;
            m.link = Some(
                fs::read_link(p)
                    .map_err(|e| self.err(p, e))?
                    .into_os_string()
                    .into_vec(),
            );
        } else if ft.is_char_device() || ft.is_block_device() {
            m.kind = if ft.is_char_device() {
                EntryType::Char
            } else {
                EntryType::Block
            };
            let r = md.rdev();
            m.dev = Some((libc::major(r), libc::minor(r)));
        } else if ft.is_fifo() {
            m.kind = EntryType::Fifo;
        } else if ft.is_socket() {
            eprintln!("strata export: {}: a socket, left out", p.display());
            self.stats.entries -= 1;
            return Ok(());
        } else if ft.is_file() {
            if md.nlink() > 1 {
                let key = (md.dev(), md.ino());
                if let Some(first) = self.links.get(&key) {
                    m.kind = EntryType::Link;
                    m.link = Some(first.clone());
                    return tarfmt::write_header(&mut self.out, &m, None).map_err(w);
                }
                self.links.insert(key, rel.to_vec());
            }
            m.size = md.len();
            // Blocks for the whole size: no hole, and no need to look for one.
            let (mut f, whole) = match &metacopy {
                None => (
                    open_nofollow(p).map_err(|e| self.err(p, e))?,
                    md.blocks().saturating_mul(512) >= md.len(),
                ),
                // The data is another file's, whose blocks tell.
                Some((k, v)) => (self.metacopy_source(p, rel, k, v, md.len())?, false),
            };
            // One extent from 0 when whole: the file is read as opened, with no seek.
            let map = match whole {
                true => vec![(0, m.size)],
                false => data_map(&mut f, m.size).map_err(|e| self.err(p, e))?,
            };
            let sparse = map.iter().map(|(_, l)| l).sum::<u64>() < m.size;
            tarfmt::write_header(&mut self.out, &m, sparse.then_some(&map[..])).map_err(w)?;
            let mut written = 0;
            for (off, len) in &map {
                if !whole {
                    f.seek(SeekFrom::Start(*off)).map_err(|e| self.err(p, e))?;
                }
                let mut left = *len;
                while left > 0 {
                    let want = left.min(self.buf.len() as u64) as usize;
                    let n = f.read(&mut self.buf[..want]).map_err(|e| self.err(p, e))?;
                    if n == 0 {
                        return Err(self.err(p, "the file shrank while being exported"));
                    }
                    self.out.write_all(&self.buf[..n]).map_err(w)?;
                    left -= n as u64;
                }
                written += len;
            }
            self.stats.bytes += written;
            return tarfmt::finish_data(&mut self.out, written).map_err(w);
        }
        tarfmt::write_header(&mut self.out, &m, None).map_err(w)
    }

    /// The file holding the data of a metadata-only copy: in strata's mark the lower
    /// recorded ("INDEX\0PATH", index 0 being the upper), else the first lower with
    /// a regular file at that path (the kernel's overlayfs keeps the same path, or
    /// names another in `trusted.overlay.redirect`, absolute or in the same directory).
    fn metacopy_source(&self, p: &Path, rel: &[u8], key: &[u8], v: &[u8], size: u64) -> Result<File, String> {
        let (idx, path): (Option<usize>, Vec<u8>) = if key.starts_with(b"trusted.overlay.") {
            let mut buf = [0u8; 4096];
            match rustix::fs::lgetxattr(p, "trusted.overlay.redirect", &mut buf[..]) {
                // Absolute: from the layer's root; else a name in the same directory.
                Ok(n) if buf[..n].starts_with(b"/") => (None, buf[..n].to_vec()),
                Ok(n) => {
                    let parent = rel.rsplitn(2, |b| *b == b'/').nth(1).unwrap_or(b"");
                    (None, join(parent, &buf[..n]))
                }
                Err(_) => (None, rel.to_vec()),
            }
        } else {
            let mut it = v.splitn(2, |b| *b == 0);
            let idx = it
                .next()
                .and_then(|i| std::str::from_utf8(i).ok())
                .and_then(|i| i.parse().ok());
            (idx, it.next().unwrap_or(rel).to_vec())
        };
        let path = PathBuf::from(OsStr::from_bytes(&path));
        let path = path.strip_prefix("/").unwrap_or(&path).to_path_buf();
        let is_file = |l: &PathBuf| {
            fs::symlink_metadata(l.join(&path))
                .map(|m| m.is_file() && m.len() >= size)
                .unwrap_or(false)
        };
        let found = idx
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| self.lowers.get(i))
            .filter(|l| is_file(l))
            .or_else(|| self.lowers.iter().find(|l| is_file(l)));
        match found {
            Some(l) => open_nofollow(&l.join(&path)).map_err(|e| self.err(&l.join(&path), e)),
            None if self.lowers.is_empty() => Err(self.err(
                p,
                "a metadata-only copy: its data is in a lower layer; give the lowers with --lower",
            )),
            None => Err(self.err(
                p,
                format!(
                    "a metadata-only copy whose data {} is in no lower layer given",
                    path.display()
                ),
            )),
        }
    }
}

/// Opens a file to read, not following a symlink, and without touching its atime
/// where allowed (a lower layer is never changed, not even its atimes).
fn open_nofollow(p: &Path) -> io::Result<File> {
    let open = |flags| fs::OpenOptions::new().read(true).custom_flags(flags).open(p);
    match open(libc::O_NOFOLLOW | libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(libc::O_NOFOLLOW),
        r => r,
    }
}

/// The data extents of the first `size` bytes of `f` (SEEK_DATA / SEEK_HOLE), each
/// but the last a whole number of 512-byte blocks. One extent for a file with no holes.
fn data_map(f: &mut File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    use rustix::fs::{seek, SeekFrom as S};
    let mut map: Vec<(u64, u64)> = Vec::new();
    let mut off = 0u64;
    while off < size {
        let start = match seek(&*f, S::Data(off)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            // No SEEK_DATA here: all of it is data.
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOTSUP) => return Ok(vec![(0, size)]),
            Err(e) => return Err(e.into()),
        };
        if start >= size {
            break;
        }
        let end = seek(&*f, S::Hole(start)).map_err(io::Error::from)?.min(size);
        let start = start / 512 * 512;
        let end = end.div_ceil(512).saturating_mul(512).min(size);
        match map.last_mut() {
            Some((o, l)) if *o + *l >= start => *l = end.max(*o + *l) - *o,
            _ => map.push((start, end - start)),
        }
        off = end;
    }
    Ok(map)
}

trait IntoVec {
    fn into_vec(self) -> Vec<u8>;
}
impl IntoVec for OsString {
    fn into_vec(self) -> Vec<u8> {
        std::os::unix::ffi::OsStringExt::into_vec(self)
    }
}

/// The lower names a mount shows with the data of an upper copy from the work dir's
/// index (`index/DEV-INO`, DEV and INO of the lower file, hex): the names of that lower
/// file that are visible and have no entry in the upper.
fn index_extras(index: &Path, upper: &Path, lowers: &[PathBuf]) -> Result<BTreeMap<Vec<u8>, PathBuf>, String> {
    let mut keys: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let Ok(rd) = fs::read_dir(index) else {
        return Ok(BTreeMap::new());
    };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if let Some((d, i)) = n.split_once('-') {
            if let (Ok(d), Ok(i)) = (u64::from_str_radix(d, 16), u64::from_str_radix(i, 16)) {
                keys.insert((d, i), e.path());
            }
        }
    }
    let mut out = BTreeMap::new();
    if keys.is_empty() {
        return Ok(out);
    }
    let mut seen = HashSet::new();
    for (li, l) in lowers.iter().enumerate() {
        let mut files = Vec::new();
        lower_files(l, &mut files).map_err(|e| format!("{}: {e}", l.display()))?;
        for (rel, st) in files {
            let Some(idx) = keys.get(&(st.st_dev, st.st_ino)) else {
                continue;
            };
            let relb = rel.as_os_str().as_bytes().to_vec();
            if seen.contains(&relb) || !visible(upper, lowers, li, &rel) {
                continue;
            }
            seen.insert(relb.clone());
            out.insert(relb, idx.clone());
        }
    }
    Ok(out)
}

/// The regular files with several names in a lower layer (path, stat), read without
/// touching the layer's access times.
fn lower_files(root: &Path, out: &mut Vec<(PathBuf, rustix::fs::Stat)>) -> io::Result<()> {
    use crate::layer;
    use rustix::fs::{FileType, OFlags};
    let fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let mut stack = vec![(PathBuf::new(), fd)];
    while let Some((rel, dir)) = stack.pop() {
        for (name, kind, _) in layer::read_dir(std::os::fd::AsFd::as_fd(&dir))? {
            match kind {
                FileType::Directory => {
                    let sub = layer::open_noatime(
                        std::os::fd::AsFd::as_fd(&dir),
                        &name,
                        OFlags::RDONLY | OFlags::DIRECTORY,
                    )?;
                    stack.push((rel.join(&name), sub));
                }
                FileType::RegularFile | FileType::Unknown => {
                    if let Some(st) = layer::stat_at(std::os::fd::AsFd::as_fd(&dir), &name)? {
                        if layer::file_type(&st) == FileType::RegularFile && st.st_nlink > 1 {
                            out.push((rel.join(&name), st));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Whether `rel` of lower `li` shows in the mount: nothing in the upper or the lowers
/// above hides it (an entry of the same name, a whiteout, an opaque or non-directory
/// ancestor).
fn visible(upper: &Path, lowers: &[PathBuf], li: usize, rel: &Path) -> bool {
    let comps: Vec<&OsStr> = rel.iter().collect();
    let above = std::iter::once(upper).chain(lowers[..li].iter().map(|p| p.as_path()));
    for layer in above {
        let mut dir = layer.to_path_buf();
        for (k, c) in comps.iter().enumerate() {
            let last = k + 1 == comps.len();
            if fs::symlink_metadata(dir.join(whiteout::whiteout_name(c))).is_ok() {
                return false;
            }
            let p = dir.join(c);
            match fs::symlink_metadata(&p) {
                Err(_) => break,
                Ok(md) if last || !md.is_dir() => {
                    let _ = md;
                    return false;
                }
                Ok(_) => {
                    let opaque = fs::symlink_metadata(p.join(whiteout::OPAQUE)).is_ok()
                        || File::open(&p).is_ok_and(|d| whiteout::has_opaque_xattr(std::os::fd::AsFd::as_fd(&d)));
                    if opaque {
                        return false;
                    }
                }
            }
            dir = p;
        }
    }
    true
}
