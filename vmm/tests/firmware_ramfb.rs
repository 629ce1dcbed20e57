//! The firmware's screen on VNC, on this host's /dev/kvm: Debian's SeaBIOS runs Debian's
//! `vgabios-ramfb.bin` (given as fw_cfg `vgaroms/vgabios-ramfb.bin`), which places a
//! 1024x768 XRGB8888 framebuffer in guest RAM through berth's writable fw_cfg file
//! `etc/ramfb`; a disk's MBR then clears the screen and draws through int 10h: a row of
//! coloured cells and a line of text. berth's VNC server shows that guest memory: the test's
//! RFB client gets a 1024x768 screen with the cells and the text where text mode puts them,
//! and black elsewhere. The BIOS's serial mirror (COM1) still gets the text. About 5 s.
//!
//! Needs /usr/share/seabios/bios-256k.bin and vgabios-ramfb.bin (Debian's `seabios`,
//! installed by scripts/setup).

#[path = "vnc_client.rs"]
mod vnc_client;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm::block::{open_disk, DiskFormat, DiskOptions};
use vmm::devices::serial::CaptureOutput;
use vmm::framebuffer::{Framebuffer, FramebufferConfig, GuestView};
use vmm::virtio::block::Block;
use vmm::vnc::{VncConfig, VncServer};
use vmm::{ExitReason, MachineConfig, Vm};
use vnc_client::Rfb;

const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";
const VGA_ROM: &str = "/usr/share/seabios/vgabios-ramfb.bin";
const W: usize = 1024;
const H: usize = 768;
/// Text mode cells of SeaBIOS's ramfb VGA BIOS (its coreboot-style text emulation).
const CELL_W: usize = 8;
const CELL_H: usize = 16;

/// 16-bit boot code loaded at 0x7c00 (assembled from the listing in the comments):
/// int 10h mode 3 (clears the screen), 20 cells of 'X' with attribute 0x4e (yellow on red)
/// at row 10, column 4, "BERTH-RAMFB-OK" by teletype at row 12, column 0, then a marker
/// written straight to COM1 (the test's cue) and `sti; hlt` for ever.
fn mbr() -> Vec<u8> {
    let mut code = vec![
        0xfa, // cli
        0x31, 0xc0, // xor ax, ax
        0x8e, 0xd8, // mov ds, ax
        0xb8, 0x03, 0x00, // mov ax, 0x0003 (set mode 3)
        0xcd, 0x10, // int 0x10
        0xb4, 0x02, // mov ah, 0x02 (set cursor)
        0x30, 0xff, // xor bh, bh
        0xba, 0x04, 0x0a, // mov dx, 0x0a04 (row 10, column 4)
        0xcd, 0x10, // int 0x10
        0xb8, 0x58, 0x09, // mov ax, 0x0958 (write 'X' with attribute)
        0xbb, 0x4e, 0x00, // mov bx, 0x004e (page 0, yellow on red)
        0xb9, 0x14, 0x00, // mov cx, 20
        0xcd, 0x10, // int 0x10
        0xb4, 0x02, // mov ah, 0x02
        0x30, 0xff, // xor bh, bh
        0xba, 0x00, 0x0c, // mov dx, 0x0c00 (row 12, column 0)
        0xcd, 0x10, // int 0x10
        0xbe, 0x4a, 0x7c, // mov si, 0x7c4a (the text)
        0xac, // t: lodsb
        0x84, 0xc0, // test al, al
        0x74, 0x09, // jz m
        0xb4, 0x0e, // mov ah, 0x0e (teletype)
        0xbb, 0x07, 0x00, // mov bx, 0x0007
        0xcd, 0x10, // int 0x10
        0xeb, 0xf2, // jmp t
        0xbe, 0x59, 0x7c, // m: mov si, 0x7c59 (the marker)
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xac, // n: lodsb
        0x84, 0xc0, // test al, al
        0x74, 0x03, // jz h
        0xee, // out dx, al
        0xeb, 0xf8, // jmp n
        0xfb, // h: sti
        0xf4, // hlt
        0xeb, 0xfc, // jmp h
    ];
    assert_eq!(code.len(), 0x4a);
    code.extend_from_slice(b"BERTH-RAMFB-OK\0");
    assert_eq!(code.len(), 0x59);
    code.extend_from_slice(b"\r\nBERTH-RAMFB-DRAWN\r\n\0");
    code.resize(510, 0);
    code.extend_from_slice(&[0x55, 0xaa]);
    code.resize(1 << 20, 0);
    code
}

