//! Resolving a name through the stack: upper first, then lowers top to bottom. The
//! first layer holding the name decides its type; a whiteout stops the search; a
//! directory merges with same-named directories below until an opaque one or a
//! non-directory.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;

use rustix::fs::{FileType, Stat};
use rustix::io::Errno;

use crate::inode::{Node, State};
use crate::layer::{self, Listing, Result};
use crate::union::Union;
use crate::whiteout;

/// Longest name the mount takes (as ext4).
pub const NAME_MAX: usize = 255;

/// A resolved entry: where it lives and the stat of its top-most copy.
pub struct Found {
    pub state: State,
    pub stat: Stat,
}

/// What one layer says about a name.
enum Probe {
    Absent,
    /// Whited out: the name does not exist from this layer down.
    Whiteout,
    Entry {
        kind: FileType,
        /// Taken when asked for (or needed to tell the type).
        stat: Option<Stat>,
        /// A directory that hides what the layers below have under its name.
        opaque: bool,
    },
}

impl Union {
    /// What layer `l` holds under `name` in its directory `parent`.
    ///
    /// The upper, and lower directories not listed yet, are asked on disk (a few system
    /// calls); lower directories already listed (by a readdir, or by a second lookup
    /// in them) answer from the listing.
    ///
    /// `top`: no layer above holds the name, so this one decides its type and stat.
    /// Otherwise a directory was found above, and only another directory counts here.
    fn probe(&self, l: usize, parent: &Path, name: &OsStr, top: bool, learn: bool) -> Result<Probe> {
        let stack = self.stack();
        let layer = &stack.layers[l];
        if layer.is_upper {
            return self.probe_disk(l, parent, name, top);
        }
        match self.listings.cached(layer, parent) {
            // A directory looked into before is read once, if small: the names asked
            // for next answer from its listing (see `Listings::learn`).
            None if learn => match self.listings.learn(layer, parent)? {
                Some(list) if list.complete => self.probe_listing(l, &list, parent, name, top),
                Some(_) => self.probe_disk(l, parent, name, top),
                None => Ok(Probe::Absent),
            },
            None => self.probe_disk(l, parent, name, top),
            Some(None) => Ok(Probe::Absent),
            Some(Some(list)) if list.complete => self.probe_listing(l, &list, parent, name, top),
            Some(Some(_)) => self.probe_disk(l, parent, name, top),
        }
    }

    /// Asks the layer on disk. The paths are opened from the layer root (no symlink
    /// followed), so a layer without the name costs one or two system calls.
    fn probe_disk(&self, l: usize, parent: &Path, name: &OsStr, top: bool) -> Result<Probe> {
        let forms = self.stack().forms[l];
        let stack = self.stack();
        let layer = &stack.layers[l];
        let rel = parent.join(name);
        if !top {
            // Below a directory: open the name as one. That tells its type and gives
            // the fd its opacity is read from.
            return match layer.dir_or_why(&rel) {
                Ok(dir) => Ok(Probe::Entry {
                    kind: FileType::Directory,
                    stat: None,
                    opaque: whiteout::is_opaque(dir.as_fd(), forms)?,
                }),
                // A non-directory (an overlayfs whiteout among them) ends the merge.
                Err(Errno::NOTDIR) | Err(Errno::LOOP) => Ok(Probe::Entry {
                    kind: FileType::Unknown,
                    stat: None,
                    opaque: false,
                }),
                Err(Errno::NOENT) | Err(Errno::XDEV) => self.absent_or_whiteout(l, parent, name),
                Err(e) => Err(e),
            };
        }
        match layer.stat(&rel)? {
            Some(st) if self.is_whiteout_dev(l, parent, name, &st) => Ok(Probe::Whiteout),
            Some(st) => {
                let kind = layer::file_type(&st);
                let opaque = kind == FileType::Directory && self.is_opaque_dir(l, &rel)?;
                Ok(Probe::Entry {
                    kind,
                    stat: Some(st),
                    opaque,
                })
            }
            None => self.absent_or_whiteout(l, parent, name),
        }
    }

    /// For a name layer `l` does not hold: whether it holds an AUFS whiteout for it.
    fn absent_or_whiteout(&self, l: usize, parent: &Path, name: &OsStr) -> Result<Probe> {
        let wh = self.stack().forms[l].aufs
            && self.stack().layers[l]
                .stat(&parent.join(whiteout::whiteout_name(name)))?
                .is_some();
        Ok(if wh { Probe::Whiteout } else { Probe::Absent })
    }

