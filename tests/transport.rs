//! Which transport a mount gets (fuser's /dev/fuse loop or FUSE over io_uring), and
//! the fallbacks: a kernel that does not offer io_uring, rings that cannot be set up,
//! and registrations the kernel refuses after the INIT answer took the flag (the
//! kernel holds every request until registration succeeds or fails, so a mount
//! that got this wrong would hang).
//!
//! The io_uring cases need /sys/module/fuse/parameters/enable_uring on. These tests
//! never switch it themselves (other tests run at the same time and would change
//! transport under them): scripts/test.sh turns it on for its second run
//! (STRATA_TEST_TRANSPORT=uring) and restores it. Otherwise they say they skipped.

mod common;

use common::*;
use std::fs;
use std::sync::mpsc;
use std::time::Duration;

/// Some work through the mount, bounded in time: a hang fails the test instead of
/// blocking it.
fn exercise(m: &Mount) {
    let root = m.path().to_path_buf();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = (|| -> std::io::Result<String> {
            fs::write(root.join("new"), "fresh")?;
            fs::create_dir(root.join("dir"))?;
            fs::rename(root.join("new"), root.join("dir/moved"))?;
            let mut names: Vec<String> = fs::read_dir(root.join("dir"))?
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<_, _>>()?;
            names.sort();
            let data = fs::read_to_string(root.join("dir/moved"))? + &fs::read_to_string(root.join("f"))?;
            fs::remove_file(root.join("f"))?;
            Ok(format!("{names:?} {data}"))
        })();
        let _ = tx.send(r.map_err(|e| e.to_string()));
    });
    let got = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("the mount hangs; daemon log:\n{}", m.log()))
        .unwrap_or_else(|e| panic!("work through the mount: {e}; daemon log:\n{}", m.log()));
    assert_eq!(got, "[\"moved\"] freshlower");
    assert!(!m.p("f").exists(), "f removed");
}

fn fixture() -> Fixture {
    let fx = Fixture::new(1);
    fx.lower(0).file("f", "lower");
    fx
}

fn skip_without_uring() -> bool {
    if !uring_enabled() {
        eprintln!("skipped: /sys/module/fuse/parameters/enable_uring is off (scripts/test.sh turns it on for its io_uring run)");
        return true;
    }
    false
}

#[test]
fn io_uring_off_serves_through_dev_fuse() {
    let fx = fixture();
    let m = fx.mount_opts("io_uring=off");
    exercise(&m);
    // -d is not needed for the choice itself; ask for the log line with -d.
    m.finish();
    let fx = fixture();
    let o = format!(
        "lowerdir={},upperdir={},workdir={},io_uring=off",
        fx.lowerdir(),
        fx.upper().path().display(),
        fx.work.display()
    );
    let m = fx.mount_args(&["-f", "-d", "-o", &o]);
    exercise(&m);
    let log = m.log();
    assert!(log.contains("transport: /dev/fuse (io_uring=off)"), "log:\n{log}");
    assert!(!log.contains("io_uring queue"), "no ring served anything; log:\n{log}");
    m.finish();
}

#[test]
fn the_log_names_the_transport_a_mount_got() {
    let fx = fixture();
    let m = fx.mount_args(&["-f", "-d", "-o", &format!("{},io_uring=auto", fx_opts(&fx))]);
    exercise(&m);
    let log = m.log();
    if uring_enabled() {
        assert!(log.contains("transport: io_uring ("), "log:\n{log}");
        assert!(log.contains("serving requests"), "a queue served requests; log:\n{log}");
    } else {
        assert!(
            log.contains("transport: /dev/fuse (the kernel does not offer FUSE over io_uring"),
            "log:\n{log}"
        );
    }
    m.finish();
}

#[test]
fn rings_that_cannot_be_set_up_leave_the_flag_and_serve_classic() {
    if skip_without_uring() {
        return;
    }
    let fx = fixture();
    let o = format!("{},io_uring=on", fx_opts(&fx));
    let m = mount_env(&fx, &o, ("STRATA_TEST_URING_SETUP_FAIL", "1"));
    exercise(&m);
    let log = m.log();
    assert!(
        log.contains("transport: /dev/fuse (setting up io_uring failed"),
        "log:\n{log}"
    );
    assert!(!log.contains("serving requests"), "log:\n{log}");
    m.finish();
}

#[test]
fn a_refused_registration_after_init_falls_back_without_hanging() {
    if skip_without_uring() {
        return;
    }
    let fx = fixture();
    let o = format!("{},io_uring=on", fx_opts(&fx));
    let m = mount_env(&fx, &o, ("STRATA_TEST_URING_REGISTER_FAIL", "1"));
    exercise(&m);
    let log = m.log();
    // The INIT answer took the flag; the kernel refused the registration and the
    // mount went on through /dev/fuse.
    assert!(log.contains("transport: io_uring ("), "log:\n{log}");
    assert!(log.contains("registering queue"), "log:\n{log}");
    assert!(log.contains("serving through /dev/fuse"), "log:\n{log}");
    assert!(!log.contains("serving requests"), "log:\n{log}");
    m.finish();
}

fn fx_opts(fx: &Fixture) -> String {
    format!(
        "lowerdir={},upperdir={},workdir={}",
        fx.lowerdir(),
        fx.upper().path().display(),
        fx.work.display()
    )
}

/// A mount with -d and one environment variable for the daemon.
fn mount_env(fx: &Fixture, opts: &str, env: (&str, &str)) -> Mount {
    fx.try_mount_args_env(&["-f", "-d", "-o", opts], &[env])
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Without -f, strata reports its mount live to the caller and then lets go of the
/// caller's stderr. A registration the kernel refuses must be said before that: the
/// caller (a shell, a container engine running its mount_program) hears of it only
/// then. The warning used to race the detach and reach the caller now and then, so
/// this mounts a few times.
#[test]
fn a_daemon_reports_a_refused_registration_before_it_detaches() {
    if skip_without_uring() {
        return;
    }
    for round in 0..4 {
        let fx = fixture();
        let out = std::process::Command::new(STRATA)
            .arg("-o")
            .arg(format!("{},io_uring=on", fx_opts(&fx)))
            .arg(&fx.mnt)
            .env("STRATA_TEST_URING_REGISTER_FAIL", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("running strata");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let mounted = is_fuse_mount(&fx.mnt);
        let read = fs::read_to_string(fx.mnt.join("f"));
        force_unmount(&fx.mnt);
        assert!(
            out.status.success() && mounted,
            "round {round}: {}; stderr:\n{err}",
            out.status
        );
        assert_eq!(read.ok().as_deref(), Some("lower"), "round {round}: the mount serves");
        assert!(
            err.contains("registering queue") && err.contains("serving through /dev/fuse"),
            "round {round}: the caller was not told; stderr:\n{err}"
        );
    }
}
