//! Attributes: getattr and setattr (chmod, chown, truncate, utimes), extended
//! attributes, statfs. Every change copies the entry up first.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, INodeNo, TimeOrNow};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Stat, StatVfs, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;

use crate::config::IdMap;
use crate::inode::Node;
use crate::layer::{self, split, DirFd, Result, XattrFd};
use crate::override_stat;
use crate::union::Union;
use crate::whiteout;

/// Who writes or changes a file, for the rules on set-id bits.
#[derive(Clone, Copy)]
pub struct Writer {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// What a setattr asks for.
#[derive(Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
    pub fh: Option<u64>,
}

/// The SELinux label's xattr name (see `Union::getxattr`).
const SELINUX_XATTR: &[u8] = b"security.selinux";

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs((-sec) as u64) + Duration::from_nanos(nsec as u64)
    }
}

pub fn fuse_kind(kind: FileType) -> fuser::FileType {
    match kind {
        FileType::Directory => fuser::FileType::Directory,
        FileType::Symlink => fuser::FileType::Symlink,
        FileType::Fifo => fuser::FileType::NamedPipe,
        FileType::Socket => fuser::FileType::Socket,
        FileType::CharacterDevice => fuser::FileType::CharDevice,
        FileType::BlockDevice => fuser::FileType::BlockDevice,
        _ => fuser::FileType::RegularFile,
    }
}

/// The attributes the mount shows for a backing stat, under node id `ino`.
pub fn to_attr(ino: u64, st: &Stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec as i64),
        mtime: time(st.st_mtime, st.st_mtime_nsec as i64),
        ctime: time(st.st_ctime, st.st_ctime_nsec as i64),
        crtime: UNIX_EPOCH,
        kind: fuse_kind(FileType::from_raw_mode(st.st_mode)),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

/// The id outside unmapped ids show as (the kernel's overflow id).
const OVERFLOW_ID: u32 = 65534;

/// Maps an id through `container:host:size` triples: from the layers (container ids)
/// to the mount (host ids), or back with `inward`. No mapping: ids pass unchanged;
/// an id outside every range shows as the overflow id, and is stored unchanged.
pub fn map_id(map: &[IdMap], id: u32, inward: bool) -> u32 {
    if map.is_empty() {
        return id;
    }
    for m in map {
        let (from, to) = if inward {
            (m.host, m.container)
        } else {
            (m.container, m.host)
        };
        if id >= from && id - from < m.size {
            return to + (id - from);
        }
    }
    if inward {
        id
    } else {
        OVERFLOW_ID
    }
}

/// Attributes of "no entry": node id 0 (a negative entry, or no attributes given).
pub fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: fuser::FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

fn timespec(t: TimeOrNow) -> Timespec {
    match t {
        TimeOrNow::Now => Timespec {
            tv_sec: 0,
            tv_nsec: rfs::UTIME_NOW,
        },
        TimeOrNow::SpecificTime(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timespec {
                tv_sec: d.as_secs() as _,
                tv_nsec: d.subsec_nanos() as _,
            },
            Err(e) => {
                let d = e.duration();
                let (mut s, mut n) = (-(d.as_secs() as i64), -(d.subsec_nanos() as i64));
                if n < 0 {
                    s -= 1;
                    n += 1_000_000_000;
                }
                Timespec {
                    tv_sec: s as _,
                    tv_nsec: n as _,
                }
            }
        },
    }
}

const OMIT: Timespec = Timespec {
    tv_sec: 0,
    tv_nsec: rfs::UTIME_OMIT,
};

