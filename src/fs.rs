//! The `fuser::Filesystem` implementation: thin dispatch from FUSE requests to the
//! union's operations, errno mapping and replies. No logic of its own.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};
use tracing::debug;

use crate::attr::{fuse_kind, negative_attr, SetAttr, Writer};
use crate::dir::{Caller, NewEntry};
use crate::file::Io;
use crate::layer::Result;
use crate::union::Union;

pub struct StrataFs {
    u: Union,
}

impl StrataFs {
    pub fn new(u: Union) -> StrataFs {
        StrataFs { u }
    }
}

fn errno(e: rustix::io::Errno) -> Errno {
    Errno::from_i32(e.raw_os_error())
}

/// The caller of a request; `umask` is what the kernel sent with it (0 where none).
fn caller(req: &Request, umask: u32) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        umask,
    }
}

fn writer(req: &Request) -> Writer {
    Writer {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

/// Replies with the error of a failed operation, logging it at debug level.
macro_rules! check {
    ($reply:expr, $op:expr, $what:expr) => {
        match $op {
            Ok(v) => v,
            Err(e) => {
                debug!("{} -> {}", $what, e);
                $reply.error(errno(e));
                return;
            }
        }
    };
}

impl StrataFs {
    fn entry(&self, reply: ReplyEntry, r: Result<(std::sync::Arc<crate::inode::Node>, rustix::fs::Stat)>, what: &str) {
        let (node, st) = check!(reply, r, what);
        let attr = self.u.attr(node.ino, &st);
        reply.entry_with_ttls(&self.attr_ttl(node.ino), &self.u.ttl, &attr, Generation(0));
    }

    /// How long the kernel may keep node `ino`'s attributes: not at all while an open
    /// file of it passes I/O straight through (see `Union::passes_through`).
    fn attr_ttl(&self, ino: u64) -> Duration {
        if self.u.passes_through(ino) {
            Duration::ZERO
        } else {
            self.u.ttl
        }
    }
}

impl Filesystem for StrataFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // No FUSE_ATOMIC_O_TRUNC: the kernel then truncates with a setattr after it has
        // checked that the file may be written (ETXTBSY for a running program), and a
        // truncation to 0 copies up no data.
        let _ = config.add_capabilities(
            InitFlags::FUSE_PARALLEL_DIROPS
                | InitFlags::FUSE_DO_READDIRPLUS
                | InitFlags::FUSE_READDIRPLUS_AUTO
                | InitFlags::FUSE_POSIX_ACL
                // The umask comes with each create, mkdir and mknod, for strata to
                // apply unless a default ACL decides (see `dir::Caller`).
                | InitFlags::FUSE_DONT_MASK,
        );
        // Reads and writes of open files go straight to the backing file when the kernel
        // can (Linux 6.9+, privileged daemon).
        if self.u.cfg.passthrough
            && rustix::process::geteuid().is_root()
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.u.passthrough.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        // Set-id bits and file capabilities are cleared here on writes, truncations and
        // chowns; the kernel then stops asking for security.capability before every
        // write(2) (a round trip each, even for passthrough writes).
        if self.u.cfg.killpriv && config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2).is_ok() {
            self.u.killpriv.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let _ = config.set_max_write(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        debug!("lookup {} {:?}", parent.0, name);
        match self.u.lookup(parent.0, name) {
            // Remembered by the kernel as absent: names only appear through this mount.
            Err(rustix::io::Errno::NOENT) => reply.entry(&self.u.ttl, &negative_attr(), Generation(0)),
            r => self.entry(reply, r, "lookup"),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.u.table.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let node = check!(reply, self.u.node(ino.0), "getattr");
        let st = check!(reply, self.u.getattr(&node, fh.map(|f| f.0)), "getattr");
        reply.attr(&self.attr_ttl(node.ino), &self.u.attr(node.ino, &st));
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        debug!("setattr {} mode={mode:?} uid={uid:?} gid={gid:?} size={size:?}", ino.0);
        let node = check!(reply, self.u.node(ino.0), "setattr");
        let sa = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh: fh.map(|f| f.0),
        };
        let st = check!(reply, self.u.setattr(&node, sa, writer(req)), "setattr");
        reply.attr(&self.attr_ttl(node.ino), &self.u.attr(node.ino, &st));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let node = check!(reply, self.u.node(ino.0), "readlink");
        let t = check!(reply, self.u.readlink(&node), "readlink");
        reply.data(&t);
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        debug!("mknod {} {:?} {mode:o}", parent.0, name);
        let r = self.u.create_entry(
            parent.0,
            name,
            NewEntry::Node {
                mode,
                rdev: rdev as u64,
            },
            caller(req, umask),
        );
        self.entry(reply, r.map(|(n, s, _)| (n, s)), "mknod");
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        debug!("mkdir {} {:?} {mode:o}", parent.0, name);
        let r = self
            .u
            .create_entry(parent.0, name, NewEntry::Dir { mode }, caller(req, umask));
        self.entry(reply, r.map(|(n, s, _)| (n, s)), "mkdir");
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        debug!("unlink {} {:?}", parent.0, name);
        check!(reply, self.u.remove(parent.0, name, false), "unlink");
        reply.ok();
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        debug!("rmdir {} {:?}", parent.0, name);
        check!(reply, self.u.remove(parent.0, name, true), "rmdir");
        reply.ok();
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        debug!("symlink {} {:?} -> {:?}", parent.0, link_name, target);
        let r = self
            .u
            .create_entry(parent.0, link_name, NewEntry::Symlink { target }, caller(req, 0));
        self.entry(reply, r.map(|(n, s, _)| (n, s)), "symlink");
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        debug!(
            "rename {} {:?} -> {} {:?} flags={}",
            parent.0,
            name,
            newparent.0,
            newname,
            flags.bits()
        );
        check!(
            reply,
            self.u.rename(parent.0, name, newparent.0, newname, flags.bits()),
            "rename"
        );
        reply.ok();
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        debug!("link {} -> {} {:?}", ino.0, newparent.0, newname);
        self.entry(reply, self.u.link(ino.0, newparent.0, newname), "link");
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let node = check!(reply, self.u.node(ino.0), "open");
        let (fh, _) = check!(reply, self.u.open(&node, flags.0), "open");
        debug!("open {:#x} flags={:#o} by {}: handle {fh}", ino.0, flags.0, req.pid());
        let io = self.u.io_mode(fh, |fd| reply.open_backing(fd));
        match &io {
            Io::Passthrough(id) => {
                // Writes through a shared mapping of this file change its times behind
                // the kernel's back: drop what it holds from before the open (from now
                // on attributes come with no cache time, see `attr_ttl`).
                if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
                    if let Some(n) = self.u.notifier.get() {
                        let _ = n.inval_inode(ino, -1, 0);
                    }
                }
                reply.opened_passthrough(FileHandle(fh), io.flags(), id)
            }
            _ => reply.opened(FileHandle(fh), io.flags()),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let data = check!(reply, self.u.read(fh.0, offset, size), "read");
        reply.data(&data);
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // The kernel asks for the set-id bits to go when the writer lacks CAP_FSETID.
        let kill = write_flags
            .contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
            .then(|| writer(req));
        let n = check!(reply, self.u.write(fh.0, offset, data, kill), "write");
        reply.written(n as u32);
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // Nothing to do at close: writes reach the backing file at once and locks are
        // the kernel's. ENOSYS tells the kernel never to ask again, which saves a round
        // trip per close(2).
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Answer first: the kernel leaves the file's I/O mode (cached or passthrough)
        // as it takes the answer, and strata must not offer the other mode for the
        // inode before that (the kernel fails such an open with EIO).
        reply.ok();
        self.u.files.remove(fh.0);
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        check!(reply, self.u.fsync(fh.0, datasync), "fsync");
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let node = check!(reply, self.u.node(ino.0), "opendir");
        let fh = self.u.dirs.insert(node);
        // The kernel keeps listings, and drops them when the directory changes through
        // the mount (the only way it may change). Offsets are name hashes, so a listing
        // it continues from another snapshot still has each name once.
        reply.opened(
            FileHandle(fh),
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
        );
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        debug!("readdir {} offset={offset}", ino.0);
        let (entries, start) = check!(reply, self.u.dir_snapshot(fh.0, offset), "readdir");
        for e in &entries[start..] {
            if reply.add(INodeNo(e.ino), e.off, fuse_kind(e.kind), &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        debug!("readdirplus {} offset={offset}", ino.0);
        let (entries, start) = check!(reply, self.u.dir_snapshot(fh.0, offset), "readdirplus");
        let ttl = self.u.ttl;
        for e in &entries[start..] {
            let off = e.off;
            if e.name == "." || e.name == ".." {
                // The kernel takes no attributes (and counts no lookup) for these two.
                let mut attr = negative_attr();
                attr.ino = INodeNo(e.ino);
                attr.kind = fuser::FileType::Directory;
                if reply.add(INodeNo(e.ino), off, &e.name, &ttl, &attr, Generation(0)) {
                    break;
                }
                continue;
            }
            // Each entry returned counts as a lookup, as if the kernel had asked for it.
            let Ok((node, st)) = self.u.lookup(ino.0, &e.name) else {
                continue;
            };
            if reply.add(
                INodeNo(node.ino),
                off,
                &e.name,
                &ttl,
                &self.u.attr(node.ino, &st),
                Generation(0),
            ) {
                self.u.table.forget(node.ino, 1);
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.u.dirs.remove(fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = check!(reply, self.u.statfs(), "statfs");
        reply.statfs(
            s.f_blocks,
            s.f_bfree,
            s.f_bavail,
            s.f_files,
            s.f_ffree,
            s.f_bsize as u32,
            s.f_namemax as u32,
            s.f_frsize as u32,
        );
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        debug!("setxattr {} {:?}", ino.0, name);
        let node = check!(reply, self.u.node(ino.0), "setxattr");
        check!(
            reply,
            self.u.setxattr(&node, name, value, flags, writer(req)),
            "setxattr"
        );
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let node = check!(reply, self.u.node(ino.0), "getxattr");
        let v = check!(reply, self.u.getxattr(&node, name), "getxattr");
        xattr_reply(reply, &v, size);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let node = check!(reply, self.u.node(ino.0), "listxattr");
        let v = check!(reply, self.u.listxattr(&node), "listxattr");
        xattr_reply(reply, &v, size);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        debug!("removexattr {} {:?}", ino.0, name);
        let node = check!(reply, self.u.node(ino.0), "removexattr");
        check!(reply, self.u.removexattr(&node, name), "removexattr");
        reply.ok();
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let node = check!(reply, self.u.node(ino.0), "access");
        check!(reply, self.u.access(&node, mask.bits()), "access");
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        debug!("create {} {:?} {mode:o}", parent.0, name);
        let r = self
            .u
            .create_entry(parent.0, name, NewEntry::File { mode, flags }, caller(req, umask));
        let (node, st, fd) = check!(reply, r, "create");
        let fh = self.u.adopt_handle(&node, fd, flags);
        let attr = self.u.attr(node.ino, &st);
        let fhh = FileHandle(fh);
        let io = self.u.io_mode(fh, |fd| reply.open_backing(fd));
        match &io {
            // No cache time for what passes through (see `attr_ttl`).
            Io::Passthrough(id) => {
                reply.created_passthrough(&Duration::ZERO, &attr, Generation(0), fhh, io.flags(), id)
            }
            _ => reply.created(&self.u.ttl, &attr, Generation(0), fhh, io.flags()),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        check!(reply, self.u.fallocate(fh.0, offset, length, mode), "fallocate");
        reply.ok();
    }

    fn lseek(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        let pos = check!(reply, self.u.lseek(fh.0, offset, whence), "lseek");
        reply.offset(pos as i64);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let n = check!(
            reply,
            self.u.copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len),
            "copy_file_range"
        );
        reply.written(n as u32);
    }
}

fn xattr_reply(reply: ReplyXattr, v: &[u8], size: u32) {
    if size == 0 {
        reply.size(v.len() as u32);
    } else if v.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(v);
    }
}
