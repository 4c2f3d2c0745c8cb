//! Persistence inside the node: the open batch, a cache of decoded registers whose dirty
//! part is the overlay of not-yet-durable writes, and the messages held until the batches
//! they depend on are durable (R4).
//!
//! Each write goes into the open batch and into the cache, so the engine reads its own
//! pending writes (and never decodes a register it touched recently). `take_batch` closes
//! the open batch; the runtime makes batches durable in order and reports the highest
//! durable id. A key's cache entry remembers the last batch that changed what acceptors
//! report about it (its *gate*); replies about that key are held until the gate is
//! durable. Marking a state committed changes no reported state that could be lost
//! unsafely (a lost flag only costs a read fallback), so it is kept in the cache only:
//! it reaches the silo with the key's next real write, or is forgotten on eviction.
//!
//! The cache is bounded in bytes. Only clean entries (every write durable) are evicted,
//! in a sweep over the key space, a few per write, so the bound may be exceeded briefly
//! while many writes are in flight.
//!
//! # Promises without a sync: the promise ceiling
//!
//! R4 asks that a promise survive a crash once it is sent. Writing every promise and
//! waiting for its sync would put a second fsync on every full round (Prepare, then
//! Accept), so promises are covered in bulk instead: the node keeps a durable *promise
//! ceiling* (`m/promise-ceiling`), a ballot at or above every promise it has sent. A
//! Prepare at or below the ceiling changes the register in memory only ([`Write::Volatile`])
//! and its Promise is held only for the key's earlier reported writes (the view it
//! carries); a Prepare above it raises the ceiling by [`PROMISE_CEILING_ROUNDS`] rounds, in
//! the open batch, and its Promise waits for that batch. After a restart, every register
//! this life loads promises at least the previous life's ceiling round at its partition's
//! current epoch (`life_floor_at`), so a promise lost in the crash is still kept. A volatile promise is written with the key's
//! next reported write (an Accept, usually a round trip later) or, if the entry is
//! evicted first, by the eviction itself, so it is never forgotten within a life either.
//! The price: after a restart, each proposer's first ballot on this node is refused once
//! and jumps past the old ceiling.

use crate::ids::{NodeId, OpId};
use crate::message::Message;
use crate::paxos::acceptor::Register;
use crate::paxos::ballot::Ballot;
use crate::placement::PartitionId;
use crate::storage::{self, BatchId, PersistBatch, Storage, StorageError};
use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

/// Entries one eviction sweep looks at.
const EVICTION_SCAN_MAX: usize = 32;
/// How far above a Prepare's round the promise ceiling is raised: one durable write of the
/// ceiling covers this many rounds of promises.
pub(crate) const PROMISE_CEILING_ROUNDS: u64 = 1 << 20;

/// The ceiling that covers a promise of `ballot`, with room for the next rounds.
pub(crate) fn ceiling_above(ballot: Ballot) -> Ballot {
    Ballot {
        epoch: ballot.epoch,
        round: ballot.round.saturating_add(PROMISE_CEILING_ROUNDS),
        node: crate::ids::NodeTag(u64::MAX),
        restart: u64::MAX,
    }
}

struct Entry {
    /// Last batch that wrote this silo key (0: never written in this life).
    batch: BatchId,
    /// Last batch that changed reported state.
    gate: BatchId,
    /// The register (`None`: deleted, absent).
    register: Option<Register>,
    /// Approximate size, for the byte bound.
    bytes: usize,
    /// The register holds a promise not written yet ([`Write::Volatile`]).
    volatile: bool,
}

/// How a register change is persisted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Write {
    /// Written, and replies about the key wait for it (promises, accepts, installs, drops).
    Reported,
    /// Kept in memory only (the committed flag).
    MemoryOnly,
    /// A promise covered by the durable promise ceiling: kept in memory and written with
    /// the key's next reported write, or when the entry is evicted; replies about the key
    /// do not wait for it.
    Volatile,
}

