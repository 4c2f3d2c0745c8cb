//! Persistence inside the node: the open batch, the overlay of not-yet-durable writes, and
//! the messages held until the batches they depend on are durable (R4).
//!
//! Each write goes into the open batch and into the overlay (so the engine reads its own
//! pending writes). `take_batch` closes the open batch; the runtime makes batches durable
//! in order and reports the highest durable id. A key's overlay entry remembers the last
//! batch that changed what acceptors report about it (its *gate*); replies about that key
//! are held until the gate is durable. Marking a state committed changes no reported state
//! that could be lost unsafely (a lost flag only costs a read fallback), so it does not
//! move the gate.

use crate::ids::NodeId;
use crate::message::Message;
use crate::paxos::acceptor::Register;
use crate::paxos::ballot::Ballot;
use crate::placement::PartitionId;
use crate::storage::{self, BatchId, PersistBatch, Storage, StorageError};
use std::collections::{BTreeMap, VecDeque};

struct Entry {
    /// Last batch that wrote this silo key.
    batch: BatchId,
    /// Last batch that changed reported state.
    gate: BatchId,
    /// The pending register (`None`: deleted).
    register: Option<Register>,
}

#[derive(Default)]
pub(super) struct Persist {
    open: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Id of the open batch; batches are numbered from 1.
    open_id: BatchId,
    durable: BatchId,
    /// The batch holding this life's restart counter: nothing is sent before it.
    restart_batch: BatchId,
    overlay: BTreeMap<Vec<u8>, Entry>,
    /// Silo keys written by each not-yet-durable batch, to trim the overlay.
    written: VecDeque<(BatchId, Vec<Vec<u8>>)>,
    held: BTreeMap<BatchId, Vec<(NodeId, Message)>>,
    /// Batches closed because they were full, waiting for `take_batch`.
    closed: VecDeque<PersistBatch>,
    /// Writes per batch (`Config::batch_writes_max`).
    batch_writes_max: usize,
    floors: BTreeMap<PartitionId, Ballot>,
}

impl Persist {
    /// Reads, bumps and writes the restart counter (R1). Returns this life's counter.
    pub(super) fn bump_restart(&mut self, silo: &impl Storage, batch_writes_max: usize) -> Result<u64, StorageError> {
        self.open_id = 1;
        self.batch_writes_max = batch_writes_max.max(1);
        let previous = match silo.get(storage::RESTART_KEY)? {
            Some(bytes) => {
                let arr: [u8; 8] =
                    bytes.as_slice().try_into().map_err(|_| StorageError("corrupt restart counter".into()))?;
                u64::from_le_bytes(arr)
            }
            None => 0,
        };
        let restart = previous + 1;
        self.open.insert(storage::RESTART_KEY.to_vec(), Some(restart.to_le_bytes().to_vec()));
        self.restart_batch = 1;
        Ok(restart)
    }

    /// The register of `key`, reading through the overlay.
    pub(super) fn register(
        &mut self,
        silo: &impl Storage,
        partition: PartitionId,
        key: &str,
    ) -> Result<Register, StorageError> {
        let sk = storage::register_key(partition, key.as_bytes());
        if let Some(e) = self.overlay.get(&sk) {
            return match &e.register {
                Some(r) => Ok(r.clone()),
                None => Ok(Register::absent(self.floor(silo, partition)?)),
            };
        }
        match silo.get(&sk)? {
            Some(bytes) => storage::decode_register(&bytes),
            None => Ok(Register::absent(self.floor(silo, partition)?)),
        }
    }

    /// The partition's GC floor.
    pub(super) fn floor(&mut self, silo: &impl Storage, partition: PartitionId) -> Result<Ballot, StorageError> {
        if let Some(f) = self.floors.get(&partition) {
            return Ok(*f);
        }
        let floor = match silo.get(&storage::floor_key(partition))? {
            Some(bytes) => storage::decode_ballot(&bytes)?,
            None => Ballot::ZERO,
        };
        self.floors.insert(partition, floor);
        Ok(floor)
    }

