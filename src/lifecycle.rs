//! The VM's life tied to the process's: SIGTERM or SIGINT presses the guest's ACPI power
//! button, and if the guest has not powered off within the shutdown timeout, the VM is
//! stopped (disks are still flushed) and berth says so. The VM being watched can change
//! (the pod entrypoint builds a new one when the guest reboots); once a signal came, no new
//! VM is started.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmm::devices::acpi::PowerButton;
use vmm::{ExitReason, VmControl};

/// Default for BERTH_SHUTDOWN_TIMEOUT, in seconds: below the chart's grace period.
pub const DEFAULT_SHUTDOWN_TIMEOUT: u64 = 60;

/// Why the VM was stopped when the guest ignored the power button.
pub const TIMEOUT_REASON: &str = "the guest did not power off within the shutdown timeout";

/// Shared between the signal thread and whoever runs VMs.
pub struct Lifecycle {
    current: Mutex<Option<(PowerButton, Arc<VmControl>)>>,
    terminating: AtomicBool,
    timeout: Duration,
}

impl Lifecycle {
    /// Blocks SIGTERM and SIGINT (in this thread and every thread started after it) and starts
    /// the thread that handles them. Call before any other thread starts.
    pub fn start(timeout: Duration) -> Arc<Lifecycle> {
        block_signals();
        let lc = Arc::new(Lifecycle {
            current: Mutex::new(None),
            terminating: AtomicBool::new(false),
            timeout,
        });
        let me = lc.clone();
        let _ = sandbox::spawn("signals", sandbox::ThreadKind::Signals, move || me.watch());
        lc
    }

    /// The VM now running; `None` between boots.
    pub fn set_current(&self, vm: Option<(PowerButton, Arc<VmControl>)>) {
        *self.current.lock().expect("lifecycle lock poisoned") = vm;
    }

    /// Presses the running VM's power button; false when no VM runs.
    pub fn press_power_button(&self) -> bool {
        let current = self
            .current
            .lock()
            .expect("lifecycle lock poisoned")
            .clone();
        current.is_some_and(|(button, _)| button.press().is_ok())
    }

    /// Resets the running VM (berth builds it again); false when no VM runs.
    pub fn reset_vm(&self) -> bool {
        let current = self
            .current
            .lock()
            .expect("lifecycle lock poisoned")
            .clone();
        match current {
            Some((_, control)) => {
                control.request_exit(ExitReason::Reset(vmm::ResetSource::Host));
                true
            }
            None => false,
        }
    }

    /// Whether a signal asked berth to stop: no new VM should be started.
    pub fn terminating(&self) -> bool {
        self.terminating.load(Ordering::SeqCst)
    }

    fn watch(self: Arc<Self>) {
        loop {
            let sig = wait_signal();
            let name = if sig == libc::SIGTERM {
                "SIGTERM"
            } else {
                "SIGINT"
            };
            let first = !self.terminating.swap(true, Ordering::SeqCst);
            let current = self
                .current
                .lock()
                .expect("lifecycle lock poisoned")
                .clone();
            let Some((button, control)) = current else {
                eprintln!("berth: {name}: no VM is running; stopping");
                continue;
            };
            eprintln!(
                "berth: {name}: pressing the guest's power button; the VM is stopped in {} s \
                 if the guest has not powered off",
                self.timeout.as_secs()
            );
            if button.press().is_err() {
                control.request_exit(ExitReason::Stopped(format!("{name}; power button failed")));
            }
            if first {
                let me = self.clone();
                let _ = sandbox::spawn("shutdown-timer", sandbox::ThreadKind::Signals, move || {
                    std::thread::sleep(me.timeout);
                    let current = me.current.lock().expect("lifecycle lock poisoned").clone();
                    if let Some((_, c)) = current {
                        c.request_exit(ExitReason::Stopped(TIMEOUT_REASON.into()));
                    }
                });
            }
        }
    }
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: a zeroed sigset_t is initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

fn block_signals() {
    let set = signal_set();
    // SAFETY: plain signal-mask manipulation with an initialised set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

fn wait_signal() -> libc::c_int {
    let set = signal_set();
    let mut sig = 0;
    // SAFETY: sigwait on an initialised set of blocked signals.
    while unsafe { libc::sigwait(&set, &mut sig) } != 0 {}
    sig
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
