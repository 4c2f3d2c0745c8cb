use super::*;
use memo_engine::storage::PersistBatch;

/// A fresh path under the system temp dir (not created), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let unique = format!("memo-datadir-{name}-{}", std::process::id());
        let path = std::env::temp_dir().join(unique);
        let _ = std::fs::remove_dir_all(&path);
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn params(partitions: u32) -> ClusterParams {
    ClusterParams {
        partitions,
        replication: 3,
        initial_nodes: ["n1", "n2", "n3"].into_iter().map(NodeId::initial).collect(),
        token: "tok".into(),
    }
}

fn options() -> RedbOptions {
    RedbOptions { cache_bytes: 1 << 20, ..RedbOptions::default() }
}

fn write_one(storage: &RedbStorage) {
    let batch = PersistBatch { id: 1, writes: vec![(b"k".to_vec(), Some(b"v".to_vec()))] };
    storage.write(&batch).expect("write");
    storage.sync().expect("sync");
}

#[test]
fn a_new_dir_is_created_and_reopened() {
    let tmp = TempDir::new("create");
    let dir = tmp.0.join("nested").join("n1");
    let (data, storage) = open(&dir, "n1", &params(64), &options()).expect("create");
    assert!(data.created());
    assert_eq!(data.node(), &NodeId::initial("n1"));
    assert!(data.marker_path().is_file() && data.database_path().is_file());
    assert!(!dir.join(MARKER_TEMP_FILE).exists());
    write_one(&storage);
    drop(storage);

    let text = std::fs::read_to_string(data.marker_path()).expect("marker");
    assert!(text.contains("partitions = 64"), "{text}");
    assert!(text.contains("name = \"n1\""), "{text}");

    let (again, storage) = open(&dir, "n1", &params(64), &options()).expect("reopen");
    assert!(!again.created());
    assert_eq!(storage.get(b"k").expect("get"), Some(b"v".to_vec()));
}

#[test]
fn every_mismatch_is_named() {
    let tmp = TempDir::new("mismatch");
    drop(open(&tmp.0, "n1", &params(256), &options()).expect("create"));
    let marker = tmp.0.join(MARKER_FILE).display().to_string();
    let refuse = |name: &str, params: ClusterParams, field: &str| {
        let error = open(&tmp.0, name, &params, &options()).expect_err("a mismatch");
        assert!(matches!(&error, DataDirError::Mismatch { field: f, .. } if *f == field), "{error}");
        let text = error.to_string();
        assert!(text.contains(&marker), "{text}");
        text
    };
    let text = refuse("n1", params(64), "partitions");
    assert_eq!(
        text,
        format!(
            "data dir {} was created for a cluster with 256 partitions, not 64 (recorded in {marker})",
            tmp.0.display()
        )
    );
    refuse("n2", params(256), "node");
    refuse("n1", ClusterParams { replication: 5, ..params(256) }, "replication");
    refuse("n1", ClusterParams { token: "other".into(), ..params(256) }, "token");
    let mut fewer = params(256);
    fewer.initial_nodes.pop();
    assert!(refuse("n1", fewer, "initial_nodes").contains("initial nodes n1,n2,n3, not n1,n2"));
    // The order of --initial-nodes does not matter.
    let mut shuffled = params(256);
    shuffled.initial_nodes.reverse();
    open(&tmp.0, "n1", &shuffled, &options()).expect("same cluster");
}

#[test]
fn a_marker_without_its_database_is_refused() {
    let tmp = TempDir::new("no-db");
    drop(open(&tmp.0, "n1", &params(64), &options()).expect("create"));
    std::fs::remove_file(tmp.0.join(DATABASE_FILE)).expect("remove");
    let error = open(&tmp.0, "n1", &params(64), &options()).expect_err("refused");
    assert!(error.to_string().contains("no data.redb"), "{error}");
    assert!(!tmp.0.join(DATABASE_FILE).exists(), "nothing was recreated");
}

#[test]
fn a_damaged_database_is_an_error_naming_it() {
    let tmp = TempDir::new("damaged-db");
    drop(open(&tmp.0, "n1", &params(64), &options()).expect("create"));
    let db = tmp.0.join(DATABASE_FILE);
    std::fs::write(&db, b"garbage".repeat(100)).expect("overwrite");
    let error = open(&tmp.0, "n1", &params(64), &options()).expect_err("refused");
    assert!(error.to_string().contains(&db.display().to_string()), "{error}");
    assert_eq!(std::fs::read(&db).expect("read"), b"garbage".repeat(100), "the file was left alone");
}

#[test]
fn a_bad_marker_is_an_error_naming_it() {
    let tmp = TempDir::new("bad-marker");
    drop(open(&tmp.0, "n1", &params(64), &options()).expect("create"));
    let marker = tmp.0.join(MARKER_FILE);
    for text in [
        "not toml at all [",
        "format = 1\n",
        &std::fs::read_to_string(&marker).unwrap().replace("format = 1", "format = 2"),
    ] {
        std::fs::write(&marker, text).expect("write");
        let error = open(&tmp.0, "n1", &params(64), &options()).expect_err("refused");
        assert!(matches!(error, DataDirError::Marker { .. }), "{error}");
        assert!(error.to_string().starts_with(&marker.display().to_string()), "{error}");
    }
}

