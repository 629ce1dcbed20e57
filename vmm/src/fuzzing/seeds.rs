//! Builders of well-formed inputs, for the seed corpora and the tests.

use super::*;

/// One descriptor: (address, length, flags, next).
pub type Desc = (u64, u32, u16, u16);

/// A guest memory image with `chains` (each a list of descriptors, linked in order from
/// index `first`) made available on a packed queue of `size`, starting at ring index
/// `start`. Returns the image; buffers are the caller's to fill in.
pub fn queue_image(size: u16, start: u16, chains: &[Vec<Desc>]) -> Vec<u8> {
    let l = QueueLayout::packed(size);
    let mut img = vec![0u8; l.end() as usize];
    let mut idx = 0u16;
    for (c, chain) in chains.iter().enumerate() {
        let head = idx;
        for (k, &(addr, len, flags, _)) in chain.iter().enumerate() {
            let last = k + 1 == chain.len();
            let flags = if last { flags } else { flags | F_NEXT };
            let next = if last { 0 } else { idx + 1 };
            put_desc(
                &mut img,
                l.desc + 16 * u64::from(idx),
                (addr, len, flags, next),
            );
            idx += 1;
        }
        let slot = l.avail + 4 + 2 * u64::from(start.wrapping_add(c as u16) % size);
        put(&mut img, slot, &head.to_le_bytes());
    }
    let avail_idx = start.wrapping_add(chains.len() as u16);
    put(&mut img, l.avail + 2, &avail_idx.to_le_bytes());
    img
}

/// Writes one descriptor at `at`.
pub fn put_desc(img: &mut Vec<u8>, at: u64, d: Desc) {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&d.0.to_le_bytes());
    b[8..12].copy_from_slice(&d.1.to_le_bytes());
    b[12..14].copy_from_slice(&d.2.to_le_bytes());
    b[14..16].copy_from_slice(&d.3.to_le_bytes());
    put(img, at, &b);
}

