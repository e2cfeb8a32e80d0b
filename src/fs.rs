//! The classic transport: fuser's `Filesystem` over /dev/fuse reads. Each callback
//! hands its arguments to `dispatch` and sends the `Answer` with the fuser reply; no
//! operation's logic lives here. Also the INIT negotiation, shared by both transports.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, Filesystem, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};

use crate::attr::SetAttr;
use crate::dispatch::{self as d, Answer, Ctx, DirPlusSink, DirSink};
use crate::union::Union;

/// Decides at INIT whether the mount takes FUSE over io_uring: given whether the
/// kernel offers it, returns whether to accept it (the transport then registers its
/// queues once INIT is answered).
pub type UringChoice = Box<dyn FnMut(bool) -> bool + Send + Sync>;

pub struct StrataFs {
    u: Arc<Union>,
    uring: Option<UringChoice>,
}

impl StrataFs {
    pub fn new(u: Arc<Union>, uring: Option<UringChoice>) -> StrataFs {
        StrataFs { u, uring }
    }
}

fn ctx(req: &Request) -> Ctx {
    Ctx {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
        umask: 0,
    }
}

fn errno(e: i32) -> Errno {
    Errno::from_i32(e)
}

fn empty(r: ReplyEmpty, a: Answer) {
    match a {
        Answer::Empty => r.ok(),
        Answer::Err(e) => r.error(errno(e)),
        _ => r.error(Errno::EIO),
    }
}

/// Names are kept for `ttl`; attributes as `dispatch::attr_ttl` says.
fn entry(r: ReplyEntry, a: Answer, u: &Union) {
    match a {
        Answer::Entry(attr) => r.entry_with_ttls(&d::attr_ttl(u, attr.ino.0), &u.ttl, &attr, Generation(0)),
        Answer::Err(e) => r.error(errno(e)),
        _ => r.error(Errno::EIO),
    }
}

fn attr(r: ReplyAttr, a: Answer, u: &Union) {
    match a {
        Answer::Attr(attr) => r.attr(&d::attr_ttl(u, attr.ino.0), &attr),
        Answer::Err(e) => r.error(errno(e)),
        _ => r.error(Errno::EIO),
    }
}

fn data(r: ReplyData, a: Answer) {
    match a {
        Answer::Data(v) => r.data(&v),
        Answer::Err(e) => r.error(errno(e)),
        _ => r.error(Errno::EIO),
    }
}

fn xattr(r: ReplyXattr, a: Answer) {
    match a {
        Answer::Data(v) => r.data(&v),
        Answer::XattrSize(n) => r.size(n),
        Answer::Err(e) => r.error(errno(e)),
        _ => r.error(Errno::EIO),
    }
}

fn written(r: ReplyWrite, a: Answer) {
    match a {
        Answer::Written(n) => r.written(n),
        Answer::Err(e) => r.error(errno(e)),
        _ => r.error(Errno::EIO),
    }
}

fn opened(r: ReplyOpen, a: Answer) {
    match a {
        Answer::Open(o) => match &o.backing {
            Some(id) => r.opened_passthrough(FileHandle(o.fh), o.flags, id),
            None => r.opened(FileHandle(o.fh), o.flags),
        },
        Answer::Err(e) => r.error(errno(e)),
        _ => r.error(Errno::EIO),
    }
}

fn created(r: ReplyCreate, a: Answer, u: &Union) {
    match a {
        Answer::Create(attr, o) => {
            let fh = FileHandle(o.fh);
            let ttl = d::attr_ttl(u, attr.ino.0);
            match &o.backing {
                Some(id) => r.created_passthrough(&ttl, &attr, Generation(0), fh, o.flags, id),
                None => r.created(&ttl, &attr, Generation(0), fh, o.flags),
            }
        }
        Answer::Err(e) => r.error(errno(e)),
        _ => r.error(Errno::EIO),
    }
}

struct Dir<'a>(&'a mut ReplyDirectory);

impl DirSink for Dir<'_> {
    fn add(&mut self, ino: u64, off: u64, kind: fuser::FileType, name: &OsStr) -> bool {
        self.0.add(INodeNo(ino), off, kind, name)
    }
}

struct DirPlus<'a>(&'a mut ReplyDirectoryPlus);

impl DirPlusSink for DirPlus<'_> {
    fn add(&mut self, off: u64, name: &OsStr, ttl: Duration, attr: &FileAttr) -> bool {
        self.0.add(attr.ino, off, name, &ttl, attr, Generation(0))
    }
}

