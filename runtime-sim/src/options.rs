//! Scenarios and the options one seed derives from them.
//!
//! A [`Scenario`] is a named menu: the ranges and fault kinds it allows. A seed turns it
//! into [`SimOptions`]: every concrete choice (cluster size, replication, engine timeouts,
//! workload mix, clock skews, crash mode, the whole fault schedule). The derivation is a
//! pure function of `(scenario, seed)` on its own ChaCha stream, independent of the
//! simulator's RNG, so the options can be printed before the run starts and stay the same
//! when node code changes timing.

use crate::storage::CrashMode;
use memo_engine::config::PlantedBug;
use memo_engine::placement::PartitionMap;
use memo_engine::{ClusterParams, Config, NodeId};
use memo_node::PeerTransport;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

/// Largest cluster the harness builds.
pub const NODES_MAX: usize = 7;
/// The key whose partition's primary [`FaultKind::IsolatePrimary`] isolates; also the
/// hottest key of every workload.
pub const HOT_KEY: &str = "k0";
/// Gap kept free of fault starts at the end of the safety phase, so most episodes end
/// before it does.
const SCHEDULE_TAIL: Duration = Duration::from_millis(500);

/// A kind of fault a scenario may inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// A symmetric cut between two random sides of the cluster.
    Partition,
    /// A symmetric cut isolating a minority of the nodes from the majority.
    MinorityPartition,
    /// Random links cut in one direction only.
    OneWayPartition,
    /// The hot key's primary is cut off from every other node (clients still reach it).
    IsolatePrimary,
    /// One link goes down and up again and again.
    FlappingLink,
    /// A node crashes (losing unsynced writes) and restarts later.
    Crash,
    /// A node's disk loses power inside a commit; the node dies and restarts later.
    PowerCut,
    /// A node stops executing for a while (a GC pause, a stalled VM).
    Pause,
    /// A node's clock jumps forwards or backwards.
    ClockJump,
    /// A node's clock drift changes for a while.
    ClockDrift,
    /// The whole network becomes lossy and slow for a while.
    NetworkDegrade,
    /// Every node crashes, then the whole cluster restarts.
    WholeClusterRestart,
    /// A client cannot reach one node for a while.
    ClientCut,
    /// Once some node is moving a partition (a decree or a copy in flight), that node
    /// crashes, or is cut off from every other server, for a while: a rebalancer stopped
    /// in the middle of a move.
    RebalancerDown,
}

impl FaultKind {
    /// Every kind, in a fixed order.
    pub const ALL: [FaultKind; 14] = [
        FaultKind::Partition,
        FaultKind::MinorityPartition,
        FaultKind::OneWayPartition,
        FaultKind::IsolatePrimary,
        FaultKind::FlappingLink,
        FaultKind::Crash,
        FaultKind::PowerCut,
        FaultKind::Pause,
        FaultKind::ClockJump,
        FaultKind::ClockDrift,
        FaultKind::NetworkDegrade,
        FaultKind::WholeClusterRestart,
        FaultKind::ClientCut,
        FaultKind::RebalancerDown,
    ];
}

/// Relative weights of the client operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    /// Insert.
    pub insert: u32,
    /// Update.
    pub update: u32,
    /// Upsert.
    pub upsert: u32,
    /// Delete.
    pub delete: u32,
    /// Fetch.
    pub fetch: u32,
    /// List.
    pub list: u32,
}

impl Mix {
    /// A balanced mix: every operation, reads a bit more often.
    pub const BALANCED: Mix = Mix { insert: 2, update: 2, upsert: 2, delete: 2, fetch: 3, list: 1 };
    /// Deletes and inserts dominate: keys come and go (tombstones, GC, reinsertion).
    pub const CHURN: Mix = Mix { insert: 4, update: 1, upsert: 1, delete: 4, fetch: 3, list: 1 };
    /// Mostly writes that race on the same keys.
    pub const WRITE_HEAVY: Mix = Mix { insert: 2, update: 3, upsert: 4, delete: 1, fetch: 2, list: 0 };
    /// Mostly reads, to catch stale reads.
    pub const READ_HEAVY: Mix = Mix { insert: 1, update: 2, upsert: 2, delete: 1, fetch: 8, list: 1 };

    fn total(&self) -> u32 {
        self.insert + self.update + self.upsert + self.delete + self.fetch + self.list
    }
}

/// How far node clocks disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skew {
    /// Every clock reads simulated time.
    None,
    /// Offsets up to 10 minutes, drift within ±200 ppm (ordinary hardware).
    Mild,
    /// Offsets up to a day, drift within ±5% (broken hardware, VMs migrating).
    Wild,
}

