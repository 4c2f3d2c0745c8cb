//! One simulated run: build the cluster, a safety phase (workload + faults), a liveness
//! phase (heal, every operation must succeed, replicas converge), then the checkers.
//!
//! Entry points:
//! - [`check`]: for a `#[madsim::test]`: runs the scenario with the runtime's seed in a
//!   child process ([`crate::child`]), and on failure prints the seed, the options, the
//!   failures and the replay command, writes the timeline under
//!   `target/sim-timelines/`, and panics;
//! - [`crate::child::run_seed`]: one seed in a child process, for loops over seeds;
//! - [`run`]: the simulation itself, inside the current madsim runtime;
//! - [`run_in_fresh_runtime`]: [`run`] in a new runtime on its own OS thread.

use crate::check::{Failure, check_linearizable, check_lists, check_versions};
use crate::cluster::Cluster;
use crate::faults::run_episode;
use crate::history::{Counts, Recorder};
use crate::options::{Scenario, SimOptions};
use crate::storage::DiskStats;
use crate::workload::Client;
use madsim::runtime::Handle;
use memo_engine::placement::partition_of;
use memo_engine::storage::{decode_register, register_key};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, sleep};

/// Time for the nodes to start before the workload begins.
pub const STARTUP: Duration = Duration::from_secs(1);
/// Quiet time after the final heal, beyond the engine's request timeout, before the
/// liveness workload (restarted nodes come up, in-flight requests end).
pub const HEAL_SETTLE: Duration = Duration::from_secs(2);
/// Quiet time after the final writes before the replicas are compared. Longer than
/// madsim's stream retry backoff (capped at 10 s): a message that hit a cut link blocks
/// its stream until the next retry, even after the link healed, and a Commit to a lagging
/// replica may sit behind it.
pub const CONVERGE_SETTLE: Duration = Duration::from_secs(12);

/// What a run found.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The derived options.
    pub options: SimOptions,
    /// Every failed check (empty: the run passed).
    pub failures: Vec<Failure>,
    /// Findings that do not fail the run: late writes ([`Failure::LateWrite`]) unless
    /// `MEMO_SIM_STRICT=1`.
    pub warnings: Vec<Failure>,
    /// The timeline.
    pub timeline: String,
    /// FNV-1a of the timeline.
    pub hash: u64,
    /// Outcome counts.
    pub counts: Counts,
    /// Simulated time of the whole run.
    pub simulated: Duration,
    /// Linearizability search states explored.
    pub states_explored: u64,
    /// Disk counters summed over the nodes.
    pub disks: DiskStats,
    /// Partitions whose config changed during the run (a node was evicted or came back),
    /// and the highest epoch any reached.
    pub moved: (u32, u64),
}

impl RunReport {
    /// The report of a run that produced nothing but `failure`.
    pub fn crashed(options: SimOptions, failure: Failure) -> RunReport {
        RunReport {
            options,
            failures: vec![failure],
            warnings: Vec::new(),
            timeline: String::new(),
            hash: 0,
            counts: Counts::default(),
            simulated: Duration::ZERO,
            states_explored: 0,
            disks: DiskStats::default(),
            moved: (0, 1),
        }
    }

    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// Whether the linearizability checker proved a violation.
    pub fn not_linearizable(&self) -> bool {
        self.failures.iter().any(|f| matches!(f, Failure::NotLinearizable(_)))
    }

    /// Whether a versioning read broke a rule of `check_versions`.
    pub fn versions_broken(&self) -> bool {
        self.failures.iter().any(|f| matches!(f, Failure::Versions(_)))
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        format!("MADSIM_TEST_SEED={} cargo simtest -p memo-sim-scenarios {}", self.options.seed, self.options.scenario)
    }

