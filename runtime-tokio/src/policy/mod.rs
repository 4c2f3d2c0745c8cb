//! How a node encodes the values it takes in: today, compression (issue 12's first
//! policy). The engine stores every value with an [`Encoding`] byte and hands both back on
//! reads; this module gives the byte its meaning and does the work, where the value enters
//! the cluster (the node that took the client's write), so the peer links and the disks
//! both carry the encoded form.
//!
//! # Rules
//!
//! - **Every stored value says how it was encoded.** A value is decoded by its own
//!   encoding byte, never by the node's current settings: a node reads what any other
//!   node, or an earlier setting, wrote. A value written before encodings existed is
//!   plain ([`Encoding::PLAIN`]) and reads back unchanged.
//! - **Compression is skipped when it does not shrink the value**: such a value is stored
//!   plain.
//! - **Decoding never trusts the stored bytes**: a value that does not decode, claims to
//!   be bigger than the value limit, or carries an encoding this build does not know is an
//!   error (`DATA_LOSS`-like `Internal` to the client), never a panic and never garbage.
//!
//! # The encoding byte
//!
//! | bits | meaning |
//! |---|---|
//! | 0–3 | compression: 0 none, 1 lz4 (block format, 4-byte little-endian length first), 2 zstd (one frame) |
//! | 4 | encrypted ([`crypt`]): XChaCha20-Poly1305 over the (compressed) bytes |
//! | 5–7 | reserved; a value with any of them set is refused by this build |

pub mod crypt;
pub mod table;

use memo_engine::{Encoding, KvError, Value};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

const CODEC_MASK: u8 = 0x0f;
const CODEC_NONE: u8 = 0;
const CODEC_LZ4: u8 = 1;
const CODEC_ZSTD: u8 = 2;

/// zstd's level when `zstd` is given without one.
pub const ZSTD_LEVEL_DEFAULT: i32 = 3;

/// How values are compressed when they enter the cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    /// Stored as the client sent them.
    #[default]
    None,
    /// lz4: fast, a modest ratio.
    Lz4,
    /// zstd at a level (1–22; negative levels are faster still).
    Zstd(i32),
}

impl FromStr for Compression {
    type Err = String;

    /// `none`, `lz4`, `zstd` or `zstd:LEVEL`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Compression::None),
            "lz4" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd(ZSTD_LEVEL_DEFAULT)),
            _ => {
                let level = s
                    .strip_prefix("zstd:")
                    .ok_or_else(|| format!("unknown compression {s:?}: expected none, lz4, zstd or zstd:LEVEL"))?;
                let level: i32 = level.parse().map_err(|_| format!("zstd level {level:?} is not a number"))?;
                let range = zstd::compression_level_range();
                if !range.contains(&level) {
                    return Err(format!("zstd level {level} is out of range ({}..={})", range.start(), range.end()));
                }
                Ok(Compression::Zstd(level))
            }
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Lz4 => f.write_str("lz4"),
            Compression::Zstd(level) => write!(f, "zstd:{level}"),
        }
    }
}

/// What a node does to the values it takes in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValuePolicy {
    /// Compression of new values.
    pub compression: Compression,
    /// Whether new values are encrypted ([`crypt`]), after compression.
    pub encrypt: bool,
    /// How many versions of each key to keep, the current one included (0 and 1: no
    /// history; at most [`memo_engine::kv::VERSIONS_MAX`]). Carried by every write that
    /// enters the cluster at this node ([`memo_engine::kv::Stamp`]).
    pub versions: u16,
}

impl ValuePolicy {
    /// Compresses a client's value under this policy (encryption is the caller's:
    /// it needs the node's keys and the KV key, see [`table::Policies::encode`]).
    pub fn encode(&self, plain: Vec<u8>) -> Value {
        let compressed = match self.compression {
            Compression::None => None,
            Compression::Lz4 => Some((CODEC_LZ4, lz4_flex::compress_prepend_size(&plain))),
            // Compressing a buffer in memory only fails on an invalid level, which parsing
            // refused; a failure stores the value plain rather than losing it.
            Compression::Zstd(level) => zstd::bulk::compress(&plain, level).ok().map(|c| (CODEC_ZSTD, c)),
        };
        match compressed {
            Some((codec, bytes)) if bytes.len() < plain.len() => Value { bytes, encoding: Encoding(codec) },
            _ => Value::plain(plain),
        }
    }
}

/// Decodes a stored value back to the client's bytes. `limit` bounds the decoded size
/// (the node's value limit): a value claiming more is refused before anything is
/// allocated for it.
pub fn decode(value: Value, limit: usize) -> Result<Vec<u8>, KvError> {
    let Value { bytes, encoding } = value;
    if encoding.0 & crypt::ENCRYPTED != 0 {
        return Err(undecodable(encoding, "it is encrypted"));
    }
    if encoding.0 & !CODEC_MASK != 0 {
        return Err(undecodable(encoding, "it is encoded by a newer memo"));
    }
    match encoding.0 & CODEC_MASK {
        CODEC_NONE => Ok(bytes),
        CODEC_LZ4 => {
            let size = bytes.get(..4).ok_or_else(|| undecodable(encoding, "truncated"))?;
            let size = u32::from_le_bytes(size.try_into().expect("four bytes")) as usize;
            if size > limit {
                return Err(undecodable(encoding, "it claims to be bigger than the value limit"));
            }
            lz4_flex::decompress_size_prepended(&bytes).map_err(|e| undecodable(encoding, &e.to_string()))
        }
        CODEC_ZSTD => zstd::bulk::decompress(&bytes, limit).map_err(|e| undecodable(encoding, &e.to_string())),
        _ => Err(undecodable(encoding, "its compression is unknown to this build")),
    }
}