/// A named menu of choices; a seed picks from it ([`SimOptions::derive`]).
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The test's name, used in messages and the replay command.
    pub name: &'static str,
    /// Cluster sizes.
    pub nodes: RangeInclusive<usize>,
    /// Replication factor; `None` lets the seed choose (3, or 5 on clusters of 5+).
    pub replication: Option<u32>,
    /// The fault kinds the schedule draws from (empty: no faults).
    pub faults: Vec<FaultKind>,
    /// Swarm testing: the seed also picks which fault kinds are on (a random non-empty
    /// subset of [`Scenario::faults`]), the workload mix and the skew.
    pub swarm: bool,
    /// Number of fault episodes.
    pub episodes: RangeInclusive<usize>,
    /// Size of the key space.
    pub keys: RangeInclusive<usize>,
    /// Number of concurrent clients.
    pub clients: RangeInclusive<usize>,
    /// The workload mix; `None` lets the seed choose one of the presets.
    pub mix: Option<Mix>,
    /// Clock skew.
    pub skew: Skew,
    /// Length of the safety phase in simulated time.
    pub safety: Duration,
    /// Peer transport; `None` lets the seed choose.
    pub transport: Option<PeerTransport>,
    /// A protocol bug to plant in every node (tests of the tester).
    pub planted_bug: Option<PlantedBug>,
    /// Servers that are not founders: each joins the running cluster (`--join`) at a
    /// time the seed picks.
    pub joins: usize,
    /// Founders that leave the cluster gracefully (`Admin/Leave`) at times the seed picks.
    pub leaves: usize,
    /// Rules set in the cluster's policy table before the workload starts (every node
    /// then gets the simulation's data key and refreshes the table).
    pub policies: Vec<SimRule>,
    /// Bytes of `x` appended to every value the clients write, so that compression
    /// engages.
    pub value_pad: usize,
}

/// A policy-table rule a scenario sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimRule {
    /// The key prefix.
    pub prefix: &'static str,
    /// Its compression.
    pub compression: memo_node::policy::Compression,
    /// Whether it encrypts.
    pub encrypt: bool,
    /// How many versions it keeps (0 and 1: no history).
    pub versions: u16,
}

impl Scenario {
    /// A scenario with the default menu and no faults.
    pub fn new(name: &'static str) -> Self {
        Scenario {
            name,
            nodes: 3..=5,
            replication: None,
            faults: Vec::new(),
            swarm: false,
            episodes: 4..=10,
            keys: 3..=6,
            clients: 3..=8,
            mix: None,
            skew: Skew::Mild,
            safety: Duration::from_secs(20),
            transport: None,
            planted_bug: None,
            joins: 0,
            leaves: 0,
            policies: Vec::new(),
            value_pad: 0,
        }
    }

    /// Sets these policy-table rules before the workload, and pads every written value
    /// with `value_pad` bytes.
    pub fn policies(mut self, rules: &[SimRule], value_pad: usize) -> Self {
        self.policies = rules.to_vec();
        self.value_pad = value_pad;
        self
    }

    /// Adds `n` servers that join the running cluster, and makes `leaves` founders leave.
    pub fn membership_changes(mut self, joins: usize, leaves: usize) -> Self {
        self.joins = joins;
        self.leaves = leaves;
        self
    }

    /// The seed a plain `cargo simtest` runs this scenario with: a hash of its name.
    pub fn default_seed(&self) -> u64 {
        crate::history::fnv1a(self.name.as_bytes()) % 1_000_000
    }

    /// Sets the cluster sizes.
    pub fn nodes(mut self, nodes: RangeInclusive<usize>) -> Self {
        assert!(*nodes.start() >= 1 && *nodes.end() <= NODES_MAX && !nodes.is_empty());
        self.nodes = nodes;
        self
    }

    /// Fixes the replication factor.
    pub fn replication(mut self, k: u32) -> Self {
        self.replication = Some(k);
        self
    }

    /// Sets the fault kinds.
    pub fn faults(mut self, faults: &[FaultKind]) -> Self {
        self.faults = faults.to_vec();
        self
    }

    /// Turns swarm testing on over every fault kind.
    pub fn swarm(mut self) -> Self {
        self.swarm = true;
        self.faults = FaultKind::ALL.to_vec();
        self
    }

    /// Sets the number of fault episodes.
    pub fn episodes(mut self, episodes: RangeInclusive<usize>) -> Self {
        self.episodes = episodes;
        self
    }

    /// Sets the size of the key space.
    pub fn keys(mut self, keys: RangeInclusive<usize>) -> Self {
        assert!(*keys.start() >= 1);
        self.keys = keys;
        self
    }

