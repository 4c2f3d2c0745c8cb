//! The redb silo's write-ahead log: the format of its records and how a log is read back
//! after a crash.
//!
//! A group commit appends one record holding every write of the group and syncs the log
//! (one small sequential write and one `fdatasync`), instead of committing redb durably
//! (a two-phase commit writes every dirty B-tree page and syncs twice). redb gets the same
//! writes in a non-durable transaction; a *checkpoint* (a durable redb commit, then the log
//! truncated) makes the log's records redundant once the log is big enough. See
//! `silo::redb` for the protocol; this module is only the bytes.
//!
//! # Record
//!
//! ```text
//! payload length  u32 LE
//! crc32           u32 LE   (of the sequence number and the payload)
//! sequence number u64 LE   (1, 2, 3, … over the node's whole life, never reused)
//! payload: count u32 LE, then per write:
//!     key length u32 LE, key, tag u8 (0 = delete, 1 = put), [value length u32 LE, value]
//! ```
//!
//! # Torn tails and damage
//!
//! A crash during an append can leave the last record incomplete: cut short by the end of
//! the file, or with whole sectors that were never written (they read as zeros: the log
//! only grows into fresh blocks, or into space truncated and zeroed). Such a record was
//! never acknowledged (its sync had not returned), so reading stops there. Any other bad
//! record (a checksum mismatch with no unwritten sector in it, or anything but zeros after
//! it) is damage to acknowledged data and an error: the node must not start and silently
//! forget what it acknowledged. This is the distinction etcd's WAL draws.

use std::fmt;

/// Bytes before a record's payload.
pub const HEADER_BYTES: usize = 16;
/// A payload longer than this is not a record (the committer's groups are far smaller).
pub const PAYLOAD_BYTES_MAX: usize = 1 << 30;
/// The unit a disk writes atomically; a torn write leaves whole sectors unwritten.
const SECTOR_BYTES: usize = 512;

/// One write: `(silo key, Some(value))` puts, `(silo key, None)` deletes.
pub type Write = (Vec<u8>, Option<Vec<u8>>);

/// A record read back from a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its sequence number.
    pub seq: u64,
    /// Its writes, in order.
    pub writes: Vec<Write>,
}

/// Encodes a record of `writes` at `seq`.
pub fn encode<'a>(seq: u64, writes: impl Iterator<Item = &'a Write> + Clone) -> Vec<u8> {
    let count = writes.clone().count();
    let payload_len: usize =
        4 + writes.clone().map(|(k, v)| 4 + k.len() + 1 + v.as_ref().map_or(0, |v| 4 + v.len())).sum::<usize>();
    let mut out = Vec::with_capacity(HEADER_BYTES + payload_len);
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // the checksum, below
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for (key, value) in writes {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        match value {
            None => out.push(0),
            Some(value) => {
                out.push(1);
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(value);
            }
        }
    }
    let crc = crc32fast::hash(&out[8..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Why a log cannot be read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// Byte offset of the bad record.
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "damaged record at byte {}: {}", self.offset, self.reason)
    }
}

/// Reads every complete record of a log, in order, stopping at a torn tail. Sequence
/// numbers must grow by one from record to record.
pub fn read(log: &[u8]) -> Result<Vec<Record>, Damage> {
    let mut records: Vec<Record> = Vec::new();
    let mut at = 0;
    while at < log.len() {
        let damage = |reason: String| Damage { offset: at as u64, reason };
        let rest = &log[at..];
        if zeros(rest) {
            break; // never written
        }
        if rest.len() < HEADER_BYTES {
            break; // a header cut short by the end of the file: torn
        }
        let payload_len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let end = HEADER_BYTES.saturating_add(payload_len);
        if payload_len > PAYLOAD_BYTES_MAX {
            return Err(damage(format!("impossible length {payload_len}")));
        }
        if end > rest.len() {
            break; // cut short by the end of the file: torn
        }
        let body = &rest[8..end];
        if crc32fast::hash(body) != crc {
            if zeros(&rest[end..]) && has_unwritten_sector(log, at, at + end) {
                break; // the last record, with sectors never written: torn
            }
            return Err(damage("checksum mismatch".into()));
        }
        let seq = u64::from_le_bytes(body[0..8].try_into().expect("8 bytes"));
        let writes = decode_payload(&body[8..]).map_err(|e| damage(e.into()))?;
        if let Some(last) = records.last()
            && seq != last.seq + 1
        {
            return Err(damage(format!("sequence number {seq} after {}", last.seq)));
        }
        records.push(Record { seq, writes });
        at += end;
    }
    Ok(records)
}

