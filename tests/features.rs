//! strata's own behaviour beyond the union semantics: metadata-only copy-up
//! of large files, uid/gid mapping options, files open across copy-up.

mod common;

use common::*;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};

/// Files at least this large keep their data in the lower layer when only
/// their metadata changes.
const LARGE: usize = 1 << 20;

#[test]
fn chmod_of_large_lower_file_copies_metadata_only() {
    let fx = Fixture::new(1);
    fx.lower(0).sparse("big", 64 << 20, 10 << 20, b"payload");
    let m = fx.mount_opts("metacopy=on");

    chmod(&m.p("big"), 0o600).unwrap();
    assert_eq!(meta(&m.p("big")).mode() & 0o7777, 0o600);
    assert_eq!(meta(&fx.upper().p("big")).blocks(), 0, "no data copied for chmod");
    let data = read(&m.p("big"));
    assert_eq!(data.len(), 64 << 20);
    assert_eq!(&data[10 << 20..(10 << 20) + 7], b"payload");

    OpenOptions::new()
        .append(true)
        .open(m.p("big"))
        .unwrap()
        .write_all(b"!")
        .unwrap();
    let data = read(&m.p("big"));
    assert_eq!(
        &data[10 << 20..(10 << 20) + 7],
        b"payload",
        "data copied on first write"
    );
    assert_eq!(data.last(), Some(&b'!'));
    assert_eq!(meta(&m.p("big")).mode() & 0o7777, 0o600);
    // The filled copy took the metadata copy's place; the old one is gone at once (not
    // left in the staging dir until the next mount), and the holes stayed holes.
    let staging = fx.work.join("staging");
    let left: Vec<_> = fs::read_dir(&staging)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in {}: {left:?}", staging.display());
    assert!(
        meta(&fx.upper().p("big")).blocks() * 512 < 4 << 20,
        "filled copy not sparse"
    );
    m.finish();
}

#[test]
fn truncating_a_metadata_only_copy_drops_its_lower_data() {
    let fx = Fixture::new(1);
    let lower = |n: &str| format!("lower data {n}").repeat(LARGE / 10);
    for n in ["a", "b", "c"] {
        fx.lower(0).file(n, lower(n));
    }
    let m = fx.mount_opts("metacopy=on");
    for n in ["a", "b", "c"] {
        chmod(&m.p(n), 0o600).unwrap();
        assert_eq!(meta(&fx.upper().p(n)).blocks(), 0, "{n}: metadata-only copy");
    }
    OpenOptions::new().write(true).truncate(true).open(m.p("a")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(m.p("b"))
        .unwrap()
        .set_len(0)
        .unwrap();
    let c = cstr(m.p("c"));
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_TRUNC) };
    assert!(fd >= 0, "open O_RDONLY|O_TRUNC: {}", std::io::Error::last_os_error());
    unsafe { libc::close(fd) };
    for n in ["a", "b", "c"] {
        assert_eq!(read_string(&m.p(n)), "", "{n} is empty after truncation");
    }
    m.finish(); // and the lower files are untouched
}

#[test]
fn write_only_opens_bring_data_up_only_when_written() {
    let fx = Fixture::new(1);
    let data: Vec<u8> = (0..(4 << 20)).map(|i| (i % 251) as u8).collect();
    for n in ["touched", "written", "replaced"] {
        fx.lower(0).file(n, &data);
    }
    let m = fx.mount_opts("metacopy=on");

    // touch: open for writing, set times, close.
    let f = OpenOptions::new().write(true).open(m.p("touched")).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(2_000_000))
        .unwrap();
    drop(f);
    assert_eq!(meta(&fx.upper().p("touched")).blocks(), 0, "touch copies no data");
    assert_eq!(meta(&m.p("touched")).mtime(), 2_000_000);
    assert_eq!(read(&m.p("touched")), data);

    // A write in the middle: the rest of the data comes up with it.
    pwrite(&m.p("written"), 1000, b"XYZ");
    let mut want = data.clone();
    want[1000..1003].copy_from_slice(b"XYZ");
    assert_eq!(read(&m.p("written")), want);
    assert_eq!(read(&fx.upper().p("written")), want);

    // > file: truncated, nothing of the old data copied.
    fs::write(m.p("replaced"), "new").unwrap();
    assert_eq!(read_string(&m.p("replaced")), "new");
    assert_eq!(read_string(&fx.upper().p("replaced")), "new");
    m.finish();
}

