//! KVM tests with tiny guests built here, byte by byte. They run on any /dev/kvm, including the
//! software nested hypervisors (kvm_pvm) that cannot boot Linux: the guests exercise berth's
//! KVM plumbing, port and MMIO dispatch, the serial console, reset paths and SMP start-up.

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};
use vmm::bus::BusDevice;
use vmm::devices::serial::CaptureOutput;
use vmm::{ExitReason, MachineConfig, ResetSource, Vm};

/// Where the 64-bit test code is placed and entered.
const CODE: u64 = 0x10_0000;

/// A tiny x86 assembler for the few instructions these guests use.
#[derive(Default)]
struct Asm(Vec<u8>);

impl Asm {
    fn mov_dx(mut self, v: u16, long_mode: bool) -> Self {
        if long_mode {
            self.0.push(0x66);
        }
        self.0.push(0xba);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn mov_al(mut self, v: u8) -> Self {
        self.0.extend_from_slice(&[0xb0, v]);
        self
    }
    fn out_dx_al(mut self) -> Self {
        self.0.push(0xee);
        self
    }
    fn out_imm_al(mut self, port: u8) -> Self {
        self.0.extend_from_slice(&[0xe6, port]);
        self
    }
    fn mov_rbx(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&[0x48, 0xbb]);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn mov_eax(mut self, v: u32) -> Self {
        self.0.push(0xb8);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// mov [rbx], eax
    fn store_eax(mut self) -> Self {
        self.0.extend_from_slice(&[0x89, 0x03]);
        self
    }
    /// mov eax, [rbx]
    fn load_eax(mut self) -> Self {
        self.0.extend_from_slice(&[0x8b, 0x03]);
        self
    }
    fn print(self, s: &str, long_mode: bool) -> Self {
        let mut a = self.mov_dx(0x3f8, long_mode);
        for b in s.bytes() {
            a = a.mov_al(b).out_dx_al();
        }
        a
    }
    /// Pulses the i8042 reset line.
    fn reset(self) -> Self {
        self.mov_al(0xfe).out_imm_al(0x64)
    }
    fn spin(mut self) -> Self {
        self.0.extend_from_slice(&[0xeb, 0xfe]);
        self
    }
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
}

/// Under kvm_tiny_seccomp (this file as a module of that test), every VM thread runs under
/// berth's seccomp filters in kill mode: a syscall outside a vCPU's allow-list ends the test
/// process with the syscall named (the test thread itself plays the unfiltered host).
fn sandboxed() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if module_path!().starts_with("kvm_tiny_seccomp") {
        ONCE.call_once(|| {
            sandbox::init(sandbox::Options {
                mode: sandbox::Mode::Kill,
                switch: None,
            })
            .expect("sandbox init")
        });
    }
}

fn vm(vcpus: u8) -> (Vm, CaptureOutput) {
    sandboxed();
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "THESE TESTS NEED /dev/kvm: run them on a host with KVM"
    );
    let sink = CaptureOutput::default();
    let vm = Vm::new(
        MachineConfig {
            vcpus,
            memory_mib: 64,
            nested: false,
        },
        Box::new(sink.clone()),
    )
    .expect("create VM");
    (vm, sink)
}

fn boot(mut vm: Vm, code: &[u8]) -> ExitReason {
    vm.memory().write_slice(code, GuestAddress(CODE)).unwrap();
    vm.enter_long_mode(GuestAddress(CODE)).unwrap();
    vm.run().unwrap()
}

#[test]
fn serial_output_reaches_the_console_and_i8042_resets() {
    let (vm, sink) = vm(1);
    let code = Asm::default()
        .print("hello from a tiny guest\n", true)
        .reset()
        .spin();
    let reason = boot(vm, &code.0);
    assert_eq!(sink.text(), "hello from a tiny guest\n");
    assert_eq!(reason, ExitReason::Reset(ResetSource::I8042));
}

/// Whether /dev/kvm is kvm_pvm, a software nested hypervisor that cannot deliver exceptions
/// to guests not built for it.
fn kvm_is_pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

