//! A small deterministic in-process harness: a seeded message pump over several engine
//! nodes that may delay, reorder, drop and duplicate messages, hold or cut links, make
//! persist batches durable after a delay, crash nodes (losing every batch not yet
//! durable) and restart them from their durable state. Each node's clock is the global
//! simulated time plus a per-node offset. One seed drives every choice, so a failing run
//! replays exactly. It is the engine's unit-level test bed (and the benchmarks' driver);
//! the madsim simulator is the system-level one.

use crate::config::{ClusterParams, Config};
use crate::ids::NodeId;
use crate::message::Envelope;
use crate::node::{Node, Reply, Request, RequestId};
use crate::storage::{MemoryStorage, PersistBatch, Storage};
use crate::time::Instant;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Network and disk behaviour of a [`Sim`].
#[derive(Clone, Debug)]
pub struct Faults {
    /// Probability that a message is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// One-way message latency range (uniform); a wide range reorders.
    pub latency: (Duration, Duration),
    /// Time from a batch's emission to its durability (uniform).
    pub fsync: (Duration, Duration),
    /// Probability that a message stalls: it takes a latency drawn from `stall_latency`
    /// instead (a TCP retransmission, a paused sender), so it overtakes nothing sent
    /// after it on time. Zero draws nothing from the seed.
    pub stall: f64,
    /// Latency range of a stalled message (uniform).
    pub stall_latency: (Duration, Duration),
}

impl Faults {
    /// A perfect network: no loss, fixed small latency, fast disk.
    pub fn none() -> Self {
        Faults {
            drop: 0.0,
            duplicate: 0.0,
            latency: (Duration::from_micros(100), Duration::from_micros(100)),
            fsync: (Duration::from_micros(50), Duration::from_micros(50)),
            stall: 0.0,
            stall_latency: (Duration::ZERO, Duration::ZERO),
        }
    }

    /// A lossy, reordering, duplicating network and a slow, jittery disk.
    pub fn hostile() -> Self {
        Faults {
            drop: 0.05,
            duplicate: 0.05,
            latency: (Duration::from_micros(50), Duration::from_millis(20)),
            fsync: (Duration::from_micros(50), Duration::from_millis(5)),
            stall: 0.0,
            stall_latency: (Duration::ZERO, Duration::ZERO),
        }
    }

    /// [`Faults::hostile`], where some messages also stall for up to most of a round
    /// timeout: the long tail that lets a message sent before a move arrive after it.
    pub fn stalling(stall: f64, stall_latency: (Duration, Duration)) -> Self {
        Faults { stall, stall_latency, ..Faults::hostile() }
    }
}

/// What to do with one message, decided by a test's filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver as usual.
    Deliver,
    /// Lose it.
    Drop,
    /// Keep it aside until [`Sim::release_held`].
    Hold,
    /// Deliver it, and keep a copy aside (a duplicate to replay later).
    DeliverAndHold,
}

/// A message filter: `(from, to, envelope) -> verdict`.
pub type Filter = Box<dyn FnMut(usize, usize, &Envelope) -> Verdict>;

enum Event {
    Deliver { to: usize, from: usize, envelope: Box<Envelope> },
    Durable { node: usize, life: u64, batch: PersistBatch },
}

struct Slot {
    node: Option<Node<Arc<MemoryStorage>>>,
    storage: Arc<MemoryStorage>,
    /// Bumped on every crash; stale durability events of an older life are ignored.
    life: u64,
    skew: Duration,
    /// When the last emitted batch becomes durable: batches are durable in order.
    durable_at: Instant,
    /// Client requests submitted here and not yet answered.
    in_flight: BTreeSet<RequestId>,
    /// A bug planted in this node from its next start on.
    bug: Option<crate::config::PlantedBug>,
    /// Killed for good: [`Sim::restart`] leaves it down.
    gone: bool,
}