#[test]
fn readers_and_writers_of_one_file_open_together() {
    let fx = Fixture::new(1);
    fx.lower(0).file("f", "lower");
    let m = fx.mount();
    {
        // A reader of the lower file stays open while writers copy it up and write.
        let mut r = File::open(m.p("f")).unwrap();
        let mut w1 = OpenOptions::new().read(true).write(true).open(m.p("f")).unwrap();
        w1.write_all(b"UPPER").unwrap();
        let mut w2 = OpenOptions::new().append(true).open(m.p("f")).unwrap();
        w2.write_all(b"+more").unwrap();
        let mut got = String::new();
        r.read_to_string(&mut got).unwrap();
        assert!(!got.is_empty());
        assert_eq!(read_string(&m.p("f")), "UPPER+more");
        w1.seek(SeekFrom::Start(0)).unwrap();
        let mut via_w1 = String::new();
        w1.read_to_string(&mut via_w1).unwrap();
        assert_eq!(via_w1, "UPPER+more");
    }
    assert_eq!(read_string(&fx.upper().p("f")), "UPPER+more");
    m.finish();
}

#[test]
fn open_unlinked_file_still_works() {
    let fx = Fixture::new(1);
    fx.lower(0).file("lower", "from below");
    let m = fx.mount();
    {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(m.p("tmp"))
            .unwrap();
        fs::remove_file(m.p("tmp")).unwrap();
        f.write_all(b"still here").unwrap();
        assert_eq!(f.metadata().unwrap().nlink(), 0);
        let mut buf = [0u8; 10];
        f.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"still here");

        // The same for a file that was in the lower layer.
        let mut g = OpenOptions::new().read(true).write(true).open(m.p("lower")).unwrap();
        fs::remove_file(m.p("lower")).unwrap();
        assert_errno(lstat(&m.p("lower")), libc::ENOENT, "lower after unlink");
        let mut s = String::new();
        g.read_to_string(&mut s).unwrap();
        assert_eq!(s, "from below");
        g.write_all_at(b"FROM", 0).unwrap();
        let mut buf = [0u8; 4];
        g.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"FROM");
    }
    assert_eq!(fx.upper_names(), strs(&[".wh.lower"]));
    m.finish();
}

#[test]
fn uid_and_gid_mappings_apply_to_ownership() {
    let fx = Fixture::new(1);
    fx.lower(0)
        .file("root-owned", "x")
        .file("user-owned", "x")
        .owner("user-owned", 5, 5);
    let m = fx.mount_opts("uidmapping=0:1000:1:1:100000:65536,gidmapping=0:2000:1:1:200000:65536");
    let st = meta(&m.p("root-owned"));
    assert_eq!((st.uid(), st.gid()), (1000, 2000));
    let st = meta(&m.p("user-owned"));
    assert_eq!((st.uid(), st.gid()), (100004, 200004));
    std::os::unix::fs::chown(m.p("root-owned"), Some(100009), Some(200009)).unwrap();
    let st = meta(&fx.upper().p("root-owned"));
    assert_eq!((st.uid(), st.gid()), (10, 10), "stored as container ids");
    m.finish();

    let m = fx.mount_opts("squash_to_uid=77,squash_to_gid=88");
    let st = meta(&m.p("user-owned"));
    assert_eq!((st.uid(), st.gid()), (77, 88));
    m.finish();
}
