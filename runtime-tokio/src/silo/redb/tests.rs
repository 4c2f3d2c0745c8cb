use super::*;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let unique = format!("memo-redb-{name}-{}-{:?}", std::process::id(), std::thread::current().id());
        let path = std::env::temp_dir().join(unique.replace(['(', ')'], ""));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }

    fn file(&self) -> PathBuf {
        self.0.join("data.redb")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn put(id: u64, writes: &[(&str, Option<&str>)]) -> PersistBatch {
    let writes = writes.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec()))).collect();
    PersistBatch { id, writes }
}

fn get(storage: &RedbStorage, key: &str) -> Option<String> {
    storage.get(key.as_bytes()).expect("get").map(|v| String::from_utf8(v).expect("utf-8"))
}

fn keys(entries: &Entries) -> Vec<&str> {
    entries.iter().map(|(k, _)| std::str::from_utf8(k).expect("utf-8")).collect()
}

#[test]
fn get_scan_write_and_delete() {
    let dir = TempDir::new("basic");
    let storage = RedbStorage::create(&dir.file(), &RedbOptions::default()).expect("create");
    assert_eq!(get(&storage, "a"), None);
    assert!(storage.scan(b"", b"\xff", 10).expect("scan").is_empty());

    storage.write(&put(1, &[("b", Some("2")), ("a", Some("1")), ("c", Some("3")), ("d", Some("4"))])).expect("write");
    assert_eq!(get(&storage, "a").as_deref(), Some("1"));
    let all = storage.scan(b"", b"\xff", 10).expect("scan");
    assert_eq!(keys(&all), ["a", "b", "c", "d"]);
    assert_eq!(all[2].1, b"3");
    // `end` is exclusive, `start` inclusive, `limit` bounds the page.
    assert_eq!(keys(&storage.scan(b"b", b"d", 10).expect("scan")), ["b", "c"]);
    assert_eq!(keys(&storage.scan(b"a", b"\xff", 2).expect("scan")), ["a", "b"]);
    assert!(storage.scan(b"c", b"b", 10).expect("an empty range").is_empty());
    assert!(storage.scan(b"a", b"z", 0).expect("a zero limit").is_empty());

    // Delete, and deleting an absent key is fine.
    storage.write(&put(2, &[("b", None), ("zz", None)])).expect("write");
    assert_eq!(get(&storage, "b"), None);
    assert_eq!(keys(&storage.scan(b"", b"\xff", 10).expect("scan")), ["a", "c", "d"]);
    storage.sync().expect("sync");
    storage.sync().expect("a sync with nothing to sync");
}

#[test]
fn a_batch_is_applied_in_order() {
    let dir = TempDir::new("order");
    let storage = RedbStorage::create(&dir.file(), &RedbOptions::default()).expect("create");
    storage.write(&put(1, &[("k", Some("1")), ("k", Some("2")), ("gone", Some("x")), ("gone", None)])).expect("write");
    assert_eq!(get(&storage, "k").as_deref(), Some("2"));
    assert_eq!(get(&storage, "gone"), None);
    storage.write(&put(2, &[("gone", None), ("gone", Some("back"))])).expect("write");
    assert_eq!(get(&storage, "gone").as_deref(), Some("back"));
}

#[test]
fn synced_writes_survive_a_reopen() {
    let dir = TempDir::new("reopen");
    let options = RedbOptions::default();
    let storage = RedbStorage::create(&dir.file(), &options).expect("create");
    storage.write(&put(1, &[("a", Some("1")), ("b", Some("2"))])).expect("write");
    storage.write(&put(2, &[("a", None), ("c", Some("3"))])).expect("write");
    storage.sync().expect("sync");
    storage.close().expect("close");

    let storage = RedbStorage::open(&dir.file(), &options).expect("reopen");
    assert_eq!(keys(&storage.scan(b"", b"\xff", 10).expect("scan")), ["b", "c"]);
    assert!(RedbStorage::create(&dir.file(), &options).is_err(), "create refuses an existing file");
}

/// A file backend that can be "killed": from then on every call fails, so nothing more
/// reaches the file (what a kill -9 leaves, minus the OS cache, which a kill keeps).
#[derive(Debug)]
struct KillableFile {
    file: std::fs::File,
    dead: Arc<AtomicBool>,
    /// Syncs left before the backend dies by itself (a crash between two durable
    /// commits); `u64::MAX`: never.
    syncs_left: Arc<AtomicU64>,
}

impl KillableFile {
    fn check(&self) -> Result<(), std::io::Error> {
        if self.dead.load(Ordering::Acquire) { Err(std::io::Error::other("killed")) } else { Ok(()) }
    }
}

