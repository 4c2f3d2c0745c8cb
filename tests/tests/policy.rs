//! Value policies on real processes: compression (docs/OPERATIONS.md, "Compression") and
//! the cluster's policy table ("Policies").
//!
//! Three durable nodes with three different `--compression` settings (zstd, lz4, none):
//! every value written through any node reads back byte for byte through every node, and
//! again after a node restarts with another setting, since each stored value records how
//! it was encoded. The values a compressing node takes in cross the peer links
//! compressed.
//!
//! The policy table: a rule set through one node applies to the writes every node takes
//! in under its prefix (longest prefix wins), survives restarts, races writes without
//! making any value unreadable, and its record is invisible to clients.
#![cfg(not(madsim))]

use memo_proto::admin::admin_client::AdminClient;
use memo_proto::admin::{PolicyDeleteRequest, PolicyListRequest, PolicyRule, PolicySetRequest, StatusRequest};
use memo_proto::kvs::key_value_store_client::KeyValueStoreClient;
use memo_proto::kvs::{FetchRequest, ListRequest, ListVersionsRequest, UpsertRequest};
use memo_tests::Cluster;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid endpoint")
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(10))
}

fn kv(addr: SocketAddr) -> KeyValueStoreClient<Channel> {
    KeyValueStoreClient::new(endpoint(addr).connect_lazy())
}

/// A JSON document of about `n` × 60 bytes: compresses well.
fn document(seed: usize, n: usize) -> Vec<u8> {
    let items: Vec<String> =
        (0..n).map(|i| format!("{{\"id\":{},\"name\":\"user-{}\",\"active\":true}}", seed * 1000 + i, i % 7)).collect();
    format!("[{}]", items.join(",")).into_bytes()
}

/// Upserts with retries while the cluster starts (UNAVAILABLE), bounded.
async fn upsert(addr: SocketAddr, key: &str, value: &[u8]) {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let request = UpsertRequest { key: key.into(), value: value.to_vec() };
        match kv(addr).upsert(request).await {
            Ok(_) => return,
            Err(s) if Instant::now() < until => {
                eprintln!("upsert {key} via {addr}: {s}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("upsert {key} via {addr}: {s}"),
        }
    }
}

async fn fetch(addr: SocketAddr, key: &str) -> Vec<u8> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match kv(addr).fetch(FetchRequest { key: key.into(), version: 0 }).await {
            Ok(r) => return r.into_inner().value,
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("fetch {key} via {addr}: {s}"),
        }
    }
}