#[test]
fn triple_fault_is_a_reset_and_internal_errors_carry_registers() {
    let (vm, sink) = vm(1);
    // The boot IDT is empty: int3 faults, the fault faults, and the CPU shuts down.
    let code = Asm::default().print("x", true).raw(&[0xcc]).spin();
    let int3_at = CODE + code.0.len() as u64 - 3;
    let reason = boot(vm, &code.0);
    assert_eq!(sink.text(), "x");
    if kvm_is_pvm() {
        // kvm_pvm cannot deliver the exception and reports an internal error instead: berth
        // must turn that into a failure that names the vCPU and its registers.
        eprintln!("NOTE: kvm_pvm host: checking the internal-error path instead of a triple fault");
        let ExitReason::Failed(why) = reason else {
            panic!("expected a failure, got {reason:?}")
        };
        assert!(why.contains("vCPU 0"), "{why}");
        assert!(why.contains("internal error"), "{why}");
        assert!(why.contains(&format!("rip={int3_at:#x}")), "{why}");
        assert!(why.contains("cr3=0x9000"), "{why}");
    } else {
        assert_eq!(reason, ExitReason::Reset(ResetSource::TripleFault));
    }
}

/// MMIO writes seen: (offset, bytes).
type Writes = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

/// Records MMIO writes and answers reads with a fixed byte.
struct MmioProbe(Writes);

impl BusDevice for MmioProbe {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(b'M');
    }
    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        self.0.lock().unwrap().push((offset, data.to_vec()));
    }
}

#[test]
fn mmio_reads_and_writes_reach_the_device() {
    let (vm, sink) = vm(1);
    let writes = Arc::new(Mutex::new(Vec::new()));
    vm.mmio_bus()
        .insert(
            0xd000_0000,
            0x1000,
            Arc::new(Mutex::new(MmioProbe(writes.clone()))),
        )
        .unwrap();
    let code = Asm::default()
        .mov_rbx(0xd000_0010)
        .load_eax() // eax = "MMMM"
        .mov_dx(0x3f8, true)
        .out_dx_al() // prints 'M'
        .mov_eax(0x1234_5678)
        .store_eax()
        .reset()
        .spin();
    let reason = boot(vm, &code.0);
    assert_eq!(reason, ExitReason::Reset(ResetSource::I8042));
    assert_eq!(sink.text(), "M");
    assert_eq!(
        *writes.lock().unwrap(),
        vec![(0x10, 0x1234_5678u32.to_le_bytes().to_vec())]
    );
}

#[test]
fn unclaimed_ports_read_as_all_ones() {
    let (vm, sink) = vm(1);
    // in al, 0x2f8 region (COM2, absent) then echo it: 0xff.
    let code = Asm::default()
        .mov_dx(0x2f8, true)
        .raw(&[0xec]) // in al, dx
        .mov_dx(0x3f8, true)
        .out_dx_al()
        .reset()
        .spin();
    boot(vm, &code.0);
    assert_eq!(sink.bytes(), [0xff]);
}

#[test]
fn two_vcpus_both_run_guest_code() {
    let (vm, sink) = vm(2);
    // The AP starts in real mode at the SIPI vector's page (0x10 -> 0x10000).
    let ap = Asm::default().print("B", false).reset().spin();
    vm.memory()
        .write_slice(&ap.0, GuestAddress(0x10000))
        .unwrap();
    // The BSP enables its LAPIC, then sends INIT and SIPI to APIC id 1, and waits.
    let bsp = Asm::default()
        .print("A", true)
        .mov_rbx(0xfee0_00f0)
        .mov_eax(0x1ff) // spurious vector register: APIC enabled
        .store_eax()
        .mov_rbx(0xfee0_0310)
        .mov_eax(1 << 24) // ICR high: destination APIC id 1
        .store_eax()
        .mov_rbx(0xfee0_0300)
        .mov_eax(0x4500) // INIT, assert
        .store_eax()
        .mov_eax(0x4610) // STARTUP, vector 0x10
        .store_eax()
        .spin();
    let reason = boot(vm, &bsp.0);
    assert_eq!(sink.text(), "AB");
    assert_eq!(reason, ExitReason::Reset(ResetSource::I8042));
}

