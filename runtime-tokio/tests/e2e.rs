//! End-to-end tests on loopback: an in-process 3-node cluster on ephemeral ports
//! exercised through the public gRPC API, the `memo` binary against `memo dev`, and
//! hostile bytes on the shared port. Every test is bounded by [`TEST_TIMEOUT`].
#![cfg(not(madsim))]

mod common;

use common::ChildGuard;

use memo_node::{DevCluster, DevOptions, spawn_dev_cluster};
use memo_proto::kvs::key_value_store_client::KeyValueStoreClient;
use memo_proto::kvs::{
    DeleteRequest, FetchRequest, InsertRequest, ListRequest, ListResponse, UpdateRequest, UpsertRequest,
};
use memo_proto::peer::Batch;
use memo_proto::peer::peer_client::PeerClient;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::transport::Channel;

/// Upper bound of any one test.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound of one `memo kv` invocation.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `memo dev` may take to print its endpoints.
const DEV_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `memo dev` may take to exit after SIGINT.
const DEV_STOP_TIMEOUT: Duration = Duration::from_secs(10);

type Client = KeyValueStoreClient<Channel>;

async fn cluster() -> DevCluster {
    spawn_dev_cluster(DevOptions::new(3, 0, 7)).await.expect("the dev cluster starts")
}

async fn client(addr: SocketAddr) -> Client {
    KeyValueStoreClient::connect(format!("http://{addr}")).await.expect("the node accepts connections")
}

async fn clients(cluster: &DevCluster) -> Vec<Client> {
    let mut all = Vec::new();
    for node in cluster.nodes() {
        all.push(client(node.local_addr()).await);
    }
    all
}

async fn upsert(client: &mut Client, key: &str, value: &str) {
    let request = UpsertRequest { key: key.into(), value: value.into() };
    client.upsert(request).await.expect("upsert succeeds");
}

async fn fetch(client: &mut Client, key: &str) -> Result<Vec<u8>, Code> {
    let request = FetchRequest { key: key.into(), version: 0 };
    match client.fetch(request).await {
        Ok(response) => Ok(response.into_inner().value),
        Err(status) => Err(status.code()),
    }
}

async fn within<F: std::future::Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, test).await.expect("the test finished in time")
}

#[tokio::test]
async fn all_six_rpcs_answer_with_the_documented_status_codes() {
    within(async {
        let cluster = cluster().await;
        let mut c = clients(&cluster).await;
        let insert = |key: &str, value: &str| InsertRequest { key: key.into(), value: value.into() };

        // Empty key: INVALID_ARGUMENT on every keyed RPC.
        let empty = c[0].insert(insert("", "v")).await.unwrap_err();
        assert_eq!(empty.code(), Code::InvalidArgument);
        assert_eq!(fetch(&mut c[0], "").await, Err(Code::InvalidArgument));

        // Insert, then Insert again: ALREADY_EXISTS, from any node.
        c[0].insert(insert("k", "v1")).await.expect("first insert");
        let again = c[1].insert(insert("k", "v2")).await.unwrap_err();
        assert_eq!(again.code(), Code::AlreadyExists);

        // Every node reads the value written through another.
        for client in &mut c {
            assert_eq!(fetch(client, "k").await, Ok(b"v1".to_vec()));
        }

        // Update present, Update absent.
        let update = |key: &str| UpdateRequest { key: key.into(), value: b"v3".to_vec() };
        c[2].update(update("k")).await.expect("update of a present key");
        assert_eq!(fetch(&mut c[0], "k").await, Ok(b"v3".to_vec()));
        let absent = c[2].update(update("nope")).await.unwrap_err();
        assert_eq!(absent.code(), Code::NotFound);

        // Upsert creates and replaces; an empty value is a value.
        upsert(&mut c[1], "u", "").await;
        assert_eq!(fetch(&mut c[2], "u").await, Ok(Vec::new()));
        upsert(&mut c[1], "u", "x").await;
        assert_eq!(fetch(&mut c[2], "u").await, Ok(b"x".to_vec()));

        // Fetch missing: NOT_FOUND. Delete present, then absent.
        assert_eq!(fetch(&mut c[0], "missing").await, Err(Code::NotFound));
        let delete = |key: &str| DeleteRequest { key: key.into() };
        c[0].delete(delete("k")).await.expect("delete of a present key");
        assert_eq!(fetch(&mut c[1], "k").await, Err(Code::NotFound));
        let gone = c[1].delete(delete("k")).await.unwrap_err();
        assert_eq!(gone.code(), Code::NotFound);

        // A deleted key can be inserted again.
        c[2].insert(insert("k", "v4")).await.expect("insert after delete");

        // List answers too (its semantics have their own test).
        let page = list(&mut c[0], "", "", "", 0).await;
        assert_eq!(keys(&page), ["k", "u"]);

        cluster.shutdown().await.expect("graceful shutdown");
    })
    .await;
}