    fn probe_listing(&self, l: usize, list: &Listing, parent: &Path, name: &OsStr, want_stat: bool) -> Result<Probe> {
        let forms = self.stack().forms[l];
        let stack = self.stack();
        let layer = &stack.layers[l];
        let Some(e) = list.get(name) else {
            let wh = forms.aufs && list.get(&whiteout::whiteout_name(name)).is_some();
            return Ok(if wh { Probe::Whiteout } else { Probe::Absent });
        };
        let mut kind = e.kind;
        let mut stat = None;
        if want_stat || kind == FileType::Unknown || (forms.overlay && kind == FileType::CharacterDevice) {
            let st = e.stat(layer, parent)?;
            if self.is_whiteout_dev(l, parent, name, &st) {
                return Ok(Probe::Whiteout);
            }
            kind = layer::file_type(&st);
            stat = Some(st);
        }
        let opaque = kind == FileType::Directory && self.is_opaque_dir(l, &parent.join(name))?;
        Ok(Probe::Entry { kind, stat, opaque })
    }

    /// Whether `name` in directory `parent` of layer `l`, of stat `st`, is an
    /// overlayfs-style whiteout there: a character device 0/0 where that form is
    /// read, unless made through the mount (marked, in the upper).
    pub fn is_whiteout_dev(&self, l: usize, parent: &Path, name: &OsStr, st: &Stat) -> bool {
        if !self.stack().forms[l].overlay || !whiteout::is_overlay_whiteout(st) {
            return false;
        }
        if !self.stack().layers[l].is_upper {
            return true;
        }
        match self.stack().layers[l].dir(parent) {
            Ok(Some(d)) => !whiteout::is_marked_device(d.as_fd(), name),
            _ => true,
        }
    }

    /// Type and stat of `name` in directory `parent` of layer `l`, if it holds one.
    pub fn lower_entry(&self, l: usize, parent: &Path, name: &OsStr) -> Result<Option<(FileType, Stat)>> {
        Ok(match self.probe(l, parent, name, true, false)? {
            Probe::Entry {
                kind, stat: Some(st), ..
            } => Some((kind, st)),
            _ => None,
        })
    }

    /// Whether the directory at `rel` in layer `l` is opaque: from its kept listing in a
    /// lower, else on disk.
    fn is_opaque_dir(&self, l: usize, rel: &Path) -> Result<bool> {
        let forms = self.stack().forms[l];
        let stack = self.stack();
        let layer = &stack.layers[l];
        if !layer.is_upper {
            if let Some(Some(c)) = self.listings.cached(layer, rel) {
                return Ok((forms.aufs && c.opaque_aufs) || (forms.overlay && c.opaque_xattr));
            }
        }
        match layer.dir(rel)? {
            Some(dir) => whiteout::is_opaque(dir.as_fd(), forms),
            None => Err(Errno::NOENT),
        }
    }

    /// Resolves `name` in the merged directory at `parent`, which spans `parent_layers`.
    pub fn resolve(&self, parent_layers: &[usize], parent: &Path, name: &OsStr) -> Result<Option<Found>> {
        self.resolve_learning(parent_layers, parent, name, false)
    }

    /// `resolve`; with `learn`, lower directories of `parent` not listed yet are read
    /// (when small) to answer.
    fn resolve_learning(
        &self,
        parent_layers: &[usize],
        parent: &Path,
        name: &OsStr,
        learn: bool,
    ) -> Result<Option<Found>> {
        if name.len() > NAME_MAX {
            return Err(Errno::NAMETOOLONG);
        }
        if whiteout::is_reserved(name) {
            return Ok(None);
        }
        let mut found: Option<Found> = None;
        for &l in parent_layers {
            match self.probe(l, parent, name, found.is_none(), learn)? {
                Probe::Absent => continue,
                Probe::Whiteout => break,
                Probe::Entry { kind, stat, opaque } => {
                    match &mut found {
                        None => {
                            let stat = stat.ok_or(Errno::IO)?;
                            found = Some(Found {
                                state: State { kind, layers: vec![l] },
                                stat,
                            });
                        }
                        // A non-directory below a directory does not count.
                        Some(_) if kind != FileType::Directory => break,
                        Some(f) => f.state.layers.push(l),
                    }
                    if kind != FileType::Directory || opaque {
                        break;
                    }
                }
            }
        }
        Ok(found)
    }