/// The harness. See the module docs.
pub struct Sim {
    ids: Vec<NodeId>,
    params: ClusterParams,
    slots: Vec<Slot>,
    events: BTreeMap<(Instant, u64), Event>,
    seq: u64,
    now: Instant,
    rng: ChaCha8Rng,
    /// Network and disk behaviour; may be changed between steps.
    pub faults: Faults,
    cut: BTreeSet<(usize, usize)>,
    filter: Option<Filter>,
    held: Vec<(usize, usize, Envelope)>,
    replies: VecDeque<(usize, Reply)>,
    lost: Vec<(usize, RequestId)>,
    next_request: u64,
    tune: fn(&mut Config),
    /// The live nodes every node is told about (`None`: membership never reported).
    membership: Option<Vec<NodeId>>,
    /// Nodes of the initial list; later ones joined.
    founders: usize,
    /// SWIM runs on every node, with this eviction delay ([`Sim::with_swim`]).
    swim: Option<Duration>,
    /// Messages delivered so far.
    pub delivered: u64,
    /// Persist batches emitted so far, all nodes together.
    pub batches: u64,
}

impl Sim {
    /// `n` nodes named `n0..`, `partitions` partitions, replication `k`, seeded.
    pub fn new(n: usize, partitions: u32, k: u32, seed: u64, faults: Faults) -> Self {
        Self::with_config(n, partitions, k, seed, faults, |_| {})
    }

    /// Like [`Sim::new`], with `tune` applied to every node's config (at every start).
    pub fn with_config(n: usize, partitions: u32, k: u32, seed: u64, faults: Faults, tune: fn(&mut Config)) -> Self {
        let ids: Vec<NodeId> = (0..n).map(|i| NodeId::initial(format!("n{i}"))).collect();
        let params = ClusterParams { partitions, replication: k, initial_nodes: ids.clone(), token: "sim".into() };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let slots = (0..n)
            .map(|_| Slot {
                node: None,
                storage: Arc::new(MemoryStorage::new()),
                life: 0,
                skew: Duration::from_micros(rng.next_u64() % 1_000_000),
                durable_at: Instant::ZERO,
                in_flight: BTreeSet::new(),
                bug: None,
                gone: false,
            })
            .collect();
        let mut sim = Sim {
            ids,
            params,
            slots,
            events: BTreeMap::new(),
            seq: 0,
            now: Instant::from_nanos(1_000_000_000),
            rng,
            faults,
            cut: BTreeSet::new(),
            filter: None,
            held: Vec::new(),
            replies: VecDeque::new(),
            lost: Vec::new(),
            next_request: 0,
            tune,
            membership: None,
            founders: n,
            swim: None,
            delivered: 0,
            batches: 0,
        };
        for i in 0..n {
            sim.start(i);
        }
        sim
    }

    fn start(&mut self, i: usize) {
        let mut cfg = Config::new(self.ids[i].clone(), self.params.clone());
        cfg.join = i >= self.founders;
        if let Some(eviction_delay) = self.swim {
            // Founders know each other; a node that joins knows node 0 only.
            let seeds = if i < self.founders { (0..self.founders).collect() } else { vec![0] };
            let seeds = seeds.into_iter().filter(|&j| j != i).map(|j| self.swim_member(j)).collect();
            let mut m = crate::membership::MembershipConfig::new(format!("sim:{i}"), seeds);
            m.eviction_delay = eviction_delay;
            m.probe_period = Duration::from_millis(100);
            cfg.membership = Some(m);
        }
        (self.tune)(&mut cfg);
        if let Some(bug) = self.slots[i].bug {
            cfg.planted_bug = Some(bug);
        }
        let seed = self.rng.next_u64();
        let now = self.local_now(i);
        // The harness only builds valid configs over readable memory storage.
        let mut node = Node::new(cfg, self.slots[i].storage.clone(), seed, now).expect("node starts");
        if let Some(live) = &self.membership {
            node.handle_membership(live.clone(), now);
        }
        self.slots[i].node = Some(node);
        self.drain(i);
    }