/// Writes `bytes` at `at`, growing the image as needed.
pub fn put(img: &mut Vec<u8>, at: u64, bytes: &[u8]) {
    let at = at as usize;
    if img.len() < at + bytes.len() {
        img.resize(at + bytes.len(), 0);
    }
    img[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Device-writable.
pub const W: u16 = F_WRITE;
/// Indirect table.
pub const INDIRECT: u16 = F_INDIRECT;

/// virtio-blk: a queue of 32 holding a write of two sectors, a read of them, a flush,
/// GET_ID, discard, write-zeroes and an unsupported request, over a 16-sector disk.
pub fn blk_mixed(event_idx: bool) -> Vec<u8> {
    let hdr = |t: u32, sector: u64| {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&t.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        h
    };
    let base = 0x1000u64;
    let mut chains = Vec::new();
    let mut fill = Vec::new();
    let mut at = base;
    let mut alloc = |len: u64| {
        let a = at;
        at += len.next_multiple_of(16);
        a
    };
    // (type, sector, data length, device-writable data, payload)
    type Request = (u32, u64, u32, bool, Option<Vec<u8>>);
    let requests: [Request; 7] = [
        (1, 2, 1024, false, None),
        (0, 2, 1024, true, None),
        (4, 0, 0, false, None),
        (8, 0, 20, true, None),
        (11, 0, 16, false, Some(seg(4, 2, 0))),
        (13, 0, 16, false, Some(seg(8, 1, 1))),
        (99, 0, 0, false, None),
    ];
    for (t, sector, len, write, payload) in requests {
        let h = alloc(16);
        fill.push((h, hdr(t, sector).to_vec()));
        let mut c = vec![(h, 16, 0, 0)];
        if len > 0 {
            let d = alloc(u64::from(len));
            if let Some(p) = payload {
                fill.push((d, p));
            } else if !write {
                fill.push((d, vec![0x5a; len as usize]));
            }
            c.push((d, len, if write { W } else { 0 }, 0));
        }
        let s = alloc(1);
        fill.push((s, vec![0xff]));
        c.push((s, 1, W, 0));
        chains.push(c);
    }
    let mut img = queue_image(32, 0, &chains);
    for (a, bytes) in fill {
        put(&mut img, a, &bytes);
    }
    let flags = 5 | if event_idx { queue_flags::EVENT_IDX } else { 0 };
    let mut input = vec![flags, 0, 0, 0, 16, 0];
    input.extend_from_slice(&img);
    input
}

fn seg(sector: u64, n: u32, flags: u32) -> Vec<u8> {
    let mut s = sector.to_le_bytes().to_vec();
    s.extend_from_slice(&n.to_le_bytes());
    s.extend_from_slice(&flags.to_le_bytes());
    s
}

/// virtio-blk: one read through an indirect table, with the ring index about to wrap.
pub fn blk_indirect() -> Vec<u8> {
    let start = 0xfffe;
    let table = 0x800u64;
    let mut img = queue_image(4, start, &[vec![(table, 48, INDIRECT, 0)]]);
    put_desc(&mut img, table, (0x1000, 16, F_NEXT, 1));
    put_desc(&mut img, table + 16, (0x1100, 512, W | F_NEXT, 2));
    put_desc(&mut img, table + 32, (0x1400, 1, W, 0));
    put(&mut img, 0x1000, &[0; 16]);
    let mut input = vec![2, 0xfe, 0xff, 0, 4, 0];
    input.extend_from_slice(&img);
    input
}

/// virtio-net TX: two frames (one split over two descriptors), one too short.
pub fn net_tx() -> Vec<u8> {
    let chains = vec![
        vec![(0x1000, 12, 0, 0), (0x1100, 60, 0, 0)],
        vec![(0x1200, 100, 0, 0)],
        vec![(0x1300, 4, 0, 0)],
    ];
    let mut img = queue_image(4, 0, &chains);
    put(&mut img, 0x1000, &[0x11; 12]);
    put(&mut img, 0x1100, &[0x22; 60]);
    put(&mut img, 0x1200, &[0x33; 100]);
    put(&mut img, 0x1300, &[0x44; 4]);
    let mut input = vec![2 | queue_flags::EVENT_IDX, 0, 0, 0];
    input.extend_from_slice(&img);
    input
}

/// virtio-net RX: three frames into four 1 KiB buffers, mergeable or not.
pub fn net_rx(mergeable: bool) -> Vec<u8> {
    let chains: Vec<Vec<Desc>> = (0..4)
        .map(|i| vec![(0x1000 + 0x400 * i, 0x400, W, 0)])
        .collect();
    let img = queue_image(4, 0, &chains);
    let flags = net_flags::RX | if mergeable { net_flags::MERGEABLE } else { 0 };
    let mut input = vec![2, 0, 0, flags | (3 << net_flags::FRAMES_SHIFT)];
    for len in [50u16, 1500, 200] {
        input.extend_from_slice(&len.to_le_bytes());
    }
    input.extend_from_slice(&img);
    input
}

/// virtio-net control queue of a 4-pair device: VQ_PAIRS_SET 2 (taken), VQ_PAIRS_SET 9 (out
/// of range) and a command of another class (both refused).
pub fn net_ctrl() -> Vec<u8> {
    let chains: Vec<Vec<Desc>> = (0..3)
        .map(|i| vec![(0x1000 + 0x100 * i, 4, 0, 0), (0x1080 + 0x100 * i, 1, W, 0)])
        .collect();
    let mut img = queue_image(8, 0, &chains);
    put(&mut img, 0x1000, &[4, 0, 2, 0]);
    put(&mut img, 0x1100, &[4, 0, 9, 0]);
    put(&mut img, 0x1200, &[1, 1, 0, 0]);
    let mut input = vec![3, 0, 0, 4];
    input.extend_from_slice(&img);
    input
}

/// PCI: enumerate through both mechanisms, size and move the BAR, bring the device up,
/// raise interrupts, read the ISR and MSI-X table.
pub fn pci_session(two_devices: bool) -> Vec<u8> {
    let mut v = vec![1 | if two_devices { 4 } else { 0 }];
    let cf8 = |v: &mut Vec<u8>, slot: u32, reg: u32| {
        v.push(pci_ops::CF8);
        v.extend_from_slice(&(0x8000_0000u32 | slot << 11 | reg).to_le_bytes());
    };
    cf8(&mut v, 1, 0);
    v.extend_from_slice(&[pci_ops::CFC, 2 << 2, 0, 0, 0, 0]);
    cf8(&mut v, 1, 4);
    v.extend_from_slice(&[pci_ops::CFC, 0x10 | 1 << 2, 6, 0, 0, 0]);
    // Size BAR 0, restore it, then move it 1 MiB up.
    v.push(pci_ops::SIZE_BAR);
    v.push(2);
    v.extend_from_slice(&0xc010_0000u32.to_le_bytes());
    v.extend_from_slice(&[pci_ops::BRING_UP, 0x18 | 2]);
    // The device raises queue 0 and config interrupts; the driver reads the ISR.
    v.extend_from_slice(&[pci_ops::INTERRUPT, 0, pci_ops::INTERRUPT, 0x40]);
    v.extend_from_slice(&[pci_ops::BAR, 0, 0x00, 0x10, 0, 0, 0, 0, 0, 0, 0, 0]);
    // Read the first MSI-X entry (qword) and the device config through the BAR.
    v.extend_from_slice(&[pci_ops::BAR, 7 << 1, 0x00, 0x40, 0, 0, 0, 0, 0, 0, 0, 0]);
    v.extend_from_slice(&[pci_ops::BAR, 3 << 1, 0x00, 0x20, 0, 0, 0, 0, 0, 0, 0, 0]);
    // ECAM read of the vendor/device id.
    v.push(pci_ops::ECAM);
    v.extend_from_slice(&(1u32 << 15).to_le_bytes());
    v.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0, 0]);
    v
}