    /// Sets the number of clients.
    pub fn clients(mut self, clients: RangeInclusive<usize>) -> Self {
        assert!(*clients.start() >= 1);
        self.clients = clients;
        self
    }

    /// Fixes the workload mix.
    pub fn mix(mut self, mix: Mix) -> Self {
        self.mix = Some(mix);
        self
    }

    /// Sets the clock skew.
    pub fn skew(mut self, skew: Skew) -> Self {
        self.skew = skew;
        self
    }

    /// Sets the length of the safety phase.
    pub fn safety(mut self, safety: Duration) -> Self {
        self.safety = safety;
        self
    }

    /// Fixes the peer transport.
    pub fn transport(mut self, transport: PeerTransport) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Plants a protocol bug in every node.
    pub fn planted_bug(mut self, bug: PlantedBug) -> Self {
        self.planted_bug = Some(bug);
        self
    }
}

/// One concrete fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Every link between the two sides is cut, both ways.
    Partition {
        /// One side (server indices).
        left: Vec<usize>,
        /// The other side.
        right: Vec<usize>,
    },
    /// These links are cut in the direction given (from, to).
    OneWay {
        /// The cut links.
        links: Vec<(usize, usize)>,
    },
    /// The link between two nodes toggles every `period`.
    Flap {
        /// One end.
        a: usize,
        /// The other end.
        b: usize,
        /// Time between toggles.
        period: Duration,
    },
    /// The node crashes and restarts when the episode ends.
    Crash {
        /// The node.
        node: usize,
    },
    /// The node's disk dies at its `calls`-th mutating call from now (if that happens
    /// within the episode); the node restarts `down` later.
    PowerCut {
        /// The node.
        node: usize,
        /// Mutating disk calls until the cut.
        calls: u32,
        /// Time the node stays down after the cut.
        down: Duration,
    },
    /// The node is paused for the episode.
    Pause {
        /// The node.
        node: usize,
    },
    /// The node's clock jumps by `delta_ms` (negative: backwards).
    ClockJump {
        /// The node.
        node: usize,
        /// The jump in milliseconds.
        delta_ms: i64,
    },
    /// The node's clock drift is `drift_ppm` for the episode, then back to its baseline.
    ClockDrift {
        /// The node.
        node: usize,
        /// The drift in parts per million.
        drift_ppm: i64,
    },
    /// The whole network drops `loss` of connection attempts and delays every message by
    /// `latency_ms` for the episode.
    Degrade {
        /// Probability that a packet (a connection attempt, a datagram) is lost.
        loss_permille: u32,
        /// Message latency range in milliseconds.
        latency_ms: (u64, u64),
    },
    /// Every node crashes; all restart when the episode ends.
    RestartAll,
    /// A server that is not a founder starts and joins the running cluster.
    Join {
        /// The server.
        node: usize,
    },
    /// A founder leaves the cluster gracefully.
    Leave {
        /// The server.
        node: usize,
    },
    /// From the episode's start, the first node found moving a partition crashes (or, if
    /// `cut_off`, loses every link to the other servers) for `down`; if none moves one
    /// within the episode, nothing happens.
    RebalancerDown {
        /// Cut off instead of crashed.
        cut_off: bool,
        /// How long it stays down or cut off.
        down: Duration,
    },
    /// The client cannot reach the node for the episode (both ways).
    ClientCut {
        /// The client.
        client: usize,
        /// The node.
        node: usize,
    },
}

/// A fault applied at `at` for `duration` (simulated time from the start of the run).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Episode {
    /// When the fault starts.
    pub at: Duration,
    /// How long it lasts (zero for instantaneous faults).
    pub duration: Duration,
    /// The fault.
    pub fault: Fault,
}

/// A node's clock at the start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockSpec {
    /// The reading at the start.
    pub offset: Duration,
    /// Parts per million fast (negative: slow).
    pub drift_ppm: i64,
}

/// The engine's timeouts and bounds, as the seed chose them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineTuning {
    /// `Config::round_timeout`.
    pub round_timeout: Duration,
    /// `Config::request_timeout`.
    pub request_timeout: Duration,
    /// `Config::forward_timeout`.
    pub forward_timeout: Duration,
    /// `Config::primary_suspicion`.
    pub primary_suspicion: Duration,
    /// `Config::backoff_max`.
    pub backoff_max: Duration,
    /// `Config::gc_delay`.
    pub gc_delay: Duration,
    /// `Config::batch_writes_max`.
    pub batch_writes_max: usize,
    /// `Config::register_cache_bytes_max`.
    pub register_cache_bytes_max: usize,
    /// `MembershipConfig::eviction_delay`: a node down this long loses its partitions,
    /// so crashes and partitions longer than it move data (reconfiguration under every
    /// fault of the menu).
    pub eviction_delay: Duration,
}

