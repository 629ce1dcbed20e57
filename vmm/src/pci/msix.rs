//! MSI-X: the vector table and pending-bit array a device exposes in a BAR, and delivery of
//! its vectors through KVM irqfds. Masking is handled here: a masked vector's interrupt is
//! remembered in the PBA and delivered when the guest unmasks it.
//!
//! A vector's irqfd is attached to KVM only while the vector can fire (MSI-X enabled, neither
//! the function nor the vector masked). The irqfd is also handed to in-kernel device backends
//! (vhost-net signals it directly, berth never sees those interrupts): while it is detached
//! their signals wait in the eventfd's counter, and KVM injects that waiting interrupt when the
//! irqfd is attached again on unmask, so masking holds for them too. The PBA shows only
//! interrupts berth itself raised while masked.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::irq::{MsiMessage, MsiRouter};

/// Bytes per table entry.
pub const ENTRY_SIZE: u64 = 16;
/// Message control: MSI-X enabled.
pub const CTRL_ENABLE: u16 = 1 << 15;
/// Message control: all vectors masked.
pub const CTRL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: this vector masked.
const VECTOR_MASKED: u32 = 1;
/// MSI-X capability id.
pub const CAP_ID: u8 = 0x11;

#[derive(Clone, Copy, Debug)]
struct Entry {
    msg: MsiMessage,
    ctrl: u32,
}

impl Default for Entry {
    fn default() -> Self {
        // Vectors come out of reset masked.
        Entry {
            msg: MsiMessage::default(),
            ctrl: VECTOR_MASKED,
        }
    }
}

/// One device's MSI-X state.
pub struct Msix {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    enabled: bool,
    function_masked: bool,
    gsis: Vec<u32>,
    irqfds: Vec<EventFd>,
    /// Whether each irqfd is attached to its GSI in KVM.
    attached: Vec<bool>,
    router: Arc<dyn MsiRouter>,
}

impl Msix {
    /// `vectors` vectors, each with its own GSI and irqfd (attached once unmasked).
    pub fn new(vectors: u16, router: Arc<dyn MsiRouter>) -> std::io::Result<Self> {
        let mut gsis = Vec::new();
        let mut irqfds = Vec::new();
        for _ in 0..vectors {
            gsis.push(router.allocate_gsi()?);
            irqfds.push(EventFd::new(libc::EFD_NONBLOCK)?);
        }
        Ok(Msix {
            entries: vec![Entry::default(); vectors.into()],
            pending: vec![false; vectors.into()],
            enabled: false,
            function_masked: false,
            gsis,
            irqfds,
            attached: vec![false; vectors.into()],
            router,
        })
    }

    /// A handle on the irqfd of `vector`, for a backend that raises it from the kernel.
    pub fn irqfd(&self, vector: u16) -> Option<EventFd> {
        self.irqfds.get(usize::from(vector))?.try_clone().ok()
    }

    /// Attaches or detaches the irqfd of `v` to match whether it may fire now.
    fn sync_irqfd(&mut self, v: usize) {
        let want = self.enabled && !self.masked(v);
        if want == self.attached[v] {
            return;
        }
        let r = if want {
            self.route(v);
            self.router.register_irqfd(&self.irqfds[v], self.gsis[v])
        } else {
            self.router.unregister_irqfd(&self.irqfds[v], self.gsis[v])
        };
        // On failure the state stays as it was and the next change tries again.
        if r.is_ok() {
            self.attached[v] = want;
        }
    }

    fn sync_all(&mut self) {
        for v in 0..self.entries.len() {
            self.sync_irqfd(v);
        }
    }

    /// Number of vectors.
    pub fn vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    /// Size of the table in bytes.
    pub fn table_size(&self) -> u64 {
        self.entries.len() as u64 * ENTRY_SIZE
    }

    /// Size of the pending-bit array in bytes (whole qwords).
    pub fn pba_size(&self) -> u64 {
        self.entries.len().div_ceil(64) as u64 * 8
    }

    /// Applies the message control word the guest wrote to the capability.
    pub fn set_control(&mut self, ctrl: u16) {
        self.enabled = ctrl & CTRL_ENABLE != 0;
        self.function_masked = ctrl & CTRL_FUNCTION_MASK != 0;
        self.sync_all();
        self.deliver_pending();
    }

    /// Back to the reset state: disabled, every vector masked, nothing pending.
    pub fn reset(&mut self) {
        self.entries.fill(Entry::default());
        self.pending.fill(false);
        self.enabled = false;
        self.function_masked = false;
        self.sync_all();
    }

    fn masked(&self, v: usize) -> bool {
        self.function_masked || self.entries[v].ctrl & VECTOR_MASKED != 0
    }

