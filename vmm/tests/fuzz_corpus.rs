//! The fuzz harnesses (`vmm::fuzzing`) on stable: every committed corpus file under
//! `vmm/fuzz/corpus/<target>/`, then a few thousand pseudo-random and mutated inputs per
//! target from a fixed seed, so `cargo test` exercises what `scripts/fuzz` explores.
//!
//! `BERTH_WRITE_SEEDS=1 cargo test -p vmm --test fuzz_corpus seed_corpus` rewrites the seed
//! files from `vmm::fuzzing::seeds`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::Rng;
use vmm::fuzzing::{self, seeds, StrictChecks};

/// Random inputs per target.
const RANDOM_INPUTS: usize = 5000;

type Harness = fn(&[u8]);

fn targets() -> [(&'static str, Harness); 7] {
    [
        ("virtio_blk_request", |d| {
            fuzzing::virtio_blk_request(d);
        }),
        ("virtio_net_datapath", |d| {
            fuzzing::virtio_net_datapath(d);
        }),
        ("pci_config", |d| {
            fuzzing::pci_config(d);
        }),
        ("virtio_net_ctrl", |d| {
            fuzzing::virtio_net_ctrl(d);
        }),
        ("virtio_balloon", |d| {
            fuzzing::virtio_balloon(d);
        }),
        ("vnc_ws_session", fuzzing::vnc_ws_session),
        ("virtio_input", |d| {
            fuzzing::virtio_input(d);
        }),
    ]
}

fn seed_inputs(target: &str) -> Vec<(&'static str, Vec<u8>)> {
    match target {
        "virtio_blk_request" => vec![
            ("seed-mixed", seeds::blk_mixed(false)),
            ("seed-mixed-event-idx", seeds::blk_mixed(true)),
            ("seed-indirect-wrap", seeds::blk_indirect()),
        ],
        "virtio_net_datapath" => vec![
            ("seed-tx", seeds::net_tx()),
            ("seed-rx", seeds::net_rx(false)),
            ("seed-rx-mergeable", seeds::net_rx(true)),
        ],
        "virtio_net_ctrl" => vec![("seed-pairs-set", seeds::net_ctrl())],
        "pci_config" => vec![
            ("seed-session", seeds::pci_session(false)),
            ("seed-session-two-devices", seeds::pci_session(true)),
        ],
        "virtio_balloon" => vec![
            ("seed-report", seeds::balloon_report()),
            ("seed-inflate", seeds::balloon_inflate()),
            ("seed-stats", seeds::balloon_stats()),
        ],
        "vnc_ws_session" => vec![("seed-novnc", seeds::vnc_ws_session())],
        "virtio_input" => vec![("seed-click", seeds::input_click())],
        _ => unreachable!(),
    }
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir(target))
        .unwrap_or_else(|e| panic!("corpus of {target}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let d = std::fs::read(&p).unwrap();
            (p, d)
        })
        .collect();
    files.sort();
    files
}

/// A random byte: small values and boundaries more often than uniform bytes.
fn byte(rng: &mut Rng) -> u8 {
    match rng.below(8) {
        0 => 0,
        1 => 0xff,
        2 => rng.below(4) as u8,
        3 => 1 << rng.below(8),
        _ => rng.next() as u8,
    }
}

/// A random input: half fresh bytes, half a corpus file with a few bytes changed.
fn random_input(rng: &mut Rng, corpus: &[(PathBuf, Vec<u8>)]) -> Vec<u8> {
    if corpus.is_empty() || rng.below(2) == 0 {
        let max = if rng.below(4) == 0 { 4096 } else { 160 };
        let len = rng.below_usize(max);
        return (0..len).map(|_| byte(rng)).collect();
    }
    let mut d = corpus[rng.below_usize(corpus.len())].1.clone();
    for _ in 0..1 + rng.below(8) {
        match rng.below(4) {
            0 if !d.is_empty() => {
                let n = d.len();
                d.truncate(rng.below_usize(n));
            }
            1 => {
                let b = byte(rng);
                d.push(b);
            }
            _ if !d.is_empty() => {
                let i = rng.below_usize(d.len().min(512));
                d[i] = byte(rng);
            }
            _ => {}
        }
    }
    d
}

