//! Namespace changes: create, mknod, mkdir, symlink, link, unlink, rmdir, rename.
//! New entries always land in the upper; removing a name that a lower layer still has
//! leaves an AUFS whiteout (`.wh.NAME`) in the upper; a directory made over a whiteout
//! is opaque. Whiteouts are written before the upper entry goes away, so an interrupted
//! operation shows the old view, never a half-done one. fsyncdir makes them durable.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, RenameFlags, Stat};
use rustix::io::Errno;

use crate::copy_up::{remove_tree, stat_times, Fill};
use crate::inode::{Node, State};
use crate::layer::{self, split, Result};
use crate::lookup::Found;
use crate::union::Union;
use crate::whiteout::{self, OPAQUE};

/// Who asks: the caller's uid and gid, for ownership of what it creates, and its
/// umask. The kernel leaves the umask to strata (FUSE_DONT_MASK): it applies only
/// where the new entry's directory has no default ACL, as POSIX ACLs require.
#[derive(Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub umask: u32,
}

/// Directory `dir`'s default ACL, in its xattr form: where there is one, it decides the
/// permissions of what is created in the directory, and the umask does not apply.
fn default_acl(dir: BorrowedFd<'_>) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    match rfs::fgetxattr(dir, DEFAULT_ACL, &mut buf[..]) {
        Ok(n) if n > 0 => {
            buf.truncate(n);
            Some(buf)
        }
        _ => None,
    }
}

const DEFAULT_ACL: &str = "system.posix_acl_default";

/// What to create.
pub enum NewEntry<'a> {
    File { mode: u32, flags: i32 },
    Dir { mode: u32 },
    Node { mode: u32, rdev: u64 },
    Symlink { target: &'a Path },
}

fn create_empty(dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    match rfs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(_) | Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Makes the upper directory `dir` opaque. Its times stay: the marker is no change of
/// what the directory shows.
fn mark_opaque(dir: BorrowedFd<'_>) -> Result<()> {
    let times = layer::stat_at(dir, OsStr::new("."))?.map(|st| stat_times(&st));
    create_empty(dir, OsStr::new(OPAQUE))?;
    if let Some(t) = times {
        rfs::utimensat(dir, ".", &t, AtFlags::empty())?;
    }
    Ok(())
}

/// Writes the whiteout hiding `name` below the upper directory `dir`.
/// Whether `.wh.NAME` would be longer than a name can be.
fn whiteout_too_long(name: &OsStr) -> bool {
    whiteout::whiteout_name(name).len() > crate::lookup::NAME_MAX
}

fn write_whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    create_empty(dir, &whiteout::whiteout_name(name))
}

fn drop_whiteout(dir: BorrowedFd<'_>, name: &OsStr) {
    let _ = rfs::unlinkat(dir, whiteout::whiteout_name(name), AtFlags::empty());
}

fn has_upper_whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> Result<bool> {
    Ok(layer::stat_at(dir, &whiteout::whiteout_name(name))?.is_some())
}

/// Before `name` is made in the upper directory `dir`: an overlayfs-style whiteout
/// there (a character device 0/0, as fuse-overlayfs writes) is turned into the AUFS
/// form, which strata handles everywhere. `.wh.NAME` is written before the device goes,
/// so a crash in between leaves the name hidden. A name too long for `.wh.NAME` has
/// the device removed only: what replaces it hides the lower entry in turn (a
/// directory made over it is made opaque, see `create_entry`). Returns whether there
/// was one.
fn convert_overlay_whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> Result<bool> {
    match layer::stat_at(dir, name)? {
        Some(st) if whiteout::is_overlay_whiteout(&st) && !whiteout::is_marked_device(dir, name) => {
            if !whiteout_too_long(name) {
                write_whiteout(dir, name)?;
            }
            match rfs::unlinkat(dir, name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => Ok(true),
                Err(e) => Err(e),
            }
        }
        _ => Ok(false),
    }
}