#[test]
fn stop_from_the_host_interrupts_running_vcpus() {
    let (vm, _sink) = vm(2);
    let control = vm.control();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        control.request_exit(ExitReason::Stopped("test".into()));
    });
    // The BSP spins forever; the AP waits for a SIPI that never comes.
    let reason = boot(vm, &Asm::default().spin().0);
    assert_eq!(reason, ExitReason::Stopped("test".into()));
}

#[test]
fn serial_input_reaches_the_guest() {
    let (vm, sink) = vm(1);
    vm.serial_input().send(b"k");
    // Poll LSR until data ready, read RBR, echo it.
    let code = Asm::default()
        .mov_dx(0x3fd, true)
        .raw(&[0xec, 0xa8, 0x01, 0x74, 0xfb]) // in al,dx; test al,1; jz -5
        .mov_dx(0x3f8, true)
        .raw(&[0xec]) // in al, dx
        .out_dx_al()
        .reset()
        .spin();
    boot(vm, &code.0);
    assert_eq!(sink.text(), "k");
}

#[test]
fn bad_configs_are_refused() {
    let refusal = |vcpus, memory_mib| {
        let config = MachineConfig {
            vcpus,
            memory_mib,
            nested: false,
        };
        let Err(e) = Vm::new(config, Box::new(CaptureOutput::default())) else {
            panic!("{vcpus} vCPUs and {memory_mib} MiB accepted");
        };
        e.to_string()
    };
    let e = refusal(0, 64);
    assert!(e.contains("vCPUs"), "{e}");
    let e = refusal(1, 8);
    assert!(e.contains("too small"), "{e}");
}

#[test]
fn a_jump_to_the_reset_vector_resets_the_vm() {
    let (vm, sink) = vm(2);
    vmm::arch::boot::write_reset_stub(vm.memory()).unwrap();
    // The AP starts in real mode at 0xff000 (SIPI vector 0xff) and far-jumps to the reset
    // vector, as Linux does when it reboots "through the BIOS".
    let ljmp = [0xea, 0xf0, 0xff, 0x00, 0xf0]; // jmp 0xf000:0xfff0
    vm.memory()
        .write_slice(&ljmp, GuestAddress(0xff000))
        .unwrap();
    let bsp = Asm::default()
        .print("A", true)
        .mov_rbx(0xfee0_00f0)
        .mov_eax(0x1ff)
        .store_eax()
        .mov_rbx(0xfee0_0310)
        .mov_eax(1 << 24)
        .store_eax()
        .mov_rbx(0xfee0_0300)
        .mov_eax(0x4500)
        .store_eax()
        .mov_eax(0x46ff)
        .store_eax()
        .spin();
    let reason = boot(vm, &bsp.0);
    assert_eq!(sink.text(), "A");
    assert_eq!(reason, ExitReason::Reset(ResetSource::I8042));
}

#[test]
fn a_guest_flooding_the_i8042_without_reading_stays_bounded() {
    let (vm, sink) = vm(1);
    // 20 000 times "read the controller configuration" (0x20 to port 0x64), never reading
    // the answers; then count what port 0x60 still holds. Each answer used to be queued.
    let bounded = Asm::default().print("bounded\n", true).reset().spin();
    let flood = Asm::default()
        .raw(&[0xb9])
        .raw(&20_000u32.to_le_bytes()) // mov ecx, 20000
        .raw(&[0xb0, 0x20, 0xe6, 0x64, 0xe2, 0xfa]) // 1: mov al,0x20; out 0x64,al; loop 1b
        .raw(&[0xbb, 0, 0, 0, 0]) // mov ebx, 0
        .raw(&[0xe4, 0x64, 0xa8, 0x01, 0x74, 0x06]) // 2: in al,0x64; test al,1; jz 3f
        .raw(&[0xe4, 0x60, 0xff, 0xc3, 0xeb, 0xf4]) // in al,0x60; inc ebx; jmp 2b
        .raw(&[0x83, 0xfb, 17]) // 3: cmp ebx, 17 (16 queued + the output buffer)
        .raw(&[0x77, bounded.0.len() as u8]) // ja 4f
        .raw(&bounded.0)
        .print("unbounded\n", true) // 4:
        .reset()
        .spin();
    let reason = boot(vm, &flood.0);
    assert_eq!(reason, ExitReason::Reset(ResetSource::I8042));
    assert_eq!(sink.text(), "bounded\n");
}
