//! The guest's serial console on this process's standard input: a terminal is switched to raw
//! mode (restored on drop) and Ctrl-A x stops the VM.

use std::io::Read;
use std::sync::Arc;

use vmm::{ExitReason, SerialInput, VmControl};

const CTRL_A: u8 = 0x01;

/// Restores the terminal when dropped.
pub struct Terminal {
    saved: Option<libc::termios>,
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Some(t) = self.saved {
            // SAFETY: restores attributes read from the same descriptor.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}

fn make_raw() -> Option<libc::termios> {
    // SAFETY: isatty/tcgetattr/tcsetattr on fd 0 with a properly sized termios.
    unsafe {
        if libc::isatty(0) != 1 {
            return None;
        }
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(0, &mut t) != 0 {
            return None;
        }
        let saved = t;
        libc::cfmakeraw(&mut t);
        // Keep output post-processing so berth's own messages still start at column 0.
        t.c_oflag |= libc::OPOST;
        libc::tcsetattr(0, libc::TCSANOW, &t);
        Some(saved)
    }
}

/// Switches a terminal on standard input to raw mode until the result is dropped (nothing
/// happens when standard input is not a terminal).
pub fn raw_terminal() -> Terminal {
    Terminal { saved: make_raw() }
}

/// Feeds standard input to the guest on a thread of its own.
pub fn attach_stdin(input: SerialInput, control: Arc<VmControl>) -> Terminal {
    let saved = make_raw();
    let interactive = saved.is_some();
    if interactive {
        eprintln!("berth: console attached; type Ctrl-A x to stop the VM\r");
    }
    let _ = sandbox::spawn("stdin", sandbox::ThreadKind::Console, move || {
        pump(input, control, interactive)
    });
    Terminal { saved }
}

fn pump(input: SerialInput, control: Arc<VmControl>, interactive: bool) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 256];
    let mut escape = false;
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut out = Vec::with_capacity(n);
        for &b in &buf[..n] {
            if interactive && escape {
                escape = false;
                match b {
                    b'x' | b'X' => {
                        control.request_exit(ExitReason::Stopped("Ctrl-A x".into()));
                        return;
                    }
                    CTRL_A => out.push(CTRL_A),
                    other => out.extend_from_slice(&[CTRL_A, other]),
                }
            } else if interactive && b == CTRL_A {
                escape = true;
            } else {
                out.push(b);
            }
        }
        if !input.send(&out) {
            return;
        }
    }
}
