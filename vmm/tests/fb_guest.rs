//! A tiny long-mode KVM guest for the VNC tests (included with `#[path]`): it draws a known
//! pattern into the framebuffer and echoes the keyboard's scancodes to the serial port.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use vmm::framebuffer::FRAMEBUFFER_BASE;

/// Where the guest's code is loaded.
pub const CODE: u64 = 0x10_0000;
/// Framebuffer width.
pub const W: u32 = 160;
/// Framebuffer height.
pub const H: u32 = 100;
/// Pixel i of the guest's pattern (the guest adds STEP per pixel, starting at 0).
pub const STEP: u32 = 0x0001_0305;

pub fn pattern(i: u32) -> u32 {
    i.wrapping_mul(STEP)
}

/// The guest: fill the framebuffer, print 'P', then echo every byte read from port 0x60 to
/// the serial port and store it in pixel 0; reset after Enter's release (set 1: 0x9c).
pub fn guest() -> Vec<u8> {
    let mut c = Vec::new();
    c.extend_from_slice(&[0x48, 0xbb]); // mov rbx, FRAMEBUFFER_BASE
    c.extend_from_slice(&FRAMEBUFFER_BASE.to_le_bytes());
    c.push(0xb9); // mov ecx, W*H
    c.extend_from_slice(&(W * H).to_le_bytes());
    c.extend_from_slice(&[0x31, 0xc0]); // xor eax, eax
                                        // fill: mov [rbx], eax; add rbx, 4; add eax, STEP; dec ecx; jnz fill
    c.extend_from_slice(&[0x89, 0x03, 0x48, 0x83, 0xc3, 0x04, 0x05]);
    c.extend_from_slice(&STEP.to_le_bytes());
    c.extend_from_slice(&[0xff, 0xc9, 0x75, 0xf1]);
    c.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03, 0xb0, b'P', 0xee]); // mov dx, 0x3f8; out 'P'
    c.extend_from_slice(&[0x48, 0xbb]); // mov rbx, FRAMEBUFFER_BASE
    c.extend_from_slice(&FRAMEBUFFER_BASE.to_le_bytes());
    // poll: in al, 0x64; test al, 1; jz poll; in al, 0x60; out dx, al; movzx eax, al;
    //       mov [rbx], eax; cmp al, 0x9c; jne poll
    c.extend_from_slice(&[0xe4, 0x64, 0xa8, 0x01, 0x74, 0xfa, 0xe4, 0x60, 0xee]);
    c.extend_from_slice(&[0x0f, 0xb6, 0xc0, 0x89, 0x03, 0x3c, 0x9c, 0x75, 0xee]);
    c.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe]); // reset; spin
    c
}

pub fn wait_for(what: &str, deadline: Instant, mut f: impl FnMut() -> bool) {
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
