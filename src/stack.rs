//! Changing the stack of a live mount: a lower layer added at a position, or one
//! removed. A change waits for the requests in flight and holds new ones (the gate),
//! swaps in the new stack, and resolves every node the kernel holds again against it:
//! a directory keeps its node (and so its inode number, and whatever is mounted on
//! it), a file whose name now leads to another file loses that name. Once requests
//! flow again, the kernel is told to ask again for the attributes of every node and
//! for every name the change may have made appear, vanish or change.
//!
//! A layer is not removed while it is in use (EBUSY, naming the process): a file of
//! it is open, or a directory found only in it is open or a process's working or
//! root directory. The whole mount refuses changes under `metacopy=on`, where
//! metadata-only copies in the upper take their data from the lowers by name.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::fs::FileType;
use rustix::io::Errno;

use crate::inode::{Node, State, ROOT_ID};
use crate::layer::{self, Layer};
use crate::union::{Stack, Union};
use crate::whiteout::{self, Forms};

/// A change asked for.
#[derive(Debug, Clone)]
pub enum Change {
    /// Adds directory `dir` as a lower layer at position `at` among the lowers (0:
    /// the top one, right under the upper).
    Add { dir: PathBuf, at: usize },
    /// Removes the lower layer `dir`.
    Del { dir: PathBuf },
}

/// Why a change was refused: an errno and a sentence naming what and why.
#[derive(Debug)]
pub struct Refused {
    pub errno: Errno,
    pub msg: String,
}

fn refused(errno: Errno, msg: String) -> Refused {
    Refused { errno, msg }
}

/// How long a change waits for the requests in flight (a long copy-up) to finish.
const GATE_WAIT: Duration = Duration::from_secs(30);

/// How long `del` waits for the RELEASE of files closed just before it.
const RELEASE_WAIT: Duration = Duration::from_secs(1);

/// What the kernel is told once requests flow again.
#[derive(Default)]
struct Invalidations {
    /// Nodes whose attributes (and, for directories, kept listings) are dropped.
    inodes: Vec<(u64, bool)>,
    /// Names whose cached answer (an entry or an absence) runs out.
    entries: HashSet<(u64, OsString)>,
}

/// A process using a path of the mount (from /proc).
struct User {
    pid: u32,
    comm: String,
    how: &'static str,
    rel: PathBuf,
}

impl Union {
    /// The lower layers, top first, as given (or added).
    pub fn lowers(&self) -> Vec<PathBuf> {
        let s = self.stack();
        s.layers[self.first_lower()..].iter().map(|l| l.path.clone()).collect()
    }

