//! The `strata` subcommands that treat layers as objects: `export` (a layer's changes
//! as an OCI layer tar), `apply` (a layer tar unpacked into a layer directory),
//! `mount --image` with its content-addressed `store`, and `layers` (the stack of a
//! live mount, changed through its control socket). None of them touch the daemon's
//! internals; a live mount is found through /proc (see `live`) or its socket.

pub mod apply;
pub mod export;
pub mod image;
pub mod layers;
pub mod live;
pub mod store;
pub mod tarfmt;

/// The subcommand named by the arguments, or `None` for the mount forms.
///
/// `strata NAME …` runs subcommand NAME unless the arguments are a mount: an `-o`
/// whose options name `lowerdir=` or `upperdir=` always makes a mount (a mount
/// source may be called `export`, as mount.fuse3 passes the source first), and
/// `mount` is the subcommand only with `--image` (or `--help`).
pub fn subcommand(args: &[std::ffi::OsString]) -> Option<&'static str> {
    let first = args.get(1)?.to_str()?;
    let name = ["export", "apply", "mount", "store", "layers"]
        .into_iter()
        .find(|n| *n == first)?;
    let rest = &args[2..];
    let mut is_mount = false;
    let mut i = 0;
    while i < rest.len() {
        let a = rest[i].to_string_lossy();
        let opts = if a == "-o" {
            i += 1;
            rest.get(i).map(|o| o.to_string_lossy().into_owned())
        } else {
            a.strip_prefix("-o").map(str::to_owned)
        };
        if let Some(o) = opts {
            if o.split(',').any(|kv| {
                ["lowerdir=", "upperdir=", "layers_from="]
                    .iter()
                    .any(|k| kv.starts_with(k))
            }) {
                is_mount = true;
            }
        }
        i += 1;
    }
    if is_mount {
        return None;
    }
    let image_or_help = |a: &std::ffi::OsString| {
        a == "--image" || a == "--help" || a == "-h" || a.to_string_lossy().starts_with("--image=")
    };
    if name == "mount" && !rest.iter().any(image_or_help) {
        return None;
    }
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::subcommand;

    fn sub(args: &[&str]) -> Option<&'static str> {
        let v: Vec<std::ffi::OsString> = std::iter::once("strata")
            .chain(args.iter().copied())
            .map(Into::into)
            .collect();
        subcommand(&v)
    }

    #[test]
    fn subcommands_and_mounts() {
        assert_eq!(sub(&["export", "/mnt"]), Some("export"));
        assert_eq!(sub(&["export", "/mnt", "-o", "out.tar"]), Some("export"));
        assert_eq!(sub(&["export", "--upper", "/u", "-oout.tar"]), Some("export"));
        assert_eq!(sub(&["apply", "l.tar", "/d"]), Some("apply"));
        assert_eq!(sub(&["store", "gc"]), Some("store"));
        assert_eq!(sub(&["mount", "--image", "a.tar", "/m"]), Some("mount"));
        assert_eq!(sub(&["mount", "--image=a.tar", "/m"]), Some("mount"));
        assert_eq!(sub(&["mount", "--help"]), Some("mount"));
        // Mounts: a source named like a subcommand, with lowerdir= or upperdir=.
        assert_eq!(sub(&["export", "/mnt", "-o", "lowerdir=/l"]), None);
        assert_eq!(sub(&["export", "/mnt", "-o", "rw,upperdir=/u,lowerdir=/l"]), None);
        assert_eq!(sub(&["store", "/mnt", "-olowerdir=/l"]), None);
        assert_eq!(sub(&["layers", "/mnt"]), Some("layers"));
        assert_eq!(sub(&["layers", "/mnt", "-o", "layers_from=/f"]), None);
        assert_eq!(sub(&["mount", "/mnt", "--lower", "/l"]), None);
        assert_eq!(sub(&["-o", "lowerdir=/l", "/mnt"]), None);
        assert_eq!(sub(&["/src", "/mnt", "-o", "lowerdir=/l"]), None);
        assert_eq!(sub(&[]), None);
    }
}
