//! Layer fixtures: built once under `<work dir>/fixtures`, reused by later runs.
//!
//! Every fixture directory is named after its format version and its sizes,
//! and is built in `NAME.tmp` then renamed: a directory with the final name is
//! complete. Runs at different scales therefore keep separate fixtures.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::config::Config;
use crate::util::{self, cstr, fmt_duration, Ctx, Res, Rng};

const VERSION: &str = "v1";

/// Everything the fixtures and workloads size themselves from.
pub struct Params {
    /// (tag, bytes) of the copy-up files: nominal 4 KiB, 1 MiB, 64 MiB, 512 MiB.
    pub copy_sizes: Vec<(&'static str, u64)>,
    pub depths: [usize; 3],
    pub meta_layers: u64,
    pub meta_per_layer: u64,
    pub bigdir_entries: u64,
    pub data_size: u64,
    pub rand_reads: u64,
    pub untar_files: u64,
    pub create_files: u64,
    pub src_files: u64,
    /// 4 KiB write(2) calls of the small-writes row.
    pub small_writes: u64,
}

impl Params {
    pub fn new(cfg: &Config) -> Params {
        Params {
            copy_sizes: vec![
                ("4k", cfg.size(4 << 10)),
                ("1m", cfg.size(1 << 20)),
                ("64m", cfg.size(64 << 20)),
                ("512m", cfg.size(512 << 20)),
            ],
            depths: [1, 20, 100],
            meta_layers: 5,
            meta_per_layer: cfg.count(10_000, 200),
            bigdir_entries: cfg.count(10_000, 300),
            data_size: cfg.size(1 << 30),
            rand_reads: cfg.count(8192, 256),
            untar_files: cfg.count(20_000, 200),
            create_files: cfg.count(10_000, 200),
            src_files: cfg.count(3000, 100),
            small_writes: cfg.count(50_000, 500),
        }
    }

    /// Files in layer `i` of the metadata tree that the top layer whites out.
    fn meta_whiteout(k: u64) -> bool {
        k % 40 == 1
    }

    /// Files visible in the merged metadata tree.
    pub fn meta_visible(&self) -> u64 {
        let wh = (0..self.meta_per_layer).filter(|&k| Self::meta_whiteout(k)).count() as u64;
        self.meta_layers * self.meta_per_layer - wh
    }

