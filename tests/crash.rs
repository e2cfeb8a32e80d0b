//! Crash safety: the daemon is SIGKILLed at random moments of a long copy-up, of a
//! directory rename and of a run of unlinks (whiteouts); the dead mount is lazily
//! detached and the stack mounted afresh. The view must then be the old one or the
//! new one, never a partial file, the staging dir must be empty, and nothing in the
//! upper may refer to a file that does not exist.
//!
//! Kill moments are random but seeded: every test prints `STRATA_CRASH_SEED=N`; set
//! it to replay a run.

mod stack;

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stack::*;

// ---- helpers ----

/// Empties the upper layer and the work dir (the stack is not mounted).
fn reset_writable(s: &Stack) {
    for d in [&s.upper, &s.work] {
        fs::remove_dir_all(d).unwrap();
        fs::create_dir(d).unwrap();
    }
}

/// What a new mount must have left in the work dir: an empty `staging/`.
fn assert_staging_empty(s: &Stack) {
    let staging = s.work.join("staging");
    let left: Vec<_> = fs::read_dir(&staging)
        .unwrap_or_else(|e| panic!("{}: {e}", staging.display()))
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "staging not cleaned by the new mount: {left:?}");
}

/// Nothing in the upper refers to a missing file: every metadata-only copy names a
/// lower file that exists, and every entry of the work dir's index is a regular file.
fn assert_upper_refs_ok(s: &Stack) {
    for e in walkdir::WalkDir::new(&s.upper).follow_links(false) {
        let e = e.unwrap();
        if !e.file_type().is_file() {
            continue;
        }
        if getxattr(e.path(), "trusted.overlay.metacopy").is_ok() {
            // The kernel overlayfs' form: data at the redirect's path (or the file's own)
            // in some lower layer.
            let rel = match getxattr(e.path(), "trusted.overlay.redirect") {
                Ok(r) => PathBuf::from(std::ffi::OsStr::from_bytes(r.strip_prefix(b"/").unwrap_or(&r))),
                Err(_) => e.path().strip_prefix(&s.upper).unwrap().to_path_buf(),
            };
            assert!(
                s.lowers
                    .iter()
                    .any(|l| fs::symlink_metadata(l.join(&rel)).is_ok_and(|m| m.is_file())),
                "{} is a metadata-only copy of {}, which is in no lower layer",
                e.path().display(),
                rel.display()
            );
            continue;
        }
        let Ok(v) = getxattr(e.path(), "trusted.strata.metacopy") else {
            continue;
        };
        let mut it = v.splitn(2, |b| *b == 0);
        let layer: usize = std::str::from_utf8(it.next().unwrap()).unwrap().parse().unwrap();
        let rel = Path::new(std::ffi::OsStr::from_bytes(it.next().unwrap_or_default()));
        // Layer indices count the upper as 0.
        let lower = s.lowers[layer - 1].join(rel);
        assert!(
            fs::symlink_metadata(&lower).is_ok_and(|m| m.is_file()),
            "{} is a metadata-only copy of {}, which does not exist",
            e.path().display(),
            lower.display()
        );
    }
    if let Ok(rd) = fs::read_dir(s.work.join("index")) {
        for e in rd {
            let e = e.unwrap();
            assert!(e.file_type().unwrap().is_file(), "index entry {:?}", e.file_name());
        }
    }
}

// ---- copy-up of a large file ----

const BIG: usize = 256 << 20;
const BLOCK: usize = 4096;
const CHUNK: usize = 1 << 20;

/// The lower file's content at [off, off + buf.len()): 4 KiB blocks, each starting with
/// its own index (so a misplaced or missing block shows) followed by a fixed pattern.
fn fill_pattern(buf: &mut [u8], off: usize) {
    assert_eq!(off % BLOCK, 0);
    let mut tmpl = [0u8; BLOCK];
    for (i, b) in tmpl.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(7);
    }
    for (k, blk) in buf.chunks_mut(BLOCK).enumerate() {
        blk.copy_from_slice(&tmpl[..blk.len()]);
        let idx = ((off / BLOCK + k) as u64).to_le_bytes();
        let n = blk.len().min(8);
        blk[..n].copy_from_slice(&idx[..n]);
    }
}

