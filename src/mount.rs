//! The daemon's lifecycle: opening the union, daemonizing, mounting the FUSE
//! connection, serving it, and unmounting on signals.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::OnceLock;

use crate::config::Config;
use crate::union::Union;

fn init_logging(debug: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::new(v),
        _ if debug => EnvFilter::new("strata=debug,fuser=info"),
        // fuser's own warnings at unmount (a reply to a request the kernel dropped, an
        // unmount already done) are noise for a user; RUST_LOG=fuser=warn shows them.
        _ => EnvFilter::new("warn,fuser=off"),
    };
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

fn fuse_config(u: &Union) -> fuser::Config {
    use fuser::MountOption as O;
    let cfg = &u.cfg;
    let mut c = fuser::Config::default();
    let fsname = cfg.fsname.clone().unwrap_or_else(|| "strata".into());
    c.mount_options = vec![O::FSName(fsname), O::Subtype("strata".into())];
    if cfg.default_permissions {
        c.mount_options.push(O::DefaultPermissions);
    }
    if !u.has_upper || cfg.read_only {
        c.mount_options.push(O::RO);
    }
    // The VFS flags asked for (`nosuid`, `nodev`, `noexec`, `noatime`, ...). Mounted by
    // root, `mount_fuse` gives them all to mount(2). Otherwise fusermount3 mounts, and
    // always adds nosuid,nodev; it knows only some flags by name (3.14: not the
    // others below), and an unprivileged user cannot change a mount's flags afterwards.
    for (f, o) in [
        (libc::MS_NOSUID, O::NoSuid),
        (libc::MS_NODEV, O::NoDev),
        (libc::MS_NOEXEC, O::NoExec),
        (libc::MS_NOATIME, O::NoAtime),
        (libc::MS_SYNCHRONOUS, O::Sync),
        (libc::MS_DIRSYNC, O::DirSync),
    ] {
        if cfg.vfs(f) {
            c.mount_options.push(o);
        }
    }
    if !rustix::process::geteuid().is_root() {
        // relatime is what such a mount gets anyway.
        for (f, name) in [
            (libc::MS_NODIRATIME, "nodiratime"),
            (libc::MS_STRICTATIME, "strictatime"),
            (libc::MS_LAZYTIME, "lazytime"),
            (libc::MS_NOSYMFOLLOW, "nosymfollow"),
        ] {
            if cfg.vfs(f) {
                eprintln!("strata: warning: '{name}' cannot be applied to a mount by an unprivileged user (fusermount3): not applied");
            }
        }
    }
    // Mounted by root (a system or container mount), every user of the system may use
    // it, with the kernel checking permissions, as fuse-overlayfs does.
    if cfg.allow_other || rustix::process::geteuid().is_root() {
        c.acl = fuser::SessionACL::All;
    }
    // Four times the cores, 8 to 16: even a single client runs faster with spare
    // workers (the kernel queues a FORGET after each unlink). On 2 cores, in the same
    // bench run, 8 workers against 4: unlink 10k 668 against 859 ms, warm git status
    // 14.5 against 19.2 ms, tar c 580 against 633 ms; 4 had been ~10% ahead of 2.
    // When the kernel offers FUSE over io_uring, the rings will carry the requests,
    // and fuser's threads only see FORGET and INTERRUPT: two are enough. (Should the
    // rings be refused, those two serve the mount.)
    let threads = if cfg.threads > 0 {
        cfg.threads
    } else if cfg.io_uring != crate::config::UringMode::Off && crate::uring::offered() {
        2
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get() * 4)
            .unwrap_or(8)
            .clamp(8, 16)
    };
    c.n_threads = Some(threads);
    c.clone_fd = true;
    c
}