/// Everything one seed derives from a scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimOptions {
    /// The scenario's name.
    pub scenario: &'static str,
    /// The seed.
    pub seed: u64,
    /// Cluster size.
    pub nodes: usize,
    /// Replication factor.
    pub replication: u32,
    /// Number of partitions.
    pub partitions: u32,
    /// Number of clients.
    pub clients: usize,
    /// Keys `k0 .. k{keys-1}`.
    pub keys: usize,
    /// Workload mix.
    pub mix: Mix,
    /// Deadline of one client call (the tonic timeout).
    pub client_deadline: Duration,
    /// Longest pause of a client between two operations.
    pub think_max: Duration,
    /// Peer transport.
    pub transport: PeerTransport,
    /// Message latency range of the healthy network, in milliseconds.
    pub latency_ms: (u64, u64),
    /// Engine timeouts and bounds.
    pub engine: EngineTuning,
    /// Node clocks.
    pub clocks: Vec<ClockSpec>,
    /// What a crash does to unsynced writes.
    pub crash_mode: CrashMode,
    /// Length of the safety phase.
    pub safety: Duration,
    /// Operations per client in the liveness phase.
    pub liveness_ops: usize,
    /// The fault kinds in use.
    pub faults: Vec<FaultKind>,
    /// The fault schedule, by start time.
    pub schedule: Vec<Episode>,
    /// The planted bug, if any.
    pub planted_bug: Option<PlantedBug>,
    /// Servers that join later (the last ones); the others found the cluster.
    pub late: Vec<usize>,
    /// Policy-table rules set before the workload ([`Scenario::policies`]).
    pub policies: Vec<SimRule>,
    /// Bytes of padding on every written value.
    pub value_pad: usize,
}

/// Draws from a seeded ChaCha stream.
pub struct Dice(ChaCha8Rng);

impl Dice {
    /// A stream for `seed`, separated from other streams of the same seed by `stream`.
    pub fn new(seed: u64, stream: u64) -> Self {
        Dice(ChaCha8Rng::seed_from_u64(seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
    }

    /// A raw draw.
    pub fn draw(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.draw() % n
    }

    /// Uniform in the range.
    pub fn range(&mut self, r: RangeInclusive<u64>) -> u64 {
        r.start() + self.below(r.end() - r.start() + 1)
    }

    /// Uniform in the range.
    pub fn range_usize(&mut self, r: RangeInclusive<usize>) -> usize {
        self.range(*r.start() as u64..=*r.end() as u64) as usize
    }

    /// Uniform in the range, signed.
    pub fn range_i64(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }

    /// True with probability `permille / 1000`.
    pub fn chance(&mut self, permille: u64) -> bool {
        self.below(1000) < permille
    }

    /// Uniform duration in `[lo, hi]` (millisecond resolution).
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo..=hi))
    }

    /// One element.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// `count` distinct indices below `n`, sorted.
    pub fn distinct(&mut self, n: usize, count: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        for i in 0..count.min(n) {
            let j = i + self.below((n - i) as u64) as usize;
            all.swap(i, j);
        }
        let mut chosen = all[..count.min(n)].to_vec();
        chosen.sort_unstable();
        chosen
    }
}