/// Non-zero bytes at `at`, so a release shows.
fn pattern(img: &mut Vec<u8>, at: u64, len: usize) {
    let bytes: Vec<u8> = (0..len).map(|i| (i % 251 + 1) as u8).collect();
    put(img, at, &bytes);
}

/// virtio-balloon free page reporting: a report of two ranges (one with a partial last page,
/// one across the two memory regions) and a report of one readable range.
pub fn balloon_report() -> Vec<u8> {
    let chains = vec![
        vec![(0x5000, 0x1000 + 100, W, 0), (0x7000, 0x2000, W, 0)],
        vec![(0xc000, 0x1000, 0, 0)],
    ];
    let mut img = queue_image(4, 0, &chains);
    pattern(&mut img, 0x4000, 0xa000);
    let mut input = vec![2, 0, 0, 2];
    input.extend_from_slice(&img);
    input
}

/// virtio-balloon inflate: frames 3, 4, 5 and 10 (two runs), and one outside memory.
pub fn balloon_inflate() -> Vec<u8> {
    let list: Vec<u8> = [3u32, 4, 5, 10, 0xffff]
        .iter()
        .flat_map(|p| p.to_le_bytes())
        .collect();
    let mut img = queue_image(4, 0, &[vec![(0x1000, list.len() as u32, 0, 0)]]);
    pattern(&mut img, 0x3000, 0x8000);
    put(&mut img, 0x1000, &list);
    let mut input = vec![2, 0, 0, 0];
    input.extend_from_slice(&img);
    input
}

/// virtio-balloon stats: two buffers (the device uses the first, holds the second).
pub fn balloon_stats() -> Vec<u8> {
    let stat = |tag: u16, v: u64| [tag.to_le_bytes().to_vec(), v.to_le_bytes().to_vec()].concat();
    let mut img = queue_image(4, 0, &[vec![(0x1000, 10, 0, 0)], vec![(0x1100, 20, 0, 0)]]);
    put(&mut img, 0x1000, &stat(4, 1 << 20));
    put(
        &mut img,
        0x1100,
        &[stat(5, 8 << 20), stat(6, 4 << 20)].concat(),
    );
    let mut input = vec![2, 0, 0, 3];
    input.extend_from_slice(&img);
    input
}

/// virtio-input: a click at (10, 20) (press and release, 8 events) on a queue of 8 one-event
/// buffers.
pub fn input_click() -> Vec<u8> {
    let bufs: Vec<Vec<Desc>> = (0..8u64).map(|i| vec![(0x1000 + 8 * i, 8, W, 0)]).collect();
    let img = queue_image(8, 0, &bufs);
    let mut input = vec![3, 0, 0, 2];
    for mask in [1u8, 0] {
        input.extend_from_slice(&10u16.to_le_bytes());
        input.extend_from_slice(&20u16.to_le_bytes());
        input.push(mask);
    }
    input.extend_from_slice(&img);
    input
}

/// A WebSocket viewer's session: noVNC's upgrade request, then masked binary frames carrying
/// an RFB 3.8 handshake without a password, pixel format, encodings, an update request, keys
/// and a pointer event.
pub fn vnc_ws_session() -> Vec<u8> {
    let mut d = b"GET /websockify HTTP/1.1\r\nHost: 127.0.0.1:5900\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    let mut frame = |payload: &[u8]| {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        d.push(0x82); // FIN, binary
        assert!(payload.len() < 126);
        d.push(0x80 | payload.len() as u8);
        d.extend_from_slice(&mask);
        d.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    };
    frame(b"RFB 003.008\n");
    frame(&[1]); // security: none
    frame(&[1]); // shared
    let mut pf = vec![0, 0, 0, 0];
    pf.extend_from_slice(&crate::vnc::encode::PixelFormat::XRGB8888.to_bytes());
    frame(&pf);
    frame(&[2, 0, 0, 3, 0, 0, 0, 16, 0, 0, 0, 6, 0, 0, 0, 0]);
    frame(&[3, 0, 0, 0, 0, 0, 0, 64, 0, 40]);
    frame(&[4, 1, 0, 0, 0, 0, 0, 0x61, 4, 0, 0, 0, 0, 0, 0, 0x61]);
    frame(&[5, 1, 0, 10, 0, 20]);
    frame(&[3, 1, 0, 0, 0, 0, 0, 64, 0, 40]);
    d
}
