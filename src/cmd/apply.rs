//! `strata apply`: unpacks an OCI or Docker layer tar into a new layer directory that
//! strata can mount as a lower (or upper) layer.
//!
//! Whiteouts stay in AUFS form; overlay-form ones (a character device 0/0, an
//! `overlay.opaque` xattr) become AUFS form. The input may be gzip or zstd
//! compressed (told by its magic). Hostile tars are refused, naming the entry: no
//! `..` or absolute names, no symlinked parent directories, hard links only to
//! entries of the layer itself, device nodes only for root. Everything is unpacked
//! into a staging directory beside DIR and renamed into place at the end, so a
//! refused or broken tar leaves nothing behind; the staged tree is synced to disk
//! first (one syncfs), so that after a power cut DIR is either missing or whole,
//! never a layer of empty files (`--no-sync` skips that for throwaway layers).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use clap::Parser;
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Timestamps, XattrFlags};
use rustix::io::Errno;
use tar::EntryType;

use crate::whiteout;

/// Unpack an OCI or Docker layer tar into a new layer directory.
#[derive(Parser, Debug)]
#[command(
    name = "strata apply",
    after_help = "Example:\n  strata apply change.tar.gz /srv/layers/l3\n  \
strata -o lowerdir=/srv/layers/l3:/srv/layers/l2:/srv/layers/l1 /mnt/view\n\n\
DIR must be missing or empty. Whiteouts stay in AUFS form (.wh.NAME, .wh..wh..opq);\n\
overlay-form markers (char 0/0, overlay.opaque) are turned into AUFS form. Gzip and\n\
zstd input is recognised. Owners, device nodes and trusted.* xattrs need root."
)]
pub struct Args {
    /// The layer tar (plain, gzip or zstd); `-` reads stdin
    #[arg(value_name = "LAYER.tar")]
    pub layer: PathBuf,
    /// The layer directory to create
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Do not sync the layer to disk before it is put in place (faster; after a
    /// crash or power cut DIR may then hold files without their data)
    #[arg(long)]
    pub no_sync: bool,
}

pub fn main(args: Vec<OsString>) -> i32 {
    let a = Args::parse_from(args);
    let input: Box<dyn Read> = if a.layer == Path::new("-") {
        Box::new(io::stdin().lock())
    } else {
        match fs::File::open(&a.layer) {
            Ok(f) => Box::new(f),
            Err(e) => {
                eprintln!("strata apply: {}: {e}", a.layer.display());
                return 1;
            }
        }
    };
    match apply(input, &a.dir, !a.no_sync) {
        Ok(s) => {
            if std::env::var_os("STRATA_STATS").is_some() {
                eprintln!("strata apply: {} entries, {} bytes of data", s.entries, s.bytes);
            }
            0
        }
        Err(e) => {
            eprintln!("strata apply: {}: {e}", a.layer.display());
            1
        }
    }
}

#[derive(Default, Debug)]
pub struct Stats {
    pub entries: u64,
    pub bytes: u64,
}

/// The input decompressed, by its magic: gzip, zstd, or plain.
pub fn decompress<'a>(r: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut b = BufReader::with_capacity(1 << 20, r);
    let head = b.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(b)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(b)?))
    } else {
        Ok(Box::new(b))
    }
}

/// Unpacks the layer tar `input` (maybe compressed) into `dir`, which must be missing
/// or empty. On error nothing is left: neither `dir` (if it was missing) nor files in it.
pub fn apply(input: impl Read, dir: &Path, sync: bool) -> Result<Stats, String> {
    let input = decompress(input).map_err(|e| format!("reading: {e}"))?;
    apply_verified(input, dir, sync, || Ok(()))
}