/// The INIT negotiation, whichever transport serves the mount afterwards.
pub fn negotiate(u: &Union, config: &mut KernelConfig, uring: Option<&mut UringChoice>) {
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
    if u.cfg.passthrough
        && rustix::process::geteuid().is_root()
        && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
        && config.set_max_stack_depth(1).is_ok()
    {
        u.passthrough.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    // Set-id bits and file capabilities are cleared here on writes, truncations and
    // chowns; the kernel then stops asking for security.capability before every
    // write(2) (a round trip each, even for passthrough writes).
    if u.cfg.killpriv && config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2).is_ok() {
        u.killpriv.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let _ = config.set_max_write(1 << 20);
    // FUSE over io_uring: the kernel takes the connection to the rings only when the
    // INIT answer carries the flag back (fs/fuse/inode.c, process_init_reply), and then
    // holds every request until all queues are registered or a registration fails.
    if let Some(choose) = uring {
        let offered = config.capabilities().contains(InitFlags::FUSE_OVER_IO_URING);
        if choose(offered) {
            let _ = config.add_capabilities(InitFlags::FUSE_OVER_IO_URING);
        }
    }
}

impl Filesystem for StrataFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        negotiate(&self.u, config, self.uring.as_mut());
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        entry(reply, d::lookup(&self.u, parent.0, name), &self.u);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        d::forget(&self.u, ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        attr(reply, d::getattr(&self.u, ino.0, fh.map(|f| f.0)), &self.u);
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
        let sa = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh: fh.map(|f| f.0),
        };
        attr(reply, d::setattr(&self.u, ctx(req), ino.0, sa), &self.u);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        data(reply, d::readlink(&self.u, ino.0));
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        entry(
            reply,
            d::mknod(&self.u, Ctx { umask, ..ctx(req) }, parent.0, name, mode, rdev),
            &self.u,
        );
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let ctx = Ctx { umask, ..ctx(req) };
        entry(reply, d::mkdir(&self.u, ctx, parent.0, name, mode), &self.u);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, d::remove(&self.u, parent.0, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, d::remove(&self.u, parent.0, name, true));
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let a = d::symlink(&self.u, ctx(req), parent.0, link_name, target);
        entry(reply, a, &self.u);
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
        let a = d::rename(&self.u, parent.0, name, newparent.0, newname, flags.bits());
        empty(reply, a);
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        entry(reply, d::link(&self.u, ino.0, newparent.0, newname), &self.u);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let a = d::open(&self.u, ctx(req), ino.0, flags.0, &mut |fd| reply.open_backing(fd));
        opened(reply, a);
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
        data(reply, d::read(&self.u, fh.0, offset, size));
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
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        written(reply, d::write(&self.u, ctx(req), fh.0, offset, data, kill));
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        empty(reply, d::flush());
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
        // Answered before the handle goes: see `dispatch::released`.
        reply.ok();
        d::released(&self.u, fh.0);
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        empty(reply, d::fsync(&self.u, fh.0, datasync));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        opened(reply, d::opendir(&self.u, ino.0));
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        match d::readdir(&self.u, ino.0, fh.0, offset, &mut Dir(&mut reply)) {
            Answer::Err(e) => reply.error(errno(e)),
            _ => reply.ok(),
        }
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        match d::readdirplus(&self.u, ino.0, fh.0, offset, &mut DirPlus(&mut reply)) {
            Answer::Err(e) => reply.error(errno(e)),
            _ => reply.ok(),
        }
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        empty(reply, d::releasedir(&self.u, fh.0));
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        empty(reply, d::fsyncdir(&self.u, ino.0, datasync));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match d::statfs(&self.u) {
            Answer::Statfs(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Answer::Err(e) => reply.error(errno(e)),
            _ => reply.error(Errno::EIO),
        }
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
        empty(reply, d::setxattr(&self.u, ctx(req), ino.0, name, value, flags));
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        xattr(reply, d::getxattr(&self.u, ino.0, name, size));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        xattr(reply, d::listxattr(&self.u, ino.0, size));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, d::removexattr(&self.u, ino.0, name));
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        empty(reply, d::access(&self.u, ino.0, mask.bits()));
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
        let ctx = Ctx { umask, ..ctx(req) };
        let a = d::create(&self.u, ctx, parent.0, name, mode, flags, &mut |fd| {
            reply.open_backing(fd)
        });
        created(reply, a, &self.u);
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
        empty(reply, d::fallocate(&self.u, fh.0, offset, length, mode));
    }

    fn lseek(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        match d::lseek(&self.u, fh.0, offset, whence) {
            Answer::Offset(o) => reply.offset(o),
            Answer::Err(e) => reply.error(errno(e)),
            _ => reply.error(Errno::EIO),
        }
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
        written(
            reply,
            d::copy_file_range(&self.u, fh_in.0, offset_in, fh_out.0, offset_out, len),
        );
    }
}
