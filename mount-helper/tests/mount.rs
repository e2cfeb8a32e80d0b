//! mount(8) end to end: `mount -t strata`, an fstab line, and `mount -t fuse.strata`
//! (through fuse3's mount.fuse3), each mounting the strata built by this workspace.
//! Needs root; links /sbin/mount.strata (and, for fuse.strata, /usr/local/bin/strata)
//! to the built binaries for the test, restoring what was there after.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const HELPER: &str = env!("CARGO_BIN_EXE_mount-strata");

/// The strata binary of this workspace (next to the helper).
fn strata_bin() -> PathBuf {
    Path::new(HELPER).with_file_name("strata")
}

/// Puts a link to a built binary at `path` for the test (where mount(8) looks), and
/// takes it away after, bringing back what was there before.
struct Installed {
    path: PathBuf,
    previous: Option<PathBuf>,
}

impl Installed {
    fn new(path: &str, target: &Path) -> Installed {
        let path = PathBuf::from(path);
        let previous = fs::symlink_metadata(&path).ok().map(|_| {
            let saved = path.with_file_name(format!(
                ".{}.saved-by-test",
                path.file_name().unwrap().to_string_lossy()
            ));
            fs::rename(&path, &saved).unwrap();
            saved
        });
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, &path).unwrap();
        Installed { path, previous }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        if let Some(p) = &self.previous {
            let _ = fs::rename(p, &self.path);
        }
    }
}

/// Layers on a temp dir, and an unmount on drop.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::Builder::new().prefix("strata-mount.").tempdir().unwrap();
        for d in ["l1", "l2", "u", "w", "m"] {
            fs::create_dir(dir.path().join(d)).unwrap();
        }
        fs::write(dir.path().join("l2/base"), "from l2").unwrap();
        fs::write(dir.path().join("l1/top"), "from l1").unwrap();
        fs::write(dir.path().join("l1/.wh.base"), "").unwrap();
        fs::write(dir.path().join("l2/kept"), "kept").unwrap();
        Fixture { dir }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn opts(&self) -> String {
        format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            self.p("l1").display(),
            self.p("l2").display(),
            self.p("u").display(),
            self.p("w").display()
        )
    }

    fn fstype(&self) -> Option<String> {
        self.field(2)
    }

    /// Field `i` of the mount's line in /proc/self/mounts.
    fn field(&self, i: usize) -> Option<String> {
        let m = self.p("m");
        fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .find(|l| l.split(' ').nth(1) == Some(m.to_str().unwrap()))
            .map(|l| l.split(' ').nth(i).unwrap().to_string())
    }

    /// Asserts that the mount carries each of the VFS flags `want`.
    fn assert_flags(&self, how: &str, want: &[&str]) {
        let opts = self.field(3).unwrap_or_default();
        let opts: Vec<&str> = opts.split(',').collect();
        for w in want {
            assert!(opts.contains(w), "{how}: {w} is not applied: {opts:?}");
        }
    }

    /// The merged view works, then `umount` takes it away.
    fn check_and_unmount(&self) {
        let m = self.p("m");
        let mut names: Vec<String> = fs::read_dir(&m)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["kept", "top"]);
        fs::write(m.join("new"), "written").unwrap();
        assert_eq!(fs::read_to_string(self.p("u/new")).unwrap(), "written");
        let st = Command::new("umount").arg(&m).status().unwrap();
        assert!(st.success(), "umount");
        assert_eq!(self.fstype(), None, "unmounted");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if self.fstype().is_some() {
            let _ = Command::new("umount").arg("-l").arg(self.p("m")).status();
        }
    }
}

fn mount(args: &[&str]) -> std::process::Output {
    Command::new("mount").args(args).output().unwrap()
}

/// Running as root (the owner of /proc/self is the effective uid).
fn root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

// One test function: the three ways share /sbin/mount.strata and run in turn.
#[test]
fn mount_t_strata_fstab_and_fuse_strata() {
    if !root() {
        eprintln!("skipped: mounting through mount(8) needs root");
        return;
    }
    assert!(
        strata_bin().exists(),
        "build the workspace first: {} is missing",
        strata_bin().display()
    );
    // The links are machine-wide: another run of this test at the same time (two
    // checkouts tested at once) waits for this one. The lock is taken on /sbin
    // itself, where the links go, so no lock file is left behind.
    let lock = fs::File::open("/sbin").unwrap();
    lock.lock().unwrap();
    let _helper = Installed::new("/sbin/mount.strata", Path::new(HELPER));
    // The daemons' control sockets in a directory of this test, not /run/strata (the
    // variable reaches them through mount(8) and mount.strata).
    let run = tempfile::tempdir().unwrap();
    std::env::set_var("STRATA_RUNTIME_DIR", run.path());

    // mount -t strata
    let f = Fixture::new();
    let m = f.p("m");
    let out = mount(&[
        "-t",
        "strata",
        "strata",
        m.to_str().unwrap(),
        "-o",
        &format!("{},nofail,x-test=1,nosuid,nodev,noexec,noatime", f.opts()),
    ]);
    assert!(
        out.status.success(),
        "mount -t strata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(f.fstype().as_deref(), Some("fuse.strata"));
    f.assert_flags("mount -t strata", &["rw", "nosuid", "nodev", "noexec", "noatime"]);
    f.check_and_unmount();

    // an fstab line
    let f = Fixture::new();
    let m = f.p("m");
    let fstab = f.p("fstab");
    fs::write(
        &fstab,
        format!(
            "strata {} strata {},nofail,_netdev,nodev,nosuid 0 0\n",
            m.display(),
            f.opts()
        ),
    )
    .unwrap();
    let out = mount(&["--fstab", fstab.to_str().unwrap(), m.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "mount from fstab: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    f.assert_flags("fstab", &["nosuid", "nodev"]);
    f.check_and_unmount();

    // mount -t fuse.strata: mount.fuse3 runs `strata` from the PATH mount(8) gives its
    // helpers (/usr/local/sbin:/usr/local/bin:/usr/sbin:...; the caller's PATH is not
    // passed on), so the built strata goes to /usr/local/bin for this part.
    if Path::new("/sbin/mount.fuse3").exists() || Path::new("/usr/sbin/mount.fuse3").exists() {
        let _strata = Installed::new("/usr/local/bin/strata", &strata_bin());
        let f = Fixture::new();
        let m = f.p("m");
        let o = format!("{},nodev,noexec,noatime", f.opts());
        let out = mount(&["-t", "fuse.strata", "strata", m.to_str().unwrap(), "-o", &o]);
        assert!(
            out.status.success(),
            "mount -t fuse.strata: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        f.assert_flags("mount -t fuse.strata", &["rw", "nodev", "noexec", "noatime"]);
        // `mount -o remount,ro` goes through mount.fuse3 to strata, which changes the
        // live mount: what the upper holds stays visible, writes answer EROFS.
        fs::write(m.join("before"), "b").unwrap();
        let out = mount(&["-o", "remount,ro", m.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "remount,ro: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        f.assert_flags("remount,ro", &["ro", "nodev", "noexec", "noatime"]);
        assert_eq!(fs::read_to_string(m.join("before")).unwrap(), "b");
        let e = fs::write(m.join("after"), "a").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(30), "create after remount,ro (EROFS): {e}");
        let out = mount(&["-o", "remount,rw", m.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "remount,rw: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::remove_file(m.join("before")).unwrap();
        f.check_and_unmount();
    } else {
        eprintln!("skipped -t fuse.strata: fuse3's mount.fuse3 is not installed");
    }
}