    pub fn meta_leaves(&self) -> u64 {
        (self.meta_per_layer / 50).max(10)
    }
}

/// Which layer stack a workload mounts.
#[derive(Clone, Copy, Debug)]
pub enum Fx {
    /// The copy-up files under `data/` at the bottom of a stack this deep.
    CopyUp(usize),
    /// ~50k files in 200 directories, each merged from 5 layers.
    Meta,
    /// One 10k-entry directory `big/` merged from 3 layers.
    BigDir,
    /// `data/big.bin`, 1 GiB.
    Data,
    /// A small base layer; `dir` holds the tarball to unpack.
    Untar,
    /// A small base layer.
    Base,
    /// A git work tree `src/` in a 3-layer stack.
    Src,
}

/// A mountable stack: lower layers, top first, and the fixture's directory.
pub struct Fixture {
    pub lowers: Vec<PathBuf>,
    pub dir: PathBuf,
}

pub struct Fixtures {
    root: PathBuf,
    pub p: Params,
}

fn mkdirs(p: &Path) -> Res<()> {
    fs::create_dir_all(p).ctx(|| format!("creating {}", p.display()))
}

fn write_file(p: &Path, data: &[u8]) -> Res<()> {
    fs::write(p, data).ctx(|| format!("writing {}", p.display()))
}

/// A file of `size` bytes of pseudo-random data (no holes).
fn write_random(p: &Path, size: u64, seed: u64) -> Res<()> {
    let mut f = File::create(p).ctx(|| format!("creating {}", p.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    Rng::new(seed).fill(&mut buf);
    let mut left = size;
    let mut chunk = 0u64;
    while left > 0 {
        buf[..8].copy_from_slice(&chunk.to_le_bytes());
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).ctx(|| format!("writing {}", p.display()))?;
        left -= n as u64;
        chunk += 1;
        util::check_interrupted()?;
    }
    Ok(())
}

/// An overlayfs whiteout: a character device 0/0, understood by every system
/// under test.
fn whiteout(p: &Path) -> Res<()> {
    let c = cstr(p);
    // SAFETY: valid NUL-terminated path.
    let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o644, libc::makedev(0, 0)) };
    if r == 0 {
        Ok(())
    } else {
        Err(format!(
            "mknod whiteout {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        ))
    }
}

/// Read a file once, so its data is in the page cache.
pub fn read_all(p: &Path) -> Res<u64> {
    let mut f = File::open(p).ctx(|| format!("opening {}", p.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).ctx(|| format!("reading {}", p.display()))?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

/// Pseudo source code, `lines` lines.
fn source_text(rng: &mut Rng, lines: u64, name: &str) -> String {
    const WORDS: [&str; 12] = [
        "buffer", "index", "count", "layer", "inode", "entry", "offset", "length", "state", "cache", "node", "path",
    ];
    let mut s = format!("/* {name}: generated for the strata benchmarks */\n#include \"common.h\"\n\n");
    for i in 0..lines {
        let a = WORDS[rng.below(12) as usize];
        let b = WORDS[rng.below(12) as usize];
        match i % 6 {
            0 => s.push_str(&format!("static int {a}_{b}_{i}(struct {a} *{b}, int n)\n{{\n")),
            1 => s.push_str(&format!("\tint {a} = {b}->{a} + n * {};\n", rng.below(1000))),
            2 => s.push_str(&format!(
                "\tif ({a} > {}) return -{};\n",
                rng.below(4096),
                rng.below(40)
            )),
            3 => s.push_str(&format!("\t{b}->{a} = {a} ^ 0x{:x};\n", rng.next_u64() & 0xffff)),
            4 => s.push_str(&format!("\treturn {a};\n")),
            _ => s.push_str("}\n\n"),
        }
    }
    s
}

impl Fixtures {
    pub fn new(cfg: &Config) -> Res<Fixtures> {
        let root = cfg.work_dir.join("fixtures");
        mkdirs(&root)?;
        Ok(Fixtures {
            root,
            p: Params::new(cfg),
        })
    }

    /// `root/name`, built by `build` into `name.tmp` first when missing.
    fn ensure(&self, name: &str, build: impl FnOnce(&Path) -> Res<()>) -> Res<PathBuf> {
        let dir = self.root.join(name);
        if dir.is_dir() {
            return Ok(dir);
        }
        let tmp = self.root.join(format!("{name}.tmp"));
        util::remove_tree(&tmp)?;
        mkdirs(&tmp)?;
        eprintln!("building fixture {name} ...");
        let t = Instant::now();
        build(&tmp).map_err(|e| format!("building fixture {name}: {e}"))?;
        util::sync_all();
        fs::rename(&tmp, &dir).ctx(|| format!("renaming {}", tmp.display()))?;
        eprintln!("  fixture {name} built in {}", fmt_duration(t.elapsed()));
        Ok(dir)
    }

    pub fn get(&self, fx: Fx) -> Res<Fixture> {
        match fx {
            Fx::CopyUp(depth) => {
                let bottom = self.copyup_bottom()?;
                let fill = self.fillers()?;
                let mut lowers: Vec<PathBuf> = (0..depth - 1).map(|i| fill.join(format!("{i:02}"))).collect();
                lowers.push(bottom.join("layer"));
                Ok(Fixture { lowers, dir: bottom })
            }
            Fx::Meta => {
                let dir = self.meta()?;
                let lowers = (0..self.p.meta_layers).map(|i| dir.join(format!("l{i}"))).collect();
                Ok(Fixture { lowers, dir })
            }
            Fx::BigDir => {
                let dir = self.bigdir()?;
                let lowers = (0..3).map(|i| dir.join(format!("l{i}"))).collect();
                Ok(Fixture { lowers, dir })
            }
            Fx::Data => {
                let dir = self.data()?;
                Ok(Fixture {
                    lowers: vec![dir.join("layer")],
                    dir,
                })
            }
            Fx::Untar => {
                let dir = self.untar()?;
                Ok(Fixture {
                    lowers: vec![self.fillers()?.join("00")],
                    dir,
                })
            }
            Fx::Base => {
                let fill = self.fillers()?;
                Ok(Fixture {
                    lowers: vec![fill.join("00")],
                    dir: fill,
                })
            }
            Fx::Src => {
                let dir = self.src()?;
                let lowers = ["top", "mid", "base"].iter().map(|l| dir.join(l)).collect();
                Ok(Fixture { lowers, dir })
            }
        }
    }

    /// The bottom layer of the copy-up stacks: `layer/data/f-<tag>`.
    fn copyup_bottom(&self) -> Res<PathBuf> {
        let tags: Vec<String> = self.p.copy_sizes.iter().map(|(_, s)| s.to_string()).collect();
        let name = format!("{VERSION}-copyup-{}", tags.join("-"));
        let sizes = self.p.copy_sizes.clone();
        self.ensure(&name, |d| {
            let data = d.join("layer/data");
            mkdirs(&data)?;
            for (i, (tag, size)) in sizes.iter().enumerate() {
                write_random(&data.join(format!("f-{tag}")), *size, 100 + i as u64)?;
            }
            write_file(&d.join("layer/data/README"), b"copy-up fixture\n")
        })
    }

    /// 99 small layers stacked above the copy-up files. Each has `data/`, so
    /// the directory holding the files is merged from every layer.
    fn fillers(&self) -> Res<PathBuf> {
        self.ensure(&format!("{VERSION}-fill-99"), |d| {
            for i in 0..99 {
                let l = d.join(format!("{i:02}"));
                mkdirs(&l.join("data"))?;
                mkdirs(&l.join("etc"))?;
                write_file(
                    &l.join(format!("data/fill-{i:02}.txt")),
                    format!("filler layer {i}\n").as_bytes(),
                )?;
                write_file(&l.join(format!("etc/conf-{i:02}")), b"key=value\n")?;
            }
            Ok(())
        })
    }

    /// 5 layers × N files spread over the same leaf directories; the top
    /// layer also shadows 5% of layer 4's files and whites out 2.5% of layer 3's.
    fn meta(&self) -> Res<PathBuf> {
        let (layers, n, leaves) = (self.p.meta_layers, self.p.meta_per_layer, self.p.meta_leaves());
        self.ensure(&format!("{VERSION}-meta-{layers}x{n}"), |d| {
            let leaf = |k: u64| format!("tree/d{:02}/e{:02}", (k % leaves) / 10, k % 10);
            for i in 0..layers {
                let l = d.join(format!("l{i}"));
                for j in 0..leaves {
                    mkdirs(&l.join(leaf(j)))?;
                }
                for k in 0..n {
                    let p = l.join(leaf(k)).join(format!("f{i}_{k:05}"));
                    write_file(&p, format!("layer {i} file {k}\n").as_bytes())?;
                }
                util::check_interrupted()?;
            }
            let top = d.join("l0");
            for k in 0..n {
                if k % 20 == 0 {
                    let p = top.join(leaf(k)).join(format!("f{}_{k:05}", layers - 1));
                    write_file(&p, b"shadowing copy in the top layer\n")?;
                }
                if layers > 3 && Params::meta_whiteout(k) {
                    whiteout(&top.join(leaf(k)).join(format!("f3_{k:05}")))?;
                }
            }
            Ok(())
        })
    }

    /// `big/` with N entries, entry i in layer i % 3; layer 0 also shadows 5%.
    fn bigdir(&self) -> Res<PathBuf> {
        let n = self.p.bigdir_entries;
        self.ensure(&format!("{VERSION}-bigdir-{n}"), |d| {
            for l in 0..3 {
                mkdirs(&d.join(format!("l{l}/big")))?;
            }
            for i in 0..n {
                let l = i % 3;
                File::create(d.join(format!("l{l}/big/entry-{i:06}"))).ctx(|| "creating entry".into())?;
                if l == 2 && i % 20 == 2 {
                    File::create(d.join(format!("l0/big/entry-{i:06}"))).ctx(|| "creating entry".into())?;
                }
            }
            Ok(())
        })
    }

    fn data(&self) -> Res<PathBuf> {
        let size = self.p.data_size;
        self.ensure(&format!("{VERSION}-data-{size}"), |d| {
            mkdirs(&d.join("layer/data"))?;
            write_random(&d.join("layer/data/big.bin"), size, 7)
        })
    }

    /// `small.tar`: N files of 0–4 KiB in directories of 100.
    fn untar(&self) -> Res<PathBuf> {
        let n = self.p.untar_files;
        self.ensure(&format!("{VERSION}-untar-{n}"), |d| {
            let stage = d.join("stage");
            let mut rng = Rng::new(11);
            let mut buf = vec![0u8; 4096];
            rng.fill(&mut buf);
            for k in 0..n {
                let dir = stage.join(format!("small/d{:03}/e{:02}", k / 1000, (k / 100) % 10));
                if k % 100 == 0 {
                    mkdirs(&dir)?;
                }
                let len = rng.below(4097) as usize;
                write_file(&dir.join(format!("file{k:06}.txt")), &buf[..len])?;
            }
            util::run(
                Command::new("tar")
                    .arg("-cf")
                    .arg(d.join("small.tar"))
                    .arg("-C")
                    .arg(&stage)
                    .arg("small"),
            )?;
            util::remove_tree(&stage)
        })
    }

    /// A git repository `src/` (N files, committed) in `base`; `mid` modifies
    /// 2% of the files; `top` adds 1% untracked files and deletes 0.5%.
    fn src(&self) -> Res<PathBuf> {
        let n = self.p.src_files;
        self.ensure(&format!("{VERSION}-src-{n}"), |d| {
            let base = d.join("base/src");
            let mut rng = Rng::new(3);
            let rel = |k: u64| format!("mod{:02}/sub{}/file{k:05}.c", k / 150, (k / 15) % 10);
            for k in 0..n {
                let p = base.join(rel(k));
                if k % 15 == 0 {
                    mkdirs(p.parent().expect("has parent"))?;
                }
                let lines = 40 + rng.below(300);
                write_file(&p, source_text(&mut rng, lines, &rel(k)).as_bytes())?;
            }
            write_file(&base.join("common.h"), b"struct node; struct path;\n")?;
            write_file(&base.join(".gitignore"), b"*.o\n")?;
            let git = |args: &[&str]| {
                util::run(
                    Command::new("git")
                        .args([
                            "-c",
                            "user.name=bench",
                            "-c",
                            "user.email=bench@localhost",
                            "-c",
                            "init.defaultBranch=main",
                        ])
                        .args(args)
                        .current_dir(&base)
                        .env("GIT_CONFIG_NOSYSTEM", "1")
                        .env("GIT_CONFIG_GLOBAL", "/dev/null")
                        .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
                        .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z"),
                )
            };
            git(&["init", "-q"])?;
            git(&["add", "-A"])?;
            git(&["commit", "-q", "-m", "synthetic source tree"])?;
            git(&["repack", "-adq"])?;
            git(&["status", "--porcelain"])?;
            for k in (0..n).filter(|k| k % 50 == 7) {
                let p = d.join("mid/src").join(rel(k));
                mkdirs(p.parent().expect("has parent"))?;
                let mut text = fs::read(base.join(rel(k))).ctx(|| "reading source".into())?;
                text.extend_from_slice(b"/* changed in a later layer */\n");
                write_file(&p, &text)?;
            }
            for k in (0..n).filter(|k| k % 100 == 3) {
                let p = d.join("top/src").join(format!("mod{:02}/new{k:05}.c", k / 150));
                mkdirs(p.parent().expect("has parent"))?;
                write_file(&p, source_text(&mut rng, 50, "new").as_bytes())?;
            }
            for k in (0..n).filter(|k| k % 200 == 11) {
                let p = d.join("top/src").join(rel(k));
                mkdirs(p.parent().expect("has parent"))?;
                whiteout(&p)?;
            }
            mkdirs(&d.join("mid/src"))?;
            mkdirs(&d.join("top/src"))
        })
    }
}
