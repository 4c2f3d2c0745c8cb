//! Seeded fault runs of 3- and 5-node clusters through the deterministic harness, every
//! history checked for per-key linearizability.
//!
//! Premise: concurrent clients hammer a few keys (contention is the point) while the
//! network drops, duplicates and reorders messages, disks are slow, links are cut, and
//! nodes crash (losing every batch not yet durable) and restart. Tombstones are collected
//! after 50 ms, so GC races with everything else. Outcomes the client cannot know
//! (UNAVAILABLE, a crashed node) may or may not have taken effect. Then a liveness phase:
//! heal everything; every client operation must succeed within a few retries, and after a
//! final write to every key all replicas must hold the same register.

use memo_engine::kv::{Answer, Change};
use memo_engine::paxos::acceptor::Register;
use memo_engine::placement::partition_of;
use memo_engine::storage::{decode_register, register_key};
use memo_engine::testing::{Faults, Sim};
use memo_engine::{KvError, Request, RequestId, Response};
use memo_lincheck::{CheckError, Checker, Command, History, OpId as HOp, Outcome};
use std::collections::BTreeMap;
use std::time::Duration;

const KEYS: [&str; 3] = ["apple", "banana", "cherry"];

struct Client {
    node: usize,
    /// The request in flight: (request, its history entry, when to give up waiting).
    in_flight: Option<(RequestId, HOp)>,
    issued: u64,
}

struct Run {
    sim: Sim,
    clients: Vec<Client>,
    history: History,
    /// Request → client.
    owners: BTreeMap<RequestId, usize>,
}

fn tune(cfg: &mut memo_engine::Config) {
    cfg.gc_delay = Duration::from_millis(50);
    cfg.round_timeout = Duration::from_millis(100);
    cfg.forward_timeout = Duration::from_millis(200);
    cfg.request_timeout = Duration::from_millis(1500);
    cfg.primary_suspicion = Duration::from_millis(500);
    cfg.batch_writes_max = 3;
    cfg.register_cache_bytes_max = 2048;
}

fn tune_stale_reads(cfg: &mut memo_engine::Config) {
    tune(cfg);
    cfg.planted_bug = Some(memo_engine::config::PlantedBug::ReadFromOneReplica);
}

fn tune_ignored_promises(cfg: &mut memo_engine::Config) {
    tune(cfg);
    cfg.planted_bug = Some(memo_engine::config::PlantedBug::AcceptIgnoresPromise);
}

fn tune_never_happened(cfg: &mut memo_engine::Config) {
    tune(cfg);
    cfg.planted_bug = Some(memo_engine::config::PlantedBug::AbortClaimsNeverHappened);
}

fn tune_fence_without_marker(cfg: &mut memo_engine::Config) {
    tune(cfg);
    cfg.planted_bug = Some(memo_engine::config::PlantedBug::FenceWithoutMarker);
}

impl Run {
    fn new(nodes: usize, k: u32, clients: usize, seed: u64) -> Self {
        Self::tuned(nodes, k, clients, seed, tune)
    }

    fn tuned(nodes: usize, k: u32, clients: usize, seed: u64, tune: fn(&mut memo_engine::Config)) -> Self {
        let sim = Sim::with_config(nodes, 8, k, seed, Faults::hostile(), tune);
        let clients = (0..clients).map(|c| Client { node: c % nodes, in_flight: None, issued: 0 }).collect();
        Run { sim, clients, history: History::new(), owners: BTreeMap::new() }
    }

    fn now(&self) -> u64 {
        self.sim.now().as_nanos()
    }

    /// Gives every idle client a new random operation.
    fn issue(&mut self) {
        for c in 0..self.clients.len() {
            if self.clients[c].in_flight.is_some() {
                continue;
            }
            self.clients[c].issued += 1;
            let key = KEYS[(self.sim.random() % KEYS.len() as u64) as usize];
            let value = format!("c{c}-{}", self.clients[c].issued).into_bytes();
            let (req, cmd) = match self.sim.random() % 6 {
                0 => (Request::insert(key, value.clone()), Command::Insert(value)),
                1 => (Request::update(key, value.clone()), Command::Update(value)),
                2 => (Request::upsert(key, value.clone()), Command::Upsert(value)),
                3 => (Request::delete(key), Command::Delete),
                _ => (Request::fetch(key), Command::Fetch),
            };
            let op = self.history.invoke(c as u64, key, cmd, self.now());
            let node = self.clients[c].node;
            let id = self.sim.submit(node, req);
            self.owners.insert(id, c);
            self.clients[c].in_flight = Some((id, op));
        }
    }

