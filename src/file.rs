//! Open files and their I/O: open (copying up on the first open for writing), read,
//! write, fsync, fallocate, lseek SEEK_DATA/SEEK_HOLE, copy_file_range.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use rustix::fs::{self as rfs, FallocateFlags, Mode, OFlags, SeekFrom};
use rustix::io::Errno;

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Weak;

use fuser::{BackingId, FopenFlags};
use rustix::fs::FileType;

use crate::attr::Writer;
use crate::inode::Node;
use crate::layer::{split, Result};
use crate::union::Union;

pub struct Handle {
    pub node: Arc<Node>,
    /// The backing file; replaced when a pending handle's data comes up (a new inode).
    fd: RwLock<Arc<OwnedFd>>,
    /// The flags it was opened with (to open it again).
    flags: OFlags,
    pub writable: bool,
    /// Reading a lower layer's file (its data never changes while the mount lives);
    /// cleared when the handle follows the file's copy into the upper.
    pub lower: AtomicBool,
    /// The kernel's reference to `fd` when I/O passes straight through to it.
    backing: Mutex<Option<Arc<BackingId>>>,
    /// Counted among its node's opens that do not pass through (cached or direct).
    counted: AtomicBool,
    /// The node's `data_moves` when `fd` was opened.
    moves: AtomicU64,
    /// The process that opened it (named when a layer it reads cannot be removed).
    pub opener: std::sync::atomic::AtomicU32,
    /// Opened for writing only on a metadata-only copy: its data comes up from the
    /// lower layer at the first write (a `touch` or an open that truncates never
    /// copies it).
    pub pending: AtomicBool,
}

#[derive(Default)]
pub struct Handles {
    map: Mutex<HashMap<u64, Arc<Handle>>>,
    next: AtomicU64,
    /// Per node, how its open files do I/O. The kernel takes one backing file per
    /// inode at a time, and fails (EIO) a passthrough open while another open of the
    /// inode is cached, and any other open while the inode passes through. It checks
    /// as the opener takes the answer, which may be after later opens were answered:
    /// so a node passes through only once no other kind of open is left at all.
    io: Mutex<HashMap<u64, NodeIo>>,
}

#[derive(Default)]
struct NodeIo {
    /// The backing file I/O passes through to, and its (st_dev, st_ino).
    backing: Option<(Weak<BackingId>, (u64, u64))>,
    /// Open handles that do not pass through (cached or direct).
    others: usize,
}

impl NodeIo {
    fn live_backing(&self) -> Option<(Arc<BackingId>, (u64, u64))> {
        let (w, k) = self.backing.as_ref()?;
        Some((w.upgrade()?, *k))
    }
}

/// How the kernel does I/O on an open file.
pub enum Io {
    /// Straight to the backing file (FUSE passthrough).
    Passthrough(Arc<BackingId>),
    /// Through the daemon, bypassing the page cache (the inode already passes
    /// through to another backing file).
    Direct,
    /// Through the daemon and the page cache; `keep_cache` for immutable lower data.
    Cached { keep_cache: bool },
}

impl Handles {
    pub fn insert(&self, h: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.map.lock().insert(fh, Arc::new(h));
        fh
    }

    pub fn get(&self, fh: u64) -> Result<Arc<Handle>> {
        self.map.lock().get(&fh).cloned().ok_or(Errno::BADF)
    }

    /// Every open handle.
    pub fn all(&self) -> Vec<Arc<Handle>> {
        self.map.lock().values().cloned().collect()
    }

    /// Records which process opened handle `fh`.
    pub fn note_opener(&self, fh: u64, pid: u32) {
        if let Some(h) = self.map.lock().get(&fh) {
            h.opener.store(pid, Ordering::Relaxed);
        }
    }

    /// Some open handle of node `ino`.
    pub fn any_for(&self, ino: u64) -> Option<Arc<Handle>> {
        self.map.lock().values().find(|h| h.node.ino == ino).cloned()
    }

    pub fn remove(&self, fh: u64) {
        let Some(h) = self.map.lock().remove(&fh) else { return };
        tracing::debug!("release of handle {fh} (node {:#x})", h.node.ino);
        let had_backing = h.backing.lock().take().is_some();
        let counted = h.counted.load(Ordering::Relaxed);
        if had_backing || counted {
            let mut io = self.io.lock();
            if let Some(n) = io.get_mut(&h.node.ino) {
                if counted {
                    n.others -= 1;
                }
                if n.live_backing().is_none() {
                    n.backing = None;
                }
                if n.others == 0 && n.backing.is_none() {
                    io.remove(&h.node.ino);
                }
            }
        }
    }
}

