//! Finds the default boot entry of a grub.cfg by running the configuration the way GRUB would
//! (variables, `if`, `search`, `load_env`, `configfile`), without a firmware or a screen, and
//! reports the chosen entry's `linux` and `initrd` commands.
//!
//! Work is bounded: a step budget, a variable length limit, limited function and configfile
//! nesting, so a hostile grub.cfg ends in an error or a partial result, never a hang.

mod eval;
mod menu;
pub mod parse;

pub use eval::{Host, Loaded, SearchKind};
pub use menu::default_entry;

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

    struct NoDisk;
    impl Host for NoDisk {
        fn search(&self, _: SearchKind, key: &str) -> Option<String> {
            (key == "u1").then(|| "hd0,gpt2".into())
        }
        fn read(&self, _: &str, path: &str) -> Option<Vec<u8>> {
            path.ends_with("grubenv")
                .then(|| b"saved_entry=1\nnext_entry=\n".to_vec())
        }
        fn test(&self, _: &str, _: &str, _: &str) -> bool {
            true
        }
    }

    #[test]
    fn entries_defaults_and_search() {
        let cfg = "load_env\nset default=\"${saved_entry}\"\n\
            menuentry a { linux /a x }\n\
            menuentry 'b' --id bid { search --fs-uuid --set=root u1; linux /b $root y; initrd /i1 /i2 }\n";
        let e = default_entry(cfg, "hd0,gpt1", "(hd0,gpt1)/boot/grub", &NoDisk)
            .unwrap()
            .unwrap();
        assert_eq!(e.title, "b");
        let l = e.linux.unwrap();
        assert_eq!((l.root.as_str(), l.path.as_str()), ("hd0,gpt2", "/b"));
        assert_eq!(e.args, ["hd0,gpt2", "y"]);
        assert_eq!(e.initrds.len(), 2);
        // A default with no kernel falls back to the first entry that has one.
        let cfg = "set default=1\nmenuentry a { linux /a }\nmenuentry fw { fwsetup }\n";
        let e = default_entry(cfg, "hd0", "(hd0)/boot/grub", &NoDisk)
            .unwrap()
            .unwrap();
        assert_eq!(e.title, "a");
    }

    #[test]
    fn runaway_configs_end_in_errors() {
        let bomb = "function f { f; }\nf\n";
        assert!(default_entry(bomb, "hd0", "", &NoDisk).is_err());
        let grow = format!("a=x\n{}", "a=$a$a\n".repeat(40));
        assert!(default_entry(&grow, "hd0", "", &NoDisk).is_err());
        let lots = "menuentry m { linux /k }\n".repeat(2000) + &"true\n".repeat(200_000);
        assert!(default_entry(&lots, "hd0", "", &NoDisk).is_err());
    }

    #[test]
    fn random_token_soup_never_panics() {
        const WORDS: &[&str] = &[
            "if",
            "then",
            "elif",
            "else",
            "fi",
            "{",
            "}",
            ";",
            "\n",
            "menuentry",
            "submenu",
            "function",
            "f",
            "while",
            "do",
            "done",
            "'q'",
            "\"d $x\"",
            "$",
            "${",
            "\\",
            "#",
            "[",
            "]",
            "-n",
            "=",
            "!",
            "set",
            "default=0>1",
            "linux",
            "initrd",
            "/k",
            "search",
            "--set=root",
            "-u",
            "u1",
            "load_env",
            "source",
            "configfile",
            "x=${x}${x}",
            "(hd0,gpt9)/a",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..3000 {
            let mut s = String::new();
            for _ in 0..(seed % 60) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                s += WORDS[(seed % WORDS.len() as u64) as usize];
                s.push(if seed & 0x100 == 0 { ' ' } else { '\n' });
            }
            let _ = default_entry(&s, "hd0", "(hd0)/boot/grub", &NoDisk);
        }
    }

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