fn zeros(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// Whether a sector of the record at `log[start..end]` reads as never written: the
/// record's part of its first sector is all zeros, or a later sector it overlaps is
/// (checked over the whole sector, which a never-written one fills with zeros).
fn has_unwritten_sector(log: &[u8], start: usize, end: usize) -> bool {
    let boundary = (start / SECTOR_BYTES + 1) * SECTOR_BYTES;
    if zeros(&log[start..boundary.min(end)]) {
        return true;
    }
    (boundary..end).step_by(SECTOR_BYTES).any(|s| zeros(&log[s..(s + SECTOR_BYTES).min(log.len())]))
}

fn decode_payload(mut p: &[u8]) -> Result<Vec<Write>, &'static str> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Result<&'a [u8], &'static str> {
        if p.len() < n {
            return Err("payload shorter than its contents");
        }
        let (head, tail) = p.split_at(n);
        *p = tail;
        Ok(head)
    }
    fn len(p: &mut &[u8]) -> Result<usize, &'static str> {
        Ok(u32::from_le_bytes(take(p, 4)?.try_into().expect("4 bytes")) as usize)
    }
    let count = len(&mut p)?;
    let mut writes = Vec::with_capacity(count.min(p.len() / 5));
    for _ in 0..count {
        let key_len = len(&mut p)?;
        let key = take(&mut p, key_len)?.to_vec();
        let value = match take(&mut p, 1)?[0] {
            0 => None,
            1 => {
                let value_len = len(&mut p)?;
                Some(take(&mut p, value_len)?.to_vec())
            }
            _ => return Err("unknown write tag"),
        };
        writes.push((key, value));
    }
    if !p.is_empty() {
        return Err("payload longer than its contents");
    }
    Ok(writes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(tag: &str, n: usize, value_len: usize) -> Vec<Write> {
        (0..n)
            .map(|i| {
                let key = format!("{tag}-{i}").into_bytes();
                let value = (i % 3 != 2).then(|| vec![b'a' + (i % 26) as u8; value_len]);
                (key, value)
            })
            .collect()
    }

    fn log_of(groups: &[Vec<Write>]) -> Vec<u8> {
        let mut log = Vec::new();
        for (i, g) in groups.iter().enumerate() {
            log.extend(encode(i as u64 + 7, g.iter()));
        }
        log
    }

    #[test]
    fn records_round_trip_in_order() {
        let groups = vec![writes("a", 3, 10), writes("b", 0, 0), writes("c", 40, 100)];
        let records = read(&log_of(&groups)).unwrap();
        assert_eq!(records.len(), 3);
        for (i, (r, g)) in records.iter().zip(&groups).enumerate() {
            assert_eq!(r.seq, i as u64 + 7);
            assert_eq!(&r.writes, g);
        }
        assert_eq!(read(&[]).unwrap(), vec![]);
        assert_eq!(read(&[0; 4096]).unwrap(), vec![], "a zeroed file holds nothing");
    }

    #[test]
    fn a_record_cut_short_by_the_end_of_the_file_is_a_torn_tail() {
        let groups = vec![writes("a", 3, 10), writes("b", 30, 100)];
        let log = log_of(&groups);
        let first = encode(7, groups[0].iter()).len();
        for cut in [first + 1, first + HEADER_BYTES - 1, first + HEADER_BYTES + 5, log.len() - 1] {
            let records = read(&log[..cut]).unwrap();
            assert_eq!(records.len(), 1, "cut at {cut}");
        }
    }

    #[test]
    fn a_last_record_with_unwritten_sectors_is_a_torn_tail() {
        let groups = vec![writes("a", 3, 10), writes("b", 40, 100)];
        let mut log = log_of(&groups);
        let first = encode(7, groups[0].iter()).len();
        // The second record's second sector was never written.
        let sector = first.div_ceil(SECTOR_BYTES) * SECTOR_BYTES + SECTOR_BYTES;
        log[sector..sector + SECTOR_BYTES].fill(0);
        assert_eq!(read(&log).unwrap().len(), 1);
        // Zeros after the record (space the file grew into) change nothing.
        log.extend([0; 3000]);
        assert_eq!(read(&log).unwrap().len(), 1);
    }

    #[test]
    fn damage_to_an_acknowledged_record_is_an_error_not_a_tail() {
        let groups = vec![writes("a", 3, 10), writes("b", 40, 100), writes("c", 2, 5)];
        let log = log_of(&groups);
        let first = encode(7, groups[0].iter()).len();
        let second = encode(8, groups[1].iter()).len();
        // A bit flip in the last record: every sector written, so it is damage.
        let mut flipped = log.clone();
        let last_byte = flipped.len() - 1;
        flipped[last_byte] ^= 0x10;
        let damage = read(&flipped).unwrap_err();
        assert_eq!(damage.offset, (first + second) as u64);
        assert!(damage.to_string().contains("checksum"), "{damage}");
        // A bit flip in a middle record, even with zeros in it: more records follow.
        let mut middle = log.clone();
        middle[first + HEADER_BYTES + 600..first + HEADER_BYTES + 600 + 2 * SECTOR_BYTES].fill(0);
        assert_eq!(read(&middle).unwrap_err().offset, first as u64);
        // An impossible length.
        let mut long = log.clone();
        long[first..first + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(read(&long).unwrap_err().offset, first as u64);
    }

    #[test]
    fn a_gap_in_sequence_numbers_is_an_error() {
        let mut log = encode(1, writes("a", 1, 1).iter());
        log.extend(encode(3, writes("b", 1, 1).iter()));
        assert!(read(&log).unwrap_err().reason.contains("sequence number 3 after 1"));
    }

    #[test]
    fn garbage_is_an_error_or_a_tail_never_a_panic() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for len in [1, 15, 16, 17, 100, 511, 512, 513, 4096] {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = read(&bytes);
        }
    }
}
