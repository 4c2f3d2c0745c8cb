//! Group commit: the task that makes the engine's persist batches durable.
//!
//! The event loop sends every [`PersistBatch`] here, in the order the engine emitted
//! them. The committer takes every batch ready at that moment, hands the group to
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
        while let Some(group) = self.next_group().await {
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

    /// Waits for one batch, then takes every batch already queued, up to the group bound.
    async fn next_group(&mut self) -> Option<Vec<PersistBatch>> {
        let first = self.batches.recv().await?;
        let mut group = vec![first];
        while group.len() < COMMIT_GROUP_BATCHES_MAX {
            match self.batches.try_recv() {
                Ok(batch) => group.push(batch),
                Err(_) => break,
            }
        }
        Some(group)
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

    #[tokio::test]
    async fn blocking_mode_commits_too() {
        let memory = Arc::new(MemoryStorage::new());
        let shared: SharedStorage = memory.clone();
        let id = commit(&shared, CommitMode::Blocking, vec![batch(1, "a"), batch(2, "b")]).await.unwrap();
        assert_eq!(id, 2);
        assert_eq!(memory.get(b"b").unwrap(), Some(vec![2]));
    }
}
