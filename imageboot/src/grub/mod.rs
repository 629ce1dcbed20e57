//! Finds the default boot entry of a grub.cfg by running the configuration the way GRUB would
//! (variables, `if`, `search`, `load_env`, `configfile`), without a firmware or a screen, and
//! reports the chosen entry's `linux` and `initrd` commands.
//!
//! Work is bounded by a [`Budget`](crate::Budget) shared by everything one search
//! runs: commands, bytes of all values and arguments together, nesting, file sizes; so a
//! hostile grub.cfg ends in a one-line error, never a hang, an abort or an exhausted memory.

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
    use crate::budget::{Budget, Meter};

    fn default_entry(
        cfg: &str,
        root: &str,
        prefix: &str,
        host: &dyn Host,
    ) -> Result<Option<eval::Entry>, String> {
        super::default_entry(cfg, root, prefix, host, &Meter::new(Budget::default()))
    }

    struct NoDisk;
    impl Host for NoDisk {
        fn search(&self, _: SearchKind, key: &str, _: &Meter) -> Result<Option<String>, String> {
            Ok((key == "u1").then(|| "hd0,gpt2".into()))
        }
        fn read(&self, _: &str, path: &str, m: &Meter) -> Result<Option<Vec<u8>>, String> {
            let text = if path.ends_with("grubenv") {
                b"saved_entry=1\nnext_entry=\n".to_vec()
            } else if let Some(n) = path.strip_prefix("/big/") {
                // A file of the size its name says.
                vec![b'#'; n.parse().unwrap_or(0)]
            } else if path == "/self.cfg" {
                b"source /self.cfg\n".to_vec()
            } else {
                return Ok(None);
            };
            m.read(path, text.len() as u64)?;
            Ok(Some(text))
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

    /// Runs `cfg` with the default budget; the error, which must be one line.
    fn over_budget(cfg: &str) -> String {
        let m = Meter::new(Budget::default());
        m.reading("grub.cfg");
        let e = super::default_entry(cfg, "hd0", "(hd0)/boot/grub", &NoDisk, &m).unwrap_err();
        assert!(!e.contains('\n'), "{e}");
        e
    }

    #[test]
    fn every_limit_of_the_budget_ends_in_its_own_error() {
        let b = Budget::default();
        // Ten calls per level, six levels: a million commands, nesting only six deep.
        let wide: String = (0..6)
            .map(|i| {
                format!(
                    "function f{i} {{ {} }}\n",
                    format!("f{}; ", i + 1).repeat(10)
                )
            })
            .collect();
        let e = over_budget(&format!("{wide}f0\n"));
        assert!(e.contains("100000 commands run"), "{e}");
        let grow = format!("a=x\n{}", "a=$a$a\n".repeat(20));
        assert!(over_budget(&grow).contains("65536 bytes for one value"));
        // 32 KiB values, each stored in a new variable: small per value, huge together.
        let vars: String = (0..2000).map(|i| format!("v{i}=\"$a\"\n")).collect();
        let wide = format!("a=x\n{}{vars}", "a=$a$a\n".repeat(15));
        let e = over_budget(&wide);
        assert!(
            e.contains(&format!("{} bytes of values and arguments", b.total_bytes)),
            "{e}"
        );
        assert!(
            e.starts_with("the image's grub.cfg goes over berth's limit"),
            "{e}"
        );
        // Arguments count too, not only variables: one long command line of 32 KiB words.
        let args = format!("a=x\n{}true {}\n", "a=$a$a\n".repeat(15), "$a ".repeat(600));
        assert!(over_budget(&args).contains("bytes of values and arguments"));
        assert!(over_budget("function f { f; }\nf\n").contains("16 nested calls"));
        assert!(over_budget("source /self.cfg\n").contains("16 nested calls"));
        assert!(over_budget(&"if a; then ".repeat(100)).contains("nest deeper than 64"));
        let e = over_budget("source /big/600000\n");
        assert!(
            e.contains("524288 bytes per file (/big/600000 is 600000 bytes)"),
            "{e}"
        );
        let e = over_budget(&"source /big/500000\n".repeat(10));
        assert!(
            e.contains("4194304 bytes of configuration files read"),
            "{e}"
        );
    }

    #[test]
    fn a_generated_config_uses_a_small_part_of_the_budget() {
        let cfg = "load_env\nset default=\"${saved_entry}\"\n\
            function load_video { insmod all_video; }\n\
            menuentry a --id a { load_video; linux /a x }\n\
            submenu s { menuentry 'b' --id bid { search --fs-uuid --set=root u1; linux /b y; initrd /i1 /i2 } }\n"
            .repeat(20);
        let m = Meter::new(Budget::default());
        let e = super::default_entry(&cfg, "hd0", "(hd0)/boot/grub", &NoDisk, &m).unwrap();
        assert!(e.is_some());
        let (steps, bytes, read) = m.used();
        assert!(
            steps < 1000 && bytes < 1 << 20 && read < 1024,
            "{:?}",
            m.used()
        );
    }

    #[test]
    fn long_test_chains_do_not_recurse() {
        // Each `-o` or `!` was a level of recursion: 50000 of them overflowed the stack.
        let ors = format!(
            "if [ {}x = x ]; then set default=1; fi\n",
            "a = b -o ".repeat(50_000)
        );
        let nots = format!("if [ {}x ]; then set default=1; fi\n", "! ".repeat(50_001));
        let menu = "menuentry a { linux /a }\nmenuentry b { linux /b }\n";
        // A budget that lets such lines run (the default one stops them as too big).
        let m = Meter::new(Budget {
            total_bytes: 1 << 30,
            ..Budget::default()
        });
        let default_entry = |cfg: &str, _, _, host| super::default_entry(cfg, "hd0", "", host, &m);
        let e = default_entry(&(ors + menu), "hd0", "", &NoDisk).unwrap();
        assert_eq!(e.unwrap().title, "b");
        let e = default_entry(&(nots + menu), "hd0", "", &NoDisk).unwrap();
        assert_eq!(e.unwrap().title, "a", "an odd number of ! negates");
        for (cond, title) in [
            ("! -z x -a ! a = b -o a = c", "b"),
            ("a = c -o ! ! x", "b"),
            ("! a -a x -o -z x", "a"),
            ("x -a ! x", "a"),
        ] {
            let cfg = format!("if [ {cond} ]; then set default=1; fi\n{menu}");
            let e = default_entry(&cfg, "hd0", "", &NoDisk).unwrap();
            assert_eq!(e.unwrap().title, title, "{cond}");
        }
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