    /// A summary that depends only on the seed's options and the verdict, stable enough
    /// to snapshot (no timings, no counts that move when node code changes).
    pub fn summary(&self) -> String {
        let mut s = self.options.to_string();
        let verdict = if self.passed() {
            "PASS".to_string()
        } else {
            let kinds: Vec<&str> = self.failures.iter().map(Failure::kind).collect();
            format!("FAIL ({})", kinds.join(", "))
        };
        let _ = writeln!(s, "verdict: {verdict}");
        if !self.warnings.is_empty() {
            let kinds: Vec<&str> = self.warnings.iter().map(Failure::kind).collect();
            let _ = writeln!(s, "warnings: {}", kinds.join(", "));
        }
        s
    }

    /// One line of numbers for logs.
    pub fn stats_line(&self) -> String {
        let c = &self.counts;
        format!(
            "{} seed {}: {} nodes, k={}, {:.1}s simulated, {} ops ({} definite, {} unknown), {} lists ({} ok), {} faults, {} crashes ({} unsynced batches lost, {} kept), {} partitions moved (epoch up to {}), {} lincheck states, {} warnings, hash {:016x}",
            self.options.scenario,
            self.options.seed,
            self.options.nodes,
            self.options.replication,
            self.simulated.as_secs_f64(),
            c.ops,
            c.definite,
            c.unknown,
            c.lists,
            c.lists_ok,
            c.faults,
            self.disks.crashes,
            self.disks.lost_batches,
            self.disks.kept_batches,
            self.moved.0,
            self.moved.1,
            self.states_explored,
            self.warnings.len(),
            self.hash
        )
    }

    /// Writes the timeline (headed by the options and failures) under
    /// `target/sim-timelines/`; returns its path.
    pub fn write_timeline(&self) -> std::io::Result<PathBuf> {
        let dir = timeline_dir();
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}-{}.txt", self.options.scenario, self.options.seed));
        let mut text = format!("{}\nreplay: {}\n{}\n", self.options, self.replay_command(), self.stats_line());
        for f in &self.failures {
            let _ = writeln!(text, "\nFAILED {f}");
        }
        for w in &self.warnings {
            let _ = writeln!(text, "\nWARNING {w}");
        }
        text.push_str("\n--- timeline (simulated seconds) ---\n");
        text.push_str(&self.timeline);
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// The failure report printed before a test panics.
    pub fn failure_report(&self) -> String {
        let mut s = String::from("\n==== memo simulation FAILED ====\n");
        let _ = writeln!(s, "{}", self.options);
        let _ = writeln!(s, "replay: {}", self.replay_command());
        let _ = writeln!(s, "{}", self.stats_line());
        for f in &self.failures {
            let _ = writeln!(s, "\n{f}");
        }
        match self.write_timeline() {
            Ok(path) => {
                let _ = writeln!(s, "\ntimeline: {}", path.display());
            }
            Err(e) => {
                let _ = writeln!(s, "\n(could not write the timeline: {e})");
            }
        }
        s
    }
}

/// Where timelines go: `target/sim-timelines/` of the workspace.
pub fn timeline_dir() -> PathBuf {
    let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir.parent().unwrap_or(crate_dir).join("target").join("sim-timelines")
}

/// Runs `scenario` in the current madsim runtime with its seed.
pub async fn run(scenario: &Scenario) -> RunReport {
    let seed = Handle::current().seed();
    let options = Arc::new(SimOptions::derive(scenario, seed));
    println!("{options}");
    run_options(options).await
}

/// Runs `scenario` with the current runtime's seed in a child process, then fails loudly
/// (seed, options, failures, replay command, timeline file). Set `MEMO_SIM_TIMELINE=1` to
/// write the timeline of passing runs too. Under `MADSIM_TEST_CHECK_DETERMINISM`, madsim
/// calls this twice per seed; the second call also compares the two event histories.
pub async fn check(scenario: Scenario) {
    let seed = seed_for(&scenario);
    let report =
        if crate::child::in_process() { run(&scenario).await } else { crate::child::run_seed(&scenario, seed) };
    println!("{}", report.stats_line());
    compare_with_an_earlier_run(&report);
    if !report.passed() {
        panic!("{}", report.failure_report());
    }
    for w in &report.warnings {
        println!("WARNING (not fatal; MEMO_SIM_STRICT=1 makes it so) {w}");
    }
    if (std::env::var_os("MEMO_SIM_TIMELINE").is_some() || !report.warnings.is_empty())
        && let Ok(path) = report.write_timeline()
    {
        println!("timeline: {}", path.display());
    }
}