fn make_big(p: &Path) {
    let mut f = File::create(p).unwrap();
    let mut buf = vec![0u8; CHUNK];
    for off in (0..BIG).step_by(CHUNK) {
        fill_pattern(&mut buf, off);
        std::io::Write::write_all(&mut f, &buf).unwrap();
    }
    f.sync_all().unwrap();
}

/// The write each round makes: `MARK.len()` bytes at an unaligned offset.
const MARK: &[u8] = b"--- written through the mount after the copy-up ---";

#[derive(Debug, PartialEq, Clone, Copy)]
enum BigContent {
    Lower,
    WithMark,
}

/// Reads a whole copy of the big file and says which of the two allowed contents it
/// has; panics at the first byte that is neither (a partial copy).
fn classify_big(p: &Path, mark_at: usize) -> BigContent {
    let mut f = File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let len = f.metadata().unwrap().len() as usize;
    assert_eq!(len, BIG, "{}: partial copy ({len} bytes of {BIG})", p.display());
    let mut got = vec![0u8; CHUNK];
    let mut want = vec![0u8; CHUNK];
    // For the chunks the mark overlaps: whether each had it.
    let mut marked = Vec::new();
    for off in (0..BIG).step_by(CHUNK) {
        f.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("{} at {off}: {e}", p.display()));
        fill_pattern(&mut want, off);
        let (lo, hi) = (mark_at.max(off), (mark_at + MARK.len()).min(off + CHUNK));
        if lo < hi {
            if got == want {
                marked.push(false);
                continue;
            }
            want[lo - off..hi - off].copy_from_slice(&MARK[lo - mark_at..hi - mark_at]);
            marked.push(true);
        }
        if got != want {
            let first = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
            panic!(
                "{}: byte {} is neither the lower content nor the write (a partial copy)",
                p.display(),
                off + first
            );
        }
    }
    assert!(
        marked.iter().all(|m| *m == marked[0]),
        "{}: only part of the write is there",
        p.display()
    );
    if marked[0] {
        BigContent::WithMark
    } else {
        BigContent::Lower
    }
}

/// How far the writer got before the kill.
const OPENING: usize = 0;
const OPENED: usize = 1;
const WRITTEN: usize = 2;
const CLOSED: usize = 3;

/// Opens the big file for writing (the copy-up), writes the mark, closes. Stops at the
/// first error (ENOTCONN once the daemon is dead).
fn writer(path: PathBuf, mark_at: usize, stage: Arc<AtomicUsize>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(f) = OpenOptions::new().write(true).open(&path) else {
            return;
        };
        stage.store(OPENED, Ordering::SeqCst);
        if f.write_all_at(MARK, mark_at as u64).is_err() {
            return;
        }
        stage.store(WRITTEN, Ordering::SeqCst);
        drop(f);
        stage.store(CLOSED, Ordering::SeqCst);
    })
}

