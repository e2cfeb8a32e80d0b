//! The shared state of a mounted union (the "superblock"): the layers, the work dir,
//! the node table and open handles, checked and opened from a `Config`. Every
//! operation module (`lookup`, `dir`, `file`, `attr`, ...) adds methods to `Union`.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::RwLock;
use rustix::fs::FileType;

use crate::config::Config;
use crate::copy_up::Work;
use crate::file::Handles;
use crate::inode::{InodeTable, State};
use crate::layer::{Layer, Listings};
use crate::readdir::DirHandles;
use crate::whiteout::{self, Forms};

/// How many lower-layer directory fds are kept open, at most, over all lowers.
const KEPT_DIR_FDS: usize = 4096;
/// How many lower-layer directory listings are kept.
const LISTED_DIRS: usize = 16384;
/// The layers as they stand, top first: index 0 is the upper layer when there is
/// one. A live mount's stack is replaced whole (see stack.rs), never changed in place;
/// layers that stay are shared between the old stack and the new.
#[derive(Clone)]
pub struct Stack {
    pub layers: Vec<Arc<Layer>>,
    /// Per layer: the whiteout forms it honours.
    pub forms: Vec<Forms>,
    /// Per layer: the xattr it keeps owners and modes in (see override_stat.rs).
    pub records: Vec<Option<&'static str>>,
}

pub struct Union {
    pub cfg: Config,
    /// The stack: read with `stack()`, replaced by `stack::change` only.
    stack: ArcSwap<Stack>,
    /// Held shared by every request for as long as it runs (node states hold layer
    /// indices into the stack), exclusively by a change of the stack.
    pub gate: RwLock<()>,
    pub has_upper: bool,
    /// There is an upper and the mount is not read-only (`ro`): the only case in
    /// which anything is written.
    pub writable: bool,
    pub work: Option<Work>,
    pub table: InodeTable,
    pub files: Handles,
    pub dirs: DirHandles,
    /// Held shared by operations that resolve or create names (and across copy-ups),
    /// exclusively by renames, which move whole subtrees of paths. Shared holders take
    /// it with `read_recursive`, which does not queue behind a waiting rename, so a long
    /// copy-up delays renames only, never lookups elsewhere.
    pub ns: RwLock<()>,
    pub ttl: Duration,
    /// Kept listings of lower-layer directories.
    pub listings: Listings,
    /// FUSE passthrough negotiated with the kernel (and still working).
    pub passthrough: AtomicBool,
    /// FUSE_HANDLE_KILLPRIV_V2 negotiated: strata clears set-id bits on writes,
    /// truncations and chowns (see `attr::killed_mode`).
    pub killpriv: AtomicBool,
    /// Tells the kernel about changes it did not ask for (set once mounted).
    pub notifier: Arc<OnceLock<fuser::Notifier>>,
    /// The FUSE connection, for the notifications fuser cannot send (set once mounted).
    pub device: OnceLock<std::os::fd::OwnedFd>,
}

fn canonical(p: &Path) -> Result<PathBuf, String> {
    std::fs::canonicalize(p).map_err(|e| format!("{}: {}", p.display(), e))
}