    /// Records replies and lost requests. Returns the number of unknown outcomes.
    fn collect(&mut self) -> usize {
        let now = self.now();
        let mut unknown = 0;
        for (_, reply) in self.sim.take_replies() {
            let Some(c) = self.owners.remove(&reply.id) else { continue };
            let Some((_, op)) = self.clients[c].in_flight.take() else { continue };
            let outcome = match reply.result {
                Ok(Response::Done) => Outcome::Ok,
                Ok(Response::Value(v)) => Outcome::Value(v),
                Ok(Response::List(_)) => unreachable!("no List in this workload"),
                Err(KvError::AlreadyExists) => Outcome::AlreadyExists,
                Err(KvError::NotFound) => Outcome::NotFound,
                // The checker holds what the message promises: a fenced write took
                // effect before its answer or never (issue 9: filing it as unknown hid
                // a broken promise).
                Err(KvError::Unavailable(message)) => {
                    unknown += 1;
                    memo_lincheck::promise_of_unavailable(&message)
                }
                Err(e) => {
                    assert!(e.is_unknown_outcome() || matches!(e, KvError::ResourceExhausted(_)), "{e}");
                    unknown += 1;
                    Outcome::Unknown
                }
            };
            self.history.complete(op, outcome, now);
        }
        for (node, id) in self.sim.take_lost() {
            let Some(c) = self.owners.remove(&id) else { continue };
            let Some((_, op)) = self.clients[c].in_flight.take() else { continue };
            self.history.complete(op, Outcome::Unknown, now);
            // The client reconnects elsewhere.
            self.clients[c].node = (node + 1) % self.sim.len();
            unknown += 1;
        }
        unknown
    }

    fn safety_phase(&mut self, steps: usize) {
        let n = self.sim.len();
        for step in 0..steps {
            self.issue();
            self.sim.run_for(Duration::from_millis(5));
            self.collect();
            if step % 20 == 19 {
                self.fault(n);
            }
        }
    }

    fn fault(&mut self, n: usize) {
        let a = (self.sim.random() % n as u64) as usize;
        let b = (self.sim.random() % n as u64) as usize;
        match self.sim.random() % 6 {
            0 => self.sim.crash(a),
            1 => self.sim.restart(a),
            2 => self.sim.isolate(a),
            3 if a != b => self.sim.cut(a, b),
            _ => {
                self.sim.heal();
                for i in 0..n {
                    self.sim.restart(i);
                }
            }
        }
    }

    fn liveness_phase(&mut self, rounds: usize) {
        self.sim.heal();
        for i in 0..self.sim.len() {
            self.sim.restart(i);
        }
        self.sim.faults = Faults::none();
        // Let in-flight requests drain (their outcome may be unknown).
        self.sim.run_for(Duration::from_secs(3));
        self.collect();
        let mut failures = 0;
        for _ in 0..rounds {
            self.issue();
            self.sim.run_for(Duration::from_millis(50));
            failures += self.collect();
        }
        self.sim.run_for(Duration::from_secs(3));
        failures += self.collect();
        // Contention between clients may still make a write's outcome unknown (R6), but
        // with a healthy network that must be rare.
        assert!(failures * 10 <= rounds * self.clients.len(), "{failures} failures in the liveness phase");
        assert!(self.clients.iter().all(|c| c.in_flight.is_none()), "every request got an answer");
    }

