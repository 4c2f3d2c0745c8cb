//! The redb silo: one redb database (one file, one table) per node.
//!
//! # Durability
//!
//! The committer hands every group of ready batches to [`Storage::commit`]. A database
//! made by [`RedbStorage::create`] has a write-ahead log beside it (`data.wal`, see
//! [`super::wal`]), and a group commit is:
//! 1. one log record holding every write of the group, appended and synced (one small
//!    write into space already zeroed, one `fdatasync`): when `commit` returns `Ok`, the
//!    group survives a crash of the process or of the machine;
//! 2. the group's writes put in the *memtable*, an ordered map of every write logged since
//!    the last checkpoint, which reads consult before the database;
//! 3. once the log holds [`RedbOptions::wal_checkpoint_bytes`], a *checkpoint*: the
//!    memtable applied in a few durable redb commits (every dirty page written, fsynced;
//!    "Disk" says why a few), the last of which also records the last record's sequence
//!    number in the silo's own table, then the log truncated and the memtable dropped.
//!
//! A checkpoint freezes the memtable (reads go on consulting it) and starts a new one, so
//! the engine reads through it while redb commits. Until `34fc93a` step 2 was a
//! non-durable redb transaction per group: on three durable nodes its inserts and commits
//! were 15% of a node's CPU at saturation, and since redb reuses the pages such a commit
//! frees only after the next durable commit, the database file grew to 3.6× its live
//! data between checkpoints (docs/PERFORMANCE.md, "Footprint"). A checkpoint dirties each
//! leaf once. The price is memory: the memtable holds up to a
//! checkpoint's worth of writes (twice that while a checkpoint runs).
//!
//! Opening the database replays the records it lacks (sequence numbers above the one it
//! recorded), durably, then empties the log. A torn last record is dropped (it was never
//! acknowledged); a damaged one, a gap in the sequence, or a missing log stops the open
//! with an error naming the log, as a damaged database does.
//!
//! Why a log: a durable redb commit writes every B-tree page the group dirtied (a 4 KiB
//! leaf for each 100-byte value) and, two-phase, syncs twice. Measured on three nodes
//! (docs/PERFORMANCE.md), the log cut the sequential write p50 from about 1.65 ms to
//! 1.05 ms and raised 64-client write throughput by a third. A database opened over a
//! [`StorageBackend`] (tests, the simulator) has no log: each group is one durable redb
//! commit.
//!
//! # Disk
//!
//! redb is a copy-on-write B-tree: a commit writes a new copy of every page it changes,
//! and the pages it frees become reusable only once a later durable commit has made
//! them unreachable from every commit a crash could fall back to. A checkpoint of 8 MiB
//! of log touches most leaves of a table of a few hundred thousand keys, so when it was
//! one commit the file held about two copies of the table. A checkpoint is therefore
//! [`RedbOptions::checkpoint_slices`] durable commits, each over one key-ordered slice of
//! the memtable, so each copies about one slice's share of the leaves and the next ones
//! reuse what it freed. Measured (`silo_footprint`; docs/PERFORMANCE.md, "a checkpoint
//! in slices"): 200,000 registers written four times took 126 MiB on disk in one commit
//! per checkpoint, 68 MiB in 16, against 57 MiB for the same table compacted.
//!
//! Durable redb commits (checkpoints, and groups without a log) are *two-phase*
//! ([`RedbOptions::two_phase_commit`]): pages and the new commit slot, fsync, then the flip
//! of the primary slot, fsync. In exchange for the second fsync, a newest commit damaged
//! after it was acknowledged is reported as corruption at the next open. A one-phase commit
//! would let redb fall back to the previous commit instead, silently forgetting what it
//! acknowledged, which the tests below show.
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

use super::wal;
use memo_engine::Storage;
use memo_engine::storage::{Entries, PersistBatch, StorageError};
use redb::{Builder, Database, Durability, ReadableDatabase, StorageBackend, TableDefinition, TableError};
use std::collections::BTreeMap;
use std::fmt::Display;
use std::fs::{File, OpenOptions};
use std::io::Read as _;
use std::ops::Bound;
use std::os::unix::fs::FileExt as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The one table: the engine already namespaces its keys (see `memo_engine::storage`).
const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("memo");
/// The silo's own bookkeeping, apart from the engine's keys.
const META: TableDefinition<&str, u64> = TableDefinition::new("memo-silo");
/// In [`META`]: the sequence number of the last log record applied to the database.
const WAL_APPLIED: &str = "wal-applied";