fn nested(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

impl Union {
    /// Checks the configuration and opens everything. Errors name the path and reason.
    pub fn new(mut cfg: Config) -> Result<Union, String> {
        if cfg.lowers.is_empty() {
            return Err("no lower layer given (use -o lowerdir=DIR[:DIR...] or --lower DIR)".into());
        }
        let mut layers = Vec::new();
        let mut canon = Vec::new();
        // Under `noatime` a read must not change the shown access time, which is the
        // upper file's: strata opens upper files with O_NOATIME, and reads do not pass
        // through (the kernel opens a passthrough backing file without O_NOATIME).
        // A read-only mount leaves the upper as it finds it, access times included.
        let noatime = cfg.vfs(libc::MS_NOATIME) || cfg.read_only;
        if noatime {
            cfg.passthrough = false;
        }
        let upper = cfg.upper.clone();
        if let Some(u) = &upper {
            layers.push(Layer::open(true, u).map_err(|e| format!("upper layer {e}"))?);
            canon.push(canonical(u)?);
            let vfs = rustix::fs::fstatvfs(layers[0].root()).map_err(|e| format!("{}: {}", u.display(), e))?;
            if vfs.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) && !cfg.read_only {
                return Err(format!("upper layer {}: on a read-only filesystem", u.display()));
            }
        }
        for l in &cfg.lowers {
            let i = layers.len();
            layers.push(Layer::open(false, l).map_err(|e| format!("lower layer {e}"))?);
            let c = canonical(l)?;
            let same_dir = upper.is_some() && layers[0].same_dir_as(&layers[i]);
            if let Some(u) = upper.as_ref().filter(|_| same_dir || nested(&canon[0], &c)) {
                return Err(format!(
                    "upper layer {} and lower layer {} are the same directory or nested in each other",
                    u.display(),
                    l.display()
                ));
            }
            canon.push(c);
        }
        // Lower directories opened by lookups are kept open (see `Layer::keep_dirs`),
        // within a quarter of the fds this process may have.
        let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(1024) as usize;
        let lowers = layers.iter().filter(|l| !l.is_upper).count().max(1);
        let per_layer = ((nofile / 4).clamp(64, KEPT_DIR_FDS) / lowers).max(4);
        for l in layers.iter_mut().filter(|l| !l.is_upper) {
            l.keep_dirs(per_layer);
        }
        let mp = canonical(&cfg.mountpoint).map_err(|e| format!("mount point {e}"))?;
        if !mp.is_dir() {
            return Err(format!("mount point {}: not a directory", cfg.mountpoint.display()));
        }
        for (c, l) in canon.iter().zip(&layers) {
            if mp.starts_with(c) {
                return Err(format!(
                    "mount point {} is inside layer {}",
                    cfg.mountpoint.display(),
                    l.path.display()
                ));
            }
        }
        let work = match &upper {
            Some(u) if cfg.read_only => {
                let d = cfg.workdir.clone().unwrap_or_else(|| u.join(whiteout::WORK_IN_UPPER));
                Work::open_read_only(&d).map_err(|e| format!("work dir {}: {}", d.display(), e))?
            }
            Some(u) => Some(open_work(&cfg, u, &layers[0], &canon)?),
            None => None,
        };
        if let Some(u) = layers.first_mut().filter(|l| l.is_upper) {
            u.noatime = noatime;
        }
        let forms: Vec<Forms> = layers
            .iter()
            .map(|l| Forms::for_layer(l.is_upper, cfg.whiteout_form))
            .collect();
        // The root merges every layer down to the first opaque root.
        let mut root_layers = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            root_layers.push(i);
            if whiteout::is_opaque(l.root(), forms[i]).unwrap_or(false) {
                break;
            }
        }
        let table = InodeTable::new(State {
            kind: FileType::Directory,
            layers: root_layers,
        });
        for (ud, ui, ld, li) in work.as_ref().map(|w| w.index_origins()).unwrap_or_default() {
            let id = table.ino_for(ld, li);
            table.record_origin(ud, ui, id);
        }
        let records = crate::override_stat::layer_records(&cfg, &layers)?;
        let ttl = cfg.timeout;
        let stack = Stack {
            layers: layers.into_iter().map(Arc::new).collect(),
            forms,
            records,
        };
        Ok(Union {
            has_upper: upper.is_some(),
            writable: upper.is_some() && !cfg.read_only,
            cfg,
            stack: ArcSwap::from_pointee(stack),
            gate: RwLock::new(()),
            work,
            table,
            files: Handles::default(),
            dirs: DirHandles::default(),
            ns: RwLock::new(()),
            ttl,
            passthrough: AtomicBool::new(false),
            killpriv: AtomicBool::new(false),
            notifier: Arc::new(OnceLock::new()),
            device: OnceLock::new(),
            listings: Listings::new(LISTED_DIRS),
        })
    }

    /// Node `ino` changed through the mount: a directory had an entry made, removed or
    /// renamed in it, a file gained or lost a name. The kernel marks its attributes
    /// stale itself, but a LOOKUP or READDIRPLUS answered before the change and taken
    /// by the kernel after it would cache the old times or link count again, for the
    /// whole attribute timeout. Telling the kernel the inode
    /// changed bumps its attribute version, and such an older answer is then dropped.
    /// One write to the FUSE device, no round trip.
    pub fn attrs_changed(&self, ino: u64) {
        if let Some(n) = self.notifier.get() {
            let _ = n.inval_inode(fuser::INodeNo(ino), -1, 0);
        }
    }

    /// Entered by every request before it looks at nodes or layers, left when it is
    /// answered: a change of the stack waits for the requests in flight and holds
    /// new ones meanwhile (see stack.rs).
    pub fn enter(&self) -> parking_lot::RwLockReadGuard<'_, ()> {
        self.gate.read()
    }

    /// The stack as it stands (cheap: no lock, no copy).
    pub fn stack(&self) -> arc_swap::Guard<Arc<Stack>> {
        self.stack.load()
    }

    /// Puts `new` in place of the stack (see stack.rs: under the gate, held alone).
    pub fn replace_stack(&self, new: Stack) -> Arc<Stack> {
        self.stack.swap(Arc::new(new))
    }

    pub fn upper(&self) -> Option<Arc<Layer>> {
        self.stack().layers.first().filter(|l| l.is_upper).cloned()
    }

    /// First lower layer index.
    pub fn first_lower(&self) -> usize {
        usize::from(self.has_upper)
    }
}