async fn list(client: &mut Client, prefix: &str, marker: &str, delimiter: &str, max_keys: u64) -> ListResponse {
    let request = ListRequest { prefix: prefix.into(), marker: marker.into(), delimiter: delimiter.into(), max_keys };
    client.list(request).await.expect("list succeeds").into_inner()
}

fn keys(page: &ListResponse) -> Vec<&str> {
    page.items.iter().map(|item| item.key.as_str()).collect()
}

#[tokio::test]
async fn list_follows_s3_semantics() {
    within(async {
        let cluster = cluster().await;
        let mut c = clients(&cluster).await;
        for key in ["a/1", "a/2", "a/b/3", "b", "c", "d"] {
            upsert(&mut c[0], key, "v").await;
        }
        c[0].delete(DeleteRequest { key: "d".into() }).await.expect("delete");

        // Everything, in byte order, deleted keys left out.
        let all = list(&mut c[1], "", "", "", 0).await;
        assert_eq!(keys(&all), ["a/1", "a/2", "a/b/3", "b", "c"]);
        assert!(all.prefixes.is_empty() && !all.truncated);

        // Prefix filter.
        let a = list(&mut c[2], "a/", "", "", 0).await;
        assert_eq!(keys(&a), ["a/1", "a/2", "a/b/3"]);

        // Delimiter rolls keys up into prefixes, which leave `items`.
        let top = list(&mut c[0], "", "", "/", 0).await;
        assert_eq!(keys(&top), ["b", "c"]);
        assert_eq!(top.prefixes, ["a/"]);
        let nested = list(&mut c[0], "a/", "", "/", 0).await;
        assert_eq!(keys(&nested), ["a/1", "a/2"]);
        assert_eq!(nested.prefixes, ["a/b/"]);

        // Pages: max_keys bounds the page, truncated says more follow, the marker is
        // exclusive and need not exist.
        let first = list(&mut c[1], "", "", "", 2).await;
        assert_eq!(keys(&first), ["a/1", "a/2"]);
        assert!(first.truncated);
        let second = list(&mut c[1], "", "a/2", "", 2).await;
        assert_eq!(keys(&second), ["a/b/3", "b"]);
        assert!(second.truncated);
        let last = list(&mut c[1], "", "b", "", 2).await;
        assert_eq!(keys(&last), ["c"]);
        assert!(!last.truncated);
        let between = list(&mut c[2], "", "a/15", "", 0).await;
        assert_eq!(keys(&between), ["a/2", "a/b/3", "b", "c"]);

        // A prefix counts once towards max_keys, and a marker equal to it skips it.
        let rolled = list(&mut c[2], "", "", "/", 1).await;
        assert!(keys(&rolled).is_empty());
        assert_eq!(rolled.prefixes, ["a/"]);
        assert!(rolled.truncated);
        let after = list(&mut c[2], "", "a/", "/", 0).await;
        assert_eq!(keys(&after), ["b", "c"]);
        assert!(after.prefixes.is_empty());

        cluster.shutdown().await.expect("graceful shutdown");
    })
    .await;
}

/// Writes `bytes` on a fresh TCP connection and reads whatever comes back, bounded.
fn send_junk(addr: SocketAddr, bytes: &[u8]) {
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(300)));
    let _ = stream.set_write_timeout(Some(Duration::from_millis(300)));
    let _ = stream.write_all(bytes);
    let mut answer = [0u8; 1024];
    let _ = stream.read(&mut answer);
}

