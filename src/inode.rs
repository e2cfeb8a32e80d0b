//! The inode table: FUSE node ids, lookup counts and `forget`, and the mapping from
//! backing files to stable inode numbers.
//!
//! A node id is derived from the backing file that first gave the entry its identity:
//! `(device index << 56) | st_ino`, so it is unique across layers on different
//! filesystems and the same every time the entry is looked up. When an entry is copied
//! up, the upper copy is recorded as an alias of its origin, so st_ino survives copy-up.
//! Nodes are kept by path (merged-view path, relative to the mount root); a node with
//! several names (hard links) keeps all the names it was looked up by.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use rustix::fs::{FileType, Stat};
use rustix::io::Errno;

pub const ROOT_ID: u64 = 1;
const DEV_SHIFT: u32 = 56;

/// Where an entry lives: the layers holding it, top first. A non-directory has one;
/// a merged directory has every layer it merges (down to the first opaque one).
#[derive(Clone, Debug)]
pub struct State {
    pub kind: FileType,
    pub layers: Vec<usize>,
}

pub struct Node {
    pub ino: u64,
    /// Merged-view paths this node is known by; the first is the one used for I/O.
    paths: RwLock<Vec<PathBuf>>,
    pub state: RwLock<State>,
    /// Serializes copy-up of this node, so concurrent first writes copy once.
    pub copy_lock: Mutex<()>,
    /// Known to carry no visible xattr: getxattr answers at once (`ls -l` asks two per file).
    pub no_xattrs: AtomicBool,
    /// A directory a lookup has looked into: the next one reads its small lower
    /// directories once (see `Listings::learn`).
    pub looked_in: AtomicBool,
    /// Counts the times its data moved (copied up, filled, dropped): open handles
    /// reading it from where it was follow it.
    pub data_moves: AtomicU64,
    /// Its attributes when its last name went away: what fstat of a removed directory
    /// (or of a file open without a handle of ours) answers, as ext4 does.
    gone: Mutex<Option<Stat>>,
}

impl Node {
    /// A node outside the table, for an entry the kernel has not looked up.
    pub fn detached(ino: u64, path: &Path, state: State) -> Node {
        Node {
            ino,
            paths: RwLock::new(vec![path.to_path_buf()]),
            state: RwLock::new(state),
            copy_lock: Mutex::new(()),
            no_xattrs: AtomicBool::new(false),
            looked_in: AtomicBool::new(false),
            gone: Mutex::new(None),
            data_moves: AtomicU64::new(0),
        }
    }

    /// The path used for I/O; ENOENT once every name of the node is gone (an unlinked
    /// file still open is reached through its handles only).
    pub fn path(&self) -> Result<PathBuf, Errno> {
        self.paths.read().first().cloned().ok_or(Errno::NOENT)
    }

    pub fn state(&self) -> State {
        self.state.read().clone()
    }

    pub fn kind(&self) -> FileType {
        self.state.read().kind
    }

    pub fn top(&self) -> usize {
        self.state.read().layers[0]
    }

    /// Adds a name the node is known by (a lookup by it, or a removal that failed).
    pub fn add_path(&self, path: &Path) {
        let mut paths = self.paths.write();
        if !paths.iter().any(|p| p == path) {
            paths.push(path.to_path_buf());
        }
    }

    /// Every merged-view path this node is known by.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.paths.read().clone()
    }

    /// A name of this node went away (unlink, rmdir, replaced by rename). `st` is what
    /// the node looked like under that name; kept if it was the last one.
    ///
    /// Returns whether the node lost its first name while it keeps others: its state
    /// then no longer speaks for the name used for I/O (see `Union::reseat`).
    pub fn remove_path(&self, path: &Path, st: &Stat) -> bool {
        let mut paths = self.paths.write();
        let was_first = paths.first().is_some_and(|p| p == path);
        paths.retain(|p| p != path);
        if paths.is_empty() {
            let mut st = *st;
            st.st_nlink = match crate::layer::file_type(&st) {
                FileType::Directory => 0,
                _ => st.st_nlink.saturating_sub(1),
            };
            *self.gone.lock() = Some(st);
        }
        was_first && !paths.is_empty()
    }

    /// Its attributes when its last name went away, if it has none now.
    pub fn gone_stat(&self) -> Option<Stat> {
        match self.paths.read().is_empty() {
            true => *self.gone.lock(),
            false => None,
        }
    }

    /// One name of this node (a non-directory) was renamed.
    pub fn rename_path(&self, from: &Path, to: &Path) {
        let mut paths = self.paths.write();
        // `to` may already be one of its names (a rename onto another name of the same
        // file is a no-op in rename(2), but a stale name may be left over).
        paths.retain(|p| p != to);
        for p in paths.iter_mut() {
            if p == from {
                *p = to.to_path_buf();
            }
        }
    }

    /// Names and state together, for `Union::reseat`: makes `path` the first name, with
    /// `state` (what it resolves to now).
    pub fn set_first(&self, path: &Path, state: State) {
        let mut st = self.state.write();
        let mut paths = self.paths.write();
        if let Some(i) = paths.iter().position(|p| p == path) {
            let p = paths.remove(i);
            paths.insert(0, p);
            *st = state;
        }
    }
}