    /// Resolves `name` under the directory node `parent`: (child path, found entry).
    pub fn resolve_in(&self, parent: &Node, name: &OsStr) -> Result<(std::path::PathBuf, Option<Found>)> {
        let st = parent.state();
        if st.kind != FileType::Directory {
            return Err(Errno::NOTDIR);
        }
        let ppath = parent.path()?;
        // The second lookup in a directory reads its small lower directories: a
        // directory looked into once (one path resolved through a deep stack) is not.
        let learn = parent.looked_in.swap(true, std::sync::atomic::Ordering::Relaxed);
        let found = self.resolve_learning(&st.layers, &ppath, name, learn)?;
        Ok((ppath.join(name), found))
    }

    /// Resolves a whole merged-view path from the root, component by component.
    pub fn resolve_path(&self, path: &Path) -> Result<Option<Found>> {
        let root = self.node(crate::inode::ROOT_ID)?;
        let mut layers = root.state().layers;
        let mut parent = std::path::PathBuf::new();
        let mut found = None;
        for c in path.components() {
            let name = c.as_os_str();
            if found
                .as_ref()
                .is_some_and(|f: &Found| f.state.kind != FileType::Directory)
            {
                return Ok(None);
            }
            let Some(f) = self.resolve(&layers, &parent, name)? else {
                return Ok(None);
            };
            layers = f.state.layers.clone();
            parent.push(name);
            found = Some(f);
        }
        Ok(found)
    }

    /// A node with several names lost or moved its first one: its state spoke for that
    /// name. Makes a name that lives in the upper the first (the copy all its names
    /// share, when one was copied up), else the first name that still resolves, with
    /// the state it resolves to now. Without this, I/O would go to a name the node's
    /// state does not describe (a lower-only name looked for in the upper: ENOENT).
    pub fn reseat(&self, node: &Node) {
        let mut best: Option<(std::path::PathBuf, Found)> = None;
        for p in node.paths() {
            let Ok(Some(f)) = self.resolve_path(&p) else {
                continue;
            };
            if f.state.kind != node.kind() || self.ino_of(&f.stat) != node.ino {
                continue;
            }
            let upper = f.state.layers[0] == 0 && self.has_upper;
            if upper || best.is_none() {
                best = Some((p, f));
            }
            if upper {
                break;
            }
        }
        if let Some((p, f)) = best {
            node.set_first(&p, f.state);
        }
    }

    /// The node id an entry found by `resolve` has.
    pub fn ino_of(&self, st: &Stat) -> u64 {
        self.table.ino_for(st.st_dev, st.st_ino)
    }

    /// Kernel lookup: resolves and counts one reference on the node.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<(Arc<Node>, Stat)> {
        let _ns = self.ns.read_recursive();
        let p = self.table.get(parent).ok_or(Errno::STALE)?;
        let (path, found) = self.resolve_in(&p, name)?;
        let f = found.ok_or(Errno::NOENT)?;
        let node = self.table.lookup_backing(&f.stat, &path, f.state, false);
        // A lower file with several names, one of them copied up: this name shows the
        // copy (without copying anything: reading changes nothing).
        let st = match self.index_copy_of(&f.stat) {
            Some(c) => c,
            None => f.stat,
        };
        Ok((node, st))
    }

    /// The copy in the index of a lower file with several names, when one of its
    /// names has been copied up (or gone): what all its other names show.
    pub fn index_copy_of(&self, lower: &Stat) -> Option<Stat> {
        if lower.st_nlink <= 1 || layer::file_type(lower) != FileType::RegularFile {
            return None;
        }
        self.work.as_ref()?.copy_of(lower)
    }

    /// The node, or ESTALE when the kernel names one we no longer know.
    pub fn node(&self, ino: u64) -> Result<Arc<Node>> {
        self.table.get(ino).ok_or(Errno::STALE)
    }

    /// Fresh stat of a node's top-most copy.
    pub fn stat_node(&self, node: &Node) -> Result<Stat> {
        let top = node.top();
        let st = self.stack().layers[top].stat(&node.path()?)?.ok_or(Errno::NOENT)?;
        if self.stack().layers[top].is_upper {
            return Ok(st);
        }
        Ok(self.index_copy_of(&st).unwrap_or(st))
    }
}