    /// Like [`Sim::with_config`], with SWIM on every node (probes every 100 ms) and this
    /// eviction delay: the live set comes from failure detection, not from
    /// [`Sim::set_membership`].
    pub fn with_swim(
        n: usize,
        partitions: u32,
        k: u32,
        seed: u64,
        faults: Faults,
        tune: fn(&mut Config),
        eviction_delay: Duration,
    ) -> Self {
        let mut sim = Self::with_config(0, partitions, k, seed, faults, tune);
        sim.swim = Some(eviction_delay);
        sim.founders = n;
        sim.ids = (0..n).map(|i| NodeId::initial(format!("n{i}"))).collect();
        sim.params.initial_nodes = sim.ids.clone();
        for _ in 0..n {
            let skew = Duration::from_micros(sim.rng.next_u64() % 1_000_000);
            sim.slots.push(Slot {
                node: None,
                storage: Arc::new(MemoryStorage::new()),
                life: 0,
                skew,
                durable_at: Instant::ZERO,
                in_flight: BTreeSet::new(),
                bug: None,
                gone: false,
            });
        }
        for i in 0..n {
            sim.start(i);
        }
        sim
    }

    fn swim_member(&self, j: usize) -> crate::membership::Member {
        crate::membership::Member { node: self.ids[j].clone(), addr: format!("sim:{j}"), bump: 0, retired: false }
    }

    /// Runs `f` on node `i` (unless crashed) and sends what it emitted.
    pub fn with_node<R>(&mut self, i: usize, f: impl FnOnce(&mut Node<Arc<MemoryStorage>>, Instant) -> R) -> Option<R> {
        let now = self.local_now(i);
        let r = f(self.slots[i].node.as_mut()?, now);
        self.drain(i);
        Some(r)
    }

    /// Starts a new node `n<len>` with an empty silo that joins the cluster; it takes
    /// partitions once it is in the membership ([`Sim::set_membership`]). Returns its index.
    pub fn add_node(&mut self) -> usize {
        let i = self.slots.len();
        self.ids.push(NodeId::initial(format!("n{i}")));
        self.slots.push(Slot {
            node: None,
            storage: Arc::new(MemoryStorage::new()),
            life: 0,
            skew: Duration::from_micros(self.rng.next_u64() % 1_000_000),
            durable_at: Instant::ZERO,
            in_flight: BTreeSet::new(),
            bug: None,
            gone: false,
        });
        self.start(i);
        i
    }

    /// Plants `bug` in node `i` from its next start on (crash and restart it to plant it now).
    pub fn plant(&mut self, i: usize, bug: crate::config::PlantedBug) {
        self.slots[i].bug = Some(bug);
    }

    /// Tells every running node (and every node that starts later) that the nodes
    /// `live` are the membership: what a membership service would report.
    pub fn set_membership(&mut self, live: &[usize]) {
        let ids: Vec<NodeId> = live.iter().map(|&i| self.ids[i].clone()).collect();
        self.membership = Some(ids.clone());
        for i in 0..self.slots.len() {
            let now = self.local_now(i);
            if let Some(node) = self.slots[i].node.as_mut() {
                node.handle_membership(ids.clone(), now);
            }
            self.drain(i);
        }
    }

    fn local_now(&self, i: usize) -> Instant {
        self.now + self.slots[i].skew
    }

    /// The node ids, by index.
    pub fn ids(&self) -> &[NodeId] {
        &self.ids
    }

    /// Simulated time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Node `i`, unless crashed.
    pub fn node(&self, i: usize) -> Option<&Node<Arc<MemoryStorage>>> {
        self.slots[i].node.as_ref()
    }

    /// Node `i`'s silo (its durable state).
    pub fn storage(&self, i: usize) -> &MemoryStorage {
        &self.slots[i].storage
    }

    /// The index of a node id.
    pub fn index_of(&self, id: &NodeId) -> usize {
        // Only ids of this sim's nodes reach here.
        self.ids.iter().position(|n| n == id).expect("known node")
    }

