//! Group commit: the task that makes the engine's persist batches durable.
//!
//! The event loop sends every [`PersistBatch`] here, in the order the engine emitted
//! them. The committer takes every batch ready at that moment (after a group of several,
//! also those of the next few scheduler turns: [`COMMIT_LINGER_TURNS`]), hands the group to
//! [`Storage::commit`](memo_engine::Storage::commit) (applied in order and made durable
//! together: for redb, one log record and one transaction), and publishes the highest
//! durable batch id on a `watch` channel. The loop turns that into
//! `Node::handle_persisted`. One sync covers many batches, which is where the throughput
//! of a disk-backed silo comes from (docs/CALIBRATION.md, "fdatasync group commit").
//!
//! The report travels on a `watch` rather than a queue so the committer never waits for
//! the loop: the loop may be blocked sending the next batch here (backpressure from a
//! slow disk) without either side deadlocking, and only the latest id matters because
//! ids are cumulative.
//!
//! A storage failure is fatal: a batch that was not applied breaks the promise the
//! engine's durability gates rest on (R4). The committer logs it and stops; dropping the
//! `watch` sender tells the loop, which stops the node.

use crate::SharedStorage;
use memo_engine::PersistBatch;
use memo_engine::storage::{BatchId, StorageError};
use tokio::sync::{mpsc, watch};

/// Batches applied before one sync, at most; a bigger backlog is synced in several
/// groups so the first writers are not held back indefinitely.
pub const COMMIT_GROUP_BATCHES_MAX: usize = 256;

/// Batches queued between the loop and the committer; when full, the loop waits
/// (backpressure from storage).
pub const COMMIT_QUEUE_BATCHES_MAX: usize = 1024;

/// A group of at least this many batches means writes arrive concurrently: the next
/// group lingers ([`COMMIT_LINGER_TURNS`]).
pub const COMMIT_BUSY_GROUP_BATCHES: usize = 2;

/// Scheduler turns a group waits for more batches after a busy group. The event loop
/// runs in those turns and hands over the batches its pending messages produce, so one
/// sync and one hand-over to the blocking pool cover more of them. A write alone (the
/// last group had one batch) does not wait. On three durable nodes with 64 clients this
/// took a put's server CPU down by a tenth and its context switches by a third
/// (docs/PERFORMANCE.md, "a group commit that lingers under load").
pub const COMMIT_LINGER_TURNS: usize = 8;

/// How the committer calls a silo whose `write`/`sync` may block on the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CommitMode {
    /// Call the silo on the committer task (right for in-memory silos).
    #[default]
    Inline,
    /// Move each group onto tokio's blocking pool, so a slow fsync does not stall the
    /// runtime's other tasks. In simulation (where OS threads are refused) this falls
    /// back to [`CommitMode::Inline`].
    Blocking,
}

/// The committer's ends: batches in, the highest durable id out.
pub(crate) struct Committer {
    pub storage: SharedStorage,
    pub mode: CommitMode,
    pub batches: mpsc::Receiver<PersistBatch>,
    pub durable: watch::Sender<BatchId>,
}

impl Committer {
    /// Runs until the loop drops its sender (after committing what is queued) or the
    /// silo fails.
    pub async fn run(mut self) -> Result<(), StorageError> {
        let mut busy = false;
        while let Some(group) = self.next_group(busy).await {
            busy = group.len() >= COMMIT_BUSY_GROUP_BATCHES;
            let durable = match commit(&self.storage, self.mode, group).await {
                Ok(id) => id,
                Err(e) => {
                    tracing::error!(error = %e, "storage failed; stopping the node");
                    return Err(e);
                }
            };
            self.durable.send_replace(durable);
        }
        Ok(())
    }

    /// Waits for one batch, then takes every batch already queued, up to the group bound;
    /// when `busy`, takes what arrives in the next [`COMMIT_LINGER_TURNS`] turns too.
    async fn next_group(&mut self, busy: bool) -> Option<Vec<PersistBatch>> {
        let first = self.batches.recv().await?;
        let mut group = vec![first];
        let mut turns = if busy { COMMIT_LINGER_TURNS } else { 0 };
        loop {
            while group.len() < COMMIT_GROUP_BATCHES_MAX {
                match self.batches.try_recv() {
                    Ok(batch) => group.push(batch),
                    Err(_) => break,
                }
            }
            if turns == 0 || group.len() >= COMMIT_GROUP_BATCHES_MAX {
                return Some(group);
            }
            turns -= 1;
            tokio::task::yield_now().await;
        }
    }
}

