//! The virtual machine: KVM VM and vCPUs, guest memory, legacy devices, and the run loop that
//! ends with the reason the VM stopped.

use std::io::Write;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, Msrs, KVM_MAX_CPUID_ENTRIES, KVM_MEM_READONLY,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch::boot::{self, BootError, LinuxBoot, LoadedKernel};
use crate::arch::{acpi, cpuid, layout, mptable, msr, regs};
use crate::bus::Bus;
use crate::control::{ExitReason, VmControl};
use crate::devices::acpi::{AcpiPm, AcpiPm1, PowerButton};
use crate::devices::cmos::{Cmos, CMOS_BASE};
use crate::devices::fw_cfg::{self, FwCfg};
use crate::devices::i8042::{KeyboardInput, COMMAND_PORT, DATA_PORT, I8042, KEYBOARD_IRQ};
use crate::devices::ramfb;
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
    /// The firmware image cannot be used.
    #[error("firmware: {0}")]
    Firmware(String),
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
    /// The firmware ROM mapped below 4 GiB, kept (and so mapped) until `run` returns.
    firmware: Option<GuestMemoryMmap>,
    /// The fw_cfg device of a firmware boot, for files added after it ([`Vm::add_ramfb`]).
    fw_cfg: Option<Arc<Mutex<FwCfg>>>,
    /// The framebuffer showing this VM's ramfb; it stops reading guest memory when `run`
    /// returns.
    ramfb: Option<Arc<Framebuffer>>,
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
        // The NVRAM says how much memory there is, for a firmware (Linux ignores it).
        let low_ram = mem_bytes.min(layout::MMIO_HOLE_START);
        let cmos = Cmos::with_machine(low_ram, mem_bytes - low_ram, config.vcpus);
        pio.insert(CMOS_BASE, 2, Arc::new(Mutex::new(cmos)))
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
        // The PM1 blocks only a firmware boot's FADT names (arch::acpi says why); a directly
        // booted guest that pokes them can do nothing it could not do through PM_PORT.
        pio.insert(
            acpi::PM1_PORT,
            acpi::PM1_LEN,
            Arc::new(Mutex::new(AcpiPm1::new(control.clone()))),
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
            firmware: None,
            fw_cfg: None,
            ramfb: None,
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

    /// Boots through a firmware instead of a kernel: maps `rom` (a SeaBIOS image) so that it
    /// ends at 4 GiB, read-only where KVM allows, copies its last 256 KiB to 0xC0000-0xFFFFF
    /// (RAM, so the BIOS can write its own data there without chipset shadowing), and adds the
    /// fw_cfg device with the machine's description, e820 map and ACPI tables. The boot vCPU
    /// keeps its reset state: real mode at the reset vector, CS base 0xFFFF0000.
    ///
    /// The BIOS's text screen is mirrored on COM1 (fw_cfg `etc/sercon-port`); its debug
    /// output (port 0x402, QEMU's debugcon) goes to `debug` when given, and is always
    /// watched: when the firmware says it found no bootable device, the VM stops with
    /// [`ExitReason::NoBootDevice`] (SeaBIOS would wait a minute and reboot, for ever).
    pub fn load_firmware(
        &mut self,
        rom: &[u8],
        debug: Option<Box<dyn Write + Send>>,
    ) -> Result<(), VmError> {
        let size = rom.len() as u64;
        if size == 0 || !size.is_multiple_of(0x1_0000) || size > layout::FIRMWARE_MAX_SIZE {
            return Err(VmError::Firmware(format!(
                "a firmware image of {size} bytes is not a ROM (a multiple of 64 KiB up to \
                 {} MiB); give bios-256k.bin from Debian's seabios package",
                layout::FIRMWARE_MAX_SIZE >> 20
            )));
        }
        if self.firmware.is_some() {
            return Err(VmError::Firmware("the VM already has a firmware".into()));
        }
        let base = layout::MMIO_HOLE_END - size;
        let region = GuestMemoryMmap::from_ranges(&[(GuestAddress(base), size as usize)])
            .map_err(|_| VmError::MemoryAlloc(size >> 20))?;
        region
            .write_slice(rom, GuestAddress(base))
            .map_err(|e| VmError::Firmware(e.to_string()))?;
        let readonly = self.fd.check_extension(kvm_ioctls::Cap::ReadonlyMem);
        let host = region.iter().next().expect("one region");
        let r = kvm_userspace_memory_region {
            slot: FIRMWARE_SLOT,
            guest_phys_addr: base,
            memory_size: size,
            userspace_addr: host.as_ptr() as u64,
            flags: if readonly { KVM_MEM_READONLY } else { 0 },
        };
        // SAFETY: `region` is a live mapping the Vm keeps until every vCPU has stopped.
        unsafe { self.fd.set_user_memory_region(r) }.map_err(kvm_err("map firmware"))?;
        self.firmware = Some(region);

        let low = size.min(layout::FIRMWARE_LOW_SIZE);
        let low_at = layout::HIMEM_START - low;
        self.memory
            .write_slice(&rom[(size - low) as usize..], GuestAddress(low_at))
            .map_err(|_| VmError::MemoryTooSmall(self.config.memory_mib))?;

        let fw = firmware_config(self.memory.clone(), self.config)
            .map_err(|e| VmError::Device(e.to_string()))?;
        let dev_err = |e: crate::bus::BusError| VmError::Device(e.to_string());
        let fw = Arc::new(Mutex::new(fw));
        self.pio
            .insert(fw_cfg::PORT_BASE, fw_cfg::PORT_LEN, fw.clone())
            .map_err(dev_err)?;
        self.fw_cfg = Some(fw);
        let con = DebugCon {
            out: debug,
            line: Vec::new(),
            failures: Vec::new(),
            control: self.control.clone(),
        };
        self.pio
            .insert(DEBUGCON_PORT, 1, Arc::new(Mutex::new(con)))
            .map_err(dev_err)?;
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

    /// Gives a firmware boot ([`Vm::load_firmware`] first) QEMU's ramfb display
    /// ([`crate::devices::ramfb`]): the writable fw_cfg file `etc/ramfb`, through which the
    /// firmware places a framebuffer in guest RAM that `fb` (the VNC server's) then shows,
    /// and, when given, SeaBIOS's VGA option ROM `vgabios-ramfb.bin` as
    /// `vgaroms/vgabios-ramfb.bin`, which configures it and draws the BIOS's text screen
    /// there. `fb` is not mapped into the guest and starts black; it may have shown an
    /// earlier VM (a reboot), whose picture is dropped here. When [`Vm::run`] returns, `fb`
    /// stops reading this VM's memory.
    pub fn add_ramfb(
        &mut self,
        fb: Arc<Framebuffer>,
        vga_rom: Option<Vec<u8>>,
    ) -> Result<(), VmError> {
        let Some(fw) = &self.fw_cfg else {
            return Err(VmError::Device(
                "ramfb needs a firmware boot (fw_cfg)".into(),
            ));
        };
        if self.ramfb.is_some() || self.framebuffer.is_some() {
            return Err(VmError::Device("the VM already has a display".into()));
        }
        fb.show_nothing();
        let mut fw = fw.lock().expect("fw_cfg lock poisoned");
        let hook = ramfb::write_hook(fb.clone(), self.memory.clone());
        fw.add_writable_file_with_hook(ramfb::FILE, vec![0; ramfb::CONFIG_LEN], hook)
            .map_err(|e| VmError::Device(e.to_string()))?;
        if let Some(rom) = vga_rom {
            fw.add_file(ramfb::VGA_ROM_FILE, rom, false)
                .map_err(|e| VmError::Device(e.to_string()))?;
        }
        drop(fw);
        self.ramfb = Some(fb);
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
                    if let Some(fb) = &self.ramfb {
                        fb.show_nothing();
                    }
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
        // The display must not keep this VM's memory mapped (a reboot builds a new VM
        // meanwhile) nor show it after the VM is gone.
        if let Some(fb) = &self.ramfb {
            fb.show_nothing();
        }
        // Guest memory (self.memory) is dropped only here, after every vCPU has stopped.
        drop(self.memory);
        Ok(reason)
    }
}

/// KVM memory slot of the firmware ROM (the framebuffer's is 100).
const FIRMWARE_SLOT: u32 = 101;
/// QEMU's debug console port, where SeaBIOS writes its log.
pub const DEBUGCON_PORT: u64 = 0x402;
/// What the debug console port reads as: the firmware's test that the port is there.
const DEBUGCON_PRESENT: u8 = 0xe9;

/// Longest debug console line kept for matching; the rest of a longer line is dropped.
const DEBUGCON_LINE_MAX: usize = 160;
/// Boot failure lines kept for the exit message (SeaBIOS prints one per device it tried).
const DEBUGCON_FAILURES_MAX: usize = 4;

/// The debug console: bytes written to [`DEBUGCON_PORT`] go to a writer when one is given,
/// and lines are watched for the firmware giving up on booting.
struct DebugCon {
    out: Option<Box<dyn Write + Send>>,
    /// The current line (bounded: the guest writes what it likes here).
    line: Vec<u8>,
    /// The last "Boot failed: ..." lines, for the exit message.
    failures: Vec<String>,
    control: Arc<VmControl>,
}

impl DebugCon {
    fn end_line(&mut self) {
        let line = String::from_utf8_lossy(&self.line).trim().to_string();
        self.line.clear();
        if line.starts_with("Boot failed") {
            if self.failures.len() == DEBUGCON_FAILURES_MAX {
                self.failures.remove(0);
            }
            self.failures.push(line);
        } else if line.starts_with("No bootable device") {
            let mut why = self.failures.join("; ");
            if why.is_empty() {
                why = line;
            }
            self.control.request_exit(ExitReason::NoBootDevice(why));
        }
    }
}

impl crate::bus::BusDevice for DebugCon {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(DEBUGCON_PRESENT);
    }
    fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
        if let Some(out) = &mut self.out {
            let _ = out.write_all(data);
            if data.contains(&b'\n') {
                let _ = out.flush();
            }
        }
        for &b in data {
            match b {
                b'\n' => self.end_line(),
                _ if self.line.len() < DEBUGCON_LINE_MAX => self.line.push(b),
                _ => {}
            }
        }
    }
}

