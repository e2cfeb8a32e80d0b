//! The io_uring transport (FUSE over io_uring, Linux 6.14+): one kernel queue per
//! possible CPU, each served by a thread pinned to that CPU that answers inline. A
//! request arrives as the completion of a ring command; its answer goes back with
//! COMMIT_AND_FETCH, which also arms the entry for the next request. Requests are
//! decoded here (abi.rs) and handed to the same `dispatch` as the classic transport.
//! FORGET, BATCH_FORGET and INTERRUPT never come over the ring: fuser's loop keeps
//! reading /dev/fuse for them, and notifications still go out through it.
//!
//! The kernel moves a connection to the rings only when the INIT answer carries
//! FUSE_OVER_IO_URING back; it then holds every request until all queues have an
//! entry registered, or until a registration fails, which turns the rings off for
//! the connection (fs/fuse/dev_uring.c). So the rings are created before INIT is
//! answered (no flag if that fails), and a failed registration falls back to
//! /dev/fuse by itself. The kernel refuses a registration at once, so `Rings::start`
//! waits for that outcome: a daemon reports its mount live (and lets go of its
//! caller's stderr) only after saying which way it went.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use io_uring::{cqueue, squeue, IoUring};

use crate::abi::{self, Rd, Wr};
use crate::config::UringMode;
use crate::dispatch::{self as d, Answer, Ctx, DirPlusSink, DirSink};
use crate::sys;
use crate::union::Union;

/// Ring entries per queue. Each request is answered inline, so a few entries are
/// enough to keep requests staged in the kernel while one is being answered.
const ENTRIES: usize = 4;
/// Payload buffer per entry: the largest write (max_write, 1 MiB) or read (max_pages).
const PAYLOAD: usize = 1 << 20;
/// Threads for requests handed off (see `hand_off`), shared by all queues.
const WORKERS: usize = 4;
/// user_data of the eventfd read that wakes a queue when a worker is done.
const WAKE: u64 = u64::MAX;
/// How long `Rings::start` waits for the queues to have their registrations taken
/// or refused (a few milliseconds unless the machine is very busy).
const SETTLE: Duration = Duration::from_secs(2);

/// The queue threads waiting for the /dev/fuse fd to register on, once INIT is done,
/// and the channel on which each says how its registration went.
#[derive(Default, Clone)]
pub struct Rings {
    waiting: Arc<Mutex<Vec<Sender<Arc<OwnedFd>>>>>,
    settled: Arc<Mutex<Option<Receiver<()>>>>,
}

impl Rings {
    /// Hands the connection's fd to the queue threads, which then register, and waits
    /// (bounded) until each has its registration taken or refused.
    pub fn start(&self, dev: BorrowedFd<'_>) {
        let senders = std::mem::take(&mut *self.waiting.lock().unwrap());
        if senders.is_empty() {
            return;
        }
        let n = senders.len();
        match dev.try_clone_to_owned() {
            Ok(fd) => {
                let fd = Arc::new(fd);
                for s in senders {
                    let _ = s.send(fd.clone());
                }
            }
            Err(e) => {
                tracing::error!("FUSE over io_uring: duplicating /dev/fuse: {e}");
                return;
            }
        }
        let Some(settled) = self.settled.lock().unwrap().take() else {
            return;
        };
        let deadline = Instant::now() + SETTLE;
        for _ in 0..n {
            let left = deadline.saturating_duration_since(Instant::now());
            if settled.recv_timeout(left).is_err() {
                tracing::debug!("FUSE over io_uring: registration not settled after {SETTLE:?}");
                return;
            }
        }
    }
}

/// A queue's word to `Rings::start` that its registration is settled: sent once the
/// kernel took the entries without refusing one, or when the queue ends (after
/// logging why).
struct Settle(Option<Sender<()>>);

impl Settle {
    fn report(&mut self) {
        if let Some(s) = self.0.take() {
            let _ = s.send(());
        }
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        self.report();
    }
}