impl StorageBackend for KillableFile {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.check()?;
        Ok(self.file.metadata()?.len())
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.check()?;
        self.file.read_exact_at(out, offset)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.check()?;
        self.file.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.check()?;
        self.file.sync_data()?;
        if self.syncs_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.dead.store(true, Ordering::Release);
        }
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.check()?;
        self.file.write_all_at(data, offset)
    }
}

/// Opens `path` (created if absent) over a killable backend.
fn killable(path: &Path, options: &RedbOptions) -> (RedbStorage, Arc<AtomicBool>) {
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).expect("open");
    let dead = Arc::new(AtomicBool::new(false));
    let backend = KillableFile { file, dead: dead.clone(), syncs_left: Arc::new(AtomicU64::new(u64::MAX)) };
    let storage = RedbStorage::with_backend(backend, path.display().to_string(), options).expect("open");
    (storage, dead)
}

#[test]
fn sync_makes_earlier_writes_durable_and_unsynced_writes_die_with_the_process() {
    let dir = TempDir::new("kill");
    let options = RedbOptions { wal: false, ..RedbOptions::default() };
    let (storage, dead) = killable(&dir.file(), &options);
    storage.write(&put(1, &[("a", Some("1"))])).expect("write");
    storage.write(&put(2, &[("b", Some("2"))])).expect("write");
    storage.sync().expect("sync");
    storage.write(&put(3, &[("c", Some("3")), ("a", None)])).expect("write");
    assert_eq!(get(&storage, "c").as_deref(), Some("3"), "an unsynced write is visible");
    dead.store(true, Ordering::Release);
    drop(storage); // its clean close fails: nothing more reaches the file

    let storage = RedbStorage::open(&dir.file(), &options).expect("recovers");
    assert_eq!(get(&storage, "a").as_deref(), Some("1"));
    assert_eq!(get(&storage, "b").as_deref(), Some("2"));
    assert_eq!(get(&storage, "c"), None, "the unsynced batch was lost whole");
}

#[test]
fn without_the_log_a_committed_group_is_applied_in_order_and_survives_a_crash() {
    let dir = TempDir::new("group");
    let options = RedbOptions { wal: false, ..RedbOptions::default() };
    let (storage, dead) = killable(&dir.file(), &options);
    // An earlier unsynced write is made durable by the group commit too.
    storage.write(&put(1, &[("early", Some("e"))])).expect("write");
    let group = [put(2, &[("a", Some("1")), ("b", Some("1"))]), put(3, &[("a", Some("2")), ("b", None)])];
    storage.commit(&group).expect("commit");
    storage.write(&put(4, &[("late", Some("l"))])).expect("write");
    dead.store(true, Ordering::Release);
    drop(storage);

    let storage = RedbStorage::open(&dir.file(), &options).expect("recovers");
    assert_eq!(get(&storage, "early").as_deref(), Some("e"));
    assert_eq!(get(&storage, "a").as_deref(), Some("2"), "the later batch of the group wins");
    assert_eq!(get(&storage, "b"), None, "deleted by the later batch");
    assert_eq!(get(&storage, "late"), None, "written after the commit, never synced");
}

/// A killable database with a write-ahead log beside it (`wal_path`), as `create` makes.
fn killable_with_log(path: &Path, options: &RedbOptions) -> (RedbStorage, Arc<AtomicBool>) {
    let (mut storage, dead) = killable(path, options);
    storage.create_log(&wal_path(path), options).expect("the log is created");
    (storage, dead)
}

#[test]
fn groups_committed_through_the_log_survive_a_crash_before_any_checkpoint() {
    let dir = TempDir::new("wal-replay");
    let options = RedbOptions::default();
    let (storage, dead) = killable_with_log(&dir.file(), &options);
    storage.commit(&[put(1, &[("a", Some("1")), ("b", Some("1"))])]).expect("commit");
    storage.commit(&[put(2, &[("a", Some("2"))]), put(3, &[("b", None), ("c", Some("3"))])]).expect("commit");
    assert!(std::fs::metadata(wal_path(&dir.file())).expect("log").len() > 0, "the records are in the log");
    dead.store(true, Ordering::Release);
    drop(storage); // the database file never got a durable commit of these writes

    let storage = RedbStorage::open(&dir.file(), &options).expect("recovers from the log");
    assert_eq!(get(&storage, "a").as_deref(), Some("2"));
    assert_eq!(get(&storage, "b"), None);
    assert_eq!(get(&storage, "c").as_deref(), Some("3"));
    assert_eq!(std::fs::metadata(wal_path(&dir.file())).expect("log").len(), 0, "replayed, then emptied");
    // Sequence numbers go on where they stopped: the next records replay too.
    storage.commit(&[put(4, &[("d", Some("4"))])]).expect("commit");
    drop(storage);
    let storage = RedbStorage::open(&dir.file(), &options).expect("reopens");
    assert_eq!(get(&storage, "d").as_deref(), Some("4"));
    assert_eq!(get(&storage, "a").as_deref(), Some("2"));
}

