//! A layer: one directory of the stack, held as an open directory fd. Every backing
//! operation is relative to that fd: paths inside a layer are resolved with `openat2`
//! and `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` (component by component with `O_NOFOLLOW`
//! where `openat2` is missing), and the last component is always used with `*at` calls
//! that do not follow symlinks. A symlink inside a layer can never lead an operation
//! outside it.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::sync::{Arc, OnceLock};

use lru::LruCache;
use parking_lot::Mutex;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, RawDir, ResolveFlags, Stat, XattrFlags};
use rustix::io::Errno;

pub type Result<T> = std::result::Result<T, Errno>;

/// Set once `openat2` has answered ENOSYS: fall back to component-wise `openat`.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

pub struct Layer {
    /// Unique in this process: what kept listings are keyed by (a layer's position in
    /// the stack may change on a live mount; see stack.rs).
    pub id: usize,
    pub is_upper: bool,
    /// The layer root as given on the command line (for messages).
    pub path: PathBuf,
    root: Arc<OwnedFd>,
    pub dev: u64,
    /// A lower layer's directories opened before, or known not to be there (the
    /// error): a lower never changes, so they are kept, and a lookup through a deep
    /// stack costs one `fstatat` in each layer instead of a walk from its root. The
    /// fds are only used with `*at` calls (never read from: see `read_dir`).
    dirs: Option<Mutex<Lru<PathBuf, KeptDir>>>,
    /// Files of this (upper) layer are opened without updating their access time
    /// (`noatime`), where that is allowed.
    pub noatime: bool,
}

/// A lower directory kept open, or why the layer has none at that path.
type KeptDir = std::result::Result<Arc<OwnedFd>, Errno>;

/// An fd inside a layer (mostly a directory's): the layer root itself, or another
/// the caller holds, or one opened below it.
pub enum DirFd<'a> {
    Borrowed(BorrowedFd<'a>),
    Owned(OwnedFd),
    /// Kept by a lower layer.
    Kept(Arc<OwnedFd>),
}

impl AsFd for DirFd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            DirFd::Borrowed(fd) => *fd,
            DirFd::Owned(fd) => fd.as_fd(),
            DirFd::Kept(fd) => fd.as_fd(),
        }
    }
}

/// Splits a layer-relative path into (parent, name). The root splits into ("", "."),
/// so `*at(dir, name)` calls address the root itself.
pub fn split(rel: &Path) -> (&Path, &OsStr) {
    match (rel.parent(), rel.file_name()) {
        (Some(p), Some(n)) => (p, n),
        _ => (Path::new(""), OsStr::new(".")),
    }
}

