//! `strata mount --image`: mounts an image from a `docker save` / `podman save`
//! archive or an OCI image layout directory. Its layers are unpacked once into the
//! content-addressed store (see `store`) and the mount is then made by the ordinary
//! mount path: `strata -o lowerdir=<store layers>[,upperdir=…,workdir=…] MOUNTPOINT`,
//! run as a child, so the daemon's command line names its layers as for any mount
//! (what `strata export MOUNTPOINT` and `strata store gc` read).

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use serde_json::Value;

use super::live::escape_opt;
use super::store::{self, ImageRecord, Store};

/// Mount an image (docker/podman save archive or OCI layout dir) from the layer store.
#[derive(Parser, Debug)]
#[command(
    name = "strata mount",
    after_help = "Examples:\n  podman save -o busybox.tar busybox:latest\n  \
strata mount --image busybox.tar /mnt/bb                 # read-only\n  \
strata mount --image oci-dir:latest /mnt/c1 --upper /srv/c1/up --workdir /srv/c1/work\n\n\
SOURCE:TAG picks an image where SOURCE holds several (a tag as in RepoTags, or the\n\
org.opencontainers.image.ref.name annotation of an OCI layout). Layers are kept in the\n\
store by diff_id (sha256 of the uncompressed layer, verified) and reused by later mounts."
)]
pub struct Args {
    /// The image: ARCHIVE.tar or OCI-LAYOUT-DIR, optionally followed by :TAG
    #[arg(long, value_name = "SOURCE")]
    pub image: String,
    /// Where to mount it
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,
    /// A writable upper layer (without it the mount is read-only)
    #[arg(long, value_name = "DIR")]
    pub upper: Option<PathBuf>,
    /// Work dir, on the upper's filesystem
    #[arg(long, value_name = "DIR", requires = "upper")]
    pub workdir: Option<PathBuf>,
    /// The layer store
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Keep this image's layers through `strata store gc` even when not mounted
    #[arg(long)]
    pub pin: bool,
    /// More mount options, as for a plain mount
    #[arg(short = 'o', value_name = "OPTS")]
    pub opts: Vec<String>,
    /// Stay in the foreground
    #[arg(short, long)]
    pub foreground: bool,
    /// Only unpack the layers and print the lowerdir (no mount)
    #[arg(long)]
    pub no_mount: bool,
}

pub fn main(args: Vec<OsString>) -> i32 {
    let a = Args::parse_from(args);
    match run(&a) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("strata mount: {e}");
            1
        }
    }
}

/// An image found in SOURCE: its config digest, diff_ids and where each layer is.
struct Image {
    name: String,
    config: String,
    diff_ids: Vec<String>,
    /// Bottom first, as in the manifest.
    layers: Vec<LayerRef>,
}

enum LayerRef {
    /// A member of the archive (its name).
    Member(String),
    /// A blob file of an OCI layout.
    Blob(PathBuf),
}

fn split_source(s: &str) -> (PathBuf, Option<String>) {
    if Path::new(s).exists() {
        return (PathBuf::from(s), None);
    }
    // The tag is after the first ':' that follows an existing path.
    for (i, _) in s.match_indices(':') {
        if Path::new(&s[..i]).exists() {
            return (PathBuf::from(&s[..i]), Some(s[i + 1..].to_owned()));
        }
    }
    (PathBuf::from(s), None)
}

fn tag_matches(have: &str, want: &str) -> bool {
    have == want
        || have.rsplit('/').next() == Some(want)
        || have.strip_prefix("localhost/") == Some(want)
        || (!want.contains(':') && have.rsplit(':').next() == Some(want))
        || (!want.contains(':') && have.split(':').next().and_then(|n| n.rsplit('/').next()) == Some(want))
}

