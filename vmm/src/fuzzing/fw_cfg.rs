//! The fw_cfg harness: a firmware's port and DMA accesses against the device, with `etc/ramfb`
//! wired to a framebuffer as berth wires it.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use super::*;
use crate::bus::BusDevice;
use crate::devices::fw_cfg::{self, FwCfg, DMA_ERROR, PORT_BASE};
use crate::devices::ramfb::{self, Outcome};
use crate::framebuffer::{Framebuffer, FramebufferConfig};

/// Operations of the fw_cfg harness (first byte of each).
pub mod fw_cfg_ops {
    /// Select: LE u16 selector written to port 0x510.
    pub const SELECT: u8 = 0;
    /// Port read: u8 count of bytes read from the data port, as one string read.
    pub const PORT_READ: u8 = 1;
    /// DMA: LE u64 address of the control structure, written as the two big-endian halves.
    pub const DMA: u8 = 2;
    /// Raw access: u8 port offset (mod 12), u8 length (1, 2, 4 or 8), LE u64 value; written
    /// when the length byte's top bit is clear, read otherwise.
    pub const RAW: u8 = 3;
}

/// Names, sizes and writability of the files the harness's device holds (besides the
/// directory and the legacy keys). Writes to `etc/ramfb` go through berth's ramfb code to a
/// 64x32 framebuffer.
pub const FW_CFG_FILES: [(&str, usize, bool); 3] = [
    ("etc/e820", 40, false),
    ("etc/acpi/tables", 3000, false),
    ("etc/ramfb", 28, true),
];

/// What a fw_cfg run did, so tests can tell that seeds reach the device.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FwCfgReport {
    /// DMA transfers that reported success.
    pub dma_ok: u16,
    /// DMA transfers that reported an error.
    pub dma_err: u16,
    /// Bytes read through the data port.
    pub port_bytes: u32,
    /// ramfb configurations shown.
    pub ramfb_shown: u16,
    /// ramfb configurations ignored.
    pub ramfb_ignored: u16,
}

fn file_contents(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j) as u8 | 1).collect()
}

