//! What each FUSE operation does: one function per operation, mapping its arguments
//! to the union's methods and returning a plain `Answer`. Both transports (fuser's
//! classic loop in fs.rs and the io_uring queues in uring.rs) call these, so no
//! operation is written twice. Directory listings are written into a `DirSink`,
//! which each transport implements over its own reply buffer.

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::Arc;

use fuser::{BackingId, FileAttr, FopenFlags, INodeNo};
use tracing::debug;

use crate::attr::{fuse_kind, negative_attr, SetAttr, Writer};
use crate::dir::{Caller, NewEntry};
use crate::file::Io;
use crate::layer::Result;
use crate::union::Union;

/// Who asked: the caller's ids and process, from the request header.
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// The caller's umask, sent with create, mkdir and mknod (0 elsewhere).
    pub umask: u32,
}

impl Ctx {
    fn caller(&self) -> Caller {
        Caller {
            uid: self.uid,
            gid: self.gid,
            umask: self.umask,
        }
    }
    fn writer(&self) -> Writer {
        Writer {
            uid: self.uid,
            gid: self.gid,
            pid: self.pid,
        }
    }
}

/// An open file's handle, the kernel's I/O flags for it and, for passthrough, the
/// backing file it goes to.
pub struct Opened {
    pub fh: u64,
    pub flags: FopenFlags,
    pub backing: Option<Arc<BackingId>>,
}

/// The answer to one request, before a transport encodes it.
pub enum Answer {
    /// An errno (positive).
    Err(i32),
    Empty,
    Entry(FileAttr),
    Attr(FileAttr),
    /// Bytes: read data, a link target, an xattr value or name list.
    Data(Vec<u8>),
    /// The size an xattr value or list would take (asked with size 0).
    XattrSize(u32),
    Open(Opened),
    Create(FileAttr, Opened),
    Written(u32),
    Statfs(rustix::fs::StatVfs),
    Offset(i64),
}

impl Answer {
    fn err(e: rustix::io::Errno, what: &str) -> Answer {
        debug!("{} -> {}", what, e);
        Answer::Err(e.raw_os_error())
    }
}

/// Unwraps a result or returns its error as the answer, logged at debug level.
macro_rules! check {
    ($op:expr, $what:expr) => {
        match $op {
            Ok(v) => v,
            Err(e) => return Answer::err(e, $what),
        }
    };
}

/// Where a directory listing goes: `add` returns true when the reply is full (the
/// entry was not added).
pub trait DirSink {
    fn add(&mut self, ino: u64, off: u64, kind: fuser::FileType, name: &OsStr) -> bool;
}

/// Where a listing with attributes goes (readdirplus); true when full.
pub trait DirPlusSink {
    fn add(&mut self, off: u64, name: &OsStr, ttl: std::time::Duration, attr: &FileAttr) -> bool;
}

