//! Choosing the entry: `$default` (index, id or title, `>` into submenus), running the chosen
//! entry's body, and falling back to the first entry that loads a kernel.

use std::collections::HashMap;

use super::eval::{Entry, Host, Interp, Item};
use super::parse::parse;
use crate::budget::Meter;

/// Finds an item by number, id or title.
fn find(items: &[Item], key: &str) -> Option<usize> {
    if let Ok(n) = key.trim().parse::<usize>() {
        return (n < items.len()).then_some(n);
    }
    items
        .iter()
        .position(|i| i.id.as_deref() == Some(key))
        .or_else(|| items.iter().position(|i| i.title == key))
}

impl Interp<'_> {
    /// Runs a submenu's body to list its entries.
    fn submenu_items(&mut self, item: &Item) -> Result<Vec<Item>, String> {
        let mut sub = self.child()?;
        sub.run(&item.body)?;
        Ok(sub.menu)
    }

    /// Runs an entry's body and records its linux/initrd commands.
    fn run_entry(&mut self, item: &Item, why: String) -> Result<Entry, String> {
        let mut e = self.child()?;
        e.set("chosen", &item.title)?;
        e.capture = Some(Entry {
            title: item.title.clone(),
            why,
            ..Entry::default()
        });
        e.run(&item.body)?;
        Ok(e.capture.unwrap_or_default())
    }

    /// The first entry (depth first) whose body loads a kernel.
    fn first_with_kernel(&mut self, items: &[Item], depth: u32) -> Result<Option<Entry>, String> {
        for item in items {
            if item.submenu {
                if depth < self.meter.budget().submenu_depth {
                    let sub = self.submenu_items(item)?;
                    if let Some(e) = self.first_with_kernel(&sub, depth + 1)? {
                        return Ok(Some(e));
                    }
                }
                continue;
            }
            let e = self.run_entry(item, "the first entry that loads a kernel".into())?;
            if e.linux.is_some() {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }
}

/// Runs `cfg` (found on device `root`, with `prefix` like `(hd0,gpt1)/boot/grub`) and returns
/// the entry GRUB would boot, or the first one that loads a kernel when the default does not.
/// All work is charged to `meter`; going over its budget is an error.
pub fn default_entry(
    cfg: &str,
    root: &str,
    prefix: &str,
    host: &dyn Host,
    meter: &Meter,
) -> Result<Option<Entry>, String> {
    let stmts = parse(cfg, meter)?;
    let mut vars = HashMap::new();
    for f in [
        "menuentry_id",
        "default_font_path",
        "all_video_module",
        "timeout_style",
        "platform_search_hint",
    ] {
        vars.insert(format!("feature_{f}"), "y".to_owned());
    }
    vars.insert("grub_platform".into(), "pc".into());
    vars.insert("grub_cpu".into(), "i386".into());
    vars.insert("root".into(), root.to_owned());
    vars.insert("prefix".into(), prefix.to_owned());
    let mut it = Interp {
        host,
        meter,
        vars,
        funcs: HashMap::new(),
        menu: Vec::new(),
        depth: 0,
        capture: None,
    };
    it.run(&stmts)?;
    let default = it.var("default").to_owned();
    let mut items = it.menu.clone();
    let mut chosen = None;
    for (n, key) in default.split('>').enumerate() {
        let Some(i) = find(&items, key).or((n == 0).then_some(0)) else {
            break;
        };
        let Some(item) = items.get(i).cloned() else {
            break;
        };
        if item.submenu {
            items = it.submenu_items(&item)?;
            chosen = items.first().cloned();
        } else {
            chosen = Some(item);
            break;
        }
    }
    if let Some(item) = chosen.filter(|i| !i.submenu) {
        let why = if default.is_empty() {
            "the first entry (no default set)".to_owned()
        } else {
            format!("default={default}")
        };
        let e = it.run_entry(&item, why)?;
        if e.linux.is_some() {
            return Ok(Some(e));
        }
    }
    let top = it.menu.clone();
    it.first_with_kernel(&top, 0)
}
