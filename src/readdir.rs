//! Merged directory listings. A listing is taken once per open directory handle (at
//! the first read) and served from that snapshot, so offsets stay valid across
//! seekdir/telldir while entries are created and removed. Each visible name appears
//! once; whiteouts, opaque markers and everything below an opaque directory are hidden.
//!
//! As on ext4, a listing is in the order of a hash of the names and an offset is the
//! hash of the last name returned, so that a listing continued from any snapshot
//! (the kernel's listing cache continues one wherever it finds the reader's offset)
//! returns each name at most once.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use rustix::fs::FileType;
use rustix::io::Errno;

use std::path::Path;

use crate::inode::{Node, State};
use crate::layer::{self, ListEntry, Result};
use crate::union::Union;
use crate::whiteout;

pub struct DirEntry {
    pub name: OsString,
    pub ino: u64,
    pub kind: FileType,
    /// The offset to continue after this entry (set in snapshots, see `list_dir`).
    pub off: u64,
}

/// The offset of a name: a hash, past the offsets 1 and 2 of `.` and `..`, and below
/// 2^63 (offsets are signed in the kernel). Were two names of one directory to share a
/// hash (odds of about n^2 / 2^64 for n names), a listing continued between the two
/// would skip the second, as on ext4.
fn name_offset(name: &OsStr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    name.hash(&mut h);
    (h.finish() >> 1).max(3)
}

/// An open directory: its node and, once read, the snapshot of its listing.
pub struct DirHandle {
    pub node: Arc<Node>,
    pub entries: Mutex<Option<Arc<Vec<DirEntry>>>>,
}

#[derive(Default)]
pub struct DirHandles {
    map: Mutex<HashMap<u64, Arc<DirHandle>>>,
    next: AtomicU64,
}

impl DirHandles {
    /// The nodes of every open directory handle.
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        self.map.lock().values().map(|h| h.node.clone()).collect()
    }

    pub fn insert(&self, node: Arc<Node>) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.map.lock().insert(
            fh,
            Arc::new(DirHandle {
                node,
                entries: Mutex::new(None),
            }),
        );
        fh
    }

    pub fn get(&self, fh: u64) -> Result<Arc<DirHandle>> {
        self.map.lock().get(&fh).cloned().ok_or(Errno::BADF)
    }

    pub fn remove(&self, fh: u64) {
        self.map.lock().remove(&fh);
    }
}

/// One layer's entries for a merge: read afresh (the upper) or kept (a lower).
enum Layered {
    Fresh(Vec<(OsString, FileType, u64)>),
    Kept(Arc<layer::Listing>),
}

impl Layered {
    fn len(&self) -> usize {
        match self {
            Layered::Fresh(v) => v.len(),
            Layered::Kept(l) => l.entries.len(),
        }
    }

    /// Entry `i`: name, type, inode number and, from a kept listing, the entry.
    fn get(&self, i: usize) -> (&OsStr, FileType, u64, Option<&ListEntry>) {
        match self {
            Layered::Fresh(v) => (v[i].0.as_os_str(), v[i].1, v[i].2, None),
            Layered::Kept(l) => {
                let e = &l.entries[i];
                (e.name.as_os_str(), e.kind, e.ino, Some(e))
            }
        }
    }
}

impl Union {
    /// The merged listing of a directory node, `.` and `..` first.
    /// The caller holds `ns` (shared or exclusive).
    pub fn list_dir(&self, node: &Node) -> Result<Vec<DirEntry>> {
        let path = node.path()?;
        let mut list = self.list_merged(&node.state(), &path, node.ino)?;
        list[1].ino = match path.parent() {
            Some(pp) => self.dir_ino(pp).unwrap_or(node.ino),
            None => node.ino, // the mount root: its parent lies outside
        };
        list[0].off = 1;
        list[1].off = 2;
        for e in &mut list[2..] {
            e.off = name_offset(&e.name);
        }
        list[2..].sort_unstable_by(|a, b| (a.off, &a.name).cmp(&(b.off, &b.name)));
        Ok(list)
    }

    /// The node id of the merged directory at `path` (from its top-most copy).
    fn dir_ino(&self, path: &Path) -> Result<u64> {
        if path.as_os_str().is_empty() {
            return Ok(crate::inode::ROOT_ID);
        }
        for layer in self.stack().layers.iter() {
            if let Some(st) = layer.stat(path)? {
                if layer::file_type(&st) == FileType::Directory {
                    return Ok(self.ino_of(&st));
                }
            }
        }
        Err(Errno::NOENT)
    }