#[tokio::test]
async fn junk_on_the_shared_port_does_not_stop_the_node() {
    within(async {
        let cluster = cluster().await;
        let node = &cluster.nodes()[0];
        let addr = node.local_addr();
        let mut junk: Vec<Vec<u8>> = vec![
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect(),
        ];
        // A valid HTTP/2 preface followed by garbage frames.
        let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        h2.extend_from_slice(&[0xff; 64]);
        junk.push(h2);
        for bytes in junk {
            tokio::task::spawn_blocking(move || send_junk(addr, &bytes)).await.expect("the junk sender finishes");
        }

        // Well-formed gRPC carrying garbage: refused or dropped, never a crash.
        let mut peer =
            PeerClient::connect(format!("http://{addr}")).await.expect("the peer service accepts connections");
        let batch = |cluster_id: Vec<u8>, messages: Vec<Vec<u8>>| Batch {
            cluster_id,
            from_name: "intruder".into(),
            from_generation: 1,
            sequence: 1,
            messages,
            keys: Vec::new(),
        };
        let cluster_id = node.cluster().0.to_vec();
        let garbage = vec![vec![], vec![0xff; 3], b"not postcard".to_vec()];
        let ack = peer.send(batch(cluster_id.clone(), garbage.clone())).await;
        assert_eq!(ack.expect("garbage messages are dropped").into_inner().sequence, 1);
        let foreign = peer.send(batch(vec![1; 32], garbage)).await.unwrap_err();
        assert_eq!(foreign.code(), Code::FailedPrecondition);
        let crowd = vec![vec![0u8]; memo_node::peer::PEER_BATCH_MESSAGES_MAX + 1];
        let too_many = peer.send(batch(cluster_id, crowd)).await.unwrap_err();
        assert_eq!(too_many.code(), Code::InvalidArgument);

        // The node still serves, and counted the bad messages.
        let mut c = client(addr).await;
        upsert(&mut c, "still", "alive").await;
        assert_eq!(fetch(&mut c, "still").await, Ok(b"alive".to_vec()));
        let stats = node.stats().await.expect("the node is running");
        assert!(stats.peer_errors >= 3, "{stats:?}");

        cluster.shutdown().await.expect("graceful shutdown");
    })
    .await;
}

#[tokio::test]
async fn shutdown_refuses_new_calls_and_finishes_quickly() {
    within(async {
        let cluster = cluster().await;
        let mut c = clients(&cluster).await;
        upsert(&mut c[0], "k", "v").await;
        let started = Instant::now();
        cluster.shutdown().await.expect("graceful shutdown");
        assert!(started.elapsed() < memo_node::SHUTDOWN_GRACE, "{:?}", started.elapsed());
        let after = c[0].fetch(FetchRequest { key: "k".into(), version: 0 }).await;
        assert!(after.is_err(), "a stopped node does not answer");
    })
    .await;
}

// ----- the `memo` binary -----

/// Runs `memo ARGS` to completion (bounded); returns (success, stdout, stderr).
fn memo(args: &[&str]) -> (bool, String, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_memo"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("memo starts");
    let mut guard = ChildGuard(child);
    let status = common::wait_exit(&mut guard.0, COMMAND_TIMEOUT).expect("memo finishes in time");
    let mut stdout = String::new();
    let mut stderr = String::new();
    let out = guard.0.stdout.as_mut().expect("piped stdout");
    out.read_to_string(&mut stdout).expect("stdout reads");
    let err = guard.0.stderr.as_mut().expect("piped stderr");
    err.read_to_string(&mut stderr).expect("stderr reads");
    (status.success(), stdout, stderr)
}

/// Starts `memo dev` on free ports and reads the node endpoints from its banner.
fn memo_dev() -> (ChildGuard, Vec<String>) {
    let (guard, endpoints) = common::memo_dev::<_, &str>([], Stdio::null(), DEV_START_TIMEOUT);
    (guard, endpoints.iter().map(ToString::to_string).collect())
}

#[test]
fn memo_kv_commands_work_against_memo_dev() {
    let started = Instant::now();
    let (mut dev, endpoints) = memo_dev();
    let at = |i: usize| ["--endpoint", endpoints[i].as_str()];
    let kv = |i: usize, args: &[&str]| {
        let mut all = vec!["kv"];
        all.extend_from_slice(args);
        all.extend_from_slice(&at(i));
        memo(&all)
    };

    assert_eq!(kv(0, &["insert", "hello", "world"]), (true, "OK\n".into(), String::new()));
    assert_eq!(kv(1, &["get", "hello"]).1, "world\n");
    let (ok, _, err) = kv(2, &["insert", "hello", "again"]);
    assert!(!ok);
    assert_eq!(err, "error: ALREADY_EXISTS: key already exists\n");
    assert!(kv(2, &["update", "hello", "there"]).0);
    assert!(kv(0, &["upsert", "dir/a", "1"]).0);
    assert!(kv(0, &["upsert", "dir/b", "2"]).0);
    assert_eq!(kv(1, &["list"]).1, "dir/a\ndir/b\nhello\n");
    assert_eq!(kv(1, &["list", "--delimiter", "/"]).1, "dir/\nhello\n");
    let (ok, out, err) = kv(1, &["list", "--max-keys", "1"]);
    assert!(ok);
    assert_eq!(out, "dir/a\n");
    assert!(err.contains("truncated"), "{err}");
    assert_eq!(kv(2, &["list", "--prefix", "dir/", "--marker", "dir/a"]).1, "dir/b\n");
    assert!(kv(1, &["delete", "hello"]).0);
    let (ok, out, err) = kv(0, &["get", "hello"]);
    assert!(!ok && out.is_empty());
    assert_eq!(err, "error: NOT_FOUND: key not found\n");
    let (ok, _, err) = kv(0, &["get", ""]);
    assert!(!ok);
    assert!(err.starts_with("error: INVALID_ARGUMENT: "), "{err}");

    // SIGINT stops it gracefully, with exit code 0.
    let pid = dev.0.id().to_string();
    let signalled = Command::new("kill").args(["-INT", &pid]).status();
    assert!(signalled.expect("kill runs").success());
    let status = common::wait_exit(&mut dev.0, DEV_STOP_TIMEOUT).expect("memo dev exits after SIGINT");
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < TEST_TIMEOUT);
}

