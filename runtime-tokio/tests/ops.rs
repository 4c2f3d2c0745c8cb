//! Operating a node: gRPC health and reflection on the node's port, Prometheus metrics,
//! `memo status` and `--output json`, `memo node run --config`, the Python client
//! example against `memo dev`, and snapshots of the CLI's help. Every wait is bounded.
#![cfg(not(madsim))]

mod common;

use common::ChildGuard;

use memo_engine::{ClusterParams, Config, MemoryStorage, NodeId};
use memo_node::{DevOptions, Listener, NodeOptions, spawn_dev_cluster, spawn_node_on};
use memo_proto::kvs::key_value_store_client::KeyValueStoreClient;
use memo_proto::kvs::{FetchRequest, UpsertRequest};
use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

/// Upper bound of an in-process test.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `memo dev` may take to print its endpoints.
const DEV_START_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound of one short command (`memo --help`, `python -m venv`, protoc).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Upper bound of `pip install` (downloads the wheels the first time).
const PIP_TIMEOUT: Duration = Duration::from_secs(600);
/// Upper bound of the Python round trip.
const PYTHON_CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a `memo node run` may take to start serving, or to stop after SIGTERM.
const NODE_START_STOP_TIMEOUT: Duration = Duration::from_secs(20);

async fn within<F: std::future::Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, test).await.expect("the test finished in time")
}

fn uri(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

// ----- health and reflection -----

async fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    let endpoint = tonic::transport::Endpoint::from_shared(uri(addr)).expect("a valid URI");
    endpoint.connect().await.expect("the node accepts connections")
}

/// One node of a 3-node cluster whose other members never start: it serves, but
/// cannot reach a quorum (health is about the process, not the cluster).
async fn lonely_node() -> memo_node::NodeHandle {
    let ids: Vec<NodeId> = (1..=3).map(|i| NodeId::initial(format!("n{i}"))).collect();
    let mut listeners = Vec::new();
    for _ in &ids {
        listeners.push(Listener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("bind"));
    }
    let peers: BTreeMap<_, _> = (ids.iter().cloned()).zip(listeners.iter().map(Listener::local_addr)).collect();
    let params = ClusterParams { partitions: 16, replication: 3, initial_nodes: ids.clone(), token: "ops".into() };
    let options = NodeOptions::new(Config::new(ids[0].clone(), params), peers[&ids[0]], peers.clone(), 1);
    let listener = listeners.into_iter().next().expect("a listener");
    spawn_node_on(listener, options, Arc::new(MemoryStorage::new())).await.expect("the node starts")
}

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest { service: service.into() }
}

#[tokio::test]
async fn health_is_serving_while_the_node_runs_and_not_serving_once_it_stops() {
    within(async {
        let node = lonely_node().await;
        let mut health = HealthClient::new(channel(node.local_addr()).await);
        for service in ["", "memo.kvs.KeyValueStore", "memo.peer.Peer"] {
            let answer = health.check(check(service)).await.expect("health check").into_inner();
            assert_eq!(answer.status(), ServingStatus::Serving, "{service:?}");
        }
        let unknown = health.check(check("no.such.Service")).await.unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound);

        // A watcher sees the node turn NOT_SERVING as soon as shutdown starts.
        let mut watch = health.watch(check("")).await.expect("health watch").into_inner();
        let first = watch.message().await.expect("a status").expect("the stream is open");
        assert_eq!(first.status(), ServingStatus::Serving);
        let stopping = tokio::spawn(node.shutdown());
        let next = watch.message().await.expect("a status").expect("the stream is open");
        assert_eq!(next.status(), ServingStatus::NotServing);
        drop(watch);
        stopping.await.expect("the shutdown task").expect("graceful shutdown");
    })
    .await;
}

/// A request stream of fixed messages.
struct Requests(VecDeque<ServerReflectionRequest>);

impl futures_core::Stream for Requests {
    type Item = ServerReflectionRequest;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(self.0.pop_front())
    }
}

async fn reflect(addr: SocketAddr, request: MessageRequest) -> MessageResponse {
    let mut client = ServerReflectionClient::new(channel(addr).await);
    let request = ServerReflectionRequest { host: String::new(), message_request: Some(request) };
    let mut answers = client.server_reflection_info(Requests([request].into())).await.expect("reflection").into_inner();
    let answer: ServerReflectionResponse = answers.message().await.expect("an answer").expect("one answer");
    answer.message_response.expect("a response")
}