impl SimOptions {
    /// The options `seed` derives from `scenario`.
    pub fn derive(scenario: &Scenario, seed: u64) -> SimOptions {
        let mut d = Dice::new(seed, 0x5ce7a210);
        let nodes = d.range_usize(scenario.nodes.clone());
        let replication = scenario.replication.unwrap_or_else(|| if nodes >= 5 && d.chance(400) { 5 } else { 3 });
        let partitions = d.pick(&[8, 16, 64]);
        let clients = d.range_usize(scenario.clients.clone());
        let keys = d.range_usize(scenario.keys.clone());
        let mix =
            scenario.mix.unwrap_or_else(|| d.pick(&[Mix::BALANCED, Mix::CHURN, Mix::WRITE_HEAVY, Mix::READ_HEAVY]));
        let transport =
            scenario.transport.unwrap_or_else(|| if d.chance(500) { PeerTransport::Tcp } else { PeerTransport::Unary });
        let mut engine = derive_engine(&mut d);
        // From a stream of its own, so that the draws above (and the histories of the
        // regression seeds) are what they were before membership existed.
        engine.eviction_delay = Dice::new(seed, 0xe71c7).millis(200, 1500);
        // Clients give up before the engine does in some seeds (DEADLINE_EXCEEDED), after
        // it in others (UNAVAILABLE from the node).
        let client_deadline = if d.chance(300) {
            d.millis(300, engine.request_timeout.as_millis() as u64)
        } else {
            engine.request_timeout + d.millis(200, 2000)
        };
        let think_max = d.millis(0, 30);
        let latency_lo = d.range(1..=3);
        let latency_ms = (latency_lo, latency_lo + d.range(2..=15));
        let skew = if scenario.swarm { d.pick(&[Skew::None, Skew::Mild, Skew::Wild]) } else { scenario.skew };
        let clocks = (0..nodes).map(|_| derive_clock(&mut d, skew)).collect();
        let crash_mode = if d.chance(500) { CrashMode::DropAll } else { CrashMode::KeepPrefix };
        let faults = if scenario.swarm && !scenario.faults.is_empty() {
            // The kinds that existed before membership are drawn as they were; a
            // rebalancer-down fault comes from a stream of its own, so that the swarm's
            // earlier seeds keep their histories.
            let down = FaultKind::RebalancerDown;
            let base: Vec<FaultKind> = scenario.faults.iter().copied().filter(|&k| k != down).collect();
            let count = d.range_usize(1..=base.len().min(5));
            let mut faults: Vec<FaultKind> = d.distinct(base.len(), count).into_iter().map(|i| base[i]).collect();
            if scenario.faults.contains(&down) && Dice::new(seed, 0x5a4b).chance(250) {
                faults.push(down);
            }
            faults
        } else {
            scenario.faults.clone()
        };
        let mut options = SimOptions {
            scenario: scenario.name,
            seed,
            nodes,
            replication,
            partitions,
            clients,
            keys,
            mix,
            client_deadline,
            think_max,
            transport,
            latency_ms,
            engine,
            clocks,
            crash_mode,
            safety: scenario.safety,
            liveness_ops: 8,
            faults,
            schedule: Vec::new(),
            planted_bug: scenario.planted_bug,
            late: Vec::new(),
            policies: scenario.policies.clone(),
            value_pad: scenario.value_pad,
        };
        let episodes = if options.faults.is_empty() { 0 } else { d.range_usize(scenario.episodes.clone()) };
        options.schedule = (0..episodes).map(|_| options.draw_episode(&mut d)).collect();
        let (joins, leaves) = if scenario.swarm {
            // Membership changes are on the swarm's menu too, from a stream of their own.
            let mut m = Dice::new(seed, 0x5a4a);
            let joins = if m.chance(400) { m.range_usize(1..=2) } else { 0 };
            let leaves = if m.chance(300) { 1 } else { 0 };
            (joins, leaves)
        } else {
            (scenario.joins, scenario.leaves)
        };
        options.add_membership_changes(joins, leaves);
        options.schedule.sort_by_key(|e| e.at);
        options
    }

    /// Adds `joins` joining servers and `leaves` leaving founders (from a stream of their
    /// own, so that scenarios without them derive what they did before). A joining server is an extra server,
    /// beyond the founders; leaving founders are never server 0, unless every founder
    /// leaves (a rolling replacement).
    fn add_membership_changes(&mut self, joins: usize, leaves: usize) {
        if joins == 0 && leaves == 0 {
            return;
        }
        let mut d = Dice::new(self.seed, 0x701e);
        let founders = self.nodes;
        self.late = (founders..founders + joins).collect();
        self.nodes += joins;
        let skew = self.clocks.last().copied();
        for _ in 0..joins {
            self.clocks.push(skew.unwrap_or(ClockSpec { offset: Duration::from_secs(1000), drift_ppm: 0 }));
        }
        let window = self.safety.as_millis() as u64;
        let mut join_times = Vec::new();
        for &node in &self.late.clone() {
            let at = Duration::from_millis(d.range(window / 10..=window / 2));
            join_times.push(at);
            self.schedule.push(Episode { at, duration: Duration::ZERO, fault: Fault::Join { node } });
        }
        // A rebalancer-down episode watches from a join on: that is when moves start.
        let watches = self.schedule.iter_mut().filter(|e| matches!(e.fault, Fault::RebalancerDown { .. }));
        for (episode, &at) in watches.zip(join_times.iter().cycle()) {
            episode.at = at;
        }
        if leaves >= founders {
            // A rolling replacement: every founder leaves, one after the other, once the
            // joiners are in (the joiners announce themselves to every founder).
            for (i, node) in (0..founders).enumerate() {
                let at = Duration::from_millis(window * (11 + 2 * i as u64) / 20);
                self.schedule.push(Episode { at, duration: Duration::ZERO, fault: Fault::Leave { node } });
            }
            return;
        }
        let leavers = d.distinct(founders - 1, leaves.min(founders - 1));
        for i in leavers {
            let at = Duration::from_millis(d.range(window * 2 / 5..=window * 4 / 5));
            self.schedule.push(Episode { at, duration: Duration::ZERO, fault: Fault::Leave { node: i + 1 } });
        }
    }