impl Layer {
    /// Opens a layer root. A root given as a symlink (as container runtimes do) is
    /// resolved here, once; nothing below it is ever followed.
    pub fn open(is_upper: bool, path: &Path) -> std::result::Result<Layer, String> {
        static IDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let root = rfs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NOENT => format!("{}: no such directory", path.display()),
            Errno::NOTDIR => format!("{}: not a directory", path.display()),
            e => format!("{}: {}", path.display(), std::io::Error::from(e)),
        })?;
        let st = rfs::fstat(&root).map_err(|e| format!("{}: {}", path.display(), std::io::Error::from(e)))?;
        Ok(Layer {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            is_upper,
            path: path.to_path_buf(),
            root: Arc::new(root),
            dev: st.st_dev,
            dirs: None,
            noatime: false,
        })
    }

    /// Keeps up to `cap` directory fds of this (lower) layer from now on.
    pub fn keep_dirs(&mut self, cap: usize) {
        debug_assert!(!self.is_upper);
        self.dirs = Some(Mutex::new(Lru::new(cap)));
    }

    /// Whether two layers are one directory (reached by different paths, e.g. a bind
    /// mount or a symlink).
    pub fn same_dir_as(&self, other: &Layer) -> bool {
        match (rfs::fstat(&self.root), rfs::fstat(&other.root)) {
            (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
            _ => false,
        }
    }

    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Opens the directory at `rel` (relative to the layer root) without following any
    /// symlink on the way. `Ok(None)` when it does not exist or is not a directory.
    pub fn dir(&self, rel: &Path) -> Result<Option<DirFd<'static>>> {
        match self.dir_or_why(rel) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::LOOP) | Err(Errno::XDEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `dir`, telling why there is none as `open_dir` does. A lower layer's directory
    /// comes from (and goes into) the kept ones.
    pub fn dir_or_why(&self, rel: &Path) -> Result<DirFd<'static>> {
        if rel.as_os_str().is_empty() {
            return Ok(DirFd::Kept(self.root.clone()));
        }
        let Some(dirs) = &self.dirs else {
            return self.open_dir(rel).map(DirFd::Owned);
        };
        if let Some(kept) = dirs.lock().get(rel) {
            return kept.clone().map(DirFd::Kept);
        }
        let r = match self.open_dir(rel) {
            Ok(fd) => Ok(Arc::new(fd)),
            Err(e @ (Errno::NOENT | Errno::NOTDIR | Errno::LOOP | Errno::XDEV)) => Err(e),
            // Not an answer about the layer (EMFILE, EACCES...): not kept.
            Err(e) => return Err(e),
        };
        dirs.lock().put(rel.to_path_buf(), r.clone());
        r.map(DirFd::Kept)
    }

    /// Opens the directory at `rel` (not the root) as `dir` does, telling why it could
    /// not: ENOENT (nothing there), ENOTDIR or ELOOP (a non-directory or a symlink).
    /// Without updating its access time where that is allowed, so that it can be read.
    pub fn open_dir(&self, rel: &Path) -> Result<OwnedFd> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY;
        match open_beneath(self.root.as_fd(), rel, flags | OFlags::NOATIME) {
            Err(Errno::PERM) => open_beneath(self.root.as_fd(), rel, flags),
            r => r,
        }
    }

    /// `lstat` of the entry at `rel`. `Ok(None)` when it does not exist. One system
    /// call when absent (an `O_PATH` open of the whole path, no symlink followed on the
    /// way), so probing many layers for a name costs little in those without it.
    pub fn stat(&self, rel: &Path) -> Result<Option<Stat>> {
        let (parent, name) = split(rel);
        if parent.as_os_str().is_empty() {
            return stat_at(self.root.as_fd(), name);
        }
        if self.dirs.is_some() {
            return match self.dir(parent)? {
                Some(d) => stat_at(d.as_fd(), name),
                None => Ok(None),
            };
        }
        match open_beneath(self.root.as_fd(), rel, OFlags::PATH) {
            Ok(fd) => rfs::fstat(&fd).map(Some),
            Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::LOOP) | Err(Errno::XDEV) | Err(Errno::NAMETOOLONG) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Opens the entry at `rel` with `flags` (never following a final symlink).
    /// Never blocks: a fifo found where a regular file was expected is opened
    /// non-blocking (callers check the type).
    pub fn open_file(&self, rel: &Path, flags: OFlags) -> Result<OwnedFd> {
        let flags = flags | OFlags::NONBLOCK;
        let (parent, name) = split(rel);
        let d = self.dir(parent)?.ok_or(Errno::NOENT)?;
        if self.is_upper && !self.noatime {
            rfs::openat(
                d.as_fd(),
                name,
                flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
        } else {
            open_noatime(d.as_fd(), name, flags)
        }
    }
}

/// Opens `name` in `dir` (no symlink followed) without updating its access time, so
/// that reading a lower layer through the mount never changes it. Falls back to a
/// plain open where O_NOATIME is not allowed (a file of another user, unprivileged).
pub fn open_noatime(dir: BorrowedFd<'_>, name: &OsStr, flags: OFlags) -> Result<OwnedFd> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rfs::openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
        Err(Errno::PERM) => rfs::openat(dir, name, flags, Mode::empty()),
        r => r,
    }
}