/// Whether the kernel offers FUSE over io_uring to new mounts now (its module switch).
pub fn offered() -> bool {
    std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring").is_ok_and(|v| v.trim() == "Y")
}

/// The INIT decision for `fs::negotiate`: whether to take FUSE over io_uring.
pub fn choice(u: Arc<Union>, rings: Rings) -> crate::fs::UringChoice {
    Box::new(move |offered| {
        let mode = u.cfg.io_uring;
        let note = |why: &str| match mode {
            UringMode::On => tracing::warn!("transport: /dev/fuse ({why})"),
            _ => tracing::info!("transport: /dev/fuse ({why})"),
        };
        if mode == UringMode::Off {
            tracing::info!("transport: /dev/fuse (io_uring=off)");
            return false;
        }
        if !offered {
            note("the kernel does not offer FUSE over io_uring: /sys/module/fuse/parameters/enable_uring is off or the kernel lacks it");
            return false;
        }
        match spawn_queues(u.clone(), &rings) {
            Ok(n) => {
                // Opens answered on the rings have no fuser reply to register a
                // passthrough backing file with.
                u.passthrough.store(false, Ordering::Relaxed);
                tracing::info!("transport: io_uring ({n} queues, {ENTRIES} entries each)");
                true
            }
            Err(e) => {
                note(&format!("setting up io_uring failed: {e}"));
                false
            }
        }
    })
}

/// Starts one pinned thread per possible CPU, each with its ring created; returns
/// the number of queues, or the first failure (then no thread is left).
fn spawn_queues(u: Arc<Union>, rings: &Rings) -> std::io::Result<usize> {
    if std::env::var_os("STRATA_TEST_URING_SETUP_FAIL").is_some() {
        return Err(std::io::Error::other(
            "failure injected by STRATA_TEST_URING_SETUP_FAIL",
        ));
    }
    let n = sys::possible_cpus();
    let fell_back = Arc::new(AtomicBool::new(false));
    let (settled_tx, settled_rx) = channel();
    let mut ready = Vec::new();
    let mut senders = Vec::new();
    for q in 0..n {
        let (rtx, rrx) = channel();
        let (ftx, frx) = channel();
        let u = u.clone();
        let fell_back = fell_back.clone();
        let settle = Settle(Some(settled_tx.clone()));
        std::thread::Builder::new()
            .name(format!("uring-q{q}"))
            .spawn(move || queue_thread(u, q, rtx, frx, fell_back, settle))?;
        ready.push(rrx);
        senders.push(ftx);
    }
    for r in ready {
        match r.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(std::io::Error::other("a queue thread ended")),
        }
    }
    *rings.waiting.lock().unwrap() = senders;
    *rings.settled.lock().unwrap() = Some(settled_rx);
    Ok(n)
}

type Ring = IoUring<squeue::Entry128, cqueue::Entry>;

/// One ring entry's buffers: header and payload, and the iovec pair naming them.
struct Ent {
    hdr: Box<[u8]>,
    payload: Box<[u8]>,
    iov: Box<[libc::iovec; 2]>,
    registered: bool,
}

// SAFETY: the raw pointers in `iov` point into the entry's own heap buffers, which move
// with it; whichever thread holds the entry is the only one touching them.
unsafe impl Send for Ent {}

/// A request handed to a worker, and the way back to its queue.
struct Job {
    u: Arc<Union>,
    i: usize,
    ent: Ent,
    back: Sender<(usize, Ent, u64, Option<u64>)>,
    wake: Arc<OwnedFd>,
}

/// Workers for requests that may block long (a copy-up, an fsync), so that a queue's
/// thread keeps answering the quick ones. Started at the first such request.
fn workers() -> &'static Mutex<Sender<Job>> {
    static POOL: std::sync::OnceLock<Mutex<Sender<Job>>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for w in 0..WORKERS {
            let rx = rx.clone();
            let _ = std::thread::Builder::new()
                .name(format!("uring-w{w}"))
                .spawn(move || loop {
                    let job = rx.lock().unwrap().recv();
                    let Ok(mut job) = job else { return };
                    let (unique, release) = answer(&job.u, &mut job.ent);
                    if job.back.send((job.i, job.ent, unique, release)).is_ok() {
                        let _ = rustix::io::write(&*job.wake, &1u64.to_ne_bytes());
                    }
                });
        }
        Mutex::new(tx)
    })
}