    /// The servers that found the cluster.
    pub fn founders(&self) -> Vec<usize> {
        (0..self.nodes).filter(|i| !self.late.contains(i)).collect()
    }

    /// How many versions the scenario's rules keep for `key` (its longest matching
    /// prefix's; 0 without a rule).
    pub fn keep_of(&self, key: &str) -> u16 {
        (self.policies.iter())
            .filter(|r| key.starts_with(r.prefix))
            .max_by_key(|r| r.prefix.len())
            .map_or(0, |r| r.versions)
    }

    /// The memo id of server `i`.
    pub fn node_id(&self, i: usize) -> NodeId {
        NodeId::initial(format!("n{}", i + 1))
    }

    /// Every server's memo id, in index order.
    pub fn node_ids(&self) -> Vec<NodeId> {
        (0..self.nodes).map(|i| self.node_id(i)).collect()
    }

    /// The cluster parameters every node starts with (the founders are the initial nodes).
    pub fn cluster_params(&self) -> ClusterParams {
        ClusterParams {
            partitions: self.partitions,
            replication: self.replication,
            initial_nodes: self.founders().into_iter().map(|i| self.node_id(i)).collect(),
            token: format!("sim-{}", self.seed),
        }
    }

    /// The engine configuration of server `i`.
    pub fn config(&self, i: usize) -> Config {
        let mut c = Config::new(self.node_id(i), self.cluster_params());
        let e = &self.engine;
        c.round_timeout = e.round_timeout;
        c.request_timeout = e.request_timeout;
        c.forward_timeout = e.forward_timeout;
        c.primary_suspicion = e.primary_suspicion;
        c.backoff_max = e.backoff_max;
        c.gc_delay = e.gc_delay;
        c.batch_writes_max = e.batch_writes_max;
        c.register_cache_bytes_max = e.register_cache_bytes_max;
        c.planted_bug = self.planted_bug;
        // SWIM on every node; partitions move when a node stays down past the eviction
        // delay, and back when it returns.
        let peers = self.founders().into_iter().map(|j| (self.node_id(j), crate::cluster::server_addr(j))).collect();
        let mut m = memo_node::founders_membership(&c.me, &peers, crate::cluster::server_addr(i));
        c.join = self.late.contains(&i);
        m.eviction_delay = e.eviction_delay;
        m.probe_period = Duration::from_millis(200);
        c.membership = Some(m);
        c.rebalance_interval = Duration::from_millis(200);
        c.rebalance_delay = Duration::from_millis(300);
        c
    }

    /// The initial partition map (partitions move later when nodes are evicted).
    pub fn partition_map(&self) -> PartitionMap {
        let founders: Vec<NodeId> = self.founders().into_iter().map(|i| self.node_id(i)).collect();
        PartitionMap::initial(self.partitions, self.replication, &founders)
    }

    /// Server indices of the members of `key`'s partition.
    pub fn members_of(&self, key: &str) -> Vec<usize> {
        let map = self.partition_map();
        map.config_of(key.as_bytes()).members.iter().map(|m| self.index_of(m)).collect()
    }

    /// The server index of a memo node id.
    pub fn index_of(&self, id: &NodeId) -> usize {
        (0..self.nodes).find(|&i| self.node_id(i) == *id).expect("a node of the cluster")
    }

    /// The keys of the workload.
    pub fn key_names(&self) -> Vec<String> {
        (0..self.keys).map(|k| format!("k{k}")).collect()
    }

    /// How long one logical operation may take in the liveness phase (retries included).
    pub fn liveness_bound(&self) -> Duration {
        4 * (self.engine.request_timeout + self.client_deadline) + Duration::from_secs(2)
    }

