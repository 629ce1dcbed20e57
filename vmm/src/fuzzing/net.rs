//! The virtio-net datapath harness.

use super::*;

// ---------------------------------------------------------------------------------------------
// virtio-net

/// Byte 3 of a virtio-net input.
pub mod net_flags {
    /// Receive (deliver frames into the queue) instead of transmit.
    pub const RX: u8 = 1;
    /// Mergeable receive buffers.
    pub const MERGEABLE: u8 = 2;
    /// The backend fails every write.
    pub const FAILING: u8 = 4;
    /// Number of frames to receive: `(byte >> FRAMES_SHIFT) & 7`.
    pub const FRAMES_SHIFT: u8 = 3;
}

/// A Vec-backed [`NetBackend`]: frames to receive, and a record of frames sent.
struct FakeNet {
    rx: VecDeque<Vec<u8>>,
    sent: Vec<Vec<u8>>,
    failing: bool,
}

impl AsRawFd for FakeNet {
    fn as_raw_fd(&self) -> RawFd {
        // The datapath functions never poll the backend; only the device worker does.
        -1
    }
}

impl NetBackend for FakeNet {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let f = self.rx.pop_front().ok_or(io::ErrorKind::WouldBlock)?;
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Ok(n)
    }
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.sent.push(frame.to_vec());
        if self.failing {
            return Err(io::Error::other("injected failure"));
        }
        Ok(())
    }
    fn set_offload(&mut self, _flags: u32) -> io::Result<()> {
        Ok(())
    }
}

/// The `i`th received frame of length `len`: a recognisable pattern, `num_buffers` set to
/// garbage the device must overwrite.
fn rx_frame(i: usize, len: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len)
        .map(|j| (j as u8).wrapping_mul(31) ^ (i as u8))
        .collect();
    f[10..12].copy_from_slice(&[0xee, 0xee]);
    f
}

/// What a virtio-net run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NetReport {
    /// Whether the queue was valid (otherwise nothing ran).
    pub ran: bool,
    /// Frames handed to the backend (TX).
    pub sent: usize,
    /// Frames delivered to the guest (RX).
    pub delivered: usize,
    /// Frames dropped because the guest's buffers could not take them (RX).
    pub dropped: usize,
}

/// virtio-net: `transmit`, or `deliver` then `receive`, over a queue described by `data`.
///
/// Input: byte 0 queue flags ([`queue_flags`]); bytes 1-2 the starting ring index (LE);
/// byte 3 [`net_flags`]; for RX, one LE u16 per frame (frame length minus the 12-byte
/// header); with [`queue_flags::CUSTOM_LAYOUT`] three LE u16 ring addresses; then the guest
/// memory image from address 0.
///
/// TX checks: no panic; every popped chain but a last invalid one is used, with length 0;
/// every frame sent is between a header and [`MAX_FRAME`] long; when the chains cannot change
/// under the device, the frames sent are exactly the chains' readable bytes.
/// RX checks: no panic; `NoBuffers` consumes nothing; `Dropped` returns buffers empty;
/// `Delivered` uses exactly one chain without mergeable buffers and its lengths add up to the
/// frame; when the device's writes are isolated, guest memory holds the frame with
/// `num_buffers` set to the number of chains; `receive` keeps a frame pending exactly when it
/// reports the backend not drained.
pub fn virtio_net_datapath(data: &[u8]) -> NetReport {
    let mut input = Input(data);
    let flags = input.u8();
    let start = input.u16();
    let net = input.u8();
    let rx = net & net_flags::RX != 0;
    let nframes = if rx {
        usize::from((net >> net_flags::FRAMES_SHIFT) & 7)
    } else {
        0
    };
    let frames: Vec<Vec<u8>> = (0..nframes)
        .map(|i| rx_frame(i, VNET_HDR_LEN + usize::from(input.u16())))
        .collect();
    let Some(mut rig) = QueueRig::new(flags, start, input) else {
        return NetReport::default();
    };
    let mut backend = FakeNet {
        rx: VecDeque::new(),
        sent: Vec::new(),
        failing: net & net_flags::FAILING != 0,
    };
    let mut report = NetReport {
        ran: true,
        ..NetReport::default()
    };
    if rx {
        rx_checks(
            &mut rig,
            frames,
            net & net_flags::MERGEABLE != 0,
            &mut backend,
            &mut report,
        );
    } else {
        tx_checks(&mut rig, &mut backend, &mut report);
    }
    report
}

