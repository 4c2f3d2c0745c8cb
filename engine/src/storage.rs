//! The storage boundary (docs/ARCHITECTURE.md, "The engine contract"): a narrow, ordered, atomic-batch key-value silo.
//!
//! The engine only reads (`get`, `scan`); it emits writes as [`PersistBatch`]es that the
//! runtime applies atomically, in order, and makes durable (group commit: one sync for
//! every batch ready at that moment), then reports with `Node::handle_persisted`. Until
//! then the engine reads its own pending writes from an in-memory overlay.
//!
//! Layout of the silo's key space:
//! - `r` + partition (4 bytes, big-endian) + key bytes → a register in the silo format of `codec.rs` ([`encode_register`])
//! - `f` + partition (4 bytes, big-endian) → the partition's GC floor ballot (R8)
//! - `a` + partition (4 bytes, big-endian) → the abort watermarks of the keys GC removed
//!   from it (R6, R8)
//! - `c` + partition (4 bytes, big-endian) → the partition's chosen config, once it
//!   changed from the founding one (F6)
//! - `d` + partition (4 bytes, big-endian) → the partition's decree instance state (F1)
//! - `n/` + node name → a member of the cluster as this node knows it: its SWIM identity and
//!   whether it is up (M3)
//! - `m/restart` → the node's restart counter (R1)
//! - `m/promise-ceiling` → a ballot at or above every promise the node sent (R4)

use crate::paxos::ballot::Ballot;
use crate::placement::PartitionId;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Identifies a persist batch; batches are numbered from 1 in the order they are emitted,
/// and must become durable in that order.
pub type BatchId = u64;

/// Writes that must be applied atomically and made durable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PersistBatch {
    /// The batch.
    pub id: BatchId,
    /// `(silo key, Some(value))` to put, `(silo key, None)` to delete, to apply in this
    /// order (a later write to a key replaces an earlier one).
    pub writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// Entries of a scan: `(silo key, value)` in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A storage failure, as the silo reports it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("storage: {0}")]
pub struct StorageError(pub String);

/// A silo. Methods take `&self`: the runtime may write from its committer while the
/// engine reads.
pub trait Storage {
    /// The value under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// Up to `limit` entries with `start <= key < end`, in key order.
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StorageError>;
    /// Applies a batch atomically (not necessarily durably).
    fn write(&self, batch: &PersistBatch) -> Result<(), StorageError>;
    /// Makes every applied batch durable.
    fn sync(&self) -> Result<(), StorageError>;
    /// Applies `batches` in order and makes them durable: what a group commit does. When
    /// it returns `Ok`, every batch survives a crash; on an error, a prefix of them may
    /// have been applied (each one whole). The default writes each batch, then syncs once;
    /// a silo whose transactions cost more than their writes (redb) does it in one.
    fn commit(&self, batches: &[PersistBatch]) -> Result<(), StorageError> {
        for batch in batches {
            self.write(batch)?;
        }
        self.sync()
    }
}

impl<S: Storage + ?Sized> Storage for std::sync::Arc<S> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        (**self).get(key)
    }
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StorageError> {
        (**self).scan(start, end, limit)
    }
    fn write(&self, batch: &PersistBatch) -> Result<(), StorageError> {
        (**self).write(batch)
    }
    fn sync(&self) -> Result<(), StorageError> {
        (**self).sync()
    }
    fn commit(&self, batches: &[PersistBatch]) -> Result<(), StorageError> {
        (**self).commit(batches)
    }
}

/// An in-memory silo for tests and `memo dev`. Durable for as long as it lives.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    data: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryStorage {
    /// An empty silo.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of every entry (tests compare replicas with it).
    pub fn snapshot(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        // A poisoned lock means a panic while holding it, in a test; the map is still
        // consistent because every mutation is a single insert or remove.
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Storage for MemoryStorage {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.lock().get(key).cloned())
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StorageError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let data = self.lock();
        Ok(data.range(start.to_vec()..end.to_vec()).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn write(&self, batch: &PersistBatch) -> Result<(), StorageError> {
        let mut data = self.lock();
        for (k, v) in &batch.writes {
            match v {
                Some(v) => data.insert(k.clone(), v.clone()),
                None => data.remove(k),
            };
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// The silo key of a register.
pub fn register_key(partition: PartitionId, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + key.len());
    register_key_into(&mut k, partition, key);
    k
}

/// Writes the silo key of a register into `out`, replacing its contents.
pub fn register_key_into(out: &mut Vec<u8>, partition: PartitionId, key: &[u8]) {
    out.clear();
    out.push(b'r');
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(key);
}

/// The silo key of a partition's abort watermarks: the aborted writes (R6) of the keys
/// that garbage collection removed from it (a postcard `Vec<OpId>`, one per node).
pub fn aborts_key(partition: PartitionId) -> Vec<u8> {
    let mut k = vec![b'a'];
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// The silo key of a partition's chosen config.
pub fn config_key(partition: PartitionId) -> Vec<u8> {
    let mut k = vec![b'c'];
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// The silo key of a partition's decree instance state.
pub fn decree_key(partition: PartitionId) -> Vec<u8> {
    let mut k = vec![b'd'];
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// The silo key of a member record.
pub fn member_key(name: &str) -> Vec<u8> {
    let mut k = b"n/".to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

/// The silo key of a partition's floor.
pub fn floor_key(partition: PartitionId) -> Vec<u8> {
    let mut k = vec![b'f'];
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// The silo key of the restart counter.
pub const RESTART_KEY: &[u8] = b"m/restart";
/// The silo key of the node's promise ceiling: a ballot at or above every promise the
/// node has sent (see `node::persist`).
pub const PROMISE_CEILING_KEY: &[u8] = b"m/promise-ceiling";

pub use crate::codec::{decode_register, encode_register};

/// Encodes a ballot (floors).
pub fn encode_ballot(ballot: &Ballot) -> Vec<u8> {
    // See `message::encode`.
    postcard::to_stdvec(ballot).expect("ballot encodes")
}

/// Decodes a ballot read from the silo.
pub fn decode_ballot(bytes: &[u8]) -> Result<Ballot, StorageError> {
    postcard::from_bytes(bytes).map_err(|e| StorageError(format!("corrupt ballot: {e}")))
}
