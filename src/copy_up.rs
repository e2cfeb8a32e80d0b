//! The copy-up engine: bringing an entry that lives only in a lower layer into the
//! upper, parent chain first. Every copy is built in the work dir (data, owner, mode,
//! xattrs, times) and renamed into place with RENAME_NOREPLACE, so the upper never
//! shows a partial file, and a concurrent copy of the same entry simply loses the race.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, RenameFlags, SeekFrom, Stat, Timestamps, XattrFlags};
use rustix::io::Errno;

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::inode::Node;
use crate::layer::{self, split, DirFd, Result, XattrFd};
use crate::union::Union;
use crate::whiteout;

const STAGING: &str = "staging";
const INDEX: &str = "index";

/// The work dir, on the upper's filesystem and private to the daemon: `staging/` where
/// copies are built, and `index/` where each copied-up file that has several names in
/// a lower layer is linked under its lower identity, so every name copies up to the
/// same upper inode.
pub struct Work {
    fd: OwnedFd,
    index: OwnedFd,
    next: AtomicU64,
    /// Upper (st_dev, st_ino) of the files linked in the index -> (index name, number
    /// of names the file has in the mount, copied up or not). Kept in `NAMES_XATTR`.
    indexed: Mutex<HashMap<(u64, u64), (OsString, u32)>>,
}

impl Work {
    /// Entries a strata work dir may hold.
    pub fn is_ours(name: &OsStr) -> bool {
        name == STAGING || name == INDEX
    }