impl Io {
    /// The open flags the kernel gets with this mode. No FLUSH on close: strata keeps
    /// no state to flush, and POSIX locks are the kernel's own.
    pub fn flags(&self) -> FopenFlags {
        FopenFlags::FOPEN_NOFLUSH
            | match self {
                Io::Passthrough(_) | Io::Cached { keep_cache: false } => FopenFlags::empty(),
                Io::Direct => FopenFlags::FOPEN_DIRECT_IO,
                Io::Cached { keep_cache: true } => FopenFlags::FOPEN_KEEP_CACHE,
            }
    }
}

impl Handle {
    pub fn fd(&self) -> Arc<OwnedFd> {
        self.fd.read().clone()
    }
}

fn handle(node: &Arc<Node>, fd: OwnedFd, flags: OFlags, writable: bool, lower: bool) -> Handle {
    Handle {
        node: node.clone(),
        fd: RwLock::new(Arc::new(fd)),
        flags,
        writable,
        lower: AtomicBool::new(lower),
        backing: Mutex::new(None),
        pending: AtomicBool::new(false),
        opener: std::sync::atomic::AtomicU32::new(0),
        counted: AtomicBool::new(false),
        moves: AtomicU64::new(0),
    }
}

/// Fault injection for the tests: `STRATA_TEST_PAUSE_IO_MODE_MS` holds the choice of
/// I/O mode for an open that cannot pass through (of a lower file, or of a metadata-only
/// copy), so that another request can complete a copy and pass I/O through to it
/// meanwhile.
fn pause_before_io_mode() {
    static MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    crate::union::pause_for_tests("STRATA_TEST_PAUSE_IO_MODE_MS", &MS);
}

/// Open flags passed on to the backing file.
fn backing_flags(flags: i32) -> OFlags {
    let keep = libc::O_ACCMODE | libc::O_APPEND | libc::O_TRUNC | libc::O_DIRECT | libc::O_SYNC | libc::O_DSYNC;
    OFlags::from_bits_retain((flags & keep) as u32)
}

pub fn wants_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

impl Union {
    /// Opens a file node; the first open for writing copies it up.
    pub fn open(&self, node: &Arc<Node>, flags: i32) -> Result<(u64, bool)> {
        let write = wants_write(flags);
        // Write-only opens of regular files leave the data below until it is written.
        let lazy = flags & libc::O_ACCMODE == libc::O_WRONLY && node.kind() == FileType::RegularFile;
        if write && !self.writable {
            return Err(Errno::ROFS);
        }
        // A node's names move only under the namespace lock (renames hold it alone):
        // held here, the name used is the node's own, not what a rename just put there.
        let _ns = self.ns.read_recursive();
        if write {
            if flags & libc::O_TRUNC != 0 {
                self.copy_up_truncated(node)?;
            } else if lazy {
                self.copy_up_meta(node)?;
            } else {
                self.copy_up(node)?;
            }
        }
        let moves = node.data_moves.load(Ordering::Acquire);
        let (fd, lower) = self.open_data(node, backing_flags(flags), write)?;
        // The kernel opens regular files only. A name that now leads elsewhere (a fifo
        // or device in its place) must not be served as this node's data.
        if rfs::fstat(&fd).map(|st| crate::layer::file_type(&st))? != FileType::RegularFile {
            tracing::warn!(
                "node {:#x} ({:?}): its backing file is no longer a regular file",
                node.ino,
                node.paths()
            );
            return Err(Errno::STALE);
        }
        // Asked of the file opened, not of the name: another request may complete the
        // metadata-only copy meanwhile, and a handle on the completed file must not wait
        // for a fill (nor keep the kernel from passing I/O through to the file).
        let pending = write && lazy && !lower && crate::copy_up::is_metacopy(fd.as_fd())?;
        let h = handle(node, fd, backing_flags(flags) & !OFlags::TRUNC, write, lower);
        h.pending.store(pending, Ordering::Relaxed);
        h.moves.store(moves, Ordering::Relaxed);
        let fh = self.files.insert(h);
        Ok((fh, lower))
    }

    /// Opens the file holding `node`'s data: its top-most copy, or for reading, the
    /// lower file a metadata-only copy takes its data from, or the copy in the upper
    /// of a lower file with several names. Returns the fd and whether it is a lower
    /// layer's file.
    fn open_data(&self, node: &Node, flags: OFlags, write: bool) -> Result<(OwnedFd, bool)> {
        let mut top = node.top();
        let mut path = node.path()?;
        let mut fd = self.stack().layers[top].open_file(&path, flags)?;
        if !write
            && self.stack().layers[top].is_upper
            && node.kind() == FileType::RegularFile
            && crate::copy_up::is_metacopy(fd.as_fd())?
        {
            // A metadata-only copy reads its data from the lower layer.
            let (parent, name) = split(&path);
            let dir = self.stack().layers[top].dir(parent)?.ok_or(Errno::NOENT)?;
            if let Some((l, origin)) = self.metacopy_origin(dir.as_fd(), name, &path)? {
                top = l;
                path = origin;
                fd = self.stack().layers[top].open_file(&path, flags)?;
            }
        }
        let mut lower = !self.stack().layers[top].is_upper;
        if lower && node.kind() == FileType::RegularFile {
            // Another name of this lower file was copied up: read that copy.
            let (f, copy) = self.redirect_to_copy(fd, flags)?;
            fd = f;
            lower = !copy;
        }
        Ok((fd, lower))
    }