#[tokio::test]
async fn reflection_lists_and_describes_every_service() {
    within(async {
        let node = lonely_node().await;
        let addr = node.local_addr();
        let MessageResponse::ListServicesResponse(list) =
            reflect(addr, MessageRequest::ListServices(String::new())).await
        else {
            panic!("expected a service list");
        };
        let mut services: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        services.sort();
        assert_eq!(
            services,
            [
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "memo.admin.Admin",
                "memo.kvs.KeyValueStore",
                "memo.peer.Peer",
            ]
        );

        // `grpcurl describe`: the file defining a service, with its messages.
        let symbol = MessageRequest::FileContainingSymbol("memo.kvs.KeyValueStore".into());
        let MessageResponse::FileDescriptorResponse(files) = reflect(addr, symbol).await else {
            panic!("expected a file descriptor");
        };
        let file = files.file_descriptor_proto.first().expect("one file");
        let text = String::from_utf8_lossy(file);
        assert!(text.contains("memo_kvs.proto") && text.contains("ListRequest"), "{text}");

        node.shutdown().await.expect("graceful shutdown");
    })
    .await;
}

// ----- metrics -----

/// A port that was free a moment ago.
fn free_port() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    probe.local_addr().expect("its address")
}

/// `GET /metrics` over a raw socket; the body, or the error.
fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    Ok(answer)
}