/// The size of the largest file in the staging dir.
fn staged_bytes(s: &Stack) -> u64 {
    fs::read_dir(s.work.join("staging"))
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

#[test]
fn sigkill_during_large_copy_up_leaves_old_or_complete_file() {
    let mut rng = Rng::from_env("STRATA_CRASH_SEED");
    let s = Stack::new(1);
    make_big(&s.l(0, "big"));
    let lower_before = fs::metadata(s.l(0, "big")).unwrap();

    // Calibration: how long the open (the copy-up) takes when nothing is killed.
    let copy_time;
    {
        let m = s.mount();
        let stage = Arc::new(AtomicUsize::new(OPENING));
        let t0 = Instant::now();
        writer(s.m("big"), 12345, stage.clone()).join().unwrap();
        copy_time = t0.elapsed();
        assert_eq!(stage.load(Ordering::SeqCst), CLOSED);
        assert_eq!(classify_big(&s.m("big"), 12345), BigContent::WithMark);
        m.finish();
    }
    eprintln!("uninterrupted copy-up and write: {copy_time:?}");

    let rounds = 12;
    let mut outcomes = Vec::new();
    for round in 0..rounds {
        reset_writable(&s);
        let mark_at = rng.below((BIG - MARK.len()) as u64) as usize;
        let m = s.mount();
        let stage = Arc::new(AtomicUsize::new(OPENING));
        let started = Instant::now();
        let w = writer(s.m("big"), mark_at, stage.clone());
        // Even rounds: a random moment in the copy-up's usual duration (and a bit after).
        // Odd rounds: once the staged copy has reached a random part of the file, so the
        // kill surely falls in the middle of the copy. (A write-only open makes a
        // metadata-only copy: the data is staged during the write, so the wait lasts
        // until the write is acknowledged, not just the open.)
        let staged_at_kill;
        if round % 2 == 0 {
            let window = copy_time.as_micros() as u64 * 12 / 10;
            std::thread::sleep(Duration::from_micros(rng.below(window.max(1))));
            staged_at_kill = staged_bytes(&s);
        } else {
            let target = 1 + rng.below(BIG as u64 - 1);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let n = staged_bytes(&s);
                if n >= target || stage.load(Ordering::SeqCst) >= WRITTEN || Instant::now() > deadline {
                    staged_at_kill = n;
                    break;
                }
                std::hint::spin_loop();
            }
        }
        let at = started.elapsed();
        m.kill();
        w.join().unwrap();
        let reached = stage.load(Ordering::SeqCst);

        // Before anything else runs: the upper holds no partial file.
        let up = s.u("big");
        let in_upper = exists(&up);
        // A metadata-only copy holds no data of its own: its data is the lower file's.
        if in_upper
            && getxattr(&up, "trusted.strata.metacopy").is_err()
            && getxattr(&up, "trusted.overlay.metacopy").is_err()
        {
            classify_big(&up, mark_at);
        }
        assert_upper_refs_ok(&s);

        let m = s.mount();
        assert_staging_empty(&s);
        let got = classify_big(&s.m("big"), mark_at);
        if reached >= WRITTEN {
            assert_eq!(
                got,
                BigContent::WithMark,
                "round {round}: an acknowledged write was lost"
            );
        }
        assert_upper_refs_ok(&s);
        m.finish();
        let l = fs::metadata(s.l(0, "big")).unwrap();
        assert_eq!(
            (l.len(), l.modified().unwrap()),
            (lower_before.len(), lower_before.modified().unwrap()),
            "the lower file changed"
        );
        let line = format!(
            "round {round}: killed after {at:?}, {staged_at_kill} bytes staged, writer stage {reached}, upper copy {in_upper}, view {got:?}"
        );
        eprintln!("{line}");
        outcomes.push((staged_at_kill, got));
    }
    assert!(
        outcomes.iter().any(|(n, _)| *n > 0 && (*n as usize) < BIG),
        "no kill fell in the middle of a copy: {outcomes:?}"
    );
    assert_eq!(
        classify_big(&s.l(0, "big"), 0),
        BigContent::Lower,
        "the lower file changed"
    );
}

// ---- directory rename ----

/// A lower directory tree: `d/s{i}/f{j}` and `d/s{i}/t/g{j}`, each file naming itself.
fn make_tree(root: &Path, dirs: usize, files: usize) -> Vec<String> {
    let mut rels = Vec::new();
    for i in 0..dirs {
        for j in 0..files {
            rels.push(format!("s{i}/f{j}"));
        }
        for j in 0..files / 4 {
            rels.push(format!("s{i}/t/g{j}"));
        }
    }
    for r in &rels {
        write(root.join(r), &format!("content of {r}"));
    }
    rels
}

/// The whole tree is visible under `top` in the mount, with every file's content.
fn tree_complete(s: &Stack, top: &str, rels: &[String]) -> Result<(), String> {
    for r in rels {
        let p = s.m(&format!("{top}/{r}"));
        match fs::read_to_string(&p) {
            Ok(c) if c == format!("content of {r}") => {}
            Ok(c) => return Err(format!("{}: wrong content {c:?}", p.display())),
            Err(e) => return Err(format!("{}: {e}", p.display())),
        }
    }
    // Nothing more than the tree either.
    let mut listed = Vec::new();
    for e in walkdir::WalkDir::new(s.m(top)).min_depth(1) {
        let e = e.map_err(|e| e.to_string())?;
        if e.file_type().is_file() {
            listed.push(e.path().strip_prefix(s.m(top)).unwrap().display().to_string());
        }
    }
    listed.sort();
    let mut want = rels.to_vec();
    want.sort();
    if listed != want {
        return Err(format!(
            "{top}: listing has {} files, want {}",
            listed.len(),
            want.len()
        ));
    }
    Ok(())
}

