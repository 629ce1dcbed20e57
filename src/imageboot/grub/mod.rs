//! Finds the default boot entry of a grub.cfg by running the configuration the way GRUB would
//! (variables, `if`, `search`, `load_env`, `configfile`), without a firmware or a screen, and
//! reports the chosen entry's `linux` and `initrd` commands.
//!
//! Work is bounded: a step budget, a variable length limit, limited function and configfile
//! nesting, so a hostile grub.cfg ends in an error or a partial result, never a hang.

mod eval;
pub mod parse;

pub use eval::{default_entry, Host, Loaded, SearchKind};

/// Splits a GRUB path `(hd0,gpt1)/boot/x` into the device (`hd0,gpt1`, if given) and the path.
pub fn split_device(path: &str) -> (Option<&str>, &str) {
    if let Some(rest) = path.strip_prefix('(') {
        if let Some((dev, p)) = rest.split_once(')') {
            return (Some(dev), p);
        }
    }
    (None, path)
}

/// The partition number a GRUB device names on the first disk: `hd0,gpt2` and `hd0,msdos2`
/// give `Some(Some(2))`, `hd0` gives `Some(None)` (the whole disk), other disks `None`.
pub fn device_partition(dev: &str) -> Option<Option<u32>> {
    let mut parts = dev.split(',');
    if parts.next()? != "hd0" {
        return None;
    }
    let Some(p) = parts.next() else {
        return Some(None);
    };
    let n = p.trim_start_matches("gpt").trim_start_matches("msdos");
    n.parse().ok().map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices() {
        assert_eq!(
            split_device("(hd0,gpt1)/boot/x"),
            (Some("hd0,gpt1"), "/boot/x")
        );
        assert_eq!(split_device("/x"), (None, "/x"));
        assert_eq!(device_partition("hd0,gpt15"), Some(Some(15)));
        assert_eq!(device_partition("hd0,msdos5"), Some(Some(5)));
        assert_eq!(device_partition("hd0"), Some(None));
        assert_eq!(device_partition("hd1,gpt1"), None);
        assert_eq!(device_partition("hd0,bogus"), None);
    }
}