impl Node {
    /// After a change of the stack: the names that still lead to this node, the first
    /// the one used for I/O, and the state that name resolves to now. With none left,
    /// the node is gone as if unlinked (`st`: what it looked like).
    pub fn renamed_by_stack(&self, names: Vec<PathBuf>, state: Option<State>, st: &Stat) {
        let mut s = self.state.write();
        let mut paths = self.paths.write();
        match state {
            Some(state) if !names.is_empty() => {
                *paths = names;
                *s = state;
            }
            _ => {
                drop(paths);
                drop(s);
                for p in self.paths() {
                    self.remove_path(&p, st);
                }
            }
        }
        self.no_xattrs.store(false, Ordering::Relaxed);
    }
}

struct Slot {
    node: Arc<Node>,
    lookups: u64,
}

pub struct InodeTable {
    nodes: Mutex<HashMap<u64, Slot>>,
    /// Upper-layer (st_dev, st_ino) of copied-up entries -> the node id of their origin.
    origins: Mutex<HashMap<(u64, u64), u64>>,
    /// st_dev values seen, index + 1 is the device part of node ids.
    devs: Mutex<Vec<u64>>,
    /// Ids handed out when a backing inode number was reused while the kernel still
    /// held the node of the file that had it before.
    fresh: AtomicU64,
}

const FRESH_BASE: u64 = 0xFF << DEV_SHIFT;

impl InodeTable {
    pub fn new(root: State) -> InodeTable {
        let t = InodeTable {
            nodes: Mutex::new(HashMap::new()),
            origins: Mutex::new(HashMap::new()),
            devs: Mutex::new(Vec::new()),
            fresh: AtomicU64::new(0),
        };
        let node = Arc::new(Node {
            ino: ROOT_ID,
            paths: RwLock::new(vec![PathBuf::new()]),
            state: RwLock::new(root),
            copy_lock: Mutex::new(()),
            no_xattrs: AtomicBool::new(false),
            looked_in: AtomicBool::new(false),
            gone: Mutex::new(None),
            data_moves: AtomicU64::new(0),
        });
        t.nodes.lock().insert(ROOT_ID, Slot { node, lookups: 1 });
        t
    }

    /// Node id for a backing file, honouring copy-up origins.
    pub fn ino_for(&self, dev: u64, ino: u64) -> u64 {
        if let Some(id) = self.origins.lock().get(&(dev, ino)) {
            return *id;
        }
        let idx = {
            let mut devs = self.devs.lock();
            match devs.iter().position(|d| *d == dev) {
                Some(i) => i,
                None => {
                    devs.push(dev);
                    devs.len() - 1
                }
            }
        } as u64;
        ((idx + 1) << DEV_SHIFT) | (ino & ((1 << DEV_SHIFT) - 1))
    }

    /// Counts one kernel lookup of the entry whose backing file has stat `st`, reached
    /// by `path` (`created`: it was just made).
    ///
    /// A node id is never given to a new file while the kernel may still hold the old
    /// file that had it. A backing inode number is reused by its filesystem as soon as
    /// it is free, and a request beside this one may have freed it a moment ago: when
    /// the id belongs to a node whose names are all gone, or to a live node that cannot
    /// be this entry (one just created; another type; a directory, or a file with one
    /// name, known by another path), the entry gets a fresh id. Handing out the old one
    /// would make the kernel take the new entry for the old (for a directory it would
    /// try to move the old one's dentry, and fail with ESTALE).
    pub fn lookup_backing(&self, st: &Stat, path: &Path, state: State, created: bool) -> Arc<Node> {
        let (dev, ino) = (st.st_dev, st.st_ino);
        let id = self.ino_for(dev, ino);
        let clash = self.nodes.lock().get(&id).and_then(|s| {
            // State before names, as everywhere that takes both.
            let kind = s.node.kind();
            let paths = s.node.paths.read();
            let single = kind == FileType::Directory || st.st_nlink <= 1;
            if paths.is_empty() {
                Some("gone")
            } else if created {
                Some("live")
            } else if kind != state.kind {
                Some("of another type")
            } else if single && paths.iter().all(|p| p != path) {
                Some("known by another path")
            } else {
                None
            }
        });
        let Some(why) = clash else {
            return self.lookup(id, path, state);
        };
        if why != "gone" {
            tracing::warn!(
                "{}: inode number {ino} still names a node {why} ({id:#x}); giving a fresh id",
                path.display()
            );
        }
        let fresh = FRESH_BASE | self.fresh.fetch_add(1, Ordering::Relaxed);
        self.origins.lock().insert((dev, ino), fresh);
        self.lookup(fresh, path, state)
    }