fn tx_checks(rig: &mut QueueRig, backend: &mut FakeNet, report: &mut NetReport) {
    let (mem, layout) = (&rig.mem, &rig.layout);
    let chains = survey(&rig.queue, mem);
    // TX writes only the used ring: exact checks hold when nothing the device reads is there.
    let used_ring = layout.regions()[2];
    let mut fixed = metadata(layout, mem);
    fixed.remove(2);
    let stable = !fixed.iter().any(|&r| overlaps(r, used_ring))
        && !chains
            .iter()
            .flat_map(|c| &c.readable)
            .any(|&r| overlaps(r, used_ring));

    let mut buf = Vec::new();
    let notify = datapath::transmit(&mut rig.queue, mem, backend, &mut buf);

    let (popped, used) = rig.check_drained(notify);
    assert!(
        backend.sent.len() <= usize::from(popped),
        "more frames than chains"
    );
    for f in &backend.sent {
        assert!(
            (VNET_HDR_LEN..=MAX_FRAME).contains(&f.len()),
            "sent a {}-byte frame",
            f.len()
        );
    }
    report.sent = backend.sent.len();
    if !stable {
        return;
    }
    let mut expected = Vec::new();
    for (chain, len) in rig.used_entries(&chains, (popped, used)) {
        assert_eq!(len, 0, "TX used entries carry no length");
        let n = chain.readable_bytes();
        // TX reads the readable buffers only: bad writable ones do not stop a frame.
        if chain.readable_in_memory(mem) && (VNET_HDR_LEN as u64..=MAX_FRAME as u64).contains(&n) {
            expected.push(read_regions(mem, &chain.readable));
        }
    }
    assert!(
        expected == backend.sent,
        "frames sent ({}) differ from the chains' contents ({})",
        backend.sent.len(),
        expected.len()
    );
}

fn rx_checks(
    rig: &mut QueueRig,
    frames: Vec<Vec<u8>>,
    mergeable: bool,
    backend: &mut FakeNet,
    report: &mut NetReport,
) {
    let (queue, mem, layout) = (&mut rig.queue, &rig.mem, &rig.layout);
    let chains = survey(queue, mem);
    let isolated = writes_are_isolated(&chains, &metadata(layout, mem));
    let first = queue.next_avail();
    let mut rest = frames.into_iter();
    for frame in rest.by_ref() {
        let (avail0, used0) = (queue.next_avail(), queue.next_used());
        let result = datapath::deliver(queue, mem, &frame, mergeable);
        let popped = queue.next_avail().wrapping_sub(avail0);
        let used = queue.next_used().wrapping_sub(used0);
        assert!(used <= popped, "used {used} of {popped} chains");
        match result {
            Delivery::NoBuffers => {
                assert_eq!((popped, used), (0, 0), "NoBuffers consumed buffers");
                backend.rx.push_back(frame);
                break;
            }
            Delivery::Dropped => {
                assert!(popped > 0, "dropped without a chain");
                report.dropped += 1;
                if isolated {
                    for k in 0..used {
                        let (_, len) = used_elem(mem, layout, used0.wrapping_add(k));
                        assert_eq!(len, 0, "dropped frame left bytes in a used buffer");
                    }
                }
            }
            Delivery::Delivered => {
                assert_eq!(used, popped, "delivered through an invalid chain");
                assert!(mergeable || used == 1, "{used} chains without mergeable");
                let mut total = 0u64;
                let mut got = Vec::new();
                for k in 0..used {
                    let (id, len) = used_elem(mem, layout, used0.wrapping_add(k));
                    total += u64::from(len);
                    if isolated {
                        let c = &chains[usize::from(avail0.wrapping_sub(first).wrapping_add(k))];
                        assert_eq!(id, u32::from(c.head), "used entry names another chain");
                        let mut bytes = read_regions(mem, &c.writable);
                        bytes.truncate(len as usize);
                        got.extend_from_slice(&bytes);
                    }
                }
                assert_eq!(total, frame.len() as u64, "used lengths vs frame length");
                if isolated {
                    let mut want = frame.clone();
                    want[10..12].copy_from_slice(&used.to_le_bytes());
                    assert!(got == want, "guest buffers do not hold the frame");
                }
                report.delivered += 1;
            }
        }
    }
    backend.rx.extend(rest);
    // The worker's loop over the same frames: whatever is left is delivered or kept pending.
    let mut pending = None;
    let (_irq, drained) = datapath::receive(queue, mem, backend, mergeable, &mut pending);
    assert_eq!(drained, pending.is_none(), "pending frame vs drained");
    assert!(
        pending.is_some() || backend.rx.is_empty(),
        "frames left behind"
    );
}