impl Union {
    /// fsyncdir(2): the directory's entries as the upper holds them (names created,
    /// renamed or whited out through the mount) are on disk, as an application that
    /// renames a file into place and syncs the directory expects. A directory the
    /// upper does not have was changed by nothing through the mount: nothing to sync.
    pub fn fsyncdir(&self, ino: u64, datasync: bool) -> Result<()> {
        let Some(upper) = self.upper() else {
            return Ok(());
        };
        if self.cfg.volatile {
            return Ok(());
        }
        let path = self.node(ino)?.path()?;
        match upper.dir(&path)? {
            Some(d) if datasync => rfs::fdatasync(d.as_fd()),
            Some(d) => rfs::fsync(d.as_fd()),
            None => Ok(()),
        }
    }

    /// Whether a layer below the upper still shows `name` in the directory `parent`.
    fn lower_has(&self, parent: &State, ppath: &Path, name: &OsStr) -> Result<bool> {
        let lowers: Vec<usize> = parent
            .layers
            .iter()
            .copied()
            .filter(|&l| l != 0 || !self.has_upper)
            .collect();
        Ok(self.resolve(&lowers, ppath, name)?.is_some())
    }

    /// Gives `name` in the upper dir `dir` to the caller; the group stays the one the
    /// filesystem chose when the directory is set-group-id. Returns the entry's stat
    /// when nothing was changed after it was taken (the entry already had its owner and
    /// needed no set-id bits), so the caller need not take it again.
    fn give_to(&self, dir: BorrowedFd<'_>, name: &OsStr, who: Caller, mode: Option<u32>) -> Result<Option<Stat>> {
        self.give_to_in(dir, dir, name, who, mode)
    }

    /// `give_to` for an entry made in `dir` that is to live in directory `home`
    /// (built in the work dir, then moved): the group and the set-group-id bit of a
    /// directory follow `home`.
    fn give_to_in(
        &self,
        home: BorrowedFd<'_>,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        who: Caller,
        mode: Option<u32>,
    ) -> Result<Option<Stat>> {
        if self.give_recorded(home, dir, name, who, mode)? {
            return Ok(None);
        }
        let h = layer::stat_at(home, OsStr::new("."))?.ok_or(Errno::NOENT)?;
        let setgid_home = h.st_mode & libc::S_ISGID != 0;
        let (uid, gid) = self.map_owner_in(Some(who.uid), (!setgid_home).then_some(who.gid));
        let gid = if setgid_home { Some(h.st_gid) } else { gid };
        let Some(st) = layer::stat_at(dir, name)? else {
            return Ok(None);
        };
        // Made by the daemon, the entry is the daemon's: when the caller is who the
        // daemon runs as (root making files as root), it already has the owner it is to
        // get, and a chown would change nothing (the set-id bits it would clear are put
        // back below anyway).
        let chown = uid.is_some_and(|u| u != st.st_uid) || gid.is_some_and(|g| g != st.st_gid);
        if chown {
            crate::override_stat::chown_at(self, dir, name, uid, gid)?;
        }
        // chown clears set-id bits; put back what was asked for (and what a directory
        // inherits from a set-group-id parent), on top of the permissions the entry was
        // made with (the umask or a default ACL already shaped them).
        let inherits = setgid_home && layer::file_type(&st) == FileType::Directory;
        let special = mode.map(|m| (m & 0o7000) | if inherits { libc::S_ISGID } else { 0 });
        if let Some(bits) = special.filter(|b| b & 0o6000 != 0) {
            let m = (st.st_mode & 0o777) | bits;
            layer::chmod_nofollow(dir, name, Mode::from_raw_mode(m))?;
            return Ok(None);
        }
        Ok((!chown).then_some(st))
    }

    /// Counts a kernel reference on the entry just made at `path`.
    fn entered(&self, path: &Path, st: Stat, layers: Vec<usize>) -> (Arc<Node>, Stat) {
        let kind = layer::file_type(&st);
        let node = self.table.lookup_backing(&st, path, State { kind, layers }, true);
        (node, st)
    }

