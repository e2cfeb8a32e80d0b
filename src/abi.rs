//! The FUSE wire format (include/uapi/linux/fuse.h) for the io_uring transport:
//! opcodes, the request header, decoding of each operation's fixed arguments, and
//! encoding of answers. Plain safe byte parsing in native byte order; fuser keeps its
//! own parser private, so the ring needs this one.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType};

pub const LOOKUP: u32 = 1;
pub const FORGET: u32 = 2;
pub const GETATTR: u32 = 3;
pub const SETATTR: u32 = 4;
pub const READLINK: u32 = 5;
pub const SYMLINK: u32 = 6;
pub const MKNOD: u32 = 8;
pub const MKDIR: u32 = 9;
pub const UNLINK: u32 = 10;
pub const RMDIR: u32 = 11;
pub const RENAME: u32 = 12;
pub const LINK: u32 = 13;
pub const OPEN: u32 = 14;
pub const READ: u32 = 15;
pub const WRITE: u32 = 16;
pub const STATFS: u32 = 17;
pub const RELEASE: u32 = 18;
pub const FSYNC: u32 = 20;
pub const SETXATTR: u32 = 21;
pub const GETXATTR: u32 = 22;
pub const LISTXATTR: u32 = 23;
pub const REMOVEXATTR: u32 = 24;
pub const FLUSH: u32 = 25;
pub const OPENDIR: u32 = 27;
pub const READDIR: u32 = 28;
pub const RELEASEDIR: u32 = 29;
pub const FSYNCDIR: u32 = 30;
pub const ACCESS: u32 = 34;
pub const CREATE: u32 = 35;
pub const BATCH_FORGET: u32 = 42;
pub const FALLOCATE: u32 = 43;
pub const READDIRPLUS: u32 = 44;
pub const RENAME2: u32 = 45;
pub const LSEEK: u32 = 46;
pub const COPY_FILE_RANGE: u32 = 47;

/// setattr `valid` bits.
pub const FATTR_MODE: u32 = 1 << 0;
pub const FATTR_UID: u32 = 1 << 1;
pub const FATTR_GID: u32 = 1 << 2;
pub const FATTR_SIZE: u32 = 1 << 3;
pub const FATTR_ATIME: u32 = 1 << 4;
pub const FATTR_MTIME: u32 = 1 << 5;
pub const FATTR_FH: u32 = 1 << 6;
pub const FATTR_ATIME_NOW: u32 = 1 << 7;
pub const FATTR_MTIME_NOW: u32 = 1 << 8;
/// getattr_flags: `fh` is valid.
pub const GETATTR_FH: u32 = 1;
/// write_flags: clear set-id bits.
pub const WRITE_KILL_SUIDGID: u32 = 1 << 2;
/// fsync_flags: data only.
pub const FSYNC_FDATASYNC: u32 = 1;
/// open_out flag: passthrough to `backing_id`.
pub const FOPEN_PASSTHROUGH: u32 = 1 << 7;

/// Size of `struct fuse_in_header` and `struct fuse_out_header`.
pub const IN_HEADER_LEN: usize = 40;
pub const OUT_HEADER_LEN: usize = 16;

/// A cursor over request bytes. Reads past the end yield zeros and mark the
/// cursor short, which the caller turns into EINVAL.
pub struct Rd<'a> {
    b: &'a [u8],
    pub short: bool,
}

impl<'a> Rd<'a> {
    pub fn new(b: &'a [u8]) -> Rd<'a> {
        Rd { b, short: false }
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        if self.b.len() < n {
            self.short = true;
            self.b = &[];
            return &[];
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        h
    }
    pub fn u16(&mut self) -> u16 {
        let s = self.take(2);
        if s.len() < 2 {
            return 0;
        }
        u16::from_ne_bytes([s[0], s[1]])
    }
    pub fn u32(&mut self) -> u32 {
        let s = self.take(4);
        if s.len() < 4 {
            return 0;
        }
        u32::from_ne_bytes(s.try_into().unwrap())
    }
    pub fn u64(&mut self) -> u64 {
        let s = self.take(8);
        if s.len() < 8 {
            return 0;
        }
        u64::from_ne_bytes(s.try_into().unwrap())
    }
    /// A NUL-terminated name.
    pub fn name(&mut self) -> &'a OsStr {
        match self.b.iter().position(|&c| c == 0) {
            Some(i) => {
                let n = &self.b[..i];
                self.b = &self.b[i + 1..];
                OsStr::from_bytes(n)
            }
            None => {
                self.short = true;
                OsStr::new("")
            }
        }
    }
    /// The next `n` bytes (write data, an xattr value).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        if self.b.len() < n {
            self.short = true;
            return &[];
        }
        self.take(n)
    }
}

