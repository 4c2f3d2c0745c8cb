//! The silo format of a register: a small hand-written, versioned binary encoding.
//!
//! Registers are written on every Accept, so their encoding is on the write path. Version 1:
//!
//! ```text
//! u8      version (1)
//! ballot  promised                 ballot = 4 LEB128 varints: epoch, round, node, restart
//! u8      flags                    bit 0: accepted, bit 1: committed, bit 2: state present,
//!                                  bit 3: tombstone (else value)
//! [ballot accepted.ballot]         if bit 0
//! [varint len, bytes value]        if bit 2 and not bit 3
//! [varint n, n × (ballot, op)]     if bit 2: recent writes; op = 3 varints: node, restart, seq
//! ```
//!
//! Version 2 is version 1 with the version byte 2 and, if bit 2, two more fields at the end
//! (the state's [`Aborts`](crate::kv::Aborts)):
//!
//! ```text
//! [varint m, m × op]               if bit 2: aborted writes (R6), oldest first
//! [varint w, w × op]               if bit 2: per-node abort watermarks
//! ```
//!
//! A register whose state carries no aborted write is still written as version 1 (the
//! common case, byte for byte what earlier builds wrote and read); both versions decode.
//!
//! A value whose [`Encoding`] is not plain (compressed or encrypted by the runtime's
//! policies) sets flag bit 4 and carries the encoding in one byte right after the value's
//! bytes, in either version. A register without bit 4 holds a plain value: every register
//! written before encodings existed reads back unchanged. (A build that predates bit 4
//! refuses such a register as corrupt rather than misread it.)
//!
//! A register whose state carries a numbered history (versioning) sets flag bit 5 and
//! ends, in either version, with it:
//!
//! ```text
//! varint number, varint at_ms          the state's own version
//! varint h, h × version                the earlier versions, oldest first
//! version = varint number, varint at_ms, u8 kind (0 a Delete, 1 a plain value,
//!           2 an encoded value), [varint len, bytes] if kind > 0, [u8 encoding] if kind 2
//! ```
//!
//! Registers of keys never written under a versioning policy are byte for byte as before.
//!
//! Decoding never panics: truncated, oversized or unknown input is a [`StorageError`].

use crate::ids::{NodeTag, OpId};
use crate::kv::{
    ABORT_WATERMARKS_MAX, ABORTED_OPS_MAX, Aborts, Applied, Encoding, History, RECENT_OPS_MAX, State, VERSIONS_MAX,
    Value, Version,
};
use crate::paxos::acceptor::{Accepted, Register};
use crate::paxos::ballot::Ballot;
use crate::storage::StorageError;

/// The format without aborted writes.
const VERSION_1: u8 = 1;
/// The format with aborted writes.
const VERSION_2: u8 = 2;
const ACCEPTED: u8 = 1;
const COMMITTED: u8 = 2;
const STATE: u8 = 4;
const TOMBSTONE: u8 = 8;
const ENCODED: u8 = 16;
const HISTORY: u8 = 32;
/// Largest value length a register may claim (well above any configurable value limit).
const VALUE_BYTES_MAX: u64 = 1 << 32;