    fn draw_episode(&self, d: &mut Dice) -> Episode {
        let kind = d.pick(&self.faults);
        let n = self.nodes;
        let node = d.below(n as u64) as usize;
        let (duration, fault) = match kind {
            FaultKind::Partition => {
                let left_len = d.range_usize(1..=(n - 1).max(1));
                let left = d.distinct(n, left_len);
                let right = (0..n).filter(|i| !left.contains(i)).collect();
                (d.millis(300, 4000), Fault::Partition { left, right })
            }
            FaultKind::MinorityPartition => {
                let minority = d.range_usize(1..=((n - 1) / 2).max(1));
                let left = d.distinct(n, minority);
                let right = (0..n).filter(|i| !left.contains(i)).collect();
                (d.millis(500, 4000), Fault::Partition { left, right })
            }
            FaultKind::IsolatePrimary => {
                let primary = self.index_of(self.partition_map().config_of(HOT_KEY.as_bytes()).primary());
                let right = (0..n).filter(|&i| i != primary).collect();
                (d.millis(500, 4000), Fault::Partition { left: vec![primary], right })
            }
            FaultKind::OneWayPartition => {
                let count = d.range_usize(1..=n);
                let mut links: Vec<(usize, usize)> = (0..count)
                    .map(|_| {
                        let a = d.below(n as u64) as usize;
                        let b = (a + 1 + d.below((n - 1).max(1) as u64) as usize) % n;
                        (a, b)
                    })
                    .filter(|(a, b)| a != b)
                    .collect();
                links.sort_unstable();
                links.dedup();
                (d.millis(300, 4000), Fault::OneWay { links })
            }
            FaultKind::FlappingLink => {
                let b = (node + 1 + d.below((n - 1).max(1) as u64) as usize) % n;
                (d.millis(1000, 5000), Fault::Flap { a: node, b, period: d.millis(20, 400) })
            }
            FaultKind::Crash => (d.millis(100, 3000), Fault::Crash { node }),
            FaultKind::PowerCut => {
                let calls = d.range(1..=8) as u32;
                (d.millis(500, 3000), Fault::PowerCut { node, calls, down: d.millis(100, 2000) })
            }
            FaultKind::Pause => (d.millis(100, 3000), Fault::Pause { node }),
            FaultKind::ClockJump => {
                let delta_ms = if d.chance(700) { d.range_i64(100, 10_000) } else { -d.range_i64(10, 500) };
                (Duration::ZERO, Fault::ClockJump { node, delta_ms })
            }
            FaultKind::ClockDrift => {
                (d.millis(500, 4000), Fault::ClockDrift { node, drift_ppm: d.range_i64(-100_000, 100_000) })
            }
            FaultKind::NetworkDegrade => {
                let lo = d.range(1..=20);
                let latency_ms = (lo, lo + d.range(5..=200));
                (d.millis(500, 4000), Fault::Degrade { loss_permille: d.range(10..=300) as u32, latency_ms })
            }
            FaultKind::WholeClusterRestart => (d.millis(200, 2000), Fault::RestartAll),
            FaultKind::ClientCut => {
                let client = d.below(self.clients as u64) as usize;
                (d.millis(300, 3000), Fault::ClientCut { client, node })
            }
            FaultKind::RebalancerDown => {
                let cut_off = d.chance(500);
                (d.millis(1000, 4000), Fault::RebalancerDown { cut_off, down: d.millis(200, 3000) })
            }
        };
        let duration = duration.min(self.safety / 2);
        let latest_ms = self.safety.saturating_sub(duration + SCHEDULE_TAIL).as_millis().max(500) as u64;
        let at = d.millis(300.min(latest_ms), latest_ms);
        Episode { at, duration, fault }
    }
}

fn derive_engine(d: &mut Dice) -> EngineTuning {
    let round_timeout = d.millis(100, 500);
    EngineTuning {
        round_timeout,
        request_timeout: d.millis(1000, 4000),
        forward_timeout: d.millis(200, 1000),
        primary_suspicion: d.millis(500, 5000),
        backoff_max: d.millis(5, 50),
        gc_delay: d.millis(100, 5000),
        batch_writes_max: d.pick(&[3, 64, 4096]),
        register_cache_bytes_max: d.pick(&[2048, 64 << 20]),
        eviction_delay: Duration::from_secs(600),
    }
}