    /// Submits a client request to node `i`. A crashed node loses it (see [`Sim::take_lost`]).
    pub fn submit(&mut self, i: usize, request: Request) -> RequestId {
        self.next_request += 1;
        let id = RequestId(self.next_request);
        let now = self.local_now(i);
        let Some(node) = self.slots[i].node.as_mut() else {
            self.lost.push((i, id));
            return id;
        };
        node.handle_request(id, request, now);
        self.slots[i].in_flight.insert(id);
        self.drain(i);
        id
    }

    /// Drains node `i`'s outputs into the event queue.
    fn drain(&mut self, i: usize) {
        let Some(node) = self.slots[i].node.as_mut() else {
            return;
        };
        let mut batches = Vec::new();
        while let Some(b) = node.poll_persist() {
            batches.push(b);
        }
        let mut transmits = Vec::new();
        while let Some(t) = node.poll_transmit() {
            transmits.push(t);
        }
        let mut replies = Vec::new();
        while let Some(r) = node.poll_reply() {
            replies.push(r);
        }
        for r in replies {
            self.slots[i].in_flight.remove(&r.id);
            self.replies.push_back((i, r));
        }
        // Batches become durable in order, as the runtime contract requires: each no
        // earlier than the one emitted before it.
        for batch in batches {
            self.batches += 1;
            let at = self.slots[i].durable_at.max(self.now + self.pick(self.faults.fsync));
            self.slots[i].durable_at = at;
            let life = self.slots[i].life;
            self.schedule(at, Event::Durable { node: i, life, batch });
        }
        for t in transmits {
            let to = self.index_of(t.to());
            self.transmit(i, to, t.envelope);
        }
    }

    fn transmit(&mut self, from: usize, to: usize, envelope: Envelope) {
        let verdict = match self.filter.as_mut() {
            Some(f) => f(from, to, &envelope),
            None => Verdict::Deliver,
        };
        match verdict {
            Verdict::Drop => return,
            Verdict::Hold => {
                self.held.push((from, to, envelope));
                return;
            }
            Verdict::DeliverAndHold => self.held.push((from, to, envelope.clone())),
            Verdict::Deliver => {}
        }
        if self.cut.contains(&(from, to)) || self.chance(self.faults.drop) {
            return;
        }
        if self.chance(self.faults.duplicate) {
            let at = self.now + self.pick(self.faults.latency);
            self.schedule(at, Event::Deliver { to, from, envelope: Box::new(envelope.clone()) });
        }
        let stalled = self.chance(self.faults.stall);
        let latency = if stalled { self.faults.stall_latency } else { self.faults.latency };
        let at = self.now + self.pick(latency);
        self.schedule(at, Event::Deliver { to, from, envelope: Box::new(envelope) });
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.seq += 1;
        self.events.insert((at, self.seq), event);
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < p
    }

    fn pick(&mut self, (lo, hi): (Duration, Duration)) -> Duration {
        let span = hi.saturating_sub(lo).as_nanos() as u64;
        lo + Duration::from_nanos(if span == 0 { 0 } else { self.rng.next_u64() % span })
    }