/// Encodes a register.
pub fn encode_register(r: &Register) -> Vec<u8> {
    let state = r.accepted.as_ref().and_then(|a| a.state.as_ref());
    let value_len = state.and_then(State::value).map_or(0, <[u8]>::len);
    let history_len = state.and_then(State::history).map_or(0, |h| {
        24 + h.earlier.iter().map(|v| 24 + v.value.as_ref().map_or(0, |v| v.bytes.len())).sum::<usize>()
    });
    let mut out = Vec::with_capacity(
        value_len
            + history_len
            + 48
            + 60 * state.map_or(0, |s| s.recent().len())
            + 30 * state.map_or(0, |s| s.aborted().ops.len() + s.aborted().below.len()),
    );
    let aborted = state.map(State::aborted).filter(|a| !a.is_empty());
    out.push(if aborted.is_none() { VERSION_1 } else { VERSION_2 });
    put_ballot(&mut out, r.promised);
    let mut flags = 0;
    if r.accepted.is_some() {
        flags |= ACCEPTED;
    }
    if r.committed {
        flags |= COMMITTED;
    }
    if let Some(s) = state {
        flags |= STATE;
        match s {
            State::Tombstone { .. } => flags |= TOMBSTONE,
            State::Value { encoding, .. } if *encoding != Encoding::PLAIN => flags |= ENCODED,
            State::Value { .. } => {}
        }
        if s.history().is_some() {
            flags |= HISTORY;
        }
    }
    out.push(flags);
    if let Some(a) = &r.accepted {
        put_ballot(&mut out, a.ballot);
    }
    if let Some(s) = state {
        if let State::Value { value, encoding, .. } = s {
            put_varint(&mut out, value.len() as u64);
            out.extend_from_slice(value);
            if *encoding != Encoding::PLAIN {
                out.push(encoding.0);
            }
        }
        put_varint(&mut out, s.recent().len() as u64);
        for a in s.recent() {
            put_ballot(&mut out, a.ballot);
            put_op(&mut out, a.op);
        }
        if let Some(aborted) = aborted {
            for ops in [&aborted.ops, &aborted.below] {
                put_varint(&mut out, ops.len() as u64);
                for op in ops {
                    put_op(&mut out, *op);
                }
            }
        }
        if let Some(h) = s.history() {
            put_varint(&mut out, h.number);
            put_varint(&mut out, h.at_ms);
            put_varint(&mut out, h.earlier.len() as u64);
            for v in &h.earlier {
                put_varint(&mut out, v.number);
                put_varint(&mut out, v.at_ms);
                match &v.value {
                    None => out.push(0),
                    Some(value) => {
                        out.push(if value.encoding == Encoding::PLAIN { 1 } else { 2 });
                        put_varint(&mut out, value.bytes.len() as u64);
                        out.extend_from_slice(&value.bytes);
                        if value.encoding != Encoding::PLAIN {
                            out.push(value.encoding.0);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Decodes a register, refusing anything malformed.
pub fn decode_register(bytes: &[u8]) -> Result<Register, StorageError> {
    let mut r = Reader { bytes, at: 0 };
    let version = r.byte()?;
    if version != VERSION_1 && version != VERSION_2 {
        return Err(corrupt("unknown register version"));
    }
    let promised = r.ballot()?;
    let flags = r.byte()?;
    if flags & !(ACCEPTED | COMMITTED | STATE | TOMBSTONE | ENCODED | HISTORY) != 0
        || (flags & STATE != 0 && flags & ACCEPTED == 0)
        || (flags & HISTORY != 0 && flags & STATE == 0)
        || (flags & ENCODED != 0 && (flags & STATE == 0 || flags & TOMBSTONE != 0))
    {
        return Err(corrupt("invalid register flags"));
    }
    let accepted = if flags & ACCEPTED != 0 {
        let ballot = r.ballot()?;
        let state = if flags & STATE != 0 { Some(r.state(flags, version == VERSION_2)?) } else { None };
        Some(Accepted { ballot, state })
    } else {
        None
    };
    if r.at != bytes.len() {
        return Err(corrupt("trailing bytes after a register"));
    }
    Ok(Register { promised, accepted, committed: flags & COMMITTED != 0 })
}

fn corrupt(what: &str) -> StorageError {
    StorageError(format!("corrupt register: {what}"))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_op(out: &mut Vec<u8>, op: OpId) {
    put_varint(out, op.node.0);
    put_varint(out, op.restart);
    put_varint(out, op.seq);
}

fn put_ballot(out: &mut Vec<u8>, b: Ballot) {
    put_varint(out, b.epoch);
    put_varint(out, b.round);
    put_varint(out, b.node.0);
    put_varint(out, b.restart);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, StorageError> {
        let b = *self.bytes.get(self.at).ok_or_else(|| corrupt("truncated"))?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, StorageError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f).checked_shl(shift).ok_or_else(|| corrupt("varint overflow"))?;
            if b & 0x80 == 0 {
                if shift == 63 && b > 1 {
                    return Err(corrupt("varint overflow"));
                }
                return Ok(v);
            }
        }
        Err(corrupt("varint too long"))
    }

    fn ballot(&mut self) -> Result<Ballot, StorageError> {
        Ok(Ballot {
            epoch: self.varint()?,
            round: self.varint()?,
            node: NodeTag(self.varint()?),
            restart: self.varint()?,
        })
    }

    fn op(&mut self) -> Result<OpId, StorageError> {
        Ok(OpId { node: NodeTag(self.varint()?), restart: self.varint()?, seq: self.varint()? })
    }

    fn ops(&mut self, max: usize) -> Result<Vec<OpId>, StorageError> {
        let n = self.varint()?;
        if n > max as u64 * 16 {
            return Err(corrupt("too many aborted writes"));
        }
        (0..n).map(|_| self.op()).collect()
    }

    fn state(&mut self, flags: u8, with_aborted: bool) -> Result<State, StorageError> {
        let value = if flags & TOMBSTONE != 0 {
            None
        } else {
            let v = self.bytes_field()?;
            let encoding = if flags & ENCODED != 0 { Encoding(self.byte()?) } else { Encoding::PLAIN };
            if flags & ENCODED != 0 && encoding == Encoding::PLAIN {
                return Err(corrupt("an encoded value marked plain"));
            }
            Some((v, encoding))
        };
        let n = self.varint()?;
        if n > RECENT_OPS_MAX as u64 * 16 {
            return Err(corrupt("too many recent writes"));
        }
        let mut recent = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let ballot = self.ballot()?;
            let op = self.op()?;
            recent.push(Applied { ballot, op });
        }
        let mut aborted = Aborts::default();
        if with_aborted {
            aborted.ops = self.ops(ABORTED_OPS_MAX)?;
            aborted.below = self.ops(ABORT_WATERMARKS_MAX)?;
        }
        let history = if flags & HISTORY != 0 { Some(Box::new(self.history()?)) } else { None };
        Ok(match value {
            Some((value, encoding)) => State::Value { value, encoding, recent, aborted, history },
            None => State::Tombstone { recent, aborted, history },
        })
    }

    /// A length-prefixed byte string.
    fn bytes_field(&mut self) -> Result<Vec<u8>, StorageError> {
        let len = self.varint()?;
        if len > VALUE_BYTES_MAX || len as usize > self.bytes.len() - self.at {
            return Err(corrupt("value longer than the record"));
        }
        let v = self.bytes[self.at..self.at + len as usize].to_vec();
        self.at += len as usize;
        Ok(v)
    }

    fn history(&mut self) -> Result<History, StorageError> {
        let number = self.varint()?;
        let at_ms = self.varint()?;
        let n = self.varint()?;
        if n >= u64::from(VERSIONS_MAX) {
            return Err(corrupt("too many versions"));
        }
        let mut earlier = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let number = self.varint()?;
            let at_ms = self.varint()?;
            let value = match self.byte()? {
                0 => None,
                1 => Some(Value { bytes: self.bytes_field()?, encoding: Encoding::PLAIN }),
                2 => {
                    let bytes = self.bytes_field()?;
                    let encoding = Encoding(self.byte()?);
                    if encoding == Encoding::PLAIN {
                        return Err(corrupt("an encoded version marked plain"));
                    }
                    Some(Value { bytes, encoding })
                }
                _ => return Err(corrupt("unknown version kind")),
            };
            earlier.push(Version { number, at_ms, value });
        }
        Ok(History { number, at_ms, earlier })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ballot() -> impl Strategy<Value = Ballot> {
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(epoch, round, node, restart)| Ballot {
            epoch,
            round,
            node: NodeTag(node),
            restart,
        })
    }

    fn applied() -> impl Strategy<Value = Applied> {
        (ballot(), any::<u64>(), any::<u64>(), any::<u64>())
            .prop_map(|(ballot, n, r, s)| Applied { ballot, op: OpId { node: NodeTag(n), restart: r, seq: s } })
    }

    fn op() -> impl Strategy<Value = OpId> {
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(n, r, s)| OpId { node: NodeTag(n), restart: r, seq: s })
    }

    fn history() -> impl Strategy<Value = Option<Box<History>>> {
        let version = (
            any::<u64>(),
            any::<u64>(),
            prop_oneof![
                Just(None),
                (proptest::collection::vec(any::<u8>(), 0..16), any::<u8>())
                    .prop_map(|(bytes, e)| Some(Value { bytes, encoding: Encoding(e) })),
            ],
        )
            .prop_map(|(number, at_ms, value)| Version { number, at_ms, value });
        prop_oneof![
            Just(None),
            (any::<u64>(), any::<u64>(), proptest::collection::vec(version, 0..6))
                .prop_map(|(number, at_ms, earlier)| Some(Box::new(History { number, at_ms, earlier }))),
        ]
    }

    fn register() -> impl Strategy<Value = Register> {
        let aborted = || {
            prop_oneof![
                Just(Aborts::default()),
                (proptest::collection::vec(op(), 0..9), proptest::collection::vec(op(), 0..4))
                    .prop_map(|(ops, below)| Aborts { ops, below }),
            ]
        };
        let state = prop_oneof![
            Just(None),
            (
                proptest::collection::vec(any::<u8>(), 0..64),
                prop_oneof![Just(0u8), any::<u8>()],
                proptest::collection::vec(applied(), 0..5),
                aborted(),
                history(),
            )
                .prop_map(|(value, encoding, recent, aborted, history)| Some(State::Value {
                    value,
                    encoding: Encoding(encoding),
                    recent,
                    aborted,
                    history,
                })),
            (proptest::collection::vec(applied(), 0..5), aborted(), history())
                .prop_map(|(recent, aborted, history)| Some(State::Tombstone { recent, aborted, history })),
        ];
        let accepted =
            prop_oneof![Just(None), (ballot(), state).prop_map(|(ballot, state)| Some(Accepted { ballot, state }))];
        (ballot(), accepted, any::<bool>()).prop_map(|(promised, accepted, committed)| Register {
            promised,
            accepted,
            committed,
        })
    }

    proptest! {
        #[test]
        fn registers_round_trip(r in register()) {
            prop_assert_eq!(decode_register(&encode_register(&r)).unwrap(), r);
        }

        #[test]
        fn any_prefix_or_garbage_is_an_error_not_a_panic(r in register(), cut in any::<prop::sample::Index>(), junk in proptest::collection::vec(any::<u8>(), 0..80)) {
            let bytes = encode_register(&r);
            let len = cut.index(bytes.len());
            prop_assert!(decode_register(&bytes[..len]).is_err());
            let _ = decode_register(&junk);
        }
    }

    #[test]
    fn the_format_is_frozen() {
        // A change here breaks every silo written before it: bump VERSION instead.
        let op = OpId { node: NodeTag(300), restart: 1, seq: 2 };
        let b = Ballot { epoch: 1, round: 2, node: NodeTag(300), restart: 1 };
        let r = Register {
            promised: b,
            accepted: Some(Accepted {
                ballot: b,
                state: Some(State::Value {
                    value: b"hi".to_vec(),
                    encoding: Encoding::PLAIN,
                    recent: vec![Applied { ballot: b, op }],
                    aborted: Aborts::default(),
                    history: None,
                }),
            }),
            committed: true,
        };
        assert_eq!(
            encode_register(&r),
            vec![
                1, 1, 2, 0xac, 0x02, 1, 7, 1, 2, 0xac, 0x02, 1, 2, b'h', b'i', 1, 1, 2, 0xac, 0x02, 1, 0xac, 0x02, 1, 2
            ]
        );
    }

    #[test]
    fn the_format_with_aborted_writes_is_frozen() {
        // Version 2: version 1 plus the aborted writes. A change here breaks every silo
        // written before it: add a version instead.
        let op = OpId { node: NodeTag(300), restart: 1, seq: 2 };
        let gone = OpId { node: NodeTag(5), restart: 2, seq: 130 };
        let b = Ballot { epoch: 1, round: 2, node: NodeTag(300), restart: 1 };
        let r = Register {
            promised: b,
            accepted: Some(Accepted {
                ballot: b,
                state: Some(State::Tombstone {
                    recent: vec![Applied { ballot: b, op }],
                    aborted: Aborts { ops: vec![gone], below: vec![op] },
                    history: None,
                }),
            }),
            committed: false,
        };
        let bytes = vec![
            2, // version 2
            1, 2, 0xac, 0x02, 1,  // promised
            13, // accepted, state, tombstone
            1, 2, 0xac, 0x02, 1, // accepted ballot
            1, 1, 2, 0xac, 0x02, 1, 0xac, 0x02, 1, 2, // one recent write
            1, 5, 2, 0x82, 0x01, // one aborted write
            1, 0xac, 0x02, 1, 2, // one watermark
        ];
        assert_eq!(encode_register(&r), bytes);
        assert_eq!(decode_register(&bytes).unwrap(), r);
    }

    #[test]
    fn an_encoded_value_keeps_its_encoding_and_a_plain_one_is_written_as_before() {
        let b = Ballot { epoch: 1, round: 2, node: NodeTag(3), restart: 1 };
        let register = |encoding| Register {
            promised: b,
            accepted: Some(Accepted {
                ballot: b,
                state: Some(State::Value {
                    value: b"hi".to_vec(),
                    encoding: Encoding(encoding),
                    recent: vec![],
                    aborted: Aborts::default(),
                    history: None,
                }),
            }),
            committed: false,
        };
        let plain = encode_register(&register(0));
        let encoded = encode_register(&register(2));
        // The encoding costs one byte and one flag; a plain value is byte for byte what
        // builds before encodings wrote.
        assert_eq!(encoded.len(), plain.len() + 1);
        assert_eq!(plain[..plain.len() - 1], [1, 1, 2, 3, 1, 1 | 4, 1, 2, 3, 1, 2, b'h', b'i']);
        assert_eq!(decode_register(&encoded).unwrap(), register(2));
        // An encoding byte of 0 behind the flag, or the flag on a tombstone, is refused.
        let mut zero = encoded.clone();
        let at = zero.len() - 2; // the encoding, then the count of recent writes (0)
        assert_eq!(zero[at], 2);
        zero[at] = 0;
        assert!(decode_register(&zero).is_err());
        let tombstone = [1, 1, 2, 3, 1, 1 | 4 | 8 | 16, 1, 2, 3, 1, 0];
        assert!(decode_register(&tombstone).is_err());
    }

    #[test]
    fn a_history_is_written_behind_flag_5_and_its_damage_is_refused() {
        let b = Ballot { epoch: 1, round: 2, node: NodeTag(3), restart: 1 };
        let history = History {
            number: 3,
            at_ms: 300,
            earlier: vec![
                Version { number: 1, at_ms: 5, value: Some(Value::plain("a")) },
                Version { number: 2, at_ms: 6, value: None },
            ],
        };
        let register = Register {
            promised: b,
            accepted: Some(Accepted {
                ballot: b,
                state: Some(State::Tombstone {
                    recent: vec![],
                    aborted: Aborts::default(),
                    history: Some(Box::new(history)),
                }),
            }),
            committed: false,
        };
        let bytes = encode_register(&register);
        assert_eq!(
            bytes,
            [1, 1, 2, 3, 1, 1 | 4 | 8 | 32, 1, 2, 3, 1, 0, 3, 0xac, 0x02, 2, 1, 5, 1, 1, b'a', 2, 6, 0],
            "the history is appended; everything before it is the version 1 layout"
        );
        assert_eq!(decode_register(&bytes).unwrap(), register);
        let mut kind = bytes.clone();
        kind[17] = 7; // the first version's kind
        assert!(decode_register(&kind).is_err());
        let mut flags = bytes.clone();
        flags[5] = 32; // a history without a state
        assert!(decode_register(&flags).is_err());
        assert!(decode_register(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn version_1_registers_still_decode() {
        // Bytes written by builds before aborted writes existed.
        let bytes = [1, 1, 2, 0xac, 0x02, 1, 7, 1, 2, 0xac, 0x02, 1, 2, b'h', b'i', 0];
        let r = decode_register(&bytes).unwrap();
        let state = r.accepted.and_then(|a| a.state).unwrap();
        assert_eq!(
            state,
            State::Value {
                value: b"hi".to_vec(),
                encoding: Encoding::PLAIN,
                recent: vec![],
                aborted: Aborts::default(),
                history: None,
            }
        );
    }
}
