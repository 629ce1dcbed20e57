//! Writes a small ISO9660 + Joliet + Rock Ridge image with hadris-iso, then pins every
//! timestamp in it so that the same files always give the same bytes.

use std::collections::BTreeMap;
use std::io::Cursor;

use hadris_iso::joliet::JolietLevel;
use hadris_iso::read::PathSeparator;
use hadris_iso::rrip::RripOptions;
use hadris_iso::write::options::{BaseIsoLevel, CreationFeatures, IsoFormatOptions};
use hadris_iso::write::{InputEntry, InputMetadata, InputTree, IsoImageWriter};

use crate::isoread::{self, Namespace, SECTOR};

/// The fixed time stamped on every file, directory and volume descriptor:
/// 2012-08-10 00:00:00 UTC (the config-drive version date), as ISO9660 directory-record bytes.
const RECORD_TIME: [u8; 7] = [112, 8, 10, 0, 0, 0, 0];
/// The same time in the 17-byte volume descriptor format.
const VOLUME_TIME: &[u8; 17] = b"2012081000000000\0";

/// Errors of the image writer (hadris-iso or the timestamp pass).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WriteError(String);

/// Builds the image of `files` (slash-separated path -> contents) with volume label `label`.
pub(crate) fn write_image(
    label: &str,
    files: &BTreeMap<String, Vec<u8>>,
) -> Result<Vec<u8>, WriteError> {
    let tree = InputTree::new(PathSeparator::ForwardSlash, entries(files, ""));
    let options = IsoFormatOptions {
        volume_name: label.to_string(),
        system_id: Some("LINUX".to_string()),
        volume_set_id: None,
        publisher_id: None,
        preparer_id: None,
        application_id: Some("BERTH".to_string()),
        sector_size: SECTOR,
        path_separator: PathSeparator::ForwardSlash,
        features: CreationFeatures {
            filenames: BaseIsoLevel::Level2 {
                supports_lowercase: false,
                supports_rrip: true,
            },
            long_filenames: false,
            joliet: Some(JolietLevel::Level3),
            // Timestamps come from the directory records, pinned below; no TF entries.
            rock_ridge: Some(RripOptions {
                preserve_timestamps: false,
                ..RripOptions::default()
            }),
            el_torito: None,
            hybrid_boot: None,
        },
        // Off: keeps the label's case (config-2, cidata), as genisoimage does.
        strict_charset: false,
    };
    let cursor = IsoImageWriter::create(Cursor::new(Vec::new()), tree, options)
        .map_err(|e| WriteError(format!("cannot build the ISO9660 image: {e}")))?;
    let mut img = cursor.into_inner();
    // The writer may seek over trailing padding without writing it.
    let sectors = u32::from_le_bytes(img[16 * SECTOR + 80..16 * SECTOR + 84].try_into().unwrap());
    img.resize(
        (sectors as usize).max(img.len().div_ceil(SECTOR)) * SECTOR,
        0,
    );
    pin_timestamps(&mut img).map_err(|e| WriteError(format!("cannot finish the image: {e}")))?;
    Ok(img)
}

/// The hadris input entries for the files under `dir` ("" is the root), sorted by name.
fn entries(files: &BTreeMap<String, Vec<u8>>, dir: &str) -> Vec<InputEntry> {
    let prefix = if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    };
    let mut out = Vec::new();
    let mut subdirs = Vec::new();
    for (path, contents) in files {
        let Some(rest) = path.strip_prefix(&prefix) else {
            continue;
        };
        match rest.split_once('/') {
            None => out.push(InputEntry::file(rest, contents.clone()).with_metadata(mode(0o444))),
            Some((sub, _)) if subdirs.last() != Some(&sub) => subdirs.push(sub),
            Some(_) => {}
        }
    }
    for sub in subdirs {
        let children = entries(files, &format!("{prefix}{sub}"));
        out.push(InputEntry::directory(sub, children).with_metadata(mode(0o555)));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn mode(bits: u32) -> InputMetadata {
    InputMetadata {
        mode: Some(bits),
        uid: Some(0),
        gid: Some(0),
        ..InputMetadata::default()
    }
}

/// Overwrites the volume descriptors' creation and modification dates, every directory
/// record's date and any Rock Ridge `TF` time stamps with the fixed time.
pub(crate) fn pin_timestamps(img: &mut [u8]) -> Result<(), isoread::IsoError> {
    let mut records = Vec::new();
    for vol in isoread::volumes(img)? {
        img[vol.offset + 813..vol.offset + 830].copy_from_slice(VOLUME_TIME);
        img[vol.offset + 830..vol.offset + 847].copy_from_slice(VOLUME_TIME);
        img[vol.root + 18..vol.root + 25].copy_from_slice(&RECORD_TIME);
        let ns = if vol.joliet {
            Namespace::Joliet
        } else {
            Namespace::Plain
        };
        records.extend(isoread::walk(img, &vol, ns)?);
    }
    for rec in records {
        img[rec.offset + 18..rec.offset + 25].copy_from_slice(&RECORD_TIME);
        for (start, end) in rec.susp {
            if &img[start..start + 2] == b"TF" && end > start + 4 {
                let flags = img[start + 4];
                let width = if flags & 0x80 != 0 { 17 } else { 7 };
                let mut at = start + 5;
                while at + width <= end {
                    if width == 7 {
                        img[at..at + 7].copy_from_slice(&RECORD_TIME);
                    } else {
                        img[at..at + 17].copy_from_slice(VOLUME_TIME);
                    }
                    at += width;
                }
            }
        }
    }
    Ok(())
}
