//! Partition tables: GPT (primary header, else the backup), MBR with extended/logical
//! partitions, or none (a file system on the whole disk). Every number read from the image is
//! checked against the disk's size and small fixed limits before it is used.

use std::fmt;
use std::io;

use super::disk::Window;

const SECTOR: u64 = 512;
/// At most this many GPT entries are read (the standard table has 128).
const MAX_GPT_ENTRIES: u32 = 1024;
/// At most this many logical partitions are followed in an extended partition.
const MAX_LOGICAL: u32 = 128;

/// The kind of partition table found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    /// GUID partition table.
    Gpt,
    /// DOS/MBR partition table.
    Mbr,
    /// No table: the disk is one file system (or unknown data).
    None,
}

impl fmt::Display for TableKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TableKind::Gpt => "GPT",
            TableKind::Mbr => "MBR",
            TableKind::None => "no partition table",
        })
    }
}

/// One partition.
#[derive(Clone, Debug)]
pub struct Partition {
    /// Linux's number: GPT entry index + 1; MBR 1-4 primary, 5.. logical.
    pub number: u32,
    /// Byte offset on the disk.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// The partition type as text: a known name, else the GUID or MBR type byte.
    pub type_name: String,
    /// Whether the type says "Linux x86-64 root" (GPT discoverable partitions).
    pub is_root_type: bool,
}

/// What [`read_table`] found.
#[derive(Debug)]
pub struct Table {
    /// The kind of table.
    pub kind: TableKind,
    /// Partitions in table order (empty for [`TableKind::None`]).
    pub partitions: Vec<Partition>,
    /// Problems worth reporting (a damaged primary GPT, entries outside the disk).
    pub notes: Vec<String>,
}

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// CRC-32 (IEEE, reflected), as GPT uses.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// Formats a GPT GUID (mixed-endian on disk) the usual way, upper case.
pub fn guid_string(b: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        le32(b, 0),
        le16(b, 4),
        le16(b, 6),
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

const ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

fn gpt_type_name(guid: &str) -> Option<&'static str> {
    Some(match guid {
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => "EFI system",
        "21686148-6449-6E6F-744E-656564454649" => "BIOS boot",
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "Linux filesystem",
        ROOT_X86_64 => "Linux root (x86-64)",
        "BC13C2FF-59E6-4262-A352-B275FD6F7172" => "Linux extended boot",
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => "Linux LVM",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "Linux swap",
        "A19D880F-05FC-4D3B-A006-743F0F84911E" => "Linux RAID",
        "CA7D7CCB-63ED-4C53-861C-1742536059CC" => "Linux LUKS",
        "933AC7E1-2EB4-4F13-B844-0E14E2AEF915" => "Linux /home",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "Microsoft basic data",
        "6A898CC3-1DD2-11B2-99A6-080020736631" => "ZFS",
        _ => return None,
    })
}

fn mbr_type_name(t: u8) -> String {
    match t {
        0x83 => "Linux".into(),
        0x82 => "Linux swap".into(),
        0x8e => "Linux LVM".into(),
        0xfd => "Linux RAID".into(),
        0xef => "EFI system".into(),
        0x01 | 0x04 | 0x06 | 0x0b | 0x0c | 0x0e => "FAT".into(),
        0x07 => "NTFS/exFAT".into(),
        t => format!("type 0x{t:02x}"),
    }
}

/// Reads the partition table of `disk`.
pub fn read_table(disk: &Window) -> io::Result<Table> {
    let mut notes = Vec::new();
    if disk.len() < 2 * SECTOR {
        return Ok(Table {
            kind: TableKind::None,
            partitions: Vec::new(),
            notes,
        });
    }
    let mbr = disk.read_vec(0, SECTOR as usize)?;
    let mbr_valid = mbr[510] == 0x55 && mbr[511] == 0xaa;
    let protective = mbr_valid && (0..4).any(|i| mbr[446 + i * 16 + 4] == 0xee);
    let primary = disk.read_vec(SECTOR, SECTOR as usize)?;
    if &primary[..8] == b"EFI PART" || protective {
        match read_gpt(disk, &primary, 1) {
            Ok(parts) => return Ok(gpt_table(parts, notes)),
            Err(why) => notes.push(format!("primary GPT header unusable: {why}")),
        }
        let last = disk.len() / SECTOR - 1;
        let backup = disk.read_vec(last * SECTOR, SECTOR as usize)?;
        match read_gpt(disk, &backup, last) {
            Ok(parts) => {
                notes.push("using the backup GPT".into());
                return Ok(gpt_table(parts, notes));
            }
            Err(why) => notes.push(format!("backup GPT header unusable: {why}")),
        }
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("damaged GPT ({})", notes.join("; ")),
        ));
    }
    if mbr_valid && looks_like_mbr(&mbr, disk.len()) {
        let partitions = read_mbr(disk, &mbr, &mut notes)?;
        if !partitions.is_empty() {
            return Ok(Table {
                kind: TableKind::Mbr,
                partitions,
                notes,
            });
        }
    }
    Ok(Table {
        kind: TableKind::None,
        partitions: Vec::new(),
        notes,
    })
}

fn gpt_table(partitions: Vec<Partition>, notes: Vec<String>) -> Table {
    Table {
        kind: TableKind::Gpt,
        partitions,
        notes,
    }
}