#[derive(Default)]
pub(super) struct Persist {
    /// Writes of the open batch, in the order they were made.
    open: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Id of the open batch; batches are numbered from 1.
    open_id: BatchId,
    durable: BatchId,
    /// The batch holding this life's restart counter: nothing is sent before it.
    restart_batch: BatchId,
    cache: BTreeMap<Vec<u8>, Entry>,
    cache_bytes: usize,
    cache_bytes_max: usize,
    evict_cursor: Vec<u8>,
    held: BTreeMap<BatchId, Vec<(NodeId, Message)>>,
    /// Batches closed because they were full, waiting for `take_batch`.
    closed: VecDeque<PersistBatch>,
    /// Writes per batch (`Config::batch_writes_max`).
    batch_writes_max: usize,
    /// GC floors by partition, loaded on first use.
    floors: Vec<Option<Ballot>>,
    /// Abort watermarks of collected keys by partition, loaded on first use.
    aborts: Vec<Option<Vec<OpId>>>,
    /// A reused buffer for silo keys.
    scratch: Vec<u8>,
    /// The previous life's promise ceiling: every register promises at least its round in
    /// this life (`life_floor_at`).
    life_floor: Ballot,
    /// Each partition's config epoch (`set_epoch`; 1 until set).
    epochs: Vec<u64>,
    /// At or above every promise sent in this life (durable once `ceiling_batch` is).
    ceiling: Ballot,
    /// The batch that writes `ceiling`.
    ceiling_batch: BatchId,
}

/// What a cache entry takes ([`crate::mem`]): its share of the map's nodes, its silo key
/// (a copy, so its capacity is its length) and the register's buffers.
fn entry_bytes(sk: &[u8], register: Option<&Register>) -> usize {
    let state = register
        .and_then(|r| r.accepted.as_ref())
        .and_then(|a| a.state.as_ref())
        .map_or(0, crate::kv::State::heap_bytes);
    let slot = const { crate::mem::btree_entry_bytes::<Vec<u8>, Entry>() };
    slot + crate::mem::allocation_bytes(sk.len()) + state
}

impl Persist {
    /// Reads, bumps and writes the restart counter (R1). Returns this life's counter.
    pub(super) fn bump_restart(
        &mut self,
        silo: &impl Storage,
        batch_writes_max: usize,
        cache_bytes_max: usize,
    ) -> Result<u64, StorageError> {
        self.open_id = 1;
        self.batch_writes_max = batch_writes_max.max(1);
        self.cache_bytes_max = cache_bytes_max;
        let previous = match silo.get(storage::RESTART_KEY)? {
            Some(bytes) => {
                let arr: [u8; 8] =
                    bytes.as_slice().try_into().map_err(|_| StorageError("corrupt restart counter".into()))?;
                u64::from_le_bytes(arr)
            }
            None => 0,
        };
        let restart = previous + 1;
        self.open.push((storage::RESTART_KEY.to_vec(), Some(restart.to_le_bytes().to_vec())));
        self.restart_batch = 1;
        self.life_floor = match silo.get(storage::PROMISE_CEILING_KEY)? {
            Some(bytes) => storage::decode_ballot(&bytes)?,
            None => Ballot::ZERO,
        };
        self.ceiling = self.life_floor;
        Ok(restart)
    }

    /// Makes the promise ceiling cover a promise of `ballot`, raising it (in the open
    /// batch) if needed. Returns the batch a Promise of `ballot` must wait for.
    pub(super) fn cover_promise(&mut self, ballot: Ballot) -> Option<BatchId> {
        // Rounds, not ballots: the ceiling covers every partition whatever its epoch (see
        // `life_floor_at`).
        if ballot.round > self.ceiling.round {
            self.ceiling = ceiling_above(ballot);
            self.ceiling.epoch = self.ceiling.epoch.max(self.life_floor.epoch);
            self.open.push((storage::PROMISE_CEILING_KEY.to_vec(), Some(storage::encode_ballot(&self.ceiling))));
            self.ceiling_batch = self.open_id;
        }
        (self.ceiling_batch > self.durable).then_some(self.ceiling_batch)
    }