#[test]
fn an_unfinished_creation_is_redone() {
    let tmp = TempDir::new("unfinished");
    std::fs::create_dir_all(&tmp.0).expect("dir");
    // What a crash between redb's two creation syncs leaves: a file without the magic number.
    std::fs::write(tmp.0.join(DATABASE_FILE), vec![0u8; 4096]).expect("write");
    std::fs::write(tmp.0.join(MARKER_TEMP_FILE), "partial").expect("write");
    let (data, _storage) = open(&tmp.0, "n1", &params(64), &options()).expect("created afresh");
    assert!(data.created());
}

#[test]
fn a_database_with_data_but_no_marker_is_refused() {
    let tmp = TempDir::new("lost-marker");
    let (_, storage) = open(&tmp.0, "n1", &params(64), &options()).expect("create");
    write_one(&storage);
    drop(storage);
    std::fs::remove_file(tmp.0.join(MARKER_FILE)).expect("remove");
    let error = open(&tmp.0, "n1", &params(64), &options()).expect_err("refused");
    assert!(error.to_string().contains("holds data but"), "{error}");
    assert!(tmp.0.join(DATABASE_FILE).exists());
}

#[test]
fn a_foreign_directory_or_node_is_refused() {
    let tmp = TempDir::new("foreign");
    std::fs::create_dir_all(&tmp.0).expect("dir");
    std::fs::write(tmp.0.join("notes.txt"), "mine").expect("write");
    let error = open(&tmp.0, "n1", &params(64), &options()).expect_err("refused");
    assert!(error.to_string().contains("not empty"), "{error}");
    std::fs::remove_file(tmp.0.join("notes.txt")).expect("remove");
    let error = open(&tmp.0, "n9", &params(64), &options()).expect_err("refused");
    assert!(error.to_string().contains("not one of the initial nodes"), "{error}");
}

#[test]
fn a_database_being_created_by_another_process_is_left_alone() {
    let tmp = TempDir::new("in-use");
    std::fs::create_dir_all(&tmp.0).expect("dir");
    // Another process has created the database and not yet written the marker.
    let other = RedbStorage::create(&tmp.0.join(DATABASE_FILE), &options()).expect("create");
    let error = open(&tmp.0, "n1", &params(64), &options()).expect_err("refused");
    assert!(error.to_string().contains("already open"), "{error}");
    write_one(&other);
    assert!(tmp.0.join(DATABASE_FILE).exists(), "the other process's database was not removed");
}

/// Upgrades: a founder's `memo.toml` written before joins existed (no `joined` key, text
/// frozen from that version) is read as a founder's, and a founder's directory is still
/// written exactly so, so an older memo could read it too.
#[test]
fn a_marker_from_before_joins_reads_as_a_founders_and_founders_still_write_it() {
    let old = "# memo data directory: written once when the directory was created; do not edit.\n\
               # The node refuses to start if its flags disagree with it.\n\
               format = 1\ncreated_by = \"memo 0.1.0\"\n\
               cluster_id = \"CLUSTER\"\n\n[node]\nname = \"n1\"\ngeneration = 0\n\n\
               [cluster]\npartitions = 64\nreplication = 3\ninitial_nodes = [\"n1\", \"n2\", \"n3\"]\ntoken = \"tok\"\n";
    let old = old.replace("CLUSTER", &hex(&params(64).cluster_id().0));
    let tmp = TempDir::new("old-marker");
    std::fs::create_dir_all(&tmp.0).expect("mkdir");
    std::fs::write(tmp.0.join(MARKER_FILE), &old).expect("write");
    let recorded = recorded(&tmp.0).expect("reads").expect("a marker");
    assert_eq!(recorded, Recorded { node: NodeId::initial("n1"), params: params(64), joined: false });

    let fresh = TempDir::new("new-marker");
    let (_, storage) = open(&fresh.0, "n1", &params(64), &options()).expect("create");
    drop(storage);
    let written = std::fs::read_to_string(fresh.0.join(MARKER_FILE)).expect("reads");
    let without_version = |t: &str| t.lines().filter(|l| !l.starts_with("created_by")).collect::<Vec<_>>().join("\n");
    assert_eq!(without_version(&written), without_version(&old), "a founder's marker is unchanged");
}

#[test]
fn a_joined_node_records_its_generation_and_the_cluster_it_learned() {
    let tmp = TempDir::new("joined");
    let (data, storage) = open_joining(&tmp.0, "n9", 77, &params(16), &options()).expect("create");
    assert!(data.created() && data.joined());
    assert_eq!(data.node(), &NodeId { name: "n9".into(), generation: 77 });
    drop(storage);
    let recorded = recorded(&tmp.0).expect("reads").expect("a marker");
    assert_eq!(
        recorded,
        Recorded { node: NodeId { name: "n9".into(), generation: 77 }, params: params(16), joined: true }
    );
    // Reopened (a restart without --join): the same node, not a new generation.
    let (data, _) = open_joining(&tmp.0, "n9", 78, &params(16), &options()).expect("reopen");
    assert!(!data.created());
    assert_eq!(data.node().generation, 77);
    // A founder's directory cannot be created for a name outside the initial list.
    let other = TempDir::new("not-initial");
    let refused = open(&other.0, "n9", &params(16), &options()).expect_err("not a founder");
    assert!(refused.to_string().contains("start it with --join"), "{refused}");
}
