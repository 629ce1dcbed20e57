//! vhost-net against the real kernel: guest memory allocated here, a tap in a network
//! namespace the test creates, no KVM. Runs where /dev/vhost-net exists and the test may
//! create namespaces (root); elsewhere it says so and returns (the lab runs it in L1, see
//! tests/lab/scenarios/net-vhost-unit.sh).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::tap::{Tap, VNET_HDR_LEN};
use super::vhost::VhostNet;
use super::{Net, NetVhost, F_MRG_RXBUF};
use crate::virtio::{features, ActivateContext, VirtioDevice, VirtioInterrupt};

const TAP: &str = "bvhost0";
const ETHERTYPE: u16 = 0x88b5; // IEEE local experimental: nothing else in the namespace sends it
const W: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE as u16;

/// Interrupts through eventfds the test holds, as the PCI transport hands out irqfds.
struct Calls(Vec<EventFd>);

impl VirtioInterrupt for Calls {
    fn notify_queue(&self, queue: u16) {
        let _ = self.0[usize::from(queue)].write(1);
    }
    fn notify_config(&self) {}
    fn queue_irqfd(&self, queue: u16) -> Option<EventFd> {
        self.0.get(usize::from(queue))?.try_clone().ok()
    }
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    r
}

/// A tap (IFF_VNET_HDR) that is up, and an AF_PACKET socket on it: frames vhost writes into
/// the tap arrive on the socket, frames sent on the socket leave through the tap to vhost.
pub(crate) fn tap_and_socket() -> (OwnedFd, OwnedFd) {
    // SAFETY: plain syscalls on fds this function owns; ifreq outlives each ioctl.
    unsafe {
        let tun = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        assert!(tun >= 0, "open /dev/net/tun");
        let tun = OwnedFd::from_raw_fd(tun);
        let mut r = ifreq(TAP);
        r.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        assert_eq!(libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF as _, &r), 0);
        let ctl = OwnedFd::from_raw_fd(libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0));
        let mut r = ifreq(TAP);
        r.ifr_ifru.ifru_flags = (libc::IFF_UP) as i16;
        assert_eq!(libc::ioctl(ctl.as_raw_fd(), libc::SIOCSIFFLAGS as _, &r), 0);
        let mut r = ifreq(TAP);
        assert_eq!(
            libc::ioctl(ctl.as_raw_fd(), libc::SIOCGIFINDEX as _, &mut r),
            0
        );
        let index = r.ifr_ifru.ifru_ifindex;
        let proto = ETHERTYPE.to_be();
        let s = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
        assert!(s >= 0, "packet socket");
        let s = OwnedFd::from_raw_fd(s);
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index;
        assert_eq!(
            libc::bind(
                s.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32
            ),
            0
        );
        (tun, s)
    }
}

pub(crate) fn eth_frame(tag: u8) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, tag]);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend((0..200u32).map(|i| (i as u8) ^ tag));
    f
}

