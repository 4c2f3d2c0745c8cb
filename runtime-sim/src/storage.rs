//! Crash-faithful storage: a disk that keeps synced and unsynced writes apart.
//!
//! A [`SimDisk`] belongs to a simulated host and outlives the node processes that run on
//! it. Each incarnation of the node opens a [`SimStorage`] handle on it. The handle
//! implements [`memo_engine::Storage`]:
//! - `write` applies a batch to the *current* image (what reads see) and queues it as
//!   pending;
//! - `sync` makes every pending batch durable;
//! - reads see the current image (the node's own unsynced writes included, as with a
//!   real page cache).
//!
//! [`SimDisk::crash`] models a power cut: the pending batches are lost (all of them, or
//! all but a prefix, as [`CrashMode`] says), the current image falls back to the durable
//! one, and the disk's *generation* is bumped. Every handle of an older generation then
//! fails every call, which fences the killed incarnation: madsim drops a killed node's
//! futures lazily, so without the fence a dead node could still write after its crash
//! (docs/CALIBRATION.md, "madsim"). Call `crash` right before `Handle::kill`.
//!
//! [`SimDisk::arm`] schedules a power cut *inside* a commit: after a given number of
//! further mutating calls, the disk crashes by itself and the call fails. The committer
//! calls `write` and `sync` back to back without an await point, so a kill from outside
//! only ever finds the disk between commits; arming is how a crash lands between a batch's
//! write and its sync ("crash during accept"). The node notices the failed call and stops;
//! the fault scheduler then kills and restarts it.
//!
//! Batches are atomic (the `Storage` contract): a crash never tears one. What a crash may
//! do is keep some unsynced batches (a prefix, in order), which a real silo may also do.

use memo_engine::storage::{Entries, StorageError};
use memo_engine::{PersistBatch, Storage};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// What a crash does to the writes that were not synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced batch is lost.
    DropAll,
    /// A prefix of the unsynced batches (chosen by the crash's draw) survives; the rest is
    /// lost. Batches stay whole and in order.
    KeepPrefix,
}

/// Counters of one disk, for summaries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Batches written.
    pub batches: u64,
    /// Syncs.
    pub syncs: u64,
    /// Crashes (killed or power cut).
    pub crashes: u64,
    /// Unsynced batches lost in crashes.
    pub lost_batches: u64,
    /// Unsynced batches that survived a crash anyway ([`CrashMode::KeepPrefix`]).
    pub kept_batches: u64,
    /// Calls refused because they came from a fenced (crashed) incarnation.
    pub fenced_calls: u64,
}

type Image = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Debug, Default)]
struct DiskState {
    durable: Image,
    current: Image,
    pending: Vec<PersistBatch>,
    generation: u64,
    /// Mutating calls left before an armed power cut.
    armed: Option<u32>,
    /// Set by an armed power cut; cleared when the next incarnation opens the disk.
    died: bool,
    stats: DiskStats,
}

/// One host's disk. Shared (in an `Arc`) by the host's node incarnations and the harness.
#[derive(Debug)]
pub struct SimDisk {
    name: String,
    mode: CrashMode,
    state: Mutex<DiskState>,
}

impl SimDisk {
    /// An empty disk whose crashes behave as `mode` says.
    pub fn new(name: impl Into<String>, mode: CrashMode) -> Arc<Self> {
        Arc::new(SimDisk { name: name.into(), mode, state: Mutex::default() })
    }

    /// The disk's name (its host's).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A handle for a new incarnation of the node. Clears the "died" mark of a power cut.
    pub fn open(self: &Arc<Self>) -> SimStorage {
        let mut state = self.lock();
        state.died = false;
        SimStorage { disk: self.clone(), generation: state.generation }
    }

    /// A power cut: unsynced batches are lost (or a prefix kept, by `draw`), and every
    /// handle opened before is fenced.
    pub fn crash(&self, draw: u64) {
        let mut state = self.lock();
        self.crash_locked(&mut state, draw);
    }