/// Default number of durable commits per checkpoint (module documentation, "Disk").
pub const CHECKPOINT_SLICES_DEFAULT: usize = 16;
/// Default log size that triggers a checkpoint.
pub const WAL_CHECKPOINT_BYTES_DEFAULT: u64 = 8 * 1024 * 1024;
/// The log file is grown by writing this many zeros at a time, ahead of the records, so
/// that an append overwrites allocated blocks and its `fdatasync` has no file size to
/// update (appending to the end of a file cost about 35% more per sync here, see
/// docs/CALIBRATION.md). Zeros are also what a torn append leaves (see `wal`).
const WAL_ZEROS_AHEAD_BYTES: u64 = 1024 * 1024;

/// The write-ahead log's path: beside the database, `.wal` for its extension.
pub fn wal_path(database: &Path) -> PathBuf {
    database.with_extension("wal")
}

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
    /// Make group commits durable through the write-ahead log (file-backed databases
    /// only; see the module documentation). Without it every group commit is a durable
    /// redb commit.
    pub wal: bool,
    /// Log size at which a group commit also checkpoints (a durable redb commit, then the
    /// log truncated).
    pub wal_checkpoint_bytes: u64,
    /// How many durable commits, each over a key-ordered slice of the memtable, one
    /// checkpoint makes (see the module documentation, "Disk").
    pub checkpoint_slices: usize,
}

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions {
            cache_bytes: REDB_CACHE_BYTES_DEFAULT,
            check_integrity_on_open: true,
            two_phase_commit: true,
            wal: true,
            wal_checkpoint_bytes: WAL_CHECKPOINT_BYTES_DEFAULT,
            checkpoint_slices: CHECKPOINT_SLICES_DEFAULT,
        }
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
    /// Durable commits per checkpoint.
    checkpoint_slices: usize,
    /// The write-ahead log, if the database has one.
    wal: Option<Mutex<Log>>,
    /// Writes logged since the last checkpoint (with the log only; see the module docs).
    memtables: Mutex<Memtables>,
}

/// A write logged but not checkpointed: `None` deletes.
type Memtable = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// The writes reads see before the database's: the active memtable, then the one a
/// running checkpoint is committing.
#[derive(Debug, Default)]
struct Memtables {
    active: Memtable,
    frozen: Option<Arc<Memtable>>,
}

impl Memtables {
    /// The newest logged write of `key`, if any.
    fn get(&self, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.active.get(key).or_else(|| self.frozen.as_ref().and_then(|f| f.get(key)))
    }

    /// The logged writes in `[start, end)`, in key order, the newest for each key.
    fn range<'a>(&'a self, start: &[u8], end: &[u8]) -> impl Iterator<Item = (&'a [u8], &'a Option<Vec<u8>>)> + 'a {
        let bounds = (Bound::Included(start.to_vec()), Bound::Excluded(end.to_vec()));
        let active = self.active.range::<Vec<u8>, _>(bounds.clone()).map(|(k, v)| (k.as_slice(), v));
        let frozen =
            self.frozen.iter().flat_map(move |f| f.range::<Vec<u8>, _>(bounds.clone())).map(|(k, v)| (k.as_slice(), v));
        merge(active, frozen)
    }
}

/// Merges two key-ordered streams; on equal keys the first one's entry wins.
fn merge<K: Ord, V>(
    first: impl Iterator<Item = (K, V)>,
    second: impl Iterator<Item = (K, V)>,
) -> impl Iterator<Item = (K, V)> {
    let (mut a, mut b) = (first.peekable(), second.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some((ka, _)), Some((kb, _))) if ka < kb => a.next(),
        (Some((ka, _)), Some((kb, _))) if ka > kb => b.next(),
        (Some(_), Some(_)) => {
            b.next();
            a.next()
        }
        (Some(_), None) => a.next(),
        (None, _) => b.next(),
    })
}

