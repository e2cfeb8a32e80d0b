//! The control socket of a live mount: where it lives, the one-line requests that
//! `strata layers` sends over it, and the daemon's side that serves them (list the
//! layers, add one, remove one; see stack.rs for what a change does).
//!
//! The socket is `DIR/<name>.sock`, DIR being $STRATA_RUNTIME_DIR when set, else
//! /run/strata for root and $XDG_RUNTIME_DIR/strata for other users (made 0700), the name a digest of the
//! mount point's canonical path. Only the daemon's own user, or root, may use it (the
//! peer's credentials are checked on every connection). After every change the
//! lower layers are saved next to it, in `<name>.layers`, one path a line, for
//! `--layers-from` at the next mount (a mount never changed saves nothing).
//!
//! Protocol: the client writes one line, `list`, `add\tAT\tDIR` or `del\tDIR`, and
//! reads the answer to the end: `ok` and lines of text, or `err ERRNO` and a sentence.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::stack::Change;
use crate::union::Union;

/// The directory control sockets of this user's mounts live in, if it has one.
pub fn runtime_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("STRATA_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(d));
    }
    if rustix::process::geteuid().is_root() {
        return Some(PathBuf::from("/run/strata"));
    }
    let xdg = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty())?;
    Some(PathBuf::from(xdg).join("strata"))
}

/// The file name (without extension) for the mount at `mountpoint` (canonical).
pub fn name_for(mountpoint: &Path) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(mountpoint.as_os_str().as_bytes());
    d.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// Where a client looks for the socket of the mount at `mountpoint` (canonical):
/// its own runtime dir, then root's, then every user's (root controlling a user's
/// mount).
pub fn socket_candidates(mountpoint: &Path) -> Vec<PathBuf> {
    let name = format!("{}.sock", name_for(mountpoint));
    let mut dirs: Vec<PathBuf> = runtime_dir().into_iter().collect();
    dirs.push(PathBuf::from("/run/strata"));
    if let Ok(users) = std::fs::read_dir("/run/user") {
        dirs.extend(users.flatten().map(|u| u.path().join("strata")));
    }
    let mut out: Vec<PathBuf> = Vec::new();
    for d in dirs {
        let p = d.join(&name);
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// What the daemon answered.
pub enum Answer {
    /// `ok` and its text.
    Ok(String),
    /// `err ERRNO` and its sentence.
    Refused(i32, String),
}

/// Sends one request line to the daemon of the mount at `mountpoint` (canonical) and
/// reads its answer, waiting at most `timeout` for it (a stopped daemon must not hang
/// the caller).
pub fn ask(mountpoint: &Path, request: &[u8], timeout: std::time::Duration) -> Result<Answer, String> {
    use std::io::Read;
    if request.contains(&b'\n') {
        return Err("a layer path may not hold a newline".into());
    }
    let socket = socket_candidates(mountpoint)
        .into_iter()
        .find(|s| s.exists())
        .ok_or_else(|| {
            format!(
                "{}: no control socket found (not a live strata mount, or one of another user)",
                mountpoint.display()
            )
        })?;
    let io = |e: std::io::Error| format!("{}: {e}", socket.display());
    let mut c = UnixStream::connect(&socket).map_err(io)?;
    c.set_read_timeout(Some(timeout)).map_err(io)?;
    c.write_all(request).and_then(|_| c.write_all(b"\n")).map_err(io)?;
    let mut answer = String::new();
    c.read_to_string(&mut answer).map_err(io)?;
    let (status, body) = answer.split_once('\n').unwrap_or((answer.as_str(), ""));
    if status == "ok" {
        return Ok(Answer::Ok(body.to_string()));
    }
    match status.strip_prefix("err ").and_then(|n| n.parse::<i32>().ok()) {
        Some(n) => Ok(Answer::Refused(n, body.trim_end().to_string())),
        None => Err(format!("unexpected answer from {}: {answer:?}", socket.display())),
    }
}

/// The lower layers (top first) in a `list` answer's text.
pub fn listed_lowers(body: &str) -> Vec<PathBuf> {
    body.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('\t')?;
            k.parse::<usize>().ok().map(|_| PathBuf::from(v))
        })
        .collect()
}

/// The control socket being served; removes its file when dropped.
pub struct Served {
    pub socket: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// A bound control socket: bound before the mount shows, so that a client that
/// sees the mount finds its socket; served once the mount is live (connections wait
/// in the backlog meanwhile) by the daemon's signal thread, which polls it beside
/// the signals (no thread of its own: container hosts run hundreds of mounts).
pub struct Bound {
    listener: UnixListener,
    saved: PathBuf,
    pub socket: PathBuf,
}

/// Binds the control socket of the mount `u`. `None`, with a warning, when there is
/// nowhere to put it.
pub fn bind(u: &Union) -> Option<Bound> {
    let Some(dir) = runtime_dir() else {
        tracing::warn!("no XDG_RUNTIME_DIR: no control socket (`strata layers` cannot reach this mount)");
        return None;
    };
    let mp = std::fs::canonicalize(&u.cfg.mountpoint).unwrap_or_else(|_| u.cfg.mountpoint.clone());
    let name = name_for(&mp);
    let socket = dir.join(format!("{name}.sock"));
    let listener = match listen(&dir, &socket).and_then(|l| l.set_nonblocking(true).map(|_| l)) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(
                "control socket {}: {e} (`strata layers` cannot reach this mount)",
                socket.display()
            );
            let _ = std::fs::remove_file(&socket);
            return None;
        }
    };
    // Written at the first change only: a mount whose stack never changes (a
    // container's) leaves nothing behind.
    let saved = dir.join(format!("{name}.layers"));
    Some(Bound {
        listener,
        saved,
        socket,
    })
}