/// Unpacks the (uncompressed) layer tar `input` into `dir` as `apply` does, reading
/// `input` to its end and calling `verify` before the result is put in place. With
/// `sync`, the tree is on disk before its name is, and the name before this returns.
pub fn apply_verified(
    input: impl Read,
    dir: &Path,
    sync: bool,
    verify: impl FnOnce() -> Result<(), String>,
) -> Result<Stats, String> {
    let (parent, name) = match (dir.parent(), dir.file_name()) {
        (Some(p), Some(n)) => (if p.as_os_str().is_empty() { Path::new(".") } else { p }, n),
        _ => return Err(format!("{}: not a directory name to create", dir.display())),
    };
    let existed = match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {
            if fs::read_dir(dir)
                .map_err(|e| format!("{}: {e}", dir.display()))?
                .next()
                .is_some()
            {
                return Err(format!(
                    "{}: not empty (apply unpacks into a new layer directory)",
                    dir.display()
                ));
            }
            true
        }
        Ok(_) => return Err(format!("{}: exists and is not a directory", dir.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    let mut stage_name = OsString::from(".");
    stage_name.push(name);
    stage_name.push(format!(".apply-{}", std::process::id()));
    let stage = parent.join(&stage_name);
    fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let _ = remove_tree(&stage);
    fs::create_dir(&stage).map_err(|e| format!("{}: {e}", stage.display()))?;
    let result = (|| {
        let root = rfs::open(
            &stage,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("{}: {e}", stage.display()))?;
        let stats = unpack(input, root.as_fd())?;
        verify()?;
        if sync {
            crate::durable::sync_fs_of(&stage).map_err(|e| format!("syncing {}: {e}", stage.display()))?;
        }
        if existed {
            fs::remove_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        fs::rename(&stage, dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if sync {
            crate::durable::sync_dir(parent).map_err(|e| format!("syncing {}: {e}", parent.display()))?;
        }
        Ok(stats)
    })();
    if result.is_err() {
        let _ = remove_tree(&stage);
    }
    result
}

/// Removes a tree without following symlinks.
pub fn remove_tree(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            // Make it writable to remove what is inside (a layer may hold 0555 dirs).
            let _ = fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o700));
            fs::remove_dir_all(p)
        }
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// An entry's name checked and split into components. Refuses absolute names and `..`.
fn components(raw: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    if raw.starts_with(b"/") {
        return Err("an absolute name".into());
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("a name with '..'".into()),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A directory met in the tar: its metadata is set once everything is unpacked.
struct DirMeta {
    path: Vec<Vec<u8>>,
    meta: EntryMeta,
}

#[derive(Clone)]
struct EntryMeta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Unpacker<'a> {
    root: BorrowedFd<'a>,
    is_root: bool,
    /// The last parent directory opened: (path, fd).
    cached: Option<(Vec<Vec<u8>>, Rc<OwnedFd>)>,
    dirs: Vec<DirMeta>,
    root_meta: Option<EntryMeta>,
    warned_owner: bool,
    stats: Stats,
    /// The data buffer, kept from file to file.
    buf: Vec<u8>,
}

fn unpack(input: impl Read, root: BorrowedFd<'_>) -> Result<Stats, String> {
    let mut ar = tar::Archive::new(input);
    let mut u = Unpacker {
        root,
        is_root: rustix::process::geteuid().is_root(),
        cached: None,
        dirs: Vec::new(),
        root_meta: None,
        warned_owner: false,
        stats: Stats::default(),
        buf: Vec::new(),
    };
    let entries = ar.entries().map_err(|e| format!("reading the tar: {e}"))?;
    for e in entries {
        let mut e = e.map_err(|e| format!("reading the tar: {e}"))?;
        let raw = e.path_bytes().into_owned();
        u.entry(&mut e).map_err(|m| format!("entry '{}': {m}", show(&raw)))?;
        u.stats.entries += 1;
    }
    // The rest of the input (the end blocks), so that a digest covers all of it.
    io::copy(&mut ar.into_inner(), &mut io::sink()).map_err(|e| format!("reading the tar: {e}"))?;
    u.finish()?;
    Ok(u.stats)
}

impl<'a> Unpacker<'a> {
    /// Opens (creating missing ones) the directory at `path`, never through a symlink.
    /// The last one is kept: entries of one directory come one after the other.
    fn open_dir(&mut self, path: &[Vec<u8>], create: bool) -> Result<Rc<OwnedFd>, String> {
        if let Some((p, fd)) = &self.cached {
            if p == path {
                return Ok(fd.clone());
            }
        }
        let mut cur = rfs::openat(
            self.root,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| e.to_string())?;
        for (i, c) in path.iter().enumerate() {
            let name = OsStr::from_bytes(c);
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let next = match rfs::openat(&cur, name, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    rfs::mkdirat(&cur, name, Mode::from_raw_mode(0o755)).map_err(|e| e.to_string())?;
                    rfs::openat(&cur, name, flags, Mode::empty()).map_err(|e| e.to_string())?
                }
                Err(e) => {
                    let what = show(&path[..=i].join(&b'/'));
                    return Err(match rfs::statat(&cur, name, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                            format!("its parent '{what}' is a symlink (refused: it could lead outside the layer)")
                        }
                        Ok(_) => format!("its parent '{what}' is not a directory"),
                        Err(_) => format!("its parent '{what}': {e}"),
                    });
                }
            };
            cur = next;
        }
        let cur = Rc::new(cur);
        self.cached = Some((path.to_vec(), cur.clone()));
        Ok(cur)
    }

    /// Removes what is at `name` in `dir`, unless it is a directory and `keep_dir`.
    fn clear(&mut self, dir: BorrowedFd<'_>, name: &OsStr, keep_dir: bool) -> Result<bool, String> {
        match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(e.to_string()),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                if keep_dir {
                    return Ok(true);
                }
                self.cached = None;
                let p = PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&dir))).join(name);
                remove_tree(&p).map_err(|e| e.to_string())?;
                Ok(false)
            }
            Ok(_) => {
                rfs::unlinkat(dir, name, AtFlags::empty()).map_err(|e| e.to_string())?;
                Ok(false)
            }
        }
    }

    fn entry<R: Read>(&mut self, e: &mut tar::Entry<'_, R>) -> Result<(), String> {
        let kind = e.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let mut xattrs = Vec::new();
        if let Some(pax) = e.pax_extensions().map_err(|e| e.to_string())? {
            for r in pax {
                let r = r.map_err(|e| e.to_string())?;
                let k = r.key_bytes();
                if k.starts_with(b"GNU.sparse.") {
                    return Err(
                        "a PAX-format sparse file (GNU.sparse.*): not supported, use GNU sparse entries".into(),
                    );
                }
                if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((name.to_vec(), r.value_bytes().to_vec()));
                }
            }
        }
        let h = e.header();
        let raw = e.path_bytes().into_owned();
        let mut comps = components(&raw)?;
        let meta = EntryMeta {
            mode: h.mode().map_err(|e| e.to_string())? & 0o7777,
            uid: h.uid().map_err(|e| e.to_string())?,
            gid: h.gid().map_err(|e| e.to_string())?,
            mtime: h.mtime().map_err(|e| e.to_string())?,
            xattrs,
        };
        let Some(mut name) = comps.pop() else {
            // The layer's root.
            if kind != EntryType::Directory {
                return Err("the layer's root as something else than a directory".into());
            }
            self.root_meta = Some(meta);
            return Ok(());
        };
        let dev = (
            h.device_major().ok().flatten().unwrap_or(0),
            h.device_minor().ok().flatten().unwrap_or(0),
        );
        // An overlay-form whiteout becomes an AUFS one.
        let overlay_wh = kind == EntryType::Char && dev == (0, 0);
        if overlay_wh {
            let mut n = whiteout::PREFIX.as_bytes().to_vec();
            n.extend_from_slice(&name);
            name = n;
        }
        let parent = self.open_dir(&comps, true)?;
        let pfd = parent.as_fd();
        let os = OsStr::from_bytes(&name);
        if name.starts_with(b".wh.") {
            if name.starts_with(b".wh..wh.") && name != whiteout::OPAQUE.as_bytes() {
                eprintln!("strata apply: entry '{}': an AUFS meta entry, left out", show(&raw));
                return Ok(());
            }
            // Whiteout or opaque marker: an empty regular file.
            self.clear(pfd, os, false)?;
            rfs::openat(
                pfd,
                os,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            )
            .map_err(|e| e.to_string())?;
            let mut m = meta.clone();
            m.mode = 0o644;
            m.xattrs.clear();
            if !self.is_root {
                // A marker's owner means nothing: no message about it.
                m.uid = rustix::process::geteuid().as_raw() as u64;
                m.gid = rustix::process::getegid().as_raw() as u64;
            }
            return self.set_meta(pfd, os, None, &m, false, &raw);
        }
        match kind {
            EntryType::Directory => {
                if !self.clear(pfd, os, true)? {
                    rfs::mkdirat(pfd, os, Mode::from_raw_mode(0o755)).map_err(|e| e.to_string())?;
                }
                comps.push(name);
                self.dirs.push(DirMeta { path: comps, meta });
                return Ok(());
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let create = || {
                    rfs::openat(
                        pfd,
                        os,
                        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                };
                // Created first: only a name an earlier entry took is cleared.
                let f = match create() {
                    Err(Errno::EXIST) => {
                        self.clear(pfd, os, false)?;
                        create()
                    }
                    r => r,
                }
                .map_err(|e| e.to_string())?;
                let size = e.size();
                let n = copy_data(e, &f, kind == EntryType::GNUSparse, &mut self.buf).map_err(|e| e.to_string())?;
                if n != size {
                    return Err(format!("the tar ends inside the file's data ({n} of {size} bytes)"));
                }
                self.stats.bytes += n;
                return self.set_meta(pfd, os, Some(f.as_fd()), &meta, false, &raw);
            }
            EntryType::Symlink => {
                let target = e.link_name_bytes().ok_or("a symlink without a target")?.into_owned();
                let target = OsStr::from_bytes(&target);
                match rfs::symlinkat(target, pfd, os) {
                    Err(Errno::EXIST) => {
                        self.clear(pfd, os, false)?;
                        rfs::symlinkat(target, pfd, os)
                    }
                    r => r,
                }
                .map_err(|e| e.to_string())?;
            }
            EntryType::Link => {
                let target = e.link_name_bytes().ok_or("a hard link without a target")?.into_owned();
                let mut tc = components(&target).map_err(|m| format!("its link target '{}' is {m}", show(&target)))?;
                let tname = tc.pop().ok_or("a hard link to the layer's root")?;
                let tdir = self
                    .open_dir(&tc, false)
                    .map_err(|m| format!("its link target '{}': {m}", show(&target)))?;
                match rfs::statat(&tdir, OsStr::from_bytes(&tname), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                        return Err(format!("a hard link to the directory '{}'", show(&target)))
                    }
                    Ok(_) => {}
                    Err(_) => {
                        return Err(format!(
                            "its link target '{}' is not in the layer before it",
                            show(&target)
                        ))
                    }
                }
                if tc == comps && tname == name {
                    return Ok(());
                }
                let parent = self.open_dir(&comps, true)?;
                self.clear(parent.as_fd(), os, false)?;
                rfs::linkat(&tdir, OsStr::from_bytes(&tname), &parent, os, AtFlags::empty())
                    .map_err(|e| e.to_string())?;
                // A hard link shares its target's metadata: nothing more to set.
                return Ok(());
            }
            EntryType::Char | EntryType::Block => {
                if !self.is_root {
                    return Err("a device node: refused (only root may create one)".into());
                }
                self.clear(pfd, os, false)?;
                let ft = if kind == EntryType::Char {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                rfs::mknodat(pfd, os, ft, Mode::from_raw_mode(0o600), rfs::makedev(dev.0, dev.1))
                    .map_err(|e| e.to_string())?;
            }
            EntryType::Fifo => {
                self.clear(pfd, os, false)?;
                rfs::mknodat(pfd, os, FileType::Fifo, Mode::from_raw_mode(0o600), 0).map_err(|e| e.to_string())?;
            }
            other => return Err(format!("an entry of type {other:?}: not supported")),
        }
        let is_link = kind == EntryType::Symlink;
        self.set_meta(pfd, os, None, &meta, is_link, &raw)
    }

    /// Owner, xattrs, mode and mtime of entry `name` in `dir`; through `open`, the
    /// entry itself when it is open (a regular file just written), with no lookup
    /// of its name.
    #[allow(clippy::too_many_arguments)]
    fn set_meta(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        open: Option<BorrowedFd<'_>>,
        m: &EntryMeta,
        is_symlink: bool,
        raw: &[u8],
    ) -> Result<(), String> {
        if self.is_root {
            let (uid, gid) = (
                rustix::fs::Uid::from_raw(m.uid as u32),
                rustix::fs::Gid::from_raw(m.gid as u32),
            );
            match open {
                Some(fd) => rfs::fchown(fd, Some(uid), Some(gid)),
                None => rfs::chownat(dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW),
            }
            .map_err(|e| format!("chown: {e}"))?;
        } else if !self.warned_owner
            && (m.uid as u32 != rustix::process::geteuid().as_raw()
                || m.gid as u32 != rustix::process::getegid().as_raw())
        {
            eprintln!("strata apply: not root: owners are not kept (first at '{}')", show(raw));
            self.warned_owner = true;
        }
        for (k, v) in &m.xattrs {
            let ko = OsStr::from_bytes(k);
            if whiteout::is_internal_xattr(ko) {
                continue;
            }
            let set = match open {
                Some(fd) => rfs::fsetxattr(fd, ko, v, XattrFlags::empty()),
                None => {
                    let proc = PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&dir)));
                    rfs::lsetxattr(proc.join(name), ko, v, XattrFlags::empty())
                }
            };
            if let Err(e) = set {
                if self.is_root || !(k.starts_with(b"trusted.") || k.starts_with(b"security.")) {
                    return Err(format!("xattr {}: {e}", show(k)));
                }
                eprintln!("strata apply: entry '{}': xattr {} not kept: {e}", show(raw), show(k));
            }
        }
        let mode = Mode::from_raw_mode(m.mode);
        match open {
            Some(fd) => rfs::fchmod(fd, mode),
            None if !is_symlink => rfs::chmodat(dir, name, mode, AtFlags::empty()),
            None => Ok(()),
        }
        .map_err(|e| format!("chmod: {e}"))?;
        let t = rfs::Timespec {
            tv_sec: m.mtime as _,
            tv_nsec: 0,
        };
        let times = Timestamps {
            last_access: t,
            last_modification: t,
        };
        match open {
            Some(fd) => rfs::futimens(fd, &times),
            None => rfs::utimensat(dir, name, &times, AtFlags::SYMLINK_NOFOLLOW),
        }
        .map_err(|e| format!("times: {e}"))?;
        Ok(())
    }

    /// Directories' metadata, deepest first (so their times stay), and overlay
    /// opaque xattrs turned into AUFS markers.
    fn finish(&mut self) -> Result<(), String> {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by(|a, b| b.path.len().cmp(&a.path.len()).then(a.path.cmp(&b.path)));
        dirs.dedup_by(|a, b| a.path == b.path);
        for d in dirs {
            let shown = show(&d.path.join(&b'/'));
            let mut path = d.path.clone();
            let name = path.pop().unwrap_or_default();
            let parent = self
                .open_dir(&path, false)
                .map_err(|m| format!("entry '{shown}': {m}"))?;
            self.dir_meta(parent.as_fd(), OsStr::from_bytes(&name), &d.meta, &shown)?;
        }
        let root = self.root;
        let Some(meta) = self.root_meta.take() else {
            // No entry for the root: an ordinary directory's mode.
            return rfs::chmodat(root, ".", Mode::from_raw_mode(0o755), AtFlags::empty())
                .map_err(|e| format!("the layer's root: {e}"));
        };
        self.dir_meta(root, OsStr::new("."), &meta, ".")
    }

    fn dir_meta(&mut self, parent: BorrowedFd<'_>, name: &OsStr, m: &EntryMeta, shown: &str) -> Result<(), String> {
        let opaque = m
            .xattrs
            .iter()
            .any(|(k, v)| (k == b"trusted.overlay.opaque" || k == b"user.overlay.opaque") && v.first() == Some(&b'y'));
        if opaque {
            let d = rfs::openat(
                parent,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| format!("entry '{shown}': {e}"))?;
            match rfs::openat(
                &d,
                whiteout::OPAQUE,
                OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            ) {
                Ok(_) => {}
                Err(e) => return Err(format!("entry '{shown}': opaque marker: {e}")),
            }
        }
        self.set_meta(parent, name, None, m, false, shown.as_bytes())
            .map_err(|e| format!("entry '{shown}': {e}"))
    }
}