    /// Applies `change` to the live mount. Returns once the new stack is in place and
    /// the kernel has been told what to ask for again.
    pub fn change_stack(&self, change: &Change) -> Result<(), Refused> {
        if self.cfg.metacopy {
            return Err(refused(
                Errno::OPNOTSUPP,
                "this mount has metacopy=on: metadata-only copies in the upper read their data \
                 from the lower layers by name, and a change of the stack could change that data; \
                 unmount and mount with the new layers instead"
                    .into(),
            ));
        }
        let added = match change {
            Change::Add { dir, .. } => Some(self.open_added(dir)?),
            Change::Del { .. } => None,
        };
        // Who uses what, read before the gate is taken: reading another process's
        // /proc entries (or the mount point) while requests are held could wait on
        // one of them.
        let mp = std::fs::canonicalize(&self.cfg.mountpoint).unwrap_or_else(|_| self.cfg.mountpoint.clone());
        let users = match change {
            Change::Del { .. } => proc_users(&mp),
            Change::Add { .. } => Vec::new(),
        };
        if let Change::Del { dir } = change {
            self.wait_for_releases(dir, &users);
        }
        let Some(gate) = self.gate.try_write_for(GATE_WAIT) else {
            return Err(refused(
                Errno::BUSY,
                format!(
                    "requests to the mount were still running after {} s (a long copy-up?): try again",
                    GATE_WAIT.as_secs()
                ),
            ));
        };
        let old = self.stack().clone();
        let first = self.first_lower();
        let lowers = old.layers.len() - first;
        // Positions in the old stack -> in the new one (None: removed), and the
        // position from which names may have changed.
        let (new, remap, changed_from): (Stack, Vec<Option<usize>>, usize) = match (change, added) {
            (Change::Add { at, dir }, Some(layer)) => {
                if *at > lowers {
                    return Err(refused(
                        Errno::INVAL,
                        format!("--at {at}: the mount has {lowers} lower layers (0 to {lowers} may be given)"),
                    ));
                }
                if let Some(l) = old.layers.iter().find(|l| l.same_dir_as(&layer)) {
                    return Err(refused(
                        Errno::EXIST,
                        format!(
                            "{} is already a layer of this mount ({})",
                            dir.display(),
                            l.path.display()
                        ),
                    ));
                }
                let pos = first + at;
                let record = crate::override_stat::root_record(layer.root())
                    .map_err(|e| refused(e, format!("{}: reading its root's xattrs: {e}", dir.display())))?;
                let mut new = Stack::clone(&old);
                new.layers.insert(pos, Arc::new(layer));
                new.forms.insert(pos, Forms::for_layer(false, self.cfg.whiteout_form));
                new.records.insert(pos, record);
                let remap = (0..old.layers.len())
                    .map(|i| Some(if i < pos { i } else { i + 1 }))
                    .collect();
                (new, remap, pos)
            }
            (Change::Del { dir }, _) => {
                let k = find_layer(&old, first, dir)?;
                if lowers == 1 {
                    return Err(refused(
                        Errno::INVAL,
                        format!("{} is the only lower layer: a mount keeps at least one", dir.display()),
                    ));
                }
                self.check_unused(&old, k, &users, &mp)?;
                let mut new = Stack::clone(&old);
                new.layers.remove(k);
                new.forms.remove(k);
                new.records.remove(k);
                let remap = (0..old.layers.len())
                    .map(|i| match i.cmp(&k) {
                        std::cmp::Ordering::Less => Some(i),
                        std::cmp::Ordering::Equal => None,
                        std::cmp::Ordering::Greater => Some(i - 1),
                    })
                    .collect();
                (new, remap, k)
            }
            (Change::Add { .. }, None) => unreachable!(),
        };
        // Layers at or below the change, in the old and the new stack: only their
        // names can appear, vanish or change.
        let mut touched: Vec<Arc<Layer>> = old.layers[changed_from..].to_vec();
        for l in &new.layers[changed_from..] {
            if !touched.iter().any(|t| Arc::ptr_eq(t, l)) {
                touched.push(l.clone());
            }
        }
        self.replace_stack(new);
        let mut inval = Invalidations::default();
        self.resolve_all_again(&old, &remap, &touched, &mut inval);
        drop(gate);
        self.send(&inval);
        let what = match change {
            Change::Add { dir, at } => format!("added {} at {at}", dir.display()),
            Change::Del { dir } => format!("removed {}", dir.display()),
        };
        tracing::info!(
            "layers: {what}; {} nodes, {} names told to the kernel",
            inval.inodes.len(),
            inval.entries.len()
        );
        Ok(())
    }

    /// Opens a directory to add as a lower layer, with the checks a mount makes.
    fn open_added(&self, dir: &Path) -> Result<Layer, Refused> {
        let mut layer = Layer::open(false, dir).map_err(|e| refused(Errno::NOENT, e))?;
        let canon = std::fs::canonicalize(dir).map_err(|e| refused(Errno::NOENT, format!("{}: {e}", dir.display())))?;
        let nested = |a: &Path, b: &Path| a.starts_with(b) || b.starts_with(a);
        let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let mut others: Vec<(&str, PathBuf)> = vec![("the mount point", self.cfg.mountpoint.clone())];
        if let Some(u) = self.upper() {
            if layer.same_dir_as(&u) {
                others.push(("the upper layer", canon.clone()));
            }
            others.push(("the upper layer", u.path.clone()));
        }
        if let Some(w) = &self.cfg.workdir {
            others.push(("the work dir", w.clone()));
        }
        for (what, p) in others {
            if nested(&canonical(&p), &canon) {
                return Err(refused(
                    Errno::INVAL,
                    format!(
                        "{} and {what} {} are the same directory or nested in each other",
                        dir.display(),
                        p.display()
                    ),
                ));
            }
        }
        if canon.to_string_lossy().contains('\n') {
            return Err(refused(
                Errno::INVAL,
                format!("{}: a layer path may not hold a newline", dir.display()),
            ));
        }
        layer.path = canon;
        layer.keep_dirs(256);
        Ok(layer)
    }