/// Whether a request may block long enough to stall its queue: it may copy up a
/// file or a tree, or waits for the disk.
fn hand_off(u: &Union, h: &abi::InHeader) -> bool {
    match h.opcode {
        abi::OPEN | abi::SETATTR | abi::SETXATTR | abi::REMOVEXATTR => d::may_copy_up(u, h.nodeid),
        abi::LINK | abi::RENAME | abi::RENAME2 | abi::FSYNC | abi::FSYNCDIR | abi::FALLOCATE | abi::COPY_FILE_RANGE => {
            true
        }
        _ => false,
    }
}

fn queue_thread(
    u: Arc<Union>,
    q: usize,
    ready: Sender<std::io::Result<()>>,
    dev: Receiver<Arc<OwnedFd>>,
    fell_back: Arc<AtomicBool>,
    settle: Settle,
) {
    // Pinned: the kernel queues a request on the queue of the CPU its caller runs on,
    // and answering it on that CPU saves the cross-CPU wake-up.
    if let Err(e) = sys::pin_to_cpu(q) {
        tracing::debug!("queue {q}: pinning to CPU {q}: {e}");
    }
    let ring = match Ring::builder().build((2 * ENTRIES) as u32) {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    // The fd comes once INIT is answered; a dropped sender means no mount.
    let Ok(dev) = dev.recv() else { return };
    serve_queue(&u, q, ring, &dev, &fell_back, settle);
}

fn register_sqe(fd: i32, q: usize, i: usize, e: &mut Ent) -> squeue::Entry128 {
    sys::uring_cmd(fd, sys::CMD_REGISTER, q as u16, 0, Some(e.iov.as_ptr()), i as u64)
}

fn serve_queue(u: &Arc<Union>, q: usize, ring: Ring, dev: &OwnedFd, fell_back: &AtomicBool, mut settle: Settle) {
    let fd = dev.as_raw_fd();
    // Fault injection for the tests: a payload buffer the kernel refuses.
    let bad = std::env::var_os("STRATA_TEST_URING_REGISTER_FAIL").is_some();
    let mut ents: Vec<Option<Ent>> = (0..ENTRIES)
        .map(|_| {
            let mut hdr = vec![0u8; sys::HDR_LEN].into_boxed_slice();
            let mut payload = vec![0u8; PAYLOAD].into_boxed_slice();
            let iov = Box::new([
                libc::iovec {
                    iov_base: hdr.as_mut_ptr().cast(),
                    iov_len: hdr.len(),
                },
                libc::iovec {
                    iov_base: payload.as_mut_ptr().cast(),
                    iov_len: if bad { 16 } else { payload.len() },
                },
            ]);
            Some(Ent {
                hdr,
                payload,
                iov,
                registered: false,
            })
        })
        .collect();
    let wake = match rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC) {
        Ok(fd) => Arc::new(fd),
        Err(e) => {
            tracing::warn!("FUSE over io_uring, queue {q}: eventfd: {e}");
            return;
        }
    };
    let mut wake_buf = Box::new([0u8; 8]);
    let (back_tx, back_rx) = channel();
    // Declared after the buffers so that it is dropped (and the kernel lets go of
    // them) first.
    let mut ring = ring;

    for (i, e) in ents.iter_mut().enumerate() {
        let sqe = register_sqe(fd, q, i, e.as_mut().expect("all here"));
        push(&mut ring, &sqe);
    }
    let arm_wake = |ring: &mut Ring, buf: &mut [u8; 8]| {
        let sqe = io_uring::opcode::Read::new(io_uring::types::Fd(wake.as_raw_fd()), buf.as_mut_ptr(), 8)
            .build()
            .user_data(WAKE);
        push(ring, &sqe.into());
    };
    arm_wake(&mut ring, &mut wake_buf);
    let started = Instant::now();
    let mut served = false;
    loop {
        // Until the registrations are settled, only submit: the kernel refuses an entry
        // while taking it (its completion is posted by the time the submission
        // returns), and takes a good one without a completion.
        let want = if settle.0.is_some() { 0 } else { 1 };
        match ring.submit_and_wait(want) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => {
                tracing::warn!("FUSE over io_uring, queue {q}: {e}");
                return;
            }
        }
        let done: Vec<(usize, i32)> = ring
            .completion()
            .map(|c| (c.user_data() as usize, c.result()))
            .collect();
        let mut released = Vec::new();
        let mut retrying = false;
        for (i, res) in done {
            if i as u64 == WAKE {
                // Workers done: their answers go out now.
                while let Ok((i, ent, unique, release)) = back_rx.try_recv() {
                    ents[i] = Some(ent);
                    if let Some(fh) = release {
                        released.push(fh);
                    }
                    let sqe = sys::uring_cmd(fd, sys::CMD_COMMIT_AND_FETCH, q as u16, unique, None, i as u64);
                    push(&mut ring, &sqe);
                }
                arm_wake(&mut ring, &mut wake_buf);
                continue;
            }
            let Some(Some(e)) = ents.get_mut(i) else { continue };
            if res == -libc::EAGAIN && !e.registered && started.elapsed() < Duration::from_secs(10) {
                // The kernel has not finished taking INIT's answer yet.
                std::thread::sleep(Duration::from_millis(1));
                let sqe = register_sqe(fd, q, i, e);
                push(&mut ring, &sqe);
                retrying = true;
                continue;
            }
            if res < 0 {
                let err = std::io::Error::from_raw_os_error(-res);
                if res == -libc::ENOTCONN || res == -libc::ECANCELED || res == -libc::ECONNABORTED {
                    // The connection ended (unmount).
                    return;
                }
                if !e.registered {
                    // The kernel turned the rings off for the connection (said before
                    // `settle` goes, so before the daemon lets go of its stderr).
                    if !fell_back.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "FUSE over io_uring: registering queue {q} failed ({err}); serving through /dev/fuse"
                        );
                    }
                    return;
                }
                // A commit the kernel did not take (its request gone): the entry is
                // stuck on the kernel's side, so register its buffers afresh.
                tracing::warn!("FUSE over io_uring, queue {q}: entry {i}: {err}; registering it again");
                let sqe = register_sqe(fd, q, i, e);
                push(&mut ring, &sqe);
                continue;
            }
            if !served {
                served = true;
                tracing::info!("io_uring queue {q}: serving requests");
            }
            e.registered = true;
            let h = abi::InHeader::parse(&e.hdr[..abi::IN_HEADER_LEN]);
            if hand_off(u, &h) {
                let ent = ents[i].take().expect("present");
                let job = Job {
                    u: u.clone(),
                    i,
                    ent,
                    back: back_tx.clone(),
                    wake: wake.clone(),
                };
                if let Err(std::sync::mpsc::SendError(job)) = workers().lock().unwrap().send(job) {
                    ents[i] = Some(job.ent);
                } else {
                    continue;
                }
            }
            let Some(e) = ents[i].as_mut() else { continue };
            let (unique, release) = answer(u, e);
            if let Some(fh) = release {
                released.push(fh);
            }
            let sqe = sys::uring_cmd(fd, sys::CMD_COMMIT_AND_FETCH, q as u16, unique, None, i as u64);
            push(&mut ring, &sqe);
        }
        if !retrying {
            settle.report();
        }
        if !released.is_empty() {
            // The RELEASE answers go to the kernel before the handles go (see
            // dispatch::released).
            let _ = ring.submit();
            for fh in released {
                d::released(u, fh);
            }
        }
    }
}