/// A member of a tar archive, read whole (symlinks between members followed).
fn member(archive: &Path, name: &str, limit: u64) -> Result<Vec<u8>, String> {
    let mut want = name.trim_start_matches("./").to_owned();
    for _ in 0..8 {
        let f = File::open(archive).map_err(|e| format!("{}: {e}", archive.display()))?;
        let mut ar = tar::Archive::new(f);
        let mut next = None;
        for e in ar
            .entries_with_seek()
            .map_err(|e| format!("{}: {e}", archive.display()))?
        {
            let mut e = e.map_err(|e| format!("{}: {e}", archive.display()))?;
            let p = e.path_bytes();
            let p = String::from_utf8_lossy(&p).trim_start_matches("./").to_owned();
            if p != want {
                continue;
            }
            if e.header().entry_type().is_symlink() {
                let t = e
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                let base = Path::new(&p).parent().unwrap_or(Path::new(""));
                next = Some(normalize(&base.join(t)));
                break;
            }
            if e.size() > limit {
                return Err(format!("{}: member {p} is too large", archive.display()));
            }
            let mut v = Vec::new();
            e.read_to_end(&mut v)
                .map_err(|e| format!("{}: {p}: {e}", archive.display()))?;
            return Ok(v);
        }
        match next {
            Some(n) => want = n,
            None => return Err(format!("{}: no member {want}", archive.display())),
        }
    }
    Err(format!("{}: {name}: too many symlinks", archive.display()))
}

fn normalize(p: &Path) -> String {
    let mut out: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(n) => out.push(n.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    out.join("/")
}

fn json(b: &[u8], what: &str) -> Result<Value, String> {
    serde_json::from_slice(b).map_err(|e| format!("{what}: {e}"))
}

fn diff_ids(config: &Value, what: &str) -> Result<Vec<String>, String> {
    config["rootfs"]["diff_ids"]
        .as_array()
        .ok_or_else(|| format!("{what}: no rootfs.diff_ids"))?
        .iter()
        .map(|d| {
            d.as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("{what}: a diff_id that is not a string"))
        })
        .collect()
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    store::hex(&sha2::Sha256::digest(b))
}

/// `docker save` / `podman save` archive: manifest.json lists Config and Layers.
fn from_archive(path: &Path, tag: Option<&str>) -> Result<Image, String> {
    let what = format!("{}: manifest.json", path.display());
    let manifest = json(&member(path, "manifest.json", 16 << 20)?, &what)?;
    let list = manifest.as_array().ok_or_else(|| format!("{what}: not a list"))?;
    let pick = match tag {
        None if list.len() == 1 => &list[0],
        None => {
            return Err(format!(
                "{}: holds {} images: name one with SOURCE:TAG",
                path.display(),
                list.len()
            ))
        }
        Some(t) => list
            .iter()
            .find(|m| {
                m["RepoTags"]
                    .as_array()
                    .is_some_and(|tags| tags.iter().filter_map(|x| x.as_str()).any(|x| tag_matches(x, t)))
            })
            .ok_or_else(|| format!("{}: no image tagged {t}", path.display()))?,
    };
    let cfg_name = pick["Config"].as_str().ok_or_else(|| format!("{what}: no Config"))?;
    let cfg_bytes = member(path, cfg_name, 64 << 20)?;
    let config = json(&cfg_bytes, &format!("{}: {cfg_name}", path.display()))?;
    let ids = diff_ids(&config, cfg_name)?;
    let layers: Vec<LayerRef> = pick["Layers"]
        .as_array()
        .ok_or_else(|| format!("{what}: no Layers"))?
        .iter()
        .filter_map(|l| l.as_str().map(|s| LayerRef::Member(s.to_owned())))
        .collect();
    if layers.len() != ids.len() {
        return Err(format!(
            "{what}: {} layers but {} diff_ids in the config",
            layers.len(),
            ids.len()
        ));
    }
    let name = pick["RepoTags"][0]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| path.display().to_string());
    Ok(Image {
        name,
        config: format!("sha256:{}", sha256_hex(&cfg_bytes)),
        diff_ids: ids,
        layers,
    })
}

