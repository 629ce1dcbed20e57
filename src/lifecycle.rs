//! The VM's life tied to the process's: SIGTERM or SIGINT presses the guest's ACPI power
//! button, and if the guest has not powered off within the shutdown timeout, the VM is
//! stopped (disks are still flushed) and berth says so.

use std::sync::Arc;
use std::time::Duration;

use vmm::devices::acpi::PowerButton;
use vmm::{ExitReason, VmControl};

/// Default for BERTH_SHUTDOWN_TIMEOUT, in seconds: below the chart's grace period.
pub const DEFAULT_SHUTDOWN_TIMEOUT: u64 = 60;

/// Why the VM was stopped when the guest ignored the power button.
pub const TIMEOUT_REASON: &str = "the guest did not power off within the shutdown timeout";

/// Blocks SIGTERM and SIGINT in this thread and every thread started after it, so that only
/// the signal thread receives them. Call before any other thread starts.
pub fn block_signals() {
    // SAFETY: plain signal-mask manipulation with a properly initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Starts the thread that turns SIGTERM/SIGINT into a power-button press and, after
/// `timeout`, a forced stop.
pub fn watch_signals(button: PowerButton, control: Arc<VmControl>, timeout: Duration) {
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut pressed = false;
            loop {
                let sig = wait_signal();
                if control.exit_requested() {
                    return;
                }
                let name = if sig == libc::SIGTERM {
                    "SIGTERM"
                } else {
                    "SIGINT"
                };
                eprintln!(
                    "berth: {name}: pressing the guest's power button; the VM is stopped in {} s \
                     if the guest has not powered off",
                    timeout.as_secs()
                );
                if button.press().is_err() {
                    control
                        .request_exit(ExitReason::Stopped(format!("{name}; power button failed")));
                    return;
                }
                if !pressed {
                    pressed = true;
                    let c = control.clone();
                    let _ = std::thread::Builder::new()
                        .name("shutdown-timer".into())
                        .spawn(move || {
                            std::thread::sleep(timeout);
                            c.request_exit(ExitReason::Stopped(TIMEOUT_REASON.into()));
                        });
                }
            }
        });
}

fn wait_signal() -> libc::c_int {
    // SAFETY: sigwait on a properly initialised set of blocked signals.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let mut sig = 0;
        while libc::sigwait(&set, &mut sig) != 0 {}
        sig
    }
}

/// The shutdown timeout from BERTH_SHUTDOWN_TIMEOUT (seconds).
pub fn shutdown_timeout_from_env() -> Result<Duration, String> {
    match std::env::var("BERTH_SHUTDOWN_TIMEOUT") {
        Err(_) => Ok(Duration::from_secs(DEFAULT_SHUTDOWN_TIMEOUT)),
        Ok(v) => parse_timeout(&v),
    }
}

/// Parses a timeout in whole seconds (1 to 3600).
pub fn parse_timeout(v: &str) -> Result<Duration, String> {
    match v.trim().parse::<u64>() {
        Ok(s) if (1..=3600).contains(&s) => Ok(Duration::from_secs(s)),
        _ => Err(format!(
            "BERTH_SHUTDOWN_TIMEOUT={v:?} is not a number of seconds from 1 to 3600; set it \
             below the pod's terminationGracePeriodSeconds"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("90").unwrap(), Duration::from_secs(90));
        for bad in ["0", "-1", "abc", "", "3601", "1.5"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }
}