/// The peer bytes the node at `addr` sent so far, waiting for it to start, bounded.
async fn peer_bytes_sent(addr: SocketAddr) -> u64 {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match AdminClient::new(endpoint(addr).connect_lazy()).status(StatusRequest::default()).await {
            Ok(status) => return status.into_inner().stats.expect("stats").peer_bytes_sent,
            Err(s) if Instant::now() < until => {
                eprintln!("status via {addr}: {s}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("status via {addr}: {s}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_written_under_any_compression_read_back_through_every_node() {
    let mut cluster = Cluster::new("policy-compression", 3, 16);
    let settings = ["zstd", "lz4", "none"];
    cluster.node_args = settings.iter().map(|c| vec!["--compression".to_string(), c.to_string()]).collect();
    for i in 0..3 {
        cluster.start(i);
    }
    let mut written = Vec::new();
    for (i, setting) in settings.iter().enumerate() {
        for (j, value) in [document(i, 300), document(i + 10, 1), b"".to_vec(), b"x".to_vec()].into_iter().enumerate() {
            let key = format!("{setting}-{j}");
            upsert(cluster.endpoint(i), &key, &value).await;
            written.push((key, value));
        }
    }
    for i in 0..3 {
        for (key, value) in &written {
            assert_eq!(&fetch(cluster.endpoint(i), key).await, value, "{key} read through n{}", i + 1);
        }
    }

    // The values node 1 (zstd) takes in cross the links compressed: 40 writes of a 17 KiB
    // document send its peers far less than the 40 × 17 KiB × 2 copies they would
    // carry plain (a write reaches the two other replicas, forwarded or not).
    let doc = document(99, 300);
    let before = peer_bytes_sent(cluster.endpoint(0)).await;
    for k in 0..40 {
        upsert(cluster.endpoint(0), &format!("bulk-{k}"), &doc).await;
    }
    let sent = peer_bytes_sent(cluster.endpoint(0)).await - before;
    let plain = 40 * doc.len() as u64 * 2;
    assert!(sent * 4 < plain, "node 1 sent {sent} peer bytes for {plain} plain bytes of values");

    // Node 3 restarts compressing with lz4: what it stored plain, and what the others
    // stored compressed, reads back unchanged; what it takes in now is compressed.
    cluster.kill(2);
    cluster.node_args[2] = vec!["--compression".into(), "lz4".into()];
    cluster.start(2);
    upsert(cluster.endpoint(2), "after-restart", &doc).await;
    written.push(("after-restart".into(), doc.clone()));
    for i in 0..3 {
        for (key, value) in &written {
            assert_eq!(
                &fetch(cluster.endpoint(i), key).await,
                value,
                "{key} read through n{} after the restart",
                i + 1
            );
        }
    }
}

fn admin(addr: SocketAddr) -> AdminClient<Channel> {
    AdminClient::new(endpoint(addr).connect_lazy())
}

/// Sets a rule through `addr`, retrying while the cluster starts; every member must
/// confirm it.
async fn set_rule(addr: SocketAddr, prefix: &str, compression: &str) -> u64 {
    set(addr, PolicyRule { prefix: prefix.into(), compression: compression.into(), encryption: false, versions: 0 })
        .await
}

/// Sets `rule` through `addr`, as [`set_rule`] does.
async fn set(addr: SocketAddr, rule: PolicyRule) -> u64 {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match admin(addr).policy_set(PolicySetRequest { rule: Some(rule.clone()) }).await {
            Ok(answer) => {
                let answer = answer.into_inner();
                assert!(answer.unconfirmed.is_empty(), "unconfirmed: {:?}", answer.unconfirmed);
                return answer.revision;
            }
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("policy set {:?} via {addr}: {s}", rule.prefix),
        }
    }
}

/// Peer bytes `via` sends to store `count` copies of `value` under `prefix`.
async fn peer_bytes_for(via: SocketAddr, prefix: &str, value: &[u8], count: usize) -> u64 {
    let before = peer_bytes_sent(via).await;
    for k in 0..count {
        upsert(via, &format!("{prefix}{k}"), value).await;
    }
    peer_bytes_sent(via).await - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_table_applies_by_prefix_through_every_node_and_survives_restarts() {
    let mut cluster = Cluster::new("policy-table", 3, 16);
    for i in 0..3 {
        cluster.start(i);
    }
    let doc = document(7, 300);
    // A write sends its value to the other replicas (two copies) from a primary, or to
    // the primary (one copy) from another node: at least one copy per write.
    let plain = 20 * doc.len() as u64;

    // Set through node 1: "docs/" compressed, "docs/raw/" (longer) plain.
    assert_eq!(set_rule(cluster.endpoint(0), "docs/", "zstd").await, 1);
    assert_eq!(set_rule(cluster.endpoint(0), "docs/raw/", "none").await, 2);
    for i in 0..3 {
        let sent = peer_bytes_for(cluster.endpoint(i), &format!("docs/n{i}-"), &doc, 20).await;
        assert!(sent * 4 < plain, "n{}: {sent} peer bytes for {plain} plain bytes under docs/", i + 1);
        let sent = peer_bytes_for(cluster.endpoint(i), &format!("docs/raw/n{i}-"), &doc, 20).await;
        assert!(sent > plain, "n{}: {sent} peer bytes for {plain} plain bytes under docs/raw/", i + 1);
        let sent = peer_bytes_for(cluster.endpoint(i), &format!("other/n{i}-"), &doc, 20).await;
        assert!(sent > plain, "n{}: {sent} peer bytes for {plain} plain bytes outside the rules", i + 1);
    }

    // The table's record is memo's own: clients can neither read it nor list it.
    let status =
        kv(cluster.endpoint(1)).fetch(FetchRequest { key: "\u{0}memo/policy".into(), version: 0 }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    let listed = kv(cluster.endpoint(1)).list(ListRequest { max_keys: 1000, ..Default::default() }).await.unwrap();
    let listed = listed.into_inner();
    assert!(listed.items.iter().all(|item| !item.key.starts_with('\u{0}')), "{:?}", listed.items.first());
    assert!(listed.prefixes.is_empty(), "{:?}", listed.prefixes);

    // Every node saved the table in its data dir; after a restart the node reads every
    // value and keeps compressing under the rule.
    for i in 0..3 {
        let saved = std::fs::metadata(cluster.data_dir(i).join("policy.table")).expect("a saved table");
        assert!(saved.len() > 0);
    }
    cluster.kill(2);
    cluster.start(2);
    let sent = peer_bytes_for(cluster.endpoint(2), "docs/after-restart-", &doc, 20).await;
    assert!(sent * 4 < plain, "n3 after its restart: {sent} peer bytes for {plain} plain bytes under docs/");

    // A rule changing while writes run: every value reads back, whatever rule encoded it.
    let writers: Vec<_> = (0..3)
        .map(|i| {
            let (addr, doc) = (cluster.endpoint(i), doc.clone());
            tokio::spawn(async move {
                for k in 0..30 {
                    upsert(addr, &format!("docs/race-n{i}-{k}"), &doc).await;
                }
            })
        })
        .collect();
    for compression in ["lz4", "none", "zstd:1"] {
        set_rule(cluster.endpoint(1), "docs/", compression).await;
    }
    for writer in writers {
        writer.await.expect("a writer");
    }
    for i in 0..3 {
        for k in [0, 15, 29] {
            for j in 0..3 {
                assert_eq!(fetch(cluster.endpoint(i), &format!("docs/race-n{j}-{k}")).await, doc);
            }
        }
        assert_eq!(fetch(cluster.endpoint(i), "docs/n0-3").await, doc);
        assert_eq!(fetch(cluster.endpoint(i), "docs/raw/n1-3").await, doc);
    }

    // Deleting the rule: "docs/" falls back to the node's default (none).
    admin(cluster.endpoint(2)).policy_delete(PolicyDeleteRequest { prefix: "docs/".into() }).await.expect("delete");
    let sent = peer_bytes_for(cluster.endpoint(0), "docs/after-delete-", &doc, 20).await;
    assert!(sent > plain, "{sent} peer bytes for {plain} plain bytes under docs/ after the delete");
    let listed = admin(cluster.endpoint(0)).policy_list(PolicyListRequest {}).await.expect("list").into_inner();
    assert_eq!(listed.revision, 6);
    assert_eq!(listed.node_revision, 6);
    let prefixes: Vec<_> = listed.rules.iter().map(|r| r.prefix.as_str()).collect();
    assert_eq!(prefixes, ["docs/raw/"]);
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("a readable dir") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// The data-dir files of the cluster that hold `needle` somewhere in their bytes.
fn files_holding(cluster: &Cluster, needle: &[u8]) -> Vec<std::path::PathBuf> {
    (0..cluster.len())
        .flat_map(|i| files_under(&cluster.data_dir(i)))
        .filter(|path| std::fs::read(path).expect("a readable file").windows(needle.len()).any(|w| w == needle))
        .collect()
}

fn write_key_file(cluster: &Cluster, name: &str, lines: &[(&str, u8)]) -> String {
    let text: String =
        lines.iter().map(|(key, byte)| format!("{key} {}\n", format!("{byte:02x}").repeat(32))).collect();
    let path = cluster.root.path.join(name);
    std::fs::write(&path, text).expect("the key file is written");
    path.display().to_string()
}

/// Encryption at rest (docs/OPERATIONS.md, "Encryption"): a value written under an
/// encrypted prefix appears in no byte of any file of any data directory, while the same
/// search finds a value written in the clear; every node reads it; a node restarted
/// with a wrong key, or with none, stops with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_values_never_reach_a_disk_in_plaintext_and_a_wrong_key_stops_the_node() {
    let mut cluster = Cluster::new("policy-encryption", 3, 16);
    let keys = write_key_file(&cluster, "keys", &[("k1", 0x11)]);
    cluster.extra_args = vec!["--encryption-key-file".into(), keys.clone()];
    for i in 0..3 {
        cluster.start(i);
    }
    for (prefix, compression) in [("secret/", "none"), ("secret/z/", "zstd")] {
        let rule = PolicyRule { prefix: prefix.into(), compression: compression.into(), encryption: true, versions: 0 };
        set(cluster.endpoint(0), rule).await;
    }
    let listed = admin(cluster.endpoint(1)).policy_list(PolicyListRequest {}).await.expect("list").into_inner();
    assert_eq!(listed.keys.len(), 1, "{:?}", listed.keys);
    assert_eq!(listed.keys[0].name, "k1");

    let secret = b"SECRET-MARKER-7f3a9c SECRET-MARKER-7f3a9c SECRET-MARKER-7f3a9c".to_vec();
    let open = b"OPEN-MARKER-5d21e8 OPEN-MARKER-5d21e8".to_vec();
    let mut compressible = secret.clone();
    compressible.extend(document(3, 50));
    for i in 0..3 {
        upsert(cluster.endpoint(i), &format!("secret/n{i}"), &secret).await;
        upsert(cluster.endpoint(i), &format!("secret/z/n{i}"), &compressible).await;
        upsert(cluster.endpoint(i), &format!("open/n{i}"), &open).await;
    }
    for i in 0..3 {
        for j in 0..3 {
            assert_eq!(fetch(cluster.endpoint(i), &format!("secret/n{j}")).await, secret);
            assert_eq!(fetch(cluster.endpoint(i), &format!("secret/z/n{j}")).await, compressible);
        }
    }
    // Stopped abruptly: whatever is in the logs and the databases is what a thief gets.
    for i in 0..3 {
        cluster.kill(i);
    }
    let needle = &secret[..21];
    assert_eq!(files_holding(&cluster, needle), Vec::<std::path::PathBuf>::new(), "plaintext on disk");
    assert!(!files_holding(&cluster, &open[..18]).is_empty(), "the search finds a value stored in the clear");

    // Node 3 with the same key name and other bytes: it refuses to start, saying why.
    cluster.node_args = vec![vec![], vec![], vec!["--encryption-key-file".into(), String::new()]];
    cluster.extra_args.clear();
    cluster.node_args[0] = vec!["--encryption-key-file".into(), keys.clone()];
    cluster.node_args[1] = vec!["--encryption-key-file".into(), keys.clone()];
    let wrong = write_key_file(&cluster, "wrong-keys", &[("k1", 0x22)]);
    cluster.node_args[2][1] = wrong.clone();
    cluster.start(2);
    assert!(cluster.wait_exit(2, Duration::from_secs(20)), "a node with a wrong key kept running");
    let log = cluster.log_tail(2, 5);
    assert!(log.contains("wrong key file"), "{log}");
    // And without a key file at all.
    cluster.node_args[2].clear();
    cluster.start(2);
    assert!(cluster.wait_exit(2, Duration::from_secs(20)), "a node without its key kept running");
    let log = cluster.log_tail(2, 5);
    assert!(log.contains("no --encryption-key-file"), "{log}");

    // Its saved table gone, node 3 starts with the wrong key: the other nodes refuse its
    // peer batches, and its links say why.
    cluster.start(0);
    cluster.start(1);
    std::fs::remove_file(cluster.data_dir(2).join("policy.table")).expect("the saved table is removed");
    cluster.node_args[2] = vec!["--encryption-key-file".into(), wrong];
    cluster.start(2);
    let until = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let status = admin(cluster.endpoint(2)).status(StatusRequest::default()).await;
        let errors: Vec<String> = (status.into_iter())
            .flat_map(|s| s.into_inner().nodes)
            .map(|n| n.link_error)
            .filter(|e| e.contains("one of the two key files is wrong"))
            .collect();
        if !errors.is_empty() || Instant::now() > until {
            break errors;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!refused.is_empty(), "no link of the node with the wrong key was refused");
    cluster.kill(2);

    // With the right key (rotated: a newer key appended), every value reads back, and
    // new writes through node 3 use the new key, which nodes without it cannot read.
    cluster.node_args[2] =
        vec!["--encryption-key-file".into(), write_key_file(&cluster, "rotated", &[("k1", 0x11), ("k2", 0x33)])];
    cluster.start(2);
    for j in 0..3 {
        assert_eq!(fetch(cluster.endpoint(2), &format!("secret/n{j}")).await, secret);
    }
    upsert(cluster.endpoint(2), "secret/rotated", &secret).await;
    assert_eq!(fetch(cluster.endpoint(2), "secret/rotated").await, secret);
    let status =
        kv(cluster.endpoint(0)).fetch(FetchRequest { key: "secret/rotated".into(), version: 0 }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Internal, "{status}");
    assert!(status.message().contains("\"k2\""), "{status}");
}

/// The versions `addr` lists for `key`: `(number, size, deleted)`, oldest first.
async fn versions(addr: SocketAddr, key: &str) -> Vec<(u64, u64, bool)> {
    let reply = kv(addr).list_versions(ListVersionsRequest { key: key.into() }).await;
    let reply = reply.unwrap_or_else(|s| panic!("list versions of {key} via {addr}: {s}")).into_inner();
    reply.versions.iter().map(|v| (v.number, v.size, v.deleted)).collect()
}

async fn fetch_version(addr: SocketAddr, key: &str, version: u64) -> Result<Vec<u8>, tonic::Status> {
    kv(addr).fetch(FetchRequest { key: key.into(), version }).await.map(|r| r.into_inner().value)
}

/// Versioning on real processes (V1–V4): a key under a `--versions 3` rule keeps its last
/// three versions, numbered alike on every node, written through any of them, compressed
/// and encrypted as its rule says; a Delete is a version and leaves the ones before it
/// readable, through a restart and past the tombstone collection delay; `memo kv
/// versions` prints them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_versioned_key_keeps_its_last_versions_alike_on_every_node_through_a_delete() {
    let mut cluster = Cluster::new("policy-versions", 3, 16);
    for i in 0..3 {
        cluster.start(i);
    }
    let rule = PolicyRule { prefix: "doc/".into(), compression: "zstd".into(), encryption: false, versions: 3 };
    set(cluster.endpoint(0), rule).await;
    let listed = admin(cluster.endpoint(1)).policy_list(PolicyListRequest {}).await.expect("list").into_inner();
    assert_eq!(listed.rules.iter().map(|r| r.versions).collect::<Vec<_>>(), [3]);

    // Five writes, each through another node: the last three are kept, in write order.
    let values: Vec<Vec<u8>> = (0..5).map(|i| document(i, 20 + i)).collect();
    for (i, v) in values.iter().enumerate() {
        upsert(cluster.endpoint(i % 3), "doc/a", v).await;
    }
    let expected: Vec<(u64, u64, bool)> = (3..=5).map(|n| (n, values[n as usize - 1].len() as u64, false)).collect();
    for i in 0..3 {
        assert_eq!(versions(cluster.endpoint(i), "doc/a").await, expected, "via n{}", i + 1);
        for n in 3..=5u64 {
            assert_eq!(fetch_version(cluster.endpoint(i), "doc/a", n).await.expect("kept"), values[n as usize - 1]);
        }
        let aged = fetch_version(cluster.endpoint(i), "doc/a", 2).await.unwrap_err();
        assert_eq!(aged.code(), tonic::Code::NotFound, "{aged}");
        assert!(aged.message().contains("not kept"), "{aged}");
    }
    assert_eq!(fetch(cluster.endpoint(2), "doc/a").await, values[4], "a plain Fetch reads the current value");

    // A Delete is version 6; versions 4 and 5 stay readable, through a restart and past
    // the collection delay.
    kv(cluster.endpoint(1)).delete(memo_proto::kvs::DeleteRequest { key: "doc/a".into() }).await.expect("delete");
    cluster.kill(0);
    cluster.start(0);
    tokio::time::sleep(Duration::from_secs(12)).await; // past the default 10 s GC delay
    let after: Vec<(u64, u64, bool)> = vec![expected[1], expected[2], (6, 0, true)];
    for i in 0..3 {
        let until = Instant::now() + Duration::from_secs(30);
        let seen = loop {
            match kv(cluster.endpoint(i)).list_versions(ListVersionsRequest { key: "doc/a".into() }).await {
                Ok(r) => {
                    break r.into_inner().versions.iter().map(|v| (v.number, v.size, v.deleted)).collect::<Vec<_>>();
                }
                Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(s) => panic!("list versions via n{}: {s}", i + 1),
            }
        };
        assert_eq!(seen, after, "via n{}", i + 1);
        assert_eq!(fetch_version(cluster.endpoint(i), "doc/a", 5).await.expect("kept"), values[4]);
        let deleted = fetch_version(cluster.endpoint(i), "doc/a", 6).await.unwrap_err();
        assert!(deleted.message().contains("is a Delete"), "{deleted}");
        let current = kv(cluster.endpoint(i)).fetch(FetchRequest { key: "doc/a".into(), version: 0 }).await;
        assert_eq!(current.unwrap_err().code(), tonic::Code::NotFound);
    }

    // A key outside the rule lists its value as version 0; an absent key is NOT_FOUND.
    upsert(cluster.endpoint(0), "plain", b"p").await;
    assert_eq!(versions(cluster.endpoint(2), "plain").await, [(0, 1, false)]);
    let absent = kv(cluster.endpoint(0)).list_versions(ListVersionsRequest { key: "nothing".into() }).await;
    assert_eq!(absent.unwrap_err().code(), tonic::Code::NotFound);

    // The CLI prints the same list.
    let out = std::process::Command::new(memo_tests::memo_bin())
        .args(["kv", "versions", "doc/a", "--output", "json", "--endpoint", &cluster.endpoint(1).to_string()])
        .output()
        .expect("memo kv versions runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    let numbers: Vec<u64> = printed.iter().map(|v| v["number"].as_u64().expect("a number")).collect();
    assert_eq!(numbers, [4, 5, 6]);
    assert!(printed.iter().all(|v| v["time_ms"].as_u64().is_some_and(|t| t > 1_700_000_000_000)), "{printed:?}");
}
