//! The virtual machine: KVM VM and vCPUs, guest memory, legacy devices, and the run loop that
//! ends with the reason the VM stopped.

use std::io::Write;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, Msrs, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch::boot::{self, BootError, LinuxBoot, LoadedKernel};
use crate::arch::{acpi, cpuid, layout, mptable, msr, regs};
use crate::bus::Bus;
use crate::control::{ExitReason, VmControl};
use crate::devices::acpi::{AcpiPm, PowerButton};
use crate::devices::cmos::{Cmos, CMOS_BASE};
use crate::devices::i8042::{KeyboardInput, COMMAND_PORT, DATA_PORT, I8042, KEYBOARD_IRQ};
use crate::devices::serial::{Serial, SerialInput, COM1_BASE, COM1_IRQ};
use crate::devices::IrqLine;
use crate::framebuffer::Framebuffer;
use crate::irq::KvmIrqRouter;
use crate::pci::access::{PciConfigIo, PciConfigMmio, CONFIG_IO_BASE, CONFIG_IO_LEN};
use crate::pci::{PciBus, SharedPciDevice};
use crate::vcpu;
use crate::virtio::pci::{KvmIoEvents, VirtioPci};
use crate::virtio::VirtioDevice;

/// Smallest guest memory berth accepts: room for the kernel to decompress and run.
pub const MIN_MEMORY_MIB: u64 = 32;

/// What the VM looks like.
#[derive(Clone, Copy, Debug)]
pub struct MachineConfig {
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Offer the guest hardware virtualization (VMX/SVM) so it can run VMs of its own;
    /// hidden when false.
    pub nested: bool,
}

/// Why a VM could not be built or started.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm does not exist.
    #[error("/dev/kvm not found: this host has no KVM (load kvm_intel or kvm_amd, or pass the device to the container)")]
    NoKvm,
    /// /dev/kvm is not accessible.
    #[error("no permission to open /dev/kvm: run as root or join the kvm group")]
    KvmPermission,
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// The operation.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// Bad vCPU count.
    #[error("{0} vCPUs requested; berth supports 1 to {max}", max = mptable::MAX_CPUS)]
    VcpuCount(u8),
    /// This KVM cannot run that many vCPUs.
    #[error("{asked} vCPUs requested but KVM allows at most {max}")]
    KvmVcpuLimit {
        /// Requested.
        asked: u8,
        /// KVM's limit.
        max: usize,
    },
    /// Memory too small.
    #[error("{0} MiB of memory is too small; give the VM at least {MIN_MEMORY_MIB} MiB")]
    MemoryTooSmall(u64),
    /// Memory could not be mapped.
    #[error("cannot allocate {0} MiB of guest memory")]
    MemoryAlloc(u64),
    /// Kernel, initrd or command line problem.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Device setup failed.
    #[error("device setup failed: {0}")]
    Device(String),
    /// A vCPU thread could not be started.
    #[error("cannot start vCPU thread: {0}")]
    Thread(std::io::Error),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// /dev/kvm, opened once per process: every VM (a reboot builds a new one) gets a duplicate,
/// so berth can still create VMs after it dropped the rights to open the device again.
static KVM: std::sync::Mutex<Option<std::fs::File>> = std::sync::Mutex::new(None);

/// Opens /dev/kvm (once) and keeps it for every later VM; call before giving up the rights
/// to open it (sandbox::lockdown). [`Vm::new`] calls it too.
pub fn keep_kvm_open() -> Result<(), VmError> {
    open_kvm().map(drop)
}

fn open_kvm() -> Result<Kvm, VmError> {
    let mut kept = KVM.lock().expect("KVM lock poisoned");
    if kept.is_none() {
        let fd = Kvm::open_with_cloexec(true).map_err(|e| match e.errno() {
            libc::ENOENT | libc::ENODEV => VmError::NoKvm,
            libc::EACCES | libc::EPERM => VmError::KvmPermission,
            _ => VmError::Kvm {
                what: "open /dev/kvm",
                source: e,
            },
        })?;
        // SAFETY: `fd` is a fresh descriptor of /dev/kvm that nothing else owns.
        *kept = Some(unsafe { std::fs::File::from_raw_fd(fd) });
    }
    let dup = kept
        .as_ref()
        .expect("opened above")
        .try_clone()
        .map_err(|e| VmError::Device(format!("cannot duplicate the /dev/kvm fd: {e}")))?;
    // SAFETY: `dup` is a fresh descriptor of /dev/kvm that the new Kvm owns.
    Ok(unsafe { Kvm::from_raw_fd(dup.into_raw_fd()) })
}