    /// A register read from the silo, or the absent one: promises at least the life floor.
    fn loaded(&self, partition: PartitionId, register: Option<Register>, floor: Ballot) -> Register {
        let mut register = register.unwrap_or_else(|| Register::absent(floor));
        register.promised = register.promised.max(self.life_floor_at(partition));
        register
    }

    /// The partition's config epoch changed: its registers promise at least the life
    /// floor at that epoch from now on.
    pub(super) fn set_epoch(&mut self, partition: PartitionId, epoch: u64) {
        let i = partition as usize;
        if self.epochs.len() <= i {
            self.epochs.resize(i + 1, 1);
        }
        self.epochs[i] = epoch;
    }

    /// What every register of `partition` promises at least in this life: the previous
    /// life's ceiling round, at the partition's current epoch. A promise sent in an earlier
    /// life was at some epoch `e` and a round at or below the ceiling's; at the epoch the
    /// partition has now (never below `e`: a promise is only released once its config is
    /// durable or covered by a higher one) this floor is above it. Promises of older
    /// epochs need no floor: their messages are refused by the epoch fence.
    fn life_floor_at(&self, partition: PartitionId) -> Ballot {
        if self.life_floor == Ballot::ZERO {
            return Ballot::ZERO;
        }
        let epoch = self.epochs.get(partition as usize).copied().unwrap_or(1);
        Ballot { epoch, round: self.life_floor.round, node: crate::ids::NodeTag(u64::MAX), restart: u64::MAX }
    }

    /// Entries in the register cache, and their approximate bytes.
    pub(super) fn cached(&self) -> (usize, usize) {
        (self.cache.len(), self.cache_bytes)
    }

    /// The register of `key`, reading through the cache.
    pub(super) fn register(
        &mut self,
        silo: &impl Storage,
        partition: PartitionId,
        key: &str,
    ) -> Result<Register, StorageError> {
        let sk = storage::register_key(partition, key.as_bytes());
        if let Some(e) = self.cache.get(&sk) {
            if let Some(r) = &e.register {
                let mut r = r.clone();
                r.promised = r.promised.max(self.life_floor_at(partition));
                return Ok(r);
            }
            let floor = self.floor(silo, partition)?;
            return Ok(self.loaded(partition, None, floor));
        }
        let register = match silo.get(&sk)? {
            Some(bytes) => Some(self.loaded(partition, Some(storage::decode_register(&bytes)?), Ballot::ZERO)),
            None => None,
        };
        let bytes = entry_bytes(&sk, register.as_ref());
        self.cache_bytes += bytes;
        let result = match &register {
            Some(r) => r.clone(),
            None => {
                let floor = self.floor(silo, partition)?;
                self.loaded(partition, None, floor)
            }
        };
        self.cache.insert(sk, Entry { batch: 0, gate: 0, register, bytes, volatile: false });
        self.evict();
        Ok(result)
    }

