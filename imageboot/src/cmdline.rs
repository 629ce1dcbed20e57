//! Kernel command lines: splitting, and adding the consoles berth needs.

use std::cmp::Ordering;

/// Splits a command line into arguments at white space outside double quotes.
pub fn split(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The device of a `console=` argument (`ttyS0` for `console=ttyS0,115200n8`).
fn console_device(arg: &str) -> Option<&str> {
    let v = arg.strip_prefix("console=")?;
    Some(v.split(',').next().unwrap_or(v))
}

/// Whether a console device is a virtual terminal (`tty0`, `tty1`, ...).
fn is_vt(dev: &str) -> bool {
    dev.strip_prefix("tty")
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

/// The image's arguments with berth's consoles: one virtual terminal (`console=tty0` unless the
/// image names one) and `console=ttyS0,115200` last, so that /dev/console, where the guest's
/// boot messages go, is the serial port berth logs. The image's own `console=ttyS0...` is
/// replaced, duplicates are dropped, every other argument is kept in order.
pub fn with_berth_consoles(image_args: &[String]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut has_vt = false;
    for a in image_args {
        match console_device(a) {
            Some("ttyS0") => continue,
            Some(d) if is_vt(d) => has_vt = true,
            _ => {}
        }
        if console_device(a).is_some() && out.contains(a) {
            continue;
        }
        out.push(a.clone());
    }
    if !has_vt {
        out.push("console=tty0".into());
    }
    out.push("console=ttyS0,115200".into());
    out.join(" ")
}

/// Compares version strings the way humans read them: digit runs numerically
/// (`6.1.0-10` after `6.1.0-9`), everything else byte-wise.
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let na = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let nb = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (da, db) = (trim_zeros(&a[..na]), trim_zeros(&b[..nb]));
                let o = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
                if o != Ordering::Equal {
                    return o;
                }
                (a, b) = (&a[na..], &b[nb..]);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                (a, b) = (&a[1..], &b[1..]);
            }
        }
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let z = d.iter().take_while(|&&c| c == b'0').count();
    &d[z..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(s: &str) -> String {
        with_berth_consoles(&split(s))
    }

    #[test]
    fn consoles() {
        assert_eq!(
            merged("root=UUID=x ro console=tty0 console=ttyS0,115200 earlyprintk=ttyS0,115200"),
            "root=UUID=x ro console=tty0 earlyprintk=ttyS0,115200 console=ttyS0,115200"
        );
        assert_eq!(
            merged("root=LABEL=r ro console=tty1 console=ttyS0"),
            "root=LABEL=r ro console=tty1 console=ttyS0,115200"
        );
        assert_eq!(
            merged("root=/dev/vda1 quiet console=hvc0 console=hvc0"),
            "root=/dev/vda1 quiet console=hvc0 console=tty0 console=ttyS0,115200"
        );
        assert_eq!(merged(""), "console=tty0 console=ttyS0,115200");
        assert_eq!(
            split(r#"a "b c" d="e f""#),
            vec!["a", "\"b c\"", "d=\"e f\""]
        );
    }

    #[test]
    fn versions() {
        let mut v = vec![
            "6.1.0-9-amd64",
            "6.1.0-10-amd64",
            "5.10.0-30-amd64",
            "6.1.0-10-amd64.old",
        ];
        v.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(
            v,
            vec![
                "5.10.0-30-amd64",
                "6.1.0-9-amd64",
                "6.1.0-10-amd64",
                "6.1.0-10-amd64.old"
            ]
        );
        assert_eq!(version_cmp("6.01", "6.1"), Ordering::Equal);
    }
}