/// An OCI image layout directory: index.json -> manifest -> config and layers.
fn from_layout(dir: &Path, tag: Option<&str>) -> Result<Image, String> {
    let blob = |digest: &str| -> Result<PathBuf, String> {
        let hex = store::hex_of(digest)?;
        Ok(dir.join("blobs/sha256").join(hex))
    };
    let read_blob = |digest: &str| -> Result<Vec<u8>, String> {
        let p = blob(digest)?;
        let b = fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        if format!("sha256:{}", sha256_hex(&b)) != digest {
            return Err(format!("{}: does not match its digest", p.display()));
        }
        Ok(b)
    };
    let ip = dir.join("index.json");
    let index = json(
        &fs::read(&ip).map_err(|e| format!("{}: {e}", ip.display()))?,
        &ip.display().to_string(),
    )?;
    let mut manifests: Vec<Value> = index["manifests"].as_array().cloned().unwrap_or_default();
    let ref_name = |m: &Value| {
        m["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .map(str::to_owned)
    };
    let chosen = match tag {
        Some(t) => manifests
            .iter()
            .find(|m| ref_name(m).is_some_and(|r| tag_matches(&r, t)))
            .cloned()
            .ok_or_else(|| format!("{}: no manifest named {t}", ip.display()))?,
        None if manifests.len() == 1 => manifests.remove(0),
        None => {
            return Err(format!(
                "{}: holds {} manifests: name one with SOURCE:TAG",
                ip.display(),
                manifests.len()
            ))
        }
    };
    let mut desc = chosen;
    let name = ref_name(&desc).unwrap_or_else(|| dir.display().to_string());
    // An image index inside: the entry for this machine, else the first.
    for _ in 0..4 {
        let digest = desc["digest"]
            .as_str()
            .ok_or("a descriptor without a digest")?
            .to_owned();
        let m = json(&read_blob(&digest)?, &digest)?;
        if let Some(list) = m["manifests"].as_array() {
            let arch = match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                a => a,
            };
            desc = list
                .iter()
                .find(|d| d["platform"]["architecture"].as_str() == Some(arch))
                .or(list.first())
                .cloned()
                .ok_or_else(|| format!("{digest}: an empty index"))?;
            continue;
        }
        let cfg_digest = m["config"]["digest"]
            .as_str()
            .ok_or_else(|| format!("{digest}: no config"))?
            .to_owned();
        let config = json(&read_blob(&cfg_digest)?, &cfg_digest)?;
        let ids = diff_ids(&config, &cfg_digest)?;
        let layers: Vec<LayerRef> = m["layers"]
            .as_array()
            .ok_or_else(|| format!("{digest}: no layers"))?
            .iter()
            .map(|l| {
                Ok(LayerRef::Blob(blob(
                    l["digest"].as_str().ok_or("a layer without a digest")?,
                )?))
            })
            .collect::<Result<_, String>>()?;
        if layers.len() != ids.len() {
            return Err(format!("{digest}: {} layers but {} diff_ids", layers.len(), ids.len()));
        }
        return Ok(Image {
            name,
            config: cfg_digest,
            diff_ids: ids,
            layers,
        });
    }
    Err(format!("{}: indexes nested too deep", ip.display()))
}

/// The store's layer dirs for the image in `source`, bottom first, unpacking the
/// missing ones. Returns them and the image record.
fn prepare(store: &Store, source: &str) -> Result<(Vec<PathBuf>, ImageRecord), String> {
    let (path, tag) = split_source(source);
    let md = fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let img = if md.is_dir() {
        from_layout(&path, tag.as_deref())?
    } else {
        from_archive(&path, tag.as_deref())?
    };
    let mut dirs = Vec::new();
    for (l, id) in img.layers.iter().zip(&img.diff_ids) {
        let dir = store.layer_dir(id)?;
        if dir.is_dir() {
            dirs.push(dir);
            continue;
        }
        let (d, fresh) = match l {
            LayerRef::Blob(p) => {
                let f = File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
                store.ensure_layer(id, f)?
            }
            LayerRef::Member(m) => {
                let r = member_reader(&path, m)?;
                store.ensure_layer(id, r)?
            }
        };
        if fresh {
            eprintln!("strata mount: unpacked layer {id}");
        }
        dirs.push(d);
    }
    let rec = ImageRecord {
        name: img.name,
        config: img.config,
        layers: img.diff_ids,
        pinned: false,
    };
    Ok((dirs, rec))
}