/// Opens `rel` below `root` with no symlink followed and no escape (`..`) possible.
pub fn open_beneath(root: BorrowedFd<'_>, rel: &Path, flags: OFlags) -> Result<OwnedFd> {
    let flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        // EAGAIN: a rename elsewhere raced with the walk; the kernel asks to try again.
        for _ in 0..64 {
            match rfs::openat2(root, rel, flags, Mode::empty(), how) {
                Err(Errno::AGAIN) => continue,
                Err(Errno::NOSYS) => {
                    NO_OPENAT2.store(true, Ordering::Relaxed);
                    break;
                }
                // A path inside the layer longer than PATH_MAX: walked step by step
                // below, as ext4 lets a process do.
                Err(Errno::NAMETOOLONG) if rel.as_os_str().len() >= libc::PATH_MAX as usize => break,
                r => return r,
            }
        }
    }
    // Fallback: one component at a time, each with O_NOFOLLOW.
    let mut cur: Option<OwnedFd> = None;
    let comps: Vec<_> = rel.components().collect();
    for (i, c) in comps.iter().enumerate() {
        let name = c.as_os_str();
        if name == ".." || name == "." {
            return Err(Errno::XDEV);
        }
        let last = i + 1 == comps.len();
        let f = if last {
            flags
        } else {
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
        };
        let at = cur.as_ref().map(|f| f.as_fd()).unwrap_or(root);
        let next = rfs::openat(at, name, f, Mode::empty())?;
        cur = Some(next);
    }
    cur.ok_or(Errno::INVAL)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`, with absence as `None`. A name too long
/// to exist (a whiteout for a 252+ byte name) is absent too.
pub fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Option<Stat>> {
    match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::NAMETOOLONG) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

type Entries = Vec<(OsString, FileType, u64)>;

/// Reads all entries of a directory (except `.` and `..`): (name, d_type, d_ino).
pub fn read_dir(dir: BorrowedFd<'_>) -> Result<Entries> {
    // A fresh fd so the offset of `dir` is untouched and concurrent listings don't mix.
    let fd = open_noatime(dir, OsStr::new("."), OFlags::RDONLY | OFlags::DIRECTORY)?;
    Ok(read_entries(fd.as_fd(), usize::MAX)?.unwrap_or_default())
}

/// Reads the entries of the directory open as `fd` from its offset (a fresh fd of the
/// caller's): `None` as soon as there are more than `limit`.
fn read_entries(fd: BorrowedFd<'_>, limit: usize) -> Result<Option<Entries>> {
    // One buffer per thread: lookups in deep stacks read many small directories.
    thread_local! {
        static BUF: std::cell::RefCell<Vec<MaybeUninit<u8>>> =
            std::cell::RefCell::new(vec![MaybeUninit::uninit(); 32 * 1024]);
    }
    BUF.with_borrow_mut(|buf| {
        let mut raw = RawDir::new(fd, &mut buf[..]);
        let mut out = Vec::new();
        while let Some(ent) = raw.next() {
            let ent = ent?;
            let name = ent.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            if out.len() == limit {
                return Ok(None);
            }
            out.push((OsStr::from_bytes(name).to_os_string(), ent.file_type(), ent.ino()));
        }
        Ok(Some(out))
    })
}

/// `/proc/self/fd/N` path for xattr calls on an `O_PATH` fd (works for symlinks too).
pub fn proc_path(fd: BorrowedFd<'_>) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Opens an entry for xattr access: `O_PATH` so that symlinks, fifos and devices work.
pub fn open_path(dir: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd> {
    rfs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// chmod of `name` in `dir` that never follows a symlink (ELOOP on one): what
/// `fchmodat(AT_SYMLINK_NOFOLLOW)` would do where the kernel has no fchmodat2.
pub fn chmod_nofollow(dir: BorrowedFd<'_>, name: &OsStr, mode: Mode) -> Result<()> {
    let fd = open_path(dir, name)?;
    if file_type(&rfs::fstat(&fd)?) == FileType::Symlink {
        return Err(Errno::LOOP);
    }
    rfs::chmod(proc_path(fd.as_fd()), mode)
}

/// Value of one xattr of an `O_PATH` fd (asked through its /proc path); `Ok(None)`
/// when absent.
pub fn get_xattr(fd: BorrowedFd<'_>, name: &OsStr) -> Result<Option<Vec<u8>>> {
    xattr_value(fd, name, false)
}

fn xattr_value(fd: BorrowedFd<'_>, name: &OsStr, direct: bool) -> Result<Option<Vec<u8>>> {
    let p = proc_path(fd);
    let mut buf = vec![0u8; 256];
    loop {
        let r = if direct {
            rfs::fgetxattr(fd, name, &mut buf[..])
        } else {
            rfs::getxattr(&p, name, &mut buf[..])
        };
        match r {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(Errno::RANGE) => {
                let n = if direct {
                    rfs::fgetxattr_query(fd, name)?
                } else {
                    rfs::getxattr_query(&p, name)?
                };
                buf.resize(n.max(buf.len() * 2), 0);
            }
            Err(Errno::NODATA) | Err(Errno::NOTSUP) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// Names of all xattrs of an `O_PATH` fd (asked through its /proc path).
pub fn list_xattrs(fd: BorrowedFd<'_>) -> Result<Vec<OsString>> {
    xattr_names(fd, false)
}

fn xattr_names(fd: BorrowedFd<'_>, direct: bool) -> Result<Vec<OsString>> {
    let p = proc_path(fd);
    let mut buf = vec![0u8; 1024];
    let n = loop {
        let r = if direct {
            rfs::flistxattr(fd, &mut buf[..])
        } else {
            rfs::listxattr(&p, &mut buf[..])
        };
        match r {
            Ok(n) => break n,
            Err(Errno::RANGE) => {
                let n = if direct {
                    rfs::flistxattr_query(fd)?
                } else {
                    rfs::listxattr_query(&p)?
                };
                buf.resize(n.max(buf.len() * 2), 0);
            }
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
    };
    Ok(buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| OsStr::from_bytes(s).to_os_string())
        .collect())
}

/// An entry's fd for its xattrs: open for reading where that could be done (asked
/// directly), else `O_PATH` (asked through its /proc path).
pub struct XattrFd<'a> {
    pub fd: DirFd<'a>,
    pub direct: bool,
}

impl XattrFd<'_> {
    pub fn get(&self, name: &OsStr) -> Result<Option<Vec<u8>>> {
        xattr_value(self.fd.as_fd(), name, self.direct)
    }

    pub fn list(&self) -> Result<Vec<OsString>> {
        xattr_names(self.fd.as_fd(), self.direct)
    }

    pub fn set(&self, name: &OsStr, value: &[u8], flags: XattrFlags) -> Result<()> {
        match self.direct {
            true => rfs::fsetxattr(self.fd.as_fd(), name, value, flags),
            false => set_xattr(self.fd.as_fd(), name, value, flags),
        }
    }

    pub fn remove(&self, name: &OsStr) -> Result<()> {
        match self.direct {
            true => rfs::fremovexattr(self.fd.as_fd(), name),
            false => remove_xattr(self.fd.as_fd(), name),
        }
    }
}

pub fn set_xattr(fd: BorrowedFd<'_>, name: &OsStr, value: &[u8], flags: XattrFlags) -> Result<()> {
    rfs::setxattr(proc_path(fd), name, value, flags)
}

pub fn remove_xattr(fd: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    rfs::removexattr(proc_path(fd), name)
}

/// One directory of a lower layer, read once: its entries in directory order and by
/// name, and whether it is marked opaque. Lower layers never change, so listings are
/// kept (see `Listings`) and a lookup through many layers costs no system call in
/// the layers that do not hold the name.
pub struct Listing {
    pub entries: Vec<ListEntry>,
    index: HashMap<OsString, usize>,
    /// Holds `.wh..wh..opq`.
    pub opaque_aufs: bool,
    /// Carries `trusted.overlay.opaque` or `user.overlay.opaque` = `y`.
    pub opaque_xattr: bool,
    /// Holds every entry (a directory too large for a lookup to keep has none).
    pub complete: bool,
}

pub struct ListEntry {
    pub name: OsString,
    /// From the directory entry; `Unknown` when the filesystem does not say.
    pub kind: FileType,
    pub ino: u64,
    stat: OnceLock<Stat>,
}

impl Listing {
    fn read(dir: BorrowedFd<'_>) -> Result<Listing> {
        Ok(Listing::new(read_dir(dir)?, dir))
    }

    /// The listing of `entries`, read from the directory open as `dir`.
    fn new(read: Entries, dir: BorrowedFd<'_>) -> Listing {
        let mut entries = Vec::new();
        let mut index = HashMap::new();
        for (name, kind, ino) in read {
            index.insert(name.clone(), entries.len());
            entries.push(ListEntry {
                name,
                kind,
                ino,
                stat: OnceLock::new(),
            });
        }
        let opaque_aufs = index.contains_key(OsStr::new(crate::whiteout::OPAQUE));
        let opaque_xattr = crate::whiteout::has_opaque_xattr(dir);
        Listing {
            entries,
            index,
            opaque_aufs,
            opaque_xattr,
            complete: true,
        }
    }

    /// No entries, only whether the directory open as `dir` is opaque.
    fn incomplete(dir: BorrowedFd<'_>) -> Result<Listing> {
        Ok(Listing {
            entries: Vec::new(),
            index: HashMap::new(),
            opaque_aufs: stat_at(dir, OsStr::new(crate::whiteout::OPAQUE))?.is_some(),
            opaque_xattr: crate::whiteout::has_opaque_xattr(dir),
            complete: false,
        })
    }

    pub fn get(&self, name: &OsStr) -> Option<&ListEntry> {
        self.index.get(name).map(|i| &self.entries[*i])
    }
}

impl ListEntry {
    /// The entry's lstat, taken once.
    pub fn stat(&self, layer: &Layer, parent: &Path) -> Result<Stat> {
        if let Some(st) = self.stat.get() {
            return Ok(*st);
        }
        let st = layer.stat(&parent.join(&self.name))?.ok_or(Errno::NOENT)?;
        Ok(*self.stat.get_or_init(|| st))
    }
}

/// Listings of lower-layer directories (and the knowledge that a layer has no
/// directory at a path), least recently used dropped first.
pub struct Listings {
    lists: Mutex<Lru<ListingKey, Option<Arc<Listing>>>>,
}

/// An LRU map of at most `cap` entries that grows as it fills (`LruCache::new` sizes
/// its table for `cap` at once, and each first insert then faults in a fresh page:
/// about a microsecond a lookup, per layer, on a new mount).
struct Lru<K, V> {
    map: LruCache<K, V>,
    cap: usize,
}

impl<K: std::hash::Hash + Eq, V> Lru<K, V> {
    fn new(cap: usize) -> Lru<K, V> {
        Lru {
            map: LruCache::unbounded(),
            cap: cap.max(1),
        }
    }

    fn get<Q: std::hash::Hash + Eq + ?Sized>(&mut self, k: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
    {
        self.map.get(k)
    }

    fn put(&mut self, k: K, v: V) {
        self.map.put(k, v);
        while self.map.len() > self.cap {
            self.map.pop_lru();
        }
    }
}

/// (layer index, directory path in it).
type ListingKey = (usize, PathBuf);

/// The largest directory a lookup keeps the listing of (see `Listings::learn`).
pub const LEARN_MAX: usize = 512;

impl Listings {
    pub fn new(dirs: usize) -> Listings {
        Listings {
            lists: Mutex::new(Lru::new(dirs)),
        }
    }

    /// What is kept for directory `rel` of lower layer `layer`, without reading it:
    /// `None` when nothing is kept yet.
    pub fn cached(&self, layer: &Layer, rel: &Path) -> Option<Option<Arc<Listing>>> {
        self.lists.lock().get(&(layer.id, rel.to_path_buf())).cloned()
    }

    /// Reads and keeps the listing of lower directory `rel` of `layer` when it has at
    /// most `LEARN_MAX` entries: the names below it then cost no system call in that
    /// layer. A larger one is kept as an incomplete listing (its opacity only), so that
    /// it is not read again. `None` when the layer has no directory there.
    pub fn learn(&self, layer: &Layer, rel: &Path) -> Result<Option<Arc<Listing>>> {
        debug_assert!(!layer.is_upper);
        let dir = match layer.dir_or_why(rel) {
            Ok(d) => d,
            Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::LOOP) | Err(Errno::XDEV) => return Ok(None),
            Err(e) => return Err(e),
        };
        // Read from a fresh fd: the kept one is shared.
        let fd = open_noatime(dir.as_fd(), OsStr::new("."), OFlags::RDONLY | OFlags::DIRECTORY)?;
        let l = Arc::new(match read_entries(fd.as_fd(), LEARN_MAX)? {
            Some(entries) => Listing::new(entries, fd.as_fd()),
            None => Listing::incomplete(fd.as_fd())?,
        });
        self.lists.lock().put((layer.id, rel.to_path_buf()), Some(l.clone()));
        Ok(Some(l))
    }

    /// The listing of directory `rel` of lower layer `layer`; `None` when the layer has
    /// no directory there.
    pub fn get(&self, layer: &Layer, rel: &Path) -> Result<Option<Arc<Listing>>> {
        debug_assert!(!layer.is_upper);
        let key = (layer.id, rel.to_path_buf());
        if let Some(l) = self
            .lists
            .lock()
            .get(&key)
            .filter(|l| l.as_ref().is_none_or(|l| l.complete))
        {
            return Ok(l.clone());
        }
        let l = match layer.dir(rel)? {
            Some(dir) => Some(Arc::new(Listing::read(dir.as_fd())?)),
            None => None,
        };
        self.lists.lock().put(key, l.clone());
        Ok(l)
    }
}