/// Copies an entry's data into `f`. For a sparse entry, all-zero 4 KiB blocks are
/// left as holes (the tar reader hands the holes over as zeros).
fn copy_data(r: &mut impl Read, f: &OwnedFd, sparse: bool, buf: &mut Vec<u8>) -> io::Result<u64> {
    const CHUNK: usize = 1 << 20;
    buf.resize(CHUNK, 0);
    let mut off = 0u64;
    loop {
        let mut n = 0;
        while n < CHUNK {
            let k = r.read(&mut buf[n..])?;
            if k == 0 {
                break;
            }
            n += k;
        }
        if n == 0 {
            break;
        }
        let data = &buf[..n];
        if sparse {
            for (i, blk) in data.chunks(4096).enumerate() {
                if blk.iter().any(|b| *b != 0) {
                    write_all_at(f, blk, off + (i * 4096) as u64)?;
                }
            }
        } else {
            write_all_at(f, data, off)?;
        }
        off += n as u64;
        if n < CHUNK {
            break;
        }
    }
    if sparse {
        // Holes at the end were skipped: the size comes from here.
        rfs::ftruncate(f, off)?;
    }
    Ok(off)
}

fn write_all_at(f: &OwnedFd, mut data: &[u8], mut off: u64) -> io::Result<()> {
    while !data.is_empty() {
        let n = rustix::io::pwrite(f, data, off)?;
        data = &data[n..];
        off += n as u64;
    }
    Ok(())
}