/// Mounts and serves until unmounted. Without `foreground`, returns (in the parent
/// process) only once the mount is live, with the daemon serving in the background.
pub fn run(cfg: Config) -> Result<(), String> {
    init_logging(cfg.debug);
    // Files are created with exactly the mode asked for.
    rustix::process::umask(rustix::fs::Mode::empty());
    // Every open file of the mount holds an fd here, plus kept directories.
    let mut nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if nofile.current < nofile.maximum {
        nofile.current = nofile.maximum;
        let _ = rustix::process::setrlimit(rustix::process::Resource::Nofile, nofile);
    }
    let hold = held_for_launcher();
    let union = Union::new(cfg)?;
    if union.cfg.foreground {
        return serve(union, None, hold);
    }
    let (rd, wr) = rustix::pipe::pipe().map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: no other thread exists yet in this process (nothing above spawns one), so
    // the child starts from a consistent copy of the whole address space.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid > 0 {
        drop(wr);
        drop(hold);
        let mut msg = String::new();
        let _ = std::fs::File::from(rd).read_to_string(&mut msg);
        return match msg.strip_prefix("ok") {
            Some(_) => Ok(()),
            None if msg.is_empty() => Err("the mount daemon exited before the mount was live".into()),
            None => Err(msg.trim_end().to_string()),
        };
    }
    drop(rd);
    let _ = rustix::process::setsid();
    let res = serve(union, Some(wr), hold);
    std::process::exit(if res.is_ok() { 0 } else { 1 });
}

/// An fd the launcher hands over (`STRATA_HOLD_FD`) for the daemon to hold until its
/// mount is live: `strata mount --image -f` passes its shared lock of the layer store
/// this way, so that `store gc` cannot remove the layers between its exec and the
/// mount (a live mount's layers are then found through /proc).
fn held_for_launcher() -> Option<OwnedFd> {
    let n = std::env::var("STRATA_HOLD_FD").ok()?.parse().ok()?;
    std::env::remove_var("STRATA_HOLD_FD");
    crate::sys::inherited_fd(n)
}