/// The seed [`check`] runs: the runtime's (madsim's) when `MADSIM_TEST_SEED`,
/// `MADSIM_TEST_NUM` or `MEMO_SIM_RANDOM_SEED` is set, else the scenario's fixed default
/// seed, so that a plain `cargo simtest` is the same run every time (sweeps explore).
pub fn seed_for(scenario: &Scenario) -> u64 {
    let explicit = ["MADSIM_TEST_SEED", "MADSIM_TEST_NUM", "MEMO_SIM_RANDOM_SEED"];
    if explicit.iter().any(|v| std::env::var_os(v).is_some()) {
        Handle::current().seed()
    } else {
        scenario.default_seed()
    }
}

/// Under `MADSIM_TEST_CHECK_DETERMINISM` (madsim runs each seed twice in one process):
/// panics if this run's history differs from an earlier run of the same scenario and seed.
fn compare_with_an_earlier_run(report: &RunReport) {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    static SEEN: Mutex<BTreeMap<(&'static str, u64), u64>> = Mutex::new(BTreeMap::new());
    if std::env::var_os("MADSIM_TEST_CHECK_DETERMINISM").is_none() {
        return;
    }
    let key = (report.options.scenario, report.options.seed);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    match seen.get(&key) {
        Some(&earlier) => assert_eq!(
            earlier, report.hash,
            "non-determinism: seed {} of {} produced two different event histories",
            key.1, key.0
        ),
        None => {
            seen.insert(key, report.hash);
        }
    }
}

/// Runs `scenario` with `seed` in a fresh runtime on its own OS thread, in this process
/// (madsim keeps per-thread state, so one runtime per thread). See [`crate::child`] for
/// why loops over seeds should use [`crate::child::run_seed`] instead.
pub fn run_in_fresh_runtime(scenario: &Scenario, seed: u64) -> RunReport {
    let scenario = scenario.clone();
    std::thread::spawn(move || {
        let runtime = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        runtime.block_on(async move { run(&scenario).await })
    })
    .join()
    .unwrap_or_else(|panic| {
        eprintln!("note: the run with seed {seed} panicked");
        std::panic::resume_unwind(panic)
    })
}

async fn run_options(opts: Arc<SimOptions>) -> RunReport {
    let rec = Recorder::new();
    rec.note("PHASE", format!("start: {} nodes, {} clients", opts.nodes, opts.clients));
    let cluster = Cluster::build(opts.clone(), rec.clone());
    sleep(STARTUP).await;
    let mut failures = Vec::new();
    if let Err(f) = set_policies(&cluster).await {
        failures.push(f);
    }

    safety_phase(&cluster).await;
    match liveness_phase(&cluster).await {
        Ok(found) => failures.extend(found),
        Err(f) => failures.push(f),
    }
    rec.note("PHASE", "end; checking");

    let ops = rec.operations();
    let states_explored = match check_linearizable(&ops) {
        Ok(states) => states,
        Err(f) => {
            failures.push(f);
            0
        }
    };
    failures.extend(check_lists(&ops, &rec.lists()).into_iter().map(Failure::List));
    let keep = |key: &str| opts.keep_of(key);
    failures.extend(check_versions(&ops, &rec.versions(), keep).into_iter().map(Failure::Versions));
    failures.extend(rec.anomalies().into_iter().map(Failure::Anomaly));
    let strict = std::env::var_os("MEMO_SIM_STRICT").is_some();
    let (warnings, failures) = failures.into_iter().partition(|f| matches!(f, Failure::LateWrite(_)) && !strict);
    let mut disks = DiskStats::default();
    for s in &cluster.servers {
        let d = s.disk.stats();
        disks.batches += d.batches;
        disks.syncs += d.syncs;
        disks.crashes += d.crashes;
        disks.lost_batches += d.lost_batches;
        disks.kept_batches += d.kept_batches;
        disks.fenced_calls += d.fenced_calls;
    }
    RunReport {
        options: (*opts).clone(),
        failures,
        warnings,
        timeline: rec.timeline(),
        hash: rec.hash(),
        counts: rec.counts(),
        simulated: Duration::from_nanos(rec.now()),
        states_explored,
        disks,
        moved: moved_partitions(&cluster),
    }
}

/// The most a stored value may decode to in the convergence check (the engine's
/// default value limit).
const VALUE_DECODE_LIMIT: usize = 1 << 20;

/// How long setting a scenario's policy rules may take before the run fails.
const POLICY_SET_BOUND: Duration = Duration::from_secs(20);

/// Sets the scenario's policy-table rules through node 1, from client 0's host, before
/// the workload starts (no fault runs yet); each must be confirmed by every member.
async fn set_policies(cluster: &Arc<Cluster>) -> Result<(), Failure> {
    use memo_proto::admin::{PolicyRule, PolicySetRequest, admin_client::AdminClient};
    let until = Instant::now() + POLICY_SET_BOUND;
    for rule in &cluster.opts.policies {
        let request = PolicySetRequest {
            rule: Some(PolicyRule {
                prefix: rule.prefix.to_string(),
                compression: rule.compression.to_string(),
                encryption: rule.encrypt,
                versions: u64::from(rule.versions),
            }),
        };
        loop {
            let addr = crate::cluster::server_addr(0);
            let request = request.clone();
            let answer = cluster.clients[0].spawn(async move {
                let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("a valid URI");
                let mut admin = AdminClient::new(endpoint.connect_lazy());
                let call = admin.policy_set(request);
                match tokio::time::timeout(Duration::from_secs(5), call).await {
                    Ok(Ok(answer)) => Ok(answer.into_inner()),
                    Ok(Err(status)) => Err(status.to_string()),
                    Err(_) => Err("no answer in 5 s".to_string()),
                }
            });
            match answer.await.expect("the admin call's task") {
                Ok(answer) if answer.unconfirmed.is_empty() => {
                    cluster.rec.note("POLICY", format!("{rule:?} set, revision {}", answer.revision));
                    break;
                }
                outcome if Instant::now() >= until => {
                    return Err(Failure::Anomaly(format!("policy rule {rule:?} not set and confirmed: {outcome:?}")));
                }
                _ => sleep(Duration::from_millis(200)).await,
            }
        }
    }
    Ok(())
}

/// Clients run the workload while the fault episodes play out.
async fn safety_phase(cluster: &Arc<Cluster>) {
    let opts = &cluster.opts;
    let origin = Instant::now();
    cluster
        .rec
        .note("PHASE", format!("safety for {}ms, {} fault episodes", opts.safety.as_millis(), opts.schedule.len()));
    let episodes: Vec<_> = (opts.schedule.iter().enumerate())
        .map(|(e, episode)| tokio::spawn(run_episode(cluster.clone(), e as u64, origin, episode.clone())))
        .collect();
    let clients: Vec<_> = (0..opts.clients)
        .map(|c| {
            let client = Client::new(c, opts.clone(), cluster.rec.clone());
            cluster.clients[c].spawn(client.run_until(origin + opts.safety))
        })
        .collect();
    for c in clients {
        c.await.expect("a client task finishes");
    }
    for e in episodes {
        e.await.expect("a fault episode finishes");
    }
}

/// Heal; every client operation must then succeed within a bound; after a final write
/// per key, the members' durable registers must agree.
async fn liveness_phase(cluster: &Arc<Cluster>) -> Result<Vec<Failure>, Failure> {
    let opts = &cluster.opts;
    let rec = &cluster.rec;
    cluster.heal();
    sleep(opts.engine.request_timeout + HEAL_SETTLE).await;
    rec.note("PHASE", "liveness");
    let bound = opts.liveness_bound();
    let clients: Vec<_> = (0..opts.clients)
        .map(|c| {
            let client = Client::new(c, opts.clone(), rec.clone());
            cluster.clients[c].spawn(client.run_liveness(opts.liveness_ops, bound))
        })
        .collect();
    for c in clients {
        c.await.expect("a client task finishes").map_err(Failure::Liveness)?;
    }
    rec.note("PHASE", "final writes");
    let last = opts.clients;
    let writer = Client::new(last, opts.clone(), rec.clone());
    let finals = cluster.clients[last]
        .spawn(writer.final_writes(opts.key_names(), bound))
        .await
        .expect("the final writer finishes")
        .map_err(Failure::Liveness)?;
    sleep(CONVERGE_SETTLE).await;
    rec.note("PHASE", "comparing replicas");
    Ok(check_convergence(cluster, &finals))
}

/// The newest config of partition `p` any server's disk holds, if it ever moved.
fn newest_config(cluster: &Cluster, p: u32) -> Option<memo_engine::placement::PartitionConfig> {
    let key = memo_engine::storage::config_key(p);
    (0..cluster.opts.nodes)
        .filter_map(|i| cluster.servers[i].disk.durable_get(&key))
        .filter_map(|b| postcard::from_bytes::<memo_engine::placement::PartitionConfig>(&b).ok())
        .max_by_key(|c| c.epoch)
}

/// How many partitions moved, and the highest epoch.
fn moved_partitions(cluster: &Cluster) -> (u32, u64) {
    let configs: Vec<_> = (0..cluster.opts.partitions).filter_map(|p| newest_config(cluster, p)).collect();
    (configs.len() as u32, configs.iter().map(|c| c.epoch).max().unwrap_or(1))
}

/// The acceptors of partition `p` in the newest config any server's disk holds (the
/// founding config if none moved it).
fn current_members(cluster: &Cluster, p: u32) -> Vec<usize> {
    let opts = &cluster.opts;
    match newest_config(cluster, p) {
        Some(config) => config.acceptors().iter().map(|m| opts.index_of(m)).collect(),
        None => opts.partition_map().config(p).members.iter().map(|m| opts.index_of(m)).collect(),
    }
}

/// Every member of each key's partition holds the same accepted ballot and state
/// ([`Failure::NotConverged`] otherwise), and that state is the key's final value
/// ([`Failure::LateWrite`] otherwise).
fn check_convergence(cluster: &Cluster, finals: &[(String, Vec<u8>)]) -> Vec<Failure> {
    let opts = &cluster.opts;
    let keys = opts.policies.iter().any(|r| r.encrypt).then(|| Arc::new(crate::cluster::sim_keyring([0; 32])));
    let decoder = memo_node::policy::table::Policies::open(Default::default(), None, keys).expect("no file to load");
    let mut failures = Vec::new();
    for (key, value) in finals {
        let p = partition_of(key.as_bytes(), opts.partitions);
        let silo_key = register_key(p, key.as_bytes());
        let members = current_members(cluster, p);
        let accepted: Vec<_> = (members.iter())
            .map(|&i| {
                let bytes = cluster.servers[i].disk.durable_get(&silo_key);
                bytes.map(|b| decode_register(&b).map(|r| r.accepted))
            })
            .collect();
        let first = &accepted[0];
        let agree = accepted.iter().all(|a| a == first);
        // What a client would read: the stored value decoded by its own encoding.
        let decoded: Option<Option<Vec<u8>>> = match first {
            Some(Ok(Some(a))) => a.state.as_ref().map(|s| {
                s.stored().map(|v| {
                    decoder
                        .decode(key, v, VALUE_DECODE_LIMIT)
                        .unwrap_or_else(|e| format!("<undecodable: {e}>").into_bytes())
                })
            }),
            _ => None,
        };
        let state = decoded.as_ref().map(|s| s.as_deref());
        if agree && state == Some(Some(value.as_slice())) {
            continue;
        }
        let views: Vec<String> = (0..opts.nodes)
            .map(|i| {
                let disk = &cluster.servers[i].disk;
                let role = if members.contains(&i) { "member" } else { "not a member" };
                let durable = describe_register(disk.durable_get(&silo_key));
                let current = describe_register(disk.current_get(&silo_key));
                format!("n{} ({role}): durable {durable}; current {current}", i + 1)
            })
            .collect();
        let final_value = String::from_utf8_lossy(value);
        let views = views.join("\n    ");
        if !agree {
            failures.push(Failure::NotConverged(format!(
                "key {key:?} (final value {final_value:?}): the members disagree:\n    {views}"
            )));
            continue;
        }
        let ops = cluster.rec.operations();
        if let Some(Some(v)) = state
            && let Some((i, op)) = writer(&ops, key, v)
            && matches!(op.outcome, memo_lincheck::Outcome::Fenced | memo_lincheck::Outcome::Aborted)
        {
            // Its answer promised it would not take effect after it: not a warning.
            failures.push(Failure::NotLinearizable(format!(
                "key {key:?}: the final write {final_value:?} was acknowledged, then replaced by {}, whose answer promised it never would:\n    {views}",
                describe_writer(i, op)
            )));
            continue;
        }
        let culprit = match state {
            Some(Some(v)) => writer_of(&ops, key, v),
            Some(None) => "a Delete".to_string(),
            None => "an identity round on an absent key, or nothing".to_string(),
        };
        failures.push(Failure::LateWrite(format!(
            "key {key:?}: the final write {final_value:?} was acknowledged, then replaced by {culprit}:\n    {views}"
        )));
    }
    failures
}

/// The recorded write that wrote `value` to `key` (values are unique), with its index.
fn writer<'a>(
    ops: &'a [memo_lincheck::Operation],
    key: &str,
    value: &[u8],
) -> Option<(usize, &'a memo_lincheck::Operation)> {
    ops.iter().enumerate().find(|(_, op)| {
        op.key == key
            && matches!(&op.command, memo_lincheck::Command::Insert(v) | memo_lincheck::Command::Update(v) | memo_lincheck::Command::Upsert(v) if v == value)
    })
}