#[test]
fn a_checkpoint_empties_the_log_and_keeps_every_write() {
    let dir = TempDir::new("wal-checkpoint");
    let options = RedbOptions { wal_checkpoint_bytes: 1024, ..RedbOptions::default() };
    let (storage, dead) = killable_with_log(&dir.file(), &options);
    let value = "v".repeat(100);
    for i in 0..40u64 {
        storage.commit(&[put(i + 1, &[(&format!("k{i:02}"), Some(&value))])]).expect("commit");
    }
    let log_len = std::fs::metadata(wal_path(&dir.file())).expect("log").len();
    assert!(log_len < 1024 + 200, "checkpoints keep the log short ({log_len} bytes)");
    dead.store(true, Ordering::Release);
    drop(storage);
    let storage = RedbStorage::open(&dir.file(), &options).expect("recovers");
    for i in 0..40u64 {
        assert_eq!(get(&storage, &format!("k{i:02}")).as_deref(), Some(value.as_str()), "k{i:02}");
    }
}

/// A checkpoint is several durable commits (module docs, "Disk"); a crash after some of
/// them leaves the database with part of the memtable under the old sequence number, and
/// the replay restores every write. Counterexample: recording the sequence number with an
/// earlier slice than the last, which makes the replay skip the records of the slices the
/// crash lost.
#[test]
fn a_crash_between_the_slices_of_a_checkpoint_loses_no_write() {
    let dir = TempDir::new("wal-slices");
    let options = RedbOptions { wal_checkpoint_bytes: u64::MAX, checkpoint_slices: 4, ..RedbOptions::default() };
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(dir.file()).expect("open");
    let (dead, syncs_left) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(u64::MAX)));
    let backend = KillableFile { file, dead: dead.clone(), syncs_left: syncs_left.clone() };
    let mut storage = RedbStorage::with_backend(backend, dir.file().display().to_string(), &options).expect("open");
    storage.create_table().expect("table");
    storage.create_log(&wal_path(&dir.file()), &options).expect("log");
    let key = |i: u64| format!("k{i:02}");
    for i in 0..40u64 {
        storage.commit(&[put(i + 1, &[(&key(i), Some(&format!("v{i}")))])]).expect("commit");
    }
    // Slices are two-phase commits (two syncs each): die after the second slice.
    syncs_left.store(4, Ordering::Release);
    let failed = storage.checkpoint(&mut storage.lock_log().expect("a log"));
    assert!(failed.is_err(), "the backend died in the third slice");
    assert!(dead.load(Ordering::Acquire));
    drop(storage);

    // The database alone (its log not replayed) has the first two slices' keys.
    let bare = RedbStorage::open(&dir.file(), &RedbOptions { wal: false, ..options.clone() }).expect("opens");
    let present: Vec<u64> = (0..40).filter(|&i| get(&bare, &key(i)).is_some()).collect();
    assert_eq!(present, (0..20).collect::<Vec<_>>(), "two of the four slices were durable");
    assert_eq!(bare.wal_applied().expect("read"), 0, "no slice but the last records the log's position");
    drop(bare);

    let storage = RedbStorage::open(&dir.file(), &options).expect("recovers from the log");
    for i in 0..40u64 {
        assert_eq!(get(&storage, &key(i)), Some(format!("v{i}")), "{}", key(i));
    }
}

#[test]
fn a_torn_last_record_is_dropped_and_the_earlier_ones_kept() {
    let dir = TempDir::new("wal-torn");
    let options = RedbOptions::default();
    let (storage, dead) = killable_with_log(&dir.file(), &options);
    storage.commit(&[put(1, &[("a", Some("1"))])]).expect("commit");
    storage.commit(&[put(2, &[("b", Some(&"2".repeat(3000)))])]).expect("commit");
    dead.store(true, Ordering::Release);
    drop(storage);
    // The second append was torn by the crash: its sectors after the first never reached
    // the disk, and read as the zeros the log was grown with.
    let path = wal_path(&dir.file());
    let mut log = std::fs::read(&path).expect("log");
    let first_end = 16 + u32::from_le_bytes(log[0..4].try_into().unwrap()) as usize;
    assert!(first_end < 512 && log[first_end] != 0, "the second record starts in the first sector");
    log[512..].fill(0);
    std::fs::write(&path, &log).expect("write");
    let storage = RedbStorage::open(&dir.file(), &options).expect("a torn tail is not damage");
    assert_eq!(get(&storage, "a").as_deref(), Some("1"));
    assert_eq!(get(&storage, "b"), None);
}

