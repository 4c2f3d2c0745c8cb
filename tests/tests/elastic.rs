//! Elasticity on real processes (issue 10): durable `memo node run` processes on loopback
//! grow from 3 to 5 nodes and shrink to 3 again while clients read and write.
//!
//! 1. Three founders; 5,000 keys written.
//! 2. Two nodes join through node 1 (`--join`). Once the moves are done, every node holds
//!    between half and one and a half of its fair share `k·P/n` of partition replicas.
//! 3. One node leaves gracefully (`Admin/Leave`) and exits by itself; another is killed
//!    with SIGKILL and removed (`Admin/Remove`, retried until the others see it down).
//! 4. Every key reads back from every remaining node with its last acknowledged value
//!    (or, for a key whose last write's outcome was unknown, with that write's value).
//!
//! Concurrent clients write a slice of the keys throughout, each key by one client,
//! sequentially, so "the last acknowledged value" is well defined.
#![cfg(not(madsim))]

use memo_proto::admin::admin_client::AdminClient;
use memo_proto::admin::{LeaveRequest, MembersRequest, MembersResponse, RemoveRequest};
use memo_proto::kvs::key_value_store_client::KeyValueStoreClient;
use memo_proto::kvs::{FetchRequest, UpsertRequest};
use memo_tests::Cluster;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

const PARTITIONS: u32 = 64;
const REPLICATION: u32 = 3;
const KEYS: usize = 5000;
/// Clients writing during the moves, and the keys each one owns.
const CLIENTS: usize = 4;
const KEYS_PER_CLIENT: usize = 50;
/// How long the cluster may take to settle after a change.
const SETTLE: Duration = Duration::from_secs(120);

fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}")).expect("a valid endpoint").connect_timeout(Duration::from_secs(1))
}

fn kv(addr: SocketAddr) -> KeyValueStoreClient<Channel> {
    KeyValueStoreClient::new(endpoint(addr).timeout(Duration::from_secs(10)).connect_lazy())
}

fn admin(addr: SocketAddr) -> AdminClient<Channel> {
    AdminClient::new(endpoint(addr).timeout(Duration::from_secs(10)).connect_lazy())
}

fn key(i: usize) -> String {
    format!("key-{i:05}")
}

async fn upsert(addr: SocketAddr, key: &str, value: &str) -> Result<(), tonic::Status> {
    let request = UpsertRequest { key: key.into(), value: value.as_bytes().to_vec() };
    kv(addr).upsert(request).await.map(|_| ())
}

async fn fetch(addr: SocketAddr, key: &str) -> Result<Vec<u8>, tonic::Status> {
    kv(addr).fetch(FetchRequest { key: key.into(), version: 0 }).await.map(|r| r.into_inner().value)
}

/// Waits until node `i` answers a read (any answer from the store itself).
async fn wait_serving(cluster: &Cluster, i: usize) {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match fetch(cluster.endpoint(i), "probe").await {
            Ok(_) => return,
            Err(s) if s.code() == tonic::Code::NotFound => return,
            Err(_) if Instant::now() < until => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(s) => panic!("node {i} does not serve: {s}"),
        }
    }
}

async fn members(addr: SocketAddr) -> Option<MembersResponse> {
    admin(addr).members(MembersRequest {}).await.ok().map(|r| r.into_inner())
}