fn describe_writer(i: usize, op: &memo_lincheck::Operation) -> String {
    format!(
        "#{i} {} by client c{}, invoked at {:.3}s, answered {} at {:.3}s",
        op.command,
        op.client,
        op.invoked_at as f64 / 1e9,
        op.outcome,
        op.completed_at as f64 / 1e9,
    )
}

/// Which recorded write wrote `value` to `key`, in words.
fn writer_of(ops: &[memo_lincheck::Operation], key: &str, value: &[u8]) -> String {
    match writer(ops, key, value) {
        Some((i, op)) => describe_writer(i, op),
        None => format!("{:?}, which no recorded write wrote", String::from_utf8_lossy(value)),
    }
}

/// `promised b / accepted b = "value"` (or tombstone, absent, undecodable), for reports.
fn describe_register(bytes: Option<Vec<u8>>) -> String {
    let Some(bytes) = bytes else { return "absent".to_string() };
    let register = match decode_register(&bytes) {
        Ok(r) => r,
        Err(e) => return format!("undecodable ({e})"),
    };
    let accepted = match &register.accepted {
        None => "nothing".to_string(),
        Some(a) => {
            let state = match &a.state {
                None => "absent".to_string(),
                Some(s) => match s.value() {
                    Some(v) => format!("{:?}", String::from_utf8_lossy(v)),
                    None => "tombstone".to_string(),
                },
            };
            let ops: Vec<String> = a.state.iter().flat_map(|s| s.recent()).map(|r| format!("{:?}", r.ballot)).collect();
            format!("{:?} = {state} (recent writes at {})", a.ballot, ops.join(" "))
        }
    };
    format!(
        "promised {:?} / accepted {accepted}{}",
        register.promised,
        if register.committed { " (committed)" } else { "" }
    )
}