fn serve(union: Union, notify: Option<OwnedFd>, hold: Option<OwnedFd>) -> Result<(), String> {
    let mountpoint = union.cfg.mountpoint.clone();
    let fsname = union.cfg.fsname.clone().unwrap_or_else(|| "strata".into());
    let config = fuse_config(&union);
    let flags = mount_flags(&union);
    let signals = block_signals();
    let notifier = union.notifier.clone();
    let union = std::sync::Arc::new(union);
    let control = crate::control::bind(&union);
    let rings = crate::uring::Rings::default();
    let choice = crate::uring::choice(union.clone(), rings.clone());
    let fs = crate::fs::StrataFs::new(union.clone(), Some(choice));
    let mounted = if rustix::process::geteuid().is_root() {
        mount_fuse(fs, &mountpoint, &fsname, &config, flags)
    } else {
        fuser::Session::new(fs, &mountpoint, &config).map(|s| (s, false))
    };
    let (mut session, own_mount) = match mounted {
        Ok(s) => s,
        // The kernel ends the connection with ENODEV when the mount goes away: unmounted
        // before the daemon read its first request (a caller that unmounts at once).
        // That is an unmount like any other, not a failure to mount.
        Err(e) if e.kind() == std::io::ErrorKind::NotConnected => {
            tracing::info!(
                "{} was unmounted before its first request: exiting",
                mountpoint.display()
            );
            report_live(notify);
            return Ok(());
        }
        Err(e) => {
            let msg = format!("mounting on {}: {}", mountpoint.display(), e);
            if let Some(n) = notify {
                let _ = std::fs::File::from(n).write_all(msg.as_bytes());
            }
            return Err(msg);
        }
    };
    // INIT is answered: the io_uring queues (if the mount took them) register now.
    rings.start(std::os::fd::AsFd::as_fd(&session));
    tracing::info!("mounted on {}", mountpoint.display());
    let _ = notifier.set(session.notifier());
    match rustix::io::fcntl_dupfd_cloexec(std::os::fd::AsFd::as_fd(&session), 0) {
        Ok(fd) => {
            let _ = union.device.set(fd);
        }
        Err(e) => tracing::warn!("duplicating the FUSE connection's fd: {e}"),
    }
    let _socket = control.as_ref().map(|c| crate::control::Served {
        socket: c.socket.clone(),
    });
    let socket = control.as_ref().map(|c| c.socket.clone());
    if let Some(s) = &socket {
        tracing::info!("control socket {}", s.display());
    }
    report_live(notify);
    drop(hold);
    let u = union.clone();
    let mut unmounter = session.unmount_callable();
    let mp = mountpoint.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            match &control {
                Some(c) => serve_until_signal(&signals, c, &u),
                None => wait_signal(&signals),
            }
            tracing::info!("signal received: unmounting");
            let r = if own_mount {
                rustix::mount::unmount(&mp, rustix::mount::UnmountFlags::DETACH).map_err(std::io::Error::from)
            } else {
                unmounter.unmount()
            };
            if let Err(e) = r {
                tracing::warn!("unmount: {e}");
            }
            if let Some(s) = &socket {
                let _ = std::fs::remove_file(s);
            }
            // Detached, the mount lives on while files in it are open. Everything written
            // is already in the upper, so after a short grace (or at a second signal)
            // the daemon ends; open files then fail with ENOTCONN.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                wait_signal(&signals);
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(std::time::Duration::from_secs(2));
            tracing::info!("files still open in the detached mount: exiting");
            std::process::exit(0);
        })
        .map_err(|e| format!("spawning signal thread: {e}"))?;
    match session.run() {
        // The kernel ends a connection with ENODEV, or with ECONNABORTED when it was
        // torn down under a worker (seen after a lazy unmount once the last open file
        // closes, or an abort through /sys/fs/fuse/connections). Either way the mount
        // is gone and everything written is already in the upper.
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
            tracing::info!("connection to {} aborted by the kernel: exiting", mountpoint.display());
            Ok(())
        }
        r => r.map_err(|e| format!("serving {}: {}", mountpoint.display(), e)),
    }
}

/// `-o remount,...`: sets the flags of the strata mount at the mount point to those
/// given (mount(8) passes them all, the ones kept and the ones changed), `ro` or `rw`
/// included, as mount(2) does for a remount. No second daemon is started.
pub fn remount(cfg: &Config) -> Result<(), String> {
    use rustix::mount::MountFlags;
    let mp = &cfg.mountpoint;
    let fs = rustix::fs::statfs(mp).map_err(|e| format!("remount {}: {}", mp.display(), e))?;
    // FUSE_SUPER_MAGIC
    if fs.f_type as i64 != 0x6573_5546 {
        return Err(format!("remount {}: not a FUSE (strata) mount", mp.display()));
    }
    if !rustix::process::geteuid().is_root() {
        return Err(format!(
            "remount {}: changing a mount's flags needs root; unmount and mount again instead",
            mp.display()
        ));
    }
    let mut flags = MountFlags::from_bits_retain(cfg.vfs_set as std::ffi::c_uint);
    if cfg.read_only {
        flags |= MountFlags::RDONLY;
    }
    rustix::mount::mount_remount(mp, flags, "").map_err(|e| format!("remount {}: {}", mp.display(), e))
}

/// The mount(2) flags of the FUSE mount: read-only without an upper or with `ro`, and
/// the VFS flags asked for. Without any, mount(2) makes it suid, dev, exec, relatime.
fn mount_flags(u: &Union) -> rustix::mount::MountFlags {
    use rustix::mount::MountFlags;
    let mut f = MountFlags::from_bits_retain(u.cfg.vfs_set as std::ffi::c_uint);
    if !u.has_upper || u.cfg.read_only {
        f |= MountFlags::RDONLY;
    }
    f
}