/// A FAT boot sector also ends in 55 AA: an MBR's status bytes are 0x00 or 0x80.
fn looks_like_mbr(mbr: &[u8], disk_len: u64) -> bool {
    (0..4).all(|i| {
        let e = &mbr[446 + i * 16..462 + i * 16];
        let (start, count) = (u64::from(le32(e, 8)), u64::from(le32(e, 12)));
        (e[0] == 0 || e[0] == 0x80)
            && (e[4] == 0 || (start > 0 && count > 0 && (start + count) * SECTOR <= disk_len))
    })
}

fn read_gpt(disk: &Window, hdr: &[u8], my_lba: u64) -> Result<Vec<Partition>, String> {
    if &hdr[..8] != b"EFI PART" {
        return Err("no EFI PART signature".into());
    }
    let hsize = le32(hdr, 12) as usize;
    if !(92..=SECTOR as usize).contains(&hsize) {
        return Err(format!("header size {hsize}"));
    }
    let mut h = hdr[..hsize].to_vec();
    h[16..20].fill(0);
    if crc32(&h) != le32(hdr, 16) {
        return Err("header checksum mismatch".into());
    }
    if le64(hdr, 24) != my_lba {
        return Err("header is not where it says it is".into());
    }
    let table_lba = le64(hdr, 72);
    let count = le32(hdr, 80);
    let esize = le32(hdr, 84);
    if count > MAX_GPT_ENTRIES || !(128..=4096).contains(&esize) || !esize.is_multiple_of(8) {
        return Err(format!("{count} entries of {esize} bytes"));
    }
    let table_len = u64::from(count) * u64::from(esize);
    let table = table_lba
        .checked_mul(SECTOR)
        .and_then(|o| disk.read_vec(o, table_len as usize).ok())
        .ok_or("partition entries lie beyond the disk")?;
    if crc32(&table) != le32(hdr, 88) {
        return Err("partition entries checksum mismatch".into());
    }
    let sectors = disk.len() / SECTOR;
    let mut parts = Vec::new();
    for (i, e) in table.chunks_exact(esize as usize).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        if first > last || last >= sectors {
            return Err(format!(
                "entry {} spans sectors {first}-{last}, outside the {sectors}-sector disk",
                i + 1
            ));
        }
        let guid = guid_string(&e[..16]);
        let name: String = char::decode_utf16(
            e[56..128]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&c| c != 0),
        )
        .map(|c| c.unwrap_or('?'))
        .collect();
        let mut type_name = gpt_type_name(&guid).map_or(guid.clone(), str::to_owned);
        if !name.is_empty() {
            type_name = format!("{type_name} \"{}\"", name.escape_default());
        }
        parts.push(Partition {
            number: i as u32 + 1,
            start: first * SECTOR,
            len: (last - first + 1) * SECTOR,
            type_name,
            is_root_type: guid == ROOT_X86_64,
        });
    }
    Ok(parts)
}

fn read_mbr(disk: &Window, mbr: &[u8], notes: &mut Vec<String>) -> io::Result<Vec<Partition>> {
    let mut parts = Vec::new();
    let mut extended = None;
    for i in 0..4 {
        let e = &mbr[446 + i * 16..462 + i * 16];
        let (t, start, count) = (e[4], u64::from(le32(e, 8)), u64::from(le32(e, 12)));
        if t == 0 || count == 0 {
            continue;
        }
        if matches!(t, 0x05 | 0x0f | 0x85) {
            extended = Some(start);
            continue;
        }
        parts.push(Partition {
            number: i as u32 + 1,
            start: start * SECTOR,
            len: count * SECTOR,
            type_name: mbr_type_name(t),
            is_root_type: false,
        });
    }
    let Some(ext_start) = extended else {
        return Ok(parts);
    };
    // The EBR chain: each EBR holds one logical partition (relative to the EBR) and a link to
    // the next EBR (relative to the extended partition). Loops and long chains are cut off.
    let mut ebr_lba = ext_start;
    let mut seen = std::collections::HashSet::new();
    for n in 0..MAX_LOGICAL {
        if !seen.insert(ebr_lba) {
            notes.push("extended partition chain loops; stopped following it".into());
            break;
        }
        let Some(ebr) = ebr_lba
            .checked_mul(SECTOR)
            .and_then(|o| disk.read_vec(o, SECTOR as usize).ok())
        else {
            notes.push(format!(
                "extended boot record at sector {ebr_lba} is unreadable"
            ));
            break;
        };
        if ebr[510] != 0x55 || ebr[511] != 0xaa {
            notes.push(format!("no extended boot record at sector {ebr_lba}"));
            break;
        }
        let (t, rel, count) = (
            ebr[446 + 4],
            u64::from(le32(&ebr, 454)),
            u64::from(le32(&ebr, 458)),
        );
        if t != 0 && count != 0 {
            let start = ebr_lba + rel;
            if (start + count) * SECTOR <= disk.len() {
                parts.push(Partition {
                    number: 5 + n,
                    start: start * SECTOR,
                    len: count * SECTOR,
                    type_name: mbr_type_name(t),
                    is_root_type: false,
                });
            } else {
                notes.push(format!("logical partition {} lies beyond the disk", 5 + n));
            }
        }
        let next = u64::from(le32(&ebr, 462 + 8));
        if ebr[462 + 4] == 0 || next == 0 {
            break;
        }
        ebr_lba = ext_start + next;
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn guid_formatting() {
        let b = [
            0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47,
            0x7d, 0xe4,
        ];
        assert_eq!(guid_string(&b), "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
    }
}
