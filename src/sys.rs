//! Raw system pieces of FUSE over io_uring that no crate builds for us: the 128-byte
//! `IORING_OP_URING_CMD` submission entry carrying a `struct fuse_uring_cmd_req`
//! (and, to register, an iovec pair in `addr`/`len`), the ring entry's header
//! layout, CPU pinning and the count of possible CPUs (one kernel queue each).

use std::os::fd::RawFd;

use io_uring::squeue::Entry128;

/// `enum fuse_uring_cmd`.
pub const CMD_REGISTER: u32 = 1;
pub const CMD_COMMIT_AND_FETCH: u32 = 2;

const IORING_OP_URING_CMD: u8 = 46;

/// `struct fuse_uring_req_header`: `in_out` (the in or out header) at 0, `op_in` (the
/// operation's fixed arguments) at 128, then `struct fuse_uring_ent_in_out`.
pub const HDR_OP_IN: usize = 128;
pub const HDR_ENT_IN_OUT: usize = 256;
pub const HDR_LEN: usize = 288;
/// In `fuse_uring_ent_in_out`: `commit_id` and `payload_sz`.
pub const ENT_COMMIT_ID: usize = HDR_ENT_IN_OUT + 8;
pub const ENT_PAYLOAD_SZ: usize = HDR_ENT_IN_OUT + 16;

/// A FUSE ring command on the /dev/fuse fd `fd` for queue `qid`. `iov` (REGISTER only)
/// points at the entry's two iovecs, header and payload, which the kernel reads
/// while the command is submitted.
pub fn uring_cmd(fd: RawFd, op: u32, qid: u16, commit_id: u64, iov: Option<*const libc::iovec>, data: u64) -> Entry128 {
    // struct io_uring_sqe, then the 80-byte command area (at 48) of an SQE128.
    let mut b = [0u8; 128];
    b[0] = IORING_OP_URING_CMD;
    b[4..8].copy_from_slice(&fd.to_ne_bytes());
    b[8..12].copy_from_slice(&op.to_ne_bytes()); // cmd_op
    if let Some(p) = iov {
        b[16..24].copy_from_slice(&(p as u64).to_ne_bytes()); // addr
        b[24..28].copy_from_slice(&2u32.to_ne_bytes()); // len: two iovecs
    }
    b[32..40].copy_from_slice(&data.to_ne_bytes()); // user_data
                                                    // struct fuse_uring_cmd_req { flags, commit_id, qid, padding }
    b[56..64].copy_from_slice(&commit_id.to_ne_bytes());
    b[64..66].copy_from_slice(&qid.to_ne_bytes());
    // SAFETY: Entry128 is #[repr(C)] over struct io_uring_sqe and 64 more bytes (128 in
    // all, asserted by the crate), made only of integers and unions of integers: every
    // bit pattern is a valid value.
    unsafe { std::mem::transmute::<[u8; 128], Entry128>(b) }
}

/// The CPUs the kernel may run on (`num_possible_cpus`, from
/// /sys/devices/system/cpu/possible, e.g. "0-3" or "0,2-5").
pub fn possible_cpus() -> usize {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    let mut max = None;
    for part in s.trim().split(',') {
        let last = part.rsplit('-').next().unwrap_or("");
        if let Ok(n) = last.parse::<usize>() {
            max = Some(max.map_or(n, |m: usize| m.max(n)));
        }
    }
    max.map(|m| m + 1)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).map_err(Into::into)
}

/// A `struct stat` of type `kind` with every other field zero (for an entry whose real
/// stat can no longer be read).
pub fn zero_stat(kind: rustix::fs::FileType) -> rustix::fs::Stat {
    // SAFETY: `struct stat` is plain C data; all zeroes is a valid value of it.
    let mut st: rustix::fs::Stat = unsafe { std::mem::zeroed() };
    st.st_mode = kind.as_raw_mode();
    st
}

/// A signalfd for the signals in `set` (blocked by the caller), to poll beside
/// other fds.
pub fn signalfd(set: &libc::sigset_t) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: `set` is an initialised sigset_t; -1 asks for a new fd, which we own.
    let fd = unsafe { libc::signalfd(-1, set, libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by signalfd and is owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Takes ownership of fd `n`, inherited from the process that started this one, if it
/// is open; it is then closed on exec.
pub fn inherited_fd(n: RawFd) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // Our own standard streams are never handed over.
    if n <= 2 {
        return None;
    }
    // SAFETY: fcntl(F_GETFD) only asks whether `n` is open; it touches nothing.
    if unsafe { libc::fcntl(n, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: `n` is open and nothing else in this process owns it: it was inherited,
    // and this is called once, at start-up, before anything opens files.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(n) };
    let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
    Some(fd)
}
