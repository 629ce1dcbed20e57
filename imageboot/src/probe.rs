//! Recognises what a partition (or whole disk) holds from its magic numbers, so that an image
//! berth cannot read is reported by what it contains ("xfs", "LVM2 physical volume").

use std::fmt;

use super::disk::Window;

/// What a partition holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsKind {
    /// ext2/3/4, which berth reads.
    Ext4 {
        /// File system UUID, lower-case with dashes.
        uuid: String,
        /// Volume label.
        label: String,
    },
    /// XFS.
    Xfs,
    /// Btrfs.
    Btrfs,
    /// An LVM2 physical volume.
    Lvm,
    /// LUKS encryption.
    Luks,
    /// Linux software RAID member.
    Raid,
    /// Swap space.
    Swap,
    /// FAT (EFI system partitions).
    Vfat,
    /// ISO 9660.
    Iso9660,
    /// SquashFS.
    Squashfs,
    /// F2FS.
    F2fs,
    /// Nothing recognised.
    Unknown,
}

impl fmt::Display for FsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FsKind::Ext4 { .. } => "ext4",
            FsKind::Xfs => "xfs",
            FsKind::Btrfs => "btrfs",
            FsKind::Lvm => "LVM2 physical volume",
            FsKind::Luks => "LUKS encrypted",
            FsKind::Raid => "Linux RAID member",
            FsKind::Swap => "swap",
            FsKind::Vfat => "vfat",
            FsKind::Iso9660 => "iso9660",
            FsKind::Squashfs => "squashfs",
            FsKind::F2fs => "f2fs",
            FsKind::Unknown => "unknown contents",
        })
    }
}

/// Formats 16 bytes as a lower-case UUID.
pub fn uuid_string(b: &[u8]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Whether `w` has `magic` at `offset` (false when the window is too short).
fn has(w: &Window, offset: u64, magic: &[u8]) -> bool {
    w.read_vec(offset, magic.len())
        .map(|b| b == magic)
        .unwrap_or(false)
}

/// Identifies the contents of `w`.
pub fn probe(w: &Window) -> FsKind {
    if let Ok(sb) = w.read_vec(1024, 1024) {
        if sb[56..58] == [0x53, 0xef] {
            let label = sb[120..136]
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as char)
                .collect();
            return FsKind::Ext4 {
                uuid: uuid_string(&sb[104..120]),
                label,
            };
        }
        if sb[0..4] == [0x10, 0x20, 0xf5, 0xf2] {
            return FsKind::F2fs;
        }
    }
    if has(w, 0, b"XFSB") {
        return FsKind::Xfs;
    }
    if has(w, 0x10040, b"_BHRfS_M") {
        return FsKind::Btrfs;
    }
    if has(w, 0, b"LUKS\xba\xbe") {
        return FsKind::Luks;
    }
    if has(w, 0, b"hsqs") {
        return FsKind::Squashfs;
    }
    // LVM2: a "LABELONE" label in one of the first four sectors, type "LVM2 001".
    for s in 0..4u64 {
        if has(w, s * 512, b"LABELONE") && has(w, s * 512 + 24, b"LVM2 001") {
            return FsKind::Lvm;
        }
    }
    // md superblocks 1.1 (at 0) and 1.2 (at 4 KiB); 0.90/1.0 sit at the end.
    let md = 0xa92b_4efcu32.to_le_bytes();
    if has(w, 0, &md) || has(w, 4096, &md) {
        return FsKind::Raid;
    }
    if has(w, 4086, b"SWAPSPACE2") || has(w, 4086, b"SWAP-SPACE") {
        return FsKind::Swap;
    }
    if has(w, 0x8001, b"CD001") {
        return FsKind::Iso9660;
    }
    if has(w, 510, &[0x55, 0xaa]) && (has(w, 54, b"FAT") || has(w, 82, b"FAT32")) {
        return FsKind::Vfat;
    }
    FsKind::Unknown
}