    /// The merged listing of the directory at `path` spanning `st.layers`.
    pub fn list_merged(&self, st: &State, path: &Path, ino: u64) -> Result<Vec<DirEntry>> {
        if st.kind != FileType::Directory {
            return Err(Errno::NOTDIR);
        }
        let mut out = vec![
            DirEntry {
                name: ".".into(),
                ino,
                kind: FileType::Directory,
                off: 0,
            },
            DirEntry {
                name: "..".into(),
                ino,
                kind: FileType::Directory,
                off: 0,
            },
        ];
        // Every layer's listing is read first and kept for the merge, which then
        // borrows the names: one copy of each name (the one returned), not three.
        let stack = self.stack();
        let mut lists: Vec<(usize, Layered)> = Vec::with_capacity(st.layers.len());
        for &l in &st.layers {
            let layer = &stack.layers[l];
            // The upper is read afresh; lower listings are kept.
            if layer.is_upper {
                let Some(dir) = layer.dir(path)? else { continue };
                lists.push((l, Layered::Fresh(layer::read_dir(dir.as_fd())?)));
            } else if let Some(list) = self.listings.get(layer, path)? {
                lists.push((l, Layered::Kept(list)));
            }
        }
        let total: usize = lists.iter().map(|(_, e)| e.len()).sum();
        out.reserve(total);
        // Names already shown or hidden by a layer above. A directory of one layer (the
        // upper's own directories) needs none.
        let merging = lists.len() > 1;
        let mut seen: HashSet<&OsStr> = HashSet::with_capacity(if merging { total } else { 0 });
        for (i, (l, list)) in lists.iter().enumerate() {
            let l = *l;
            let forms = stack.forms[l];
            let layer = &stack.layers[l];
            let last = i + 1 == lists.len();
            let mut hidden = Vec::new();
            for j in 0..list.len() {
                let (name, mut kind, d_ino, cached) = list.get(j);
                if whiteout::is_reserved(name) {
                    if forms.aufs && !last {
                        if let Some(h) = whiteout::hidden_name(name) {
                            hidden.push(h);
                        }
                    }
                    continue;
                }
                if merging && seen.contains(name) {
                    continue;
                }
                let mut dev = layer.dev;
                let mut ino = d_ino;
                if kind == FileType::Unknown || (forms.overlay && kind == FileType::CharacterDevice) {
                    let s = match cached {
                        Some(e) => e.stat(layer, path)?,
                        None => match layer.stat(&path.join(name))? {
                            Some(s) => s,
                            None => continue,
                        },
                    };
                    if self.is_whiteout_dev(l, path, name, &s) {
                        if merging {
                            seen.insert(name);
                        }
                        continue;
                    }
                    kind = layer::file_type(&s);
                    dev = s.st_dev;
                    ino = s.st_ino;
                }
                out.push(DirEntry {
                    name: name.to_os_string(),
                    ino: self.table.ino_for(dev, ino),
                    kind,
                    off: 0,
                });
                if merging && !last {
                    seen.insert(name);
                }
            }
            if merging {
                seen.extend(hidden);
            }
        }
        Ok(out)
    }

    /// The listing of an open directory handle, taken at its first read (offset 0
    /// re-reads it, as rewinddir does), and the index of the first entry past `offset`.
    /// A handle whose first reads the kernel answered from its cache is served a new
    /// listing from where the cached one stopped.
    pub fn dir_snapshot(&self, fh: u64, offset: u64) -> Result<(Arc<Vec<DirEntry>>, usize)> {
        let h = self.dirs.get(fh)?;
        let mut cur = h.entries.lock();
        let list = match (cur.as_ref(), offset > 0) {
            (Some(e), true) => e.clone(),
            _ => {
                let _ns = self.ns.read_recursive();
                let e = Arc::new(self.list_dir(&h.node)?);
                *cur = Some(e.clone());
                e
            }
        };
        let start = list.partition_point(|e| e.off <= offset);
        Ok((list, start))
    }

    /// True when no name is visible in the merged directory.
    pub fn dir_is_empty(&self, st: &State, path: &Path) -> Result<bool> {
        Ok(self.list_merged(st, path, 0)?.len() <= 2)
    }
}