impl Union {
    /// The attributes shown for `st` as node `ino` (a file copied up from a lower where
    /// it has several names counts all of them, copied up or not).
    pub fn attr(&self, ino: u64, st: &Stat) -> FileAttr {
        let mut shown = *st;
        self.shown_stat(ino, &mut shown);
        let mut a = to_attr(ino, &shown);
        // Ownership as the mount shows it: squashed, or mapped from container to host ids.
        a.uid = self
            .cfg
            .squash_to_uid
            .unwrap_or_else(|| map_id(&self.cfg.uid_map, a.uid, false));
        a.gid = self
            .cfg
            .squash_to_gid
            .unwrap_or_else(|| map_id(&self.cfg.gid_map, a.gid, false));
        if a.nlink > 1 && a.kind == fuser::FileType::RegularFile {
            if let Some(n) = self.work.as_ref().and_then(|w| w.names(st.st_dev, st.st_ino)) {
                a.nlink = n;
            }
        }
        a
    }

    /// getattr: through an open handle when given (works for unlinked files), else by path.
    pub fn getattr(&self, node: &Node, fh: Option<u64>) -> Result<Stat> {
        // A node's names move only under the namespace lock (renames hold it alone):
        // held here, the name used is the node's own, not what a rename just put there.
        let _ns = self.ns.read_recursive();
        if let Some(h) = fh.and_then(|fh| self.files.get(fh).ok()) {
            if h.node.ino == node.ino {
                return rfs::fstat(&*self.read_fd(&h)?);
            }
        }
        match self.stat_node(node) {
            // Every name is gone but the file may still be open: ask the open file.
            Err(Errno::NOENT) => match self.files.any_for(node.ino) {
                Some(h) => rfs::fstat(&*self.read_fd(&h)?),
                None => node.gone_stat().ok_or(Errno::NOENT),
            },
            r => r,
        }
    }

    pub fn setattr(&self, node: &Node, mut sa: SetAttr, who: Writer) -> Result<Stat> {
        if !self.writable {
            return Err(Errno::ROFS);
        }
        // Owners and modes kept in an xattr (xattr_permissions=1|2): recorded there.
        if let Some(st) = self.setattr_recorded(node, &mut sa, who)? {
            return Ok(st);
        }
        let only_mode =
            sa.uid.is_none() && sa.gid.is_none() && sa.size.is_none() && sa.atime.is_none() && sa.mtime.is_none();
        if self.killpriv.load(Ordering::Relaxed) && sa.mode.is_none() && node.kind() == FileType::RegularFile {
            // Under FUSE_HANDLE_KILLPRIV_V2 the kernel leaves the set-id bits to strata.
            // It sends a setattr with nothing in it when it decided they go (a chown to
            // the same owner, or a passthrough write by someone without CAP_FSETID), and
            // a truncation by anyone but root drops them too (no CAP_FSETID then).
            if only_mode || (sa.size.is_some() && who.uid != 0) {
                let st = self.getattr(node, sa.fh)?;
                sa.mode = self.killed_mode(&st, who);
                if only_mode && sa.mode.is_none() {
                    return Ok(st);
                }
            }
        }
        if only_mode && sa.mode.is_none() {
            return self.getattr(node, sa.fh);
        }
        // Through an open handle on the upper copy when there is one: that also works
        // for a file whose last name is gone.
        let handle = sa
            .fh
            .and_then(|fh| self.files.get(fh).ok())
            .filter(|h| h.node.ino == node.ino && !h.lower.load(Ordering::Relaxed));
        if let Some(h) = handle {
            if h.pending.load(Ordering::Relaxed) {
                match sa.size {
                    Some(0) => {
                        self.drop_metacopy(node)?;
                        h.pending.store(false, Ordering::Relaxed);
                    }
                    Some(_) => self.filled(&h)?,
                    None => {}
                }
            }
            return apply(Target::Fd(h.fd().as_fd()), node.kind(), &sa, self);
        }
        let _ns = self.ns.read_recursive();
        match sa.size {
            Some(0) => self.copy_up_truncated(node)?,
            Some(_) => self.copy_up(node)?,
            None => self.copy_up_meta(node)?,
        }
        let path = node.path()?;
        let (parent, name) = split(&path);
        let upper = self.upper().ok_or(Errno::ROFS)?;
        let dir = upper.dir(parent)?.ok_or(Errno::NOENT)?;
        apply(Target::At(dir.as_fd(), name), node.kind(), &sa, self)
    }