    /// Reads and possibly changes the register of `key` in place, with one cache lookup.
    /// `f` gets the register (absent keys: `Register::absent(floor)`) and the partition
    /// floor, and returns its result and how to persist a change (`None`: unchanged).
    /// Returns `f`'s result and the batch replies about the key must wait for.
    pub(super) fn update<R>(
        &mut self,
        silo: &impl Storage,
        partition: PartitionId,
        key: &str,
        f: impl FnOnce(&mut Register, Ballot) -> (R, Option<Write>),
    ) -> Result<(R, Option<BatchId>), StorageError> {
        let floor = self.floor(silo, partition)?;
        let life_floor = self.life_floor_at(partition);
        if self.open.len() >= self.batch_writes_max {
            self.close();
        }
        // The silo key is built in a reused buffer: it is only copied when stored.
        let mut sk = std::mem::take(&mut self.scratch);
        storage::register_key_into(&mut sk, partition, key.as_bytes());
        let entry = match self.cache.entry(sk.clone()) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                // On an error the buffer is dropped; the next call allocates a new one.
                let register = match silo.get(&sk)? {
                    Some(bytes) => Some(storage::decode_register(&bytes)?),
                    None => None,
                };
                let bytes = entry_bytes(&sk, register.as_ref());
                self.cache_bytes += bytes;
                e.insert(Entry { batch: 0, gate: 0, register, bytes, volatile: false })
            }
        };
        let was_absent = entry.register.is_none();
        let absent = Register { promised: floor, accepted: None, committed: false };
        let mut register = entry.register.take().unwrap_or(absent);
        register.promised = register.promised.max(life_floor);
        let (result, write) = f(&mut register, floor);
        match write {
            None if was_absent => {}
            None => entry.register = Some(register),
            Some(write) => {
                let bytes = entry_bytes(&sk, Some(&register));
                self.cache_bytes = self.cache_bytes - entry.bytes + bytes;
                entry.bytes = bytes;
                match write {
                    Write::Reported => {
                        self.open.push((sk.clone(), Some(storage::encode_register(&register))));
                        entry.batch = self.open_id;
                        entry.gate = self.open_id;
                        entry.volatile = false;
                    }
                    Write::Volatile => entry.volatile = true,
                    Write::MemoryOnly => {}
                }
                entry.register = Some(register);
            }
        }
        let gate = (entry.gate > self.durable).then_some(entry.gate);
        self.scratch = sk;
        self.evict();
        Ok((result, gate))
    }

    /// The partition's GC floor.
    pub(super) fn floor(&mut self, silo: &impl Storage, partition: PartitionId) -> Result<Ballot, StorageError> {
        if let Some(Some(f)) = self.floors.get(partition as usize) {
            return Ok(*f);
        }
        let floor = match silo.get(&storage::floor_key(partition))? {
            Some(bytes) => storage::decode_ballot(&bytes)?,
            None => Ballot::ZERO,
        };
        self.set_floor(partition, floor);
        Ok(floor)
    }

    /// Changes (with `None` deletes) a register.
    pub(super) fn put_register(&mut self, partition: PartitionId, key: &str, register: Option<Register>, write: Write) {
        let sk = storage::register_key(partition, key.as_bytes());
        let bytes = entry_bytes(&sk, register.as_ref());
        if write == Write::Reported {
            if self.open.len() >= self.batch_writes_max {
                self.close();
            }
            self.open.push((sk.clone(), register.as_ref().map(storage::encode_register)));
        }
        let id = self.open_id;
        let entry =
            self.cache.entry(sk).or_insert(Entry { batch: 0, gate: 0, register: None, bytes: 0, volatile: false });
        if write == Write::Reported {
            entry.batch = id;
            entry.gate = id;
            entry.volatile = false;
        }
        entry.register = register;
        self.cache_bytes = self.cache_bytes - entry.bytes + bytes;
        entry.bytes = bytes;
        self.evict();
    }

    /// Evicts clean entries until the cache is within its bound (looking at a few).
    fn evict(&mut self) {
        if self.cache_bytes <= self.cache_bytes_max {
            return;
        }
        let cursor = std::mem::take(&mut self.evict_cursor);
        let after = self.cache.range::<[u8], _>((Bound::Excluded(cursor.as_slice()), Bound::Unbounded));
        let before = self.cache.range::<[u8], _>((Bound::Unbounded, Bound::Included(cursor.as_slice())));
        let durable = self.durable;
        let mut victims = Vec::new();
        let mut unwritten = Vec::new();
        let mut freed = 0;
        for (sk, e) in after.chain(before).take(EVICTION_SCAN_MAX) {
            if e.batch > durable {
                continue;
            }
            if e.volatile {
                // Its promise is only in memory: write it now, evict it once durable.
                unwritten.push(sk.clone());
                continue;
            }
            victims.push(sk.clone());
            freed += e.bytes;
            if self.cache_bytes - freed <= self.cache_bytes_max {
                break;
            }
        }
        self.evict_cursor = victims.last().or(unwritten.last()).cloned().unwrap_or(cursor);
        for sk in victims {
            if let Some(e) = self.cache.remove(&sk) {
                self.cache_bytes -= e.bytes;
            }
        }
        for sk in unwritten {
            let Some(e) = self.cache.get_mut(&sk) else { continue };
            let value = e.register.as_ref().map(storage::encode_register);
            e.volatile = false;
            e.batch = self.open_id;
            self.open.push((sk, value));
        }
    }

    /// Keys with pending writes whose silo keys lie in `[start, end)` (and some cached
    /// ones; scans merge them with the silo's keys).
    pub(super) fn pending_keys(&self, start: &[u8], end: &[u8]) -> Vec<String> {
        if start >= end {
            return Vec::new();
        }
        self.cache
            .range(start.to_vec()..end.to_vec())
            .filter(|(_, e)| e.batch > self.durable)
            .filter_map(|(sk, _)| String::from_utf8(sk[5..].to_vec()).ok())
            .collect()
    }

    /// The abort watermarks of the keys collected from a partition (R6, R8).
    pub(super) fn partition_aborts(
        &mut self,
        silo: &impl Storage,
        partition: PartitionId,
    ) -> Result<Vec<OpId>, StorageError> {
        let i = partition as usize;
        if let Some(Some(a)) = self.aborts.get(i) {
            return Ok(a.clone());
        }
        let aborts: Vec<OpId> = match silo.get(&storage::aborts_key(partition))? {
            Some(bytes) => postcard::from_bytes(&bytes).map_err(|e| StorageError(format!("corrupt aborts: {e}")))?,
            None => Vec::new(),
        };
        if self.aborts.len() <= i {
            self.aborts.resize(i + 1, None);
        }
        self.aborts[i] = Some(aborts.clone());
        Ok(aborts)
    }

    /// Replaces a partition's abort watermarks, in the open batch.
    pub(super) fn put_partition_aborts(&mut self, partition: PartitionId, aborts: Vec<OpId>) -> BatchId {
        let i = partition as usize;
        if self.aborts.len() <= i {
            self.aborts.resize(i + 1, None);
        }
        let bytes = postcard::to_stdvec(&aborts).expect("op ids encode");
        self.aborts[i] = Some(aborts);
        self.open.push((storage::aborts_key(partition), Some(bytes)));
        self.open_id
    }

    /// Writes (`None`: deletes) a silo key outside the register space, in the open batch;
    /// returns that batch.
    pub(super) fn put_raw(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) -> BatchId {
        if self.open.len() >= self.batch_writes_max {
            self.close();
        }
        self.open.push((key, value));
        self.open_id
    }

    /// Raises a partition's floor, in the open batch.
    pub(super) fn put_floor(&mut self, partition: PartitionId, floor: Ballot) {
        self.set_floor(partition, floor);
        self.open.push((storage::floor_key(partition), Some(storage::encode_ballot(&floor))));
    }

    fn set_floor(&mut self, partition: PartitionId, floor: Ballot) {
        let i = partition as usize;
        if self.floors.len() <= i {
            self.floors.resize(i + 1, None);
        }
        self.floors[i] = Some(floor);
    }

    /// The batch a reply about `key` must wait for, if it is not durable yet.
    pub(super) fn gate(&self, partition: PartitionId, key: &str) -> Option<BatchId> {
        let sk = storage::register_key(partition, key.as_bytes());
        let gate = self.cache.get(&sk)?.gate;
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
        let writes = std::mem::take(&mut self.open);
        self.closed.push_back(PersistBatch { id: self.open_id, writes });
        self.open_id += 1;
    }

    /// Every batch up to `batch` is durable: returns the released messages.
    pub(super) fn persisted(&mut self, batch: BatchId) -> Vec<(NodeId, Message)> {
        // A batch the node never emitted cannot be durable; ignore such reports.
        let batch = batch.min(self.open_id.saturating_sub(1));
        if batch <= self.durable {
            return Vec::new();
        }
        self.durable = batch;
        self.evict();
        let mut released = Vec::new();
        while let Some(held) = self.held.first_entry() {
            if *held.key() > batch {
                break;
            }
            released.append(&mut held.remove());
        }
        released
    }
}
