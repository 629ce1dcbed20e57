//! The VNC console on a real KVM VM with a tiny long-mode guest: the guest draws a pattern
//! into the framebuffer's guest-physical address, a viewer reads it back exactly (this
//! crate's raw client and vncdotool); keys typed by both reach the guest through port 0x60
//! (echoed to the serial port), and the guest's later writes show up through KVM's dirty log
//! as small incremental updates.

#[path = "fb_guest.rs"]
mod fb_guest;
#[path = "vnc_client.rs"]
mod vnc_client;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fb_guest::{guest, pattern, wait_for, CODE, H, W};
use vm_memory::{Bytes, GuestAddress};
use vmm::devices::serial::CaptureOutput;
use vmm::framebuffer::{Framebuffer, FramebufferConfig};
use vmm::vnc::{VncConfig, VncServer};
use vmm::{ExitReason, MachineConfig, ResetSource, Vm};
use vnc_client::Rfb;

fn vncdo() -> Option<String> {
    ["/opt/berth-venv/bin/vncdo"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .map(str::to_owned)
        .or_else(|| {
            Command::new("vncdo")
                .arg("--version")
                .output()
                .ok()
                .map(|_| "vncdo".into())
        })
}

/// vncdotool's screenshot, as XRGB values (its PNG decoded with the venv's Pillow).
fn vncdo_capture(vncdo: &str, port: u16, dir: &Path) -> Vec<u32> {
    let png = dir.join("screen.png");
    let st = Command::new(vncdo)
        .args(["-s", &format!("127.0.0.1::{port}"), "capture"])
        .arg(&png)
        .status()
        .unwrap();
    assert!(st.success(), "vncdo capture failed");
    let python = Path::new(vncdo).with_file_name("python3");
    let out = Command::new(&python)
        .args([
            "-c",
            "import sys; from PIL import Image; \
             sys.stdout.buffer.write(Image.open(sys.argv[1]).convert('RGB').tobytes())",
        ])
        .arg(&png)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    out.stdout
        .chunks(3)
        .map(|p| u32::from(p[0]) << 16 | u32::from(p[1]) << 8 | u32::from(p[2]))
        .collect()
}

/// Under vnc_kvm_seccomp (this file as a module of that test) the VNC and vCPU threads run
/// under berth's seccomp filters in kill mode: a forbidden syscall ends the test process with
/// the syscall named.
fn sandboxed() {
    if module_path!().starts_with("vnc_kvm_seccomp") {
        sandbox::init(sandbox::Options {
            mode: sandbox::Mode::Kill,
            switch: None,
        })
        .expect("sandbox init");
    }
}

#[test]
fn tiny_guest_screen_and_keyboard_over_vnc() {
    sandboxed();
    assert!(
        Path::new("/dev/kvm").exists(),
        "THIS TEST NEEDS /dev/kvm: run it on a host with KVM"
    );
    let sink = CaptureOutput::default();
    let config = MachineConfig {
        vcpus: 1,
        memory_mib: 64,
        nested: false,
    };
    let mut vm = Vm::new(config, Box::new(sink.clone())).unwrap();
    let fb = Arc::new(
        Framebuffer::new(FramebufferConfig {
            width: W,
            height: H,
        })
        .unwrap(),
    );
    vm.add_framebuffer(fb.clone()).unwrap();
    let server = VncServer::start(
        VncConfig::new("127.0.0.1:0".parse().unwrap()),
        fb.clone(),
        Some(vm.keyboard()),
    )
    .unwrap();
    vm.memory()
        .write_slice(&guest(), GuestAddress(CODE))
        .unwrap();
    vm.enter_long_mode(GuestAddress(CODE)).unwrap();
    let control = vm.control();
    let run = std::thread::spawn(move || vm.run().unwrap());
    let deadline = Instant::now() + Duration::from_secs(120);
    let serial = || sink.bytes();
    wait_for("the guest's pattern", deadline, || {
        serial().starts_with(b"P")
    });

    let mut c = Rfb::connect(server.local_addr(), "003.008", None);
    c.set_encodings(&[16, 0]);
    c.request(false, 0, 0, W as u16, H as u16);
    let full = c.read_update();
    let want: Vec<u32> = (0..W * H).map(|i| pattern(i) & 0xff_ffff).collect();
    assert_eq!(
        full[0].pixels, want,
        "screen differs from the guest's pattern"
    );

    // The guest's next framebuffer write (pixel 0, after a key) arrives as a small
    // incremental update: KVM's dirty log names only its page.
    c.request(true, 0, 0, W as u16, H as u16);
    let first = c.read_update(); // a new viewer's first incremental update is everything
    assert_eq!(first.iter().map(|r| u32::from(r.h)).sum::<u32>(), H);
    c.request(true, 0, 0, W as u16, H as u16);
    c.key(u32::from(b'a'), true);
    let r = c.read_update();
    assert_eq!((r.len(), r[0].y), (1, 0), "{r:?}");
    assert!(r[0].h <= 7, "more than one page reported dirty: {:?}", r[0]);
    assert_eq!(r[0].pixels[0], 0x1e, "pixel 0 holds the scancode");
    c.key(u32::from(b'a'), false);
    wait_for("the 'a' scancodes", deadline, || serial() == b"P\x1e\x9e");

    let tmp = tempfile::tempdir().unwrap();
    match vncdo() {
        Some(vncdo) => {
            let port = server.local_addr().port();
            let shot = vncdo_capture(&vncdo, port, tmp.path());
            let mut want = want.clone();
            want[0] = 0x9e; // pixel 0 holds the last scancode
            assert_eq!(shot.len(), want.len());
            assert!(shot == want, "vncdotool's screenshot differs");
            let st = Command::new(&vncdo)
                .args([
                    "-s",
                    &format!("127.0.0.1::{port}"),
                    "type",
                    "Hi",
                    "key",
                    "enter",
                ])
                .status()
                .unwrap();
            assert!(st.success());
        }
        None => {
            // Without vncdotool (scripts/setup installs it), type through the raw client.
            eprintln!("NOTE: vncdo not found; typing through the raw client instead");
            for (sym, down) in [(0x48, true), (0x48, false), (0x69, true), (0x69, false)] {
                c.key(sym, down);
            }
            c.key(0xff0d, true);
            c.key(0xff0d, false);
        }
    }
    let reason = run.join().unwrap();
    control.request_exit(ExitReason::Stopped("test over".into()));
    assert_eq!(reason, ExitReason::Reset(ResetSource::I8042));
    // 'H' without Shift held: the server wraps it in Shift; then 'i', then Enter.
    assert_eq!(
        serial(),
        b"P\x1e\x9e\x2a\x23\xaa\xa3\x17\x97\x1c\x9c",
        "scancodes the guest read"
    );
}