    /// Processes the next event or timer. Returns false if nothing is left to do.
    pub fn step(&mut self) -> bool {
        let next_event = self.events.first_key_value().map(|((at, _), _)| *at);
        let next_timer = (0..self.slots.len())
            .filter_map(|i| {
                let (at, _) = self.slots[i].node.as_ref()?.poll_timeout()?;
                Some((at.as_nanos().saturating_sub(self.slots[i].skew.as_nanos() as u64), i))
            })
            .min();
        match (next_event, next_timer) {
            (None, None) => false,
            (Some(e), t) if t.is_none_or(|(t, _)| e.as_nanos() <= t) => {
                let Some((_, event)) = self.events.pop_first() else {
                    return false;
                };
                self.now = self.now.max(e);
                self.handle(event);
                true
            }
            (Some(_), None) => unreachable!("the first arm takes events when no timer is set"),
            (_, Some((t, i))) => {
                self.now = self.now.max(Instant::from_nanos(t));
                let now = self.local_now(i);
                if let Some(node) = self.slots[i].node.as_mut() {
                    node.handle_timeout(now);
                }
                self.drain(i);
                true
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { to, from, envelope } => {
                let now = self.local_now(to);
                let _ = from;
                let Some(node) = self.slots[to].node.as_mut() else {
                    return;
                };
                self.delivered += 1;
                // Messages between nodes of one sim are well formed; a node that restarted
                // since another left the membership may not know it any more, and refuses
                // its messages as the runtime would (they are lost).
                if let Err(e) = node.handle_envelope(*envelope, now) {
                    assert!(matches!(e, crate::message::PeerError::UnknownSender(_)), "invalid envelope: {e}");
                }
                self.drain(to);
            }
            Event::Durable { node: i, life, batch } => {
                if self.slots[i].life != life || self.slots[i].node.is_none() {
                    return;
                }
                // Memory storage cannot fail.
                self.slots[i].storage.write(&batch).expect("memory write");
                let now = self.local_now(i);
                if let Some(node) = self.slots[i].node.as_mut() {
                    node.handle_persisted(batch.id, now);
                }
                self.drain(i);
            }
        }
    }

    /// Runs until simulated time passes `d` from now (or nothing is left to do).
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        while self.next_time().is_some_and(|t| t <= until) {
            self.step();
        }
        self.now = self.now.max(until);
    }

