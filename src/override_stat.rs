//! Owners and modes kept in an xattr instead of on disk (`xattr_permissions=1|2`, the
//! containers-storage `force_mask` stores), in the format fuse-overlayfs and
//! containers-storage use: `uid:gid:mode[:type]`, mode in octal, ids in the layers'
//! terms. A layer honours such records when its root carries one; the upper of a mount
//! with `xattr_permissions` always does, and ownership changes made through the mount
//! (chown, chmod, new entries, copy-up) are recorded there instead of on disk. Only
//! directories and regular files carry records (other types cannot hold `user.*`
//! xattrs), as in fuse-overlayfs.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{self as rfs, AtFlags, FileType, Gid, Mode, Stat, Uid, XattrFlags};
use rustix::io::Errno;

use crate::attr::{SetAttr, Writer};
use crate::config::Config;
use crate::dir::Caller;
use crate::inode::Node;
use crate::layer::{self, split, Layer, Result};
use crate::union::Union;

/// The record containers-storage writes and current fuse-overlayfs uses (`xattr_permissions=2`).
pub const CONTAINERS: &str = "user.containers.override_stat";
/// The record fuse-overlayfs up to 1.13 wrote with `xattr_permissions=2`; still read.
pub const LEGACY: &str = "user.fuseoverlayfs.override_stat";
/// The record of `xattr_permissions=1` (needs CAP_SYS_ADMIN to write).
pub const PRIVILEGED: &str = "security.fuseoverlayfs.override_stat";

/// Whether `name` is one of the records: never shown or settable through the mount.
pub fn is_override_xattr(name: &[u8]) -> bool {
    [CONTAINERS, LEGACY, PRIVILEGED].iter().any(|n| n.as_bytes() == name)
}

/// One record: owner and permission bits, and the file type when the record gives one
/// (`S_IFMT` bits and device number).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub kind: Option<(u32, u64)>,
}

fn device(s: &str) -> Option<u64> {
    let (ma, mi) = s.trim_start_matches('-').split_once('-')?;
    Some(rustix::fs::makedev(ma.parse().ok()?, mi.parse().ok()?))
}

/// Parses `uid:gid:mode[:type]` (type: dir, file, symlink, pipe, socket,
/// block-MAJ-MIN, char-MAJ-MIN). `None` for anything else.
pub fn parse(v: &[u8]) -> Option<Record> {
    let s = std::str::from_utf8(v).ok()?.trim_end_matches('\0').trim();
    let mut it = s.splitn(4, ':');
    let uid = it.next()?.parse().ok()?;
    let gid = it.next()?.parse().ok()?;
    let mode = u32::from_str_radix(it.next()?, 8).ok()?;
    let kind = match it.next() {
        None => None,
        Some(t) => Some(if t.starts_with("dir") {
            (libc::S_IFDIR, 0)
        } else if t.starts_with("file") {
            (libc::S_IFREG, 0)
        } else if t.starts_with("symlink") {
            (libc::S_IFLNK, 0)
        } else if t.starts_with("pipe") {
            (libc::S_IFIFO, 0)
        } else if t.starts_with("socket") {
            (libc::S_IFSOCK, 0)
        } else if let Some(d) = t.strip_prefix("block") {
            (libc::S_IFBLK, device(d)?)
        } else if let Some(d) = t.strip_prefix("char") {
            (libc::S_IFCHR, device(d)?)
        } else {
            return None;
        }),
    };
    // Type bits inside the mode (older fuse-overlayfs copy-ups wrote whole st_mode
    // values) are not a type: the file's own type shows, as there.
    Some(Record {
        uid,
        gid,
        mode: mode & 0o7777,
        kind,
    })
}

