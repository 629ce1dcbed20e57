//! Firmware boot on this host's /dev/kvm (kvm_pvm runs SeaBIOS's real-mode and 32-bit code,
//! only Linux is beyond it): Debian's SeaBIOS finds berth's fw_cfg (ports and DMA), takes the
//! e820 map and the ACPI tables through the table-loader, assigns the virtio-blk BAR above
//! ECAM, mirrors its screen on COM1 and boots a disk whose MBR prints a marker and powers the
//! VM off through the ACPI sleep register. About 3 s.
//!
//! A second test boots GRUB the same way: boot.img in the MBR loads core.img from the
//! following sectors through SeaBIOS's int 13h (virtio-blk underneath), and GRUB's own serial
//! driver prints a marker. About 5 s.
//!
//! Needs /usr/share/seabios/bios-256k.bin (Debian's `seabios`) and grub-mkimage with
//! /usr/lib/grub/i386-pc (Debian's `grub-pc-bin`), both installed by scripts/setup.

use std::io::Write;

use vmm::block::{open_disk, DiskFormat, DiskOptions};
use vmm::devices::serial::CaptureOutput;
use vmm::virtio::block::Block;
use vmm::{ExitReason, MachineConfig, Vm};

const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";

/// 16-bit boot code loaded at 0x7c00: with interrupts off (so SeaBIOS's serial console cannot
/// interleave its pending text), write the message to COM1, then SLP_EN|S5 to port 0x600.
fn mbr() -> Vec<u8> {
    let msg = b"\r\nBERTH-MBR-OK\r\n\0";
    let mut code = vec![
        0xfa, // cli
        0xbe, 0x18, 0x7c, // mov si, 0x7c18 (the message)
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xac, // l: lodsb
        0x84, 0xc0, // test al, al
        0x74, 0x03, // jz d
        0xee, // out dx, al
        0xeb, 0xf8, // jmp l
        0xba, 0x00, 0x06, // d: mov dx, 0x600
        0xb0, 0x34, // mov al, SLP_EN | 5 << 2
        0xee, // out dx, al
        0xf4, // h: hlt
        0xeb, 0xfd, // jmp h
    ];
    assert_eq!(code.len(), 0x18);
    code.extend_from_slice(msg);
    code.resize(510, 0);
    code.extend_from_slice(&[0x55, 0xaa]);
    code.resize(1 << 20, 0);
    code
}

/// A disk that boots GRUB: boot.img's code in the MBR (it loads the sector after it, where
/// core.img starts; core.img's first sector loads the rest from sector 2 on, GRUB's defaults),
/// core.img with an embedded configuration that writes a marker through GRUB's serial driver
/// and then SLP_EN|S5 to port 0x600.
fn grub_disk() -> Vec<u8> {
    const GRUB: &str = "/usr/lib/grub/i386-pc";
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("early.cfg");
    std::fs::write(
        &cfg,
        "serial --unit=0 --speed=115200\nterminal_output serial\necho BERTH-GRUB-OK\noutb 0x600 0x34\n",
    )
    .unwrap();
    let core = dir.path().join("core.img");
    let out = std::process::Command::new("grub-mkimage")
        .args(["-O", "i386-pc", "-p", "(hd0)", "-d", GRUB, "-c"])
        .arg(&cfg)
        .arg("-o")
        .arg(&core)
        .args(["biosdisk", "serial", "terminal", "echo", "iorw"])
        .output()
        .unwrap_or_else(|e| {
            panic!("grub-mkimage: {e}: install Debian's grub-pc-bin (scripts/setup)")
        });
    assert!(
        out.status.success(),
        "grub-mkimage: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let boot = std::fs::read(format!("{GRUB}/boot.img")).unwrap();
    let core = std::fs::read(core).unwrap();
    let mut disk = vec![0u8; 1 << 20];
    disk[..440].copy_from_slice(&boot[..440]);
    disk[510..512].copy_from_slice(&[0x55, 0xaa]);
    disk[512..512 + core.len()].copy_from_slice(&core);
    disk
}

fn boot(vcpus: u8, disk: &[u8]) -> (ExitReason, String, String) {
    boot_with(vcpus, disk, true)
}

/// Boots `disk`; the debug port is captured only with `capture_debug` (berth watches it
/// either way).
fn boot_with(vcpus: u8, disk: &[u8], capture_debug: bool) -> (ExitReason, String, String) {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "THESE TESTS NEED /dev/kvm: run them on a host with KVM"
    );
    let rom = std::fs::read(SEABIOS)
        .unwrap_or_else(|e| panic!("{SEABIOS}: {e}: install Debian's seabios (scripts/setup)"));
    let mut img = tempfile::NamedTempFile::new().unwrap();
    img.write_all(disk).unwrap();
    let console = CaptureOutput::default();
    let debug = CaptureOutput::default();
    let mut vm = Vm::new(
        MachineConfig {
            vcpus,
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
    vm.add_virtio(Box::new(Block::new(backend, true, "fw-test")))
        .unwrap();
    let out = capture_debug.then(|| Box::new(debug.clone()) as Box<dyn Write + Send>);
    vm.load_firmware(&rom, out).unwrap();
    let control = vm.control();
    // A firmware that loops must not hang the test (SeaBIOS retries a failed boot after
    // 60 s; berth stops it at once, which the last test checks).
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(50));
        control.request_exit(ExitReason::Stopped("test watchdog".into()));
    });
    let reason = vm.run().unwrap();
    drop(watchdog);
    (reason, console.text(), debug.text())
}