#[test]
fn a_damaged_or_missing_log_stops_the_open_naming_it() {
    let dir = TempDir::new("wal-damage");
    let options = RedbOptions::default();
    let (storage, dead) = killable_with_log(&dir.file(), &options);
    storage.commit(&[put(1, &[("a", Some(&marker("acknowledged")))])]).expect("commit");
    storage.commit(&[put(2, &[("b", Some("2"))])]).expect("commit");
    dead.store(true, Ordering::Release);
    drop(storage);
    let log = wal_path(&dir.file());
    assert!(scribble_over(&log, marker("acknowledged").as_bytes()) > 0);
    let error = RedbStorage::open(&dir.file(), &options).expect_err("a damaged record is not a torn tail");
    assert!(error.0.contains(&log.display().to_string()), "{error}");
    assert!(error.0.contains("corrupt"), "{error}");

    std::fs::remove_file(&log).expect("remove");
    let error = RedbStorage::open(&dir.file(), &options).expect_err("a missing log");
    assert!(error.0.contains(&log.display().to_string()) && error.0.contains("missing"), "{error}");
}

/// Overwrites every occurrence of `needle` in the file with 0x55 bytes; returns how many.
fn scribble_over(path: &Path, needle: &[u8]) -> usize {
    let mut bytes = std::fs::read(path).expect("read");
    let mut hits = 0;
    let mut i = 0;
    while i + needle.len() <= bytes.len() {
        if &bytes[i..i + needle.len()] == needle {
            bytes[i..i + needle.len()].fill(0x55);
            hits += 1;
            i += needle.len();
        } else {
            i += 1;
        }
    }
    std::fs::write(path, bytes).expect("write");
    hits
}

/// A value that is easy to find in the file.
fn marker(tag: &str) -> String {
    format!("<<memo-test-marker-{tag}>>").repeat(8)
}

#[test]
fn a_damaged_file_is_an_error_naming_it_after_a_clean_close() {
    let dir = TempDir::new("damaged");
    let options = RedbOptions::default();
    let storage = RedbStorage::create(&dir.file(), &options).expect("create");
    let value = marker("clean");
    for i in 0..100 {
        storage.write(&put(i + 1, &[(&format!("key{i:03}"), Some(&value))])).expect("write");
    }
    storage.sync().expect("sync");
    storage.close().expect("close");
    assert!(scribble_over(&dir.file(), value.as_bytes()) > 0);
    let error = RedbStorage::open(&dir.file(), &options).expect_err("a damaged file does not open");
    assert!(error.0.contains(&dir.file().display().to_string()), "{error}");
    assert!(error.0.contains("corrupt"), "{error}");
}

#[test]
fn damage_to_the_newest_commit_after_a_crash_is_an_error_not_a_rollback() {
    let dir = TempDir::new("rollback");
    let options = RedbOptions { wal: false, ..RedbOptions::default() };
    assert!(options.two_phase_commit);
    let (storage, dead) = killable(&dir.file(), &options);
    storage.write(&put(1, &[("k", Some(&marker("old")))])).expect("write");
    storage.sync().expect("sync");
    storage.write(&put(2, &[("k", Some(&marker("new")))])).expect("write");
    storage.sync().expect("sync");
    dead.store(true, Ordering::Release);
    drop(storage);
    assert!(scribble_over(&dir.file(), marker("new").as_bytes()) > 0);
    let opened = RedbStorage::open(&dir.file(), &options);
    let error = opened.map(|s| get(&s, "k")).expect_err("the damaged newest commit is reported");
    assert!(error.0.contains(&dir.file().display().to_string()), "{error}");
}

#[test]
fn one_phase_commits_would_roll_back_silently() {
    // Why two-phase commits are the default: the same damage with one-phase commits makes
    // redb fall back to the previous commit, forgetting an acknowledged write.
    let dir = TempDir::new("one-phase");
    let options = RedbOptions { two_phase_commit: false, wal: false, ..RedbOptions::default() };
    let (storage, dead) = killable(&dir.file(), &options);
    storage.write(&put(1, &[("k", Some(&marker("old")))])).expect("write");
    storage.sync().expect("sync");
    storage.write(&put(2, &[("k", Some(&marker("new")))])).expect("write");
    storage.sync().expect("sync");
    dead.store(true, Ordering::Release);
    drop(storage);
    assert!(scribble_over(&dir.file(), marker("new").as_bytes()) > 0);
    let storage = RedbStorage::open(&dir.file(), &options).expect("opens after rolling back");
    assert_eq!(get(&storage, "k"), Some(marker("old")));
}