#[test]
fn memo_reports_an_unreachable_endpoint_clearly() {
    // Port 1 on loopback: nothing listens there.
    let (ok, _, err) = memo(&["kv", "get", "k", "--endpoint", "127.0.0.1:1"]);
    assert!(!ok);
    assert!(err.starts_with("error: cannot connect to 127.0.0.1:1"), "{err}");
}

#[test]
fn every_memo_command_has_help() {
    for args in [
        &["--help"][..],
        &["dev", "--help"],
        &["node", "--help"],
        &["node", "run", "--help"],
        &["kv", "--help"],
        &["kv", "list", "--help"],
        &["kv", "upsert", "--help"],
    ] {
        let (ok, out, _) = memo(args);
        assert!(ok && out.contains("Usage:"), "{args:?}: {out}");
    }
}

// ----- peer links -----

#[tokio::test]
async fn the_unary_peer_transport_works_too() {
    within(async {
        let mut options = DevOptions::new(3, 0, 11);
        options.peer_transport = memo_node::PeerTransport::Unary;
        let cluster = spawn_dev_cluster(options).await.expect("the cluster starts");
        let mut c = clients(&cluster).await;
        upsert(&mut c[0], "k", "v").await;
        assert_eq!(fetch(&mut c[2], "k").await, Ok(b"v".to_vec()));
        cluster.shutdown().await.expect("graceful shutdown");
    })
    .await;
}

#[tokio::test]
async fn a_quorum_serves_while_a_member_is_down_and_the_member_joins_later() {
    use memo_engine::{ClusterParams, Config, MemoryStorage, NodeId};
    use memo_node::{Listener, NodeOptions, spawn_node_on};
    use std::sync::Arc;

    within(async {
        let ids: Vec<NodeId> = (1..=3).map(|i| NodeId::initial(format!("n{i}"))).collect();
        let mut listeners = Vec::new();
        for _ in &ids {
            let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
            listeners.push(Listener::bind(any_port).await.expect("bind"));
        }
        let peers: std::collections::BTreeMap<_, _> =
            (ids.iter().cloned()).zip(listeners.iter().map(Listener::local_addr)).collect();
        let params = ClusterParams { partitions: 16, replication: 3, initial_nodes: ids.clone(), token: "late".into() };
        let options = |i: usize| {
            let config = Config::new(ids[i].clone(), params.clone());
            NodeOptions::new(config, peers[&ids[i]], peers.clone(), i as u64)
        };
        let mut nodes = Vec::new();
        let mut listeners = listeners.into_iter();
        // Start n1 and n2; n3's port stays bound but nothing serves it yet.
        for i in 0..2 {
            let listener = listeners.next().expect("listener");
            let storage = Arc::new(MemoryStorage::new());
            nodes.push(spawn_node_on(listener, options(i), storage).await.expect("start"));
        }
        let late = listeners.next().expect("listener");
        let mut c1 = client(nodes[0].local_addr()).await;
        upsert(&mut c1, "k", "v").await;
        assert_eq!(fetch(&mut c1, "k").await, Ok(b"v".to_vec()));

        // n3 starts: the others' links reconnect, and n3 reads what was written.
        let late_addr = late.local_addr();
        let storage = Arc::new(MemoryStorage::new());
        nodes.push(spawn_node_on(late, options(2), storage).await.expect("start"));
        let mut c3 = client(late_addr).await;
        assert_eq!(fetch(&mut c3, "k").await, Ok(b"v".to_vec()));
        upsert(&mut c3, "k", "w").await;
        assert_eq!(fetch(&mut c1, "k").await, Ok(b"w".to_vec()));

        for node in nodes {
            node.shutdown().await.expect("graceful shutdown");
        }
    })
    .await;
}