    /// Creates `name` in directory node `parent`. For files, also returns the open fd.
    pub fn create_entry(
        &self,
        parent: u64,
        name: &OsStr,
        what: NewEntry<'_>,
        who: Caller,
    ) -> Result<(Arc<Node>, Stat, Option<OwnedFd>)> {
        if whiteout::is_reserved(name) {
            return Err(Errno::PERM);
        }
        if !self.writable {
            return Err(Errno::ROFS);
        }
        let _ns = self.ns.read_recursive();
        let p = self.node(parent)?;
        let (path, found) = self.resolve_in(&p, name)?;
        if found.is_some() {
            return Err(Errno::EXIST);
        }
        self.copy_up(&p)?;
        let ppath = p.path()?;
        let upper = self.upper().ok_or(Errno::ROFS)?;
        let dir = upper.dir(&ppath)?.ok_or(Errno::NOENT)?;
        let dir = dir.as_fd();
        let overlay_whiteout = self.stack().forms[0].overlay && convert_overlay_whiteout(dir, name)?;
        let had_whiteout = overlay_whiteout || has_upper_whiteout(dir, name)?;
        // The daemon runs with umask 0: the backing filesystem applies a default ACL
        // of the upper directory itself; without one, the caller's umask applies.
        let inherited_acl = default_acl(dir);
        let mask = if inherited_acl.is_some() && !had_whiteout {
            0
        } else {
            who.umask & 0o777
        };
        let what = match what {
            NewEntry::File { mode, flags } => NewEntry::File {
                mode: mode & !mask,
                flags,
            },
            NewEntry::Dir { mode } => NewEntry::Dir { mode: mode & !mask },
            NewEntry::Node { mode, rdev } => NewEntry::Node {
                mode: mode & !mask,
                rdev,
            },
            other => other,
        };
        let mut fd = None;
        // The entry's stat when `give_to` took it last (nothing changed it since).
        let mut known = None;
        match what {
            NewEntry::File { mode, flags } => {
                let noatime = if self.stack().layers[0].noatime {
                    OFlags::NOATIME
                } else {
                    OFlags::empty()
                };
                let f = OFlags::from_bits_retain((flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY)) as u32)
                    | noatime
                    | OFlags::CREATE
                    | OFlags::EXCL
                    | OFlags::NOFOLLOW
                    | OFlags::CLOEXEC;
                fd = Some(rfs::openat(dir, name, f, Mode::from_raw_mode(mode & 0o7777))?);
                known = self.give_to(dir, name, who, Some(mode))?;
            }
            NewEntry::Dir { mode } if had_whiteout => {
                // Over a whiteout: built opaque in the work dir, then moved into place.
                let work = self.work.as_ref().ok_or(Errno::ROFS)?;
                let tmp = work.temp_name();
                let made = (|| {
                    rfs::mkdirat(work.fd(), &tmp, Mode::from_raw_mode(mode & 0o7777))?;
                    let sub = rfs::openat(
                        work.fd(),
                        &tmp,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    create_empty(sub.as_fd(), OsStr::new(OPAQUE))?;
                    // Built away from its parent, it inherits no ACL there: it takes
                    // the parent's default ACL for what is made in it (its own
                    // permissions came from the umask, which never grants more).
                    if let Some(acl) = &inherited_acl {
                        rfs::fsetxattr(&sub, DEFAULT_ACL, acl, rfs::XattrFlags::empty())?;
                    }
                    self.give_to_in(dir, work.fd(), &tmp, who, Some(mode))?;
                    rfs::renameat_with(work.fd(), &tmp, dir, name, RenameFlags::NOREPLACE)
                })();
                if let Err(e) = made {
                    work.discard(&tmp);
                    return Err(e);
                }
            }
            NewEntry::Dir { mode } => {
                rfs::mkdirat(dir, name, Mode::from_raw_mode(mode & 0o7777))?;
                known = self.give_to(dir, name, who, Some(mode))?;
            }
            NewEntry::Node { mode, rdev: 0 } if FileType::from_raw_mode(mode) == FileType::CharacterDevice => {
                // The overlayfs form of a whiteout: made with its marker (see
                // `whiteout::DEVICE_XATTR`) in the work dir, then moved into place, so
                // that it never shows as a deletion.
                let work = self.work.as_ref().ok_or(Errno::ROFS)?;
                let tmp = work.temp_name();
                let made = (|| {
                    let m = Mode::from_raw_mode(mode & 0o7777);
                    rfs::mknodat(work.fd(), &tmp, FileType::CharacterDevice, m, 0)?;
                    let fd = layer::open_path(work.fd(), &tmp)?;
                    let marker = OsStr::new(whiteout::DEVICE_XATTR);
                    layer::set_xattr(fd.as_fd(), marker, b"y", rfs::XattrFlags::empty()).map_err(|_| Errno::PERM)?;
                    self.give_to_in(dir, work.fd(), &tmp, who, Some(mode))?;
                    rfs::renameat_with(work.fd(), &tmp, dir, name, RenameFlags::NOREPLACE)
                })();
                if let Err(e) = made {
                    work.discard(&tmp);
                    return Err(e);
                }
            }
            NewEntry::Node { mode, rdev } => {
                let kind = FileType::from_raw_mode(mode);
                rfs::mknodat(dir, name, kind, Mode::from_raw_mode(mode & 0o7777), rdev)?;
                known = self.give_to(dir, name, who, Some(mode))?;
            }
            NewEntry::Symlink { target } => {
                rfs::symlinkat(target, dir, name)?;
                known = self.give_to(dir, name, who, None)?;
            }
        }
        if had_whiteout {
            drop_whiteout(dir, name);
        }
        let st = match known {
            Some(st) => st,
            None => layer::stat_at(dir, name)?.ok_or(Errno::NOENT)?,
        };
        let (node, st) = self.entered(&path, st, vec![0]);
        self.attrs_changed(parent);
        Ok((node, st, fd))
    }