fn derive_clock(d: &mut Dice, skew: Skew) -> ClockSpec {
    // Readings start well above zero so that backward jumps never saturate.
    let base = Duration::from_secs(1000);
    match skew {
        Skew::None => ClockSpec { offset: base, drift_ppm: 0 },
        Skew::Mild => ClockSpec { offset: base + d.millis(0, 600_000), drift_ppm: d.range_i64(-200, 200) },
        Skew::Wild => ClockSpec { offset: base + d.millis(0, 86_400_000), drift_ppm: d.range_i64(-50_000, 50_000) },
    }
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn names(nodes: &[usize]) -> String {
    let names: Vec<String> = nodes.iter().map(|i| format!("n{}", i + 1)).collect();
    format!("{{{}}}", names.join(","))
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Partition { left, right } => write!(f, "partition {} | {}", names(left), names(right)),
            Fault::OneWay { links } => {
                let links: Vec<String> = links.iter().map(|(a, b)| format!("n{}->n{}", a + 1, b + 1)).collect();
                write!(f, "one-way cut {}", links.join(" "))
            }
            Fault::Flap { a, b, period } => write!(f, "flapping link n{}<->n{} every {}", a + 1, b + 1, ms(*period)),
            Fault::Crash { node } => write!(f, "crash n{}", node + 1),
            Fault::PowerCut { node, calls, down } => {
                write!(f, "power cut n{} at its disk call #{calls}, down {}", node + 1, ms(*down))
            }
            Fault::Pause { node } => write!(f, "pause n{}", node + 1),
            Fault::ClockJump { node, delta_ms } => write!(f, "clock jump n{} by {delta_ms:+}ms", node + 1),
            Fault::ClockDrift { node, drift_ppm } => write!(f, "clock drift n{} {drift_ppm:+}ppm", node + 1),
            Fault::Degrade { loss_permille, latency_ms } => {
                write!(f, "degraded network: loss {loss_permille}‰, latency {}-{}ms", latency_ms.0, latency_ms.1)
            }
            Fault::RestartAll => write!(f, "whole-cluster crash and restart"),
            Fault::Join { node } => write!(f, "n{} joins", node + 1),
            Fault::Leave { node } => write!(f, "n{} leaves", node + 1),
            Fault::ClientCut { client, node } => write!(f, "cut client c{client} from n{}", node + 1),
            Fault::RebalancerDown { cut_off, down } => {
                let what = if *cut_off { "cut off" } else { "crashed" };
                write!(f, "the next node found moving a partition is {what} for {}", ms(*down))
            }
        }
    }
}

impl fmt::Display for SimOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.engine;
        writeln!(f, "scenario {} seed {}", self.scenario, self.seed)?;
        writeln!(
            f,
            "  cluster: {} nodes, k={}, {} partitions, peer transport {:?}, crash mode {:?}",
            self.nodes, self.replication, self.partitions, self.transport, self.crash_mode
        )?;
        writeln!(
            f,
            "  workload: {} clients, {} keys, mix {:?}, client deadline {}, think <= {}, {} liveness ops/client",
            self.clients,
            self.keys,
            self.mix,
            ms(self.client_deadline),
            ms(self.think_max),
            self.liveness_ops
        )?;
        writeln!(
            f,
            "  engine: round {}, request {}, forward {}, primary suspicion {}, backoff <= {}, gc {}, batch {} writes, cache {} B",
            ms(e.round_timeout),
            ms(e.request_timeout),
            ms(e.forward_timeout),
            ms(e.primary_suspicion),
            ms(e.backoff_max),
            ms(e.gc_delay),
            e.batch_writes_max,
            e.register_cache_bytes_max
        )?;
        writeln!(f, "  network: latency {}-{}ms", self.latency_ms.0, self.latency_ms.1)?;
        let map = self.partition_map();
        let primaries: Vec<String> = (self.key_names().iter())
            .map(|k| format!("{k}:n{}", self.index_of(map.config_of(k.as_bytes()).primary()) + 1))
            .collect();
        writeln!(f, "  primaries: {}", primaries.join(" "))?;
        let clocks: Vec<String> = (self.clocks.iter().enumerate())
            .map(|(i, c)| format!("n{}:+{}ms/{:+}ppm", i + 1, c.offset.as_millis(), c.drift_ppm))
            .collect();
        writeln!(f, "  clocks: {}", clocks.join(" "))?;
        if let Some(bug) = self.planted_bug {
            writeln!(f, "  planted bug: {bug:?}")?;
        }
        if !self.policies.is_empty() {
            let rules: Vec<String> = (self.policies.iter())
                .map(|r| {
                    let enc = if r.encrypt { "+enc" } else { "" };
                    let versions = if r.versions > 1 { format!("+v{}", r.versions) } else { String::new() };
                    format!("{:?}:{}{enc}{versions}", r.prefix, r.compression)
                })
                .collect();
            writeln!(f, "  policies: {}, values padded by {} B", rules.join(" "), self.value_pad)?;
        }
        writeln!(f, "  safety phase {}, faults {:?}", ms(self.safety), self.faults)?;
        for e in &self.schedule {
            writeln!(f, "    at {:>6} for {:>5}: {}", ms(e.at), ms(e.duration), e.fault)?;
        }
        Ok(())
    }
}

impl Mix {
    /// Picks an operation kind by weight: 0 insert, 1 update, 2 upsert, 3 delete,
    /// 4 fetch, 5 list.
    pub fn draw(&self, d: &mut Dice) -> usize {
        let mut x = d.below(self.total().max(1) as u64) as u32;
        for (i, w) in
            [self.insert, self.update, self.upsert, self.delete, self.fetch, self.list].into_iter().enumerate()
        {
            if x < w {
                return i;
            }
            x -= w;
        }
        4
    }
}