/// The next frame with our ethertype that vhost put into the tap, within 5 s.
fn sock_recv(s: &OwnedFd, wait: Duration) -> Option<Vec<u8>> {
    let end = Instant::now() + wait;
    let mut b = vec![0u8; 2048];
    while Instant::now() < end {
        let n = unsafe {
            libc::recv(
                s.as_raw_fd(),
                b.as_mut_ptr().cast(),
                b.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            return Some(b[..n as usize].to_vec());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

pub(crate) fn sock_send(s: &OwnedFd, f: &[u8]) {
    let n = unsafe { libc::send(s.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
    assert_eq!(n as usize, f.len());
}

fn used_idx(m: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>) -> u16 {
    m.read_obj(GuestAddress(q.used_addr().0 + 2)).unwrap()
}

fn wait_used(m: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>, want: u16) -> bool {
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if used_idx(m, q) >= want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// The RX buffer (header included) holding a frame with our ethertype, within 5 s.
fn find_rx(m: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>) -> Option<Vec<u8>> {
    let end = Instant::now() + Duration::from_secs(5);
    let mut seen = 0;
    let mut others = Vec::new();
    while Instant::now() < end {
        let idx = used_idx(m, q);
        while seen < idx {
            let at = q.used_addr().0 + 4 + 8 * u64::from(seen % 16);
            let id: u32 = m.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = m.read_obj(GuestAddress(at + 4)).unwrap();
            let mut b = vec![0u8; len as usize];
            m.read_slice(&mut b, GuestAddress(RX_BUF + u64::from(id) * 0x1000))
                .unwrap();
            if b.len() >= VNET_HDR_LEN + 14
                && b[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14] == ETHERTYPE.to_be_bytes()
            {
                return Some(b);
            }
            others.push(
                b.get(VNET_HDR_LEN + 12..VNET_HDR_LEN + 14)
                    .map(<[u8]>::to_vec),
            );
            seen += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "RX: used idx {}, other frames' ethertypes {others:02x?}",
        used_idx(m, q)
    );
    None
}

const RX_BUF: u64 = 0x10_0000;
/// RX buffers per boot: the kernel may send its own frames out of a new tap (IPv6 MLD, router
/// solicitations) before ours, so the test looks for its frame among the used ones.
const RX_BUFS: u16 = 12;
const TX_BUF: u64 = 0x18_0000;

/// One "boot": `m` (fresh guest memory) with the RX queue at 0 holding [`RX_BUFS`] buffers
/// and the TX queue at 0x8000 (empty), activated on `dev`; the RX queue is kicked as a driver
/// does after filling it. The mocks stay with the caller: creating one again over the same
/// memory would zero its rings.
fn boot(
    dev: &mut Net,
    m: &GuestMemoryMmap,
    rxq: &MockSplitQueue<GuestMemoryMmap>,
    txq: &MockSplitQueue<GuestMemoryMmap>,
    calls: &[EventFd],
    kicks: &[EventFd],
) {
    let bufs: Vec<RawDescriptor> = (0..RX_BUFS)
        .map(|i| RawDescriptor::from(Descriptor::new(RX_BUF + u64::from(i) * 0x1000, 2048, W, 0)))
        .collect();
    rxq.add_desc_chains(&bufs, 0).unwrap();
    let ctx = ActivateContext {
        mem: m.clone(),
        queues: vec![
            rxq.create_queue().unwrap(),
            txq.create_queue::<virtio_queue::Queue>().unwrap(),
        ],
        queue_events: kicks.iter().map(|k| k.try_clone().unwrap()).collect(),
        interrupt: Arc::new(Calls(
            calls.iter().map(|c| c.try_clone().unwrap()).collect(),
        )),
        acked_features: features::VERSION_1 | features::RING_EVENT_IDX | F_MRG_RXBUF,
    };
    dev.activate(ctx).unwrap();
    assert!(dev.vhost_running(), "vhost serves the queues");
    kicks[0].write(1).unwrap();
}

/// TX and RX through the kernel; nothing moves after a reset; a second activation on new
/// guest memory (a guest reboot) works on the same vhost handle. Fails on the old code, which
/// had no vhost path at all.
#[test]
fn real_vhost_net_moves_frames_and_survives_reset_and_new_memory() {
    if !std::path::Path::new("/dev/vhost-net").exists() {
        eprintln!("skipped: no /dev/vhost-net on this host (the lab runs this test in L1)");
        return;
    }
    // This test thread only: a network namespace of its own for the tap.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!("skipped: cannot create a network namespace (not root?)");
        return;
    }
    let (tun, sock) = tap_and_socket();
    // The NIC's metrics come from the tap's kernel counters: berth never sees vhost's frames.
    let mut reg = prometheus_client::registry::Registry::default();
    let metrics = crate::metrics::VmMetrics::register(&mut reg);
    let link = crate::linkstats::LinkCounters::for_tap(&tun).expect("rtnetlink");
    metrics.count_nic_in_kernel("eth0", link).unwrap();
    let vhost_tap = File::from(tun.try_clone().unwrap());
    let handle = Arc::new(Mutex::new(VhostNet::open().expect("open /dev/vhost-net")));
    let mut dev = Net::with_vhost(
        Box::new(Tap::new(tun).unwrap()),
        [2, 0, 0, 0, 0, 9],
        1500,
        NetVhost {
            handle: handle.clone(),
            tap: vhost_tap,
            required: true,
        },
    );
    let calls: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let kicks: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();

    for round in 0..2u8 {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let rxq = MockSplitQueue::create(&m, GuestAddress(0), 16);
        let txq = MockSplitQueue::create(&m, GuestAddress(0x8000), 16);
        boot(&mut dev, &m, &rxq, &txq, &calls, &kicks);
        let out = eth_frame(0x10 + round);
        let mut tx = vec![0u8; VNET_HDR_LEN];
        tx.extend_from_slice(&out);
        m.write_slice(&tx, GuestAddress(TX_BUF)).unwrap();
        txq.add_desc_chains(
            &[RawDescriptor::from(Descriptor::new(
                TX_BUF,
                tx.len() as u32,
                0,
                0,
            ))],
            0,
        )
        .unwrap();
        kicks[1].write(1).unwrap();
        assert_eq!(
            sock_recv(&sock, Duration::from_secs(5)).as_deref(),
            Some(&out[..]),
            "round {round}: the guest's frame left through the tap"
        );
        assert!(wait_used(&m, &txq, 1), "round {round}: TX chain used");

        let inbound = eth_frame(0x20 + round);
        sock_send(&sock, &inbound);
        let got = find_rx(&m, &rxq)
            .unwrap_or_else(|| panic!("round {round}: no frame of ours reached the guest"));
        assert_eq!(got.len(), VNET_HDR_LEN + inbound.len());
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
        assert_eq!(&got[VNET_HDR_LEN..], &inbound[..]);
        assert!(
            calls[0].read().is_ok(),
            "round {round}: RX interrupt through the call fd"
        );

        // After a reset the kernel leaves the rings alone.
        dev.reset();
        assert!(!handle.lock().unwrap().is_running());
        txq.add_desc_chains(
            &[RawDescriptor::from(Descriptor::new(
                TX_BUF,
                tx.len() as u32,
                0,
                0,
            ))],
            1,
        )
        .unwrap();
        kicks[1].write(1).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            used_idx(&m, &txq),
            1,
            "round {round}: nothing used after reset"
        );
        assert!(sock_recv(&sock, Duration::from_millis(300)).is_none());
        let _ = kicks[1].read();
        let _ = calls[0].read();
        let _ = calls[1].read();
    }
    // One frame each way per round went through vhost (the kernel may have added IPv6
    // neighbour discovery of its own towards the guest).
    metrics.refresh();
    let mut t = String::new();
    prometheus_client::encoding::text::encode(&mut t, &reg).unwrap();
    let value = |name: &str| -> u64 {
        t.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in\n{t}"))
    };
    let f = eth_frame(0).len() as u64;
    assert_eq!(
        value(r#"berth_net_packets_total{nic="eth0",direction="tx"}"#),
        2,
        "{t}"
    );
    assert_eq!(
        value(r#"berth_net_bytes_total{nic="eth0",direction="tx"}"#),
        2 * f,
        "{t}"
    );
    assert!(
        value(r#"berth_net_packets_total{nic="eth0",direction="rx"}"#) >= 2,
        "{t}"
    );
    assert!(
        value(r#"berth_net_bytes_total{nic="eth0",direction="rx"}"#) >= 2 * f,
        "{t}"
    );
}