    /// The mode a regular file of stat `st` has once `who` (lacking CAP_FSETID) wrote
    /// or truncated it, as Linux gives it: no set-user-ID; no set-group-ID when the group
    /// may execute the file or `who` is outside its group. `None` when nothing changes.
    pub fn killed_mode(&self, st: &Stat, who: Writer) -> Option<u32> {
        let mode = st.st_mode & 0o7777;
        let mut keep = mode & !libc::S_ISUID;
        if mode & libc::S_ISGID != 0 && (mode & libc::S_IXGRP != 0 || !self.in_group(who, st.st_gid)) {
            keep &= !libc::S_ISGID;
        }
        (layer::file_type(st) == FileType::RegularFile && keep != mode).then_some(keep)
    }

    /// Whether `who` is root or in group `gid` (a layer's group id). FUSE passes the
    /// primary group only; the others come from /proc.
    fn in_group(&self, who: Writer, gid: u32) -> bool {
        let ours = |g: u32| self.map_owner_in(None, Some(g)).1 == Some(gid);
        if who.uid == 0 || ours(who.gid) {
            return true;
        }
        std::fs::read_to_string(format!("/proc/{}/status", who.pid)).is_ok_and(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .is_some_and(|g| g.split_whitespace().filter_map(|x| x.parse().ok()).any(ours))
        })
    }

    /// Ownership asked for through the mount, in the layers' terms (`uidmapping`,
    /// `gidmapping`: an id in a host range is stored as the matching container id).
    pub fn map_owner_in(&self, uid: Option<u32>, gid: Option<u32>) -> (Option<u32>, Option<u32>) {
        (
            uid.map(|u| map_id(&self.cfg.uid_map, u, true)),
            gid.map(|g| map_id(&self.cfg.gid_map, g, true)),
        )
    }

    /// The fd a node's xattrs are read or changed through, in layer `layer`. Regular
    /// files and directories are opened for reading (one call less for each xattr call,
    /// and a lower directory is kept open already); others, and files the daemon may
    /// not read, as `O_PATH`.
    pub(crate) fn xattr_fd(&self, node: &Node, layer: usize) -> Result<XattrFd<'_>> {
        let path = node.path()?;
        let l = &self.stack().layers[layer];
        let kind = node.kind();
        if kind == FileType::Directory {
            let fd = l.dir(&path)?.ok_or(Errno::NOENT)?;
            return Ok(XattrFd { fd, direct: true });
        }
        if kind == FileType::RegularFile {
            let flags = OFlags::RDONLY | OFlags::NONBLOCK;
            match l.open_file(&path, flags) {
                Ok(fd) => {
                    let fd = match l.is_upper {
                        true => fd,
                        false => self.redirect_to_copy(fd, flags)?.0,
                    };
                    return Ok(XattrFd {
                        fd: DirFd::Owned(fd),
                        direct: true,
                    });
                }
                // Not readable by the daemon, or no longer a file: as O_PATH.
                Err(Errno::ACCESS) | Err(Errno::PERM) | Err(Errno::LOOP) | Err(Errno::AGAIN) => {}
                Err(e) => return Err(e),
            }
        }
        let (parent, name) = split(&path);
        let dir = l.dir(parent)?.ok_or(Errno::NOENT)?;
        let fd = layer::open_path(dir.as_fd(), name)?;
        let fd = match l.is_upper {
            true => fd,
            false => self.redirect_to_copy(fd, OFlags::PATH)?.0,
        };
        Ok(XattrFd {
            fd: DirFd::Owned(fd),
            direct: false,
        })
    }

    /// An fd of a lower file, or of its copy in the index when it has one (see
    /// `index_copy_of`); true when it is the copy.
    pub fn redirect_to_copy(&self, fd: std::os::fd::OwnedFd, flags: OFlags) -> Result<(std::os::fd::OwnedFd, bool)> {
        let st = rfs::fstat(&fd)?;
        match (self.index_copy_of(&st), &self.work) {
            (Some(_), Some(w)) => Ok((w.open_copy(&st, flags)?, true)),
            _ => Ok((fd, false)),
        }
    }

    /// getxattr(2) as the mount answers it. A file without a `security.selinux`
    /// label answers ENOTSUP rather than ENODATA (unless `unlabeled=enodata`): the
    /// request only comes here when no security module answers for that name, and
    /// `ls -l` and libselinux users then stop asking for the rest of the mount, which
    /// spares a round trip per file listed. A label that is there is returned.
    pub fn getxattr(&self, node: &Node, name: &OsStr) -> Result<Vec<u8>> {
        // A node's names move only under the namespace lock (renames hold it alone):
        // held here, the name used is the node's own, not what a rename just put there.
        let _ns = self.ns.read_recursive();
        match self.xattr_value(node, name) {
            Err(Errno::NODATA) if self.cfg.unlabeled_enotsup && name.as_bytes() == SELINUX_XATTR => Err(Errno::NOTSUP),
            r => r,
        }
    }

    fn xattr_value(&self, node: &Node, name: &OsStr) -> Result<Vec<u8>> {
        if whiteout::is_internal_xattr(name) {
            return Err(Errno::NODATA);
        }
        if node.no_xattrs.load(Ordering::Relaxed) {
            return Err(Errno::NODATA);
        }
        let fd = self.xattr_fd(node, node.top())?;
        match fd.get(name)? {
            Some(v) => Ok(v),
            None => {
                // Remember when there is nothing at all to ask for; changes clear it.
                if fd.list()?.iter().all(|n| whiteout::is_internal_xattr(n)) {
                    node.no_xattrs.store(true, Ordering::Relaxed);
                }
                Err(Errno::NODATA)
            }
        }
    }

    /// The xattr names, as the NUL-separated list listxattr returns.
    pub fn listxattr(&self, node: &Node) -> Result<Vec<u8>> {
        // A node's names move only under the namespace lock (renames hold it alone):
        // held here, the name used is the node's own, not what a rename just put there.
        let _ns = self.ns.read_recursive();
        let fd = self.xattr_fd(node, node.top())?;
        let mut out = Vec::new();
        for n in fd.list()? {
            if !whiteout::is_internal_xattr(&n) {
                out.extend_from_slice(n.as_os_str().as_bytes());
                out.push(0);
            }
        }
        Ok(out)
    }

    pub fn setxattr(&self, node: &Node, name: &OsStr, value: &[u8], flags: i32, who: Writer) -> Result<()> {
        if !self.writable {
            return Err(Errno::ROFS);
        }
        if whiteout::is_internal_xattr(name) {
            return Err(Errno::PERM);
        }
        let _ns = self.ns.read_recursive();
        self.copy_up_meta(node)?;
        node.no_xattrs.store(false, Ordering::Relaxed);
        let x = self.xattr_fd(node, 0)?;
        x.set(name, value, XattrFlags::from_bits_retain(flags as u32))?;
        // Setting an access ACL changes the mode. Like chmod(2), it clears the
        // set-group-id bit when the caller is neither in the file's group nor
        // privileged; the daemon (root) would keep it, so it is cleared here.
        if name.as_bytes() == b"system.posix_acl_access" && x.direct {
            let st = rfs::fstat(x.fd.as_fd())?;
            if st.st_mode & libc::S_ISGID != 0 && !self.in_group(who, st.st_gid) {
                rfs::fchmod(x.fd.as_fd(), Mode::from_raw_mode(st.st_mode & 0o7777 & !libc::S_ISGID))?;
            }
        }
        Ok(())
    }

    pub fn removexattr(&self, node: &Node, name: &OsStr) -> Result<()> {
        if !self.writable {
            return Err(Errno::ROFS);
        }
        if whiteout::is_internal_xattr(name) {
            return Err(Errno::NODATA);
        }
        let _ns = self.ns.read_recursive();
        // Nothing to copy up for an attribute that is not there.
        self.xattr_value(node, name)?;
        self.copy_up_meta(node)?;
        self.xattr_fd(node, 0)?.remove(name)
    }

    /// access(2): permissions are checked by the kernel (default_permissions); what
    /// is left is existence and the read-only case.
    pub fn access(&self, node: &Node, mask: i32) -> Result<()> {
        if mask & libc::W_OK != 0 && !self.writable {
            return Err(Errno::ROFS);
        }
        // A node's names move only under the namespace lock (renames hold it alone):
        // held here, the name used is the node's own, not what a rename just put there.
        let _ns = self.ns.read_recursive();
        self.stat_node(node).map(|_| ())
    }

    /// statfs of the upper layer, or of the top lower on a read-only mount.
    pub fn statfs(&self) -> Result<StatVfs> {
        rfs::fstatvfs(self.stack().layers[0].root())
    }
}