// ---------------------------------------------------------------------------------------------
// virtio-net control queue and multiqueue set-up

/// What a control-queue run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CtrlReport {
    /// Whether the queue was valid (otherwise nothing ran).
    pub ran: bool,
    /// Chains used.
    pub used: usize,
    /// VQ_PAIRS_SET commands accepted, with their pair counts.
    pub pairs_set: Vec<u16>,
}

/// The control queue of a multiqueue virtio-net device (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET), and
/// the device's multiqueue set-up for the same pair count.
///
/// Input: byte 0 queue flags ([`queue_flags`]); bytes 1-2 the starting ring index (LE);
/// byte 3 the device's queue pairs (`byte % 17`, 0 meaning a device built from no backend);
/// with [`queue_flags::CUSTOM_LAYOUT`] three LE u16 ring addresses; then the guest memory
/// image from address 0.
///
/// Checks: the device built with that many tap queues offers `2 * pairs` queues (+1 control
/// queue and F_MQ / F_CTRL_VQ exactly when pairs > 1, at most [`MAX_QUEUE_PAIRS`]) and says
/// so in `max_virtqueue_pairs`; serving the queue does not panic or spin; every popped chain
/// but a last invalid one is used, with length 0 or 1; a pair count is only ever applied
/// when it is 1 to the device's pairs, at most once per chain.
pub fn virtio_net_ctrl(data: &[u8]) -> CtrlReport {
    let mut input = Input(data);
    let flags = input.u8();
    let start = input.u16();
    let wanted = u16::from(input.u8() % 17);

    let backends: Vec<Box<dyn NetBackend>> = (0..wanted)
        .map(|_| {
            Box::new(FakeNet {
                rx: VecDeque::new(),
                sent: Vec::new(),
                failing: false,
            }) as Box<dyn NetBackend>
        })
        .collect();
    let dev = Net::multiqueue(backends, [2, 0, 0, 0, 0, 1], 1500, Vec::new());
    let pairs = dev.queue_pairs();
    assert!((1..=MAX_QUEUE_PAIRS).contains(&pairs), "{pairs} pairs");
    assert_eq!(pairs, wanted.clamp(1, MAX_QUEUE_PAIRS));
    let info = dev.info();
    let mq = pairs > 1;
    assert_eq!(
        info.queue_sizes.len(),
        2 * usize::from(pairs) + usize::from(mq)
    );
    assert_eq!(info.features & F_MQ != 0, mq);
    assert_eq!(info.features & F_CTRL_VQ != 0, mq);
    let mut cfg = [0u8; 2];
    dev.read_config(8, &mut cfg);
    assert_eq!(u16::from_le_bytes(cfg), pairs, "max_virtqueue_pairs");

    let Some(mut rig) = QueueRig::new(flags, start, input) else {
        return CtrlReport::default();
    };
    let mut report = CtrlReport {
        ran: true,
        ..CtrlReport::default()
    };
    let mut calls = Vec::new();
    let notify = ctrl::serve_queue(&mut rig.queue, &rig.mem, pairs, &mut |n| {
        calls.push(n);
        true
    });
    let (popped, used) = rig.check_drained(notify);
    assert!(
        calls.len() <= usize::from(popped),
        "more commands than chains"
    );
    for &n in &calls {
        assert!((1..=pairs).contains(&n), "applied {n} of {pairs} pairs");
    }
    for k in 0..used {
        let (_, len) = used_elem(&rig.mem, &rig.layout, start.wrapping_add(k));
        assert!(len <= 1, "a control answer of {len} bytes");
    }
    report.used = usize::from(used);
    report.pairs_set = calls;
    report
}
