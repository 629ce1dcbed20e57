//! The serial console over WebSocket (/serial on the VNC port) with a tiny KVM guest that
//! echoes what it reads from COM1 with the case flipped: a terminal that sends the password
//! first round-trips text through the guest, while the output still reaches the VM's own
//! console writer; a wrong password gets "authentication failed" and nothing else; without a
//! serial hub the path is a 404. Under serial_ws_seccomp the VNC and vCPU threads run under
//! berth's seccomp filters.

#[path = "fb_guest.rs"]
mod fb_guest;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fb_guest::wait_for;
use tungstenite::{Message, WebSocket};
use vm_memory::{Bytes, GuestAddress};
use vmm::devices::serial::CaptureOutput;
use vmm::framebuffer::{Framebuffer, FramebufferConfig};
use vmm::vnc::serial::SerialHub;
use vmm::vnc::{VncConfig, VncServer};
use vmm::{ExitReason, MachineConfig, Vm};

const CODE: u64 = 0x10_0000;
const PASSWORD: &str = "serial-pw";

/// Prints 'S', then echoes every byte COM1 receives with bit 5 flipped (a <-> A).
fn echo_guest() -> Vec<u8> {
    vec![
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'S', 0xee, // mov al, 'S'; out dx, al
        // poll:
        0x66, 0xba, 0xfd, 0x03, // mov dx, 0x3fd (LSR)
        0xec, // in al, dx
        0xa8, 0x01, // test al, 1 (data ready)
        0x74, 0xf7, // jz poll
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xec, // in al, dx
        0x34, 0x20, // xor al, 0x20
        0xee, // out dx, al
        0xeb, 0xed, // jmp poll
    ]
}

fn sandboxed() {
    if module_path!().starts_with("serial_ws_seccomp") {
        sandbox::init(sandbox::Options {
            mode: sandbox::Mode::Kill,
            switch: None,
        })
        .expect("sandbox init");
    }
}

fn connect(addr: SocketAddr) -> tungstenite::Result<WebSocket<TcpStream>> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let url = format!("ws://{addr}/serial");
    tungstenite::client(url.as_str(), s)
        .map(|(ws, _)| ws)
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => panic!("interrupted"),
        })
}

/// Reads binary messages until `want` has arrived in full.
fn read_until(ws: &mut WebSocket<TcpStream>, want: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    while !got.windows(want.len()).any(|w| w == want) {
        match ws.read().unwrap() {
            Message::Binary(b) => got.extend_from_slice(&b),
            Message::Text(t) => panic!("unexpected text {t}"),
            _ => {}
        }
    }
    got
}

#[test]
fn serial_console_round_trips_through_the_guest() {
    sandboxed();
    assert!(
        Path::new("/dev/kvm").exists(),
        "THIS TEST NEEDS /dev/kvm: run it on a host with KVM"
    );
    let sink = CaptureOutput::default();
    let hub = SerialHub::new();
    let config = MachineConfig {
        vcpus: 1,
        memory_mib: 64,
        nested: false,
    };
    let mut vm = Vm::new(config, hub.tee(Box::new(sink.clone()))).unwrap();
    hub.set_input(Some(vm.serial_input()));
    let fb = Arc::new(
        Framebuffer::new(FramebufferConfig {
            width: 16,
            height: 16,
        })
        .unwrap(),
    );
    let mut vnc = VncConfig::new("127.0.0.1:0".parse().unwrap());
    vnc.password = Some(PASSWORD.as_bytes().to_vec());
    let server = VncServer::start(vnc, fb, None).unwrap();
    let addr = server.local_addr();

    // Not served yet: a 404 like any unknown path.
    match connect(addr) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 404),
        other => panic!("expected 404, got {:?}", other.map(|_| ())),
    }
    server.set_serial(Some(hub.clone()));

    vm.memory()
        .write_slice(&echo_guest(), GuestAddress(CODE))
        .unwrap();
    vm.enter_long_mode(GuestAddress(CODE)).unwrap();
    let control = vm.control();
    let run = std::thread::spawn(move || vm.run().unwrap());
    let deadline = Instant::now() + Duration::from_secs(120);
    wait_for("the guest's 'S'", deadline, || sink.bytes() == b"S");

    // A wrong password: one text message, then the connection closes.
    let mut bad = connect(addr).unwrap();
    bad.send(Message::text("wrong")).unwrap();
    assert_eq!(bad.read().unwrap(), Message::text("authentication failed"));
    let mut rest = Vec::new();
    let _ = bad.get_mut().read_to_end(&mut rest);

    // The right one (after the back-off the failure earned), then a round trip.
    let mut term = connect(addr).unwrap();
    term.send(Message::text(PASSWORD)).unwrap();
    term.send(Message::text("echoHi\r")).unwrap();
    let got = read_until(&mut term, b"ECHOhI\x2d");
    assert!(got.ends_with(b"ECHOhI\x2d"), "{got:?}");
    // Binary input works too, and the output still reached the VM's console writer.
    term.send(Message::binary(b"abc".to_vec())).unwrap();
    read_until(&mut term, b"ABC");
    wait_for("the console copy", deadline, || {
        sink.bytes() == b"SECHOhI\x2dABC"
    });
    assert_eq!(server.clients(), 1);
    term.close(None).unwrap();
    let t0 = Instant::now();
    while server.clients() != 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "terminal still counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    control.request_exit(ExitReason::Stopped("test over".into()));
    let _ = run.join().unwrap();
}