    /// link(2): a new name for `ino` in `newparent`.
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<(Arc<Node>, Stat)> {
        if whiteout::is_reserved(newname) {
            return Err(Errno::PERM);
        }
        if !self.writable {
            return Err(Errno::ROFS);
        }
        let _ns = self.ns.read_recursive();
        let node = self.node(ino)?;
        let np = self.node(newparent)?;
        let (path, found) = self.resolve_in(&np, newname)?;
        if found.is_some() {
            return Err(Errno::EXIST);
        }
        self.copy_up(&node)?;
        self.copy_up(&np)?;
        let upper = self.upper().ok_or(Errno::ROFS)?;
        let src = node.path()?;
        let (sp, sn) = split(&src);
        let sdir = upper.dir(sp)?.ok_or(Errno::NOENT)?;
        let ddir = upper.dir(&np.path()?)?.ok_or(Errno::NOENT)?;
        if self.stack().forms[0].overlay {
            convert_overlay_whiteout(ddir.as_fd(), newname)?;
        }
        rfs::linkat(sdir.as_fd(), sn, ddir.as_fd(), newname, AtFlags::empty())?;
        drop_whiteout(ddir.as_fd(), newname);
        let st = layer::stat_at(ddir.as_fd(), newname)?.ok_or(Errno::NOENT)?;
        if let Some(w) = &self.work {
            w.count_name(st.st_dev, st.st_ino, 1);
        }
        let n = self.table.lookup(node.ino, &path, node.state());
        self.attrs_changed(newparent);
        self.attrs_changed(n.ino);
        Ok((n, st))
    }