/// Write rounds (fast and full) of every node, from the exposition text.
fn write_rounds(text: &str) -> f64 {
    (text.lines())
        .filter(|line| line.starts_with("memo_paxos_rounds_total{"))
        .filter(|line| line.contains(r#"path="fast""#) || line.contains(r#"path="full""#))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_exports_request_and_paxos_metrics() {
    within(async {
        let metrics_addr = free_port();
        memo_node::install_prometheus(metrics_addr).expect("the exporter starts");
        let again = memo_node::install_prometheus(free_port()).unwrap_err();
        assert!(again.to_string().contains("already installed"), "{again}");

        let cluster = spawn_dev_cluster(DevOptions::new(3, 0, 5)).await.expect("the cluster starts");
        let addr = cluster.nodes()[0].local_addr();
        let mut client = KeyValueStoreClient::connect(uri(addr)).await.expect("connect");
        for i in 0..5 {
            let request = UpsertRequest { key: format!("k{i}"), value: b"v".to_vec() };
            client.upsert(request).await.expect("upsert");
        }
        client.fetch(FetchRequest { key: "k0".into(), version: 0 }).await.expect("fetch");
        let missing = client.fetch(FetchRequest { key: "nope".into(), version: 0 }).await.unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);

        // Engine counters are sampled every second: poll until they show up.
        let wanted = [
            r#"memo_requests_total{node="n1",rpc="Upsert",code="OK"} 5"#,
            r#"memo_requests_total{node="n1",rpc="Fetch",code="NOT_FOUND"} 1"#,
            "# TYPE memo_request_duration_seconds histogram",
            r#"memo_request_duration_seconds_bucket{node="n1",rpc="Fetch",code="OK",le="10"} 1"#,
            r#"memo_paxos_rounds_total{node="n1",path="fast"}"#,
            r#"memo_paxos_rounds_total{node="n2",path="read_fallback"}"#,
            r#"memo_peer_queue_messages{node="n1",peer="n2"}"#,
            "# HELP memo_requests_total",
        ];
        let complete = |text: &str| wanted.iter().all(|line| text.contains(line)) && write_rounds(text) >= 5.0;
        let deadline = Instant::now() + Duration::from_secs(10);
        let text = loop {
            let text = tokio::task::spawn_blocking(move || scrape(metrics_addr)).await.expect("the scraper");
            let text = text.expect("the exporter answers");
            if complete(&text) || Instant::now() >= deadline {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        for line in wanted {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert!(write_rounds(&text) >= 5.0, "the 5 upserts took fewer write rounds:\n{text}");
        if std::env::var_os("MEMO_SHOW_METRICS").is_some() {
            eprintln!("{text}");
        }
        cluster.shutdown().await.expect("graceful shutdown");
    })
    .await;
}

// ----- the `memo` binary -----

/// What a finished command said.
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `command` to completion within `timeout` (its output read as it comes, so a
/// chatty child never blocks on a full pipe); panics with `what` if it does not finish.
fn run(what: &str, command: &mut Command, timeout: Duration) -> Ran {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start {command:?}: {e}"));
    let mut guard = ChildGuard(child);
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(guard.0.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(guard.0.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = guard.0.try_wait().expect("the child can be waited for") {
            break status;
        }
        assert!(Instant::now() < deadline, "{what}: {command:?} did not finish within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().expect("the stdout reader");
    let stderr = stderr.join().expect("the stderr reader");
    Ran { status, stdout, stderr }
}

fn memo_help(args: &[&str]) -> String {
    let ran = run("memo --help", Command::new(env!("CARGO_BIN_EXE_memo")).args(args), COMMAND_TIMEOUT);
    assert!(ran.status.success(), "{args:?}: {}", ran.stderr);
    ran.stdout
}

/// The help of `memo` and of each of its commands.
#[test]
fn cli_help_snapshots() {
    insta::assert_snapshot!("memo_help", memo_help(&["--help"]));
    insta::assert_snapshot!("memo_kv_help", memo_help(&["kv", "--help"]));
    for command in ["insert", "update", "upsert", "get", "delete", "list"] {
        insta::assert_snapshot!(format!("memo_kv_{command}_help"), memo_help(&["kv", command, "--help"]));
    }
    insta::assert_snapshot!("memo_status_help", memo_help(&["status", "--help"]));
    insta::assert_snapshot!("memo_dev_help", memo_help(&["dev", "--help"]));
    insta::assert_snapshot!("memo_node_run_help", memo_help(&["node", "run", "--help"]));
    insta::assert_snapshot!("memo_cluster_help", memo_help(&["cluster", "--help"]));
    for command in ["members", "leave", "remove"] {
        insta::assert_snapshot!(format!("memo_cluster_{command}_help"), memo_help(&["cluster", command, "--help"]));
    }
}

/// Starts `memo dev` on free ports and reads the node endpoints from its banner.
fn memo_dev() -> (ChildGuard, Vec<String>) {
    let (guard, endpoints) = common::memo_dev::<_, &str>([], Stdio::null(), DEV_START_TIMEOUT);
    (guard, endpoints.iter().map(ToString::to_string).collect())
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

/// A virtual environment with `examples/python/requirements.txt` installed, under the
/// target directory. Reused while the requirements are unchanged; rebuilt otherwise.
/// Needs PyPI the first time: without it this fails, saying so.
fn python_venv(requirements: &Path) -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-venv");
    let python = venv.join("bin").join("python");
    let stamp = venv.join("memo-requirements.txt");
    let wanted = std::fs::read_to_string(requirements).expect("requirements.txt reads");
    if python.exists() && std::fs::read_to_string(&stamp).is_ok_and(|installed| installed == wanted) {
        return python;
    }
    if venv.exists() {
        std::fs::remove_dir_all(&venv).expect("the stale venv can be removed");
    }
    let created = run("python3 -m venv", Command::new("python3").args(["-m", "venv"]).arg(&venv), COMMAND_TIMEOUT);
    assert!(created.status.success(), "python3 -m venv failed (is python3 with venv installed?):\n{}", created.stderr);
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "install", "--disable-pip-version-check", "--timeout", "30", "--retries", "2", "-r"])
        .arg(requirements);
    let installed = run("pip install", &mut pip, PIP_TIMEOUT);
    assert!(
        installed.status.success(),
        "pip could not install {} (PyPI must be reachable the first time this test runs):\n{}",
        requirements.display(),
        installed.stderr
    );
    std::fs::write(&stamp, wanted).expect("the venv stamp writes");
    python
}

#[test]
fn python_client_example_round_trips_against_memo_dev() {
    let started = Instant::now();
    let root = repo_root();
    let example = root.join("examples").join("python");
    let python = python_venv(&example.join("requirements.txt"));

    // Stubs generated afresh from the proto, as the README shows.
    let stubs = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-stubs");
    let _ = std::fs::remove_dir_all(&stubs);
    std::fs::create_dir_all(&stubs).expect("the stubs dir");
    let proto_dir = root.join("proto").join("proto");
    let mut protoc = Command::new(&python);
    protoc
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto_dir)
        .arg(format!("--python_out={}", stubs.display()))
        .arg(format!("--grpc_python_out={}", stubs.display()))
        .arg(proto_dir.join("memo_kvs.proto"));
    let generated = run("grpc_tools.protoc", &mut protoc, COMMAND_TIMEOUT);
    assert!(generated.status.success(), "stub generation failed:\n{}", generated.stderr);
    assert!(stubs.join("memo_kvs_pb2_grpc.py").exists());

    let (_dev, endpoints) = memo_dev();
    let mut client = Command::new(&python);
    client.arg(example.join("memo_client.py")).args(["--endpoint", &endpoints[1]]).arg("--stubs-dir").arg(&stubs);
    let ran = run("memo_client.py", &mut client, PYTHON_CLIENT_TIMEOUT);
    assert!(ran.status.success(), "memo_client.py failed ({:?}):\n{}\n{}", ran.status, ran.stdout, ran.stderr);
    assert_eq!(
        ran.stdout,
        "insert python/greeting = hello\n\
         fetch python/greeting -> hello\n\
         update python/greeting = bonjour\n\
         fetch python/greeting -> bonjour\n\
         insert python/greeting again -> ALREADY_EXISTS\n\
         upsert python/other = 42\n\
         list python/ -> python/greeting, python/other\n\
         delete python/greeting\n\
         fetch python/greeting -> NOT_FOUND\n\
         round trip OK\n"
    );
    eprintln!("python round trip took {:?}", started.elapsed());
}

// ----- memo status, --output json, memo node run --config -----

/// Runs `memo ARGS` (bounded).
fn memo(args: &[&str]) -> Ran {
    run("memo", Command::new(env!("CARGO_BIN_EXE_memo")).args(args), COMMAND_TIMEOUT)
}

/// Runs `memo ARGS`, expecting success and JSON on stdout.
fn memo_json(args: &[&str]) -> serde_json::Value {
    let ran = memo(args);
    assert!(ran.status.success(), "{args:?}: {:?}\n{}", ran.status, ran.stderr);
    serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}):\n{}", ran.stdout))
}

fn u64_at(value: &serde_json::Value, pointer: &str) -> u64 {
    value.pointer(pointer).and_then(serde_json::Value::as_u64).unwrap_or_else(|| panic!("no {pointer} in {value}"))
}

fn str_at<'a>(value: &'a serde_json::Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(serde_json::Value::as_str).unwrap_or_else(|| panic!("no {pointer} in {value}"))
}

/// Checks a `memo status --output json --partitions` document of a healthy cluster of
/// `names`: every node listed once, itself as `self`, the partition counts adding up,
/// and every partition's primary the first of its distinct replicas.
fn check_status(status: &serde_json::Value, me: &str, names: &[&str]) {
    assert_eq!(str_at(status, "/node"), me);
    let partitions = u64_at(status, "/cluster/partitions");
    let replication = u64_at(status, "/cluster/replication");
    let nodes = status["nodes"].as_array().expect("a node list");
    let listed: Vec<&str> = nodes.iter().map(|n| str_at(n, "/name")).collect();
    assert_eq!(listed, names, "{status}");
    for node in nodes {
        let link = str_at(node, "/link");
        let expected: &[&str] = if str_at(node, "/name") == me { &["self"] } else { &["connecting", "connected"] };
        assert!(expected.contains(&link), "{node}");
        assert_eq!(node["suspected"], false, "{node}");
    }
    let sum = |field: &str| nodes.iter().map(|n| u64_at(n, field)).sum::<u64>();
    assert_eq!(sum("/primary_partitions"), partitions, "{status}");
    assert_eq!(sum("/replica_partitions"), partitions * replication.min(names.len() as u64), "{status}");

    let table = status["partitions"].as_array().expect("partitions, as asked");
    assert_eq!(table.len() as u64, partitions);
    for (i, partition) in table.iter().enumerate() {
        assert_eq!(u64_at(partition, "/id"), i as u64);
        let replicas: Vec<&str> =
            partition["replicas"].as_array().expect("replicas").iter().filter_map(|r| r.as_str()).collect();
        let mut distinct = replicas.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), replicas.len(), "{partition}");
        assert!(replicas.iter().all(|r| names.contains(r)), "{partition}");
        assert_eq!(replicas.first().copied(), Some(str_at(partition, "/primary")), "{partition}");
    }
    assert!(u64_at(status, "/stats/durable_batch") >= 1, "the restart batch is durable: {status}");
}

