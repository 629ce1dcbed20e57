//! Interrupt routing: GSIs above the IOAPIC's pins carry MSI messages, delivered by KVM when
//! their irqfd is signalled.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::mptable::IOAPIC_PINS;

/// An MSI message: where the device writes and what.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Address, low 32 bits.
    pub addr_lo: u32,
    /// Address, high 32 bits.
    pub addr_hi: u32,
    /// Data.
    pub data: u32,
}

/// What devices need from the interrupt controller.
pub trait MsiRouter: Send + Sync {
    /// A fresh GSI for an MSI vector.
    fn allocate_gsi(&self) -> std::io::Result<u32>;
    /// Routes `gsi` to `msg`.
    fn set_msi(&self, gsi: u32, msg: MsiMessage) -> std::io::Result<()>;
    /// Makes signalling `fd` raise `gsi`.
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> std::io::Result<()>;
    /// Undoes [`MsiRouter::register_irqfd`]: signals on `fd` then wait in its counter.
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> std::io::Result<()>;
}

/// KVM's GSI routing table, owned by berth: the default ISA/IOAPIC routes plus MSI routes.
pub struct KvmIrqRouter {
    vm: Arc<VmFd>,
    state: Mutex<State>,
}

struct State {
    next_gsi: u32,
    msi: BTreeMap<u32, MsiMessage>,
}

fn io_err(e: kvm_ioctls::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.errno())
}

impl KvmIrqRouter {
    /// A router for `vm`; GSIs for MSIs start after the IOAPIC's pins.
    pub fn new(vm: Arc<VmFd>) -> Self {
        KvmIrqRouter {
            vm,
            state: Mutex::new(State {
                next_gsi: u32::from(IOAPIC_PINS),
                msi: BTreeMap::new(),
            }),
        }
    }

    /// The full routing table: KVM replaces, never merges, so the defaults are repeated.
    fn table(state: &State) -> Vec<kvm_irq_routing_entry> {
        let mut v = Vec::new();
        for gsi in 0..u32::from(IOAPIC_PINS) {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_IRQCHIP,
                ..Default::default()
            };
            e.u.irqchip.irqchip = KVM_IRQCHIP_IOAPIC;
            e.u.irqchip.pin = gsi;
            v.push(e);
            if gsi < 16 {
                let mut p = e;
                p.u.irqchip.irqchip = if gsi < 8 {
                    KVM_IRQCHIP_PIC_MASTER
                } else {
                    KVM_IRQCHIP_PIC_SLAVE
                };
                p.u.irqchip.pin = gsi % 8;
                v.push(p);
            }
        }
        for (gsi, m) in &state.msi {
            let mut e = kvm_irq_routing_entry {
                gsi: *gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = m.addr_lo;
            e.u.msi.address_hi = m.addr_hi;
            e.u.msi.data = m.data;
            v.push(e);
        }
        v
    }
}

impl MsiRouter for KvmIrqRouter {
    fn allocate_gsi(&self) -> std::io::Result<u32> {
        let mut s = self.state.lock().expect("routing lock poisoned");
        let gsi = s.next_gsi;
        s.next_gsi += 1;
        Ok(gsi)
    }

    fn set_msi(&self, gsi: u32, msg: MsiMessage) -> std::io::Result<()> {
        let mut s = self.state.lock().expect("routing lock poisoned");
        if s.msi.get(&gsi) == Some(&msg) {
            return Ok(());
        }
        s.msi.insert(gsi, msg);
        let entries = Self::table(&s);
        let routing = KvmIrqRouting::from_entries(&entries)
            .map_err(|_| std::io::Error::other("GSI routing table too large"))?;
        self.vm.set_gsi_routing(&routing).map_err(io_err)
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> std::io::Result<()> {
        self.vm.register_irqfd(fd, gsi).map_err(io_err)
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> std::io::Result<()> {
        self.vm.unregister_irqfd(fd, gsi).map_err(io_err)
    }
}