fn push(ring: &mut Ring, sqe: &squeue::Entry128) {
    // SAFETY: what an entry points at lives as long as the ring: the iovecs and
    // buffers of ring entries (owned by `ents` in serve_queue, or by a worker while it
    // answers, when the kernel does not touch them) and the eventfd read's buffer,
    // all declared before the ring, which is dropped first; a COMMIT carries no pointer.
    while unsafe { ring.submission().push(sqe) }.is_err() {
        let _ = ring.submit();
    }
}

/// Decodes the request in entry `e`, answers it through dispatch and writes the
/// answer into the entry; returns the request's unique id and, for RELEASE, the
/// handle to drop once the answer is committed.
fn answer(u: &Union, e: &mut Ent) -> (u64, Option<u64>) {
    let h = abi::InHeader::parse(&e.hdr[..abi::IN_HEADER_LEN]);
    let commit_id = u64::from_ne_bytes(e.hdr[sys::ENT_COMMIT_ID..sys::ENT_COMMIT_ID + 8].try_into().unwrap());
    let psz = u32::from_ne_bytes(e.hdr[sys::ENT_PAYLOAD_SZ..sys::ENT_PAYLOAD_SZ + 4].try_into().unwrap()) as usize;
    let mut op_in = [0u8; 128];
    op_in.copy_from_slice(&e.hdr[sys::HDR_OP_IN..sys::HDR_OP_IN + 128]);
    let mut release = None;
    let (a, listed) = request(u, &h, &op_in, &mut e.payload, psz.min(PAYLOAD), &mut release);
    let (len, err) = match listed {
        Some(n) if !matches!(a, Answer::Err(_)) => (n, 0),
        _ => encode(a, &mut e.payload, u.ttl),
    };
    abi::out_header(
        &mut e.hdr[..abi::OUT_HEADER_LEN],
        (abi::OUT_HEADER_LEN + len) as u32,
        -err,
        h.unique,
    );
    e.hdr[sys::ENT_PAYLOAD_SZ..sys::ENT_PAYLOAD_SZ + 4].copy_from_slice(&(len as u32).to_ne_bytes());
    (commit_id, release)
}