/// `struct fuse_in_header`.
#[derive(Clone, Copy, Debug)]
pub struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl InHeader {
    pub fn parse(b: &[u8]) -> InHeader {
        let mut r = Rd::new(b);
        InHeader {
            len: r.u32(),
            opcode: r.u32(),
            unique: r.u64(),
            nodeid: r.u64(),
            uid: r.u32(),
            gid: r.u32(),
            pid: r.u32(),
        }
    }
}

/// Writes `struct fuse_out_header` into `b` (16 bytes).
pub fn out_header(b: &mut [u8], len: u32, error: i32, unique: u64) {
    b[0..4].copy_from_slice(&len.to_ne_bytes());
    b[4..8].copy_from_slice(&error.to_ne_bytes());
    b[8..16].copy_from_slice(&unique.to_ne_bytes());
}

/// `FUSE_NOTIFY_INVAL_ENTRY`, the code of a notification that drops a cached name.
const NOTIFY_INVAL_ENTRY: i32 = 3;
/// `FUSE_EXPIRE_ONLY`: the name's cache time runs out, and the kernel asks again at
/// its next use, keeping the entry (and what is mounted on it) if the answer agrees.
pub const EXPIRE_ONLY: u32 = 1;

/// The bytes of an entry invalidation: `struct fuse_out_header` (unique 0 and the
/// notification code in place of an error) and `struct fuse_notify_inval_entry_out`,
/// then the name and a NUL.
pub fn inval_entry_notification(parent: u64, name: &OsStr, flags: u32) -> Vec<u8> {
    let n = name.as_bytes();
    let len = 16 + 16 + n.len() + 1;
    let mut b = vec![0u8; len];
    out_header(&mut b, len as u32, NOTIFY_INVAL_ENTRY, 0);
    let mut w = Wr { b: &mut b, n: 16 };
    w.u64(parent);
    w.u32(n.len() as u32);
    w.u32(flags);
    w.put(n);
    b
}

/// Appends answer bytes into a fixed buffer (the ring entry's payload).
pub struct Wr<'a> {
    pub b: &'a mut [u8],
    pub n: usize,
}

impl Wr<'_> {
    pub fn room(&self) -> usize {
        self.b.len() - self.n
    }
    pub fn put(&mut self, s: &[u8]) {
        self.b[self.n..self.n + s.len()].copy_from_slice(s);
        self.n += s.len();
    }
    pub fn u32(&mut self, v: u32) {
        self.put(&v.to_ne_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.put(&v.to_ne_bytes());
    }
}

fn mode_type(k: FileType) -> u32 {
    match k {
        FileType::NamedPipe => libc::S_IFIFO,
        FileType::CharDevice => libc::S_IFCHR,
        FileType::BlockDevice => libc::S_IFBLK,
        FileType::Directory => libc::S_IFDIR,
        FileType::RegularFile => libc::S_IFREG,
        FileType::Symlink => libc::S_IFLNK,
        FileType::Socket => libc::S_IFSOCK,
    }
}

/// The dirent type of a file type (the S_IF bits shifted, as DT_*).
pub fn dirent_type(k: FileType) -> u32 {
    mode_type(k) >> 12
}

fn time(t: SystemTime) -> (u64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs(), d.subsec_nanos()),
        Err(e) => {
            // Before 1970: seconds negative, nanoseconds counted forward.
            let d = e.duration();
            let (s, ns) = (d.as_secs() as i64, d.subsec_nanos());
            if ns == 0 {
                ((-s) as u64, 0)
            } else {
                ((-s - 1) as u64, 1_000_000_000 - ns)
            }
        }
    }
}

/// `struct fuse_attr` (88 bytes).
pub fn attr(w: &mut Wr, a: &FileAttr) {
    let (at, atn) = time(a.atime);
    let (mt, mtn) = time(a.mtime);
    let (ct, ctn) = time(a.ctime);
    w.u64(a.ino.0);
    w.u64(a.size);
    w.u64(a.blocks);
    w.u64(at);
    w.u64(mt);
    w.u64(ct);
    w.u32(atn);
    w.u32(mtn);
    w.u32(ctn);
    w.u32(mode_type(a.kind) | a.perm as u32);
    w.u32(a.nlink);
    w.u32(a.uid);
    w.u32(a.gid);
    w.u32(a.rdev);
    w.u32(a.blksize);
    w.u32(a.flags);
}