impl Bound {
    /// The listening socket, to poll.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.listener)
    }

    /// Answers the connections waiting, one request each. A client gets 5 s to send
    /// its request: a silent one must not hold the thread that also takes signals.
    pub fn answer_waiting(&self, u: &Union) {
        loop {
            match self.listener.accept() {
                Ok((c, _)) => {
                    let ready = c
                        .set_nonblocking(false)
                        .and_then(|_| c.set_read_timeout(Some(std::time::Duration::from_secs(5))));
                    match ready {
                        Ok(()) => answer(u, c, &self.saved),
                        Err(e) => tracing::debug!("control socket: {e}"),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!("control socket: {e}");
                    return;
                }
            }
        }
    }
}

/// Binds the socket, owner-only, in an owner-only directory. A socket file left by a
/// daemon that is gone is replaced; one that answers belongs to another mount on the
/// same mount point, and is left alone.
fn listen(dir: &Path, socket: &Path) -> std::io::Result<UnixListener> {
    std::fs::create_dir_all(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    use std::os::unix::fs::MetadataExt;
    if !meta.is_dir() || meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(std::io::Error::other("not a directory owned by this user"));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    if socket.exists() {
        if UnixStream::connect(socket).is_ok() {
            return Err(std::io::Error::other(
                "another live mount on this mount point serves it",
            ));
        }
        std::fs::remove_file(socket)?;
    }
    let l = UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serves one connection: one request, one answer.
fn answer(u: &Union, mut c: UnixStream, saved: &Path) {
    let me = rustix::process::geteuid().as_raw();
    match rustix::net::sockopt::socket_peercred(&c) {
        Ok(cred) if cred.uid.as_raw() == me || cred.uid.is_root() => {}
        Ok(cred) => {
            let _ = write!(
                c,
                "err {}\nonly the mount's owner (uid {me}) or root may change its layers, not uid {}",
                libc::EPERM,
                cred.uid.as_raw()
            );
            return;
        }
        Err(e) => {
            tracing::debug!("control socket: peer credentials: {e}");
            return;
        }
    }
    let mut line = Vec::new();
    if BufReader::new(&c).read_until(b'\n', &mut line).is_err() {
        return;
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    let mut parts = line.split(|&b| b == b'\t');
    let path = |b: Option<&[u8]>| b.map(|b| PathBuf::from(std::ffi::OsStr::from_bytes(b)));
    let reply = match parts.next() {
        Some(b"list") => Ok(()),
        Some(b"add") => {
            let at = parts.next().and_then(|a| std::str::from_utf8(a).ok()?.parse().ok());
            match (at, path(parts.next())) {
                (Some(at), Some(dir)) => change(u, &Change::Add { dir, at }, saved),
                _ => Err((libc::EINVAL, "add: expected AT and DIR".to_string())),
            }
        }
        Some(b"del") => match path(parts.next()) {
            Some(dir) => change(u, &Change::Del { dir }, saved),
            None => Err((libc::EINVAL, "del: expected DIR".to_string())),
        },
        _ => Err((libc::EINVAL, "unknown request".to_string())),
    };
    let _ = match reply {
        Ok(()) => c.write_all(&listing(u, saved)),
        Err((errno, msg)) => write!(c, "err {errno}\n{msg}"),
    };
}

fn change(u: &Union, what: &Change, saved: &Path) -> Result<(), (i32, String)> {
    u.change_stack(what).map_err(|r| (r.errno.raw_os_error(), r.msg))?;
    save(u, saved);
    Ok(())
}

/// `ok`, then the stack: `upper\tPATH` when there is one, `N\tPATH` for each lower
/// (N its position, 0 the top one), and `saved\tFILE` once a change saved it.
fn listing(u: &Union, saved: &Path) -> Vec<u8> {
    let mut out = b"ok\n".to_vec();
    if let Some(up) = u.upper() {
        out.extend_from_slice(b"upper\t");
        out.extend_from_slice(absolute(&up.path).as_os_str().as_bytes());
        out.push(b'\n');
    }
    for (i, l) in u.lowers().iter().enumerate() {
        out.extend_from_slice(format!("{i}\t").as_bytes());
        out.extend_from_slice(absolute(l).as_os_str().as_bytes());
        out.push(b'\n');
    }
    if saved.exists() {
        out.extend_from_slice(b"saved\t");
        out.extend_from_slice(saved.as_os_str().as_bytes());
        out.push(b'\n');
    }
    out
}

/// A layer path as others can use it (the daemon's may be relative to where it
/// started).
fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Saves the lower layers (absolute paths, one a line) for `--layers-from`, replacing
/// the file whole.
fn save(u: &Union, saved: &Path) {
    let mut text = Vec::new();
    for l in u.lowers() {
        text.extend_from_slice(absolute(&l).as_os_str().as_bytes());
        text.push(b'\n');
    }
    if let Err(e) = crate::durable::write_file(saved, &text) {
        tracing::warn!("saving the layers in {}: {e}", saved.display());
    }
}