/// Waits until every node of `nodes` sees exactly those members alive, each holding
/// between `low` and `high` replicas, no move in flight or queued, and the replica
/// counts summing to `k·P`. Returns the counts.
async fn settle(cluster: &Cluster, nodes: &[usize], low: f64, high: f64) -> BTreeMap<String, u32> {
    let until = Instant::now() + SETTLE;
    let names: Vec<String> = nodes.iter().map(|&i| Cluster::name(i)).collect();
    let mut last = String::new();
    while Instant::now() < until {
        let mut views = Vec::new();
        for &i in nodes {
            views.push(members(cluster.endpoint(i)).await);
        }
        let settled = views.iter().all(|view| {
            let Some(view) = view else { return false };
            let moves = view.moves.unwrap_or_default();
            let alive: Vec<&str> =
                view.members.iter().filter(|m| m.state == "alive").map(|m| m.name.as_str()).collect();
            moves.in_flight == 0
                && moves.queued == 0
                && alive.len() == names.len()
                && names.iter().all(|n| alive.contains(&n.as_str()))
        });
        if let Some(Some(view)) = views.first() {
            let counts: BTreeMap<String, u32> = (view.members.iter())
                .filter(|m| names.contains(&m.name))
                .map(|m| (m.name.clone(), m.partitions))
                .collect();
            let total: u32 = view.members.iter().map(|m| m.partitions).sum();
            last = format!("{counts:?}, {total} replicas in all; {views:?}");
            let fair = f64::from(REPLICATION * PARTITIONS) / nodes.len() as f64;
            let balanced = counts.len() == names.len()
                && counts.values().all(|&c| f64::from(c) >= low * fair && f64::from(c) <= high * fair);
            if settled && balanced && total == REPLICATION * PARTITIONS {
                return counts;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the cluster did not settle on {names:?}: {last}");
}

/// Per key: the last acknowledged value, and the values written since whose outcome is
/// unknown.
#[derive(Default, Clone)]
struct Expect {
    acked: Option<String>,
    in_doubt: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_join_leave_and_are_removed_while_every_acknowledged_write_survives() {
    let mut cluster = Cluster::elastic("elastic", 3, 5, PARTITIONS);
    cluster.extra_args = ["--rebalance-delay", "1s", "--moves-max", "8"].map(String::from).to_vec();
    for i in 0..3 {
        cluster.start(i);
    }
    for i in 0..3 {
        wait_serving(&cluster, i).await;
    }

    // 1. The initial data, written by 16 tasks.
    let expect: Arc<Mutex<Vec<Expect>>> = Arc::new(Mutex::new(vec![Expect::default(); KEYS]));
    let endpoints: Vec<SocketAddr> = (0..3).map(|i| cluster.endpoint(i)).collect();
    let mut writers = Vec::new();
    for t in 0..16 {
        let (expect, endpoints) = (expect.clone(), endpoints.clone());
        writers.push(tokio::spawn(async move {
            for i in (t..KEYS).step_by(16) {
                let value = format!("initial-{i}");
                for attempt in 0.. {
                    match upsert(endpoints[(i + attempt) % endpoints.len()], &key(i), &value).await {
                        Ok(()) => break,
                        Err(e) => assert!(attempt < 20, "{}: {e}", key(i)),
                    }
                }
                expect.lock().unwrap()[i].acked = Some(value);
            }
        }));
    }
    for w in writers {
        w.await.expect("a writer finished");
    }

    // Concurrent clients for the rest of the test: client c owns keys c*50..(c+1)*50 and
    // writes them in turn through the nodes that are members at the time.
    let stop = Arc::new(AtomicBool::new(false));
    let targets: Arc<Mutex<Vec<SocketAddr>>> = Arc::new(Mutex::new(endpoints.clone()));
    let acked = Arc::new(Mutex::new(0u64));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (stop, targets, expect, acked) = (stop.clone(), targets.clone(), expect.clone(), acked.clone());
        clients.push(tokio::spawn(async move {
            let mut seq = 0usize;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let i = c * KEYS_PER_CLIENT + seq % KEYS_PER_CLIENT;
                let value = format!("c{c}-{seq}");
                let target = {
                    let t = targets.lock().unwrap();
                    t[seq % t.len()]
                };
                let result = upsert(target, &key(i), &value).await;
                {
                    let mut e = expect.lock().unwrap();
                    match result {
                        Ok(()) => {
                            e[i] = Expect { acked: Some(value), in_doubt: Vec::new() };
                            *acked.lock().unwrap() += 1;
                        }
                        Err(_) => e[i].in_doubt.push(value),
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    // 2. Two nodes join; the partitions spread over five.
    cluster.start(3);
    cluster.start(4);
    wait_serving(&cluster, 3).await;
    wait_serving(&cluster, 4).await;
    targets.lock().unwrap().extend([cluster.endpoint(3), cluster.endpoint(4)]);
    let counts = settle(&cluster, &[0, 1, 2, 3, 4], 0.5, 1.5).await;
    eprintln!("after the joins: {counts:?}");

    // 3. n2 leaves gracefully and exits by itself; n3 dies and is removed.
    targets.lock().unwrap().retain(|a| *a != cluster.endpoint(1) && *a != cluster.endpoint(2));
    admin(cluster.endpoint(1)).leave(LeaveRequest {}).await.expect("n2 may leave");
    assert!(cluster.wait_exit(1, SETTLE), "n2 exits once its partitions moved away");
    cluster.kill(2);
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        match admin(cluster.endpoint(0)).remove(RemoveRequest { node: "n3".into() }).await {
            Ok(_) => break,
            // Refused while the others still see n3 up.
            Err(e) if Instant::now() < until && e.code() == tonic::Code::FailedPrecondition => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("n3 cannot be removed: {e}"),
        }
    }
    let counts = settle(&cluster, &[0, 3, 4], 1.0, 1.0).await;
    eprintln!("after the leave and the removal: {counts:?}");
    let unknown = admin(cluster.endpoint(0)).remove(RemoveRequest { node: "ghost".into() }).await;
    assert_eq!(unknown.map_err(|e| e.code()).err(), Some(tonic::Code::NotFound));

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("a client finished");
    }
    let acked = *acked.lock().unwrap();
    assert!(acked > 100, "the clients wrote during the moves ({acked} acknowledged writes)");

    // 4. Every key, from every remaining node.
    let expect = expect.lock().unwrap().clone();
    let mut wrong = Vec::new();
    for node in [0, 3, 4] {
        for (i, e) in expect.iter().enumerate() {
            let got = fetch(cluster.endpoint(node), &key(i)).await;
            let got = got.map(|v| String::from_utf8_lossy(&v).into_owned()).map_err(|s| s.code());
            let ok = match &got {
                Ok(v) => e.acked.as_ref() == Some(v) || e.in_doubt.contains(v),
                Err(_) => false,
            };
            if !ok && wrong.len() < 10 {
                wrong.push(format!(
                    "{} from n{}: {got:?}, expected {:?} (or one of {:?})",
                    key(i),
                    node + 1,
                    e.acked,
                    e.in_doubt
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "keys lost or wrong:\n{}", wrong.join("\n"));
}

/// Runs `memo node run` with `args` to its exit (at most 60 s); returns its exit code and
/// stderr.
fn run_to_exit(args: &[String]) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(memo_tests::memo_bin())
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("memo starts");
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        if let Some(status) = child.try_wait().expect("waits") {
            let mut stderr = String::new();
            use std::io::Read;
            let _ = child.stderr.take().expect("piped").read_to_string(&mut stderr);
            return (status.code(), stderr);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("memo node run {args:?} did not exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_with_a_wrong_token_a_taken_name_or_no_seed_is_refused_clearly() {
    let mut cluster = Cluster::elastic("join-errors", 3, 4, 16);
    for i in 0..3 {
        cluster.start(i);
    }
    for i in 0..3 {
        wait_serving(&cluster, i).await;
    }
    let joiner = |id: &str, token: &str, seed: String| -> Vec<String> {
        let dir = cluster.root.path.join(format!("joiner-{id}-{token}"));
        ["node", "run", "--id", id, "--listen", "127.0.0.1:0", "--join", &seed, "--cluster-token", token]
            .map(String::from)
            .into_iter()
            .chain(["--data-dir".to_string(), dir.display().to_string()])
            .collect()
    };
    let seed = cluster.endpoint(0).to_string();
    let (code, stderr) = run_to_exit(&joiner("n9", "another-cluster", seed.clone()));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("does not derive from --cluster-token"), "{stderr}");
    let (code, stderr) = run_to_exit(&joiner("n2", "memo-tests", seed));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("a member of the cluster already has that name"), "{stderr}");
    let nowhere = format!("127.0.0.1:{}", memo_tests::free_ports(1)[0]);
    let (code, stderr) = run_to_exit(&joiner("n9", "memo-tests", nowhere));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no seed answered"), "{stderr}");
    // Nothing changed: the three founders are still the only members.
    let view = members(cluster.endpoint(1)).await.expect("n2 answers");
    let names: Vec<&str> = view.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["n1", "n2", "n3"]);
}