/// What a setattr changes: an open file, or a name in an upper directory.
enum Target<'a> {
    Fd(BorrowedFd<'a>),
    At(BorrowedFd<'a>, &'a OsStr),
}

/// Applies a setattr: size, then owner (which clears set-id bits), then mode, then times.
fn apply(t: Target<'_>, kind: FileType, sa: &SetAttr, u: &Union) -> Result<Stat> {
    if let Some(size) = sa.size {
        match t {
            Target::Fd(fd) => rfs::ftruncate(fd, size)?,
            Target::At(dir, name) => {
                let f = rfs::openat(
                    dir,
                    name,
                    OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                rfs::ftruncate(&f, size)?;
            }
        }
    }
    if sa.uid.is_some() || sa.gid.is_some() {
        let (uid, gid) = u.map_owner_in(sa.uid, sa.gid);
        match t {
            Target::Fd(fd) => override_stat::fchown(u, fd, uid, gid)?,
            Target::At(dir, name) => override_stat::chown_at(u, dir, name, uid, gid)?,
        }
    }
    if let Some(mode) = sa.mode.filter(|_| kind != FileType::Symlink) {
        let mode = Mode::from_raw_mode(mode & 0o7777);
        match t {
            Target::Fd(fd) => rfs::fchmod(fd, mode)?,
            Target::At(dir, name) => layer::chmod_nofollow(dir, name, mode)?,
        }
    }
    if sa.atime.is_some() || sa.mtime.is_some() {
        let times = Timestamps {
            last_access: sa.atime.map(timespec).unwrap_or(OMIT),
            last_modification: sa.mtime.map(timespec).unwrap_or(OMIT),
        };
        match t {
            Target::Fd(fd) => rfs::futimens(fd, &times)?,
            Target::At(dir, name) => rfs::utimensat(dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)?,
        }
    }
    match t {
        Target::Fd(fd) => rfs::fstat(fd),
        Target::At(dir, name) => layer::stat_at(dir, name)?.ok_or(Errno::NOENT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_mapping_both_ways() {
        let map = [
            IdMap {
                container: 0,
                host: 1000,
                size: 1,
            },
            IdMap {
                container: 1,
                host: 100000,
                size: 65536,
            },
        ];
        assert_eq!(map_id(&map, 0, false), 1000);
        assert_eq!(map_id(&map, 5, false), 100004);
        assert_eq!(map_id(&map, 70000, false), OVERFLOW_ID);
        assert_eq!(map_id(&map, 1000, true), 0);
        assert_eq!(map_id(&map, 100004, true), 5);
        assert_eq!(map_id(&[], 42, false), 42);
    }
}