/// Runs `work` on a thread and fails if it takes longer than `secs`: a device loop that spins
/// (a guest-triggered hang) fails the test instead of hanging CI. `at` says where it was.
fn with_deadline(what: &str, secs: u64, work: impl FnOnce(&AtomicUsize) + Send + 'static) {
    let at = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let at2 = at.clone();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&at2)));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => std::panic::resume_unwind(e),
        Err(_) => panic!(
            "{what}: input {} still running after {secs} s (a spinning device loop?)",
            at.load(Ordering::SeqCst)
        ),
    }
}

#[test]
fn corpus_replays() {
    for (name, f) in targets() {
        let files = corpus(name);
        assert!(!files.is_empty(), "{name}: empty corpus");
        for (path, data) in files {
            let what = path.display().to_string();
            with_deadline(&what, 30, move |_| f(&data));
        }
    }
}

fn random_run(index: usize) {
    let (name, f) = targets()[index];
    with_deadline(name, 600, move |at| {
        let files = corpus(name);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ index as u64);
        for i in 0..RANDOM_INPUTS {
            at.store(i, Ordering::SeqCst);
            let input = random_input(&mut rng, &files);
            let r = std::panic::catch_unwind(|| f(&input));
            if r.is_err() {
                panic!("{name}: random input {i} failed: {input:02x?}");
            }
        }
    });
}

#[test]
fn random_virtio_blk_request() {
    random_run(0);
}

#[test]
fn random_virtio_net_datapath() {
    random_run(1);
}

#[test]
fn random_pci_config() {
    random_run(2);
}

#[test]
fn random_virtio_net_ctrl() {
    random_run(3);
}

#[test]
fn random_virtio_balloon() {
    random_run(4);
}

#[test]
fn random_virtio_input() {
    random_run(6);
}

#[test]
fn seed_corpus_is_current() {
    let write = std::env::var_os("BERTH_WRITE_SEEDS").is_some();
    for (name, _) in targets() {
        let dir = corpus_dir(name);
        for (file, data) in seed_inputs(name) {
            let path = dir.join(file);
            if write {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &data).unwrap();
            } else {
                let committed = std::fs::read(&path)
                    .unwrap_or_else(|e| panic!("{}: {e} (BERTH_WRITE_SEEDS=1)", path.display()));
                assert!(committed == data, "{} is stale", path.display());
            }
        }
    }
}

/// The seeds reach the device code, not just the input checks.
#[test]
fn seeds_reach_the_devices() {
    let r = fuzzing::virtio_blk_request(&seeds::blk_mixed(false));
    assert_eq!(r.used, 7);
    // write, read, flush, get-id, discard, write-zeroes succeed; the unknown type is refused.
    assert_eq!(r.statuses, vec![0, 0, 0, 0, 0, 0, 2]);
    assert_eq!(
        fuzzing::virtio_blk_request(&seeds::blk_mixed(true)).statuses,
        r.statuses
    );
    let r = fuzzing::virtio_blk_request(&seeds::blk_indirect());
    assert_eq!((r.used, r.statuses), (1, vec![0]));

    let tx = fuzzing::virtio_net_datapath(&seeds::net_tx());
    assert_eq!(tx.sent, 2);
    let rx = fuzzing::virtio_net_datapath(&seeds::net_rx(false));
    assert_eq!((rx.delivered, rx.dropped), (2, 1));
    let rx = fuzzing::virtio_net_datapath(&seeds::net_rx(true));
    assert_eq!((rx.delivered, rx.dropped), (3, 0));
    let c = fuzzing::virtio_net_ctrl(&seeds::net_ctrl());
    assert_eq!((c.used, c.pairs_set), (3, vec![2]));

    for two in [false, true] {
        let p = fuzzing::pci_config(&seeds::pci_session(two));
        assert_eq!(p.active, 1, "bring-up activates the device");
        assert!(p.bar_moved);
    }

    let r = fuzzing::virtio_balloon(&seeds::balloon_report());
    // 0x1000 of the first range (its partial page stays), 0x2000 across the regions, 0x1000.
    assert_eq!((r.used, r.reported_bytes), (2, 0x4000));
    assert!(r.checked_memory, "{r:?}");
    let r = fuzzing::virtio_balloon(&seeds::balloon_inflate());
    assert_eq!((r.used, r.inflated_pages), (1, 4));
    assert!(r.checked_memory, "{r:?}");
    let r = fuzzing::virtio_balloon(&seeds::balloon_stats());
    assert_eq!(r.used, 1, "the first buffer used, the second held");

    // Press: ABS_X, ABS_Y, BTN_LEFT, SYN; release: ABS_X, ABS_Y, BTN_LEFT, SYN (the guest's
    // input core drops the repeated positions, the device does not).
    let r = fuzzing::virtio_input(&seeds::input_click());
    assert_eq!((r.used, r.events), (8, 8), "{r:?}");
    assert!(r.checked_memory, "{r:?}");
}

