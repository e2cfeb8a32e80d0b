//! Writing tar entries byte for byte: ustar headers, PAX records (long names,
//! `SCHILY.xattr.*`), GNU sparse entries. Nothing here depends on the clock or on
//! user names, so the same entries give the same bytes.

use std::io::{self, Write};

use tar::{EntryType, Header};

pub const BLOCK: u64 = 512;

/// One entry's metadata, as it goes into the archive.
pub struct Meta {
    pub path: Vec<u8>,
    pub kind: EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub size: u64,
    pub link: Option<Vec<u8>>,
    pub dev: Option<(u32, u32)>,
    /// Sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A PAX record: "LEN KEY=VALUE\n", LEN counting itself.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    loop {
        let n = body + len.to_string().len();
        if n == len {
            break;
        }
        len = n;
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn pad(w: &mut impl Write, len: u64) -> io::Result<()> {
    let rem = (BLOCK - len % BLOCK) % BLOCK;
    w.write_all(&[0u8; 512][..rem as usize])
}

/// Writes the header(s) of `m`: a PAX extended header first when a name does not
/// fit or there are xattrs. `sparse` is the data map of a GNU sparse entry
/// ((offset, length) pairs), in which case `m.size` is the file's real size.
pub fn write_header(w: &mut impl Write, m: &Meta, sparse: Option<&[(u64, u64)]>) -> io::Result<()> {
    let mut h = if sparse.is_some() {
        Header::new_gnu()
    } else {
        Header::new_ustar()
    };
    let mut pax = Vec::new();
    if h.set_path(std::ffi::OsStr::from_bytes_compat(&m.path)).is_err() || !m.path.is_ascii() {
        pax_record(&mut pax, b"path", &m.path);
        let short: Vec<u8> = m.path.iter().copied().filter(u8::is_ascii).take(99).collect();
        h.as_old_mut().name = [0; 100];
        h.as_old_mut().name[..short.len()].copy_from_slice(&short);
    }
    if let Some(link) = &m.link {
        if link.len() > 100 || !link.is_ascii() || h.set_link_name_literal(link).is_err() {
            pax_record(&mut pax, b"linkpath", link);
            let short: Vec<u8> = link.iter().copied().filter(u8::is_ascii).take(99).collect();
            h.as_old_mut().linkname = [0; 100];
            h.as_old_mut().linkname[..short.len()].copy_from_slice(&short);
        }
    }
    for (k, v) in &m.xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(k);
        pax_record(&mut pax, &key, v);
    }
    h.set_mode(m.mode);
    h.set_uid(m.uid);
    h.set_gid(m.gid);
    h.set_mtime(m.mtime);
    h.set_entry_type(m.kind);
    if let Some((ma, mi)) = m.dev {
        h.set_device_major(ma)?;
        h.set_device_minor(mi)?;
    }
    match sparse {
        None => h.set_size(m.size),
        Some(map) => {
            h.set_entry_type(EntryType::GNUSparse);
            h.set_size(map.iter().map(|(_, l)| l).sum());
        }
    }
    let mut ext_blocks: Vec<[u8; 512]> = Vec::new();
    if let Some(map) = sparse {
        let g = h.as_gnu_mut().expect("GNU header");
        octal(&mut g.realsize, m.size);
        // The map ends with (size, 0), as GNU tar writes it: a trailing hole.
        let mut all: Vec<(u64, u64)> = map.to_vec();
        all.push((m.size, 0));
        let (first, rest) = all.split_at(all.len().min(4));
        for (i, (o, l)) in first.iter().enumerate() {
            octal(&mut g.sparse[i].offset, *o);
            octal(&mut g.sparse[i].numbytes, *l);
        }
        g.isextended[0] = !rest.is_empty() as u8;
        let chunks: Vec<&[(u64, u64)]> = rest.chunks(21).collect();
        for (ci, chunk) in chunks.iter().enumerate() {
            let mut b = [0u8; 512];
            for (i, (o, l)) in chunk.iter().enumerate() {
                let at = i * 24;
                octal(&mut b[at..at + 12], *o);
                octal(&mut b[at + 12..at + 24], *l);
            }
            b[504] = (ci + 1 < chunks.len()) as u8;
            ext_blocks.push(b);
        }
    }
    if !pax.is_empty() {
        let mut ph = Header::new_ustar();
        // A fixed name for the extended header: reproducible, and what it describes
        // is in its records.
        ph.set_path("PaxHeaders/entry")?;
        ph.set_mode(0o644);
        ph.set_mtime(m.mtime);
        ph.set_entry_type(EntryType::XHeader);
        ph.set_size(pax.len() as u64);
        ph.set_cksum();
        w.write_all(ph.as_bytes())?;
        w.write_all(&pax)?;
        pad(w, pax.len() as u64)?;
    }
    h.set_cksum();
    w.write_all(h.as_bytes())?;
    for b in &ext_blocks {
        w.write_all(b)?;
    }
    Ok(())
}

/// Pads the data just written (`len` bytes) to a whole block.
pub fn finish_data(w: &mut impl Write, len: u64) -> io::Result<()> {
    pad(w, len)
}

/// The end of the archive: two zero blocks.
pub fn finish(w: &mut impl Write) -> io::Result<()> {
    w.write_all(&[0u8; 1024])
}

/// An octal field, NUL-terminated (11 digits in 12 bytes).
fn octal(field: &mut [u8], v: u64) {
    let n = field.len() - 1;
    let s = format!("{:0width$o}", v, width = n);
    let s = s.as_bytes();
    if s.len() > n {
        // Larger than the field: base-256 with the high bit set (a GNU extension).
        field.fill(0);
        field[0] = 0x80;
        let bytes = v.to_be_bytes();
        let l = field.len();
        field[l - 8..].copy_from_slice(&bytes);
        return;
    }
    field[..n].copy_from_slice(s);
    field[n] = 0;
}

trait FromBytes {
    fn from_bytes_compat(b: &[u8]) -> &Self;
}
impl FromBytes for std::ffi::OsStr {
    fn from_bytes_compat(b: &[u8]) -> &Self {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::OsStr::from_bytes(b)
    }
}