    /// Arms a power cut inside the node's next commits: the `calls`-th mutating call from
    /// now (1 = the next one) crashes the disk and fails. `draw` picks the kept prefix.
    pub fn arm(&self, calls: u32) {
        self.lock().armed = Some(calls.max(1));
    }

    /// Cancels an armed power cut that has not fired.
    pub fn disarm(&self) {
        self.lock().armed = None;
    }

    /// Whether an armed power cut fired since the disk was last opened.
    pub fn died(&self) -> bool {
        self.lock().died
    }

    /// The durable value under `key` (what survives any crash).
    pub fn durable_get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.lock().durable.get(key).cloned()
    }

    /// The current value under `key` (unsynced writes included).
    pub fn current_get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.lock().current.get(key).cloned()
    }

    /// Number of batches written but not yet synced.
    pub fn pending_batches(&self) -> usize {
        self.lock().pending.len()
    }

    /// The disk's counters.
    pub fn stats(&self) -> DiskStats {
        self.lock().stats
    }

    fn crash_locked(&self, state: &mut DiskState, draw: u64) {
        let pending = std::mem::take(&mut state.pending);
        let kept = match self.mode {
            CrashMode::DropAll => 0,
            CrashMode::KeepPrefix => (draw % (pending.len() as u64 + 1)) as usize,
        };
        for batch in &pending[..kept] {
            apply(&mut state.durable, batch);
        }
        state.stats.crashes += 1;
        state.stats.kept_batches += kept as u64;
        state.stats.lost_batches += (pending.len() - kept) as u64;
        state.current = state.durable.clone();
        state.generation += 1;
        state.armed = None;
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        // The simulation is single-threaded; a poisoned lock means a panic elsewhere, and
        // every mutation leaves the state consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn apply(image: &mut Image, batch: &PersistBatch) {
    for (k, v) in &batch.writes {
        match v {
            Some(v) => image.insert(k.clone(), v.clone()),
            None => image.remove(k),
        };
    }
}

/// One incarnation's handle on a [`SimDisk`]; fails every call once the disk crashed.
#[derive(Debug)]
pub struct SimStorage {
    disk: Arc<SimDisk>,
    generation: u64,
}

impl SimStorage {
    /// Locks the disk for this handle, or refuses a fenced handle.
    fn live(&self) -> Result<MutexGuard<'_, DiskState>, StorageError> {
        let mut state = self.disk.lock();
        if state.generation != self.generation {
            state.stats.fenced_calls += 1;
            return Err(StorageError(format!("{}: the disk crashed (fenced incarnation)", self.disk.name)));
        }
        Ok(state)
    }

    /// Counts down an armed power cut; fires it on the last call.
    fn tick(&self, state: &mut DiskState) -> Result<(), StorageError> {
        let Some(left) = state.armed else { return Ok(()) };
        if left > 1 {
            state.armed = Some(left - 1);
            return Ok(());
        }
        // The draw for the kept prefix comes from the disk's own counters: deterministic
        // and independent of the simulator's RNG stream.
        let draw = state.stats.batches.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 7;
        self.disk.crash_locked(state, draw);
        state.died = true;
        Err(StorageError(format!("{}: power cut", self.disk.name)))
    }
}

impl Storage for SimStorage {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.live()?.current.get(key).cloned())
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StorageError> {
        let state = self.live()?;
        if start >= end {
            return Ok(Vec::new());
        }
        let range = state.current.range(start.to_vec()..end.to_vec());
        Ok(range.take(limit).map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn write(&self, batch: &PersistBatch) -> Result<(), StorageError> {
        let mut state = self.live()?;
        self.tick(&mut state)?;
        apply(&mut state.current, batch);
        state.pending.push(batch.clone());
        state.stats.batches += 1;
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        let mut state = self.live()?;
        self.tick(&mut state)?;
        let state = &mut *state;
        for batch in state.pending.drain(..) {
            apply(&mut state.durable, &batch);
        }
        state.stats.syncs += 1;
        Ok(())
    }
}
