//! `berth console`: a terminal on the running VM's serial console (COM1) through the control
//! socket, as `virtctl console` does; detach with Ctrl-]. The server side streams COM1's output
//! to the client (from the moment it attaches) and types what the client sends into COM1.
//!
//! At most [`MAX_CONSOLES`] consoles are attached at once, so the control socket keeps slots
//! for the liveness probe; output the client does not read fast enough is dropped oldest
//! first ([`vmm::vnc::serial::BACKLOG`] per console), never slowing the guest.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use vmm::vnc::serial::SerialHub;

/// Most consoles attached at once.
pub const MAX_CONSOLES: usize = 2;
/// The detach key (Ctrl-]).
pub const DETACH: u8 = 0x1d;
/// A console write that blocks this long (a client that stopped reading) ends the console.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

static ATTACHED: AtomicUsize = AtomicUsize::new(0);

struct Slot;

impl Drop for Slot {
    fn drop(&mut self) {
        ATTACHED.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves one `console` request on `conn` (the request line already read) until either side
/// closes.
pub(super) fn serve(conn: UnixStream, hub: &Arc<SerialHub>) -> io::Result<()> {
    if ATTACHED.fetch_add(1, Ordering::SeqCst) >= MAX_CONSOLES {
        ATTACHED.fetch_sub(1, Ordering::SeqCst);
        let mut w = &conn;
        let why = format!("{MAX_CONSOLES} consoles are attached already; detach one first");
        return writeln!(w, "{}", json!({ "error": why }));
    }
    let _slot = Slot;
    conn.set_read_timeout(None)?;
    conn.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let out = conn.try_clone()?;
    let sub = hub.subscribe();
    {
        let mut w = &conn;
        writeln!(w, "{}", json!({ "ok": true }))?;
    }
    let s2 = sub.clone();
    let writer = sandbox::spawn("control-console", sandbox::ThreadKind::Control, move || {
        let mut w = &out;
        while let Some(bytes) = s2.next() {
            if w.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = out.shutdown(std::net::Shutdown::Both);
    });
    let mut buf = [0u8; 1024];
    let mut r = &conn;
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(input) = hub.input() {
                    if !input.send(&buf[..n]) {
                        break;
                    }
                }
            }
        }
    }
    hub.unsubscribe(&sub);
    let _ = conn.shutdown(std::net::Shutdown::Both);
    if let Ok(w) = writer {
        let _ = w.join();
    }
    Ok(())
}

/// Reads the reply line byte by byte (console output follows it on the same stream).
fn reply_line(conn: &UnixStream) -> io::Result<Value> {
    let mut line = Vec::new();
    let mut b = [0u8];
    let mut r = conn;
    while line.len() < 4096 {
        if r.read(&mut b)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if b[0] == b'\n' {
            return serde_json::from_slice(&line).map_err(io::Error::other);
        }
        line.push(b[0]);
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, "reply too long"))
}

/// Connects to the control socket `name` and asks for the console.
pub fn connect(name: &str) -> io::Result<Result<UnixStream, String>> {
    let conn = UnixStream::connect_addr(&super::control::address(name)?)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut w = &conn;
    writeln!(w, "{}", json!({ "cmd": "console" }))?;
    let v = reply_line(&conn)?;
    if v["ok"] == true {
        conn.set_read_timeout(None)?;
        Ok(Ok(conn))
    } else {
        Ok(Err(v["error"].as_str().unwrap_or("refused").to_owned()))
    }
}

/// Copies between this terminal and `conn` until Ctrl-] on the terminal or the console closes.
/// Returns whether the user detached.
pub fn pump(
    conn: &UnixStream,
    mut input: impl Read,
    mut output: impl Write,
    input_fd: i32,
) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: input_fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: conn.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds for the duration of the call.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        if fds[1].revents != 0 {
            let mut r = conn;
            match r.read(&mut buf) {
                Ok(0) | Err(_) => return false,
                Ok(n) => {
                    if output
                        .write_all(&buf[..n])
                        .and_then(|()| output.flush())
                        .is_err()
                    {
                        return false;
                    }
                }
            }
        }
        if fds[0].revents != 0 {
            let n = match input.read(&mut buf) {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            let (send, detach) = match buf[..n].iter().position(|&b| b == DETACH) {
                Some(i) => (&buf[..i], true),
                None => (&buf[..n], false),
            };
            let mut w = conn;
            if w.write_all(send).is_err() {
                return false;
            }
            if detach {
                return true;
            }
        }
    }
}

