//! The redb silo: one redb database (one file, one table) per node.
//!
//! # Durability
//!
//! The committer hands every group of ready batches to [`Storage::commit`]: one redb write
//! transaction applies them all in order and commits with [`Durability::Immediate`], which
//! writes the dirty pages, publishes the new root in the header and fsyncs (`sync_data`)
//! before returning. So when `commit` returns `Ok`, every batch of the group survives a
//! crash of the process or of the machine. (`write` + `sync` do the same in two steps, a
//! `Durability::None` commit per batch and an empty durable one; the committer does not use
//! them, since each redb commit costs page bookkeeping and writes of its own.)
//!
//! By default the durable commit is *two-phase* ([`RedbOptions::two_phase_commit`]): pages
//! and the new commit slot, fsync, then the flip of the primary slot, fsync. In exchange
//! for the second fsync, a newest commit damaged after it was acknowledged is reported as
//! corruption at the next open. A one-phase commit (one fsync, checksums) would let redb
//! fall back to the previous commit instead, silently forgetting an acknowledged write,
//! which the tests below show; memo promises a clear error and no silent loss for a
//! damaged file. Measured (docs/PERFORMANCE.md): one-phase commits would cut the
//! sequential write p50 on three nodes from about 1.65 to 1.4 ms.
//!
//! # Opening
//!
//! [`RedbStorage::open`] runs redb's full integrity check by default
//! ([`RedbOptions::check_integrity_on_open`]: every page checksum of the committed trees
//! is verified, which reads the whole file), so a file damaged outside redb fails to open
//! with an error instead of serving wrong data. Every redb error, and a panic inside redb
//! while opening, becomes a [`StorageError`] whose message names the file.
//!
//! # Simulation
//!
//! redb starts no thread and reads no clock, so this silo compiles and runs under
//! `--cfg madsim`; [`RedbStorage::with_backend`] runs it over any [`StorageBackend`] (a
//! crash-faithful simulated disk, say). A write transaction never outlives one method
//! call, so none is ever held across an `.await`.

use memo_engine::Storage;
use memo_engine::storage::{Entries, PersistBatch, StorageError};
use redb::{Builder, Database, Durability, ReadableDatabase, StorageBackend, TableDefinition, TableError};
use std::fmt::Display;
use std::fs::OpenOptions;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// The one table: the engine already namespaces its keys (see `memo_engine::storage`).
const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("memo");

/// Default size of redb's page cache (redb's own default is 1 GiB).
pub const REDB_CACHE_BYTES_DEFAULT: usize = 64 * 1024 * 1024;

/// How a redb silo is opened and committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedbOptions {
    /// Size of redb's page cache, in bytes.
    pub cache_bytes: usize,
    /// Verify every page checksum when opening (reads the whole file once).
    pub check_integrity_on_open: bool,
    /// Make each durable commit two-phase: two fsyncs instead of one, and a newest commit
    /// damaged after it was acknowledged becomes an error at open rather than a silent
    /// rollback to the previous commit. On by default (see the module documentation).
    pub two_phase_commit: bool,
}

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions { cache_bytes: REDB_CACHE_BYTES_DEFAULT, check_integrity_on_open: true, two_phase_commit: true }
    }
}

impl RedbOptions {
    fn builder(&self) -> Builder {
        let mut builder = Builder::new();
        builder.set_cache_size(self.cache_bytes).set_check_integrity_on_open(self.check_integrity_on_open);
        builder
    }
}

/// A silo in one redb database. `Send + Sync`: the engine reads (each read is its own
/// read transaction) while the committer writes.
#[derive(Debug)]
pub struct RedbStorage {
    db: Database,
    /// Names the database in every error (its path, for a file).
    label: String,
    /// Set by a `write`, cleared by the `sync` that makes it durable.
    unsynced: AtomicBool,
    two_phase_commit: bool,
}

impl RedbStorage {
    /// Creates a new, empty database file at `path` (which must not exist yet) and makes
    /// it durable: when this returns, the file holds a valid, synced, empty database.
    /// The caller should sync the parent directory too (see `datadir`).
    pub fn create(path: &Path, options: &RedbOptions) -> Result<Self, StorageError> {
        let label = path.display().to_string();
        let file = (OpenOptions::new().read(true).write(true).create_new(true).open(path))
            .map_err(|e| error(&label, "cannot create the database file", e))?;
        let backend = redb::backends::FileBackend::new(file).map_err(|e| error(&label, "cannot open the file", e))?;
        let storage = Self::with_backend(backend, label, options)?;
        storage.create_table()?;
        Ok(storage)
    }

    /// Opens the existing database at `path` (recovering it after a crash, and checking
    /// its integrity unless told not to). A missing file, a file that is not a redb
    /// database, a damaged one, or one another process has open is an error naming it.
    pub fn open(path: &Path, options: &RedbOptions) -> Result<Self, StorageError> {
        Self::try_open(path, options).map_err(OpenError::into_storage_error)
    }