    /// unlink(2) and rmdir(2).
    pub fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<()> {
        if !self.writable {
            return Err(Errno::ROFS);
        }
        // A name too long for a whiteout may need its whole directory brought up (see
        // `settle_dir`), which must not run beside other changes.
        let long = whiteout_too_long(name);
        let (_ns_shared, _ns_alone) = match long {
            false => (Some(self.ns.read_recursive()), None),
            true => (None, Some(self.ns.write())),
        };
        let p = self.node(parent)?;
        let (path, found) = self.resolve_in(&p, name)?;
        let mut f = found.ok_or(Errno::NOENT)?;
        match (dir, f.state.kind == FileType::Directory) {
            (true, false) => return Err(Errno::NOTDIR),
            (false, true) => return Err(Errno::ISDIR),
            _ => {}
        }
        if dir && !self.dir_is_empty(&f.state, &path)? {
            return Err(Errno::NOTEMPTY);
        }
        let pst = p.state();
        let ppath = p.path()?;
        let mut needs_whiteout = self.lower_has(&pst, &ppath, name)?;
        if needs_whiteout && long {
            self.settle_dir(&p, &ppath)?;
            f = self.resolve_in(&p, name)?.1.ok_or(Errno::NOENT)?;
            needs_whiteout = false;
        }
        self.copy_up(&p)?;
        let upper = self.upper().ok_or(Errno::ROFS)?;
        let udir = upper.dir(&ppath)?.ok_or(Errno::NOENT)?;
        let udir = udir.as_fd();
        if needs_whiteout {
            write_whiteout(udir, name)?;
        }
        // The node loses the name before the upper inode can be freed: a create running
        // beside this one may be given the same inode number at once, and must not find
        // it still naming a live node.
        let id = self.ino_of(&f.stat);
        let node = self.table.get(id);
        if let Some(n) = &node {
            if n.remove_path(&path, &f.stat) {
                self.reseat(n);
            }
        }
        if f.state.layers[0] == 0 {
            let removed = match dir {
                // Move it aside first (it may hold whiteouts), then clean it up.
                true => self.work.as_ref().ok_or(Errno::ROFS).and_then(|work| {
                    let tmp = work.temp_name();
                    rfs::renameat(udir, name, work.fd(), &tmp)?;
                    work.discard(&tmp);
                    Ok(())
                }),
                false => rfs::unlinkat(udir, name, AtFlags::empty()),
            };
            if let Err(e) = removed {
                if let Some(n) = &node {
                    n.add_path(&path);
                }
                return Err(e);
            }
        }
        self.name_gone(&f, &path, id);
        self.attrs_changed(parent);
        if node.is_some_and(|n| !n.paths().is_empty()) {
            self.attrs_changed(id);
        }
        Ok(())
    }

    /// A name of entry `f` went away (unlink, rmdir, replaced by a rename). A file with
    /// several names counts one fewer, in the index (copied there first when it is still
    /// only in a lower, so its other names learn of it); an upper inode that is gone
    /// releases its inode number.
    /// `id` is the node id the entry had.
    fn name_gone(&self, f: &Found, path: &Path, id: u64) {
        let is_file = f.state.kind == FileType::RegularFile;
        if let (Some(w), true) = (&self.work, is_file) {
            let upper = match (f.state.layers[0] == 0, f.stat.st_nlink > 1) {
                (true, _) => Some(f.stat),
                (false, true) => w
                    .copy_of(&f.stat)
                    .or_else(|| self.index_copy(f.state.layers[0], path).ok()),
                (false, false) => None,
            };
            if let Some(u) = upper {
                w.count_name(u.st_dev, u.st_ino, -1);
            }
        }
        // Any non-directory can have several names (fifos, devices and symlinks too):
        // the number is free only with its last name.
        let last_name = f.state.kind == FileType::Directory || f.stat.st_nlink <= 1;
        if f.state.layers[0] == 0 && last_name {
            self.table.forget_backing(f.stat.st_dev, f.stat.st_ino, id);
        }
    }

    /// A node for the entry at `path` (not counted): the table's when the kernel looked
    /// it up and `path` is the name it does I/O by, else a detached one for this name.
    /// A file with several names can have one in the upper and another still in a
    /// lower; the table node's state speaks for its first name only.
    fn node_for(&self, path: &Path, f: &Found) -> Arc<Node> {
        let id = self.ino_of(&f.stat);
        match self.table.get(id) {
            Some(n) if n.path().is_ok_and(|p| p == path) => n,
            _ => Arc::new(Node::detached(id, path, f.state.clone())),
        }
    }