#[test]
fn sigkill_during_directory_rename_shows_old_or_new_tree() {
    let mut rng = Rng::from_env("STRATA_CRASH_SEED");
    let s = Stack::new(1);
    let rels = make_tree(&s.l(0, "d"), 30, 40);
    write(s.l(0, "other"), "x");
    // Odd rounds rename over this empty lower directory instead of to a new name.
    fs::create_dir(s.l(0, "empty")).unwrap();
    let lower_before = snapshot(s.lower(0));

    let rename_time;
    {
        let m = s.mount();
        let t0 = Instant::now();
        fs::rename(s.m("d"), s.m("e")).unwrap();
        rename_time = t0.elapsed();
        assert!(!exists(s.m("d")));
        tree_complete(&s, "e", &rels).unwrap();
        m.finish();
    }
    eprintln!(
        "uninterrupted rename of a tree of {} files: {rename_time:?}",
        rels.len()
    );

    let mut both_seen = Vec::new();
    for round in 0..10 {
        reset_writable(&s);
        let to = if round % 2 == 0 { "e" } else { "empty" };
        let m = s.mount();
        let done = Arc::new(AtomicUsize::new(0));
        let (src, dst, d2) = (s.m("d"), s.m(to), done.clone());
        let t = std::thread::spawn(move || {
            if fs::rename(src, dst).is_ok() {
                d2.store(1, Ordering::SeqCst);
            }
        });
        let delay = Duration::from_micros(rng.below(rename_time.as_micros() as u64 * 11 / 10 + 1));
        std::thread::sleep(delay);
        m.kill();
        t.join().unwrap();
        let acked = done.load(Ordering::SeqCst) == 1;
        assert_upper_refs_ok(&s);
        let upper_names = names(&s.upper);

        let m = s.mount();
        assert_staging_empty(&s);
        let (old, new) = (exists(s.m("d")), tree_complete(&s, to, &rels).is_ok());
        eprintln!(
            "round {round}: d -> {to} killed after {delay:?}, rename acknowledged {acked}, old name {old}, new name {new}, upper {upper_names:?}"
        );
        match (old, new) {
            (true, false) => {
                assert!(!acked, "round {round}: an acknowledged rename was undone");
                tree_complete(&s, "d", &rels).unwrap();
                if to == "empty" {
                    assert_eq!(names(s.m("empty")), Vec::<String>::new(), "round {round}");
                } else {
                    assert!(!exists(s.m(to)), "round {round}");
                }
                // What the crash left must not get in the way of doing it again.
                fs::rename(s.m("d"), s.m(to)).unwrap();
                tree_complete(&s, to, &rels).unwrap();
                assert!(!exists(s.m("d")));
            }
            (false, true) => {}
            (true, true) => {
                both_seen.push(round);
                eprintln!(
                    "round {round}: BOTH names visible; d complete: {:?}",
                    tree_complete(&s, "d", &rels),
                );
            }
            (false, false) => panic!(
                "round {round}: the tree is under neither name ({to}: {:?})",
                tree_complete(&s, to, &rels)
            ),
        }
        assert_eq!(read(s.m("other")), "x");
        m.finish();
        assert_upper_refs_ok(&s);
    }
    assert_eq!(snapshot(s.lower(0)), lower_before, "the lower layer changed");
    assert!(
        both_seen.is_empty(),
        "rounds {both_seen:?} showed the tree under both names"
    );
}

/// The one moment a kill can hardly be timed to hit: the whiteout for the old name is
/// written and the upper copy not yet renamed. The state is rebuilt exactly from a
/// finished rename (upper `e` moved back to `d`, `.wh.d` kept) while unmounted.
#[test]
fn state_between_whiteout_and_rename_shows_the_old_tree() {
    let s = Stack::new(1);
    let rels = make_tree(&s.l(0, "d"), 3, 10);
    {
        let _m = s.mount();
        fs::rename(s.m("d"), s.m("e")).unwrap();
    }
    assert!(exists(s.u(".wh.d")));
    fs::rename(s.u("e"), s.u("d")).unwrap();
    let m = s.mount();
    assert_eq!(names(&s.mnt), ["d"]);
    tree_complete(&s, "d", &rels).unwrap();
    fs::rename(s.m("d"), s.m("e")).unwrap();
    assert_eq!(names(&s.mnt), ["e"]);
    tree_complete(&s, "e", &rels).unwrap();
    m.finish();
    let m = s.mount();
    assert_eq!(names(&s.mnt), ["e"]);
    tree_complete(&s, "e", &rels).unwrap();
    m.finish();
}