/// A directory listing written straight into the payload, up to the size asked for.
struct Listing<'a> {
    w: Wr<'a>,
    limit: usize,
}

impl DirSink for Listing<'_> {
    fn add(&mut self, ino: u64, off: u64, kind: fuser::FileType, name: &std::ffi::OsStr) -> bool {
        !abi::dirent(&mut self.w, self.limit, ino, off, abi::dirent_type(kind), name)
    }
}

impl DirPlusSink for Listing<'_> {
    fn add(&mut self, off: u64, name: &std::ffi::OsStr, ttl: Duration, attr: &fuser::FileAttr) -> bool {
        !abi::direntplus(&mut self.w, self.limit, off, name, ttl, attr)
    }
}

/// Runs one request. Returns its answer and, for a listing, the bytes written.
fn request(
    u: &Union,
    h: &abi::InHeader,
    op_in: &[u8],
    payload: &mut [u8],
    psz: usize,
    release: &mut Option<u64>,
) -> (Answer, Option<usize>) {
    let ctx = Ctx {
        uid: h.uid,
        gid: h.gid,
        pid: h.pid,
        umask: 0,
    };
    let ino = h.nodeid;
    let mut o = Rd::new(op_in);
    if h.opcode == abi::READDIR || h.opcode == abi::READDIRPLUS {
        let fh = o.u64();
        let offset = o.u64();
        let size = o.u32() as usize;
        let mut l = Listing {
            w: Wr { b: payload, n: 0 },
            limit: size,
        };
        let a = if h.opcode == abi::READDIR {
            d::readdir(u, ino, fh, offset, &mut l)
        } else {
            d::readdirplus(u, ino, fh, offset, &mut l)
        };
        return (a, Some(l.w.n));
    }
    let mut p = Rd::new(&payload[..psz]);
    let mut no_backing = |_: BorrowedFd<'_>| -> std::io::Result<fuser::BackingId> {
        Err(std::io::Error::from_raw_os_error(libc::ENOTSUP))
    };
    let a = match h.opcode {
        abi::LOOKUP => d::lookup(u, ino, p.name()),
        abi::GETATTR => {
            let flags = o.u32();
            let _ = o.u32();
            let fh = o.u64();
            d::getattr(u, ino, (flags & abi::GETATTR_FH != 0).then_some(fh))
        }
        abi::SETATTR => d::setattr(u, ctx, ino, setattr_in(&mut o)),
        abi::READLINK => d::readlink(u, ino),
        abi::SYMLINK => {
            let name = p.name();
            let target = p.name();
            d::symlink(u, ctx, ino, name, Path::new(target))
        }
        abi::MKNOD => {
            let mode = o.u32();
            let rdev = o.u32();
            let umask = o.u32();
            d::mknod(u, Ctx { umask, ..ctx }, ino, p.name(), mode, rdev)
        }
        abi::MKDIR => {
            let mode = o.u32();
            let umask = o.u32();
            d::mkdir(u, Ctx { umask, ..ctx }, ino, p.name(), mode)
        }
        abi::UNLINK => d::remove(u, ino, p.name(), false),
        abi::RMDIR => d::remove(u, ino, p.name(), true),
        abi::RENAME | abi::RENAME2 => {
            let newdir = o.u64();
            let flags = if h.opcode == abi::RENAME2 { o.u32() } else { 0 };
            let name = p.name();
            let newname = p.name();
            d::rename(u, ino, name, newdir, newname, flags)
        }
        abi::LINK => {
            let old = o.u64();
            d::link(u, old, ino, p.name())
        }
        abi::OPEN => {
            let flags = o.u32();
            d::open(u, ctx, ino, flags as i32, &mut no_backing)
        }
        abi::READ => {
            let fh = o.u64();
            let offset = o.u64();
            let size = o.u32();
            d::read(u, fh, offset, size)
        }
        abi::WRITE => {
            let fh = o.u64();
            let offset = o.u64();
            let size = o.u32() as usize;
            let flags = o.u32();
            let data = p.bytes(size);
            d::write(u, ctx, fh, offset, data, flags & abi::WRITE_KILL_SUIDGID != 0)
        }
        abi::STATFS => d::statfs(u),
        abi::RELEASE => {
            *release = Some(o.u64());
            Answer::Empty
        }
        abi::FSYNC => {
            let fh = o.u64();
            let flags = o.u32();
            d::fsync(u, fh, flags & abi::FSYNC_FDATASYNC != 0)
        }
        abi::SETXATTR => {
            let size = o.u32() as usize;
            let flags = o.u32();
            let name = p.name();
            let value = p.bytes(size);
            d::setxattr(u, ctx, ino, name, value, flags as i32)
        }
        abi::GETXATTR => {
            let size = o.u32();
            d::getxattr(u, ino, p.name(), size)
        }
        abi::LISTXATTR => d::listxattr(u, ino, o.u32()),
        abi::REMOVEXATTR => d::removexattr(u, ino, p.name()),
        abi::FLUSH => d::flush(),
        abi::OPENDIR => d::opendir(u, ino),
        abi::RELEASEDIR => d::releasedir(u, o.u64()),
        abi::FSYNCDIR => {
            let _fh = o.u64();
            let flags = o.u32();
            d::fsyncdir(u, ino, flags & abi::FSYNC_FDATASYNC != 0)
        }
        abi::ACCESS => d::access(u, ino, o.u32() as i32),
        abi::CREATE => {
            let flags = o.u32();
            let mode = o.u32();
            let umask = o.u32();
            d::create(
                u,
                Ctx { umask, ..ctx },
                ino,
                p.name(),
                mode,
                flags as i32,
                &mut no_backing,
            )
        }
        abi::FALLOCATE => {
            let fh = o.u64();
            let offset = o.u64();
            let length = o.u64();
            let mode = o.u32();
            d::fallocate(u, fh, offset, length, mode as i32)
        }
        abi::LSEEK => {
            let fh = o.u64();
            let offset = o.u64();
            let whence = o.u32();
            d::lseek(u, fh, offset as i64, whence as i32)
        }
        abi::COPY_FILE_RANGE => {
            let fh_in = o.u64();
            let off_in = o.u64();
            let _nodeid_out = o.u64();
            let fh_out = o.u64();
            let off_out = o.u64();
            let len = o.u64();
            d::copy_file_range(u, fh_in, off_in, fh_out, off_out, len)
        }
        abi::FORGET | abi::BATCH_FORGET => Answer::Err(libc::ENOSYS),
        op => {
            tracing::debug!("io_uring: opcode {op} not implemented");
            Answer::Err(libc::ENOSYS)
        }
    };
    if p.short {
        return (Answer::Err(libc::EINVAL), None);
    }
    (a, None)
}