/// Opens (creating when needed) the staging dir, on the upper's filesystem, and cleans
/// what an interrupted earlier mount left in it.
fn open_work(cfg: &Config, upper: &Path, ul: &Layer, canon: &[PathBuf]) -> Result<Work, String> {
    let ucanon = &canon[0];
    let dir = match &cfg.workdir {
        Some(w) => {
            let wc = canonical(w).map_err(|e| format!("work dir {e}"))?;
            if let Some((c, l)) = canon[1..].iter().zip(&cfg.lowers).find(|(c, _)| nested(&wc, c)) {
                return Err(format!(
                    "work dir {} and lower layer {} ({}) are the same directory or nested in each other",
                    w.display(),
                    l.display(),
                    c.display()
                ));
            }
            if nested(&wc, ucanon) {
                return Err(format!(
                    "work dir {} and upper layer {} are the same directory or nested in each other",
                    w.display(),
                    upper.display()
                ));
            }
            let st = std::fs::metadata(&wc).map_err(|e| format!("work dir {}: {}", w.display(), e))?;
            use std::os::unix::fs::MetadataExt;
            if !st.is_dir() {
                return Err(format!("work dir {}: not a directory", w.display()));
            }
            if st.dev() != ul.dev {
                return Err(format!(
                    "work dir {} is on a different filesystem than upper layer {}",
                    w.display(),
                    upper.display()
                ));
            }
            for e in std::fs::read_dir(&wc).map_err(|e| format!("work dir {}: {}", w.display(), e))? {
                let e = e.map_err(|e| format!("work dir {}: {}", w.display(), e))?;
                let n = e.file_name();
                // `work` and `incompat` are what the kernel's overlayfs and fuse-overlayfs
                // leave in a work dir: a container store may switch between them.
                if !Work::is_ours(&n) && n != "work" && n != "incompat" {
                    return Err(format!(
                        "work dir {} is neither empty nor a work dir of strata or overlayfs (it holds {:?})",
                        w.display(),
                        n
                    ));
                }
            }
            wc
        }
        None => {
            let d = upper.join(whiteout::WORK_IN_UPPER);
            match crate::copy_up::private_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("work dir {}: {}", d.display(), e)),
            }
            d
        }
    };
    Work::open(&dir).map_err(|e| format!("work dir {}: {}", dir.display(), e))
}

/// Fault injection for the tests: sleeps for the milliseconds given in environment
/// variable `var` (read once, into `ms`), if any.
pub fn pause_for_tests(var: &str, ms: &OnceLock<u64>) {
    let ms = *ms.get_or_init(|| std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(0));
    if ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}