/// A reader over one member of a tar archive (symlinks followed), by seeking.
fn member_reader(archive: &Path, name: &str) -> Result<impl Read, String> {
    let mut want = name.trim_start_matches("./").to_owned();
    for _ in 0..8 {
        let f = File::open(archive).map_err(|e| format!("{}: {e}", archive.display()))?;
        let mut ar = tar::Archive::new(f);
        let mut found = None;
        for e in ar
            .entries_with_seek()
            .map_err(|e| format!("{}: {e}", archive.display()))?
        {
            let e = e.map_err(|e| format!("{}: {e}", archive.display()))?;
            let p = String::from_utf8_lossy(&e.path_bytes())
                .trim_start_matches("./")
                .to_owned();
            if p != want {
                continue;
            }
            if e.header().entry_type().is_symlink() {
                let t = e
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                let base = Path::new(&p).parent().unwrap_or(Path::new(""));
                found = Some(Err(normalize(&base.join(t))));
            } else {
                found = Some(Ok((e.raw_file_position(), e.size())));
            }
            break;
        }
        match found {
            Some(Ok((pos, size))) => {
                let mut f = File::open(archive).map_err(|e| format!("{}: {e}", archive.display()))?;
                f.seek(std::io::SeekFrom::Start(pos))
                    .map_err(|e| format!("{}: {e}", archive.display()))?;
                return Ok(f.take(size));
            }
            Some(Err(n)) => want = n,
            None => return Err(format!("{}: no member {want}", archive.display())),
        }
    }
    Err(format!("{}: {name}: too many symlinks", archive.display()))
}

pub fn run(a: &Args) -> Result<i32, String> {
    let store = Store::new(a.store.clone());
    // Shared with other mounts, exclusive for gc: held until the mount is live.
    let lock = store::lock(&store.root, false)?;
    let (dirs, mut rec) = prepare(&store, &a.image)?;
    rec.pinned = a.pin || store.images().iter().any(|(_, r)| r.config == rec.config && r.pinned);
    store.save_image(&rec)?;
    // lowerdir is top first.
    let lowerdir: Vec<String> = dirs.iter().rev().map(|d| escape_opt(d)).collect();
    let mut opts = format!("lowerdir={}", lowerdir.join(":"));
    if let Some(u) = &a.upper {
        opts.push_str(&format!(",upperdir={}", escape_opt(u)));
        if let Some(w) = &a.workdir {
            opts.push_str(&format!(",workdir={}", escape_opt(w)));
        }
    }
    let fsname = rec.name.replace(',', "_");
    opts.push_str(&format!(",fsname=strata:{}", escape_fsname(&fsname)));
    if a.no_mount {
        println!("{opts}");
        return Ok(0);
    }
    let exe = std::env::current_exe().map_err(|e| format!("the strata binary: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("-o").arg(&opts);
    for o in &a.opts {
        cmd.arg("-o").arg(o);
    }
    if a.foreground {
        cmd.arg("-f");
        cmd.arg(&a.mountpoint);
        // The daemon holds the store's lock until its mount is live (see mount.rs):
        // gc must not take the layers in between.
        rustix::io::fcntl_setfd(&lock, rustix::io::FdFlags::empty()).map_err(|e| format!("the store's lock: {e}"))?;
        cmd.env("STRATA_HOLD_FD", std::os::fd::AsRawFd::as_raw_fd(&lock).to_string());
        use std::os::unix::process::CommandExt;
        return Err(format!("running strata: {}", cmd.exec()));
    }
    cmd.arg(&a.mountpoint);
    // Without -f the child returns once the mount is live (its daemon goes on).
    let st = cmd.status().map_err(|e| format!("running strata: {e}"))?;
    drop(lock);
    Ok(st.code().unwrap_or(1))
}

fn escape_fsname(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace() && *c != ',' && *c != '\\')
        .collect()
}