    fn converge(&mut self) {
        for key in KEYS {
            let reply = self.sim.call(0, Request::upsert(key, "final"), Duration::from_secs(5));
            if !matches!(reply.as_ref().map(|r| &r.result), Some(Ok(Response::Done))) {
                for i in 0..self.sim.len() {
                    eprintln!("node {i}: {:?}", self.sim.node(i).map(|n| n.stats().clone()));
                }
            }
            assert_eq!(reply.map(|r| r.result), Some(Ok(Response::Done)), "final write of {key}");
        }
        self.sim.run_for(Duration::from_secs(2));
        for key in KEYS {
            let p = partition_of(key.as_bytes(), 8);
            let members = self.sim.node(0).unwrap().map().config(p).members.clone();
            let regs: Vec<Option<Register>> = members
                .iter()
                .map(|m| {
                    let i = self.sim.index_of(m);
                    self.sim
                        .storage(i)
                        .snapshot()
                        .get(&register_key(p, key.as_bytes()))
                        .map(|b| decode_register(b).unwrap())
                })
                .collect();
            // The committed flag lives in memory only (a lost flag costs a read fallback),
            // so convergence is about the accepted ballot and state.
            let first = regs[0].as_ref().map(|r| &r.accepted);
            for r in &regs {
                assert_eq!(r.as_ref().map(|r| &r.accepted), first, "replicas of {key} diverge");
            }
            let value = first.and_then(|a| a.as_ref()).and_then(|a| a.state.as_ref()).and_then(|s| s.value());
            assert_eq!(value, Some(&b"final"[..]), "{key} holds the final write everywhere");
        }
    }

    fn check(&self, seed: u64) {
        if let Err(e) = Checker::default().check(&self.history.operations()) {
            panic!("seed {seed}: {e}");
        }
    }

    /// Whether the checker proves a violation (running out of budget proves nothing).
    fn violated(&self) -> bool {
        matches!(Checker::default().check(&self.history.operations()), Err(CheckError::NotLinearizable(_)))
    }
}

fn run_seed(nodes: usize, k: u32, seed: u64) {
    let mut run = Run::new(nodes, k, 6, seed);
    run.safety_phase(300);
    run.liveness_phase(40);
    run.check(seed);
    run.converge();
    let _ = (Answer::Done, Change::Fetch);
}

/// The seeds to run: `MEMO_SEEDS` of them (default 12) from `base`.
#[allow(clippy::disallowed_methods)] // the seed count is test configuration, not engine input
fn seeds(base: u64) -> impl Iterator<Item = u64> {
    let n: u64 = std::env::var("MEMO_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(12);
    base..base + n
}

#[test]
fn three_nodes_stay_linearizable_under_loss_crashes_and_partitions() {
    for seed in seeds(1000) {
        run_seed(3, 3, seed);
    }
}

#[test]
fn five_nodes_with_three_replicas_stay_linearizable() {
    for seed in seeds(2000) {
        run_seed(5, 3, seed);
    }
}

#[test]
fn five_nodes_with_five_replicas_stay_linearizable() {
    for seed in seeds(3000) {
        run_seed(5, 5, seed);
    }
}

/// The checker has teeth: with a known bug planted in every node, the same fault runs
/// must find a violation within a bounded number of seeds.
fn finds_planted_bug(tune: fn(&mut memo_engine::Config)) -> u64 {
    finds_planted_bug_within(tune, 30)
}

fn finds_planted_bug_within(tune: fn(&mut memo_engine::Config), seeds: u64) -> u64 {
    for seed in 0..seeds {
        let mut run = Run::tuned(3, 3, 6, 9000 + seed, tune);
        run.safety_phase(300);
        if run.violated() {
            return seed;
        }
    }
    panic!("no violation found in {seeds} seeds: the harness or the checker lost its teeth");
}

#[test]
fn the_checker_finds_reads_answered_by_one_replica() {
    finds_planted_bug(tune_stale_reads);
}

#[test]
fn the_checker_finds_acceptors_that_ignore_their_promise() {
    finds_planted_bug(tune_ignored_promises);
}

/// Issue 9: an abort answered "it will never take effect" for a write that had taken
/// effect and been forgotten. The checker holds that promise, so it must find the bug.
#[test]
fn the_checker_finds_aborts_that_claim_the_write_never_happened() {
    finds_planted_bug(tune_never_happened);
}

/// A fenced answer without the abort marker that enforces it: the write may land later.
/// Rarer (a recovery must answer fenced while a copy of the write is still in flight):
/// found at seed 88 when written, so the bound is 200.
#[test]
fn the_checker_finds_fences_without_an_abort_marker() {
    finds_planted_bug_within(tune_fence_without_marker, 200);
}