/// Opens a passthrough backing file for an fd (the transport owns /dev/fuse).
pub type OpenBacking<'a> = &'a mut dyn FnMut(BorrowedFd<'_>) -> std::io::Result<BackingId>;

fn entry(u: &Union, r: Result<(Arc<crate::inode::Node>, rustix::fs::Stat)>, what: &str) -> Answer {
    let (node, st) = check!(r, what);
    Answer::Entry(u.attr(node.ino, &st))
}

pub fn lookup(u: &Union, parent: u64, name: &OsStr) -> Answer {
    let _in = u.enter();
    debug!("lookup {} {:?}", parent, name);
    match u.lookup(parent, name) {
        // Remembered by the kernel as absent: names only appear through this mount.
        Err(rustix::io::Errno::NOENT) => Answer::Entry(negative_attr()),
        r => entry(u, r, "lookup"),
    }
}

pub fn forget(u: &Union, ino: u64, nlookup: u64) {
    u.table.forget(ino, nlookup);
}

pub fn getattr(u: &Union, ino: u64, fh: Option<u64>) -> Answer {
    let _in = u.enter();
    let node = check!(u.node(ino), "getattr");
    let st = check!(u.getattr(&node, fh), "getattr");
    Answer::Attr(u.attr(node.ino, &st))
}

pub fn setattr(u: &Union, ctx: Ctx, ino: u64, sa: SetAttr) -> Answer {
    let _in = u.enter();
    debug!(
        "setattr {} mode={:?} uid={:?} gid={:?} size={:?}",
        ino, sa.mode, sa.uid, sa.gid, sa.size
    );
    let node = check!(u.node(ino), "setattr");
    let st = check!(u.setattr(&node, sa, ctx.writer()), "setattr");
    Answer::Attr(u.attr(node.ino, &st))
}

pub fn readlink(u: &Union, ino: u64) -> Answer {
    let _in = u.enter();
    let node = check!(u.node(ino), "readlink");
    Answer::Data(check!(u.readlink(&node), "readlink"))
}

pub fn mknod(u: &Union, ctx: Ctx, parent: u64, name: &OsStr, mode: u32, rdev: u32) -> Answer {
    let _in = u.enter();
    debug!("mknod {} {:?} {mode:o}", parent, name);
    let new = NewEntry::Node {
        mode,
        rdev: rdev as u64,
    };
    let r = u.create_entry(parent, name, new, ctx.caller());
    entry(u, r.map(|(n, s, _)| (n, s)), "mknod")
}

pub fn mkdir(u: &Union, ctx: Ctx, parent: u64, name: &OsStr, mode: u32) -> Answer {
    let _in = u.enter();
    debug!("mkdir {} {:?} {mode:o}", parent, name);
    let r = u.create_entry(parent, name, NewEntry::Dir { mode }, ctx.caller());
    entry(u, r.map(|(n, s, _)| (n, s)), "mkdir")
}

pub fn remove(u: &Union, parent: u64, name: &OsStr, dir: bool) -> Answer {
    let _in = u.enter();
    let what = if dir { "rmdir" } else { "unlink" };
    debug!("{what} {} {:?}", parent, name);
    check!(u.remove(parent, name, dir), what);
    Answer::Empty
}

pub fn symlink(u: &Union, ctx: Ctx, parent: u64, name: &OsStr, target: &Path) -> Answer {
    let _in = u.enter();
    debug!("symlink {} {:?} -> {:?}", parent, name, target);
    let r = u.create_entry(parent, name, NewEntry::Symlink { target }, ctx.caller());
    entry(u, r.map(|(n, s, _)| (n, s)), "symlink")
}

pub fn rename(u: &Union, parent: u64, name: &OsStr, newparent: u64, newname: &OsStr, flags: u32) -> Answer {
    let _in = u.enter();
    debug!(
        "rename {} {:?} -> {} {:?} flags={}",
        parent, name, newparent, newname, flags
    );
    check!(u.rename(parent, name, newparent, newname, flags), "rename");
    Answer::Empty
}

pub fn link(u: &Union, ino: u64, newparent: u64, newname: &OsStr) -> Answer {
    let _in = u.enter();
    debug!("link {} -> {} {:?}", ino, newparent, newname);
    entry(u, u.link(ino, newparent, newname), "link")
}

fn opened(u: &Union, fh: u64, open_backing: OpenBacking<'_>) -> Opened {
    let io = u.io_mode(fh, open_backing);
    let flags = io.flags();
    let backing = match io {
        Io::Passthrough(id) => Some(id),
        _ => None,
    };
    Opened { fh, flags, backing }
}

pub fn open(u: &Union, ctx: Ctx, ino: u64, flags: i32, open_backing: OpenBacking<'_>) -> Answer {
    let _in = u.enter();
    let node = check!(u.node(ino), "open");
    let (fh, _) = check!(u.open(&node, flags), "open");
    debug!("open {:#x} flags={:#o} by {}: handle {fh}", ino, flags, ctx.pid);
    u.files.note_opener(fh, ctx.pid);
    let o = opened(u, fh, open_backing);
    if o.backing.is_some() && flags & libc::O_ACCMODE != libc::O_RDONLY {
        // Writes through a shared mapping of this file change its times behind the
        // kernel's back: drop what it holds from before the open (from now on its
        // attributes come with no cache time, see `attr_ttl`).
        if let Some(n) = u.notifier.get() {
            let _ = n.inval_inode(fuser::INodeNo(ino), -1, 0);
        }
    }
    Answer::Open(o)
}

/// How long the kernel may keep node `ino`'s attributes: not at all while an open
/// file of it passes I/O straight through (see `Union::passes_through`).
pub fn attr_ttl(u: &Union, ino: u64) -> std::time::Duration {
    if u.passes_through(ino) {
        std::time::Duration::ZERO
    } else {
        u.ttl
    }
}

pub fn read(u: &Union, fh: u64, offset: u64, size: u32) -> Answer {
    let _in = u.enter();
    Answer::Data(check!(u.read(fh, offset, size), "read"))
}

pub fn write(u: &Union, ctx: Ctx, fh: u64, offset: u64, data: &[u8], kill_suidgid: bool) -> Answer {
    let _in = u.enter();
    // The kernel asks for the set-id bits to go when the writer lacks CAP_FSETID.
    let kill = kill_suidgid.then(|| ctx.writer());
    let n = check!(u.write(fh, offset, data, kill), "write");
    Answer::Written(n as u32)
}

pub fn flush() -> Answer {
    // Nothing to do at close: writes reach the backing file at once and locks are the
    // kernel's. ENOSYS tells the kernel never to ask again, which saves a round trip
    // per close(2).
    Answer::Err(libc::ENOSYS)
}

/// release: the transport answers first, then calls `released`. The kernel leaves
/// the file's I/O mode (cached or passthrough) as it takes the answer, and strata
/// must not offer the other mode for the inode before that (the kernel fails such an
/// open with EIO).
pub fn released(u: &Union, fh: u64) {
    u.files.remove(fh);
}

pub fn fsync(u: &Union, fh: u64, datasync: bool) -> Answer {
    let _in = u.enter();
    check!(u.fsync(fh, datasync), "fsync");
    Answer::Empty
}

pub fn opendir(u: &Union, ino: u64) -> Answer {
    let _in = u.enter();
    let node = check!(u.node(ino), "opendir");
    let fh = u.dirs.insert(node);
    // The kernel keeps listings, and drops them when the directory changes through the
    // mount (the only way it may change). Offsets are name hashes, so a listing it
    // continues from another snapshot still has each name once.
    Answer::Open(Opened {
        fh,
        flags: FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
        backing: None,
    })
}

/// readdir: fills `sink`; `Answer::Empty` when it is ready to send.
pub fn readdir(u: &Union, ino: u64, fh: u64, offset: u64, sink: &mut dyn DirSink) -> Answer {
    let _in = u.enter();
    debug!("readdir {} offset={offset}", ino);
    let (entries, start) = check!(u.dir_snapshot(fh, offset), "readdir");
    for e in &entries[start..] {
        if sink.add(e.ino, e.off, fuse_kind(e.kind), &e.name) {
            break;
        }
    }
    Answer::Empty
}

/// A lookup slower than this had to read from the disk (a cached one takes a few µs).
const COLD_LOOKUP: std::time::Duration = std::time::Duration::from_micros(20);
/// How many such lookups the first chunk of a listing takes before it ends early.
const COLD_LOOKUPS: usize = 8;

/// readdirplus: fills `sink`, counting a lookup for each entry it takes.
///
/// The kernel asks for the first chunk of every listing with attributes
/// (FUSE_READDIRPLUS_AUTO), whether or not the reader will look at them: `ls -f`,
/// `find` or `readdir(3)` alone pay a stat per entry there. With the inodes cached
/// that costs little; when each stat reads the disk, it costs more than the listing.
/// So the first chunk ends once `COLD_LOOKUPS` entries had to be read from the disk.
/// The kernel asks again for the rest: with attributes when the reader looked at the
/// entries it got (the kernel's readdirplus advice), else as a plain READDIR.
pub fn readdirplus(u: &Union, ino: u64, fh: u64, offset: u64, sink: &mut dyn DirPlusSink) -> Answer {
    let _in = u.enter();
    debug!("readdirplus {} offset={offset}", ino);
    let (entries, start) = check!(u.dir_snapshot(fh, offset), "readdirplus");
    let ttl = u.ttl;
    let mut cold = 0;
    for e in &entries[start..] {
        if offset == 0 && cold >= COLD_LOOKUPS {
            break;
        }
        if e.name == "." || e.name == ".." {
            // The kernel takes no attributes (and counts no lookup) for these two.
            let mut attr = negative_attr();
            attr.ino = INodeNo(e.ino);
            attr.kind = fuser::FileType::Directory;
            if sink.add(e.off, &e.name, ttl, &attr) {
                break;
            }
            continue;
        }
        // Each entry returned counts as a lookup, as if the kernel had asked for it.
        let t = std::time::Instant::now();
        let found = u.lookup(ino, &e.name);
        if t.elapsed() > COLD_LOOKUP {
            cold += 1;
        }
        let Ok((node, st)) = found else {
            continue;
        };
        if sink.add(e.off, &e.name, ttl, &u.attr(node.ino, &st)) {
            u.table.forget(node.ino, 1);
            break;
        }
    }
    Answer::Empty
}

pub fn fsyncdir(u: &Union, ino: u64, datasync: bool) -> Answer {
    let _in = u.enter();
    check!(u.fsyncdir(ino, datasync), "fsyncdir");
    Answer::Empty
}

pub fn releasedir(u: &Union, fh: u64) -> Answer {
    u.dirs.remove(fh);
    Answer::Empty
}

pub fn statfs(u: &Union) -> Answer {
    let _in = u.enter();
    Answer::Statfs(check!(u.statfs(), "statfs"))
}

pub fn setxattr(u: &Union, ctx: Ctx, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> Answer {
    let _in = u.enter();
    debug!("setxattr {} {:?}", ino, name);
    let node = check!(u.node(ino), "setxattr");
    check!(u.setxattr(&node, name, value, flags, ctx.writer()), "setxattr");
    Answer::Empty
}

fn xattr_answer(v: Vec<u8>, size: u32) -> Answer {
    if size == 0 {
        Answer::XattrSize(v.len() as u32)
    } else if v.len() > size as usize {
        Answer::Err(libc::ERANGE)
    } else {
        Answer::Data(v)
    }
}

pub fn getxattr(u: &Union, ino: u64, name: &OsStr, size: u32) -> Answer {
    let _in = u.enter();
    let node = check!(u.node(ino), "getxattr");
    xattr_answer(check!(u.getxattr(&node, name), "getxattr"), size)
}

pub fn listxattr(u: &Union, ino: u64, size: u32) -> Answer {
    let _in = u.enter();
    let node = check!(u.node(ino), "listxattr");
    xattr_answer(check!(u.listxattr(&node), "listxattr"), size)
}

pub fn removexattr(u: &Union, ino: u64, name: &OsStr) -> Answer {
    let _in = u.enter();
    debug!("removexattr {} {:?}", ino, name);
    let node = check!(u.node(ino), "removexattr");
    check!(u.removexattr(&node, name), "removexattr");
    Answer::Empty
}

pub fn access(u: &Union, ino: u64, mask: i32) -> Answer {
    let _in = u.enter();
    let node = check!(u.node(ino), "access");
    check!(u.access(&node, mask), "access");
    Answer::Empty
}

pub fn create(
    u: &Union,
    ctx: Ctx,
    parent: u64,
    name: &OsStr,
    mode: u32,
    flags: i32,
    open_backing: OpenBacking<'_>,
) -> Answer {
    let _in = u.enter();
    debug!("create {} {:?} {mode:o}", parent, name);
    let r = u.create_entry(parent, name, NewEntry::File { mode, flags }, ctx.caller());
    let (node, st, fd) = check!(r, "create");
    let fh = u.adopt_handle(&node, fd, flags);
    u.files.note_opener(fh, ctx.pid);
    let attr = u.attr(node.ino, &st);
    Answer::Create(attr, opened(u, fh, open_backing))
}

pub fn fallocate(u: &Union, fh: u64, offset: u64, length: u64, mode: i32) -> Answer {
    let _in = u.enter();
    check!(u.fallocate(fh, offset, length, mode), "fallocate");
    Answer::Empty
}

pub fn lseek(u: &Union, fh: u64, offset: i64, whence: i32) -> Answer {
    let _in = u.enter();
    Answer::Offset(check!(u.lseek(fh, offset, whence), "lseek") as i64)
}

pub fn copy_file_range(u: &Union, fh_in: u64, off_in: u64, fh_out: u64, off_out: u64, len: u64) -> Answer {
    let _in = u.enter();
    let n = check!(
        u.copy_file_range(fh_in, off_in, fh_out, off_out, len),
        "copy_file_range"
    );
    Answer::Written(n as u32)
}

/// Whether work on node `ino` may have to copy it up first (it is not in the upper
/// yet): a transport answering inline hands such requests off.
pub fn may_copy_up(u: &Union, ino: u64) -> bool {
    u.has_upper && u.table.get(ino).is_some_and(|n| n.top() != 0)
}