/// `struct fuse_entry_out` (128 bytes).
pub fn entry_out(w: &mut Wr, a: &FileAttr, ttl: Duration) {
    w.u64(a.ino.0);
    w.u64(0);
    w.u64(ttl.as_secs());
    w.u64(ttl.as_secs());
    w.u32(ttl.subsec_nanos());
    w.u32(ttl.subsec_nanos());
    attr(w, a);
}

/// `struct fuse_attr_out` (104 bytes).
pub fn attr_out(w: &mut Wr, a: &FileAttr, ttl: Duration) {
    w.u64(ttl.as_secs());
    w.u32(ttl.subsec_nanos());
    w.u32(0);
    attr(w, a);
}

/// `struct fuse_open_out` (16 bytes).
pub fn open_out(w: &mut Wr, fh: u64, flags: u32, backing_id: u32) {
    w.u64(fh);
    w.u32(flags);
    w.u32(backing_id);
}

/// `struct fuse_statfs_out` (80 bytes).
pub fn statfs_out(w: &mut Wr, s: &rustix::fs::StatVfs) {
    w.u64(s.f_blocks);
    w.u64(s.f_bfree);
    w.u64(s.f_bavail);
    w.u64(s.f_files);
    w.u64(s.f_ffree);
    w.u32(s.f_bsize as u32);
    w.u32(s.f_namemax as u32);
    w.u32(s.f_frsize as u32);
    w.u32(0);
    for _ in 0..6 {
        w.u32(0);
    }
}

fn pad8(n: usize) -> usize {
    (n + 7) & !7
}

/// `struct fuse_dirent` and its name, padded to 8 bytes; false when it does not fit
/// in `limit` bytes of the answer.
pub fn dirent(w: &mut Wr, limit: usize, ino: u64, off: u64, typ: u32, name: &OsStr) -> bool {
    let name = name.as_bytes();
    let len = pad8(24 + name.len());
    if w.n + len > limit.min(w.b.len()) {
        return false;
    }
    let start = w.n;
    w.u64(ino);
    w.u64(off);
    w.u32(name.len() as u32);
    w.u32(typ);
    w.put(name);
    while w.n < start + len {
        w.put(&[0]);
    }
    true
}

/// `struct fuse_direntplus` (an entry_out, then a dirent); false when it does not fit.
pub fn direntplus(w: &mut Wr, limit: usize, off: u64, name: &OsStr, ttl: Duration, a: &FileAttr) -> bool {
    let len = 128 + pad8(24 + name.as_bytes().len());
    if w.n + len > limit.min(w.b.len()) {
        return false;
    }
    entry_out(w, a, ttl);
    dirent(w, usize::MAX, a.ino.0, off, dirent_type(a.kind), name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_kernel_structs() {
        let mut buf = [0u8; 512];
        let a = crate::attr::negative_attr();
        let mut w = Wr { b: &mut buf, n: 0 };
        attr(&mut w, &a);
        assert_eq!(w.n, 88);
        let mut w = Wr { b: &mut buf, n: 0 };
        entry_out(&mut w, &a, Duration::from_secs(1));
        assert_eq!(w.n, 128);
        let mut w = Wr { b: &mut buf, n: 0 };
        attr_out(&mut w, &a, Duration::from_secs(1));
        assert_eq!(w.n, 104);
        let mut w = Wr { b: &mut buf, n: 0 };
        assert!(dirent(&mut w, 512, 1, 2, 4, OsStr::new("abc")));
        assert_eq!(w.n, 32);
        assert!(!dirent(&mut w, 40, 1, 2, 4, OsStr::new("abc")));
    }

    #[test]
    fn names_and_short_reads() {
        let mut r = Rd::new(b"a\0bc\0");
        assert_eq!(r.name(), "a");
        assert_eq!(r.name(), "bc");
        assert!(!r.short);
        assert_eq!(r.u32(), 0);
        assert!(r.short);
    }

    #[test]
    fn times_before_1970() {
        let t = UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(time(t), ((-2i64) as u64, 500_000_000));
    }
}
