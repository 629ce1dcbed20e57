//! The console is secure by default: `berth vm` and `berth pod` refuse to serve VNC on a
//! network address without a password (exit code 15, one line naming the fix) unless told to,
//! and warn loudly when told to. The checks run before anything is built, so these runs need
//! neither KVM nor a kernel.

use std::process::{Command, Output};

fn berth(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run berth")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn berth_vm_refuses_an_open_console_on_a_network_address() {
    let o = berth(
        &["vm", "--kernel", "/nonexistent", "--vnc", "0.0.0.0:0"],
        &[],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(15), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("berth: refusing to serve the VNC console on 0.0.0.0:0 without a password")
            && err.contains("--vnc-insecure")
            && err.contains("--vnc-password-file"),
        "{err}"
    );
    // Loopback needs no password; a password or --vnc-insecure (with a warning) pass the
    // check, and the run goes on to the missing kernel (exit 3).
    let o = berth(
        &["vm", "--kernel", "/nonexistent", "--vnc", "127.0.0.1:0"],
        &[],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let o = berth(
        &["vm", "--kernel", "/nonexistent", "--vnc", "0.0.0.0:0"],
        &[("VNC_PASSWORD", "pw")],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let args = [
        "vm",
        "--kernel",
        "/nonexistent",
        "--vnc",
        "0.0.0.0:0",
        "--vnc-insecure",
    ];
    let o = berth(&args, &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.lines()
            .next()
            .unwrap()
            .contains("WARNING: the VNC console on 0.0.0.0:0 has NO PASSWORD"),
        "{err}"
    );
}

#[test]
fn berth_pod_refuses_an_open_console_before_doing_anything() {
    let root = std::env::temp_dir().join(format!("berth-console-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let socket = format!("@berth-console-test-{}", std::process::id());
    let base = [
        ("HOSTNAME", "vm-0"),
        ("BERTH_ROOT", root.to_str().unwrap()),
        ("BERTH_CONTROL_SOCKET", socket.as_str()),
    ];
    let o = berth(&["pod"], &base);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(15), "{err}");
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with(
            "berth: refusing to serve the VNC console on the pod IP without a password"
        ) && last.contains("VNC_PASSWORD")
            && last.contains("VNC_INSECURE=1"),
        "{err}"
    );
    // Nothing was created under the pod's root.
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
    // With a password (or VNC_INSECURE) the console check passes and berth goes on, to the
    // next check that this bare environment fails: nothing to boot (exit 6, before any
    // network set-up).
    for extra in [
        ("VNC_PASSWORD", "pw"),
        ("VNC_INSECURE", "1"),
        ("NO_VNC", "1"),
    ] {
        let mut env = base.to_vec();
        env.push(extra);
        let o = berth(&["pod"], &env);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(6), "{extra:?}: {err}");
        assert!(err.contains("nothing to boot"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&root);
}