    /// Opens `dir/staging`, creating it, and removes leftovers of interrupted operations.
    pub fn open(dir: &Path) -> std::io::Result<Work> {
        let staging = dir.join(STAGING);
        if staging.exists() {
            std::fs::remove_dir_all(&staging)?;
        }
        private_dir(&staging)?;
        let fd = rfs::open(
            &staging,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let index = dir.join(INDEX);
        if !index.exists() {
            private_dir(&index)?;
        }
        // Only the daemon's user may plant or remove index entries.
        std::fs::set_permissions(&index, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        Self::open_index(fd, &index, true)
    }

    /// For a read-only mount (`ro`) of a stack with an upper: reads the index of `dir`,
    /// if there is one, changing nothing (another mount may be using the same work dir).
    /// Nothing is ever staged: every operation that would copy up is refused first.
    pub fn open_read_only(dir: &Path) -> std::io::Result<Option<Work>> {
        let index = dir.join(INDEX);
        if !index.is_dir() {
            return Ok(None);
        }
        let fd = rfs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        Self::open_index(fd, &index, false).map(Some)
    }

    fn open_index(fd: OwnedFd, index: &Path, tidy: bool) -> std::io::Result<Work> {
        let index = rfs::open(
            index,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        // Index entries whose every name is gone hold nothing anymore.
        let mut indexed = HashMap::new();
        for (n, _, _) in layer::read_dir(index.as_fd())? {
            match layer::stat_at(index.as_fd(), &n)? {
                Some(st) if st.st_nlink <= 1 && tidy => {
                    let _ = rfs::unlinkat(&index, &n, AtFlags::empty());
                }
                Some(st) if st.st_nlink <= 1 => {}
                Some(st) => {
                    let fd = layer::open_path(index.as_fd(), &n)?;
                    let names = layer::get_xattr(fd.as_fd(), OsStr::new(&names_xattr()))?
                        .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
                        .unwrap_or(st.st_nlink as u32 - 1);
                    indexed.insert((st.st_dev, st.st_ino), (n, names));
                }
                None => {}
            }
        }
        Ok(Work {
            fd,
            index,
            next: AtomicU64::new(0),
            indexed: Mutex::new(indexed),
        })
    }

    /// (upper dev, upper ino, lower dev, lower ino) of every indexed file, so that all
    /// names of one lower file keep one identity across remounts.
    pub fn index_origins(&self) -> Vec<(u64, u64, u64, u64)> {
        let mut out = Vec::new();
        for (n, _, _) in layer::read_dir(self.index.as_fd()).unwrap_or_default() {
            let Some((d, i)) = n.to_str().and_then(|s| s.split_once('-')) else {
                continue;
            };
            let (Ok(d), Ok(i)) = (u64::from_str_radix(d, 16), u64::from_str_radix(i, 16)) else {
                continue;
            };
            if let Ok(Some(st)) = layer::stat_at(self.index.as_fd(), &n) {
                out.push((st.st_dev, st.st_ino, d, i));
            }
        }
        out
    }

    /// How many names the indexed upper file (dev, ino) has in the mount: its names in
    /// the lower it came from (copied up yet or not), plus links made, minus names removed.
    pub fn names(&self, dev: u64, ino: u64) -> Option<u32> {
        self.indexed.lock().get(&(dev, ino)).map(|(_, n)| *n)
    }

    /// A name of the indexed upper file (dev, ino) was added (+1) or removed (-1).
    pub fn count_name(&self, dev: u64, ino: u64, delta: i32) {
        let mut idx = self.indexed.lock();
        if let Some((key, n)) = idx.get_mut(&(dev, ino)) {
            *n = n.saturating_add_signed(delta);
            if let Ok(fd) = layer::open_path(self.index.as_fd(), key) {
                let _ = layer::set_xattr(
                    fd.as_fd(),
                    OsStr::new(&names_xattr()),
                    n.to_string().as_bytes(),
                    XattrFlags::empty(),
                );
            }
        }
    }

    /// Links the staged copy `tmp` into the index as `key`, counting `names` names.
    fn link_index(&self, tmp: &OsStr, key: &OsStr, names: u32) -> Result<()> {
        rfs::linkat(self.fd(), tmp, &self.index, key, AtFlags::empty())?;
        let fd = layer::open_path(self.fd(), tmp)?;
        let _ = layer::set_xattr(
            fd.as_fd(),
            OsStr::new(&names_xattr()),
            names.to_string().as_bytes(),
            XattrFlags::empty(),
        );
        if let Some(s) = layer::stat_at(self.fd(), tmp)? {
            self.indexed
                .lock()
                .insert((s.st_dev, s.st_ino), (key.to_os_string(), names));
        }
        Ok(())
    }

    /// Opens the index copy of a lower file.
    pub fn open_copy(&self, lower: &Stat, flags: OFlags) -> Result<OwnedFd> {
        rfs::openat(
            &self.index,
            Self::index_key(lower),
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    }

    /// The upper copy (its stat) of a lower file that has one in the index.
    pub fn copy_of(&self, lower: &Stat) -> Option<Stat> {
        layer::stat_at(self.index.as_fd(), &Self::index_key(lower))
            .ok()
            .flatten()
    }

    fn index_key(st: &Stat) -> OsString {
        OsString::from(format!("{:x}-{:x}", st.st_dev, st.st_ino))
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A fresh name in the staging dir.
    pub fn temp_name(&self) -> OsString {
        OsString::from(format!("#{}", self.next.fetch_add(1, Ordering::Relaxed)))
    }

    /// Removes a staged entry (recursively for directories).
    pub fn discard(&self, name: &OsStr) {
        remove_tree(self.fd(), name);
    }

    /// Puts the staged file `tmp` in the place of the existing `dir/name` atomically.
    /// An exchange and then an unlink of the old file, not a rename over it: ext4
    /// writes out all of a file's data when it is renamed over another (auto_da_alloc),
    /// which doubled the time to complete a large metadata-only copy. The old file,
    /// left in the staging dir, is removed here, or at the next mount if interrupted.
    pub fn replace(&self, tmp: &OsStr, dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
        match rfs::renameat_with(self.fd(), tmp, dir, name, RenameFlags::EXCHANGE) {
            Ok(()) => {
                self.discard(tmp);
                Ok(())
            }
            // No exchange on this filesystem, or nothing to exchange with.
            Err(Errno::INVAL) | Err(Errno::NOSYS) | Err(Errno::NOENT) => rfs::renameat(self.fd(), tmp, dir, name),
            Err(e) => Err(e),
        }
    }
}

/// Whether the open upper file `fd` is a metadata-only copy (its data still below):
/// it carries the overlayfs metacopy marker, or the one older strata versions wrote.
pub fn is_metacopy(fd: BorrowedFd<'_>) -> Result<bool> {
    for name in [ovl_xattr("metacopy"), legacy_metacopy_xattr()] {
        // An fd open for I/O answers directly; an O_PATH one (EBADF) through /proc.
        let mut v = [0u8; 0];
        let found = match rfs::fgetxattr(fd, name, &mut v[..]) {
            Ok(_) | Err(Errno::RANGE) => true,
            Err(Errno::NODATA) | Err(Errno::NOTSUP) => false,
            Err(Errno::BADF) => layer::get_xattr(fd, OsStr::new(name))?.is_some(),
            Err(e) => return Err(e),
        };
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Files smaller than this copy their data even for a metadata change: a metadata-only
/// copy and its later completion would cost more than the copy itself.
pub const META_MIN: u64 = 256 << 10;

/// How much of a regular file a copy-up brings along.
#[derive(Clone, Debug, PartialEq)]
pub enum Fill {
    /// All of it.
    Data,
    /// Nothing: it is about to be truncated.
    Empty,
    /// Metadata only, when possible; the data stays in the lower layer.
    Meta,
    /// Metadata only, data in lower layer N at this path.
    MetaFrom(usize, PathBuf),
}

/// Whether the daemon runs as root (and so may use trusted.* xattrs).
fn is_root() -> bool {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| rustix::process::geteuid().is_root())
}

/// The kernel overlayfs' xattr `name`: `trusted.overlay.NAME`, or `user.overlay.NAME`
/// (its `userxattr` form) when not running as root, where trusted.* is out of reach.
fn ovl_xattr(name: &str) -> &'static str {
    match (name, is_root()) {
        ("metacopy", true) => "trusted.overlay.metacopy",
        ("metacopy", false) => "user.overlay.metacopy",
        ("redirect", true) => "trusted.overlay.redirect",
        ("redirect", false) => "user.overlay.redirect",
        _ => unreachable!("no overlay xattr {name}"),
    }
}

/// The marker older strata versions put on a metadata-only copy: "LAYER\0PATH".
/// Still read, never written.
fn legacy_metacopy_xattr() -> &'static str {
    if is_root() {
        "trusted.strata.metacopy"
    } else {
        "user.strata.metacopy"
    }
}

/// The access and modification times of a stat, to set on a copy.
pub fn stat_times(st: &Stat) -> Timestamps {
    Timestamps {
        last_access: rfs::Timespec {
            tv_sec: st.st_atime as _,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: rfs::Timespec {
            tv_sec: st.st_mtime as _,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}

/// The xattr on an index entry that counts the names of its file.
fn names_xattr() -> String {
    legacy_metacopy_xattr().replace("metacopy", "names")
}

/// Creates a directory only the daemon's user can enter (the daemon runs with umask 0).
pub fn private_dir(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(p)
}

/// Best-effort recursive removal of `name` in `dir`.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) {
    if rfs::unlinkat(dir, name, AtFlags::empty()).is_ok() {
        return;
    }
    if let Ok(sub) = rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        if let Ok(ents) = layer::read_dir(sub.as_fd()) {
            for (n, _, _) in ents {
                remove_tree(sub.as_fd(), &n);
            }
        }
    }
    let _ = rfs::unlinkat(dir, name, AtFlags::REMOVEDIR);
}

impl Union {
    fn work(&self) -> Result<&Work> {
        self.work.as_ref().ok_or(Errno::ROFS)
    }

    /// Makes sure `node` lives in the upper layer with its data, copying it (and its
    /// parent chain) up.
    pub fn copy_up(&self, node: &Node) -> Result<()> {
        self.copy_up_with(node, Fill::Data)
    }

    /// Copy-up for an open with O_TRUNC: everything but the data, which is about to go.
    pub fn copy_up_truncated(&self, node: &Node) -> Result<()> {
        self.copy_up_with(node, Fill::Empty)
    }

    /// Copy-up for a metadata change (mode, owner, times, xattrs, rename): a regular
    /// file's data stays in its lower layer until the first data write.
    pub fn copy_up_meta(&self, node: &Node) -> Result<()> {
        self.copy_up_with(node, Fill::Meta)
    }

    fn copy_up_with(&self, node: &Node, fill: Fill) -> Result<()> {
        if !self.writable {
            return Err(Errno::ROFS);
        }
        if node.top() == 0 {
            if node.kind() == FileType::RegularFile {
                match fill {
                    Fill::Data => return self.fill_data(node),
                    // The data is about to go: a metadata-only copy just stops pointing at it.
                    Fill::Empty => return self.drop_metacopy(node),
                    _ => {}
                }
            }
            return Ok(());
        }
        let _once = node.copy_lock.lock();
        let st = node.state();
        if st.layers[0] == 0 {
            return Ok(());
        }
        let path = node.path()?;
        let (parent, name) = split(&path);
        let updir = self.upper_dir(parent)?;
        let upper_st = self.copy_entry_with(st.layers[0], parent, name, updir.as_fd(), fill)?;
        self.table.record_origin(upper_st.st_dev, upper_st.st_ino, node.ino);
        if st.kind == FileType::RegularFile && upper_st.st_nlink > 1 {
            // The other names the kernel knows this file by come up with it (linked to
            // the same copy), as the kernel will not look them up again.
            for other in node.paths().iter().filter(|p| **p != path) {
                let (op, on) = split(other);
                let od = self.upper_dir(op)?;
                self.copy_entry(st.layers[0], op, on, od.as_fd())?;
            }
        }
        let mut s = node.state.write();
        if s.kind == FileType::Directory {
            if s.layers[0] != 0 {
                s.layers.insert(0, 0);
            }
        } else {
            s.layers = vec![0];
        }
        node.data_moves.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Where the data of the upper file `name` in `upper_dir` (merged path `path`) lives
    /// when it is a metadata-only copy: (lower layer, path in it). As the kernel's
    /// overlayfs finds it: the path in `trusted.overlay.redirect` (absolute, or a name
    /// in the same directory) or else the file's own path, in the top-most lower that
    /// has a regular file there. Copies made by older strata versions name the layer
    /// and path in `trusted.strata.metacopy`.
    pub fn metacopy_origin(
        &self,
        upper_dir: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
    ) -> Result<Option<(usize, PathBuf)>> {
        let fd = layer::open_path(upper_dir, name)?;
        let (idx, origin) = if layer::get_xattr(fd.as_fd(), OsStr::new(ovl_xattr("metacopy")))?.is_some() {
            let origin = match layer::get_xattr(fd.as_fd(), OsStr::new(ovl_xattr("redirect")))? {
                Some(r) if r.first() == Some(&b'/') => PathBuf::from(OsStr::from_bytes(&r[1..])),
                Some(r) if !r.is_empty() && !r.contains(&b'/') => split(path).0.join(OsStr::from_bytes(&r)),
                Some(r) => {
                    tracing::error!(
                        "metadata-only copy {:?}: bad redirect {:?}",
                        path,
                        OsStr::from_bytes(&r)
                    );
                    return Err(Errno::IO);
                }
                None => path.to_path_buf(),
            };
            (None, origin)
        } else if let Some(v) = layer::get_xattr(fd.as_fd(), OsStr::new(legacy_metacopy_xattr()))? {
            let mut it = v.splitn(2, |b| *b == 0);
            let idx = it
                .next()
                .and_then(|i| std::str::from_utf8(i).ok())
                .and_then(|i| i.parse::<usize>().ok());
            (idx, PathBuf::from(OsStr::from_bytes(it.next().unwrap_or_default())))
        } else {
            return Ok(None);
        };
        let path = origin;
        let is_file = |l: usize| {
            !self.stack().layers[l].is_upper
                && matches!(self.stack().layers[l].stat(&path), Ok(Some(st)) if layer::file_type(&st) == FileType::RegularFile)
        };
        // The recorded layer, or (the stack changed since) the first lower that has it.
        let l = idx
            .filter(|&l| l < self.stack().layers.len() && is_file(l))
            .or_else(|| (0..self.stack().layers.len()).find(|&l| is_file(l)));
        match l {
            Some(l) => Ok(Some((l, path))),
            None => {
                tracing::error!(
                    "metadata-only copy {:?}: its data {:?} is in no lower layer",
                    name,
                    path
                );
                Err(Errno::IO)
            }
        }
    }

    pub fn drop_metacopy(&self, node: &Node) -> Result<()> {
        let _once = node.copy_lock.lock();
        let path = node.path()?;
        let (parent, name) = split(&path);
        let udir = self.upper().ok_or(Errno::ROFS)?.dir(parent)?.ok_or(Errno::NOENT)?;
        let fd = layer::open_path(udir.as_fd(), name)?;
        // The marker goes last: until then the copy still reads as the lower file.
        let mut was = false;
        for x in [ovl_xattr("redirect"), legacy_metacopy_xattr(), ovl_xattr("metacopy")] {
            match layer::remove_xattr(fd.as_fd(), OsStr::new(x)) {
                Ok(()) => was = true,
                Err(Errno::NODATA) => {}
                Err(e) => return Err(e),
            }
        }
        if was {
            node.data_moves.fetch_add(1, Ordering::Release);
        }
        Ok(())
    }

    /// Completes a metadata-only copy: the data is copied from the lower layer into a
    /// staged file that takes the upper file's metadata and then replaces it.
    pub fn fill_data(&self, node: &Node) -> Result<()> {
        let _once = node.copy_lock.lock();
        let path = node.path()?;
        let (parent, name) = split(&path);
        let upper = self.upper().ok_or(Errno::ROFS)?;
        let udir = upper.dir(parent)?.ok_or(Errno::NOENT)?;
        let Some((l, origin)) = self.metacopy_origin(udir.as_fd(), name, &path)? else {
            return Ok(());
        };
        // Built in the staging dir with the data and the metadata copy's metadata, then
        // renamed over it: an interrupted fill leaves the metadata copy as it was.
        let work = self.work()?;
        let tmp = work.temp_name();
        let old = layer::stat_at(udir.as_fd(), name)?.ok_or(Errno::NOENT)?;
        let dir_times = layer::stat_at(udir.as_fd(), OsStr::new("."))?.map(|d| stat_times(&d));
        let res = (|| {
            let (op, on) = split(&origin);
            let odir = self.stack().layers[l].dir(op)?.ok_or(Errno::IO)?;
            let src = layer::open_noatime(odir.as_fd(), on, OFlags::RDONLY)?;
            let dst = rfs::openat(
                work.fd(),
                &tmp,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )?;
            copy_data(&src, &dst, &rfs::fstat(&src)?)?;
            rfs::ftruncate(&dst, old.st_size as u64)?;
            // On disk before it takes the metadata copy's place (see `durable`).
            self.durable(&dst)?;
            self.copy_meta(0, (udir.as_fd(), name, None), &old, work.fd(), &tmp)?;
            work.replace(&tmp, udir.as_fd(), name)
        })();
        if let Err(e) = res {
            work.discard(&tmp);
            return Err(e);
        }
        if let Some(t) = &dir_times {
            let _ = rfs::utimensat(udir.as_fd(), ".", t, AtFlags::empty());
        }
        // The metadata copy's inode is gone; the new one is the same node.
        self.table.forget_backing(old.st_dev, old.st_ino, node.ino);
        let up = layer::stat_at(udir.as_fd(), name)?.ok_or(Errno::IO)?;
        self.table.record_origin(up.st_dev, up.st_ino, node.ino);
        node.data_moves.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Makes the data a copy-up wrote to `fd` durable before the copy is renamed into
    /// sight, as the kernel's overlayfs does (unless `volatile`/`fsync=0`). Only the
    /// data needs it: the copy's metadata (owner, mode, xattrs, times) and the rename
    /// that follow are journalled after it, and a rename lost to a power cut shows the
    /// old lower file, which is fine. A rename that survived with the data lost would
    /// hide the lower file behind a short or zero-filled one.
    fn durable(&self, fd: &OwnedFd) -> Result<()> {
        if self.cfg.volatile {
            return Ok(());
        }
        rfs::fdatasync(fd)
    }

    /// Copies a lower file with several names into the index only (no name of it in
    /// the upper yet), so that its count of names can change; its other names then copy
    /// up by linking to it when next looked up.
    pub fn index_copy(&self, src: usize, path: &Path) -> Result<Stat> {
        let work = self.work()?;
        let (parent, name) = split(path);
        let sdir = self.stack().layers[src].dir(parent)?.ok_or(Errno::NOENT)?;
        let st = layer::stat_at(sdir.as_fd(), name)?.ok_or(Errno::NOENT)?;
        let tmp = work.temp_name();
        let res = self
            .stage_copy((src, parent, sdir.as_fd()), name, &st, work.fd(), &tmp, &Fill::Data)
            .and_then(|()| work.link_index(&tmp, &Work::index_key(&st), st.st_nlink as u32));
        work.discard(&tmp);
        match res {
            Ok(()) | Err(Errno::EXIST) => work.copy_of(&st).ok_or(Errno::IO),
            Err(e) => Err(e),
        }
    }

    /// The upper-layer directory at merged path `rel`, copied up (with its parents)
    /// from the lower layer that holds it when the upper does not have it yet.
    pub fn upper_dir(&self, rel: &Path) -> Result<DirFd<'static>> {
        let upper = self.upper().ok_or(Errno::ROFS)?;
        if let Some(d) = upper.dir(rel)? {
            return Ok(d);
        }
        let (parent, name) = split(rel);
        if name == "." {
            return Err(Errno::IO);
        }
        let pd = self.upper_dir(parent)?;
        // The top-most lower that has it as a directory.
        let mut src = None;
        for l in self.first_lower()..self.stack().layers.len() {
            if let Some((FileType::Directory, st)) = self.lower_entry(l, parent, name)? {
                src = Some((l, st));
                break;
            }
        }
        let (src, lower_st) = src.ok_or(Errno::NOENT)?;
        let up = self.copy_entry(src, parent, name, pd.as_fd())?;
        let id = self.table.ino_for(lower_st.st_dev, lower_st.st_ino);
        self.table.record_origin(up.st_dev, up.st_ino, id);
        if let Some(n) = self.table.get(id) {
            let mut s = n.state.write();
            if s.layers[0] != 0 {
                s.layers.insert(0, 0);
            }
        }
        upper.dir(rel)?.ok_or(Errno::IO)
    }

    /// Copies entry `name` of directory `parent` in layer `src` into `updir` (the same
    /// directory in the upper) through the staging dir. Returns the upper copy's stat.
    pub fn copy_entry(&self, src: usize, parent: &Path, name: &OsStr, updir: BorrowedFd<'_>) -> Result<Stat> {
        self.copy_entry_with(src, parent, name, updir, Fill::Data)
    }

    pub fn copy_entry_with(
        &self,
        src: usize,
        parent: &Path,
        name: &OsStr,
        updir: BorrowedFd<'_>,
        fill: Fill,
    ) -> Result<Stat> {
        let work = self.work()?;
        let sdir = self.stack().layers[src].dir(parent)?.ok_or(Errno::NOENT)?;
        let st = layer::stat_at(sdir.as_fd(), name)?.ok_or(Errno::NOENT)?;
        // A file with several names: another name may already have been copied up.
        let key =
            (layer::file_type(&st) == FileType::RegularFile && st.st_nlink > 1 && !self.stack().layers[src].is_upper)
                .then(|| Work::index_key(&st));
        // Files with several names always carry their data: their copies are shared.
        let fill = match fill {
            Fill::Meta if !self.cfg.metacopy || key.is_some() || (st.st_size as u64) < META_MIN => Fill::Data,
            Fill::Meta => Fill::MetaFrom(src, parent.join(name)),
            f => f,
        };
        // A copy-up is no change of the directory it lands in: its times stay.
        let dir_times = layer::stat_at(updir, OsStr::new("."))?.map(|d| stat_times(&d));
        let keep_dir_times = || {
            if let Some(t) = &dir_times {
                let _ = rfs::utimensat(updir, ".", t, AtFlags::empty());
            }
        };
        if let Some(k) = &key {
            match rfs::linkat(&work.index, k, updir, name, AtFlags::empty()) {
                Ok(()) | Err(Errno::EXIST) => {
                    keep_dir_times();
                    return layer::stat_at(updir, name)?.ok_or(Errno::IO);
                }
                Err(Errno::NOENT) => {}
                Err(e) => return Err(e),
            }
        }
        let tmp = work.temp_name();
        let mut res = self.stage_copy((src, parent, sdir.as_fd()), name, &st, work.fd(), &tmp, &fill);
        if let (Some(k), Ok(())) = (&key, &res) {
            res = match work.link_index(&tmp, k, st.st_nlink as u32) {
                Ok(()) => Ok(()),
                Err(Errno::EXIST) => {
                    // Another name won the race: use its copy.
                    work.discard(&tmp);
                    return self.copy_entry(src, parent, name, updir);
                }
                Err(e) => Err(e),
            };
        }
        if let Err(e) = res {
            work.discard(&tmp);
            return Err(e);
        }
        match rfs::renameat_with(work.fd(), &tmp, updir, name, RenameFlags::NOREPLACE) {
            Ok(()) => keep_dir_times(),
            Err(Errno::EXIST) => work.discard(&tmp), // copied meanwhile by another request
            Err(e) => {
                work.discard(&tmp);
                return Err(e);
            }
        }
        layer::stat_at(updir, name)?.ok_or(Errno::IO)
    }

    /// Builds the copy of `name` (described by `st`) as `tmp` in the staging dir.
    /// The source is `name` in directory `parent` of layer `src`, open as `sdir`.
    fn stage_copy(
        &self,
        (src, parent, sdir): (usize, &Path, BorrowedFd<'_>),
        name: &OsStr,
        st: &Stat,
        wdir: BorrowedFd<'_>,
        tmp: &OsStr,
        fill: &Fill,
    ) -> Result<()> {
        let kind = layer::file_type(st);
        let mut opened = None;
        let mut src_dir = None;
        match kind {
            FileType::Directory => {
                // Read for its xattrs: a lower keeps it open already.
                src_dir = self.stack().layers[src].dir(&parent.join(name))?;
                rfs::mkdirat(wdir, tmp, Mode::from_raw_mode(0o700))?
            }
            FileType::RegularFile => {
                let src = opened.insert(layer::open_noatime(sdir, name, OFlags::RDONLY)?);
                let dst = rfs::openat(
                    wdir,
                    tmp,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )?;
                match fill {
                    Fill::Data => {
                        copy_data(src, &dst, st)?;
                        if st.st_size > 0 {
                            self.durable(&dst)?;
                        }
                    }
                    Fill::MetaFrom(_, path) => {
                        // The kernel overlayfs' format: size set, no data, an empty
                        // metacopy marker, and where the data is (its own path until
                        // renamed; absolute, so that it stays right through renames).
                        rfs::ftruncate(&dst, st.st_size as u64)?;
                        let mut redirect = b"/".to_vec();
                        redirect.extend_from_slice(path.as_os_str().as_bytes());
                        rfs::fsetxattr(&dst, ovl_xattr("redirect"), &redirect, XattrFlags::CREATE)?;
                        rfs::fsetxattr(&dst, ovl_xattr("metacopy"), b"", XattrFlags::CREATE)?;
                    }
                    Fill::Empty | Fill::Meta => {}
                }
            }
            FileType::Symlink => {
                let target = rfs::readlinkat(sdir, name, Vec::new())?;
                rfs::symlinkat(target.as_c_str(), wdir, tmp)?;
            }
            _ => rfs::mknodat(wdir, tmp, kind, Mode::from_raw_mode(0o600), st.st_rdev)?,
        }
        let open = opened
            .as_ref()
            .map(|f| f.as_fd())
            .or(src_dir.as_ref().map(|d| d.as_fd()));
        self.copy_meta(src, (sdir, name, open), st, wdir, tmp)
    }

    /// Gives `dname` the owner, mode, xattrs and times of `sname` (described by `st`).
    fn copy_meta(
        &self,
        src: usize,
        (sdir, sname, open): (BorrowedFd<'_>, &OsStr, Option<BorrowedFd<'_>>),
        st: &Stat,
        ddir: BorrowedFd<'_>,
        dname: &OsStr,
    ) -> Result<()> {
        let kind = layer::file_type(st);
        crate::override_stat::chown_at(self, ddir, dname, Some(st.st_uid), Some(st.st_gid))?;
        if kind != FileType::Symlink {
            rfs::chmodat(ddir, dname, Mode::from_raw_mode(st.st_mode & 0o7777), AtFlags::empty())?;
        }
        copy_xattrs(sdir, sname, open, ddir, dname)?;
        // Owners and modes kept in xattrs (xattr_permissions): as the source shows them.
        self.copy_record(src, (sdir, sname, open), st, ddir, dname)?;
        rfs::utimensat(ddir, dname, &stat_times(st), AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }
}

/// Copies all xattrs the daemon can read, except the layer-format markers.
/// `open`: the source, when the caller has it open (not `O_PATH`).
pub fn copy_xattrs(
    sdir: BorrowedFd<'_>,
    sname: &OsStr,
    open: Option<BorrowedFd<'_>>,
    ddir: BorrowedFd<'_>,
    dname: &OsStr,
) -> Result<()> {
    let s = match open {
        Some(fd) => XattrFd {
            fd: DirFd::Borrowed(fd),
            direct: true,
        },
        None => XattrFd {
            fd: DirFd::Owned(layer::open_path(sdir, sname)?),
            direct: false,
        },
    };
    let names = s.list()?;
    if names.is_empty() {
        return Ok(());
    }
    let d = layer::open_path(ddir, dname)?;
    for n in names {
        if whiteout::is_internal_xattr(&n) {
            continue;
        }
        if let Some(v) = s.get(&n)? {
            match layer::set_xattr(d.as_fd(), &n, &v, XattrFlags::empty()) {
                Ok(()) => {}
                // A namespace the upper's filesystem does not take (e.g. user.* on a symlink).
                Err(Errno::PERM) | Err(Errno::NOTSUP) => {
                    tracing::debug!("copy-up: xattr {:?} of {:?} not copied", n, sname)
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Copies the data of a file described by `st`: a reflink when the filesystem can,
/// else the data extents only (holes stay holes) with copy_file_range, falling back
/// to read/write.
pub fn copy_data(src: &OwnedFd, dst: &OwnedFd, st: &Stat) -> Result<()> {
    let size = st.st_size as u64;
    if size == 0 {
        return Ok(());
    }
    // Set once the upper's filesystem has refused a reflink: it would again.
    static NO_REFLINK: AtomicBool = AtomicBool::new(false);
    if !NO_REFLINK.load(Ordering::Relaxed) {
        match rfs::ioctl_ficlone(dst, src) {
            Ok(()) => return Ok(()),
            // The upper's filesystem has no reflinks.
            Err(Errno::OPNOTSUPP) | Err(Errno::NOTTY) => NO_REFLINK.store(true, Ordering::Relaxed),
            Err(_) => {} // EXDEV (a lower elsewhere) and the like: copy
        }
    }
    // How far data was written: the size is set when that falls short of it (a final
    // hole, or a source shorter than its stat said).
    let mut written = 0;
    // A file with as many blocks as bytes has no hole to look for.
    if st.st_blocks as u64 * 512 >= size {
        written = copy_range(src, dst, 0, size)?;
    } else {
        let mut off = 0u64;
        while off < size {
            let data = match rfs::seek(src, SeekFrom::Data(off)) {
                Ok(d) => d,
                Err(Errno::NXIO) => break, // only a hole remains
                Err(_) => off,             // no SEEK_DATA: copy everything
            };
            let end = rfs::seek(src, SeekFrom::Hole(data)).unwrap_or(size).min(size);
            written = copy_range(src, dst, data, end)?;
            off = end;
        }
    }
    if written < size {
        rfs::ftruncate(dst, size)?;
    }
    Ok(())
}

/// Data extents at least this long are allocated before they are copied.
const PREALLOCATE_MIN: u64 = 1 << 20;

/// Copies bytes `from..end`; returns where the copy stopped (`end`, or less at the
/// source's end of file).
fn copy_range(src: &OwnedFd, dst: &OwnedFd, mut from: u64, end: u64) -> Result<u64> {
    // Allocating a large extent in one go first makes the copy about a third faster on
    // ext4 (measured with 512 MiB) and fails at once when the upper has no room; for
    // small ones it is one more system call for nothing. Where it is not supported, the
    // copy allocates as it goes.
    if end - from >= PREALLOCATE_MIN {
        match rfs::fallocate(dst, rfs::FallocateFlags::KEEP_SIZE, from, end - from) {
            Ok(()) | Err(Errno::OPNOTSUPP) | Err(Errno::NOSYS) | Err(Errno::INVAL) => {}
            Err(e) => return Err(e),
        }
    }
    while from < end {
        let len = (end - from).min(1 << 30) as usize;
        let mut o_in = from;
        let mut o_out = from;
        match rfs::copy_file_range(src, Some(&mut o_in), dst, Some(&mut o_out), len) {
            Ok(0) => break,
            Ok(n) => from += n as u64,
            Err(Errno::XDEV) | Err(Errno::NOSYS) | Err(Errno::INVAL) | Err(Errno::OPNOTSUPP) => {
                return copy_range_rw(src, dst, from, end)
            }
            Err(e) => return Err(e),
        }
    }
    Ok(from)
}

fn copy_range_rw(src: &OwnedFd, dst: &OwnedFd, mut from: u64, end: u64) -> Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    while from < end {
        let want = ((end - from) as usize).min(buf.len());
        let n = rustix::io::pread(src, &mut buf[..want], from)?;
        if n == 0 {
            break;
        }
        let mut done = 0;
        while done < n {
            done += rustix::io::pwrite(dst, &buf[done..n], from + done as u64)?;
        }
        from += n as u64;
    }
    Ok(from)
}
