//! Value policies on real processes: compression (docs/OPERATIONS.md, "Compression").
//!
//! Three durable nodes with three different `--compression` settings (zstd, lz4, none):
//! every value written through any node reads back byte for byte through every node, and
//! again after a node restarts with another setting, since each stored value records how
//! it was encoded. The values a compressing node takes in cross the peer links
//! compressed.
#![cfg(not(madsim))]

use memo_proto::admin::StatusRequest;
use memo_proto::admin::admin_client::AdminClient;
use memo_proto::kvs::key_value_store_client::KeyValueStoreClient;
use memo_proto::kvs::{FetchRequest, UpsertRequest};
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
        match kv(addr).fetch(FetchRequest { key: key.into() }).await {
            Ok(r) => return r.into_inner().value,
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("fetch {key} via {addr}: {s}"),
        }
    }
}

async fn peer_bytes_sent(addr: SocketAddr) -> u64 {
    let status =
        AdminClient::new(endpoint(addr).connect_lazy()).status(StatusRequest::default()).await.expect("status");
    status.into_inner().stats.expect("stats").peer_bytes_sent
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