/// fw_cfg: a sequence of port and DMA operations, then the guest memory image.
///
/// Input: byte 0 the number of operations N (at most 64); N operations ([`fw_cfg_ops`]);
/// the rest is the guest memory image from address 0 ([`MEM_SIZE`] bytes, two regions).
///
/// Checks: no panic; at the end, read-only files are unchanged and no file changed size; a DMA whose
/// control structure is in memory leaves a control word of 0 or [`DMA_ERROR`]; a DMA changes
/// no memory outside its control word and the `length` bytes at its target; after every
/// operation, a ramfb picture shown lies in guest memory and within the limits, and the
/// framebuffer's rescan of it runs.
pub fn fw_cfg(data: &[u8]) -> FwCfgReport {
    let mut input = Input(data);
    let n = input.u8().min(64);
    let mut ops = Vec::new();
    for _ in 0..n {
        let op = input.u8() % 4;
        let arg = match op {
            fw_cfg_ops::SELECT => u64::from(input.u16()),
            fw_cfg_ops::PORT_READ => u64::from(input.u8()),
            fw_cfg_ops::DMA => input.u64(),
            _ => {
                let off = u64::from(input.u8() % 12);
                let len = u64::from(input.u8());
                let v = input.u64();
                ops.push((op, off | len << 8, v));
                continue;
            }
        };
        ops.push((op, arg, 0));
    }
    let mem = guest_memory(input.rest());
    let mut dev = FwCfg::new(mem.clone());
    let fb = Arc::new(
        Framebuffer::new(FramebufferConfig {
            width: 64,
            height: 32,
        })
        .expect("framebuffer"),
    );
    let (shown, ignored) = (Arc::new(AtomicU16::new(0)), Arc::new(AtomicU16::new(0)));
    for (i, (name, len, writable)) in FW_CFG_FILES.iter().enumerate() {
        let contents = file_contents(i, *len);
        if *name == ramfb::FILE {
            let (m, f, s, g) = (mem.clone(), fb.clone(), shown.clone(), ignored.clone());
            let hook = Box::new(move |b: &[u8]| {
                let counter = match ramfb::apply(b, &m, &f) {
                    Outcome::Shown(_) => &s,
                    Outcome::Ignored(_) => &g,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            });
            dev.add_writable_file_with_hook(name, contents, hook)
        } else {
            dev.add_file(name, contents, *writable)
        }
        .expect("harness files");
    }
    dev.set(fw_cfg::keys::RAM_SIZE, (64u64 << 20).to_le_bytes().to_vec());

    let mut report = FwCfgReport::default();
    for (op, arg, v) in ops {
        match op {
            fw_cfg_ops::SELECT => dev.write(PORT_BASE, 0, &(arg as u16).to_le_bytes()),
            fw_cfg_ops::PORT_READ => {
                let mut b = vec![0u8; arg as usize];
                dev.read(PORT_BASE, 1, &mut b);
                report.port_bytes += arg as u32;
            }
            fw_cfg_ops::DMA => {
                let mut access = [0u8; 16];
                let in_mem = mem.read_slice(&mut access, GuestAddress(arg)).is_ok();
                // Memory is compared only for transfers that can run: the others return
                // before touching anything (the unit tests check that), and copying memory
                // for each of them would slow the random runs tenfold.
                let before = in_mem.then(|| read_regions(&mem, &[(0, MEM_SIZE)]));
                dev.write(PORT_BASE, 4, &((arg >> 32) as u32).to_be_bytes());
                dev.write(PORT_BASE, 8, &(arg as u32).to_be_bytes());
                let Some(before) = before else { continue };
                let after = read_regions(&mem, &[(0, MEM_SIZE)]);
                let len = u64::from(u32::from_be_bytes(access[4..8].try_into().unwrap()));
                let target = u64::from_be_bytes(access[8..16].try_into().unwrap());
                let mut word = [0u8; 4];
                mem.read_slice(&mut word, GuestAddress(arg)).unwrap();
                let result = u32::from_be_bytes(word);
                // The control word is written last, so it shows the result even when the
                // transfer's target overlapped it.
                assert!(
                    result == 0 || result == DMA_ERROR,
                    "control word {result:#x}"
                );
                if result == 0 {
                    report.dma_ok += 1;
                } else {
                    report.dma_err += 1;
                }
                if before == after {
                    continue;
                }
                for (a, (b, c)) in before.iter().zip(&after).enumerate() {
                    let a = a as u64;
                    let in_control = a >= arg && a < arg + 4;
                    let in_target = a >= target && a - target < len;
                    assert!(
                        b == c || in_control || in_target,
                        "DMA changed byte {a:#x} outside its control word and target"
                    );
                }
            }
            _ => {
                let (off, len) = (arg & 0xff, (arg >> 8) & 0x7f);
                let len = [1usize, 2, 4, 8][(len % 4) as usize];
                if (arg >> 8) & 0x80 == 0 {
                    dev.write(PORT_BASE, off, &v.to_le_bytes()[..len]);
                } else {
                    let mut b = vec![0u8; len];
                    dev.read(PORT_BASE, off, &mut b);
                }
            }
        }
        if let Some(v) = fb.guest_view() {
            let len = u64::from(v.stride) * u64::from(v.height - 1) + u64::from(v.width) * 4;
            assert!(
                (1..=ramfb::MAX_WIDTH).contains(&v.width)
                    && (1..=ramfb::MAX_HEIGHT).contains(&v.height)
                    && v.stride >= v.width * 4
                    && v.stride <= ramfb::MAX_STRIDE
                    && mem.check_range(GuestAddress(v.addr), len as usize, Permissions::Read),
                "ramfb view {v:?} outside the rules or memory"
            );
            fb.take_dirty_lines();
        }
    }
    report.ramfb_shown = shown.load(Ordering::Relaxed);
    report.ramfb_ignored = ignored.load(Ordering::Relaxed);
    for (i, (name, len, writable)) in FW_CFG_FILES.iter().enumerate() {
        let now = dev.file(name).expect("file stays");
        assert_eq!(now.len(), *len, "{name} changed size");
        if !writable {
            assert!(now == file_contents(i, *len), "read-only {name} changed");
        }
    }
    report
}
