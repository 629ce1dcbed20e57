//! Runs a parsed grub.cfg to find the default entry and what it loads.

use std::collections::HashMap;
use std::rc::Rc;

use super::parse::{parse, Seg, Stmt, Word};
use crate::budget::{Meter, OVERHEAD};

/// What `search` looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SearchKind {
    /// `--fs-uuid`.
    FsUuid,
    /// `--label`.
    Label,
    /// `--file` (the default).
    File,
}

/// The image as GRUB sees it: devices named like `hd0,gpt1`.
pub trait Host {
    /// The device holding a file system with this UUID / label / file.
    /// Every file system looked at is charged to `meter` (an image may hold hundreds).
    fn search(&self, kind: SearchKind, key: &str, meter: &Meter) -> Result<Option<String>, String>;
    /// Reads a small file; `path` may start with `(device)`, else it is on device `root`.
    /// `Ok(None)` if it is not there or unreadable; before reading, its size is charged to
    /// `meter` (an error when over the budget).
    fn read(&self, root: &str, path: &str, meter: &Meter) -> Result<Option<Vec<u8>>, String>;
    /// `test -e/-f/-d/-s path`.
    fn test(&self, root: &str, path: &str, op: &str) -> bool;
}

/// A file named by `linux` or `initrd`, with the `$root` device in effect at that moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// The value of `$root`.
    pub root: String,
    /// The path, possibly with a `(device)` prefix.
    pub path: String,
}

/// The chosen menu entry.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    /// Its title.
    pub title: String,
    /// Why it was chosen (`default=0`, `default=gnulinux-simple-...`, `first entry with a
    /// kernel`).
    pub why: String,
    /// The kernel (`linux` command).
    pub linux: Option<Loaded>,
    /// The kernel arguments.
    pub args: Vec<String>,
    /// The initramfs images, in order (`initrd` may name several).
    pub initrds: Vec<Loaded>,
}

/// A menu entry or submenu as defined (its body runs when chosen).
#[derive(Clone)]
pub(super) struct Item {
    pub(super) title: String,
    pub(super) id: Option<String>,
    pub(super) submenu: bool,
    pub(super) body: Rc<Vec<Stmt>>,
}

/// The interpreter's state: variables, functions, the menu defined so far, the work done.
pub(super) struct Interp<'h> {
    pub(super) host: &'h dyn Host,
    /// The budget, shared with every other interpreter of the same search.
    pub(super) meter: &'h Meter,
    pub(super) vars: HashMap<String, String>,
    pub(super) funcs: HashMap<String, Rc<Vec<Stmt>>>,
    pub(super) menu: Vec<Item>,
    pub(super) depth: u32,
    pub(super) capture: Option<Entry>,
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