    /// [`RedbStorage::open`], telling a database in use by another handle apart.
    pub(crate) fn try_open(path: &Path, options: &RedbOptions) -> Result<Self, OpenError> {
        let label = path.display().to_string();
        if let Err(e) = std::fs::metadata(path) {
            return Err(OpenError::Failed(error(&label, "cannot open the database", e)));
        }
        let builder = options.builder();
        let opened = guard_panics(&label, || builder.open(path)).map_err(OpenError::Failed)?;
        let db = opened.map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => OpenError::InUse(open_error(&label, e)),
            e => OpenError::Failed(open_error(&label, e)),
        })?;
        Ok(Self::from_database(db, label, options))
    }

    /// Opens the database on `backend`, initialising it if the backend is empty. `label`
    /// names it in errors.
    pub fn with_backend(
        backend: impl StorageBackend,
        label: impl Into<String>,
        options: &RedbOptions,
    ) -> Result<Self, StorageError> {
        let label = label.into();
        let builder = options.builder();
        let db = guard_panics(&label, || builder.create_with_backend(backend))?.map_err(|e| open_error(&label, e))?;
        Ok(Self::from_database(db, label, options))
    }

    fn from_database(db: Database, label: String, options: &RedbOptions) -> Self {
        RedbStorage { db, label, unsynced: AtomicBool::new(false), two_phase_commit: options.two_phase_commit }
    }

    /// What errors call this database (its path, for a file).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Closes the database cleanly (what dropping it does, but with the error reported).
    pub fn close(self) -> Result<(), StorageError> {
        let label = self.label;
        self.db.close().map_err(|e| error(&label, "cannot close the database", e))
    }

    /// Creates the table with a durable commit, so a new database is complete on disk.
    fn create_table(&self) -> Result<(), StorageError> {
        let mut txn = self.db.begin_write().map_err(|e| self.error("cannot start a transaction", e))?;
        txn.set_two_phase_commit(self.two_phase_commit);
        txn.open_table(TABLE).map_err(|e| self.error("cannot create the table", e))?;
        txn.commit().map_err(|e| self.error("cannot commit", e))
    }

    fn error(&self, what: &str, e: impl Display) -> StorageError {
        error(&self.label, what, e)
    }
}

/// Why [`RedbStorage::try_open`] failed.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// Another handle (in this process or another) has the database open.
    InUse(StorageError),
    /// Anything else: missing, foreign, damaged, unreadable.
    Failed(StorageError),
}

impl OpenError {
    pub(crate) fn into_storage_error(self) -> StorageError {
        match self {
            OpenError::InUse(e) | OpenError::Failed(e) => e,
        }
    }
}

fn error(label: &str, what: &str, e: impl Display) -> StorageError {
    StorageError(format!("{label}: {what}: {e}"))
}

fn open_error(label: &str, e: redb::DatabaseError) -> StorageError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => {
            error(label, "cannot open the database", "it is already open (is another memo node using it?)")
        }
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason)) => {
            error(label, "the database is corrupt", reason)
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            error(label, "the database is corrupt (shorter than its contents say: truncated?)", e)
        }
        e => error(label, "cannot open the database", e),
    }
}

/// Runs a redb open, turning a panic inside redb (which a damaged file may cause, notably
/// in debug builds) into an error.
fn guard_panics<T>(label: &str, open: impl FnOnce() -> T) -> Result<T, StorageError> {
    catch_unwind(AssertUnwindSafe(open)).map_err(|panic| {
        let message = (panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        error(label, "the database is corrupt (redb panicked while opening it)", message)
    })
}

impl Storage for RedbStorage {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let txn = self.db.begin_read().map_err(|e| self.error("cannot start a read", e))?;
        let table = match txn.open_table(TABLE) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.error("cannot open the table", e)),
        };
        let value = table.get(key).map_err(|e| self.error("cannot read", e))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StorageError> {
        if start >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read().map_err(|e| self.error("cannot start a read", e))?;
        let table = match txn.open_table(TABLE) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.error("cannot open the table", e)),
        };
        let range = table.range::<&[u8]>(start..end).map_err(|e| self.error("cannot scan", e))?;
        let mut entries = Vec::new();
        for entry in range.take(limit) {
            let (k, v) = entry.map_err(|e| self.error("cannot scan", e))?;
            entries.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(entries)
    }

    fn write(&self, batch: &PersistBatch) -> Result<(), StorageError> {
        self.transact(std::slice::from_ref(batch), false)?;
        self.unsynced.store(true, Ordering::Release);
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        if !self.unsynced.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let synced = self.transact(&[], true);
        if synced.is_err() {
            self.unsynced.store(true, Ordering::Release);
        }
        synced
    }

    /// The whole group in one durable redb transaction: one commit (and its fsyncs)
    /// instead of one commit per batch plus an empty durable one. It also makes earlier
    /// unsynced `write`s durable.
    fn commit(&self, batches: &[PersistBatch]) -> Result<(), StorageError> {
        let was_unsynced = self.unsynced.swap(false, Ordering::AcqRel);
        let committed = self.transact(batches, true);
        if committed.is_err() && was_unsynced {
            self.unsynced.store(true, Ordering::Release);
        }
        committed
    }
}

impl RedbStorage {
    /// Applies `batches` in order in one write transaction and commits it, durably
    /// ([`Durability::Immediate`], two-phase if configured) or not ([`Durability::None`]).
    /// On an error, dropping the transaction aborts it: nothing of it is applied.
    fn transact(&self, batches: &[PersistBatch], durable: bool) -> Result<(), StorageError> {
        let mut txn = self.db.begin_write().map_err(|e| self.error("cannot start a transaction", e))?;
        let durability = if durable { Durability::Immediate } else { Durability::None };
        txn.set_durability(durability).map_err(|e| self.error("cannot set the durability", e))?;
        if durable {
            txn.set_two_phase_commit(self.two_phase_commit);
        }
        if batches.iter().any(|batch| !batch.writes.is_empty()) {
            let mut table = txn.open_table(TABLE).map_err(|e| self.error("cannot open the table", e))?;
            for (key, value) in batches.iter().flat_map(|batch| &batch.writes) {
                match value {
                    Some(value) => table.insert(key.as_slice(), value.as_slice()).map(drop),
                    None => table.remove(key.as_slice()).map(drop),
                }
                .map_err(|e| self.error("cannot write", e))?;
            }
        }
        let what = if durable { "cannot make the writes durable" } else { "cannot commit" };
        txn.commit().map_err(|e| self.error(what, e))
    }
}

#[cfg(test)]
mod tests;