    /// Guest read of the table.
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        let (idx, field) = ((offset / ENTRY_SIZE) as usize, offset % ENTRY_SIZE);
        let Some(e) = self.entries.get(idx) else {
            data.fill(0xff);
            return;
        };
        let dwords = [e.msg.addr_lo, e.msg.addr_hi, e.msg.data, e.ctrl];
        let mut bytes = [0u8; 16];
        for (i, d) in dwords.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&d.to_le_bytes());
        }
        let f = field as usize;
        if (data.len() == 4 || data.len() == 8)
            && f.is_multiple_of(data.len())
            && f + data.len() <= 16
        {
            data.copy_from_slice(&bytes[f..f + data.len()]);
        } else {
            data.fill(0xff);
        }
    }

    /// Guest write of the table: dword or qword accesses, naturally aligned.
    pub fn table_write(&mut self, offset: u64, data: &[u8]) {
        let (idx, field) = (
            (offset / ENTRY_SIZE) as usize,
            (offset % ENTRY_SIZE) as usize,
        );
        if idx >= self.entries.len()
            || !(data.len() == 4 || data.len() == 8)
            || !field.is_multiple_of(data.len())
        {
            return;
        }
        let was_masked = self.masked(idx);
        for (k, chunk) in data.chunks(4).enumerate() {
            let v = u32::from_le_bytes(chunk.try_into().unwrap());
            let e = &mut self.entries[idx];
            match field / 4 + k {
                0 => e.msg.addr_lo = v,
                1 => e.msg.addr_hi = v,
                2 => e.msg.data = v,
                _ => e.ctrl = v & VECTOR_MASKED,
            }
        }
        // Routes are installed when a vector is unmasked, so a half-written message (the guest
        // writes it dword by dword while masked) never reaches KVM.
        if !self.masked(idx) {
            self.route(idx);
        }
        self.sync_irqfd(idx);
        if !self.masked(idx) && was_masked {
            self.deliver_pending();
        }
    }

    /// Guest read of the pending-bit array.
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let byte = offset as usize + i;
            let mut v = 0u8;
            for bit in 0..8 {
                if self.pending.get(byte * 8 + bit).copied().unwrap_or(false) {
                    v |= 1 << bit;
                }
            }
            *b = v;
        }
    }

    fn route(&self, v: usize) {
        // A failure leaves the previous route: the guest sees a lost interrupt at worst.
        let _ = self.router.set_msi(self.gsis[v], self.entries[v].msg);
    }

    fn deliver_pending(&mut self) {
        if !self.enabled {
            return;
        }
        for v in 0..self.entries.len() {
            if self.pending[v] && !self.masked(v) {
                self.pending[v] = false;
                self.route(v);
                let _ = self.irqfds[v].write(1);
            }
        }
    }

    /// Raises `vector`: delivered now, or remembered while masked. Returns false when MSI-X
    /// is off or the vector does not exist (the caller may fall back to another mechanism).
    pub fn signal(&mut self, vector: u16) -> bool {
        let v = usize::from(vector);
        if !self.enabled || v >= self.entries.len() {
            return false;
        }
        if self.masked(v) {
            self.pending[v] = true;
        } else {
            let _ = self.irqfds[v].write(1);
        }
        true
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records routes instead of programming KVM.
    #[derive(Default)]
    pub(crate) struct FakeRouter {
        pub routes: Mutex<Vec<(u32, MsiMessage)>>,
        pub fds: Mutex<Vec<(EventFd, u32)>>,
        next: Mutex<u32>,
    }

    impl MsiRouter for FakeRouter {
        fn allocate_gsi(&self) -> std::io::Result<u32> {
            let mut n = self.next.lock().unwrap();
            *n += 1;
            Ok(23 + *n)
        }
        fn set_msi(&self, gsi: u32, msg: MsiMessage) -> std::io::Result<()> {
            self.routes.lock().unwrap().push((gsi, msg));
            Ok(())
        }
        fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> std::io::Result<()> {
            self.fds.lock().unwrap().push((fd.try_clone()?, gsi));
            Ok(())
        }
        fn unregister_irqfd(&self, _fd: &EventFd, gsi: u32) -> std::io::Result<()> {
            self.fds.lock().unwrap().retain(|(_, g)| *g != gsi);
            Ok(())
        }
    }

    impl FakeRouter {
        /// Interrupts KVM would have injected on `gsi` (0 while its irqfd is detached).
        pub(crate) fn fired(&self, gsi: u32) -> u64 {
            let fds = self.fds.lock().unwrap();
            fds.iter()
                .find(|(_, g)| *g == gsi)
                .map_or(0, |(fd, _)| fd.read().unwrap_or(0))
        }

        pub(crate) fn attached(&self, gsi: u32) -> bool {
            self.fds.lock().unwrap().iter().any(|(_, g)| *g == gsi)
        }
    }

    fn write_entry(m: &mut Msix, v: u64, addr: u32, data: u32, ctrl: u32) {
        m.table_write(v * 16, &addr.to_le_bytes());
        m.table_write(v * 16 + 4, &0u32.to_le_bytes());
        m.table_write(v * 16 + 8, &data.to_le_bytes());
        m.table_write(v * 16 + 12, &ctrl.to_le_bytes());
    }

    #[test]
    fn masked_vectors_pend_then_fire_on_unmask() {
        let r = Arc::new(FakeRouter::default());
        let mut m = Msix::new(3, r.clone()).unwrap();
        assert!(!m.signal(0), "disabled");
        m.set_control(CTRL_ENABLE);
        write_entry(&mut m, 1, 0xfee0_0000, 0x41, 1);
        assert!(r.routes.lock().unwrap().is_empty(), "no route while masked");
        assert!(m.signal(1));
        let mut pba = [0u8; 8];
        m.pba_read(0, &mut pba);
        assert_eq!(pba[0], 0b10);
        assert_eq!(r.fired(25), 0);
        // Unmask: the route is installed and the pending interrupt delivered.
        m.table_write(16 + 12, &0u32.to_le_bytes());
        assert_eq!(r.routes.lock().unwrap().last().unwrap().1.data, 0x41);
        assert_eq!(r.fired(25), 1);
        m.pba_read(0, &mut pba);
        assert_eq!(pba[0], 0);
        // Function mask holds everything back.
        m.set_control(CTRL_ENABLE | CTRL_FUNCTION_MASK);
        m.signal(1);
        assert_eq!(r.fired(25), 0);
        m.set_control(CTRL_ENABLE);
        assert_eq!(r.fired(25), 1);
        assert!(!m.signal(7), "no such vector");
    }

    /// An in-kernel backend (vhost-net) writes the irqfd itself: while the vector is masked
    /// (or MSI-X is off) the irqfd is detached from KVM, so nothing is injected; unmasking
    /// attaches it and the waiting interrupt arrives. Fails on the old code, which attached
    /// every irqfd at creation and never detached it.
    #[test]
    fn irqfd_attached_only_while_unmasked() {
        let r = Arc::new(FakeRouter::default());
        let mut m = Msix::new(2, r.clone()).unwrap();
        let backend = m.irqfd(0).unwrap();
        assert!(!r.attached(24), "masked out of reset");
        backend.write(1).unwrap();
        m.set_control(CTRL_ENABLE);
        write_entry(&mut m, 0, 0xfee0_0000, 0x31, 1);
        assert!(!r.attached(24), "still masked");
        backend.write(1).unwrap();
        assert_eq!(r.fired(24), 0);
        m.table_write(12, &0u32.to_le_bytes());
        assert!(r.attached(24));
        assert_eq!(
            r.routes.lock().unwrap().last().unwrap(),
            &(
                24,
                MsiMessage {
                    addr_lo: 0xfee0_0000,
                    addr_hi: 0,
                    data: 0x31
                }
            )
        );
        assert_eq!(
            r.fired(24),
            2,
            "the signals held while masked arrive on unmask"
        );
        // The function mask and disabling MSI-X detach it again; reset too.
        m.set_control(CTRL_ENABLE | CTRL_FUNCTION_MASK);
        assert!(!r.attached(24));
        m.set_control(CTRL_ENABLE);
        assert!(r.attached(24));
        m.set_control(0);
        assert!(!r.attached(24));
        m.set_control(CTRL_ENABLE);
        assert!(r.attached(24));
        m.reset();
        assert!(!r.attached(24));
        assert!(m.irqfd(2).is_none(), "no such vector");
    }

    #[test]
    fn table_reads_and_hostile_accesses() {
        let r = Arc::new(FakeRouter::default());
        let mut m = Msix::new(2, r).unwrap();
        write_entry(&mut m, 0, 0xfee0_1000, 0x22, 1);
        let mut q = [0u8; 8];
        m.table_read(0, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0xfee0_1000);
        let mut d = [0u8; 4];
        m.table_read(12, &mut d);
        assert_eq!(u32::from_le_bytes(d), 1);
        // Out of range, misaligned and odd-sized accesses are ignored / read as ones.
        m.table_write(2 * 16, &[0; 4]);
        m.table_write(2, &[0; 4]);
        m.table_write(0, &[0; 2]);
        m.table_read(5, &mut d);
        assert_eq!(d, [0xff; 4]);
        m.table_read(64, &mut d);
        assert_eq!(d, [0xff; 4]);
        let mut big = [0u8; 16];
        m.pba_read(1000, &mut big);
        assert_eq!(big, [0; 16]);
        assert_eq!(m.pba_size(), 8);
    }
}