/// The fw_cfg device a firmware reads on a machine of `config`: memory size and map, vCPU
/// count, no kernel, no boot menu, the ACPI tables with their loader script, and the text
/// screen mirrored on COM1.
pub fn firmware_config(
    memory: GuestMemoryMmap,
    config: MachineConfig,
) -> Result<FwCfg, fw_cfg::FwCfgError> {
    let mem_bytes = config.memory_mib << 20;
    let mut fw = FwCfg::new(memory);
    fw.set(fw_cfg::keys::RAM_SIZE, mem_bytes.to_le_bytes().to_vec());
    let cpus = u16::from(config.vcpus).to_le_bytes().to_vec();
    fw.set(fw_cfg::keys::NB_CPUS, cpus.clone());
    fw.set(fw_cfg::keys::MAX_CPUS, cpus);
    fw.set(fw_cfg::keys::UUID, vec![0; 16]);
    fw.set(fw_cfg::keys::BOOT_MENU, 0u16.to_le_bytes().to_vec());
    for k in [
        fw_cfg::keys::KERNEL_SIZE,
        fw_cfg::keys::INITRD_SIZE,
        fw_cfg::keys::CMDLINE_SIZE,
    ] {
        fw.set(k, 0u32.to_le_bytes().to_vec());
    }
    let mut e820 = Vec::new();
    for e in layout::firmware_e820_map(mem_bytes) {
        e820.extend_from_slice(&e.addr.to_le_bytes());
        e820.extend_from_slice(&e.size.to_le_bytes());
        e820.extend_from_slice(&(e.kind as u32).to_le_bytes());
    }
    fw.add_file("etc/e820", e820, false)?;
    let tables = acpi::firmware_files(config.vcpus);
    fw.add_file(acpi::TABLES_FILE, tables.tables, false)?;
    fw.add_file(acpi::RSDP_FILE, tables.rsdp, false)?;
    fw.add_file(acpi::LOADER_FILE, tables.loader, false)?;
    fw.add_file("etc/sercon-port", COM1_BASE.to_le_bytes().to_vec(), false)?;
    Ok(fw)
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
