//! Layers as objects: `strata export` then `strata apply` gives back the merged tree
//! (checked against the original mount, and against an independent applier written
//! here from the OCI image spec in python's tarfile); export is reproducible and
//! converts overlay-form markers; hostile layer tars are refused with nothing written
//! outside the target; `strata mount --image` mounts a docker-save style archive (built
//! here, and one made by `podman save` when podman is there) and reuses its store.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use sha2::Digest;

/// Says why part of a test does not run, on stderr and (for scripts/test.sh's
/// summary) in the file `$STRATA_SKIP_LOG` names.
fn skip(what: &str, why: &str) {
    eprintln!("SKIP {what}: {why}");
    if let Some(p) = std::env::var_os("STRATA_SKIP_LOG") {
        if let Ok(mut f) = fs::OpenOptions::new().append(true).create(true).open(p) {
            let _ = writeln!(f, "layers::{what}: {why}");
        }
    }
}

fn strata(args: &[&str]) -> Output {
    Command::new(STRATA)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run strata")
}

#[track_caller]
fn ok(o: Output, what: &str) -> Output {
    assert!(
        o.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// What a user sees of a mounted tree, comparable across mounts: the root left out
/// (a layer tar does not carry it), times to the second (a tar's resolution), and a
/// directory's size and link count (they depend on the backing filesystem) dropped.
fn view(root: &Path) -> BTreeMap<PathBuf, EntryState> {
    let mut v = Snapshot::of(root).view().0;
    v.remove(Path::new(""));
    for e in v.values_mut() {
        e.mtime.1 = 0;
        if e.kind == "dir" {
            e.size = 0;
            e.nlink = 0;
        }
    }
    v
}

#[track_caller]
fn assert_same(a: &BTreeMap<PathBuf, EntryState>, b: &BTreeMap<PathBuf, EntryState>, what: &str) {
    let mut diff = String::new();
    for (p, x) in a {
        match b.get(p) {
            None => diff += &format!("  only in the original: {}\n", p.display()),
            Some(y) if x != y => diff += &format!("  {}\n    original: {x:?}\n    result:   {y:?}\n", p.display()),
            _ => {}
        }
    }
    for p in b.keys().filter(|p| !a.contains_key(*p)) {
        diff += &format!("  only in the result: {}\n", p.display());
    }
    assert!(diff.is_empty(), "{what}: the trees differ:\n{diff}");
}

/// Allocated bytes of a file.
fn allocated(p: &Path) -> u64 {
    fs::symlink_metadata(p).unwrap().blocks() * 512
}

/// Two lowers, then changes of every kind through the mount.
fn build_changed_mount(f: &Fixture) -> Mount {
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    f.lower(1)
        .file("d/a", "a")
        .file("d/b", "b")
        .file("d/sub/deep", "deep")
        .file("opq/x", "x")
        .file("opq/y/z", "z")
        .file("keep", "keep")
        .file("big", &big)
        .file("over", "over1")
        .file("old/t/u", "u")
        .file("ren_src", "moved")
        .file("lh1", "lower link")
        .hardlink("lh1", "lh2")
        .symlink("link", "keep")
        .fifo("fifo")
        .xattr("d/b", "user.lower", b"1");
    f.lower(0).file("d/c", "c").file("over", "over0").file("top", "top");
    // Metadata-only copies (opt-in) are among what export must read through.
    let m = f.mount_opts("metacopy=on");
    let p = |r: &str| m.p(r);
    fs::remove_file(p("d/a")).unwrap();
    fs::remove_dir_all(p("old")).unwrap();
    fs::remove_dir_all(p("opq")).unwrap();
    fs::create_dir(p("opq")).unwrap();
    write(&p("opq/n"), "new in opaque");
    fs::create_dir_all(p("newdir/sub")).unwrap();
    write(&p("newdir/sub/f"), "f");
    write(&p("newdir/hl1"), "hard");
    fs::hard_link(p("newdir/hl1"), p("newdir/hl2")).unwrap();
    fs::hard_link(p("newdir/hl1"), p("hl3")).unwrap();
    {
        let sp = fs::File::create(p("sp")).unwrap();
        sp.set_len(10 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        sp.write_all_at(b"middle", 5 << 20).unwrap();
        sp.write_all_at(b"end", (10 << 20) - 3).unwrap();
    }
    set_xattr(&p("d/b"), "user.foo", b"bar").unwrap();
    set_xattr(&p("newdir"), "user.dir", b"\x00\x01binary").unwrap();
    chmod(&p("keep"), 0o600).unwrap();
    chmod(&p("d"), 0o750).unwrap();
    // A metadata-only change of a large file: a metadata-only copy in the upper.
    lchown(&p("big"), 123, 456).unwrap();
    symlink("d/b", p("newlink")).unwrap();
    fs::rename(p("ren_src"), p("ren_dst")).unwrap();
    mkfifo(&p("newfifo"), 0o640).unwrap();
    let mut o = fs::OpenOptions::new().append(true).open(p("over")).unwrap();
    o.write_all(b"+more").unwrap();
    drop(o);
    fs::remove_file(p("top")).unwrap();
    write(&p("lh2"), "replaced the lower hard link");
    // The test is about these: make sure the upper holds them as expected.
    let up = f.upper().path();
    assert!(
        xattrs(&up.join("big")).keys().any(|k| k.ends_with("overlay.metacopy")),
        "chown of a large lower file left no metadata-only copy: {:?}",
        xattrs(&up.join("big"))
    );
    assert!(up.join("opq/.wh..wh..opq").exists() || !xattrs(&up.join("opq")).is_empty());
    assert!(allocated(&up.join("sp")) < 1 << 20, "sp is not sparse in the upper");
    m
}

/// An applier written from the OCI image spec ("Applying changesets"), with python's
/// tarfile: `.wh..wh..opq` empties the directory of what lower layers put there,
/// `.wh.NAME` removes NAME, everything else is extracted over what is there (owners,
/// modes, times, xattrs from SCHILY.xattr.* records).
const PY_APPLY: &str = r#"
import os, sys, shutil, tarfile
layer, root = sys.argv[1], sys.argv[2]
def rm(p):
    if os.path.isdir(p) and not os.path.islink(p): shutil.rmtree(p)
    elif os.path.lexists(p): os.unlink(p)
dirs = []
with tarfile.open(layer) as t:
    for m in t:
        name = m.name[2:] if m.name.startswith('./') else m.name
        d, base = os.path.split(name)
        target = os.path.join(root, name)
        if base == '.wh..wh..opq':
            for c in os.listdir(os.path.join(root, d)): rm(os.path.join(root, d, c))
            continue
        if base.startswith('.wh.'):
            rm(os.path.join(root, d, base[4:]))
            continue
        if not (m.isdir() and os.path.isdir(target)): rm(target)
        t.extract(m, root, set_attrs=True, numeric_owner=True)
        for k, v in m.pax_headers.items():
            if k.startswith('SCHILY.xattr.'):
                os.setxattr(target, k[13:], v.encode('utf-8', 'surrogateescape'), follow_symlinks=False)
        if m.isdir(): dirs.append((m, target))
        if m.issym(): os.utime(target, (m.mtime, m.mtime), follow_symlinks=False)
for m, target in reversed(dirs):
    os.utime(target, (m.mtime, m.mtime))
"#;

fn python() -> Option<&'static str> {
    ["python3"].into_iter().find(|p| {
        Command::new(p)
            .arg("-c")
            .arg("import tarfile")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

#[test]
fn export_then_apply_gives_back_the_merged_tree() {
    let f = Fixture::new(2);
    let m = build_changed_mount(&f);
    let original = view(m.path());
    let tar1 = f.root().join("change.tar");
    let tar2 = f.root().join("change2.tar");
    let tar3 = f.root().join("change3.tar");
    // Live form, twice, and the --upper/--lower form: the same bytes.
    ok(strata(&["export", s(m.path()), "-o", s(&tar1)]), "export MOUNTPOINT");
    ok(
        strata(&["export", s(m.path()), "-o", s(&tar2)]),
        "export MOUNTPOINT again",
    );
    let lowers = format!("{}:{}", s(f.lower(0).path()), s(f.lower(1).path()));
    let o = ok(
        strata(&[
            "export",
            "--upper",
            s(f.upper().path()),
            "--lower",
            &lowers,
            "--workdir",
            s(&f.work),
        ]),
        "export --upper (stdout)",
    );
    fs::write(&tar3, &o.stdout).unwrap();
    let t1 = fs::read(&tar1).unwrap();
    assert!(t1 == fs::read(&tar2).unwrap(), "two exports of the same tree differ");
    assert!(t1 == o.stdout, "export MOUNTPOINT and export --upper/--lower differ");
    m.finish();

    // What the tar holds, read back with the tar crate.
    let mut listing = BTreeMap::new();
    let mut ar = tar::Archive::new(&t1[..]);
    let mut order = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let p = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let x: Vec<String> = e
            .pax_extensions()
            .unwrap()
            .map(|x| x.flatten().map(|r| r.key().unwrap().to_owned()).collect())
            .unwrap_or_default();
        order.push(p.clone());
        listing.insert(p, (e.header().entry_type(), x, e.header().uid().unwrap()));
    }
    for want in [
        "d/.wh.a",
        ".wh.old",
        "opq/.wh..wh..opq",
        ".wh.top",
        ".wh.ren_src",
        "sp",
        "newdir/hl2",
        "big",
    ] {
        assert!(listing.contains_key(want), "{want} missing from the tar: {order:?}");
    }
    assert!(
        !order
            .iter()
            .any(|p| p.contains(".wh..wh.") && !p.ends_with(".wh..wh..opq")),
        "strata's own entries exported: {order:?}"
    );
    assert_eq!(listing["sp"].0, tar::EntryType::GNUSparse, "sp not a sparse entry");
    // Three names of one file: written once, then two tar hard links.
    let kinds: Vec<tar::EntryType> = ["hl3", "newdir/hl1", "newdir/hl2"]
        .iter()
        .map(|n| listing[*n].0)
        .collect();
    assert_eq!(
        kinds,
        [tar::EntryType::Regular, tar::EntryType::Link, tar::EntryType::Link]
    );
    assert!(listing["d/b"].1.iter().any(|k| k == "SCHILY.xattr.user.foo"));
    assert!(
        !listing["big"].1.iter().any(|k| k.contains("strata")),
        "internal xattr exported"
    );
    assert_eq!(listing["big"].2, 123);
    // Whiteouts before their siblings.
    let first_plain = order
        .iter()
        .position(|p| !p.contains('/') && !p.starts_with(".wh."))
        .unwrap();
    let last_wh = order
        .iter()
        .rposition(|p| !p.contains('/') && p.starts_with(".wh."))
        .unwrap();
    assert!(last_wh < first_plain, "a whiteout after a sibling: {order:?}");
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order.len(), sorted.len());

    // Apply onto copies of the lowers as a new top layer, mount read-only, compare.
    let copies: Vec<PathBuf> = (0..2)
        .map(|i| {
            let c = f.root().join(format!("copy{i}"));
            let st = Command::new("cp")
                .arg("-a")
                .arg(f.lower(i).path())
                .arg(&c)
                .status()
                .unwrap();
            assert!(st.success());
            c
        })
        .collect();
    let new = f.root().join("new");
    ok(strata(&["apply", s(&tar1), s(&new)]), "apply");
    assert!(
        allocated(&new.join("sp")) < 1 << 20,
        "the applied sparse file is not sparse: {} bytes",
        allocated(&new.join("sp"))
    );
    assert_eq!(
        fs::metadata(new.join("newdir/hl1")).unwrap().ino(),
        fs::metadata(new.join("hl3")).unwrap().ino()
    );
    let mnt2 = f.dir("mnt2");
    let lowerdir = join_lowers(&[&new, &copies[0], &copies[1]]);
    let m2 = Mount::start(
        &[
            "-f".into(),
            "-o".into(),
            format!("lowerdir={lowerdir}").into(),
            mnt2.clone().into(),
        ],
        &mnt2,
        &[],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let result = view(&mnt2);
    assert!(
        allocated(&mnt2.join("sp")) < 1 << 20,
        "sparse file not sparse through the new stack"
    );
    m2.finish();
    assert_same(&original, &result, "export + apply");

    // Compressed input gives the same layer.
    let gz = f.root().join("change.tar.gz");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -c < {} > {}", s(&tar1), s(&gz)))
        .status()
        .unwrap();
    assert!(st.success());
    let new_gz = f.root().join("new_gz");
    ok(strata(&["apply", s(&gz), s(&new_gz)]), "apply gzip");
    let zst = f.root().join("change.tar.zst");
    fs::write(&zst, zstd::encode_all(&t1[..], 3).unwrap()).unwrap();
    let new_zst = f.root().join("new_zst");
    ok(strata(&["apply", s(&zst), s(&new_zst)]), "apply zstd");
    let plain = Snapshot::of(&new).view().0;
    for other in [&new_gz, &new_zst] {
        let mut a = plain.clone();
        let mut b = Snapshot::of(other).view().0;
        a.remove(Path::new(""));
        b.remove(Path::new(""));
        assert_same(&a, &b, "compressed apply");
    }

    // The independent applier: the tar over a flat copy of the lower view.
    let Some(py) = python() else {
        skip("independent applier", "python3 with tarfile not found");
        return;
    };
    let flat = f.root().join("flat");
    let mnt3 = f.dir("mnt3");
    let m3 = Mount::start(
        &[
            "-f".into(),
            "-o".into(),
            format!("lowerdir={}", f.lowerdir()).into(),
            mnt3.clone().into(),
        ],
        &mnt3,
        &[],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let st = Command::new("cp").arg("-a").arg(&mnt3).arg(&flat).status().unwrap();
    m3.finish();
    assert!(st.success(), "cp -a of the lower view");
    let script = f.root().join("apply.py");
    fs::write(&script, PY_APPLY).unwrap();
    let o = Command::new(py).arg(&script).arg(&tar1).arg(&flat).output().unwrap();
    assert!(
        o.status.success(),
        "python applier: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut independent = view(&flat);
    // cp -a keeps hard links only among the files it copies; the lower's pair is one.
    for e in independent.values_mut() {
        e.ino = 0;
    }
    assert_same(&result, &independent, "strata apply against the OCI-spec applier");
}

#[test]
fn export_converts_overlay_markers_and_leaves_out_strata_entries() {
    let f = Fixture::new(1);
    f.lower(0).file("gone", "g").file("o/x", "x");
    let up = f.upper().path().to_path_buf();
    fs::create_dir_all(up.join("o")).unwrap();
    set_xattr(&up.join("o"), "trusted.overlay.opaque", b"y").unwrap();
    write(&up.join("o/kept"), "k");
    mknod(&up.join("gone"), libc::S_IFCHR | 0o600, 0, 0).unwrap();
    fs::create_dir_all(up.join(".wh..wh.work/junk")).unwrap();
    write(&up.join(".wh..wh.orph"), "");
    write(&up.join("f"), "data");
    set_times(&up.join("f"), (5000, 0), (5000, 0)).unwrap();
    // Owner and mode kept in an xattr (containers/storage's override_stat).
    set_xattr(&up.join("o/kept"), "user.containers.override_stat", b"1000:1001:0750").unwrap();
    let out = f.root().join("o.tar");
    ok(
        strata(&["export", "--upper", s(&up), "--mtime", "1000", "-o", s(&out)]),
        "export",
    );
    let mut names = Vec::new();
    let mut ar = tar::Archive::new(fs::File::open(&out).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let p = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        assert!(e.header().mtime().unwrap() <= 1000, "{p}: mtime not clamped");
        if p == "o/kept" {
            let h = e.header();
            assert_eq!(
                (h.uid().unwrap(), h.gid().unwrap(), h.mode().unwrap()),
                (1000, 1001, 0o750)
            );
        }
        assert!(
            e.header().username_bytes().is_none_or(|u| u.is_empty()),
            "{p}: a user name"
        );
        if let Some(x) = e.pax_extensions().unwrap() {
            for r in x.flatten() {
                let k = r.key().unwrap();
                assert!(!k.contains("overlay") && !k.contains("override"), "{p}: {k} exported");
            }
        }
        names.push(p);
    }
    assert_eq!(names, strs(&[".wh.gone", "f", "o", "o/.wh..wh..opq", "o/kept"]));
    // And apply takes overlay-form whiteouts: char 0/0 becomes .wh.NAME.
    let t = f.root().join("ovl.tar");
    let mut b = tar::Builder::new(fs::File::create(&t).unwrap());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Char);
    h.set_device_major(0).unwrap();
    h.set_device_minor(0).unwrap();
    h.set_mode(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(0);
    b.append_data(&mut h, "sub/gone", &[][..]).unwrap();
    b.finish().unwrap();
    drop(b);
    let dir = f.root().join("applied");
    ok(strata(&["apply", s(&t), s(&dir)]), "apply overlay whiteout");
    assert_eq!(names_of(&dir.join("sub")), strs(&[".wh.gone"]));
}

fn names_of(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---- hostile tars ----

/// A raw tar entry: any name (no checks), type, link target, data.
fn raw_entry(out: &mut Vec<u8>, name: &str, kind: tar::EntryType, link: &str, data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    let n = name.as_bytes();
    h.as_old_mut().name[..n.len()].copy_from_slice(n);
    let l = link.as_bytes();
    h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
    h.set_entry_type(kind);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
    }
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// Applies `tar` into `root/dir` (as `user` when given); asserts it is refused naming
/// `entry`, that `root/dir` does not exist after, and that `outside` is unchanged.
#[track_caller]
fn assert_refused(root: &Path, tar: Vec<u8>, entry: &str, user: Option<u32>) {
    let mut tar = tar;
    tar.extend_from_slice(&[0u8; 1024]);
    let t = root.join("hostile.tar");
    fs::write(&t, &tar).unwrap();
    let outside = root.join("outside");
    let before = Snapshot::of(&outside);
    let etc = fs::metadata("/etc/passwd").unwrap();
    let dir = root.join("layer");
    let mut c = Command::new(if user.is_some() { "setpriv" } else { STRATA });
    if let Some(u) = user {
        c.args([
            format!("--reuid={u}"),
            format!("--regid={u}"),
            "--clear-groups".into(),
            STRATA.into(),
        ]);
    }
    let o = c.arg("apply").arg(&t).arg(&dir).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{entry}: accepted; stderr: {err}");
    assert!(err.contains(entry), "{entry}: the refusal does not name it: {err}");
    assert!(!dir.exists(), "{entry}: {} left behind", dir.display());
    before.assert_unchanged(&outside);
    let etc2 = fs::metadata("/etc/passwd").unwrap();
    assert_eq!(
        (etc.ino(), etc.nlink(), etc.mtime()),
        (etc2.ino(), etc2.nlink(), etc2.mtime())
    );
    let stray: Vec<String> = names_of(root)
        .into_iter()
        .filter(|n| !["hostile.tar", "outside"].contains(&n.as_str()))
        .collect();
    assert!(stray.is_empty(), "{entry}: left {stray:?} beside the layer");
}

#[test]
fn apply_refuses_hostile_tars() {
    use tar::EntryType as T;
    let tmp = tempfile::Builder::new()
        .prefix("strata-hostile-tar.")
        .tempdir()
        .unwrap();
    let root = tmp.path().canonicalize().unwrap();
    fs::create_dir(root.join("outside")).unwrap();
    write(&root.join("outside/target"), "keep me");
    let out = s(&root.join("outside")).to_owned();
    let mut cases: Vec<(Vec<u8>, &str)> = Vec::new();
    let mut t = Vec::new();
    raw_entry(&mut t, "ok", T::Regular, "", b"fine");
    raw_entry(&mut t, "../outside/dotdot", T::Regular, "", b"x");
    cases.push((t, "../outside/dotdot"));
    let mut t = Vec::new();
    raw_entry(&mut t, "a/../../outside/dotdot2", T::Regular, "", b"x");
    cases.push((t, "a/../../outside/dotdot2"));
    let mut t = Vec::new();
    let abs = format!("{out}/abs");
    raw_entry(&mut t, &abs, T::Regular, "", b"x");
    cases.push((t, abs.as_str()));
    // A symlink to outside, then a file through it.
    let mut t = Vec::new();
    raw_entry(&mut t, "link", T::Symlink, &out, b"");
    raw_entry(&mut t, "link/through", T::Regular, "", b"x");
    cases.push((t, "link/through"));
    // A relative symlink up, then a directory and a file through it.
    let mut t = Vec::new();
    raw_entry(&mut t, "d/up", T::Symlink, "../..", b"");
    raw_entry(&mut t, "d/up/outside/through2", T::Regular, "", b"x");
    cases.push((t, "d/up/outside/through2"));
    // Hard links to a file outside.
    let mut t = Vec::new();
    raw_entry(&mut t, "passwd", T::Link, "/etc/passwd", b"");
    cases.push((t, "passwd"));
    let mut t = Vec::new();
    raw_entry(&mut t, "passwd2", T::Link, "../../../../../../../etc/passwd", b"");
    cases.push((t, "passwd2"));
    // A hard link through a symlinked parent.
    let mut t = Vec::new();
    raw_entry(&mut t, "out", T::Symlink, &out, b"");
    raw_entry(&mut t, "hl", T::Link, "out/target", b"");
    cases.push((t, "'hl'"));
    // A hard link to an entry the layer does not have.
    let mut t = Vec::new();
    raw_entry(&mut t, "hl_missing", T::Link, "nowhere", b"");
    cases.push((t, "hl_missing"));
    // The escape in a PAX path record, and in a GNU long name, behind a plain name.
    let mut t = Vec::new();
    let rec = "path=../outside/paxesc\n";
    let rec = format!("{} {rec}", rec.len() + 3);
    raw_entry(&mut t, "PaxHeaders/x", T::XHeader, "", rec.as_bytes());
    raw_entry(&mut t, "innocent", T::Regular, "", b"x");
    cases.push((t, "../outside/paxesc"));
    let mut t = Vec::new();
    raw_entry(&mut t, "././@LongLink", T::GNULongName, "", b"../outside/gnuesc\0");
    raw_entry(&mut t, "innocent2", T::Regular, "", b"x");
    cases.push((t, "../outside/gnuesc"));
    // A PAX linkpath to outside for a hard link.
    let mut t = Vec::new();
    let rec = "linkpath=/etc/passwd\n";
    let rec = format!("{} {rec}", rec.len() + 3);
    raw_entry(&mut t, "PaxHeaders/y", T::XHeader, "", rec.as_bytes());
    raw_entry(&mut t, "paxlink", T::Link, "harmless", b"");
    cases.push((t, "paxlink"));
    let cases_n = cases.len();
    for (tar, entry) in cases {
        assert_refused(&root, tar, entry, None);
    }
    // A symlink to outside replaced by a file: the file is written in the layer, the
    // symlink's target stays as it was.
    let mut t = Vec::new();
    raw_entry(&mut t, "s", T::Symlink, &format!("{out}/target"), b"");
    raw_entry(&mut t, "s", T::Regular, "", b"new");
    t.extend_from_slice(&[0u8; 1024]);
    let tf = root.join("replace.tar");
    fs::write(&tf, &t).unwrap();
    let dir = root.join("layer_ok");
    ok(strata(&["apply", s(&tf), s(&dir)]), "symlink replaced by a file");
    assert_eq!(fs::read(root.join("outside/target")).unwrap(), b"keep me");
    assert_eq!(fs::read(dir.join("s")).unwrap(), b"new");
    fs::remove_dir_all(&dir).unwrap();
    fs::remove_file(&tf).unwrap();
    // A device node, as a user.
    let st = Command::new("setpriv").arg("--version").output();
    if rustix::process::geteuid().is_root() && st.is_ok_and(|o| o.status.success()) {
        chmod(&root, 0o777).unwrap();
        let mut t = Vec::new();
        raw_entry(&mut t, "dev/null2", T::Char, "", b"");
        assert_refused(&root, t, "dev/null2", Some(65534));
    } else {
        skip("device node as a user", "not root or no setpriv");
    }
    // A non-empty target is refused, and left alone.
    let full = root.join("full");
    fs::create_dir(&full).unwrap();
    write(&full.join("x"), "x");
    let mut t = Vec::new();
    raw_entry(&mut t, "y", T::Regular, "", b"y");
    t.extend_from_slice(&[0u8; 1024]);
    fs::write(root.join("y.tar"), &t).unwrap();
    let o = strata(&["apply", s(&root.join("y.tar")), s(&full)]);
    assert!(!o.status.success());
    assert_eq!(names_of(&full), strs(&["x"]));
    eprintln!("{cases_n} hostile tars refused");
}

// ---- mount --image ----

/// Unmounts (and waits for the daemon of) a mount made in the background.
struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        force_unmount(&self.0);
    }
}

fn sha256(b: &[u8]) -> String {
    let d = sha2::Sha256::digest(b);
    d.iter().map(|x| format!("{x:02x}")).collect()
}

/// A `docker save` style archive of an image with the given layer tars (bottom first).
fn docker_archive(path: &Path, tag: &str, layers: &[Vec<u8>]) {
    let ids: Vec<String> = layers.iter().map(|l| format!("sha256:{}", sha256(l))).collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": ids},
    })
    .to_string();
    let cfg_name = format!("{}.json", sha256(config.as_bytes()));
    let names: Vec<String> = layers.iter().map(|l| format!("{}/layer.tar", sha256(l))).collect();
    let manifest = serde_json::json!([{"Config": cfg_name, "RepoTags": [tag], "Layers": names}]).to_string();
    let mut b = tar::Builder::new(fs::File::create(path).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data).unwrap();
    };
    for (n, l) in names.iter().zip(layers) {
        add(n, l);
    }
    add(&cfg_name, config.as_bytes());
    add("manifest.json", manifest.as_bytes());
    b.finish().unwrap();
}

#[test]
fn mount_image_from_an_archive_and_reuse_the_store() {
    let f = Fixture::new(0);
    // Two layers made by strata export: a busybox base, then a change.
    let base = f.dir("base");
    fs::create_dir_all(base.join("bin")).unwrap();
    let busybox = Path::new("/bin/busybox").exists();
    if busybox {
        fs::copy("/bin/busybox", base.join("bin/busybox")).unwrap();
        symlink("busybox", base.join("bin/sh")).unwrap();
    }
    fs::create_dir_all(base.join("etc")).unwrap();
    write(&base.join("etc/hello"), "from the base\n");
    write(&base.join("etc/gone"), "deleted by the top layer\n");
    let top = f.dir("top");
    fs::create_dir_all(top.join("etc")).unwrap();
    write(&top.join("etc/hello"), "from the top\n");
    write(&top.join("etc/.wh.gone"), "");
    let l1 = ok(strata(&["export", "--upper", s(&base)]), "export base").stdout;
    let l2 = ok(strata(&["export", "--upper", s(&top)]), "export top").stdout;
    let archive = f.root().join("img.tar");
    docker_archive(&archive, "localhost/test:1", &[l1.clone(), l2]);
    let store = f.dir("store");
    let mnt = f.dir("imnt");
    let _g = Unmount(mnt.clone());
    let o = ok(
        strata(&[
            "mount",
            "--image",
            &format!("{}:test:1", s(&archive)),
            s(&mnt),
            "--store",
            s(&store),
        ]),
        "mount --image",
    );
    assert_eq!(String::from_utf8_lossy(&o.stderr).matches("unpacked layer").count(), 2);
    assert!(is_fuse_mount(&mnt));
    assert_eq!(read_string(&mnt.join("etc/hello")), "from the top\n");
    assert!(!exists(&mnt.join("etc/gone")));
    assert!(
        fs::write(mnt.join("etc/new"), "x").is_err(),
        "a mount without --upper is writable"
    );
    if !busybox || !rustix::process::geteuid().is_root() {
        skip("chroot into the image", "needs root and /bin/busybox (busybox-static)");
    } else {
        let o = Command::new("chroot")
            .arg(&mnt)
            .args(["/bin/sh", "-c", "busybox cat /etc/hello; echo ok"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&o.stdout), "from the top\nok\n", "{o:?}");
    }
    // export of a read-only image mount: refused, it has no changes.
    assert!(!strata(&["export", s(&mnt)]).status.success());
    let ls = ok(strata(&["store", "ls", "--store", s(&store)]), "store ls").stdout;
    let ls = String::from_utf8_lossy(&ls).into_owned();
    assert!(ls.contains(&sha256(&l1)), "store ls: {ls}");
    assert!(ls.contains("localhost/test:1"), "store ls: {ls}");
    // gc keeps what a live mount uses.
    let gc = ok(strata(&["store", "gc", "--store", s(&store)]), "gc").stdout;
    assert!(
        gc.is_empty(),
        "gc removed layers in use: {}",
        String::from_utf8_lossy(&gc)
    );

    // A second mount, writable this time: reuses the store.
    let layer_dir = store.join("sha256").join(sha256(&l1));
    let ino = fs::metadata(&layer_dir).unwrap().ino();
    let mnt2 = f.dir("imnt2");
    let _g2 = Unmount(mnt2.clone());
    let (up, work) = (f.dir("iup"), f.dir("iwork"));
    let o = ok(
        strata(&[
            "mount",
            "--image",
            s(&archive),
            s(&mnt2),
            "--store",
            s(&store),
            "--upper",
            s(&up),
            "--workdir",
            s(&work),
        ]),
        "second mount --image",
    );
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("unpacked"),
        "the store was not reused"
    );
    assert_eq!(fs::metadata(&layer_dir).unwrap().ino(), ino);
    write(&mnt2.join("etc/new"), "written");
    fs::remove_file(mnt2.join("etc/hello")).unwrap();
    assert_eq!(read_string(&up.join("etc/new")), "written");
    // Its changes export as a layer.
    let change = ok(strata(&["export", s(&mnt2)]), "export an image mount").stdout;
    let mut ar = tar::Archive::new(&change[..]);
    let names: Vec<String> = ar
        .entries()
        .unwrap()
        .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
        .collect();
    assert_eq!(names, strs(&["etc", "etc/.wh.hello", "etc/new"]));
    drop(_g2);
    drop(_g);
    // What a crash leaves in the store: a layer half unpacked (its staging dir) and
    // one half removed by gc. Neither is a layer; gc sweeps both.
    let leftovers = [
        store.join("sha256").join(format!(".{}.apply-999999", sha256(b"x"))),
        store.join("sha256").join(format!(".gc-{}", sha256(b"y"))),
    ];
    for d in &leftovers {
        fs::create_dir_all(d.join("etc")).unwrap();
        write(&d.join("etc/hello"), "half");
    }
    let ls = ok(strata(&["store", "ls", "--store", s(&store)]), "store ls").stdout;
    assert!(
        !String::from_utf8_lossy(&ls).contains(&sha256(b"x")),
        "a staging dir listed as a layer"
    );
    // Nothing mounted: gc empties the store.
    let gc = ok(strata(&["store", "gc", "--store", s(&store)]), "gc").stdout;
    let gc = String::from_utf8_lossy(&gc).into_owned();
    assert_eq!(
        gc.lines().filter(|l| l.starts_with("removed sha256:")).count(),
        2,
        "{gc}"
    );
    assert_eq!(
        gc.lines().filter(|l| l.starts_with("removed leftover ")).count(),
        2,
        "{gc}"
    );
    assert!(!layer_dir.exists());
    assert!(leftovers.iter().all(|d| !exists(d)), "gc left: {gc}");
    assert_eq!(
        fs::read_dir(store.join("sha256")).unwrap().count(),
        0,
        "gc left something in the store"
    );
    // A corrupted layer is refused and nothing is kept.
    docker_archive(&archive, "localhost/test:1", std::slice::from_ref(&l1));
    let mut data = fs::read(&archive).unwrap();
    let pos = data.windows(13).position(|w| w == b"from the base").unwrap();
    data[pos] = b'F';
    fs::write(&archive, &data).unwrap();
    let o = strata(&["mount", "--image", s(&archive), s(&mnt), "--store", s(&store)]);
    assert!(!o.status.success(), "a corrupted layer was mounted");
    assert!(String::from_utf8_lossy(&o.stderr).contains("hashes to"), "{o:?}");
    assert!(!is_fuse_mount(&mnt));
    assert!(!layer_dir.exists());
}

/// `mount --image -f` holds the store's shared lock until its mount is live (gc
/// cannot take the layers in between) and lets go of it then: gc runs at once, and
/// keeps the layers the live mount uses.
#[test]
fn mount_image_in_the_foreground_lets_gc_run_once_live() {
    let f = Fixture::new(0);
    let base = f.dir("base");
    write(&base.join("hello"), "from the image\n");
    let layer = ok(strata(&["export", "--upper", s(&base)]), "export").stdout;
    let archive = f.root().join("img.tar");
    docker_archive(&archive, "localhost/fg:1", &[layer]);
    let (store, mnt) = (f.dir("store"), f.dir("fgmnt"));
    let _g = Unmount(mnt.clone());
    let mut child = Command::new(STRATA)
        .args(["mount", "--image", s(&archive), s(&mnt), "--store", s(&store), "-f"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !is_fuse_mount(&mnt) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "mount --image -f exited before its mount was live"
        );
        assert!(std::time::Instant::now() < deadline, "no mount after 20 s");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(read_string(&mnt.join("hello")), "from the image\n");
    // The daemon let go of the lock once live: an exclusive lock is free now.
    let lock = fs::File::open(store.join("lock")).unwrap();
    let free = (0..100).any(|_| {
        let got = rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok();
        if !got {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        got
    });
    assert!(free, "the daemon of a live mount still holds the store's lock");
    drop(lock);
    let gc = ok(strata(&["store", "gc", "--store", s(&store)]), "gc").stdout;
    assert!(
        gc.is_empty(),
        "gc removed a layer of a live mount: {}",
        String::from_utf8_lossy(&gc)
    );
    assert_eq!(read_string(&mnt.join("hello")), "from the image\n");
    force_unmount(&mnt);
    let st = child.wait().unwrap();
    assert!(st.success(), "mount --image -f exited with {st}");
}

/// `podman save` of a busybox image imported offline; skipped without podman.
#[test]
fn mount_image_from_podman_save() {
    if !rustix::process::geteuid().is_root()
        || Command::new("podman").arg("--version").output().is_err()
        || !Path::new("/bin/busybox").exists()
    {
        skip("mount_image_from_podman_save", "needs root, podman and /bin/busybox");
        return;
    }
    let f = Fixture::new(0);
    let root = f.root().to_path_buf();
    let rootfs = f.dir("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    symlink("busybox", rootfs.join("bin/sh")).unwrap();
    fs::create_dir_all(rootfs.join("etc")).unwrap();
    write(&rootfs.join("etc/motd"), "podman image\n");
    let rt = root.join("rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&rt)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let pm = |args: &[&str]| {
        let conf = root.join("storage.conf");
        fs::write(
            &conf,
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{0}/g\"\nrunroot = \"{0}/r\"\n",
                s(&root)
            ),
        )
        .unwrap();
        Command::new("podman")
            .env("CONTAINERS_STORAGE_CONF", &conf)
            .args([
                "--root",
                &format!("{}/g", s(&root)),
                "--runroot",
                &format!("{}/r", s(&root)),
            ])
            .args(["--storage-driver", "vfs", "--tmpdir", &format!("{}/t", s(&root))])
            .args(args)
            .output()
            .unwrap()
    };
    fs::create_dir_all(root.join("t")).unwrap();
    let imp = pm(&["import", s(&rt), "localhost/bb:1"]);
    if !imp.status.success() {
        let err = String::from_utf8_lossy(&imp.stderr).replace('\n', " ");
        skip("mount_image_from_podman_save", &format!("podman import failed: {err}"));
        return;
    }
    let archive = root.join("bb.tar");
    let oci = root.join("bb-oci");
    ok(
        pm(&[
            "save",
            "--format",
            "docker-archive",
            "-o",
            s(&archive),
            "localhost/bb:1",
        ]),
        "podman save",
    );
    ok(
        pm(&["save", "--format", "oci-dir", "-o", s(&oci), "localhost/bb:1"]),
        "podman save oci-dir",
    );
    let _ = pm(&["rmi", "-a", "-f"]);
    let store = f.dir("store");
    for (i, src) in [format!("{}:localhost/bb:1", s(&archive)), s(&oci).to_owned()]
        .iter()
        .enumerate()
    {
        let mnt = f.dir(&format!("pmnt{i}"));
        let _g = Unmount(mnt.clone());
        let o = ok(
            strata(&["mount", "--image", src, s(&mnt), "--store", s(&store)]),
            "mount --image",
        );
        let unpacked = String::from_utf8_lossy(&o.stderr).contains("unpacked layer");
        if i == 1 {
            // The same layer (same diff_id) from the OCI layout: the store has it.
            assert!(!unpacked, "the layer was unpacked again: {o:?}");
        } else {
            assert!(unpacked);
        }
        let o = Command::new("chroot")
            .arg(&mnt)
            .args(["/bin/sh", "-c", "busybox cat /etc/motd"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&o.stdout), "podman image\n", "{o:?}");
    }
    let _ = Command::new("rm").arg("-rf").arg(root.join("g")).status();
}

// ---- the command line ----

#[test]
fn subcommands_have_help_and_mount_forms_keep_working() {
    for sub in [
        &["export"][..],
        &["apply"],
        &["mount", "--image", "x"],
        &["store"],
        &["store", "gc"],
    ] {
        let mut a = sub.to_vec();
        a.push("--help");
        let o = ok(strata(&a), &format!("{sub:?} --help"));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("Usage: strata"), "{sub:?} --help: {out}");
    }
    let o = ok(strata(&["--help"]), "--help");
    assert!(String::from_utf8_lossy(&o.stdout).contains("export"));
    // A mount whose source is named like a subcommand, as mount.fuse3 passes it:
    // an -o with lowerdir= makes it a mount.
    let f = Fixture::new(1);
    f.lower(0).file("a", "a");
    for source in ["export", "apply", "store", "mount"] {
        let o = format!("lowerdir={}", f.lowerdir());
        let m = f.mount_args(&[source, "-f", "-o", &o]);
        assert_eq!(read_string(&m.p("a")), "a");
        assert!(mounts().iter().any(|(p, _)| p == m.path()));
        m.finish();
    }
    // `mount` without --image is a mount too (--lower form).
    let m = f.mount_args(&["mount", "-f", "--lower", s(f.lower(0).path())]);
    assert_eq!(read_string(&m.p("a")), "a");
    m.finish();
    // And a subcommand with a bad argument fails with a message.
    let o = strata(&["apply", "/nonexistent/layer.tar", "/tmp/strata-nonexistent-target"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/layer.tar"));
}

#[test]
fn concurrent_image_mounts_unpack_each_layer_once() {
    let f = Fixture::new(0);
    let mut layers = Vec::new();
    for i in 0..3 {
        let d = f.dir(&format!("src{i}"));
        for j in 0..200 {
            write(&d.join(format!("f{i}-{j}")), format!("{i}/{j}"));
        }
        layers.push(ok(strata(&["export", "--upper", s(&d)]), "export").stdout);
    }
    let archive = f.root().join("img.tar");
    docker_archive(&archive, "localhost/c:1", &layers);
    let store = f.root().join("store");
    let runs: Vec<_> = (0..4)
        .map(|_| {
            Command::new(STRATA)
                .args([
                    "mount",
                    "--image",
                    s(&archive),
                    "/nonexistent",
                    "--no-mount",
                    "--store",
                    s(&store),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = runs.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let first = outs[0].stdout.clone();
    for o in outs {
        let o = ok(o, "concurrent mount --image --no-mount");
        assert_eq!(o.stdout, first, "different layer dirs");
    }
    let dirs = names_of(&store.join("sha256"));
    assert_eq!(dirs.len(), 3, "{dirs:?}");
    for (i, l) in layers.iter().enumerate() {
        let d = store.join("sha256").join(sha256(l));
        assert_eq!(names_of(&d).len(), 200, "layer {i}");
    }
}

/// The upper of the kernel's overlayfs (metacopy=on): metadata-only copies, one
/// renamed (a redirect), a char 0/0 whiteout; the export has the data from the lower.
#[test]
fn export_of_a_kernel_overlayfs_upper() {
    if !rustix::process::geteuid().is_root() {
        skip("export_of_a_kernel_overlayfs_upper", "needs root");
        return;
    }
    let f = Fixture::new(1);
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 13 % 253) as u8).collect();
    let small: Vec<u8> = (0..300_000u32).map(|i| (i * 11 % 251) as u8).collect();
    f.lower(0).file("big", &big).file("d/x", &small);
    let (l, u, w) = (
        f.lower(0).path().to_path_buf(),
        f.upper().path().to_path_buf(),
        f.work.clone(),
    );
    let mnt = f.dir("kmnt");
    let o = format!(
        "lowerdir={},upperdir={},workdir={},metacopy=on,redirect_dir=on",
        s(&l),
        s(&u),
        s(&w)
    );
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &o])
        .arg(&mnt)
        .status()
        .unwrap();
    if !st.success() {
        skip(
            "export_of_a_kernel_overlayfs_upper",
            "mount -t overlay with metacopy=on failed",
        );
        return;
    }
    let g = Unmount(mnt.clone());
    lchown(&mnt.join("big"), 7, 7).unwrap();
    fs::rename(mnt.join("d/x"), mnt.join("d/y")).unwrap();
    lchown(&mnt.join("d/y"), 8, 8).unwrap();
    drop(g);
    assert!(xattrs(&u.join("big")).contains_key("trusted.overlay.metacopy"));
    let tar = f.root().join("k.tar");
    ok(
        strata(&["export", "--upper", s(&u), "--lower", s(&l), "-o", s(&tar)]),
        "export",
    );
    let new = f.root().join("new");
    ok(strata(&["apply", s(&tar), s(&new)]), "apply");
    assert!(read(&new.join("big")) == big, "big: wrong data");
    assert!(read(&new.join("d/y")) == small, "d/y: wrong data");
    assert_eq!(fs::metadata(new.join("d/y")).unwrap().uid(), 8);
    assert_eq!(names_of(&new.join("d")), strs(&[".wh.x", "y"]));
    // Without the lower, a metadata-only copy is an error naming it.
    let o = strata(&["export", "--upper", s(&u), "-o", s(&f.root().join("k2.tar"))]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("big"), "{o:?}");
    assert!(!exists(&f.root().join("k2.tar")), "a failed export left its file");
    assert_eq!(
        names_of(f.root()).iter().filter(|n| n.contains(".tmp-")).count(),
        0,
        "a failed export left a temporary file"
    );
}
