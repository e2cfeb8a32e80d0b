//! Putting new files and trees in place so that a crash or a power cut leaves either
//! what was there before or the whole new thing, never a name over missing data:
//! the data is synced before the rename that names it, and the rename is synced
//! through its directory. Used by the subcommands that write layers, tars and
//! records (apply, export, the image store) and by the daemon's saved layer list.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// A temporary name beside `path` for writing it: `.NAME.tmp-PID`.
pub fn temp_beside(path: &Path) -> PathBuf {
    let mut n = std::ffi::OsString::from(".");
    n.push(path.file_name().unwrap_or_default());
    n.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(n)
}

/// The directory that holds `path` (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// fsync(2) of a directory: its entries (a rename into it, a new name) are on disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// syncfs(2) of the filesystem that holds `path`: everything written to it so far
/// is on disk. One journal commit for a whole unpacked tree, where an fsync of each
/// file would cost one each.
pub fn sync_fs_of(path: &Path) -> io::Result<()> {
    let f = File::open(path)?;
    rustix::fs::syncfs(f.as_fd()).map_err(io::Error::from)
}

/// Renames `from` to `to` and syncs the directory (or directories) involved.
pub fn rename_synced(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    let (a, b) = (parent_of(from), parent_of(to));
    sync_dir(b)?;
    if a != b {
        sync_dir(a)?;
    }
    Ok(())
}

/// Replaces `path` with `data` whole: written to a temporary name beside it,
/// synced, renamed over it, and the rename synced.
pub fn write_file(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = temp_beside(path);
    let r = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        rename_synced(&tmp, path)
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_file_replaces_whole_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("rec.json");
        write_file(&p, b"one").unwrap();
        write_file(&p, b"two, longer").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two, longer");
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("rec.json")]);
    }

    #[test]
    fn write_file_into_a_missing_directory_fails_and_names_nothing_new() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("missing/rec.json");
        assert!(write_file(&p, b"x").is_err());
        assert!(!d.path().join("missing").exists());
    }
}