impl<'h> Interp<'h> {
    /// A copy to run a menu entry or submenu in (GRUB runs them in a new context); the copy of
    /// the variables is charged, as it is the biggest thing a grub.cfg can make repeatedly.
    pub(super) fn child(&self) -> Result<Interp<'h>, String> {
        let vars: u64 = self
            .vars
            .iter()
            .map(|(k, v)| OVERHEAD + (k.len() + v.len()) as u64)
            .sum();
        self.meter
            .bytes(vars + OVERHEAD * self.funcs.len() as u64)?;
        if self.depth >= self.meter.budget().call_depth {
            return Err(self.meter.over(format_args!(
                "{} nested calls, sourced files and submenus",
                self.meter.budget().call_depth
            )));
        }
        Ok(Interp {
            host: self.host,
            meter: self.meter,
            vars: self.vars.clone(),
            funcs: self.funcs.clone(),
            menu: Vec::new(),
            depth: self.depth + 1,
            capture: None,
        })
    }

    pub(super) fn var(&self, name: &str) -> &str {
        self.vars.get(name).map_or("", String::as_str)
    }

    pub(super) fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        self.meter.value(value.len())?;
        self.meter
            .bytes(OVERHEAD + (name.len() + value.len()) as u64)?;
        self.vars.insert(name.to_owned(), value.to_owned());
        Ok(())
    }

    fn expand(&self, s: &str, out: &mut String) -> Result<(), String> {
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            let (name, after) = if let Some(r) = rest.strip_prefix('{') {
                match r.find('}') {
                    Some(j) => (&r[..j], &r[j + 1..]),
                    None => (r, ""),
                }
            } else {
                let n = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                match n {
                    0 if rest.starts_with(['?', '#', '@', '*']) => rest.split_at(1),
                    0 => {
                        out.push('$');
                        continue;
                    }
                    n => rest.split_at(n),
                }
            };
            // Checked before growing, so a word never exceeds the limit even briefly.
            let v = self.var(name);
            self.meter.value(out.len() + v.len())?;
            out.push_str(v);
            rest = after;
        }
        self.meter.value(out.len() + rest.len())?;
        out.push_str(rest);
        Ok(())
    }

    /// Expands words: unquoted words split at white space and vanish when empty.
    fn argv(&self, words: &[Word]) -> Result<Vec<String>, String> {
        let mut argv = Vec::new();
        for w in words {
            let mut s = String::new();
            let mut quoted = false;
            for seg in w {
                match seg {
                    Seg::Plain(t) => self.expand(t, &mut s)?,
                    Seg::Quoted(t) => {
                        quoted = true;
                        self.expand(t, &mut s)?
                    }
                    Seg::Literal(t) => {
                        quoted = true;
                        self.meter.value(s.len() + t.len())?;
                        s.push_str(t)
                    }
                }
            }
            // The word, and its pieces when split: every argument of every command counts.
            self.meter.bytes(OVERHEAD + 2 * s.len() as u64)?;
            if quoted {
                argv.push(s);
            } else {
                argv.extend(s.split_whitespace().map(str::to_owned));
            }
        }
        Ok(argv)
    }

    pub(super) fn run(&mut self, stmts: &[Stmt]) -> Result<bool, String> {
        let mut status = true;
        for s in stmts {
            status = self.exec(s)?;
        }
        Ok(status)
    }

    fn exec(&mut self, stmt: &Stmt) -> Result<bool, String> {
        self.meter.step()?;
        match stmt {
            Stmt::Cmd(words) => {
                let argv = self.argv(words)?;
                if argv.is_empty() {
                    return Ok(true);
                }
                self.command(&argv)
            }
            Stmt::If { arms, otherwise } => {
                for (cond, body) in arms {
                    if self.run(cond)? {
                        return self.run(body);
                    }
                }
                self.run(otherwise)
            }
            Stmt::Menu {
                submenu,
                args,
                body,
            } => {
                let argv = self.argv(args)?;
                let (title, id) = menu_title(&argv);
                let len = title.len() + id.as_ref().map_or(0, String::len);
                self.meter.bytes(OVERHEAD + len as u64)?;
                self.menu.push(Item {
                    title,
                    id,
                    submenu: *submenu,
                    body: body.clone(),
                });
                Ok(true)
            }
            Stmt::Func(name, body) => {
                self.meter.bytes(OVERHEAD + name.len() as u64)?;
                self.funcs.insert(name.clone(), body.clone());
                Ok(true)
            }
            Stmt::Loop => Ok(true),
        }
    }

    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, String>) -> Result<T, String> {
        let max = self.meter.budget().call_depth;
        if self.depth >= max {
            return Err(self.meter.over(format_args!(
                "{max} nested calls, sourced files and submenus"
            )));
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn command(&mut self, argv: &[String]) -> Result<bool, String> {
        let args = &argv[1..];
        let root = self.var("root").to_owned();
        match argv[0].as_str() {
            a if a.contains('=') && is_name(a.split('=').next().unwrap_or("")) => {
                let (k, v) = a.split_once('=').unwrap_or((a, ""));
                self.set(k, v)?;
            }
            "set" => {
                for a in args {
                    if let Some((k, v)) = a.split_once('=') {
                        self.set(k, v)?;
                    }
                }
            }
            "unset" => {
                for a in args {
                    self.vars.remove(a);
                }
            }
            "true" => {}
            "false" | "keystatus" => return Ok(false),
            "[" => {
                let inner = args.strip_suffix(&["]".to_owned()]).unwrap_or(args);
                return self.test(inner);
            }
            "test" => return self.test(args),
            "search" | "search.fs_uuid" | "search.fs_label" | "search.file" => {
                return self.search(&argv[0], args)
            }
            "load_env" => self.load_env(args)?,
            "source" | "." | "configfile" => {
                let Some(path) = args.first() else {
                    return Ok(false);
                };
                if !self.path_ok(path)? {
                    return Ok(false);
                }
                let Some(text) = self.host.read(&root, path, self.meter)? else {
                    return Ok(false);
                };
                let stmts = parse(&String::from_utf8_lossy(&text), self.meter)?;
                if argv[0] == "configfile" {
                    self.menu.clear();
                }
                return self.nested(|me| me.run(&stmts));
            }
            "linux" | "linux16" | "linuxefi" => {
                if let (Some(c), Some(path)) = (self.capture.as_mut(), args.first()) {
                    let len: usize = args.iter().map(String::len).sum();
                    self.meter
                        .bytes(OVERHEAD * args.len() as u64 + len as u64)?;
                    c.linux = Some(Loaded {
                        root,
                        path: path.clone(),
                    });
                    c.args = args[1..].to_vec();
                }
            }
            "initrd" | "initrd16" | "initrdefi" => {
                if let Some(c) = self.capture.as_mut() {
                    let len: usize = args.iter().map(|a| a.len() + root.len()).sum();
                    self.meter
                        .bytes(OVERHEAD * args.len() as u64 + len as u64)?;
                    c.initrds = args
                        .iter()
                        .map(|p| Loaded {
                            root: root.clone(),
                            path: p.clone(),
                        })
                        .collect();
                }
            }
            name => {
                if let Some(body) = self.funcs.get(name).cloned() {
                    let saved: Vec<_> = (1..=9).map(|i| self.vars.remove(&i.to_string())).collect();
                    for (i, a) in args.iter().take(9).enumerate() {
                        self.set(&(i + 1).to_string(), a)?;
                    }
                    let r = self.nested(|me| me.run(&body));
                    for (i, v) in saved.into_iter().enumerate() {
                        match v {
                            Some(v) => self.vars.insert((i + 1).to_string(), v),
                            None => self.vars.remove(&(i + 1).to_string()),
                        };
                    }
                    return r;
                }
            }
        }
        Ok(true)
    }

    /// Charges a path about to be looked up in the image; `false` if it is longer than any
    /// path can be (it is then "not found", as Linux says ENAMETOOLONG).
    fn path_ok(&self, path: &str) -> Result<bool, String> {
        self.meter.bytes(OVERHEAD + path.len() as u64)?;
        Ok(path.len() <= self.meter.budget().path_bytes)
    }

    /// `test`/`[`: `-o` binds looser than `-a`, `!` applies to one primary. Evaluated in a
    /// loop, not by recursion, so a line of thousands of `-o` or `!` cannot exhaust the stack.
    fn test(&self, a: &[String]) -> Result<bool, String> {
        for any in a.split(|x| x == "-o") {
            let mut all = true;
            for primary in any.split(|x| x == "-a") {
                let nots = primary.iter().take_while(|x| *x == "!").count();
                if self.primary(&primary[nots..])? == nots.is_multiple_of(2) {
                    continue;
                }
                all = false;
                break;
            }
            if all {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// One test without `!`, `-a` or `-o`.
    fn primary(&self, a: &[String]) -> Result<bool, String> {
        let root = self.var("root");
        Ok(match a {
            [] => false,
            [s] => !s.is_empty(),
            [op, s] => match op.as_str() {
                "-n" => !s.is_empty(),
                "-z" => s.is_empty(),
                "-e" | "-f" | "-d" | "-s" => self.path_ok(s)? && self.host.test(root, s, op),
                _ => false,
            },
            [x, op, y] => {
                let num = |s: &str| s.parse::<i64>().unwrap_or(0);
                match op.as_str() {
                    "=" | "==" => x == y,
                    "!=" => x != y,
                    "<" => x < y,
                    ">" => x > y,
                    "-eq" => num(x) == num(y),
                    "-ne" => num(x) != num(y),
                    "-lt" => num(x) < num(y),
                    "-le" => num(x) <= num(y),
                    "-gt" => num(x) > num(y),
                    "-ge" => num(x) >= num(y),
                    _ => false,
                }
            }
            _ => false,
        })
    }

    fn search(&mut self, cmd: &str, args: &[String]) -> Result<bool, String> {
        let mut kind = match cmd {
            "search.fs_uuid" => SearchKind::FsUuid,
            "search.fs_label" => SearchKind::Label,
            _ => SearchKind::File,
        };
        let mut var = "root".to_owned();
        let mut positional = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--fs-uuid" | "-u" => kind = SearchKind::FsUuid,
                "--label" | "-l" => kind = SearchKind::Label,
                "--file" | "-f" => kind = SearchKind::File,
                "--set" | "-s" => {}
                "--hint" => {
                    it.next();
                }
                s if s.starts_with("--set=") => var = s["--set=".len()..].to_owned(),
                s if s.starts_with('-') => {}
                s => positional.push(s),
            }
        }
        let Some(key) = positional.first() else {
            return Ok(false);
        };
        if !self.path_ok(key)? {
            return Ok(false);
        }
        if cmd != "search" {
            if let Some(v) = positional.get(1) {
                var = (*v).to_owned();
            }
        }
        match self.host.search(kind, key, self.meter)? {
            Some(dev) => {
                self.set(&var, &dev)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn load_env(&mut self, args: &[String]) -> Result<(), String> {
        let mut file = format!("{}/grubenv", self.var("prefix"));
        let mut only = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "-f" | "--file" => file = it.next().cloned().unwrap_or_default(),
                s if s.starts_with('-') => {}
                s => only.push(s.to_owned()),
            }
        }
        let root = self.var("root").to_owned();
        if !self.path_ok(&file)? {
            return Ok(());
        }
        let Some(text) = self.host.read(&root, &file, self.meter)? else {
            return Ok(());
        };
        for line in String::from_utf8_lossy(&text).lines() {
            if let Some((k, v)) = line.split_once('=') {
                if is_name(k) && (only.is_empty() || only.iter().any(|o| o == k)) {
                    self.set(k, v)?;
                }
            }
        }
        Ok(())
    }
}

/// The title and `--id` of a menuentry from its expanded arguments.
fn menu_title(argv: &[String]) -> (String, Option<String>) {
    let mut title = None;
    let mut id = None;
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--class" | "--users" | "--hotkey" | "--source" => {
                it.next();
            }
            "--id" => id = it.next().cloned(),
            s if s.starts_with("--id=") => id = Some(s[5..].to_owned()),
            s if s.starts_with("--") => {}
            s if title.is_none() => title = Some(s.to_owned()),
            _ => {}
        }
    }
    (title.unwrap_or_default(), id)
}