    /// Brings up the data of a pending handle's file before it is changed.
    pub fn filled(&self, h: &Handle) -> Result<()> {
        if h.pending.load(Ordering::Relaxed) {
            self.fill_data(&h.node)?;
            // The data came up as a new inode: write to that one.
            let fd = self.stack().layers[0].open_file(&h.node.path()?, h.flags)?;
            *h.fd.write() = Arc::new(fd);
            h.pending.store(false, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Registers the fd a create just opened as a handle.
    pub fn adopt_handle(&self, node: &Arc<Node>, fd: Option<OwnedFd>, flags: i32) -> u64 {
        match fd {
            Some(fd) => self.files.insert(handle(
                node,
                fd,
                backing_flags(flags) & !OFlags::TRUNC,
                wants_write(flags),
                false,
            )),
            None => 0,
        }
    }

    /// Whether some open file of node `ino` passes its I/O straight to the backing
    /// file. The kernel then does not see writes through a shared mapping (nor the
    /// times they set), so it must not keep the node's attributes: they are answered
    /// with no cache time while such a file is open.
    pub fn passes_through(&self, ino: u64) -> bool {
        self.passthrough.load(Ordering::Relaxed)
            && self
                .files
                .io
                .lock()
                .get(&ino)
                .is_some_and(|n| n.live_backing().is_some())
    }

    /// Chooses how the kernel does I/O on handle `fh`: passthrough to its backing file
    /// when the kernel allows it (`open_backing` registers the fd with the kernel),
    /// else through the daemon, cached or direct, so that the modes of the open files
    /// of one inode never clash.
    pub fn io_mode(&self, fh: u64, open_backing: impl FnOnce(BorrowedFd<'_>) -> std::io::Result<BackingId>) -> Io {
        let Ok(h) = self.files.get(fh) else {
            return Io::Cached { keep_cache: false };
        };
        let mut open_backing = Some(open_backing);
        let mut caught_up = false;
        loop {
            // Lower files are read through the daemon (and then the page cache): the
            // kernel opens a passthrough backing file with the caller's flags, without
            // O_NOATIME, and a read would change the lower file's access time. Writes of
            // a pending handle must come through the daemon, which fills the data first.
            let pass = self.passthrough.load(Ordering::Relaxed)
                && h.node.kind() == FileType::RegularFile
                && !h.lower.load(Ordering::Relaxed)
                && !h.pending.load(Ordering::Relaxed);
            if !pass && !caught_up {
                pause_before_io_mode();
            }
            let fd = h.fd();
            let key = rfs::fstat(&*fd).map(|st| (st.st_dev, st.st_ino));
            let mut io = self.files.io.lock();
            let n = io.entry(h.node.ino).or_default();
            let live = n.live_backing();
            if live.is_some() && !pass && !caught_up && self.passthrough.load(Ordering::Relaxed) {
                // The inode passes through to its completed copy, and the kernel takes
                // no other mode for it now. This handle was opened before the copy was
                // completed (on a metadata-only copy still to fill, or on the lower
                // file): move it to the copy, then decide again. Deciding under the
                // lock means no backing can appear between the check and the answer.
                drop(io);
                caught_up = true;
                if h.pending.load(Ordering::Relaxed) {
                    let _ = self.filled(&h);
                }
                let _ = self.read_fd(&h);
                continue;
            }
            let count = |n: &mut NodeIo| {
                n.others += 1;
                h.counted.store(true, Ordering::Relaxed);
            };
            let mode = match (pass, key, live) {
                (true, Ok(key), Some((id, k))) if k == key => {
                    *h.backing.lock() = Some(id.clone());
                    Io::Passthrough(id)
                }
                (true, Ok(key), None) if n.others == 0 => match open_backing.take().expect("chosen once")(fd.as_fd()) {
                    Ok(id) => {
                        let id = Arc::new(id);
                        n.backing = Some((Arc::downgrade(&id), key));
                        *h.backing.lock() = Some(id.clone());
                        Io::Passthrough(id)
                    }
                    Err(e) => {
                        tracing::warn!("FUSE passthrough unavailable ({e}); serving I/O through the daemon");
                        self.passthrough.store(false, Ordering::Relaxed);
                        count(n);
                        Io::Cached {
                            keep_cache: h.lower.load(Ordering::Relaxed),
                        }
                    }
                },
                // Other opens of this inode that do not pass through (it cannot pass
                // through until they are gone), or another backing file: neutral direct I/O.
                (true, _, _) | (false, _, Some(_)) => {
                    count(n);
                    Io::Direct
                }
                (false, _, None) => {
                    count(n);
                    Io::Cached {
                        keep_cache: h.lower.load(Ordering::Relaxed),
                    }
                }
            };
            tracing::debug!(
                "io mode of handle {fh} (node {:#x}, pending {}, lower {}): {} (backing {:?}, other opens {})",
                h.node.ino,
                h.pending.load(Ordering::Relaxed),
                h.lower.load(Ordering::Relaxed),
                match &mode {
                    Io::Passthrough(_) => "passthrough",
                    Io::Direct => "direct",
                    Io::Cached { .. } => "cached",
                },
                n.backing.as_ref().map(|b| b.1),
                n.others
            );
            if n.others == 0 && n.backing.is_none() {
                io.remove(&h.node.ino);
            }
            return mode;
        }
    }

    /// The fd to read handle `fh` through. A handle opened on a lower file before the
    /// file was copied up follows it to the copy (reopened there once), so it sees
    /// what is written to the file after its open, as on a plain filesystem.
    pub fn read_fd(&self, h: &Handle) -> Result<Arc<OwnedFd>> {
        if h.lower.load(Ordering::Relaxed) {
            let moves = h.node.data_moves.load(Ordering::Acquire);
            if moves != h.moves.load(Ordering::Relaxed) {
                let (fd, lower) = self.open_data(&h.node, h.flags, false)?;
                *h.fd.write() = Arc::new(fd);
                h.lower.store(lower, Ordering::Relaxed);
                h.moves.store(moves, Ordering::Relaxed);
            }
        }
        Ok(h.fd())
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let fd = self.read_fd(&*self.files.get(fh)?)?;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match rustix::io::pread(&*fd, &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// Writes through the daemon. Linux drops a file's capabilities at any write, and
    /// its set-id bits at a write by someone without CAP_FSETID (`kill`: the kernel
    /// says so with the write). The kernel leaves both to strata for the writes it sends
    /// (see `killpriv`), and is told when the mode changed.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8], kill: Option<Writer>) -> Result<usize> {
        let h = self.files.get(fh)?;
        self.filled(&h)?;
        let fd = h.fd();
        if !h.node.no_xattrs.load(Ordering::Relaxed) {
            match rfs::fremovexattr(&*fd, "security.capability") {
                Ok(()) | Err(Errno::NODATA) | Err(Errno::NOTSUP) => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(who) = kill {
            if let Some(mode) = self.killed_mode(&rfs::fstat(&*fd)?, who) {
                rfs::fchmod(&*fd, Mode::from_raw_mode(mode))?;
                if let Some(n) = self.notifier.get() {
                    // Attributes only (a negative offset): no page is touched.
                    let _ = n.inval_inode(fuser::INodeNo(h.node.ino), -1, 0);
                }
            }
        }
        rustix::io::pwrite(&*fd, data, offset)
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        let h = self.files.get(fh)?;
        if self.cfg.volatile {
            return Ok(());
        }
        if datasync {
            rfs::fdatasync(&*h.fd())
        } else {
            rfs::fsync(&*h.fd())
        }
    }

    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> Result<()> {
        let h = self.files.get(fh)?;
        self.filled(&h)?;
        rfs::fallocate(&*h.fd(), FallocateFlags::from_bits_retain(mode as u32), offset, len)
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<u64> {
        let h = self.files.get(fh)?;
        let pos = match whence {
            libc::SEEK_DATA => SeekFrom::Data(offset as u64),
            libc::SEEK_HOLE => SeekFrom::Hole(offset as u64),
            libc::SEEK_SET => SeekFrom::Start(offset as u64),
            libc::SEEK_END => SeekFrom::End(offset),
            _ => return Err(Errno::INVAL),
        };
        rfs::seek(&*self.read_fd(&h)?, pos)
    }

    pub fn copy_file_range(&self, fh_in: u64, off_in: u64, fh_out: u64, off_out: u64, len: u64) -> Result<usize> {
        let a = self.files.get(fh_in)?;
        let b = self.files.get(fh_out)?;
        self.filled(&b)?;
        let (mut i, mut o) = (off_in, off_out);
        rfs::copy_file_range(&*self.read_fd(&a)?, Some(&mut i), &*b.fd(), Some(&mut o), len as usize)
    }
}