/// The text of a record, readable by every fuse-overlayfs version (the type is kept
/// only when it says something the file on disk does not).
pub fn format(r: &Record) -> String {
    let base = format!("{}:{}:{:o}", r.uid, r.gid, r.mode & 0o7777);
    match r.kind {
        None => base,
        Some((t, dev)) => {
            let (maj, min) = (rustix::fs::major(dev), rustix::fs::minor(dev));
            let ty = match t {
                libc::S_IFDIR => "dir".to_string(),
                libc::S_IFREG => "file".to_string(),
                libc::S_IFLNK => "symlink".to_string(),
                libc::S_IFIFO => "pipe".to_string(),
                libc::S_IFSOCK => "socket".to_string(),
                libc::S_IFBLK => format!("block-{maj}-{min}"),
                _ => format!("char-{maj}-{min}"),
            };
            format!("{base}:{ty}")
        }
    }
}

/// `st` as record `r` shows it.
pub fn apply(st: &mut Stat, r: &Record) {
    st.st_uid = r.uid;
    st.st_gid = r.gid;
    match r.kind {
        Some((t, dev)) => {
            st.st_mode = t | (r.mode & 0o7777);
            if t == libc::S_IFBLK || t == libc::S_IFCHR {
                st.st_rdev = dev;
            }
        }
        None => st.st_mode = (st.st_mode & libc::S_IFMT) | (r.mode & 0o7777),
    }
}

/// The record a stat stands for when there is none.
fn of_stat(st: &Stat) -> Record {
    Record {
        uid: st.st_uid,
        gid: st.st_gid,
        mode: st.st_mode & 0o7777,
        kind: None,
    }
}

fn carries(kind: FileType) -> bool {
    matches!(kind, FileType::Directory | FileType::RegularFile)
}

fn get(fd: BorrowedFd<'_>, name: &str) -> Result<Option<Vec<u8>>> {
    layer::get_xattr(fd, OsStr::new(name))
}

/// Which record a layer's root says its files carry, if any (the order fuse-overlayfs
/// looks for them).
pub(crate) fn root_record(root: BorrowedFd<'_>) -> Result<Option<&'static str>> {
    for n in [PRIVILEGED, CONTAINERS, LEGACY] {
        if get(root, n)?.is_some() {
            return Ok(Some(n));
        }
    }
    Ok(None)
}

/// The record name of every layer, top first (`None`: ownership on disk is what
/// shows). Without `xattr_permissions` the upper is read and changed as its root says,
/// like a lower. The upper of an `xattr_permissions` mount gets its root's record written
/// when it has none yet, from the first lower root that has one, else from the upper
/// root itself, as fuse-overlayfs does.
pub fn layer_records(cfg: &Config, layers: &[Layer]) -> std::result::Result<Vec<Option<&'static str>>, String> {
    let mut out = Vec::new();
    for l in layers {
        let err = |e: Errno| format!("{}: reading its root's xattrs: {}", l.path.display(), e);
        let found = root_record(l.root()).map_err(err)?;
        if !l.is_upper {
            out.push(found);
            continue;
        }
        let name = match cfg.xattr_permissions {
            // An upper whose root says it keeps records keeps them: showing the
            // daemon's owners instead would be wrong.
            0 => found,
            1 => Some(PRIVILEGED),
            _ => Some(match found {
                Some(n @ (CONTAINERS | LEGACY)) => n,
                _ if cfg.legacy_override_xattr => LEGACY,
                _ => CONTAINERS,
            }),
        };
        out.push(name);
    }
    if let (Some(up), Some(Some(name))) = (layers.first().filter(|l| l.is_upper), out.first().copied()) {
        let root = up.root();
        let has = get(root, name).map_err(|e| format!("{}: reading {name}: {e}", up.path.display()))?;
        if has.is_none() {
            let mut value = None;
            for (l, n) in layers.iter().zip(&out).skip(1) {
                if let Some(n) = n {
                    if let Ok(Some(v)) = get(l.root(), n) {
                        value = parse(&v).map(|r| format(&r));
                        break;
                    }
                }
            }
            let value = match value {
                Some(v) => v,
                None => format(&of_stat(
                    &rfs::fstat(root).map_err(|e| format!("{}: {e}", up.path.display()))?,
                )),
            };
            layer::set_xattr(root, OsStr::new(name), value.as_bytes(), XattrFlags::empty()).map_err(|e| {
                format!(
                    "upper layer {}: cannot write xattr {name} (xattr_permissions={}): {e}",
                    up.path.display(),
                    cfg.xattr_permissions
                )
            })?;
        }
    }
    Ok(out)
}

