//! Durability end to end: real `memo node run` processes on redb data directories, on
//! loopback, killed with SIGKILL and restarted. Every child is killed by a guard when its
//! test ends, every wait is bounded, and every data directory lives under the system
//! temp dir and is removed afterwards.
//!
//! A SIGKILL keeps what the process handed to the OS (the page cache survives), so these
//! tests check that the node writes and commits everything it acknowledged before
//! acknowledging it (redb's `Durability::None` commits stay in the process's memory until
//! the durable commit of `sync`); that fsync reaches the platter is the simulator's
//! business (crash-faithful disks, docs/SIMULATION.md).
#![cfg(not(madsim))]

mod common;

use common::{ChildGuard, wait_exit};
use std::ffi::OsStr;

use memo_proto::kvs::key_value_store_client::KeyValueStoreClient;
use memo_proto::kvs::{FetchRequest, UpsertRequest};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// Upper bound of any one test.
const TEST_TIMEOUT: Duration = Duration::from_secs(150);
/// How long a started node may take to serve a linearizable read.
const SERVE_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound of one client call (the engine answers within its 5 s request deadline).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a node that must fail at start may take to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the write load runs before the whole cluster is killed.
const LOAD_TIME: Duration = Duration::from_secs(1);
/// Partitions of the test clusters (small: fast to start).
const PARTITIONS: u32 = 16;

type Client = KeyValueStoreClient<Channel>;

// ----- fixtures -----

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let unique = format!("memo-durability-{name}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let path = std::env::temp_dir().join(unique);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("the temp dir can be created");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Ports nothing listens on right now (bound, read, released).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port")).collect();
    listeners.iter().map(|l| l.local_addr().expect("bound").port()).collect()
}

/// A cluster of `memo node run` processes, node `nI` in `ROOT/nI` with its log in
/// `ROOT/nI.log`. The processes die with it; their logs are printed if the test failed.
struct Cluster {
    root: TempDir,
    ports: Vec<u16>,
    children: Vec<Option<ChildGuard>>,
}

impl Cluster {
    fn new(name: &str, nodes: usize) -> Self {
        let ports = free_ports(nodes);
        Cluster { root: TempDir::new(name), ports, children: (0..nodes).map(|_| None).collect() }
    }

    fn name(i: usize) -> String {
        format!("n{}", i + 1)
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.root.0.join(Self::name(i))
    }

    fn database(&self, i: usize) -> PathBuf {
        self.data_dir(i).join("data.redb")
    }

    fn endpoint(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[i]))
    }

    /// `memo node run` arguments for node `i`, with `partitions`.
    fn args(&self, i: usize, partitions: u32) -> Vec<String> {
        let initial: Vec<String> =
            (0..self.ports.len()).map(|j| format!("{}={}", Self::name(j), self.endpoint(j))).collect();
        let mut args: Vec<String> = ["node", "run", "--id"].map(String::from).to_vec();
        args.push(Self::name(i));
        args.extend(["--listen".into(), self.endpoint(i).to_string()]);
        args.extend(["--initial-nodes".into(), initial.join(",")]);
        args.extend(["--partitions".into(), partitions.to_string()]);
        args.extend(["--cluster-token".into(), "durability-test".into()]);
        args.extend(["--data-dir".into(), self.data_dir(i).display().to_string()]);
        args
    }

    /// Starts node `i` in the background (its stderr appended to its log).
    fn start(&mut self, i: usize) {
        assert!(self.children[i].is_none(), "node {i} is already running");
        let log_path = self.root.0.join(format!("{}.log", Self::name(i)));
        let log = File::options().create(true).append(true).open(&log_path).expect("the log opens");
        let child = Command::new(env!("CARGO_BIN_EXE_memo"))
            .args(self.args(i, PARTITIONS))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("memo node run starts");
        self.children[i] = Some(ChildGuard(child));
    }

    /// SIGKILLs node `i` and reaps it.
    fn kill(&mut self, i: usize) {
        let mut guard = self.children[i].take().expect("node is running");
        guard.0.kill().expect("SIGKILL is delivered");
        guard.0.wait().expect("the killed node is reaped");
    }

    /// Runs `memo ARGS` in the foreground until it exits (bounded): (status, stderr).
    fn run_to_exit(&self, args: &[String]) -> (ExitStatus, String) {
        let child = Command::new(env!("CARGO_BIN_EXE_memo"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("memo starts");
        let mut guard = ChildGuard(child);
        let status = wait_exit(&mut guard.0, EXIT_TIMEOUT).expect("memo exits in time");
        let mut stderr = String::new();
        guard.0.stderr.take().expect("piped").read_to_string(&mut stderr).expect("stderr reads");
        (status, stderr)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            drop(child.take());
        }
        if std::thread::panicking() {
            for i in 0..self.ports.len() {
                let log = std::fs::read_to_string(self.root.0.join(format!("{}.log", Self::name(i))));
                eprintln!("----- log of {} -----\n{}", Self::name(i), log.unwrap_or_default());
            }
        }
    }
}