    fn next_time(&self) -> Option<Instant> {
        let e = self.events.first_key_value().map(|((at, _), _)| *at);
        let t = (0..self.slots.len())
            .filter_map(|i| {
                let (at, _) = self.slots[i].node.as_ref()?.poll_timeout()?;
                Some(Instant::from_nanos(at.as_nanos().saturating_sub(self.slots[i].skew.as_nanos() as u64)))
            })
            .min();
        match (e, t) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Replies received so far, with the node that gave them.
    pub fn take_replies(&mut self) -> Vec<(usize, Reply)> {
        self.replies.drain(..).collect()
    }

    /// Requests lost with a crashed node (their outcome is unknown).
    pub fn take_lost(&mut self) -> Vec<(usize, RequestId)> {
        std::mem::take(&mut self.lost)
    }

    /// Submits a request and runs until its reply (at most `limit` of simulated time).
    pub fn call(&mut self, i: usize, request: Request, limit: Duration) -> Option<Reply> {
        let id = self.submit(i, request);
        let until = self.now + limit;
        loop {
            if let Some(pos) = self.replies.iter().position(|(_, r)| r.id == id) {
                return self.replies.remove(pos).map(|(_, r)| r);
            }
            if self.now > until || !self.step() {
                return None;
            }
        }
    }

    /// Crashes node `i`: its in-memory state and every batch not yet durable are lost.
    pub fn crash(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        slot.node = None;
        slot.life += 1;
        for id in std::mem::take(&mut slot.in_flight) {
            self.lost.push((i, id));
        }
    }

    /// Crashes node `i` for good: it never restarts (a machine that died).
    pub fn kill(&mut self, i: usize) {
        self.crash(i);
        self.slots[i].gone = true;
    }

    /// Restarts a crashed node from its durable state (unless it was killed).
    pub fn restart(&mut self, i: usize) {
        if self.slots[i].node.is_none() && !self.slots[i].gone {
            self.start(i);
        }
    }

    /// Cuts the link from `a` to `b` (one way).
    pub fn cut(&mut self, a: usize, b: usize) {
        self.cut.insert((a, b));
    }

    /// Isolates node `i` from every other node, both ways.
    pub fn isolate(&mut self, i: usize) {
        for j in 0..self.slots.len() {
            if j != i {
                self.cut(i, j);
                self.cut(j, i);
            }
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Installs a message filter (replacing any previous one).
    pub fn set_filter(&mut self, filter: Filter) {
        self.filter = Some(filter);
    }

    /// Removes the message filter.
    pub fn clear_filter(&mut self) {
        self.filter = None;
    }

    /// Delivers (with normal latency) every held message that `keep` selects; the others
    /// stay held.
    pub fn release_held(&mut self, mut keep: impl FnMut(usize, usize, &Envelope) -> bool) {
        let held = std::mem::take(&mut self.held);
        for (from, to, env) in held {
            if keep(from, to, &env) {
                let at = self.now + self.pick(self.faults.latency);
                self.schedule(at, Event::Deliver { to, from, envelope: Box::new(env) });
            } else {
                self.held.push((from, to, env));
            }
        }
    }

    /// Messages currently held by the filter.
    pub fn held(&self) -> &[(usize, usize, Envelope)] {
        &self.held
    }

    /// A random number from the sim's seeded RNG (for workloads).
    pub fn random(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the sim has no nodes.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// Nodes in one process with nothing in between: every message is delivered and every
/// persist batch made durable at once, in order, with no faults and no clock but the
/// caller's. It measures the engine's own work per operation (the callgrind profile in
/// `examples/fast_path_profile.rs`, the cache accounting test in `tests/cache_bytes.rs`).
pub struct Direct {
    /// The nodes' ids, by index.
    pub ids: Vec<NodeId>,
    /// The nodes.
    pub nodes: Vec<Node<Arc<MemoryStorage>>>,
    storages: Vec<Arc<MemoryStorage>>,
    net: VecDeque<(usize, Envelope)>,
}

impl Direct {
    /// `n` nodes replicating every partition on all of them; `tune` adjusts each node's
    /// config.
    pub fn new(n: usize, partitions: u32, tune: impl Fn(&mut Config)) -> Self {
        let ids: Vec<NodeId> = (0..n).map(|i| NodeId::initial(format!("n{i}"))).collect();
        let params =
            ClusterParams { partitions, replication: n as u32, initial_nodes: ids.clone(), token: "direct".into() };
        let storages: Vec<Arc<MemoryStorage>> = (0..n).map(|_| Arc::new(MemoryStorage::new())).collect();
        let nodes = (0..n)
            .map(|i| {
                let mut cfg = Config::new(ids[i].clone(), params.clone());
                tune(&mut cfg);
                Node::new(cfg, storages[i].clone(), i as u64, Instant::ZERO).expect("a node starts")
            })
            .collect();
        Direct { ids, nodes, storages, net: VecDeque::new() }
    }

    /// The index of `key`'s primary.
    pub fn primary(&self, key: &str) -> usize {
        let primary = self.nodes[0].map().config_of(key.as_bytes()).primary();
        self.ids.iter().position(|id| id == primary).expect("the primary is a node")
    }

    /// Submits `request` at node `i` at `now` and runs until nothing moves; returns how
    /// many replies came out (of this request and any other in flight).
    pub fn run(&mut self, i: usize, id: RequestId, request: Request, now: Instant) -> usize {
        self.nodes[i].handle_request(id, request, now);
        let mut replies = 0;
        let mut pending = vec![i];
        while let Some(n) = pending.pop() {
            loop {
                let mut progressed = false;
                while let Some(batch) = self.nodes[n].poll_persist() {
                    self.storages[n].write(&batch).expect("the memory silo takes every batch");
                    self.nodes[n].handle_persisted(batch.id, now);
                    progressed = true;
                }
                while let Some(t) = self.nodes[n].poll_transmit() {
                    let to = self.ids.iter().position(|x| x == t.to()).expect("a message to a node");
                    self.net.push_back((to, t.envelope));
                    progressed = true;
                }
                while self.nodes[n].poll_reply().is_some() {
                    replies += 1;
                }
                if !progressed {
                    break;
                }
            }
            while let Some((to, envelope)) = self.net.pop_front() {
                self.nodes[to].handle_envelope(envelope, now).expect("a well-formed message");
                pending.push(to);
            }
        }
        replies
    }
}