// ---- unlinks leaving whiteouts ----

#[test]
fn sigkill_during_unlinks_shows_each_file_or_its_whiteout() {
    let mut rng = Rng::from_env("STRATA_CRASH_SEED");
    let s = Stack::new(1);
    // Files in nested lower dirs (each first unlink copies the parent chain up); every
    // third one also has an upper copy over it (whiteout, then unlink of the copy).
    let n = 600;
    let rels: Vec<String> = (0..n).map(|i| format!("a{}/b{}/f{i}", i % 7, i % 3)).collect();
    for r in &rels {
        write(s.l(0, r), &format!("lower {r}"));
    }
    let lower_before = snapshot(s.lower(0));
    let prepare_upper = |s: &Stack| {
        for (i, r) in rels.iter().enumerate() {
            if i % 3 == 0 {
                write(s.u(r), &format!("upper {r}"));
            }
        }
    };
    let content = |i: usize| {
        if i.is_multiple_of(3) {
            format!("upper {}", rels[i])
        } else {
            format!("lower {}", rels[i])
        }
    };

    let unlinker = |s: &Stack, done: Arc<AtomicUsize>| {
        let paths: Vec<PathBuf> = rels.iter().map(|r| s.m(r)).collect();
        std::thread::spawn(move || {
            for p in paths {
                if fs::remove_file(p).is_err() {
                    return;
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
    };

    prepare_upper(&s);
    let total;
    {
        let m = s.mount();
        let done = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        unlinker(&s, done.clone()).join().unwrap();
        total = t0.elapsed();
        assert_eq!(done.load(Ordering::SeqCst), n);
        let dirs: Vec<String> = (0..7).map(|i| format!("a{i}")).collect();
        assert_eq!(names(&s.mnt), dirs);
        m.finish();
    }
    eprintln!("uninterrupted: {n} unlinks in {total:?}");

    for round in 0..8 {
        reset_writable(&s);
        prepare_upper(&s);
        let m = s.mount();
        let done = Arc::new(AtomicUsize::new(0));
        let t = unlinker(&s, done.clone());
        let delay = Duration::from_micros(rng.below(total.as_micros() as u64 * 9 / 10 + 1));
        std::thread::sleep(delay);
        m.kill();
        t.join().unwrap();
        let acked = done.load(Ordering::SeqCst);
        assert_upper_refs_ok(&s);

        let m = s.mount();
        assert_staging_empty(&s);
        for (i, r) in rels.iter().enumerate() {
            let p = s.m(r);
            let got = fs::read_to_string(&p).ok();
            let listed = p.parent().is_some_and(|d| {
                fs::read_dir(d).is_ok_and(|rd| {
                    rd.filter_map(|e| e.ok())
                        .any(|e| e.file_name() == p.file_name().unwrap())
                })
            });
            assert_eq!(got.is_some(), listed, "round {round}: {r}: lookup and listing disagree");
            match i.cmp(&acked) {
                std::cmp::Ordering::Less => assert_eq!(got, None, "round {round}: {r} was unlinked, yet is back"),
                std::cmp::Ordering::Equal => {
                    // In flight at the kill: either view, whole.
                    if let Some(c) = got {
                        assert_eq!(c, content(i), "round {round}: {r}");
                    }
                }
                std::cmp::Ordering::Greater => {
                    assert_eq!(
                        got.as_deref(),
                        Some(content(i).as_str()),
                        "round {round}: {r} was never unlinked"
                    )
                }
            }
        }
        eprintln!("round {round}: killed after {delay:?}, {acked} of {n} unlinks acknowledged");
        m.finish();
        assert_upper_refs_ok(&s);
    }
    assert_eq!(snapshot(s.lower(0)), lower_before, "the lower layer changed");
}