    /// Brings a whole merged directory tree into the upper and makes every directory of
    /// it opaque, so it no longer depends on the layers below (used to move it).
    fn copy_tree(&self, path: &Path, st: &State) -> Result<()> {
        let udir = self.upper_dir(path)?;
        if st.layers == [0] {
            return Ok(());
        }
        for e in self.list_merged(st, path, 0)?.into_iter().skip(2) {
            let Some(child) = self.resolve(&st.layers, path, &e.name)? else {
                continue;
            };
            let cpath = path.join(&e.name);
            if child.state.kind == FileType::Directory {
                self.copy_tree(&cpath, &child.state)?;
            } else if child.state.layers[0] != 0 {
                let up = self.copy_entry_with(child.state.layers[0], path, &e.name, udir.as_fd(), Fill::Meta)?;
                self.table.record_origin(up.st_dev, up.st_ino, self.ino_of(&child.stat));
            }
        }
        mark_opaque(udir.as_fd())
    }

    /// Brings directory node `p` (at `path`) into the upper whole and makes it opaque,
    /// so that nothing of the lowers shows in it any more: how a lower entry is hidden
    /// when its whiteout name would be longer than NAME_MAX. Costly (the directory's
    /// tree is copied, files metadata-only where they can be), and only for such names.
    /// Called with the namespace lock held exclusively.
    fn settle_dir(&self, p: &Node, path: &Path) -> Result<()> {
        self.copy_tree(path, &p.state())?;
        // Everything at or below `path` now lives in the upper only.
        self.table.rename_paths(path, path, false);
        p.state.write().layers = vec![0];
        Ok(())
    }