#[test]
fn truncated_foreign_and_missing_files_are_errors_naming_them() {
    let dir = TempDir::new("bad-files");
    let options = RedbOptions::default();
    let path = dir.file();
    let named = |error: StorageError| {
        assert!(error.0.contains(&path.display().to_string()), "{error}");
        error.0
    };

    named(RedbStorage::open(&path, &options).expect_err("a missing file"));

    std::fs::write(&path, b"this is not a redb database, just some text".repeat(200)).expect("write");
    named(RedbStorage::open(&path, &options).expect_err("a foreign file"));
    std::fs::remove_file(&path).expect("remove");

    let storage = RedbStorage::create(&path, &options).expect("create");
    for i in 0..200 {
        storage.write(&put(i + 1, &[(&format!("key{i:03}"), Some(&marker("t")))])).expect("write");
    }
    storage.sync().expect("sync");
    storage.close().expect("close");
    let len = std::fs::metadata(&path).expect("metadata").len();
    OpenOptions::new().write(true).open(&path).expect("open").set_len(len / 2).expect("truncate");
    named(RedbStorage::open(&path, &options).expect_err("a truncated file"));
}

#[test]
fn a_database_open_in_another_handle_is_refused() {
    let dir = TempDir::new("locked");
    let options = RedbOptions::default();
    let _first = RedbStorage::create(&dir.file(), &options).expect("create");
    let error = RedbStorage::open(&dir.file(), &options).expect_err("already open");
    assert!(error.0.contains("already open"), "{error}");
}

/// Reads through the memtable and the database agree with a model, across checkpoints,
/// a crash and the replay: random puts and deletes over 40 keys in groups, checkpoints
/// every few groups (a 700-byte log), and after each group a `get` of every key and scans
/// of random ranges and limits.
#[test]
fn reads_merge_the_memtable_over_the_database_like_a_model() {
    let dir = TempDir::new("memtable-model");
    let options = RedbOptions { wal_checkpoint_bytes: 700, ..RedbOptions::default() };
    let (storage, dead) = killable_with_log(&dir.file(), &options);
    let mut model = BTreeMap::<Vec<u8>, Vec<u8>>::new();
    let mut rng = 0x5eed_u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let key = |i: u64| format!("k{i:02}").into_bytes();
    let check = |storage: &RedbStorage, model: &BTreeMap<Vec<u8>, Vec<u8>>, next: &mut dyn FnMut(u64) -> u64| {
        for i in 0..40 {
            assert_eq!(storage.get(&key(i)).expect("get"), model.get(&key(i)).cloned(), "get k{i:02}");
        }
        for _ in 0..8 {
            let (a, b) = (next(42), next(42));
            let (start, end) = (key(a.min(b)), key(a.max(b)));
            let limit = next(12) as usize;
            let expected: Entries =
                model.range(start.clone()..end.clone()).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect();
            assert_eq!(storage.scan(&start, &end, limit).expect("scan"), expected, "scan {a}..{b} limit {limit}");
        }
    };
    let mut checkpoints = 0;
    for group in 1..=120u64 {
        let mut writes = Vec::new();
        for _ in 0..1 + next(4) {
            let k = key(next(40));
            let value = (next(3) > 0).then(|| format!("v{group}-{}", next(1000)).into_bytes());
            match &value {
                Some(v) => model.insert(k.clone(), v.clone()),
                None => model.remove(&k),
            };
            writes.push((k, value));
        }
        let before = std::fs::metadata(wal_path(&dir.file())).expect("log").len();
        storage.commit(&[PersistBatch { id: group, writes }]).expect("commit");
        if std::fs::metadata(wal_path(&dir.file())).expect("log").len() < before {
            checkpoints += 1;
        }
        check(&storage, &model, &mut next);
    }
    assert!(checkpoints >= 5, "only {checkpoints} checkpoints: the test needs writes on both sides of them");
    assert!(!storage.lock_memtables().active.is_empty(), "the crash must leave writes only in the log");
    dead.store(true, Ordering::Release);
    drop(storage);
    let storage = RedbStorage::open(&dir.file(), &options).expect("recovers");
    check(&storage, &model, &mut next);
}