#[test]
fn seabios_boots_the_disk_through_fw_cfg_and_virtio_blk() {
    let (reason, console, debug) = boot(2, &mbr());
    let all = format!("--- COM1:\n{console}\n--- debug port:\n{debug}");
    assert_eq!(reason, ExitReason::PowerOff, "{all}");
    for want in [
        "Found QEMU fw_cfg",
        "QEMU fw_cfg DMA interface supported",
        // etc/e820 read: RAM from 0 and ECAM reserved.
        "qemu/e820: addr 0x0000000000000000 len 0x0000000008000000 [RAM]",
        "qemu/e820: addr 0x00000000e0000000 len 0x0000000000100000 [reserved]",
        // The table-loader installed berth's tables: SeaBIOS finds the FADT through the XSDT.
        "table(50434146)=",
        // BARs placed top-down from the IOAPIC, above ECAM, and used there.
        "bar 0, addr febf8000",
        "using modern (1.0) virtio mode",
        "sercon: using ioport 0x3f8",
        "Found 2 cpu(s)",
        "Booting from Hard Disk...",
    ] {
        assert!(debug.contains(want), "missing {want:?}\n{all}");
    }
    assert!(console.contains("SeaBIOS (version"), "{all}");
    assert!(console.contains("\r\nBERTH-MBR-OK\r\n"), "{all}");
}

#[test]
fn seabios_runs_grub_from_the_disk() {
    let (reason, console, debug) = boot(1, &grub_disk());
    let all = format!("--- COM1:\n{console}\n--- debug port:\n{debug}");
    assert_eq!(reason, ExitReason::PowerOff, "{all}");
    // boot.img's message, printed through the BIOS (sercon), then GRUB's own serial output.
    assert!(console.contains("GRUB loading."), "{all}");
    assert!(console.contains("BERTH-GRUB-OK"), "{all}");
}

/// A disk without boot code (no boot signature): SeaBIOS tries it, says "No bootable
/// device." and would wait a minute and reboot, for ever. berth stops the VM at that line,
/// with SeaBIOS's reason, whether or not anyone reads the debug port.
#[test]
fn a_disk_without_boot_code_stops_the_vm() {
    let (reason, console, _) = boot_with(1, &vec![0u8; 1 << 20], false);
    let ExitReason::NoBootDevice(why) = &reason else {
        panic!("{reason:?}\n--- COM1:\n{console}");
    };
    // (Without the watch, the test's 50 s watchdog would stop it with another reason.)
    assert!(why.contains("not a bootable disk"), "{why}");
}