/// Applies and syncs one group, on the blocking pool when asked to.
async fn commit(storage: &SharedStorage, mode: CommitMode, group: Vec<PersistBatch>) -> Result<BatchId, StorageError> {
    #[cfg(not(madsim))]
    if mode == CommitMode::Blocking {
        let storage = storage.clone();
        return tokio::task::spawn_blocking(move || apply_group(&storage, &group))
            .await
            .map_err(|e| StorageError(format!("commit task failed: {e}")))?;
    }
    let _ = mode;
    apply_group(storage, &group)
}

/// Commits the group (every batch in order, made durable together: one redb transaction
/// and one durable commit); returns the last id, now durable.
fn apply_group(storage: &SharedStorage, group: &[PersistBatch]) -> Result<BatchId, StorageError> {
    assert!(group.windows(2).all(|w| w[0].id < w[1].id), "persist batches arrive in increasing order");
    crate::metrics::timed_sync(group.len(), || storage.commit(group))?;
    Ok(group.last().map_or(0, |batch| batch.id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use memo_engine::{MemoryStorage, Storage};
    use std::sync::Arc;

    fn batch(id: BatchId, key: &str) -> PersistBatch {
        PersistBatch { id, writes: vec![(key.as_bytes().to_vec(), Some(vec![id as u8]))] }
    }

    #[tokio::test]
    async fn committer_applies_queued_batches_in_order_and_reports_the_last() {
        let memory = Arc::new(MemoryStorage::new());
        let (tx, rx) = mpsc::channel(COMMIT_QUEUE_BATCHES_MAX);
        let (durable_tx, mut durable) = watch::channel(0);
        for id in 1..=3 {
            tx.send(batch(id, "k")).await.unwrap();
        }
        drop(tx);
        let committer =
            Committer { storage: memory.clone(), mode: CommitMode::Inline, batches: rx, durable: durable_tx };
        committer.run().await.unwrap();
        assert_eq!(*durable.borrow_and_update(), 3);
        assert_eq!(memory.get(b"k").unwrap(), Some(vec![3]));
    }

    // tokio's scheduler runs the two tasks in turn; madsim's picks at random, so the
    // batches one turn brings are not bounded there.
    #[cfg(not(madsim))]
    #[tokio::test]
    async fn after_a_busy_group_the_next_takes_the_batches_of_the_following_turns() {
        let (tx, rx) = mpsc::channel(COMMIT_QUEUE_BATCHES_MAX);
        let (durable_tx, _durable) = watch::channel(0);
        let mut committer = Committer {
            storage: Arc::new(MemoryStorage::new()),
            mode: CommitMode::Inline,
            batches: rx,
            durable: durable_tx,
        };
        // A writer that hands over one batch per scheduler turn, as the event loop does
        // while its messages produce writes.
        let writer = tokio::spawn(async move {
            for id in 1..=20 {
                tx.send(batch(id, "k")).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        tokio::task::yield_now().await;
        let quiet = committer.next_group(false).await.unwrap();
        assert_eq!(quiet.len(), 1, "a quiet committer syncs what it has at once");
        let busy = committer.next_group(true).await.unwrap();
        assert!(busy.len() > 2, "a busy one waits a few turns for more: {} batches", busy.len());
        assert!(busy.len() <= COMMIT_LINGER_TURNS + 1, "and no longer: {} batches", busy.len());
        writer.abort();
    }

    #[tokio::test]
    async fn blocking_mode_commits_too() {
        let memory = Arc::new(MemoryStorage::new());
        let shared: SharedStorage = memory.clone();
        let id = commit(&shared, CommitMode::Blocking, vec![batch(1, "a"), batch(2, "b")]).await.unwrap();
        assert_eq!(id, 2);
        assert_eq!(memory.get(b"b").unwrap(), Some(vec![2]));
    }
}