    /// The backing file (dev, ino) of node `id` is gone: its number may come back for a
    /// new file. A mapping already given to a newer file of that number stays.
    pub fn forget_backing(&self, dev: u64, ino: u64, id: u64) {
        let mut origins = self.origins.lock();
        if origins.get(&(dev, ino)) == Some(&id) {
            origins.remove(&(dev, ino));
        }
    }

    /// Remembers that the upper file (dev, ino) is the copy of node `id`.
    pub fn record_origin(&self, dev: u64, ino: u64, id: u64) {
        self.origins.lock().insert((dev, ino), id);
    }

    /// Every node the kernel holds (for a change of the whole stack).
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        self.nodes.lock().values().map(|s| s.node.clone()).collect()
    }

    pub fn get(&self, ino: u64) -> Option<Arc<Node>> {
        self.nodes.lock().get(&ino).map(|s| s.node.clone())
    }

    /// Counts one kernel lookup of node `ino` by `path`, creating the node if new.
    pub fn lookup(&self, ino: u64, path: &Path, state: State) -> Arc<Node> {
        let mut nodes = self.nodes.lock();
        if let Some(slot) = nodes.get_mut(&ino) {
            slot.lookups += 1;
            let node = slot.node.clone();
            drop(nodes);
            // The state speaks for the node's first name. A lookup by a name still in a
            // lower, of a node already in the upper (a lookup that raced with a copy-up,
            // or another name of a file with several, one of them copied up), must not
            // send the node back down: that name is only added. Otherwise the name
            // looked up becomes the first, with the state it was found in.
            let mut st = node.state.write();
            let mut paths = node.paths.write();
            if st.layers[0] == 0 && state.layers[0] != 0 && st.kind == state.kind {
                if !paths.iter().any(|p| p == path) {
                    paths.push(path.to_path_buf());
                }
            } else {
                paths.retain(|p| p != path);
                paths.insert(0, path.to_path_buf());
                *st = state;
            }
            drop(paths);
            drop(st);
            return node;
        }
        let node = Arc::new(Node {
            ino,
            paths: RwLock::new(vec![path.to_path_buf()]),
            state: RwLock::new(state),
            copy_lock: Mutex::new(()),
            no_xattrs: AtomicBool::new(false),
            looked_in: AtomicBool::new(false),
            gone: Mutex::new(None),
            data_moves: AtomicU64::new(0),
        });
        nodes.insert(
            ino,
            Slot {
                node: node.clone(),
                lookups: 1,
            },
        );
        node
    }

    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_ID {
            return;
        }
        let mut nodes = self.nodes.lock();
        if let Some(slot) = nodes.get_mut(&ino) {
            slot.lookups = slot.lookups.saturating_sub(n);
            if slot.lookups == 0 {
                nodes.remove(&ino);
            }
        }
    }

    /// A directory rename moved `from` to `to`: every path at or below `from` moves.
    /// With `exchange`, paths at or below `to` move to `from` at the same time. What
    /// moved was copied up whole before, so it now lives in the upper only.
    pub fn rename_paths(&self, from: &Path, to: &Path, exchange: bool) {
        for slot in self.nodes.lock().values() {
            // State before names, as everywhere that takes both.
            let mut state = slot.node.state.write();
            let mut paths = slot.node.paths.write();
            let mut first_moved = None;
            for (i, p) in paths.iter_mut().enumerate() {
                let new = match p.strip_prefix(from) {
                    Ok(rest) => Some(join_rel(to, rest)),
                    Err(_) if exchange => p.strip_prefix(to).ok().map(|rest| join_rel(from, rest)),
                    Err(_) => None,
                };
                if let Some(n) = new {
                    *p = n;
                    first_moved.get_or_insert(i);
                }
            }
            if let Some(i) = first_moved {
                // A moved name is in the upper now: make it the one used for I/O (other
                // names of a file with several may still be lower ones).
                paths.swap(0, i);
                state.layers = vec![0];
            }
        }
    }
}

fn join_rel(base: &Path, rest: &Path) -> PathBuf {
    if rest.as_os_str().is_empty() {
        base.to_path_buf()
    } else {
        base.join(rest)
    }
}