/// A configured VM, ready to run.
pub struct Vm {
    fd: Arc<VmFd>,
    pci: Arc<PciBus>,
    router: Arc<KvmIrqRouter>,
    memory: GuestMemoryMmap,
    vcpus: Vec<VcpuFd>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    control: Arc<VmControl>,
    serial: Arc<Mutex<Serial>>,
    power_button: PowerButton,
    config: MachineConfig,
    i8042: Arc<Mutex<I8042>>,
    /// Kept (and so mapped) until `run` returns, after the vCPUs stopped.
    framebuffer: Option<Arc<Framebuffer>>,
    /// Where the vCPUs count their exits, if anywhere.
    metrics: Option<Arc<crate::metrics::VmMetrics>>,
}

impl Vm {
    /// Creates the VM: memory, in-kernel IRQ chip and PIT, legacy devices and vCPUs.
    /// The guest's serial console writes to `console`.
    pub fn new(config: MachineConfig, console: Box<dyn Write + Send>) -> Result<Self, VmError> {
        if config.vcpus == 0 || config.vcpus > mptable::MAX_CPUS {
            return Err(VmError::VcpuCount(config.vcpus));
        }
        if config.memory_mib < MIN_MEMORY_MIB {
            return Err(VmError::MemoryTooSmall(config.memory_mib));
        }
        let kvm = open_kvm()?;
        let max = kvm.get_max_vcpus();
        if usize::from(config.vcpus) > max {
            return Err(VmError::KvmVcpuLimit {
                asked: config.vcpus,
                max,
            });
        }
        let fd = Arc::new(kvm.create_vm().map_err(kvm_err("create VM"))?);
        fd.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
            .map_err(kvm_err("set TSS address"))?;
        fd.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS)
            .map_err(kvm_err("set identity map address"))?;
        fd.create_irq_chip().map_err(kvm_err("create IRQ chip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(kvm_err("create PIT"))?;

        let mem_bytes = config.memory_mib << 20;
        let memory = GuestMemoryMmap::from_ranges(&layout::ram_regions(mem_bytes))
            .map_err(|_| VmError::MemoryAlloc(config.memory_mib))?;
        for (slot, region) in memory.iter().enumerate() {
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping owned by `memory`, which the Vm keeps until
            // every vCPU has stopped.
            unsafe { fd.set_user_memory_region(r) }.map_err(kvm_err("map guest memory"))?;
        }

        let control = Arc::new(VmControl::default());
        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());

        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Device(e.to_string()))?;
        fd.register_irqfd(&irq, COM1_IRQ)
            .map_err(kvm_err("register serial irqfd"))?;
        let serial = Arc::new(Mutex::new(Serial::new(IrqLine(irq), console)));
        let dev_err = |e: crate::bus::BusError| VmError::Device(e.to_string());
        pio.insert(COM1_BASE, 8, serial.clone()).map_err(dev_err)?;
        let kbd_irq =
            EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Device(e.to_string()))?;
        fd.register_irqfd(&kbd_irq, KEYBOARD_IRQ)
            .map_err(kvm_err("register keyboard irqfd"))?;
        let i8042 = Arc::new(Mutex::new(
            I8042::new(control.clone()).with_irq(Box::new(IrqLine(kbd_irq))),
        ));
        pio.insert(DATA_PORT, 1, i8042.clone()).map_err(dev_err)?;
        pio.insert(COMMAND_PORT, 1, i8042.clone())
            .map_err(dev_err)?;
        pio.insert(CMOS_BASE, 2, Arc::new(Mutex::new(Cmos::default())))
            .map_err(dev_err)?;

        let pci = Arc::new(PciBus::new(mmio.clone()));
        pio.insert(
            CONFIG_IO_BASE,
            CONFIG_IO_LEN,
            Arc::new(Mutex::new(PciConfigIo::new(Arc::downgrade(&pci)))),
        )
        .map_err(dev_err)?;
        mmio.insert(
            layout::ECAM_BASE,
            layout::ECAM_SIZE,
            Arc::new(Mutex::new(PciConfigMmio::new(Arc::downgrade(&pci)))),
        )
        .map_err(dev_err)?;
        let router = Arc::new(KvmIrqRouter::new(fd.clone()));

        pio.insert(
            acpi::PM_PORT,
            1,
            Arc::new(Mutex::new(AcpiPm::new(control.clone()))),
        )
        .map_err(dev_err)?;
        let ged = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Device(e.to_string()))?;
        fd.register_irqfd(&ged, acpi::GED_GSI)
            .map_err(kvm_err("register power button irqfd"))?;
        let power_button = PowerButton::new(ged);

        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("get supported CPUID"))?;
        let msrs = Msrs::from_entries(&msr::boot_msrs())
            .map_err(|e| VmError::Device(format!("MSR list: {e:?}")))?;
        let mut vcpus = Vec::with_capacity(config.vcpus.into());
        for id in 0..config.vcpus {
            let vcpu = fd.create_vcpu(id.into()).map_err(kvm_err("create vCPU"))?;
            let mut c = supported.clone();
            cpuid::adjust(c.as_mut_slice(), id, config.vcpus);
            if !config.nested {
                cpuid::hide_virtualization(c.as_mut_slice());
            }
            vcpu.set_cpuid2(&c).map_err(kvm_err("set CPUID"))?;
            // KVM stops at the first MSR it does not know; the rest keep their reset values,
            // which Linux copes with, so a short count is not fatal.
            vcpu.set_msrs(&msrs).map_err(kvm_err("set MSRs"))?;
            vcpu.set_fpu(&regs::boot_fpu())
                .map_err(kvm_err("set FPU"))?;
            let mut lapic = vcpu.get_lapic().map_err(kvm_err("get LAPIC"))?;
            regs::configure_lint(&mut lapic);
            vcpu.set_lapic(&lapic).map_err(kvm_err("set LAPIC"))?;
            vcpus.push(vcpu);
        }

        Ok(Vm {
            fd,
            pci,
            router,
            memory,
            vcpus,
            pio,
            mmio,
            control,
            serial,
            power_button,
            config,
            i8042,
            framebuffer: None,
            metrics: None,
        })
    }

    /// Loads a Linux kernel, initrd and command line, writes the MP and ACPI tables and points
    /// the boot vCPU at the kernel's 64-bit entry.
    pub fn load_linux(&mut self, linux: &LinuxBoot) -> Result<LoadedKernel, VmError> {
        mptable::setup(&self.memory, self.config.vcpus)
            .map_err(|e| VmError::Device(e.to_string()))?;
        let rsdp = acpi::setup(&self.memory, self.config.vcpus)
            .map_err(|e| VmError::Device(e.to_string()))?;
        let kernel = boot::load_linux(&self.memory, linux, Some(rsdp))?;
        if let Some(fb) = &self.framebuffer {
            boot::write_screen_info(&self.memory, &fb.linear())?;
        }
        self.enter_long_mode(kernel.entry)?;
        Ok(kernel)
    }

    /// Puts the boot vCPU in 64-bit mode (boot GDT, identity-mapped low 4 GiB) at `entry`,
    /// with `rsi` pointing at the zero page. The other vCPUs wait for INIT/SIPI.
    pub fn enter_long_mode(&mut self, entry: GuestAddress) -> Result<(), VmError> {
        let bsp = &self.vcpus[0];
        let sregs = bsp.get_sregs().map_err(kvm_err("get special registers"))?;
        let sregs = regs::setup_long_mode(&self.memory, sregs)
            .map_err(|_| VmError::MemoryTooSmall(self.config.memory_mib))?;
        bsp.set_sregs(&sregs)
            .map_err(kvm_err("set special registers"))?;
        bsp.set_regs(&regs::boot_regs(entry.0))
            .map_err(kvm_err("set registers"))?;
        Ok(())
    }

    /// Plugs a virtio device into the PCI bus.
    pub fn add_virtio(&mut self, device: Box<dyn VirtioDevice>) -> Result<(), VmError> {
        let dev = VirtioPci::new(
            device,
            self.memory.clone(),
            &self.pci,
            self.router.clone(),
            Arc::new(KvmIoEvents(self.fd.clone())),
        )
        .map_err(|e| VmError::Device(e.to_string()))?;
        let shared: SharedPciDevice = Arc::new(Mutex::new(dev));
        self.pci
            .add(shared)
            .map_err(|e| VmError::Device(e.to_string()))?;
        Ok(())
    }

    /// Maps a linear framebuffer (at [`crate::framebuffer::FRAMEBUFFER_BASE`], a KVM slot
    /// with dirty logging) and announces it to the kernel as its boot display in the zero
    /// page, before or after [`Vm::load_linux`]. One per VM; the same framebuffer may be
    /// given to the VM that replaces this one (a reboot), so viewers stay connected.
    pub fn add_framebuffer(&mut self, fb: Arc<Framebuffer>) -> Result<(), VmError> {
        if self.framebuffer.is_some() {
            return Err(VmError::Device("the VM already has a framebuffer".into()));
        }
        // SAFETY: the Vm keeps an Arc of the framebuffer until every vCPU has stopped.
        unsafe { fb.attach(self.fd.clone()) }.map_err(kvm_err("map framebuffer"))?;
        boot::write_screen_info(&self.memory, &fb.linear())?;
        self.framebuffer = Some(fb);
        Ok(())
    }

    /// Counts the vCPUs' exits in `metrics` (from the next [`Vm::run`]).
    pub fn set_metrics(&mut self, metrics: Arc<crate::metrics::VmMetrics>) {
        self.metrics = Some(metrics);
    }

    /// A handle that presses keys on the guest's PS/2 keyboard.
    pub fn keyboard(&self) -> KeyboardInput {
        KeyboardInput::new(self.i8042.clone())
    }

    /// Guest memory, for loading payloads.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The KVM VM, for devices that register irqfds and ioeventfds.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The port-I/O bus.
    pub fn pio_bus(&self) -> &Arc<Bus> {
        &self.pio
    }

    /// The MMIO bus.
    pub fn mmio_bus(&self) -> &Arc<Bus> {
        &self.mmio
    }

    /// The stop state, to stop the VM from another thread.
    pub fn control(&self) -> Arc<VmControl> {
        self.control.clone()
    }

    /// A handle that presses the guest's ACPI power button (for a clean shutdown).
    pub fn power_button(&self) -> PowerButton {
        self.power_button.clone()
    }

    /// A handle that types into the serial console.
    pub fn serial_input(&self) -> SerialInput {
        SerialInput::new(self.serial.clone(), self.control.clone())
    }

    /// Runs every vCPU on its own thread until the VM stops, and returns why.
    pub fn run(self) -> Result<ExitReason, VmError> {
        // vCPU threads are kicked out of KVM_RUN with a signal whose handler does nothing.
        extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
        register_signal_handler(SIGRTMIN(), noop)
            .map_err(|e| VmError::Thread(std::io::Error::from_raw_os_error(e.errno())))?;

        let mut threads: Vec<sandbox::Handle<()>> = Vec::with_capacity(self.vcpus.len());
        for (id, fd) in self.vcpus.into_iter().enumerate() {
            let ctx = vcpu::VcpuContext {
                id: id as u8,
                pio: self.pio.clone(),
                mmio: self.mmio.clone(),
                control: self.control.clone(),
                exits: self
                    .metrics
                    .as_ref()
                    .map(|m| m.vcpu(id as u8))
                    .unwrap_or_default(),
            };
            let spawned =
                sandbox::spawn(format!("vcpu{id}"), sandbox::ThreadKind::Vcpu, move || {
                    vcpu::run(fd, ctx)
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    self.control
                        .request_exit(ExitReason::Failed(format!("cannot start vCPU {id}: {e}")));
                    stop_threads(threads);
                    return Err(VmError::Thread(e));
                }
            }
        }
        let reason = self.control.wait();
        stop_threads(threads);
        // Devices stop after the vCPUs, so no request is in flight; disks are flushed here.
        for dev in self.pci.devices() {
            dev.lock().expect("PCI device lock poisoned").shutdown();
        }
        // Guest memory (self.memory) is dropped only here, after every vCPU has stopped.
        drop(self.memory);
        Ok(reason)
    }
}

/// Kicks vCPU threads until they have all left KVM_RUN and ended. The kick repeats because a
/// signal that lands just before a thread enters KVM_RUN is consumed without interrupting it.
fn stop_threads(threads: Vec<sandbox::Handle<()>>) {
    while threads.iter().any(|t| !t.is_finished()) {
        for t in threads.iter().filter(|t| !t.is_finished()) {
            let _ = t.join_handle().kill(SIGRTMIN());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    for t in threads {
        let _ = t.join();
    }
}