/// The seeds also hold under the checks berth does not pass yet in general.
#[test]
fn seeds_pass_strict_checks() {
    let all = StrictChecks {
        ecam_stays: true,
        no_stale_bars: true,
        ioevents_follow: true,
    };
    for two in [false, true] {
        fuzzing::pci_config_checked(&seeds::pci_session(two), all);
    }
}

/// An ECAM dword write of `value` at `reg` of slot 1 (the first virtio-pci function).
fn ecam_write(ops: &mut Vec<u8>, reg: u32, value: u32) {
    ops.push(fuzzing::pci_ops::ECAM);
    ops.extend_from_slice(&(1 << 15 | reg).to_le_bytes());
    ops.push(3 | 8);
    ops.extend_from_slice(&u64::from(value).to_le_bytes());
}

/// Moves BAR 0 to ECAM's address (outside the window: unmapped), then back into the window.
fn bar_via_ecam_address() -> Vec<u8> {
    let mut ops = vec![0];
    ecam_write(&mut ops, 0x10, 0xe000_0000);
    ecam_write(&mut ops, 0x10, 0xc010_0000);
    ops
}

/// Sizes BAR 0 and writes a new address without restoring the old one first (what firmware
/// does when it assigns BARs).
fn sizing_then_new_address() -> Vec<u8> {
    let mut ops = vec![0, fuzzing::pci_ops::SIZE_BAR, 0];
    ops.extend_from_slice(&0xc010_0000u32.to_le_bytes());
    ops
}

/// Moves BAR 0 above the window (unmapped), after bringing the device up.
fn bar_leaves_window() -> Vec<u8> {
    let mut ops = vec![0, fuzzing::pci_ops::BRING_UP, 2];
    ecam_write(&mut ops, 0x10, 0xf000_0000);
    ops
}

fn strict(ecam_stays: bool, no_stale_bars: bool, ioevents_follow: bool) -> StrictChecks {
    StrictChecks {
        ecam_stays,
        no_stale_bars,
        ioevents_follow,
    }
}

/// The known PCI findings (docs/fuzzing.md) hold the checks berth does hold.
#[test]
fn known_pci_findings_pass_default_checks() {
    for input in [
        bar_via_ecam_address(),
        sizing_then_new_address(),
        bar_leaves_window(),
    ] {
        fuzzing::pci_config(&input);
    }
}

/// Finding: `PciBus::move_bar` removes whatever is mapped at the BAR's old address, here ECAM.
#[test]

fn regression_bar_move_unmaps_ecam() {
    fuzzing::pci_config_checked(&bar_via_ecam_address(), strict(true, false, false));
}

/// Finding: after sizing, the BAR's "old" address is the sizing pattern, so moving it leaves
/// the device mapped where it was too.
#[test]

fn regression_sizing_then_move_leaves_stale_mapping() {
    fuzzing::pci_config_checked(&sizing_then_new_address(), strict(false, true, false));
}

/// Finding: a BAR moved out of the window keeps its queue-notify ioeventfds registered.
#[test]

fn regression_ioeventfds_stay_when_bar_leaves_window() {
    fuzzing::pci_config_checked(&bar_leaves_window(), strict(false, false, true));
}