/// `berth console`: exit 0 after detaching or when the console closes, 1 when the entrypoint
/// refuses, 2 when no entrypoint answers.
pub fn attach(name: &str) -> ExitCode {
    let conn = match connect(name) {
        Ok(Ok(c)) => c,
        Ok(Err(why)) => {
            eprintln!("berth: console: {why}");
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!(
                "berth: no berth entrypoint answers on {name}: {e}; is the VM running in this pod?"
            );
            return ExitCode::from(2);
        }
    };
    eprintln!("berth: attached to the VM's serial console; detach with Ctrl-]");
    let detached = {
        let _terminal = crate::console::raw_terminal();
        pump(&conn, io::stdin().lock(), io::stdout().lock(), 0)
    };
    eprintln!(
        "\nberth: {}",
        if detached {
            "detached"
        } else {
            "the console closed"
        }
    );
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::control::{self, Access, State, Status};
    use std::sync::Mutex;
    use std::time::Instant;
    use vm_memory::{Bytes, GuestAddress};
    use vmm::devices::serial::CaptureOutput;
    use vmm::{ExitReason, MachineConfig, Vm};

    /// Prints 'S', then echoes every byte COM1 receives with bit 5 flipped (a <-> A).
    const ECHO_GUEST: [u8; 26] = [
        0x66, 0xba, 0xf8, 0x03, 0xb0, b'S', 0xee, 0x66, 0xba, 0xfd, 0x03, 0xec, 0xa8, 0x01, 0x74,
        0xf7, 0x66, 0xba, 0xf8, 0x03, 0xec, 0x34, 0x20, 0xee, 0xeb, 0xed,
    ];

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !f() {
            assert!(t0.elapsed() < Duration::from_secs(60), "timed out: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn console_round_trips_through_a_guest_and_detaches() {
        assert!(
            std::path::Path::new("/dev/kvm").exists(),
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
        vm.memory()
            .write_slice(&ECHO_GUEST, GuestAddress(0x10_0000))
            .unwrap();
        vm.enter_long_mode(GuestAddress(0x10_0000)).unwrap();
        let control = vm.control();
        let run = std::thread::spawn(move || vm.run().unwrap());
        wait_for("the guest's 'S'", || sink.bytes() == b"S");

        let name = format!("@berth-console-test-{}", std::process::id());
        let status = Arc::new(Mutex::new(Status {
            state: State::Running,
            since: Instant::now(),
            boots: 1,
            vcpus: 1,
            memory_mib: 64,
            disks: vec![],
            net: None,
            lease: None,
            balloon: None,
            metrics: None,
            vnc_clients: None,
        }));
        control::serve_with_console(
            &name,
            status,
            None,
            Access::own_uid_and(None),
            Some(hub.clone()),
        )
        .unwrap();

        // The "terminal": a socket pair standing for stdin, a shared buffer for stdout.
        let (mut keys, term_in) = UnixStream::pair().unwrap();
        let screen = Shared::default();
        let conn = connect(&name).unwrap().unwrap();
        let out = screen.clone();
        let pumping = std::thread::spawn(move || {
            let fd = term_in.as_raw_fd();
            pump(&conn, &term_in, out, fd)
        });
        // Two more consoles: the second one is refused, the probe still answers.
        let second = connect(&name).unwrap().unwrap();
        let third = connect(&name).unwrap();
        assert!(third.unwrap_err().contains("attached already"));
        assert_eq!(control::query(&name).unwrap()["state"], "running");
        drop(second);

        keys.write_all(b"echoHi\r").unwrap();
        wait_for("the echo", || {
            screen.0.lock().unwrap().ends_with(b"ECHOhI\x2d")
        });
        // Ctrl-] detaches; the bytes before it are still sent.
        keys.write_all(b"x\x1d").unwrap();
        assert!(pumping.join().unwrap(), "pump did not report a detach");
        wait_for("the console copy", || sink.bytes() == b"SECHOhI\x2dX");
        // Both console slots come back.
        wait_for("the slots", || ATTACHED.load(Ordering::SeqCst) == 0);
        control.request_exit(ExitReason::Stopped("test over".into()));
        let _ = run.join().unwrap();
    }
}