/// Whether a chown failure may be ignored (`ignore_chown_errors`, or ownership kept in
/// records, where the real owner does not show).
fn chown_error_ignored(u: &Union, e: Errno) -> bool {
    matches!(e, Errno::PERM | Errno::INVAL) && (u.cfg.ignore_chown_errors || u.owner_record().is_some())
}

/// chownat, with the failures the mount may ignore ignored.
pub fn chown_at(u: &Union, dir: BorrowedFd<'_>, name: &OsStr, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
    match rfs::chownat(
        dir,
        name,
        uid.map(Uid::from_raw),
        gid.map(Gid::from_raw),
        AtFlags::SYMLINK_NOFOLLOW,
    ) {
        Err(e) if chown_error_ignored(u, e) => Ok(()),
        r => r,
    }
}

/// fchown, with the failures the mount may ignore ignored.
pub fn fchown(u: &Union, fd: BorrowedFd<'_>, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
    match rfs::fchown(fd, uid.map(Uid::from_raw), gid.map(Gid::from_raw)) {
        Err(e) if chown_error_ignored(u, e) => Ok(()),
        r => r,
    }
}

impl Union {
    /// The record the upper keeps ownership in (`xattr_permissions=1|2`).
    pub fn owner_record(&self) -> Option<&'static str> {
        match self.has_upper {
            true => self.stack().records[0],
            false => None,
        }
    }

    /// The record of `node` in layer `layer`, if that layer keeps records and the
    /// node has one.
    fn record_in(&self, node: &Node, layer: usize) -> Result<Option<Record>> {
        let Some(name) = self.stack().records.get(layer).copied().flatten() else {
            return Ok(None);
        };
        if !carries(node.kind()) {
            return Ok(None);
        }
        Ok(self
            .xattr_fd(node, layer)?
            .get(OsStr::new(name))?
            .and_then(|v| parse(&v)))
    }

    /// `st` (of node `ino`) as the mount shows it: with the owner and mode its layer
    /// records for it, when it has a record.
    pub fn shown_stat(&self, ino: u64, st: &mut Stat) {
        if self.stack().records.iter().all(|r| r.is_none()) || !carries(layer::file_type(st)) {
            return;
        }
        let Ok(node) = self.node(ino) else { return };
        match self.record_in(&node, node.top()) {
            Ok(Some(r)) => apply(st, &r),
            Ok(None) => {}
            Err(e) => tracing::debug!("override_stat of node {ino}: {e}"),
        }
    }

    /// setattr in a mount that keeps ownership in records: owner and mode changes of
    /// a directory or regular file are recorded in the upper copy (the owner and mode
    /// on disk stay) and taken out of `sa`. Returns the new attributes when nothing
    /// else is left to do.
    pub fn setattr_recorded(&self, node: &Node, sa: &mut SetAttr, who: Writer) -> Result<Option<Stat>> {
        let Some(name) = self.owner_record() else {
            return Ok(None);
        };
        let kind = node.kind();
        let killpriv = self.killpriv.load(std::sync::atomic::Ordering::Relaxed) && kind == FileType::RegularFile;
        let empty = sa.uid.is_none()
            && sa.gid.is_none()
            && sa.mode.is_none()
            && sa.size.is_none()
            && sa.atime.is_none()
            && sa.mtime.is_none();
        let kill = killpriv && sa.mode.is_none() && (empty || (sa.size.is_some() && who.uid != 0));
        if !carries(kind) || (sa.uid.is_none() && sa.gid.is_none() && sa.mode.is_none() && !kill) {
            return Ok(None);
        }
        let _ns = self.ns.read_recursive();
        self.copy_up_meta(node)?;
        // One change of the record at a time, and none while the data of a metadata
        // copy is filled in (that replaces the file the record is on).
        let _once = node.copy_lock.lock();
        let path = node.path()?;
        let (parent, fname) = split(&path);
        let upper = self.upper().ok_or(Errno::ROFS)?;
        let dir = upper.dir(parent)?.ok_or(Errno::NOENT)?;
        let st = layer::stat_at(dir.as_fd(), fname)?.ok_or(Errno::NOENT)?;
        let xfd = self.xattr_fd(node, 0)?;
        let cur = match xfd.get(OsStr::new(name))?.and_then(|v| parse(&v)) {
            Some(r) => r,
            None => of_stat(&st),
        };
        let mut new = cur;
        let (uid, gid) = self.map_owner_in(sa.uid, sa.gid);
        if let Some(u) = uid {
            new.uid = u;
        }
        if let Some(g) = gid {
            new.gid = g;
        }
        if let Some(m) = sa.mode {
            new.mode = m & 0o7777;
        } else if kind == FileType::RegularFile && (uid.is_some() || gid.is_some() || kill) {
            // A chown, a write or a truncation by someone else than root clears the
            // set-user-id bit, and the set-group-id bit when the group may execute.
            new.mode &= !libc::S_ISUID;
            if new.mode & libc::S_IXGRP != 0 {
                new.mode &= !libc::S_ISGID;
            }
        }
        let value = format(&new);
        match xfd.set(OsStr::new(name), value.as_bytes(), XattrFlags::empty()) {
            Ok(()) => {}
            // As fuse-overlayfs: a filesystem refusing user xattrs here is not an error.
            Err(Errno::PERM) if name != PRIVILEGED => {}
            Err(e) => return Err(e),
        }
        sa.uid = None;
        sa.gid = None;
        sa.mode = None;
        if sa.size.is_none() && sa.atime.is_none() && sa.mtime.is_none() {
            let mut st = layer::stat_at(dir.as_fd(), fname)?.ok_or(Errno::NOENT)?;
            apply(&mut st, &new);
            return Ok(Some(st));
        }
        Ok(None)
    }

    /// Ownership of an entry just made in the upper (`name` in `dir`, to live in
    /// `home`) when the mount keeps ownership in records: the creator's ids and the
    /// mode asked for go into the record; on disk the entry stays the daemon's, open
    /// to it. True when done (the caller then does nothing more).
    pub fn give_recorded(
        &self,
        home: BorrowedFd<'_>,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        who: Caller,
        mode: Option<u32>,
    ) -> Result<bool> {
        let Some(rec) = self.owner_record() else {
            return Ok(false);
        };
        let st = layer::stat_at(dir, name)?.ok_or(Errno::NOENT)?;
        let kind = layer::file_type(&st);
        let h = layer::stat_at(home, OsStr::new("."))?.ok_or(Errno::NOENT)?;
        let home_rec = match get(home, rec)?.and_then(|v| parse(&v)) {
            Some(r) => r,
            None => of_stat(&h),
        };
        let setgid_home = home_rec.mode & libc::S_ISGID != 0;
        let (uid, gid) = self.map_owner_in(Some(who.uid), Some(who.gid));
        let gid = if setgid_home { Some(home_rec.gid) } else { gid };
        if !carries(kind) {
            // No record possible (no user xattrs on these): owned for real if the
            // daemon may.
            return chown_at(self, dir, name, uid, gid).map(|()| true);
        }
        let mut perm = mode.unwrap_or(st.st_mode) & 0o7777;
        if setgid_home && kind == FileType::Directory {
            perm |= libc::S_ISGID;
        }
        let r = Record {
            uid: uid.unwrap_or(0),
            gid: gid.unwrap_or(0),
            mode: perm,
            kind: None,
        };
        let fd = layer::open_path(dir, name)?;
        layer::set_xattr(fd.as_fd(), OsStr::new(rec), format(&r).as_bytes(), XattrFlags::empty())?;
        // On disk: open to the daemon whatever the mode shown.
        let disk = (perm & 0o777) | if kind == FileType::Directory { 0o755 } else { 0o644 };
        if st.st_mode & 0o7777 != disk {
            layer::chmod_nofollow(dir, name, Mode::from_raw_mode(disk))?;
        }
        Ok(true)
    }

    /// After a copy-up of `sname` (in `sdir` of layer `src`, described by `st`) to
    /// `dname` in `ddir`: the copy gets the owner and mode the source shows, as a
    /// record in the upper when the upper keeps records, else on disk.
    pub fn copy_record(
        &self,
        src: usize,
        (sdir, sname, open): (BorrowedFd<'_>, &OsStr, Option<BorrowedFd<'_>>),
        st: &Stat,
        ddir: BorrowedFd<'_>,
        dname: &OsStr,
    ) -> Result<()> {
        let kind = layer::file_type(st);
        let src_rec = self.stack().records.get(src).copied().flatten();
        let upper_rec = self.owner_record();
        if !carries(kind) || (src_rec.is_none() && upper_rec.is_none()) {
            return Ok(());
        }
        let shown = match src_rec {
            Some(n) => {
                let v = match open {
                    Some(fd) => layer::get_xattr(fd, OsStr::new(n))?,
                    None => get(layer::open_path(sdir, sname)?.as_fd(), n)?,
                };
                v.and_then(|v| parse(&v)).unwrap_or_else(|| of_stat(st))
            }
            None => of_stat(st),
        };
        match upper_rec {
            Some(n) => {
                let fd = layer::open_path(ddir, dname)?;
                layer::set_xattr(
                    fd.as_fd(),
                    OsStr::new(n),
                    format(&shown).as_bytes(),
                    XattrFlags::empty(),
                )?;
                // On disk: open to the daemon.
                let extra = if kind == FileType::Directory { 0o755 } else { 0o600 };
                let disk = (st.st_mode & 0o777) | extra;
                if disk != st.st_mode & 0o7777 {
                    rfs::chmodat(ddir, dname, Mode::from_raw_mode(disk), AtFlags::empty())?;
                }
            }
            None => {
                chown_at(self, ddir, dname, Some(shown.uid), Some(shown.gid))?;
                rfs::chmodat(ddir, dname, Mode::from_raw_mode(shown.mode), AtFlags::empty())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_and_format() {
        let r = parse(b"1000:1001:644").unwrap();
        assert_eq!((r.uid, r.gid, r.mode, r.kind), (1000, 1001, 0o644, None));
        assert_eq!(format(&r), "1000:1001:644");
        let r = parse(b"0:0:0755:dir").unwrap();
        assert_eq!(r.kind, Some((libc::S_IFDIR, 0)));
        assert_eq!(format(&r), "0:0:755:dir");
        let r = parse(b"5:6:0600:char-10-11").unwrap();
        assert_eq!(r.kind, Some((libc::S_IFCHR, rustix::fs::makedev(10, 11))));
        assert_eq!(format(&r), "5:6:600:char-10-11");
        // A whole st_mode, as older fuse-overlayfs copy-ups wrote it.
        let r = parse(b"0:0:100755").unwrap();
        assert_eq!((r.mode, r.kind), (0o755, None));
        for bad in [
            &b""[..],
            b"1:2",
            b"a:b:c",
            b"1:2:9",
            b"1:2:644:thing",
            b"1:2:644:char-x",
        ] {
            assert!(parse(bad).is_none(), "{:?}", bad);
        }
    }

    #[test]
    fn records_apply_keep_the_type() {
        let mut st: Stat = crate::sys::zero_stat(rustix::fs::FileType::RegularFile);
        st.st_mode |= 0o600;
        apply(&mut st, &parse(b"7:8:4755").unwrap());
        assert_eq!((st.st_uid, st.st_gid, st.st_mode), (7, 8, libc::S_IFREG | 0o4755));
        assert!(is_override_xattr(CONTAINERS.as_bytes()) && !is_override_xattr(b"user.other"));
    }
}
