//! Firmware images: Intel HEX (checksums, addresses, overlaps checked) or raw
//! binary, as one contiguous block of flash from address 0.

use std::collections::BTreeMap;

/// Why an image cannot be flashed. Lines are 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Not a record (no ':' or odd hex digits, or a length that disagrees).
    #[error("line {line}: {what}")]
    Malformed { line: usize, what: String },
    /// The checksum does not add up.
    #[error("line {line}: bad checksum (the record sums to {sum:#04x}, not 0)")]
    Checksum { line: usize, sum: u8 },
    /// An unknown record type.
    #[error("line {line}: record type {kind:#04x} is not Intel HEX")]
    RecordType { line: usize, kind: u8 },
    /// Two records write the same address.
    #[error("line {line}: address {address:#06x} is written twice (overlapping records)")]
    Overlap { line: usize, address: u32 },
    /// No end-of-file record: the file may be cut short.
    #[error("no end-of-file record: the file is incomplete")]
    NoEnd,
    /// Data after the end-of-file record.
    #[error("line {line}: data after the end-of-file record")]
    AfterEnd { line: usize },
    /// Nothing to flash.
    #[error("the image holds no data")]
    Empty,
    /// Beyond what the board can hold.
    #[error("the image ends at {end:#06x}, beyond the {limit} bytes the board offers")]
    TooBig { end: u32, limit: u32 },
}

/// The largest image read (the biggest board known has 4 MiB of flash): an
/// address record cannot make the reader allocate gigabytes.
pub const MAX_IMAGE: u32 = 16 << 20;

/// A firmware image: bytes from address 0, unwritten gaps as 0xFF (erased flash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The bytes, from address 0.
    pub data: Vec<u8>,
}

impl Image {
    /// Reads Intel HEX text.
    pub fn from_hex(text: &str) -> Result<Image, ImageError> {
        let mut bytes: BTreeMap<u32, u8> = BTreeMap::new();
        let mut upper: u32 = 0;
        let mut ended = false;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let rec = raw.trim();
            if rec.is_empty() {
                continue;
            }
            if ended {
                return Err(ImageError::AfterEnd { line });
            }
            let malformed = |what: &str| ImageError::Malformed {
                line,
                what: what.to_owned(),
            };
            let hex = rec
                .strip_prefix(':')
                .ok_or_else(|| malformed("a record starts with ':'"))?;
            if hex.len() % 2 != 0 || hex.len() < 10 {
                return Err(malformed(
                    "a record is an even number of hex digits, at least 10",
                ));
            }
            let fields: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|k| u8::from_str_radix(&hex[k..k + 2], 16))
                .collect::<Result<_, _>>()
                .map_err(|_| malformed("not hexadecimal"))?;
            let count = usize::from(fields[0]);
            if fields.len() != count + 5 {
                return Err(malformed(&format!(
                    "the record says {count} data bytes but holds {}",
                    fields.len() - 5
                )));
            }
            let sum = fields.iter().fold(0u8, |a, b| a.wrapping_add(*b));
            if sum != 0 {
                return Err(ImageError::Checksum { line, sum });
            }
            let offset = u32::from(u16::from_be_bytes([fields[1], fields[2]]));
            let kind = fields[3];
            let data = &fields[4..4 + count];
            match kind {
                0x00 => {
                    for (k, b) in data.iter().enumerate() {
                        let address = upper + ((offset + k as u32) & 0xffff);
                        if bytes.insert(address, *b).is_some() {
                            return Err(ImageError::Overlap { line, address });
                        }
                    }
                }
                0x01 => ended = true,
                0x02 if count == 2 => {
                    upper = u32::from(u16::from_be_bytes([data[0], data[1]])) << 4;
                }
                0x04 if count == 2 => {
                    upper = u32::from(u16::from_be_bytes([data[0], data[1]])) << 16;
                }
                // Start addresses: where a CPU would begin, nothing to write.
                0x03 | 0x05 if count == 4 => {}
                0x02..=0x05 => return Err(malformed("an address record of the wrong length")),
                kind => return Err(ImageError::RecordType { line, kind }),
            }
        }
        if !ended {
            return Err(ImageError::NoEnd);
        }
        let Some((&last, _)) = bytes.last_key_value() else {
            return Err(ImageError::Empty);
        };
        if last >= MAX_IMAGE {
            return Err(ImageError::TooBig {
                end: last,
                limit: MAX_IMAGE,
            });
        }
        let mut data = vec![0xff; last as usize + 1];
        for (a, b) in bytes {
            data[a as usize] = b;
        }
        Ok(Image { data })
    }

    /// A raw binary image, from address 0.
    pub fn from_binary(bytes: &[u8]) -> Result<Image, ImageError> {
        if bytes.is_empty() {
            return Err(ImageError::Empty);
        }
        Ok(Image {
            data: bytes.to_vec(),
        })
    }

    /// Intel HEX when the bytes look like it (a ':' record first), else raw binary.
    pub fn read(bytes: &[u8]) -> Result<Image, ImageError> {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        match (first, std::str::from_utf8(bytes)) {
            (Some(b':'), Ok(text)) => Image::from_hex(text),
            _ => Image::from_binary(bytes),
        }
    }

    /// Refuses an image larger than `limit` bytes.
    pub fn fits(&self, limit: u32) -> Result<(), ImageError> {
        let end = self.data.len() as u32;
        if end > limit {
            return Err(ImageError::TooBig {
                end: end - 1,
                limit,
            });
        }
        Ok(())
    }

    /// The pages of `page` bytes that hold data, as (address, bytes), the last
    /// one padded with 0xFF; pages that are all 0xFF are left out (erased).
    pub fn pages(&self, page: usize) -> Vec<(u32, Vec<u8>)> {
        self.data
            .chunks(page)
            .enumerate()
            .filter(|(_, c)| c.iter().any(|b| *b != 0xff))
            .map(|(i, c)| {
                let mut p = c.to_vec();
                p.resize(page, 0xff);
                ((i * page) as u32, p)
            })
            .collect()
    }

    /// The image as Intel HEX (16 bytes a record), for tools that want a file.
    pub fn to_hex(&self) -> String {
        let mut out = String::new();
        let mut upper = 0u32;
        for (i, chunk) in self.data.chunks(16).enumerate() {
            let address = (i * 16) as u32;
            if address >> 16 != upper {
                upper = address >> 16;
                record(&mut out, 0, 0x04, &(upper as u16).to_be_bytes());
            }
            record(&mut out, (address & 0xffff) as u16, 0x00, chunk);
        }
        record(&mut out, 0, 0x01, &[]);
        out
    }
}