#[test]
fn memo_status_shows_the_cluster_as_each_node_sees_it_in_text_and_json() {
    let started = Instant::now();
    let (_dev, endpoints) = memo_dev();
    for (i, endpoint) in endpoints.iter().enumerate() {
        let me = format!("n{}", i + 1);
        let status = memo_json(&["status", "--endpoint", endpoint, "--output", "json", "--partitions"]);
        check_status(&status, &me, &["n1", "n2", "n3"]);
        assert_eq!(str_at(&status, "/listen_address"), endpoint.as_str());
    }

    // Without --partitions, no partition list.
    let status = memo_json(&["status", "--endpoint", &endpoints[0], "--output", "json"]);
    assert!(status.get("partitions").is_none(), "{status}");

    let text = memo(&["status", "--endpoint", &endpoints[1]]);
    assert!(text.status.success(), "{}", text.stderr);
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert!(lines[0].starts_with("node n2 (generation 0) listening on "), "{}", text.stdout);
    assert!(lines[1].ends_with(": 64 partitions, replication 3"), "{}", text.stdout);
    let header = lines.iter().position(|l| l.starts_with("NODE ")).expect("a node table");
    let header_words: Vec<&str> = lines[header].split_whitespace().collect();
    assert_eq!(header_words, ["NODE", "ADDRESS", "LINK", "QUEUED", "PRIMARY", "REPLICA", "NOTES"]);
    let n2: Vec<&str> = lines[header + 2].split_whitespace().collect();
    assert_eq!(&n2[..4], ["n2", endpoints[1].as_str(), "self", "-"], "{}", text.stdout);
    assert_eq!(n2[5], "64", "n2 holds a replica of every partition:\n{}", text.stdout);
    assert!(text.stdout.contains("\nrequests_in_flight "), "{}", text.stdout);

    let with_partitions = memo(&["status", "--endpoint", &endpoints[1], "--partitions"]);
    assert!(with_partitions.stdout.contains("PARTITION  EPOCH  PRIMARY  REPLICAS\n"), "{}", with_partitions.stdout);

    let unreachable = memo(&["status", "--endpoint", "127.0.0.1:1"]);
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(unreachable.stderr.starts_with("error: cannot connect to 127.0.0.1:1"), "{}", unreachable.stderr);
    let bad_output = memo(&["status", "--endpoint", &endpoints[0], "--output", "yaml"]);
    assert!(!bad_output.status.success() && bad_output.stderr.contains("yaml"), "{}", bad_output.stderr);
    assert!(started.elapsed() < TEST_TIMEOUT);
}