/// An open write-ahead log.
#[derive(Debug)]
struct Log {
    file: File,
    /// Names the log in errors.
    label: String,
    /// Bytes in the log (where the next record goes).
    len: u64,
    /// The file's length: zeros from `len` to here.
    zeroed_to: u64,
    /// The next record's sequence number.
    next_seq: u64,
    /// Log size that triggers a checkpoint.
    checkpoint_bytes: u64,
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
        let mut storage = Self::with_backend(backend, label, options)?;
        storage.create_table()?;
        if options.wal {
            storage.create_log(&wal_path(path), options)?;
        }
        Ok(storage)
    }

    /// Creates an empty log at `path` (which must not exist) for this database.
    pub(crate) fn create_log(&mut self, path: &Path, options: &RedbOptions) -> Result<(), StorageError> {
        let label = path.display().to_string();
        let file = (OpenOptions::new().read(true).write(true).create_new(true).open(path))
            .map_err(|e| error(&label, "cannot create the write-ahead log", e))?;
        file.sync_all().map_err(|e| error(&label, "cannot sync the write-ahead log", e))?;
        let next_seq = self.wal_applied()? + 1;
        self.wal = Some(Mutex::new(Log {
            file,
            label,
            len: 0,
            zeroed_to: 0,
            next_seq,
            checkpoint_bytes: options.wal_checkpoint_bytes,
        }));
        Ok(())
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
        let mut storage = Self::from_database(db, label, options);
        if options.wal {
            storage.recover(&wal_path(path), options).map_err(OpenError::Failed)?;
        }
        Ok(storage)
    }

    /// Opens the log at `path` and applies the records the database lacks (what a crash
    /// left only in the log), durably; then empties the log. A missing or damaged log is
    /// an error naming it.
    fn recover(&mut self, path: &Path, options: &RedbOptions) -> Result<(), StorageError> {
        let label = path.display().to_string();
        let mut file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| {
            let what = if e.kind() == std::io::ErrorKind::NotFound {
                "the write-ahead log is missing (writes acknowledged since the last checkpoint may be in it)"
            } else {
                "cannot open the write-ahead log"
            };
            error(&label, what, e)
        })?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| error(&label, "cannot read the write-ahead log", e))?;
        let records = wal::read(&bytes).map_err(|d| error(&label, "the write-ahead log is corrupt", d))?;
        let applied = self.wal_applied()?;
        let missing: Vec<wal::Record> = records.into_iter().filter(|r| r.seq > applied).collect();
        if let Some(first) = missing.first()
            && first.seq != applied + 1
        {
            let reason = format!("it starts at record {} but the database has only up to {applied}", first.seq);
            return Err(error(&label, "the write-ahead log is corrupt", reason));
        }
        let last = missing.last().map_or(applied, |r| r.seq);
        if !missing.is_empty() {
            let records = missing.len();
            let writes = missing.iter().flat_map(|r| &r.writes);
            self.transact(writes.map(|(k, v)| (k.as_slice(), v.as_deref())), true, Some(last))?;
            tracing::info!(log = %label, records, "replayed the write-ahead log");
        }
        let log = Log {
            file,
            label,
            len: bytes.len() as u64,
            zeroed_to: bytes.len() as u64,
            next_seq: last + 1,
            checkpoint_bytes: options.wal_checkpoint_bytes,
        };
        self.wal = Some(Mutex::new(log));
        // Everything the log holds is in the database now, durably.
        self.truncate_log(&mut self.lock_log().expect("just set"))
    }

    /// The sequence number of the last log record applied to the database (0: none).
    fn wal_applied(&self) -> Result<u64, StorageError> {
        let txn = self.db.begin_read().map_err(|e| self.error("cannot start a read", e))?;
        let table = match txn.open_table(META) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(self.error("cannot open the silo table", e)),
        };
        let applied = table.get(WAL_APPLIED).map_err(|e| self.error("cannot read", e))?;
        Ok(applied.map_or(0, |v| v.value()))
    }

    fn lock_log(&self) -> Option<MutexGuard<'_, Log>> {
        // A poisoned lock means a panic in the committer, which stops the node anyway; the
        // log's state is only changed after the writes it describes succeeded.
        self.wal.as_ref().map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Appends one record of `batches` to the log (not synced); returns its sequence
    /// number.
    fn append(&self, log: &mut Log, batches: &[PersistBatch]) -> Result<u64, StorageError> {
        let seq = log.next_seq;
        let record = wal::encode(seq, batches.iter().flat_map(|b| b.writes.iter()));
        let end = log.len + record.len() as u64;
        if end > log.zeroed_to {
            let grown = end.max(log.zeroed_to + WAL_ZEROS_AHEAD_BYTES);
            let zeros = vec![0; (grown - log.zeroed_to) as usize];
            (log.file.write_all_at(&zeros, log.zeroed_to))
                .map_err(|e| error(&log.label, "cannot grow the write-ahead log", e))?;
            log.zeroed_to = grown;
        }
        (log.file.write_all_at(&record, log.len))
            .map_err(|e| error(&log.label, "cannot append to the write-ahead log", e))?;
        log.len += record.len() as u64;
        log.next_seq += 1;
        Ok(seq)
    }

    fn sync_log(log: &Log) -> Result<(), StorageError> {
        log.file.sync_data().map_err(|e| error(&log.label, "cannot sync the write-ahead log", e))
    }

    /// The memtable applied in one durable redb commit (with the last logged record's
    /// sequence number), then the log emptied. Reads see the frozen memtable until the
    /// commit is done; on an error it goes back under the active one, newer writes first.
    fn checkpoint(&self, log: &mut Log) -> Result<(), StorageError> {
        let frozen = {
            let mut tables = self.lock_memtables();
            let frozen = Arc::new(std::mem::take(&mut tables.active));
            tables.frozen = Some(frozen.clone());
            frozen
        };
        if let Err(e) = self.apply_in_slices(&frozen, log.next_seq - 1) {
            let mut tables = self.lock_memtables();
            let newer = std::mem::take(&mut tables.active);
            tables.active = Arc::unwrap_or_clone(frozen);
            tables.active.extend(newer);
            tables.frozen = None;
            return Err(e);
        }
        self.lock_memtables().frozen = None;
        self.unsynced.store(false, Ordering::Release);
        self.truncate_log(log)
    }

    /// Applies a frozen memtable in [`RedbOptions::checkpoint_slices`] key-ordered slices,
    /// one durable commit each; only the last one records `wal_seq`, the log record the
    /// whole memtable reaches. A crash between two slices leaves the database with some
    /// of the memtable's writes and the old sequence number, so the replay applies every
    /// record again, in order, over them: each write is a whole register or a delete, so
    /// applying one twice is applying it once.
    fn apply_in_slices(&self, frozen: &Memtable, wal_seq: u64) -> Result<(), StorageError> {
        let slice = frozen.len().div_ceil(self.checkpoint_slices.max(1)).max(1);
        let mut entries = frozen.iter().map(|(k, v)| (k.as_slice(), v.as_deref()));
        let mut left = frozen.len();
        loop {
            let taken = slice.min(left);
            left -= taken;
            let last = left == 0;
            self.transact(entries.by_ref().take(taken), true, last.then_some(wal_seq))?;
            if last {
                return Ok(());
            }
        }
    }

    fn lock_memtables(&self) -> MutexGuard<'_, Memtables> {
        // Memtables change only after the writes they hold are logged; a panic while one
        // was held stops the node anyway.
        self.memtables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts logged writes in the active memtable.
    fn stage(&self, batches: &[PersistBatch]) {
        let mut tables = self.lock_memtables();
        for (key, value) in batches.iter().flat_map(|b| &b.writes) {
            tables.active.insert(key.clone(), value.clone());
        }
    }

    fn truncate_log(&self, log: &mut Log) -> Result<(), StorageError> {
        log.file.set_len(0).map_err(|e| error(&log.label, "cannot truncate the write-ahead log", e))?;
        Self::sync_log(log)?;
        log.len = 0;
        log.zeroed_to = 0;
        Ok(())
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
        RedbStorage {
            db,
            label,
            unsynced: AtomicBool::new(false),
            two_phase_commit: options.two_phase_commit,
            checkpoint_slices: options.checkpoint_slices,
            wal: None,
            memtables: Mutex::new(Memtables::default()),
        }
    }

    /// What errors call this database (its path, for a file).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Closes the database cleanly (what dropping it does, but with the error reported),
    /// after a checkpoint that leaves the log empty.
    pub fn close(self) -> Result<(), StorageError> {
        if let Some(mut log) = self.lock_log() {
            self.checkpoint(&mut log)?;
        }
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
        // The memtables first, then a read transaction begun after: a checkpoint drops its
        // frozen memtable only once its commit is visible.
        if let Some(logged) = self.lock_memtables().get(key) {
            return Ok(logged.clone());
        }
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
        // The memtables' writes over the database's entries, in key order. The memtables
        // are locked first and stay locked for the scan (the committer waits at most one
        // scan's time), so no checkpoint moves writes from them into the database between
        // the two reads.
        let tables = self.lock_memtables();
        let logged = tables.range(start, end);
        let txn = self.db.begin_read().map_err(|e| self.error("cannot start a read", e))?;
        let range = match txn.open_table(TABLE) {
            Ok(table) => table.range::<&[u8]>(start..end).map_err(|e| self.error("cannot scan", e))?,
            Err(TableError::TableDoesNotExist(_)) => {
                return Ok(logged.filter_map(|(k, v)| Some((k.to_vec(), v.clone()?))).take(limit).collect());
            }
            Err(e) => return Err(self.error("cannot open the table", e)),
        };
        let mut failed = None;
        let stored = range.map_while(|entry| match entry {
            Ok((k, v)) => Some((k.value().to_vec(), Some(v.value().to_vec()))),
            Err(e) => {
                failed = Some(e);
                None
            }
        });
        // A logged write replaces the stored entry of its key; a logged delete hides it.
        let logged = logged.map(|(k, v)| (k.to_vec(), v.clone()));
        let entries: Entries = merge(logged, stored).filter_map(|(k, v)| Some((k, v?))).take(limit).collect();
        match failed {
            Some(e) => Err(self.error("cannot scan", e)),
            None => Ok(entries),
        }
    }

    fn write(&self, batch: &PersistBatch) -> Result<(), StorageError> {
        let batches = std::slice::from_ref(batch);
        match self.lock_log() {
            Some(mut log) => {
                self.append(&mut log, batches)?;
                self.stage(batches);
            }
            None => self.transact(writes_of(batches), false, None)?,
        }
        self.unsynced.store(true, Ordering::Release);
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        if !self.unsynced.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let synced = match self.lock_log() {
            Some(mut log) => Self::sync_log(&log).and_then(|()| self.checkpoint_if_due(&mut log)),
            None => self.transact(std::iter::empty(), true, None),
        };
        if synced.is_err() {
            self.unsynced.store(true, Ordering::Release);
        }
        synced
    }

    /// The whole group at once. With the log: one record appended and synced (one small
    /// write, one fsync), then its writes put in the memtable, and a checkpoint when the
    /// log is big enough. Without: one durable redb transaction. Either way earlier
    /// unsynced `write`s become durable too.
    fn commit(&self, batches: &[PersistBatch]) -> Result<(), StorageError> {
        let Some(mut log) = self.lock_log() else {
            let was_unsynced = self.unsynced.swap(false, Ordering::AcqRel);
            let committed = self.transact(writes_of(batches), true, None);
            if committed.is_err() && was_unsynced {
                self.unsynced.store(true, Ordering::Release);
            }
            return committed;
        };
        self.append(&mut log, batches)?;
        Self::sync_log(&log)?;
        self.stage(batches);
        self.unsynced.store(false, Ordering::Release);
        self.checkpoint_if_due(&mut log)
    }
}