    /// rename(2) / renameat2(2) with RENAME_NOREPLACE or RENAME_EXCHANGE.
    pub fn rename(&self, parent: u64, name: &OsStr, newparent: u64, newname: &OsStr, flags: u32) -> Result<()> {
        if whiteout::is_reserved(newname) {
            return Err(Errno::PERM);
        }
        if !self.writable {
            return Err(Errno::ROFS);
        }
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        if flags & !(libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE) != 0 {
            return Err(Errno::INVAL);
        }
        let _ns = self.ns.write();
        let p = self.node(parent)?;
        let np = self.node(newparent)?;
        let (from, src) = self.resolve_in(&p, name)?;
        let (to, dst) = self.resolve_in(&np, newname)?;
        let src = src.ok_or(Errno::NOENT)?;
        if noreplace && dst.is_some() {
            return Err(Errno::EXIST);
        }
        if exchange && dst.is_none() {
            return Err(Errno::NOENT);
        }
        let src_dir = src.state.kind == FileType::Directory;
        if let Some(d) = &dst {
            if self.ino_of(&d.stat) == self.ino_of(&src.stat) {
                return Ok(()); // the same file: nothing to do
            }
            let dst_dir = d.state.kind == FileType::Directory;
            if !exchange {
                match (src_dir, dst_dir) {
                    (true, false) => return Err(Errno::NOTDIR),
                    (false, true) => return Err(Errno::ISDIR),
                    (true, true) if !self.dir_is_empty(&d.state, &to)? => return Err(Errno::NOTEMPTY),
                    _ => {}
                }
            }
        }
        // Everything that moves must live in the upper, whole.
        let moved: Vec<(&PathBuf, &Found)> = match &dst {
            Some(d) if exchange => vec![(&from, &src), (&to, d)],
            _ => vec![(&from, &src)],
        };
        for (path, f) in &moved {
            if f.state.kind == FileType::Directory {
                self.copy_tree(path, &f.state)?;
                if exchange {
                    // Whole now, it must not merge with lowers under its new name.
                    let (pp, n) = split(path);
                    let d = self.upper_dir(pp)?;
                    let sub = rfs::openat(
                        d.as_fd(),
                        n,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    mark_opaque(sub.as_fd())?;
                }
            } else {
                self.copy_up_meta(&self.node_for(path, f))?;
            }
        }
        self.copy_up(&p)?;
        self.copy_up(&np)?;
        // A lower name too long for a whiteout: its directory comes up whole first,
        // while the whiteouts in it (the destination's among them) still hide what
        // they hide.
        if !exchange && whiteout_too_long(name) && self.lower_has(&p.state(), &p.path()?, name)? {
            self.settle_dir(&p, &p.path()?)?;
        }
        let upper = self.upper().ok_or(Errno::ROFS)?;
        let ppath = p.path()?;
        let nppath = np.path()?;
        let sdir = upper.dir(&ppath)?.ok_or(Errno::NOENT)?;
        let ddir = upper.dir(&nppath)?.ok_or(Errno::NOENT)?;
        let (sdir, ddir) = (sdir.as_fd(), ddir.as_fd());
        if !exchange && dst.is_none() && self.stack().forms[0].overlay {
            convert_overlay_whiteout(ddir, newname)?;
        }
        if !exchange {
            if let Some(d) = &dst {
                if d.state.kind == FileType::Directory && d.state.layers[0] == 0 {
                    // Merged-empty, but it may still hold whiteouts: empty it for real.
                    let sub = rfs::openat(
                        ddir,
                        newname,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    for (n, _, _) in layer::read_dir(sub.as_fd())? {
                        remove_tree(sub.as_fd(), &n);
                    }
                }
            }
            // A moved directory must not merge with what lowers have under its new name.
            if src_dir && self.lower_has(&np.state(), &nppath, newname)? {
                let sub = rfs::openat(
                    sdir,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                mark_opaque(sub.as_fd())?;
            }
            if self.lower_has(&p.state(), &ppath, name)? {
                match whiteout_too_long(name) {
                    false => write_whiteout(sdir, name)?,
                    true => self.settle_dir(&p, &ppath)?,
                }
            }
        }
        let rflags = if exchange {
            RenameFlags::EXCHANGE
        } else if noreplace {
            RenameFlags::NOREPLACE
        } else {
            RenameFlags::empty()
        };
        // A moved directory keeps its times (its ".." entry is no change it shows).
        let moved_times = match src_dir && !exchange {
            true => layer::stat_at(sdir, name)?.map(|st| stat_times(&st)),
            false => None,
        };
        rfs::renameat_with(sdir, name, ddir, newname, rflags)?;
        if let Some(t) = moved_times {
            let _ = rfs::utimensat(ddir, newname, &t, AtFlags::SYMLINK_NOFOLLOW);
        }
        if !exchange {
            drop_whiteout(ddir, newname);
        }
        // The kernel's view of paths follows.
        if let Some(d) = dst.as_ref().filter(|_| !exchange) {
            let id = self.ino_of(&d.stat);
            if let Some(n) = self.table.get(id) {
                if n.remove_path(&to, &d.stat) {
                    self.reseat(&n);
                }
            }
            self.name_gone(d, &to, id);
        }
        if src_dir || exchange {
            self.table.rename_paths(&from, &to, exchange);
        } else if let Some(n) = self.table.get(self.ino_of(&src.stat)) {
            n.rename_path(&from, &to);
            // The name moved is in the upper now; the node's state may speak for
            // another name of it (a file with several).
            if n.paths().len() > 1 {
                self.reseat(&n);
            }
        }
        self.attrs_changed(parent);
        if newparent != parent {
            self.attrs_changed(newparent);
        }
        Ok(())
    }

    pub fn readlink(&self, node: &Node) -> Result<Vec<u8>> {
        // A node's names move only under the namespace lock (renames hold it alone):
        // held here, the name used is the node's own, not what a rename just put there.
        let _ns = self.ns.read_recursive();
        let path = node.path()?;
        let (parent, name) = split(&path);
        let dir = self.stack().layers[node.top()].dir(parent)?.ok_or(Errno::NOENT)?;
        Ok(rfs::readlinkat(dir.as_fd(), name, Vec::new())?.into_bytes())
    }
}