pub(crate) fn undecodable(encoding: Encoding, why: &str) -> KvError {
    KvError::Internal(format!("a stored value (encoding {:#04x}) does not decode: {why}", encoding.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1 << 20;

    fn json(n: usize) -> Vec<u8> {
        (0..n).map(|i| format!("{{\"id\":{i},\"name\":\"user-{i}\",\"active\":true}}")).collect::<String>().into_bytes()
    }

    #[test]
    fn every_compression_round_trips_and_shrinks_a_compressible_value() {
        let plain = json(200);
        for compression in [Compression::Lz4, Compression::Zstd(1), Compression::Zstd(ZSTD_LEVEL_DEFAULT)] {
            let stored = ValuePolicy { compression, encrypt: false, versions: 0 }.encode(plain.clone());
            assert_ne!(stored.encoding, Encoding::PLAIN, "{compression}");
            assert!(stored.bytes.len() * 3 < plain.len(), "{compression}: {} bytes", stored.bytes.len());
            assert_eq!(decode(stored, LIMIT).unwrap(), plain, "{compression}");
        }
    }

    #[test]
    fn a_value_that_does_not_shrink_is_stored_plain() {
        // splitmix64 output: no redundancy for either codec to find.
        let mix = |i: u64| {
            let mut z = i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let incompressible: Vec<u8> = (0..64u64).flat_map(|i| mix(i).to_le_bytes()).collect();
        for compression in [Compression::None, Compression::Lz4, Compression::Zstd(3)] {
            for plain in [Vec::new(), b"x".to_vec(), incompressible.clone()] {
                let stored = ValuePolicy { compression, encrypt: false, versions: 0 }.encode(plain.clone());
                assert_eq!(stored, Value::plain(plain.clone()), "{compression}");
            }
        }
    }

    #[test]
    fn a_value_decodes_by_its_own_encoding_whatever_the_policy() {
        // Written under lz4, read by a node whose policy is zstd or none: decode takes no
        // policy at all, only the value.
        let plain = json(50);
        let stored = ValuePolicy { compression: Compression::Lz4, encrypt: false, versions: 0 }.encode(plain.clone());
        assert_eq!(decode(stored, LIMIT).unwrap(), plain);
        assert_eq!(decode(Value::plain(b"old".to_vec()), LIMIT).unwrap(), b"old");
    }

    #[test]
    fn garbage_unknown_encodings_and_bombs_are_errors() {
        let cases = [
            Value { bytes: vec![1, 2, 3], encoding: Encoding(CODEC_LZ4) },
            Value { bytes: vec![0xff; 40], encoding: Encoding(CODEC_LZ4) },
            Value { bytes: vec![0xff; 40], encoding: Encoding(CODEC_ZSTD) },
            Value { bytes: b"x".to_vec(), encoding: Encoding(7) },
            Value { bytes: b"x".to_vec(), encoding: Encoding(0x10) },
        ];
        for value in cases {
            let error = decode(value.clone(), LIMIT).unwrap_err();
            assert!(matches!(&error, KvError::Internal(m) if m.contains("does not decode")), "{value:?}: {error:?}");
        }
        // A value that decodes to more than the limit is refused, in either codec.
        let big = vec![0u8; 4096];
        for compression in [Compression::Lz4, Compression::Zstd(3)] {
            let stored = ValuePolicy { compression, encrypt: false, versions: 0 }.encode(big.clone());
            assert!(stored.bytes.len() < 200, "{compression}");
            assert!(decode(stored.clone(), 4095).is_err(), "{compression}");
            assert_eq!(decode(stored, 4096).unwrap(), big, "{compression}");
        }
    }

    #[test]
    fn compression_names_parse_and_print() {
        for (text, parsed) in [
            ("none", Compression::None),
            ("lz4", Compression::Lz4),
            ("zstd", Compression::Zstd(ZSTD_LEVEL_DEFAULT)),
            ("zstd:19", Compression::Zstd(19)),
            ("zstd:-5", Compression::Zstd(-5)),
        ] {
            assert_eq!(text.parse::<Compression>(), Ok(parsed), "{text}");
            assert_eq!(parsed.to_string().parse::<Compression>(), Ok(parsed), "{text}");
        }
        for bad in ["gzip", "zstd:", "zstd:x", "zstd:99", "LZ4", ""] {
            assert!(bad.parse::<Compression>().is_err(), "{bad}");
        }
    }
}