impl RedbStorage {
    fn checkpoint_if_due(&self, log: &mut Log) -> Result<(), StorageError> {
        if log.len >= log.checkpoint_bytes { self.checkpoint(log) } else { Ok(()) }
    }

    /// Applies `writes` in order in one write transaction and commits it, durably
    /// ([`Durability::Immediate`], two-phase if configured) or not ([`Durability::None`]).
    /// `wal_seq` records, in the same transaction, the last log record it applies. On an
    /// error, dropping the transaction aborts it: nothing of it is applied.
    fn transact<'a>(
        &self,
        writes: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
        durable: bool,
        wal_seq: Option<u64>,
    ) -> Result<(), StorageError> {
        let mut txn = self.db.begin_write().map_err(|e| self.error("cannot start a transaction", e))?;
        let durability = if durable { Durability::Immediate } else { Durability::None };
        txn.set_durability(durability).map_err(|e| self.error("cannot set the durability", e))?;
        if durable {
            txn.set_two_phase_commit(self.two_phase_commit);
        }
        let mut writes = writes.peekable();
        if writes.peek().is_some() {
            let mut table = txn.open_table(TABLE).map_err(|e| self.error("cannot open the table", e))?;
            for (key, value) in writes {
                match value {
                    Some(value) => table.insert(key, value).map(drop),
                    None => table.remove(key).map(drop),
                }
                .map_err(|e| self.error("cannot write", e))?;
            }
        }
        if let Some(seq) = wal_seq {
            let mut meta = txn.open_table(META).map_err(|e| self.error("cannot open the silo table", e))?;
            meta.insert(WAL_APPLIED, seq).map_err(|e| self.error("cannot write", e))?;
        }
        let what = if durable { "cannot make the writes durable" } else { "cannot commit" };
        txn.commit().map_err(|e| self.error(what, e))
    }
}

/// The writes of `batches`, in order.
fn writes_of(batches: &[PersistBatch]) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
    batches.iter().flat_map(|b| &b.writes).map(|(k, v)| (k.as_slice(), v.as_deref()))
}

#[cfg(test)]
mod tests;