fn setattr_in(o: &mut Rd) -> crate::attr::SetAttr {
    use fuser::TimeOrNow;
    let valid = o.u32();
    let _ = o.u32();
    let fh = o.u64();
    let size = o.u64();
    let _lock_owner = o.u64();
    let atime = o.u64();
    let mtime = o.u64();
    let _ctime = o.u64();
    let atimensec = o.u32();
    let mtimensec = o.u32();
    let _ctimensec = o.u32();
    let mode = o.u32();
    let _ = o.u32();
    let uid = o.u32();
    let gid = o.u32();
    let t = |secs: u64, nsec: u32, set: u32, now: u32| {
        if valid & now != 0 {
            Some(TimeOrNow::Now)
        } else if valid & set != 0 {
            let s = secs as i64;
            let t = if s >= 0 {
                std::time::UNIX_EPOCH + Duration::new(s as u64, nsec)
            } else {
                std::time::UNIX_EPOCH - Duration::from_secs(s.unsigned_abs()) + Duration::from_nanos(nsec as u64)
            };
            Some(TimeOrNow::SpecificTime(t))
        } else {
            None
        }
    };
    crate::attr::SetAttr {
        mode: (valid & abi::FATTR_MODE != 0).then_some(mode),
        uid: (valid & abi::FATTR_UID != 0).then_some(uid),
        gid: (valid & abi::FATTR_GID != 0).then_some(gid),
        size: (valid & abi::FATTR_SIZE != 0).then_some(size),
        atime: t(atime, atimensec, abi::FATTR_ATIME, abi::FATTR_ATIME_NOW),
        mtime: t(mtime, mtimensec, abi::FATTR_MTIME, abi::FATTR_MTIME_NOW),
        fh: (valid & abi::FATTR_FH != 0).then_some(fh),
    }
}

/// Writes an answer into the payload: (bytes, errno).
fn encode(a: Answer, payload: &mut [u8], ttl: Duration) -> (usize, i32) {
    let mut w = Wr { b: payload, n: 0 };
    match a {
        Answer::Err(e) => return (0, e),
        Answer::Empty => {}
        Answer::Entry(attr) => abi::entry_out(&mut w, &attr, ttl),
        Answer::Attr(attr) => abi::attr_out(&mut w, &attr, ttl),
        Answer::Data(v) => {
            if v.len() > w.room() {
                return (0, libc::EIO);
            }
            w.put(&v);
        }
        Answer::XattrSize(n) | Answer::Written(n) => {
            w.u32(n);
            w.u32(0);
        }
        Answer::Open(o) => abi::open_out(&mut w, o.fh, o.flags.bits(), 0),
        Answer::Create(attr, o) => {
            abi::entry_out(&mut w, &attr, ttl);
            abi::open_out(&mut w, o.fh, o.flags.bits(), 0);
        }
        Answer::Statfs(s) => abi::statfs_out(&mut w, &s),
        Answer::Offset(off) => w.u64(off as u64),
    }
    (w.n, 0)
}