/// Mounts the FUSE connection itself, as filesystem type `fuse.strata` (so that the
/// mount table, findmnt and `umount -t` know it), then takes the kernel's INIT.
/// Returns the session and whether strata owns the mount (true here).
fn mount_fuse(
    fs: crate::fs::StrataFs,
    mountpoint: &Path,
    fsname: &str,
    config: &fuser::Config,
    flags: rustix::mount::MountFlags,
) -> std::io::Result<(fuser::Session<crate::fs::StrataFs>, bool)> {
    use rustix::mount::{mount, unmount, UnmountFlags};
    let dev = rustix::fs::open(
        "/dev/fuse",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let root = rustix::fs::stat(mountpoint)?;
    let mut data = format!(
        "fd={},rootmode={:o},user_id=0,group_id=0",
        std::os::fd::AsRawFd::as_raw_fd(&dev),
        root.st_mode & libc::S_IFMT
    );
    if config.mount_options.contains(&fuser::MountOption::DefaultPermissions) {
        data.push_str(",default_permissions");
    }
    if config.acl != fuser::SessionACL::Owner {
        data.push_str(",allow_other");
    }
    let data = std::ffi::CString::new(data).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    mount(fsname, mountpoint, "fuse.strata", flags, Some(data.as_c_str()))?;
    // Fault injection for the tests: hold the daemon between its mount and its first
    // read of the connection.
    static BEFORE_INIT: OnceLock<u64> = OnceLock::new();
    crate::union::pause_for_tests("STRATA_TEST_PAUSE_BEFORE_INIT_MS", &BEFORE_INIT);
    match fuser::Session::from_fd(fs, dev, config.acl, config.clone()) {
        Ok(s) => Ok((s, true)),
        Err(e) => {
            let _ = unmount(mountpoint, UnmountFlags::DETACH);
            Err(e)
        }
    }
}

/// Tells the waiting parent (daemon mode) that the mount is live, and lets go of the
/// caller's stdio.
fn report_live(notify: Option<OwnedFd>) {
    if let Some(n) = notify {
        detach_stdio();
        let _ = std::fs::File::from(n).write_all(b"ok");
    }
}

/// Points stdin, stdout and stderr at /dev/null so a caller waiting for them to close
/// (as container runtimes do) is released.
fn detach_stdio() {
    if let Ok(null) = rustix::fs::open("/dev/null", rustix::fs::OFlags::RDWR, rustix::fs::Mode::empty()) {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors; `null` stays owned by us.
            unsafe {
                libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null.as_fd()), fd);
            }
        }
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in this thread and all threads it spawns, so that
/// they are only ever taken by `wait_signal`.
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain libc calls on a local, zero-initialised sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Answers the control socket until one of the signals in `set` arrives (and is
/// taken).
fn serve_until_signal(set: &libc::sigset_t, c: &crate::control::Bound, u: &Union) {
    use rustix::event::{poll, PollFd, PollFlags};
    let sfd = match crate::sys::signalfd(set) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!("signalfd: {e}: the control socket is not served");
            return wait_signal(set);
        }
    };
    loop {
        let mut fds = [
            PollFd::new(&sfd, PollFlags::IN),
            PollFd::from_borrowed_fd(c.fd(), PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                tracing::warn!("poll: {e}: the control socket is no longer served");
                return wait_signal(set);
            }
        }
        if !fds[1].revents().is_empty() {
            c.answer_waiting(u);
        }
        if !fds[0].revents().is_empty() {
            // Taken, so that a later wait sees only a new signal.
            let mut info = [0u8; 128];
            let _ = rustix::io::read(&sfd, &mut info);
            return;
        }
    }
}

fn wait_signal(set: &libc::sigset_t) {
    let mut sig = 0;
    // SAFETY: `set` is an initialised sigset_t, `sig` a valid out-pointer.
    unsafe {
        libc::sigwait(set, &mut sig);
    }
}