#[test]
fn memo_kv_list_prints_one_json_document() {
    let (_dev, endpoints) = memo_dev();
    let at = ["--endpoint", endpoints[0].as_str()];
    for key in ["dir/a", "dir/b", "hello"] {
        let ran = memo(&[&["kv", "upsert", key, "v"][..], &at].concat());
        assert!(ran.status.success(), "{}", ran.stderr);
    }
    let page = memo_json(&[&["kv", "list", "--output", "json", "--delimiter", "/"][..], &at].concat());
    assert_eq!(
        page,
        serde_json::json!({"items": ["hello"], "prefixes": ["dir/"], "truncated": false, "next_marker": null})
    );
    let page = memo_json(&[&["kv", "list", "--output", "json", "--max-keys", "2"][..], &at].concat());
    assert_eq!(
        page,
        serde_json::json!({"items": ["dir/a", "dir/b"], "prefixes": [], "truncated": true, "next_marker": "dir/b"})
    );
    let empty = memo_json(&[&["kv", "list", "--output", "json", "--prefix", "none/"][..], &at].concat());
    assert_eq!(empty, serde_json::json!({"items": [], "prefixes": [], "truncated": false, "next_marker": null}));
}

/// A fresh directory for one test's files.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the scratch dir");
    dir
}

#[test]
fn memo_node_run_serves_with_a_config_file_whose_settings_flags_override() {
    let dir = scratch_dir("node-run-config");
    let (in_file, on_flag) = (free_port(), free_port());
    let config = dir.join("memo.toml");
    let text = format!(
        "id = \"n1\"\nlisten = \"{in_file}\"\ninitial_nodes = [\"n1={on_flag}\"]\n\
         partitions = 16\nreplication = 1\ncluster_token = \"config-test\"\nlog_format = \"json\"\n"
    );
    std::fs::write(&config, text).expect("the config file writes");
    let child = Command::new(env!("CARGO_BIN_EXE_memo"))
        .args(["node", "run", "--config"])
        .arg(&config)
        .args(["--listen", &on_flag.to_string(), "--partitions", "32"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("memo node run starts");
    let mut node = ChildGuard(child);

    // It serves on the flag's address, with the flag's partition count.
    let endpoint = on_flag.to_string();
    let deadline = Instant::now() + NODE_START_STOP_TIMEOUT;
    let status = loop {
        let ran = memo(&["status", "--endpoint", &endpoint, "--output", "json", "--partitions"]);
        if ran.status.success() {
            break serde_json::from_str::<serde_json::Value>(&ran.stdout).expect("JSON");
        }
        assert!(Instant::now() < deadline, "the node did not serve in time: {}", ran.stderr);
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(u64_at(&status, "/cluster/partitions"), 32);
    assert_eq!(u64_at(&status, "/cluster/replication"), 1);
    assert_eq!(str_at(&status, "/listen_address"), endpoint);
    check_status(&status, "n1", &["n1"]);
    let upsert = memo(&["kv", "upsert", "--endpoint", &endpoint, "k", "v"]);
    assert!(upsert.status.success(), "{}", upsert.stderr);
    assert_eq!(memo(&["kv", "get", "--endpoint", &endpoint, "k"]).stdout, "v\n");

    // SIGTERM stops it with exit code 0; its logs are JSON, as the file says.
    let pid = node.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs").success());
    let exit = common::wait_exit(&mut node.0, NODE_START_STOP_TIMEOUT).expect("the node stops after SIGTERM");
    assert!(exit.success(), "{exit:?}");
    let mut logs = String::new();
    node.0.stderr.take().expect("piped stderr").read_to_string(&mut logs).expect("the logs read");
    let first = logs.lines().next().unwrap_or_default();
    assert!(first.starts_with('{'), "not JSON logs:\n{logs}");
}

#[test]
fn memo_node_run_refuses_a_config_file_it_cannot_use_with_one_clear_line() {
    let dir = scratch_dir("node-run-bad-config");
    let listen = free_port();
    let good = format!("id = \"n1\"\nlisten = \"{listen}\"\ninitial_nodes = [\"n1={listen}\"]\n");
    let cases = [
        ("unknown-key.toml", format!("{good}listen_addr = \"{listen}\"\n"), ", line 4: unknown field `listen_addr`"),
        ("malformed.toml", format!("{good}partitions = \n"), ", line 4: "),
        ("wrong-type.toml", format!("{good}partitions = \"many\"\n"), ", line 4: invalid type: string"),
    ];
    for (name, text, expected) in cases {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("the config file writes");
        let ran = memo(&["node", "run", "--config", &path.to_string_lossy()]);
        assert_eq!(ran.status.code(), Some(1), "{name}: {}", ran.stderr);
        let wanted = format!("error: config file {}{expected}", path.display());
        assert!(ran.stderr.starts_with(&wanted), "{name}: {}", ran.stderr);
        assert_eq!(ran.stderr.lines().count(), 1, "{name}: {}", ran.stderr);
    }
    let missing = dir.join("missing.toml");
    let ran = memo(&["node", "run", "--config", &missing.to_string_lossy()]);
    assert_eq!(ran.status.code(), Some(1));
    let wanted = format!("error: cannot read the config file {}: ", missing.display());
    assert!(ran.stderr.starts_with(&wanted), "{}", ran.stderr);
}
