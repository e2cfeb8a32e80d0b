//! Whiteout and opaque-directory formats, and the reserved-name rule.
//!
//! Written (upper only), AUFS form: an empty regular file `.wh.NAME` hides NAME below;
//! an empty regular file `.wh..wh..opq` inside a directory hides everything below it.
//! Read in every layer, the upper included (fuse-overlayfs and the kernel's overlayfs
//! write it there): the AUFS form and the overlayfs form (a character device 0/0 named
//! NAME; `trusted.overlay.opaque` or `user.overlay.opaque` = `y` on a directory).
//! `whiteout=aufs|overlay` narrows what is read in lowers; in the upper the AUFS form
//! is always read, the overlayfs form unless `whiteout=aufs`.
//! Names starting with `.wh.` are reserved: never visible, never creatable. A
//! character device 0/0 made through the mount carries `DEVICE_XATTR` in the upper.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{FileType, Stat};

use crate::config::WhiteoutForm;
use crate::layer::{self, Result};

pub const PREFIX: &str = ".wh.";
pub const OPAQUE: &str = ".wh..wh..opq";
/// Default staging directory inside the upper when no `workdir` is given.
pub const WORK_IN_UPPER: &str = ".wh..wh.work";

/// True for names that can never appear in, or be created through, the mount.
pub fn is_reserved(name: &OsStr) -> bool {
    name.as_bytes().starts_with(PREFIX.as_bytes())
}

/// `.wh.NAME`
pub fn whiteout_name(name: &OsStr) -> OsString {
    let mut s = OsString::from(PREFIX);
    s.push(name);
    s
}

/// The NAME a whiteout file `.wh.NAME` hides (`None` for the opaque marker and the
/// other `.wh..wh.` meta names).
pub fn hidden_name(wh: &OsStr) -> Option<&OsStr> {
    let rest = wh.as_bytes().strip_prefix(PREFIX.as_bytes())?;
    if rest.starts_with(PREFIX.as_bytes()) || rest.is_empty() {
        return None;
    }
    Some(OsStr::from_bytes(rest))
}

/// An overlayfs-style whiteout: a character device with device number 0/0.
pub fn is_overlay_whiteout(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

/// Marks a character device 0/0 made through the mount (`mknod NAME c 0 0`) in the
/// upper: a device, not a whiteout. Another mounter reads it as a whiteout.
pub const DEVICE_XATTR: &str = "trusted.strata.device";

/// Whether the character device 0/0 `name` in `dir` carries `DEVICE_XATTR`.
pub fn is_marked_device(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    layer::open_path(dir, name)
        .ok()
        .and_then(|fd| layer::get_xattr(fd.as_fd(), OsStr::new(DEVICE_XATTR)).ok().flatten())
        .is_some()
}

/// How a layer marks things, given its position and the configured forms.
#[derive(Clone, Copy)]
pub struct Forms {
    pub aufs: bool,
    pub overlay: bool,
}

impl Forms {
    pub fn for_layer(is_upper: bool, form: WhiteoutForm) -> Forms {
        if is_upper {
            // strata writes the AUFS form; other mounters of the same upper write the
            // overlayfs form.
            return Forms {
                aufs: true,
                overlay: form != WhiteoutForm::Aufs,
            };
        }
        match form {
            WhiteoutForm::Both => Forms {
                aufs: true,
                overlay: true,
            },
            WhiteoutForm::Aufs => Forms {
                aufs: true,
                overlay: false,
            },
            WhiteoutForm::Overlay => Forms {
                aufs: false,
                overlay: true,
            },
        }
    }
}

/// Whether the directory open as `dir` is opaque (hides everything in lower layers).
pub fn is_opaque(dir: BorrowedFd<'_>, forms: Forms) -> Result<bool> {
    if forms.aufs && layer::stat_at(dir, OsStr::new(OPAQUE))?.is_some() {
        return Ok(true);
    }
    Ok(forms.overlay && has_opaque_xattr(dir))
}

/// The overlayfs opaque markers: `trusted.overlay.opaque` or `user.overlay.opaque` = `y`.
pub fn has_opaque_xattr(dir: BorrowedFd<'_>) -> bool {
    const NAMES: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];
    // One call to list the names answers for most directories (those with no marker);
    // the values are read only for a marker listed, or when the list does not fit.
    let mut list = [0u8; 1024];
    let candidates: Vec<&str> = match rustix::fs::flistxattr(dir, &mut list[..]) {
        Ok(n) => {
            let names: Vec<&[u8]> = list[..n].split(|b| *b == 0).collect();
            NAMES.into_iter().filter(|a| names.contains(&a.as_bytes())).collect()
        }
        Err(rustix::io::Errno::NOTSUP) => return false,
        Err(_) => NAMES.to_vec(),
    };
    candidates.into_iter().any(|a| {
        let mut v = [0u8; 4];
        matches!(rustix::fs::fgetxattr(dir, a, &mut v[..]), Ok(n) if n >= 1 && v[0] == b'y')
    })
}

/// True for xattrs that are markers of the layer format, never shown through the mount.
pub fn is_internal_xattr(name: &OsStr) -> bool {
    let b = name.as_bytes();
    b.starts_with(b"trusted.overlay.")
        || b.starts_with(b"user.overlay.")
        || b.starts_with(b"user.strata.")
        || b.starts_with(b"trusted.strata.")
        || crate::override_stat::is_override_xattr(b)
}