    /// Writes (or with `None` deletes) a register. `reported` says whether the change is
    /// visible to reads and promises, and so gates replies about the key.
    pub(super) fn put_register(
        &mut self,
        partition: PartitionId,
        key: &str,
        register: Option<Register>,
        reported: bool,
    ) {
        if self.open.len() >= self.batch_writes_max {
            self.close();
        }
        let sk = storage::register_key(partition, key.as_bytes());
        self.open.insert(sk.clone(), register.as_ref().map(storage::encode_register));
        let id = self.open_id;
        let entry = self.overlay.entry(sk.clone()).or_insert(Entry { batch: id, gate: 0, register: None });
        entry.batch = id;
        if reported {
            entry.gate = id;
        }
        entry.register = register;
        match self.written.back_mut() {
            Some((b, keys)) if *b == id => keys.push(sk),
            _ => self.written.push_back((id, vec![sk])),
        }
    }

    /// Keys with pending writes whose silo keys lie in `[start, end)`.
    pub(super) fn pending_keys(&self, start: &[u8], end: &[u8]) -> Vec<String> {
        if start >= end {
            return Vec::new();
        }
        self.overlay
            .range(start.to_vec()..end.to_vec())
            .filter_map(|(sk, _)| String::from_utf8(sk[5..].to_vec()).ok())
            .collect()
    }

    /// Raises a partition's floor, in the open batch.
    pub(super) fn put_floor(&mut self, partition: PartitionId, floor: Ballot) {
        self.floors.insert(partition, floor);
        self.open.insert(storage::floor_key(partition), Some(storage::encode_ballot(&floor)));
    }

    /// The batch a reply about `key` must wait for, if it is not durable yet.
    pub(super) fn gate(&self, partition: PartitionId, key: &str) -> Option<BatchId> {
        let sk = storage::register_key(partition, key.as_bytes());
        let gate = self.overlay.get(&sk)?.gate;
        (gate > self.durable).then_some(gate)
    }

    /// Whether a message gated on `gate` must be held, and until which batch.
    pub(super) fn hold(&self, gate: Option<BatchId>) -> Option<BatchId> {
        let batch = gate.unwrap_or(0).max(self.restart_batch);
        (batch > self.durable).then_some(batch)
    }

    pub(super) fn hold_until(&mut self, batch: BatchId, to: NodeId, msg: Message) {
        self.held.entry(batch).or_default().push((to, msg));
    }

    /// The next batch: a full one closed earlier, else the open one (closing it).
    pub(super) fn take_batch(&mut self) -> Option<PersistBatch> {
        if let Some(batch) = self.closed.pop_front() {
            return Some(batch);
        }
        self.close();
        self.closed.pop_front()
    }

    /// Closes the open batch, if it holds anything.
    fn close(&mut self) {
        if self.open.is_empty() {
            return;
        }
        let writes = std::mem::take(&mut self.open).into_iter().collect();
        self.closed.push_back(PersistBatch { id: self.open_id, writes });
        self.open_id += 1;
    }

    /// Every batch up to `batch` is durable: trims the overlay, returns released messages.
    pub(super) fn persisted(&mut self, batch: BatchId) -> Vec<(NodeId, Message)> {
        // A batch the node never emitted cannot be durable; ignore such reports.
        let batch = batch.min(self.open_id.saturating_sub(1));
        if batch <= self.durable {
            return Vec::new();
        }
        self.durable = batch;
        while let Some((b, _)) = self.written.front() {
            if *b > batch {
                break;
            }
            let Some((_, keys)) = self.written.pop_front() else {
                break;
            };
            for sk in keys {
                if self.overlay.get(&sk).is_some_and(|e| e.batch <= batch) {
                    self.overlay.remove(&sk);
                }
            }
        }
        let later = self.held.split_off(&(batch + 1));
        let released = std::mem::replace(&mut self.held, later);
        released.into_values().flatten().collect()
    }
}