/// Prints a log file if the test is failing when this is dropped.
struct PrintOnPanic(PathBuf);

impl Drop for PrintOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.0).unwrap_or_default();
            eprintln!("----- {} -----\n{log}", self.0.display());
        }
    }
}

async fn within<F: std::future::Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, test).await.expect("the test finished in time")
}

async fn connect(addr: SocketAddr) -> Option<Client> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).expect("a valid endpoint");
    let endpoint = endpoint.connect_timeout(Duration::from_secs(2)).timeout(CALL_TIMEOUT);
    endpoint.connect().await.ok().map(KeyValueStoreClient::new)
}

/// Waits until the node at `addr` serves a linearizable read; returns a client for it.
async fn serving(addr: SocketAddr) -> Client {
    let deadline = Instant::now() + SERVE_TIMEOUT;
    loop {
        let last = match connect(addr).await {
            Some(mut client) => match client.fetch(FetchRequest { key: "memo-test/ready".into(), version: 0 }).await {
                Ok(_) => return client,
                Err(status) if status.code() == Code::NotFound => return client,
                Err(status) => format!("{status:?}"),
            },
            None => "cannot connect".into(),
        };
        assert!(Instant::now() < deadline, "{addr} serves within {SERVE_TIMEOUT:?}; last: {last}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn upsert(client: &mut Client, key: &str, value: &str) -> Result<(), tonic::Status> {
    client.upsert(UpsertRequest { key: key.into(), value: value.into() }).await.map(drop)
}

/// Upserts, retrying while the answer is UNAVAILABLE (bounded). A write forwarded to a
/// partition's primary that just died answers UNAVAILABLE ("outcome unknown") once the
/// forward times out (R6), and the coordinator then bypasses that primary for a while;
/// a client retries such a write, which an upsert of the same value allows.
async fn upsert_retrying(client: &mut Client, key: &str, value: &str) {
    let deadline = Instant::now() + SERVE_TIMEOUT;
    loop {
        match upsert(client, key, value).await {
            Ok(()) => return,
            Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("upsert {key}={value}: {status:?}"),
        }
    }
}

/// The value of `key`, `None` if absent.
async fn fetch(client: &mut Client, key: &str) -> Result<Option<String>, tonic::Status> {
    match client.fetch(FetchRequest { key: key.into(), version: 0 }).await {
        Ok(reply) => Ok(Some(String::from_utf8(reply.into_inner().value).expect("utf-8 values"))),
        Err(status) if status.code() == Code::NotFound => Ok(None),
        Err(status) => Err(status),
    }
}

// ----- one node dies -----

#[tokio::test]
async fn a_killed_node_restarts_from_its_data_dir_and_serves_the_latest_values() {
    within(async {
        let mut cluster = Cluster::new("kill-one", 3);
        for i in 0..3 {
            cluster.start(i);
        }
        let mut c = Vec::new();
        for i in 0..3 {
            c.push(serving(cluster.endpoint(i)).await);
        }
        let keys: Vec<String> = (0..10).map(|k| format!("k{k}")).collect();
        for key in &keys {
            upsert(&mut c[0], key, "v1").await.expect("upsert with every node up");
        }

        // n3 dies: writes and linearizable reads through n1 and n2 keep succeeding.
        cluster.kill(2);
        for (i, key) in keys.iter().enumerate() {
            let (writer, reader) = (i % 2, 1 - i % 2);
            upsert_retrying(&mut c[writer], key, "v2").await;
            assert_eq!(fetch(&mut c[reader], key).await.expect("fetch with n3 down"), Some("v2".into()));
        }

        // n3 comes back from its data dir and serves the latest values.
        cluster.start(2);
        c[2] = serving(cluster.endpoint(2)).await;
        for key in &keys {
            assert_eq!(fetch(&mut c[2], key).await.expect("fetch through n3"), Some("v2".into()));
        }
        upsert_retrying(&mut c[2], "k0", "v3").await;

        // And it holds up a quorum: with n1 dead, n2 and n3 serve everything.
        cluster.kill(0);
        for (i, key) in keys.iter().enumerate() {
            let expected = if i == 0 { "v3" } else { "v2" };
            assert_eq!(fetch(&mut c[1 + i % 2], key).await.expect("fetch with n1 down"), Some(expected.into()));
        }
        upsert_retrying(&mut c[2], "k1", "v4").await;
        assert_eq!(fetch(&mut c[1], "k1").await.expect("fetch"), Some("v4".into()));
    })
    .await;
}

// ----- every node dies under load -----

/// Keys each writer cycles through.
const KEYS_PER_WRITER: u64 = 8;

/// What one writer knows about its writes. The writer owns its keys and has one write in
/// flight at a time; write number `n` (from 1) stores the value `n` under key
/// `n % KEYS_PER_WRITER`, so values increase per key. A write that fails while the
/// cluster is up is retried with the same value; the write in flight when the cluster
/// dies has an unknown outcome.
#[derive(Debug, Default)]
struct Ledger {
    /// Per key, the last acknowledged value.
    acked: BTreeMap<String, u64>,
    /// Per key, the values sent but never acknowledged.
    unacked: BTreeMap<String, BTreeSet<u64>>,
}

impl Ledger {
    /// After a crash and restart, the value read for `key` must be its last acknowledged
    /// value, or a value of a later unacknowledged write of the same writer (which may or
    /// may not have taken effect). Absent only if no write of it was acknowledged.
    fn allows(&self, key: &str, found: Option<u64>) -> bool {
        let acked = self.acked.get(key).copied();
        let later_unacked = |v: u64| self.unacked.get(key).is_some_and(|u| u.contains(&v)) && Some(v) > acked;
        match found {
            None => acked.is_none(),
            Some(v) => Some(v) == acked || later_unacked(v),
        }
    }

    fn keys(&self) -> BTreeSet<&String> {
        self.acked.keys().chain(self.unacked.keys()).collect()
    }
}

async fn write_load(writer: usize, addr: SocketAddr, stop: Arc<AtomicBool>) -> Ledger {
    let mut ledger = Ledger::default();
    let mut client = serving(addr).await;
    let mut n: u64 = 1;
    while !stop.load(Ordering::Acquire) {
        let key = format!("load/w{writer}/k{}", n % KEYS_PER_WRITER);
        ledger.unacked.entry(key.clone()).or_default().insert(n);
        match upsert(&mut client, &key, &n.to_string()).await {
            Ok(()) => {
                ledger.unacked.get_mut(&key).expect("recorded").remove(&n);
                ledger.acked.insert(key, n);
                n += 1;
            }
            // Retried with the same value while the cluster is up.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    ledger
}

#[tokio::test]
async fn acknowledged_writes_survive_killing_every_node_under_load() {
    within(async {
        let mut cluster = Cluster::new("kill-all", 3);
        for i in 0..3 {
            cluster.start(i);
        }
        for i in 0..3 {
            serving(cluster.endpoint(i)).await;
        }

        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> =
            (0..4).map(|w| tokio::spawn(write_load(w, cluster.endpoint(w % 3), stop.clone()))).collect();
        tokio::time::sleep(LOAD_TIME).await;
        for i in 0..3 {
            cluster.kill(i);
        }
        stop.store(true, Ordering::Release);
        let mut ledgers = Vec::new();
        for writer in writers {
            ledgers.push(writer.await.expect("the writer finishes"));
        }
        // Write n is acknowledged only after writes 1..n of the same writer.
        let acked: u64 = ledgers.iter().filter_map(|l| l.acked.values().max()).sum();
        assert!(acked >= 8, "the load got writes acknowledged before the kill: {ledgers:?}");

        for i in 0..3 {
            cluster.start(i);
        }
        let mut c = Vec::new();
        for i in 0..3 {
            c.push(serving(cluster.endpoint(i)).await);
        }
        let mut checked = 0;
        for ledger in &ledgers {
            for key in ledger.keys() {
                let found = fetch(&mut c[checked % 3], key).await.expect("fetch after the restart");
                let found = found.map(|v| v.parse::<u64>().expect("a number"));
                assert!(ledger.allows(key, found), "{key}: found {found:?}; the writer saw {ledger:?}");
                checked += 1;
            }
        }
        assert!(checked >= 8);
        let unknown: usize = ledgers.iter().map(|l| l.unacked.values().map(BTreeSet::len).sum::<usize>()).sum();
        eprintln!("{acked} writes acknowledged, {unknown} of unknown outcome, {checked} keys checked");
    })
    .await;
}

// ----- a damaged or foreign data dir -----

/// A one-node cluster whose node acknowledged `marker` under key `k`, then was SIGKILLed.
async fn killed_node_with_data(name: &str, marker: &str) -> Cluster {
    let mut cluster = Cluster::new(name, 1);
    cluster.start(0);
    let mut client = serving(cluster.endpoint(0)).await;
    upsert(&mut client, "k", marker).await.expect("upsert");
    cluster.kill(0);
    cluster
}

/// Overwrites every occurrence of `needle` in the file; returns how many there were.
fn scribble_over(path: &Path, needle: &[u8]) -> usize {
    let mut bytes = std::fs::read(path).expect("the database reads");
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
    std::fs::write(path, bytes).expect("the database writes");
    hits
}

/// Restarts node 0, which must refuse to start: exit code 1 and a message naming
/// `file`; twice, so the first attempt did not "repair" the directory into something
/// that starts (an empty database, say).
fn assert_refuses_to_start(cluster: &Cluster, args: &[String], file: &Path, expected: &str) {
    for attempt in 1..=2 {
        let (status, stderr) = cluster.run_to_exit(args);
        assert_eq!(status.code(), Some(1), "attempt {attempt}: {stderr}");
        assert!(stderr.contains(&file.display().to_string()), "names {}: {stderr}", file.display());
        assert!(stderr.contains(expected), "says {expected:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// The same, and the database file is left exactly as it was.
fn assert_refuses_to_start_untouched(cluster: &Cluster, args: &[String], file: &Path, expected: &str) {
    let before = std::fs::read(cluster.database(0)).expect("the database reads");
    assert_refuses_to_start(cluster, args, file, expected);
    let after = std::fs::read(cluster.database(0)).expect("the database reads");
    assert!(after == before, "the database was not touched");
}

#[tokio::test]
async fn a_corrupted_database_stops_the_node_at_start() {
    within(async {
        let marker = "value-to-corrupt-".repeat(16);
        let mut cluster = killed_node_with_data("corrupt", &marker).await;
        // The next start replays the write-ahead log into the database durably.
        cluster.start(0);
        serving(cluster.endpoint(0)).await;
        cluster.kill(0);
        let database = cluster.database(0);
        assert!(scribble_over(&database, marker.as_bytes()) > 0, "the value is in the file");
        assert_refuses_to_start_untouched(&cluster, &cluster.args(0, PARTITIONS), &database, "corrupt");
    })
    .await;
}

#[tokio::test]
async fn a_corrupted_write_ahead_log_stops_the_node_at_start() {
    within(async {
        let marker = "value-to-corrupt-".repeat(16);
        let cluster = killed_node_with_data("corrupt-wal", &marker).await;
        let log = cluster.database(0).with_extension("wal");
        assert!(scribble_over(&log, marker.as_bytes()) > 0, "the acknowledged value is in the log");
        let before = std::fs::read(&log).expect("the log reads");
        // redb's own crash recovery may rewrite the database's header first (it stays
        // consistent); the damaged log must be left as it is.
        assert_refuses_to_start(&cluster, &cluster.args(0, PARTITIONS), &log, "corrupt");
        assert!(std::fs::read(&log).expect("the log reads") == before, "the log was not touched");
    })
    .await;
}

#[tokio::test]
async fn a_truncated_or_foreign_database_stops_the_node_at_start() {
    within(async {
        let cluster = killed_node_with_data("truncated", "v").await;
        let database = cluster.database(0);
        let len = std::fs::metadata(&database).expect("metadata").len();
        File::options().write(true).open(&database).expect("opens").set_len(len / 2).expect("truncates");
        // redb's recovery may write to the file (its header) before it finds the damage, so
        // only the refusal is checked here.
        assert_refuses_to_start(&cluster, &cluster.args(0, PARTITIONS), &database, "corrupt");

        std::fs::write(&database, b"not a database ".repeat(1000)).expect("overwrites");
        let args = cluster.args(0, PARTITIONS);
        assert_refuses_to_start_untouched(&cluster, &args, &database, "Not a redb database");
    })
    .await;
}

#[tokio::test]
async fn different_cluster_parameters_stop_the_node_at_start() {
    within(async {
        let cluster = killed_node_with_data("mismatch", "v").await;
        let marker = cluster.data_dir(0).join("memo.toml");
        let expected = format!("was created for a cluster with {PARTITIONS} partitions, not 32");
        assert_refuses_to_start_untouched(&cluster, &cluster.args(0, 32), &marker, &expected);
    })
    .await;
}

// ----- the CLI around it -----

#[test]
fn a_node_without_a_data_dir_warns_that_it_is_not_durable() {
    let port = free_ports(1)[0];
    let child = Command::new(env!("CARGO_BIN_EXE_memo"))
        .args(["node", "run", "--id", "n1", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--initial-nodes", &format!("n1=127.0.0.1:{port}"), "--partitions", "4"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("memo node run starts");
    let mut guard = ChildGuard(child);
    let stderr = guard.0.stderr.take().expect("piped");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let deadline = Instant::now() + SERVE_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).expect("the warning is printed");
        if line.contains("WARN") && line.contains("not durable") {
            break;
        }
    }
}

/// Starts `memo dev` with a data dir on free ports, its stderr appended to `log`;
/// returns it and its endpoints.
fn memo_dev(data_dir: &Path, log: &Path) -> (ChildGuard, Vec<SocketAddr>) {
    let log = File::options().create(true).append(true).open(log).expect("the log opens");
    let extra = [OsStr::new("--partitions"), OsStr::new("8"), OsStr::new("--data-dir"), data_dir.as_os_str()];
    common::memo_dev(extra, Stdio::from(log), SERVE_TIMEOUT)
}

#[tokio::test]
async fn memo_dev_with_a_data_dir_keeps_the_data_across_runs() {
    within(async {
        let root = TempDir::new("dev");
        let data = root.0.join("data");
        let log = root.0.join("dev.log");
        let _print_log = PrintOnPanic(log.clone());
        let (mut dev, endpoints) = memo_dev(&data, &log);
        let mut client = serving(endpoints[0]).await;
        upsert(&mut client, "kept", "yes").await.expect("upsert");
        let signalled = Command::new("kill").args(["-INT", &dev.0.id().to_string()]).status();
        assert!(signalled.expect("kill runs").success());
        let status = wait_exit(&mut dev.0, EXIT_TIMEOUT).expect("memo dev exits after SIGINT");
        assert!(status.success(), "{status:?}");
        for node in ["n1", "n2", "n3"] {
            assert!(data.join(node).join("memo.toml").is_file() && data.join(node).join("data.redb").is_file());
        }

        let (_dev, endpoints) = memo_dev(&data, &log);
        let mut client = serving(endpoints[2]).await;
        assert_eq!(fetch(&mut client, "kept").await.expect("fetch"), Some("yes".into()));
    })
    .await;
}
