//! A data directory written by memo before stored values recorded their encoding (commit
//! `116934a`, the last one before issue 12's encoding byte) opens with this build, and
//! every value reads back byte for byte (issue 12: "values written before this change,
//! with no encoding recorded, read back unchanged").
//!
//! The fixture is node `n1` of a 3-node cluster (8 partitions, token
//! `old-format-fixture`) that the old build's `memo node run` created; its clients
//! upserted `key-0` .. `key-19`, `empty` (an empty value), and inserted then deleted
//! `deleted`; then the nodes stopped on SIGINT. Its `data.redb` and `data.wal` are
//! stored zstd-compressed (3 KiB instead of 1.1 MiB).
#![cfg(not(madsim))]

use memo_engine::placement::partition_of;
use memo_engine::storage::{decode_register, register_key};
use memo_engine::{ClusterParams, Encoding, NodeId, Storage};
use memo_node::RedbOptions;
use memo_node::policy::table::Policies;
use std::path::{Path, PathBuf};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/datadir-116934a-n1");

/// The fixture, unpacked into a fresh directory.
fn unpack() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memo-old-data-dir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let fixture = Path::new(FIXTURE);
    std::fs::copy(fixture.join("memo.toml"), dir.join("memo.toml")).expect("memo.toml copied");
    for file in ["data.redb", "data.wal"] {
        let packed = std::fs::read(fixture.join(format!("{file}.zst"))).expect("the packed fixture");
        let bytes = zstd::decode_all(packed.as_slice()).expect("the fixture unpacks");
        std::fs::write(dir.join(file), bytes).expect("the fixture is written");
    }
    dir
}

#[test]
fn a_data_directory_written_before_value_encodings_reads_back_unchanged() {
    let dir = unpack();
    let params = ClusterParams {
        partitions: 8,
        replication: 3,
        initial_nodes: ["n1", "n2", "n3"].map(NodeId::initial).to_vec(),
        token: "old-format-fixture".into(),
    };
    let (_, storage) = memo_node::datadir::open(&dir, "n1", &params, &RedbOptions::default()).expect("it opens");
    let stored = |key: &str| {
        let silo_key = register_key(partition_of(key.as_bytes(), params.partitions), key.as_bytes());
        let bytes = storage.get(&silo_key).expect("the silo reads").unwrap_or_else(|| panic!("no register for {key}"));
        let register = decode_register(&bytes).expect("the register decodes");
        register.accepted.and_then(|a| a.state).and_then(|s| s.stored())
    };
    // Decoded the way Fetch decodes, with no policy and no keys.
    let policies = Policies::in_memory(Default::default());
    let mut expected: Vec<(String, Vec<u8>)> = (0..20)
        // The generating shell printed the phrase once for key-0 as well.
        .map(|k| (format!("key-{k}"), format!("value {k}: {}", "repeated text ".repeat(k.max(1))).into_bytes()))
        .collect();
    expected.push(("empty".into(), Vec::new()));
    for (key, value) in expected {
        let stored = stored(&key).unwrap_or_else(|| panic!("{key} has no value"));
        assert_eq!(stored.encoding, Encoding::PLAIN, "{key}");
        assert_eq!(policies.decode(&key, stored, 1 << 20).expect("it decodes"), value, "{key}");
    }
    assert_eq!(stored("deleted"), None, "a deleted key stays deleted");
    drop(storage);
    std::fs::remove_dir_all(&dir).expect("cleaned up");
}