fn wait_for(what: &str, deadline: Instant, mut f: impl FnMut() -> bool) -> bool {
    while !f() {
        if Instant::now() > deadline {
            eprintln!("timed out waiting for {what}");
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The pixels inside cells `[col, col + cols)` of text row `row`.
fn cells(screen: &[u32], row: usize, col: usize, cols: usize) -> Vec<u32> {
    let mut out = Vec::new();
    for y in row * CELL_H..(row + 1) * CELL_H {
        out.extend_from_slice(&screen[y * W + col * CELL_W..y * W + (col + cols) * CELL_W]);
    }
    out
}

#[test]
fn seabios_text_screen_shows_on_vnc_through_ramfb() {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "THIS TEST NEEDS /dev/kvm: run it on a host with KVM"
    );
    let need = |p: &str| {
        std::fs::read(p)
            .unwrap_or_else(|e| panic!("{p}: {e}: install Debian's seabios (scripts/setup)"))
    };
    let (rom, vga) = (need(SEABIOS), need(VGA_ROM));
    let mut img = tempfile::NamedTempFile::new().unwrap();
    img.write_all(&mbr()).unwrap();
    let console = CaptureOutput::default();
    let debug = CaptureOutput::default();
    let mut vm = Vm::new(
        MachineConfig {
            vcpus: 1,
            memory_mib: 128,
            nested: false,
        },
        Box::new(console.clone()),
    )
    .expect("create VM");
    let backend = open_disk(
        img.path(),
        DiskOptions {
            read_only: true,
            format: Some(DiskFormat::Raw),
            confine_backing: false,
        },
    )
    .unwrap();
    vm.add_virtio(Box::new(Block::new(backend, true, "ramfb-test")))
        .unwrap();
    vm.load_firmware(&rom, Some(Box::new(debug.clone())))
        .unwrap();
    let fb = Arc::new(
        Framebuffer::new(FramebufferConfig {
            width: W as u32,
            height: H as u32,
        })
        .unwrap(),
    );
    vm.add_ramfb(fb.clone(), Some(vga)).unwrap();
    let server = VncServer::start(
        VncConfig::new("127.0.0.1:0".parse().unwrap()),
        fb.clone(),
        Some(vm.keyboard()),
    )
    .unwrap();
    let control = vm.control();
    let memory = vm.memory().clone();
    let run = std::thread::spawn(move || vm.run().unwrap());
    let logs = || {
        format!(
            "--- COM1:\n{}\n--- debug port:\n{}",
            console.text(),
            debug.text()
        )
    };
    let drawn = wait_for(
        "the MBR's marker",
        Instant::now() + Duration::from_secs(60),
        || console.text().contains("BERTH-RAMFB-DRAWN") || run.is_finished(),
    );
    if !drawn || run.is_finished() {
        control.request_exit(ExitReason::Stopped("test over".into()));
        panic!("the MBR did not draw: {:?}\n{}", run.join(), logs());
    }

    // SeaBIOS ran the ROM, which configured etc/ramfb, which berth accepted.
    let view = fb
        .guest_view()
        .unwrap_or_else(|| panic!("no ramfb\n{}", logs()));
    assert_eq!(
        (view.width, view.height, view.stride),
        (W as u32, H as u32, 4096),
        "{view:?}"
    );
    let GuestView { addr, .. } = view;
    assert!(
        addr > 0x10_0000 && addr + 4096 * 768 <= 128 << 20,
        "{addr:#x}"
    );
    let debug_text = debug.text();
    for want in [
        "ramfb: fw_cfg (etc/ramfb) file at slot",
        "Found FB @",
        "sercon: configuring in splitmode",
    ] {
        assert!(debug_text.contains(want), "missing {want:?}\n{}", logs());
    }

    let mut c = Rfb::connect(server.local_addr(), "003.008", None);
    assert_eq!((c.width as usize, c.height as usize), (W, H));
    c.set_encodings(&[16, 6, 0]);
    c.request(false, 0, 0, W as u16, H as u16);
    let update = c.read_update();
    assert_eq!(update.len(), 1);
    let screen = &update[0].pixels;
    assert_eq!(screen.len(), W * H);

    // The 20 cells at row 10, column 4: every pixel red background or yellow glyph.
    let red_cells = cells(screen, 10, 4, 20);
    let mut colours: Vec<u32> = red_cells.clone();
    colours.sort_unstable();
    colours.dedup();
    assert_eq!(colours.len(), 2, "two colours in the cells: {colours:06x?}");
    let (bg, fg) = {
        let count = |c: u32| red_cells.iter().filter(|&&p| p == c).count();
        if count(colours[0]) > count(colours[1]) {
            (colours[0], colours[1])
        } else {
            (colours[1], colours[0])
        }
    };
    let rgb = |p: u32| (p >> 16 & 0xff, p >> 8 & 0xff, p & 0xff);
    let (r, g, b) = rgb(bg);
    assert!(
        r >= 0x80 && g < 0x40 && b < 0x40,
        "background {bg:06x} is not red"
    );
    let (r, g, b) = rgb(fg);
    assert!(
        r >= 0x80 && g >= 0x80 && b < 0x80,
        "glyphs {fg:06x} are not yellow"
    );
    // The same glyph ('X') in each of the 20 cells.
    let cell = |i: usize| -> Vec<u32> {
        (0..CELL_H)
            .flat_map(|y| red_cells[y * 20 * CELL_W + i * CELL_W..][..CELL_W].to_vec())
            .collect()
    };
    assert!((1..20).all(|i| cell(i) == cell(0)), "cells differ");
    assert!(cell(0).contains(&fg) && cell(0).contains(&bg));

    // The teletype text at row 12, "BERTH-RAMFB-OK": glyph pixels in each of its 14 cells
    // (a '-' has the fewest), the same letters drawn alike, different ones not.
    let text = cells(screen, 12, 0, 14);
    let glyph = |i: usize| -> Vec<u32> {
        (0..CELL_H)
            .flat_map(|y| text[y * 14 * CELL_W + i * CELL_W..][..CELL_W].to_vec())
            .collect()
    };
    for i in 0..14 {
        let lit = glyph(i).iter().filter(|&&p| p != 0).count();
        assert!(lit >= 5, "cell {i} of the text has {lit} lit pixels");
    }
    for (a, b) in [(0, 10), (2, 6), (5, 11)] {
        assert_eq!(glyph(a), glyph(b), "cells {a} and {b} hold the same letter");
    }
    for (a, b) in [(0, 1), (1, 2), (3, 4), (12, 13), (5, 0)] {
        assert_ne!(
            glyph(a),
            glyph(b),
            "cells {a} and {b} hold different letters"
        );
    }
    // Everything else is black: mode 3 cleared the screen (SeaBIOS's banner is gone).
    let lit_outside = (0..H)
        .flat_map(|y| (0..W).map(move |x| (x, y)))
        .filter(|&(x, y)| {
            let in_cells =
                (10 * CELL_H..11 * CELL_H).contains(&y) && (4 * CELL_W..24 * CELL_W).contains(&x);
            let in_text = (12 * CELL_H..13 * CELL_H).contains(&y) && x < 14 * CELL_W;
            !in_cells && !in_text && screen[y * W + x] != 0
        })
        .count();
    // The cursor may blink under the text's end; nothing else is drawn.
    assert!(
        lit_outside <= CELL_W * 2,
        "{lit_outside} lit pixels outside the text"
    );

    // Changes reach a waiting viewer as incremental updates of the changed lines only (the
    // mirror's rescan). The guest's own: SeaBIOS's text cursor blinks under the end of the
    // text (row 12's last two pixel lines, at column 14).
    c.request(true, 0, 0, W as u16, H as u16);
    let first = c.read_update(); // a new viewer's first incremental update is everything
    assert_eq!(first.iter().map(|r| usize::from(r.h)).sum::<usize>(), H);
    let cursor_lines = 13 * CELL_H - 2..13 * CELL_H;
    c.request(true, 0, 0, W as u16, H as u16);
    let blink = c.read_update();
    for r in &blink {
        let lines = usize::from(r.y)..usize::from(r.y + r.h);
        assert_eq!(
            lines,
            cursor_lines,
            "only the cursor changes: {:?}",
            (r.y, r.h)
        );
    }
    // And a pixel written into guest memory at the ramfb's address, as the guest would
    // draw: its line arrives (with, perhaps, the cursor's).
    memory
        .write_obj(0x00ff_ffffu32, GuestAddress(addr + 700 * 4096 + 1000 * 4))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "line 700 never came");
        c.request(true, 0, 0, W as u16, H as u16);
        let rects = c.read_update();
        for r in &rects {
            let lines = usize::from(r.y)..usize::from(r.y + r.h);
            assert!(
                lines == (700..701) || lines == cursor_lines,
                "unexpected lines {lines:?}"
            );
        }
        if let Some(r) = rects.iter().find(|r| r.y == 700) {
            assert_eq!(r.pixels[1000], 0xff_ffff);
            break;
        }
    }

    control.request_exit(ExitReason::Stopped("test over".into()));
    let reason = run.join().unwrap();
    assert_eq!(reason, ExitReason::Stopped("test over".into()));
    // The VM is gone: the display no longer reads its memory.
    assert_eq!(fb.guest_view(), None);
    // The serial mirror still has the BIOS's screen and the MBR's text (sercon holds the
    // last character of a teletype run back until its next call, so it comes after the
    // marker, or not at all).
    let com1 = console.text();
    for want in ["SeaBIOS (version", "XXXXXXXXXXXXXXXXXXXX", "BERTH-RAMFB-O"] {
        assert!(com1.contains(want), "missing {want:?}\n{}", logs());
    }
}