fn record(out: &mut String, offset: u16, kind: u8, data: &[u8]) {
    let mut fields = vec![data.len() as u8];
    fields.extend_from_slice(&offset.to_be_bytes());
    fields.push(kind);
    fields.extend_from_slice(data);
    let sum = fields.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    fields.push(sum.wrapping_neg());
    out.push(':');
    for b in fields {
        out.push_str(&format!("{b:02X}"));
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLINK: &str = ":100000000C9434000C943E000C943E000C943E0082\n:00000001FF\n";

    #[test]
    fn reads_records_and_fills_gaps() {
        let img = Image::from_hex(BLINK).unwrap();
        assert_eq!(img.data.len(), 16);
        assert_eq!(&img.data[..4], &[0x0c, 0x94, 0x34, 0x00]);
        let gap = ":02000000AABB99\n:02000400CCDD51\n:00000001FF\n";
        let img = Image::from_hex(gap).unwrap();
        assert_eq!(img.data, [0xaa, 0xbb, 0xff, 0xff, 0xcc, 0xdd]);
        let extended = ":020000040001F9\n:01000000AA55\n:00000001FF\n";
        assert_eq!(Image::from_hex(extended).unwrap().data.len(), 0x10001);
        // An address far beyond any board is refused, not allocated.
        let far = ":02000004FFFFFC\n:01000000AA55\n:00000001FF\n";
        assert!(matches!(
            Image::from_hex(far),
            Err(ImageError::TooBig { .. })
        ));
    }

    #[test]
    fn refuses_what_is_wrong_with_the_line() {
        let bad_sum = BLINK.replace("82\n", "83\n");
        assert_eq!(
            Image::from_hex(&bad_sum),
            Err(ImageError::Checksum { line: 1, sum: 0x01 })
        );
        let overlap = ":02000000AABB99\n:01000100CC32\n:00000001FF\n";
        assert_eq!(
            Image::from_hex(overlap),
            Err(ImageError::Overlap {
                line: 2,
                address: 1
            })
        );
        assert_eq!(Image::from_hex(":02000000AABB99\n"), Err(ImageError::NoEnd));
        assert!(matches!(
            Image::from_hex("hello\n"),
            Err(ImageError::Malformed { line: 1, .. })
        ));
        assert!(matches!(
            Image::from_hex(":0300000000AA\n:00000001FF\n"),
            Err(ImageError::Malformed { line: 1, .. })
        ));
        assert!(matches!(
            Image::from_hex(":00000007F9\n"),
            Err(ImageError::RecordType { line: 1, kind: 7 })
        ));
        assert_eq!(
            Image::from_hex(":00000001FF\n:01000000AA55\n"),
            Err(ImageError::AfterEnd { line: 2 })
        );
        assert_eq!(Image::from_hex(":00000001FF\n"), Err(ImageError::Empty));
        let img = Image::from_hex(BLINK).unwrap();
        assert_eq!(img.fits(16), Ok(()));
        assert_eq!(img.fits(8), Err(ImageError::TooBig { end: 15, limit: 8 }));
    }

    #[test]
    fn pages_skip_erased_ones_and_hex_round_trips() {
        let mut data = vec![0xff; 300];
        data[0] = 1;
        data[299] = 2;
        let img = Image { data };
        let pages = img.pages(128);
        assert_eq!(pages.iter().map(|(a, _)| *a).collect::<Vec<_>>(), [0, 256]);
        assert!(pages.iter().all(|(_, p)| p.len() == 128));
        assert_eq!(Image::from_hex(&img.to_hex()).unwrap(), img);
        assert_eq!(Image::read(img.to_hex().as_bytes()).unwrap(), img);
        assert_eq!(Image::read(&[1, 2, 3]).unwrap().data, [1, 2, 3]);
    }
}