    /// close(2) returns before the kernel's RELEASE reaches the daemon, so a file of
    /// the layer closed just before `del` may still hold a handle here. Waits a moment
    /// (up to RELEASE_WAIT) for such handles to go; not when a process (`users`, from
    /// /proc) holds one of them open, which is a use that the check refuses at once.
    fn wait_for_releases(&self, dir: &Path, users: &[User]) {
        let Ok(k) = find_layer(&self.stack(), self.first_lower(), dir) else {
            return;
        };
        let deadline = Instant::now() + RELEASE_WAIT;
        loop {
            let handles: Vec<_> = self
                .files
                .all()
                .into_iter()
                .filter(|h| uses_layer(&h.node.state(), k))
                .collect();
            let held = handles.iter().any(|h| {
                h.node
                    .paths()
                    .iter()
                    .any(|p| users.iter().any(|u| u.how == "open file" && &u.rel == p))
            });
            if handles.is_empty() || held || Instant::now() >= deadline {
                return;
            }
            drop(handles);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Refuses (EBUSY) when layer `k` of `old` is used: a file of it is open, or a
    /// directory found only in it is open or some process's working or root directory.
    fn check_unused(&self, old: &Stack, k: usize, users: &[User], mp: &Path) -> Result<(), Refused> {
        let shown = |rel: &Path| mp.join(rel).display().to_string();
        let path = &old.layers[k].path;
        let uses = |s: &State| uses_layer(s, k);
        let busy = |what: String| refused(Errno::BUSY, format!("layer {} is in use: {what}", path.display()));
        for u in users {
            if let Ok(Some(f)) = self.resolve_path(&u.rel) {
                if uses(&f.state) {
                    let what = match u.how {
                        "open file" => "is open in".to_string(),
                        how => format!("is the {how} of"),
                    };
                    // Every process that holds it so (a forked child shares its fds).
                    let mut who: Vec<String> = Vec::new();
                    for o in users.iter().filter(|o| o.rel == u.rel && o.how == u.how) {
                        let w = format!("process {} ({})", o.pid, o.comm);
                        if !who.contains(&w) {
                            who.push(w);
                        }
                    }
                    return Err(busy(format!("{} {what} {}", shown(&u.rel), who.join(", "))));
                }
            }
        }
        for h in self.files.all() {
            if uses(&h.node.state()) {
                let p = h.node.paths().first().cloned();
                let name = p.as_deref().map(&shown).unwrap_or_else(|| "a removed file".into());
                let pid = h.opener.load(std::sync::atomic::Ordering::Relaxed);
                // Name a process holding it now (the opener may have passed it on).
                let holder = p
                    .and_then(|p| users.iter().find(|u| u.how == "open file" && u.rel == p))
                    .map(|u| (u.pid, u.comm.clone()))
                    .unwrap_or_else(|| (pid, comm(pid)));
                return Err(busy(format!(
                    "{name} is open (opened by process {} ({}))",
                    holder.0, holder.1
                )));
            }
        }
        for n in self.dirs.nodes() {
            if uses(&n.state()) {
                let name = n.path().map(|p| shown(&p)).unwrap_or_default();
                return Err(busy(format!("directory {name} is open")));
            }
        }
        Ok(())
    }

    /// After the stack changed from `old`: every node the kernel holds resolved again.
    fn resolve_all_again(
        &self,
        old: &Stack,
        remap: &[Option<usize>],
        touched: &[Arc<Layer>],
        inval: &mut Invalidations,
    ) {
        // The root merges every layer down to the first opaque root.
        let root = self.node(ROOT_ID).expect("the root node is always held");
        {
            let s = self.stack();
            let mut layers = Vec::new();
            for (i, l) in s.layers.iter().enumerate() {
                layers.push(i);
                if whiteout::is_opaque(l.root(), s.forms[i]).unwrap_or(false) {
                    break;
                }
            }
            *root.state.write() = State {
                kind: FileType::Directory,
                layers,
            };
        }
        let nodes = self.table.nodes();
        // Directory paths -> node ids (a directory keeps its node), and the names the
        // kernel may have cached, taken before any node changes.
        let mut dirs: HashMap<PathBuf, u64> = HashMap::new();
        let mut names: Vec<PathBuf> = Vec::new();
        for n in &nodes {
            let paths = n.paths();
            if n.kind() == FileType::Directory {
                if let Some(p) = paths.first() {
                    dirs.insert(p.clone(), n.ino);
                }
            }
            names.extend(paths);
        }
        for n in nodes.iter().filter(|n| n.ino != ROOT_ID) {
            self.resolve_node_again(n, old, remap);
            inval.inodes.push((n.ino, n.kind() == FileType::Directory));
        }
        inval.inodes.push((ROOT_ID, true));
        for p in names {
            if let (Some(parent), Some(name)) = (p.parent(), p.file_name()) {
                if let Some(&pi) = dirs.get(parent) {
                    inval.entries.insert((pi, name.to_os_string()));
                }
            }
        }
        // Names the kernel may hold as absent: whatever the layers at or below the
        // change hold (or hide) in a directory it knows.
        for (d, &di) in &dirs {
            for l in touched {
                let Ok(Some(fd)) = l.dir(d) else { continue };
                for (name, _, _) in layer::read_dir(fd.as_fd()).unwrap_or_default() {
                    if let Some(hidden) = whiteout::hidden_name(&name) {
                        inval.entries.insert((di, hidden.to_os_string()));
                    } else if !whiteout::is_reserved(&name) {
                        inval.entries.insert((di, name));
                    }
                }
            }
        }
    }

    /// Node `n` against the new stack: the names that still lead to it, the first
    /// one (an upper one if any) with the state it resolves to now.
    fn resolve_node_again(&self, n: &Arc<Node>, old: &Stack, remap: &[Option<usize>]) {
        let before = n.state();
        let paths = n.paths();
        if paths.is_empty() {
            // Gone already (reached through open files only): keep its layers' new
            // positions for what it still does.
            let layers = before
                .layers
                .iter()
                .filter_map(|&i| remap.get(i).copied().flatten())
                .collect();
            *n.state.write() = State {
                kind: before.kind,
                layers,
            };
            return;
        }
        let dir = before.kind == FileType::Directory;
        let mut kept: Vec<(PathBuf, State)> = Vec::new();
        for p in &paths {
            let Ok(Some(f)) = self.resolve_path(p) else { continue };
            if f.state.kind != before.kind {
                continue;
            }
            if dir {
                // The directory at this path stays this node, whichever layer now
                // holds its top-most copy.
                if self.ino_of(&f.stat) != n.ino {
                    self.table.record_origin(f.stat.st_dev, f.stat.st_ino, n.ino);
                }
            } else if self.ino_of(&f.stat) != n.ino {
                continue;
            }
            let upper = self.has_upper && f.state.layers[0] == 0;
            if upper {
                kept.insert(0, (p.clone(), f.state));
            } else {
                kept.push((p.clone(), f.state));
            }
        }
        let state = kept.first().map(|(_, s)| s.clone());
        let names = kept.into_iter().map(|(p, _)| p).collect();
        // What it looked like, for a node that goes (fstat of an open file of it).
        let st = old.layers[before.layers[0]]
            .stat(&paths[0])
            .ok()
            .flatten()
            .unwrap_or_else(|| crate::sys::zero_stat(before.kind));
        n.renamed_by_stack(names, state, &st);
    }

    /// Tells the kernel what to ask for again. Sent with requests flowing: the kernel
    /// takes a directory's lock to drop a name in it, which a request held at the gate
    /// could be holding.
    fn send(&self, inval: &Invalidations) {
        if let Some(nt) = self.notifier.get() {
            for &(ino, dir) in &inval.inodes {
                // A directory's kept listing is its page cache: dropped with offset 0.
                let _ = nt.inval_inode(fuser::INodeNo(ino), if dir { 0 } else { -1 }, 0);
            }
        }
        for (parent, name) in &inval.entries {
            self.expire_entry(*parent, name);
        }
    }

    /// Makes the kernel's cached answer for `name` in directory `parent` run out: it
    /// asks again at the next use, and keeps the entry (with anything mounted on it)
    /// when the answer is the same node. Where the kernel does not take that form
    /// (before Linux 6.2), the entry is dropped.
    fn expire_entry(&self, parent: u64, name: &std::ffi::OsStr) {
        if let Some(dev) = self.device.get() {
            let msg = crate::abi::inval_entry_notification(parent, name, crate::abi::EXPIRE_ONLY);
            match rustix::io::write(dev, &msg) {
                Ok(_) | Err(Errno::NOENT) => return,
                Err(Errno::INVAL) => {}
                Err(e) => {
                    tracing::debug!("expiring {name:?} in {parent:#x}: {e}");
                    return;
                }
            }
        }
        if let Some(nt) = self.notifier.get() {
            let _ = nt.inval_entry(fuser::INodeNo(parent), name);
        }
    }
}

/// Whether a node in state `s` needs layer `k`: a directory found only in it, or
/// anything else whose top layer it is.
fn uses_layer(s: &State, k: usize) -> bool {
    match s.kind {
        FileType::Directory => s.layers == [k],
        _ => s.layers.first() == Some(&k),
    }
}

/// The position of lower layer `dir` in `s` (compared as a directory, then by path).
fn find_layer(s: &Stack, first: usize, dir: &Path) -> Result<usize, Refused> {
    let probe = Layer::open(false, dir).ok();
    let canon = std::fs::canonicalize(dir).ok();
    for (i, l) in s.layers.iter().enumerate().skip(first) {
        let same = probe.as_ref().is_some_and(|p| p.same_dir_as(l))
            || l.path == dir
            || canon
                .as_ref()
                .is_some_and(|c| std::fs::canonicalize(&l.path).is_ok_and(|lc| &lc == c));
        if same {
            return Ok(i);
        }
    }
    Err(refused(
        Errno::NOENT,
        format!("{} is not a lower layer of this mount", dir.display()),
    ))
}

/// The short name of process `pid`.
fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The processes using paths under `mountpoint`: their working and root directories,
/// executables and open files, as /proc shows them to this process (the same user,
/// or root). Mappings are not read: files mapped are open files of the mount anyway.
fn proc_users(mp: &Path) -> Vec<User> {
    let rel = |link: &Path| -> Option<PathBuf> {
        let t = std::fs::read_link(link).ok()?;
        t.strip_prefix(mp).ok().map(Path::to_path_buf)
    };
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    let me = std::process::id();
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let dir = e.path();
        let mut found = Vec::new();
        for (link, how) in [
            ("cwd", "working directory"),
            ("root", "root directory"),
            ("exe", "program"),
        ] {
            if let Some(r) = rel(&dir.join(link)) {
                found.push((how, r));
            }
        }
        if let Ok(fds) = std::fs::read_dir(dir.join("fd")) {
            for fd in fds.flatten() {
                if let Some(r) = rel(&fd.path()) {
                    found.push(("open file", r));
                }
            }
        }
        if !found.is_empty() {
            let comm = comm(pid);
            out.extend(found.into_iter().map(|(how, rel)| User {
                pid,
                comm: comm.clone(),
                how,
                rel,
            }));
        }
    }
    out
}
