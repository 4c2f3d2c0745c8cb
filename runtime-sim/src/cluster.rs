//! The simulated cluster: one madsim host per memo node, each running the real
//! `memo_node::spawn_node_on` with its [`SkewClock`] and a [`SimStorage`] on its
//! [`SimDisk`], plus one host per client.
//!
//! A server host's init closure rebuilds the node from its disk, so `Handle::kill` then
//! `Handle::restart` is a process crash and restart. Crashing goes through
//! [`Cluster::crash`], which first crashes the disk (losing unsynced writes and fencing
//! the dying incarnation), then kills the host.
//!
//! Fault bookkeeping lives here too: links are cut with reference counts (madsim's
//! `clog_link` is a boolean per direction, and fault episodes overlap), and a node taken
//! down or paused by one episode is brought back only by that episode (or by the final
//! heal).

use crate::clock::SkewClock;
use crate::history::Recorder;
use crate::options::{Dice, SimOptions};
use crate::storage::SimDisk;
use madsim::runtime::{Handle, NodeHandle};
use memo_node::{CommitMode, Listener, NodeOptions, SharedStorage, spawn_node_on};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The port every node listens on.
pub const PORT: u16 = 7001;

/// The token of the final heal, which may undo any episode's fault.
pub const HEAL: u64 = u64::MAX;
/// The `down_by` token of a server that waits for its Join episode.
pub const JOINING: u64 = u64::MAX - 1;

/// The simulation's data key file: every node holds it.
pub const SIM_KEY_FILE: &str = "sim 5151515151515151515151515151515151515151515151515151515151515151\n";

/// A keyring of [`SIM_KEY_FILE`] whose nonces come from `nonces`.
pub fn sim_keyring(nonces: [u8; 32]) -> memo_node::policy::crypt::Keyring {
    memo_node::policy::crypt::Keyring::parse(SIM_KEY_FILE, nonces).expect("the simulation's key file parses")
}

/// Where server `i` listens.
pub fn server_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i as u8 + 1], PORT))
}

/// Client `c`'s address.
pub fn client_ip(c: usize) -> IpAddr {
    IpAddr::from([10, 0, 1, c as u8 + 1])
}

/// A simulated host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Host {
    /// Server `i` (memo node `n{i+1}`).
    Server(usize),
    /// Client `c`.
    Client(usize),
}

/// A server host.
pub struct Server {
    /// Its index.
    pub index: usize,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The madsim host.
    pub host: NodeHandle,
    /// Its disk (outlives incarnations).
    pub disk: Arc<SimDisk>,
    /// Its clock (outlives incarnations).
    pub clock: Arc<SkewClock>,
    /// Incarnations started so far.
    pub incarnations: Arc<AtomicU64>,
    life: Mutex<Life>,
}

/// Which episode holds a node down or paused.
#[derive(Debug, Default)]
struct Life {
    down_by: Option<u64>,
    paused_by: Option<u64>,
}

#[derive(Debug, Default)]
struct NetState {
    cuts: BTreeMap<(Host, Host), u32>,
    /// Active degradations by episode: (loss, latency range).
    degraded: BTreeMap<u64, (f64, (u64, u64))>,
}

/// The cluster and its fault state.
pub struct Cluster {
    /// The run's options.
    pub opts: Arc<SimOptions>,
    /// The run's record.
    pub rec: Recorder,
    /// The servers, by index.
    pub servers: Vec<Server>,
    /// The client hosts, by index.
    pub clients: Vec<NodeHandle>,
    net: Mutex<NetState>,
    draws: Mutex<Dice>,
    healed: AtomicBool,
    /// The real directory under which the servers save their policy tables, removed
    /// with the cluster.
    policy_dir: Option<std::path::PathBuf>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(dir) = &self.policy_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A fresh real directory for one run's policy tables: unique per process and run, so
/// runs in parallel and runs of one seed one after the other never share a table.
fn policy_dir(seed: u64) -> std::path::PathBuf {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("memo-sim-{}-{seed:x}-{run}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

impl Cluster {
    /// Creates every host and starts the nodes. Call inside the simulation.
    pub fn build(opts: Arc<SimOptions>, rec: Recorder) -> Arc<Cluster> {
        let handle = Handle::current();
        let peers: BTreeMap<_, _> = (0..opts.nodes).map(|i| (opts.node_id(i), server_addr(i))).collect();
        let policy_dir = (!opts.policies.is_empty()).then(|| policy_dir(opts.seed));
        let servers = (0..opts.nodes)
            .map(|i| {
                let spec = opts.clocks[i];
                let server = ServerParts {
                    index: i,
                    disk: SimDisk::new(format!("n{}", i + 1), opts.crash_mode),
                    clock: Arc::new(SkewClock::new(spec.offset, spec.drift_ppm)),
                    incarnations: Arc::new(AtomicU64::new(0)),
                    policy_dir: policy_dir.as_ref().map(|d| {
                        let dir = d.join(format!("n{}", i + 1));
                        // A directory the run cannot create fails every policy save,
                        // which the run reports (the rules never get confirmed).
                        let _ = std::fs::create_dir_all(&dir);
                        dir
                    }),
                };
                let host = handle
                    .create_node()
                    .name(format!("n{}", i + 1))
                    .ip(server_addr(i).ip())
                    .init(server.init(&opts, &peers, &rec))
                    .build();
                Server {
                    index: i,
                    addr: server_addr(i),
                    host,
                    disk: server.disk,
                    clock: server.clock,
                    incarnations: server.incarnations,
                    life: Mutex::default(),
                }
            })
            .collect();
        let clients =
            (0..=opts.clients).map(|c| handle.create_node().name(format!("c{c}")).ip(client_ip(c)).build()).collect();
        let cluster = Cluster {
            policy_dir,
            draws: Mutex::new(Dice::new(opts.seed, 0xc7a5)),
            opts,
            rec,
            servers,
            clients,
            net: Mutex::default(),
            healed: AtomicBool::new(false),
        };
        cluster.apply_network_config();
        // Servers that join later are held down until their Join episode.
        for &i in &cluster.opts.late {
            Handle::current().kill(cluster.servers[i].host.id());
            lock(&cluster.servers[i].life).down_by = Some(JOINING);
            cluster.rec.note("NODE", format!("n{} waits to join", i + 1));
        }
        Arc::new(cluster)
    }

    /// Starts a server that waits to join (its Join episode).
    pub fn join(&self, i: usize) {
        let server = &self.servers[i];
        let mut life = lock(&server.life);
        if life.down_by != Some(JOINING) {
            return;
        }
        Handle::current().restart(server.host.id());
        life.down_by = None;
        self.rec.note("NODE", format!("n{} starts and joins", i + 1));
    }

    /// Whether faults may still be injected (the final heal has not happened).
    pub fn faults_on(&self) -> bool {
        !self.healed.load(Ordering::SeqCst)
    }

    fn madsim_id(&self, host: Host) -> madsim::task::NodeId {
        match host {
            Host::Server(i) => self.servers[i].host.id(),
            Host::Client(c) => self.clients[c].id(),
        }
    }

    /// Cuts the link `from → to` (counted: each cut needs its own [`Cluster::uncut`]).
    pub fn cut(&self, from: Host, to: Host) {
        let mut net = lock(&self.net);
        let count = net.cuts.entry((from, to)).or_insert(0);
        *count += 1;
        if *count == 1 {
            madsim::net::NetSim::current().clog_link(self.madsim_id(from), self.madsim_id(to));
        }
    }

    /// Undoes one [`Cluster::cut`] of `from → to`.
    pub fn uncut(&self, from: Host, to: Host) {
        let mut net = lock(&self.net);
        let Some(count) = net.cuts.get_mut(&(from, to)) else { return };
        *count -= 1;
        if *count == 0 {
            net.cuts.remove(&(from, to));
            madsim::net::NetSim::current().unclog_link(self.madsim_id(from), self.madsim_id(to));
        }
    }

    /// Starts (`Some`) or ends (`None`) episode `token`'s network degradation. While any
    /// is active, the most recent one's settings apply; then the healthy baseline.
    pub fn degrade(&self, token: u64, settings: Option<(f64, (u64, u64))>) {
        let mut net = lock(&self.net);
        match settings {
            Some(s) => net.degraded.insert(token, s),
            None => net.degraded.remove(&token),
        };
        drop(net);
        self.apply_network_config();
    }

    fn apply_network_config(&self) {
        let net = lock(&self.net);
        let (loss, (lo, hi)) = net.degraded.values().next_back().copied().unwrap_or((0.0, self.opts.latency_ms));
        madsim::net::NetSim::current().update_config(|c| {
            c.packet_loss_rate = loss;
            c.send_latency = Duration::from_millis(lo)..Duration::from_millis(hi.max(lo + 1));
        });
    }

    /// Whether server `i` is up and running (not down, not paused).
    pub fn is_running(&self, i: usize) -> bool {
        let life = lock(&self.servers[i].life);
        life.down_by.is_none() && life.paused_by.is_none()
    }

    /// Crashes server `i` on behalf of `token`: its disk loses unsynced writes, then the
    /// host is killed. Refused (false) if the node is down or paused already.
    pub fn crash(&self, i: usize, token: u64) -> bool {
        let server = &self.servers[i];
        let mut life = lock(&server.life);
        if life.down_by.is_some() || life.paused_by.is_some() {
            return false;
        }
        let draw = lock(&self.draws).draw();
        let pending = server.disk.pending_batches();
        server.disk.crash(draw);
        Handle::current().kill(server.host.id());
        life.down_by = Some(token);
        self.rec.note("NODE", format!("n{} crashed ({pending} unsynced batches on its disk)", i + 1));
        true
    }

    /// Marks server `i` down after its disk died by itself (a power cut) and kills the
    /// host (which releases its sockets).
    pub fn bury(&self, i: usize, token: u64) {
        let server = &self.servers[i];
        let mut life = lock(&server.life);
        if life.down_by.is_some() {
            return;
        }
        Handle::current().kill(server.host.id());
        life.down_by = Some(token);
        self.rec.note("NODE", format!("n{} died of a power cut inside a commit", i + 1));
    }

    /// Restarts server `i` if `token` took it down (or `token` is [`HEAL`], unless it
    /// still waits to join: a server that never joined stays out).
    pub fn restart(&self, i: usize, token: u64) {
        let server = &self.servers[i];
        let mut life = lock(&server.life);
        let Some(by) = life.down_by else { return };
        if (by != token && token != HEAL) || by == JOINING {
            return;
        }
        Handle::current().restart(server.host.id());
        life.down_by = None;
        self.rec.note("NODE", format!("n{} restarting", i + 1));
    }

    /// Pauses server `i` on behalf of `token`; refused if down or paused already.
    pub fn pause(&self, i: usize, token: u64) -> bool {
        let server = &self.servers[i];
        let mut life = lock(&server.life);
        if life.down_by.is_some() || life.paused_by.is_some() {
            return false;
        }
        Handle::current().pause(server.host.id());
        life.paused_by = Some(token);
        true
    }

    /// Resumes server `i` if `token` paused it (or `token` is [`HEAL`]).
    pub fn resume(&self, i: usize, token: u64) {
        let server = &self.servers[i];
        let mut life = lock(&server.life);
        match life.paused_by {
            Some(by) if by == token || token == HEAL => {
                Handle::current().resume(server.host.id());
                life.paused_by = None;
            }
            _ => {}
        }
    }

    /// Ends every fault: faults stop, links are restored, the network is healthy again,
    /// paused nodes resume, dead nodes restart, and clock drifts return to their
    /// baselines (offsets and past jumps stay: skew is not a fault).
    pub fn heal(&self) {
        self.healed.store(true, Ordering::SeqCst);
        let cuts: Vec<(Host, Host)> = lock(&self.net).cuts.keys().copied().collect();
        for (from, to) in cuts {
            madsim::net::NetSim::current().unclog_link(self.madsim_id(from), self.madsim_id(to));
        }
        {
            let mut net = lock(&self.net);
            net.cuts.clear();
            net.degraded.clear();
        }
        self.apply_network_config();
        let handle = Handle::current();
        for i in 0..self.servers.len() {
            self.resume(i, HEAL);
            let server = &self.servers[i];
            server.disk.disarm();
            let exited = handle.is_exit(server.host.id());
            if exited && lock(&server.life).down_by.is_none() {
                // The node stopped by itself (a power cut the episode did not see yet,
                // or a failure already recorded as an anomaly): kill to free its sockets.
                self.bury(i, HEAL);
            }
            self.restart(i, HEAL);
            server.clock.set_drift(self.opts.clocks[i].drift_ppm);
        }
        self.rec.note("HEAL", "all faults healed; every node up");
    }
}

/// What a server's init closure needs besides the options.
struct ServerParts {
    index: usize,
    disk: Arc<SimDisk>,
    clock: Arc<SkewClock>,
    incarnations: Arc<AtomicU64>,
    /// Where it saves its policy table (scenarios with policies only).
    policy_dir: Option<std::path::PathBuf>,
}

impl ServerParts {
    /// The host's init closure: open the disk, start the node, wait for it to stop.
    fn init(
        &self,
        opts: &SimOptions,
        peers: &BTreeMap<memo_engine::NodeId, SocketAddr>,
        rec: &Recorder,
    ) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = ()>>> + Send + Sync + 'static {
        let i = self.index;
        let config = opts.config(i);
        let (peers, rec, seed, transport) = (peers.clone(), rec.clone(), opts.seed, opts.transport);
        let (disk, clock, incarnations) = (self.disk.clone(), self.clock.clone(), self.incarnations.clone());
        let policy_refresh = (!opts.policies.is_empty()).then_some(memo_node::policy::table::REFRESH_INTERVAL);
        let policy_file = self.policy_dir.as_ref().map(|dir| dir.join(memo_node::datadir::POLICY_FILE));
        let encrypts = opts.policies.iter().any(|r| r.encrypt);
        move || {
            let incarnation = incarnations.fetch_add(1, Ordering::SeqCst) + 1;
            let keyring = encrypts.then(|| {
                let nonces = memo_node::policy::crypt::nonce_seed(seed ^ ((i as u64) << 40) ^ incarnation);
                Arc::new(sim_keyring(nonces))
            });
            let options = NodeOptions {
                config: config.clone(),
                listen: server_addr(i),
                peers: peers.clone(),
                seed: seed ^ ((i as u64) << 48) ^ incarnation.wrapping_mul(0x2545_f491_4f6c_dd1d),
                clock: clock.clone(),
                peer_transport: transport,
                commit_mode: CommitMode::Inline,
                // The simulated clients' values are a few bytes: no codec would shrink them.
                value_policy: Default::default(),
                // Scenarios without policies run as before the table existed: a periodic
                // refresh would add a read of its key every 10 s to every run's schedule
                // (the planted bugs' teeth are tuned on the runs without it). With
                // policies, each server saves its table as production does, in a real
                // directory of its own, and loads it when it restarts.
                keyring: keyring.clone(),
                policy_file: policy_file.clone(),
                policy_refresh,
            };
            let (disk, rec) = (disk.clone(), rec.clone());
            Box::pin(async move {
                let storage: SharedStorage = Arc::new(disk.open());
                let started = async {
                    let listener = Listener::bind(server_addr(i)).await?;
                    spawn_node_on(listener, options, storage).await
                };
                let mut node = match started.await {
                    Ok(node) => node,
                    Err(e) => return rec.anomaly(format!("n{} could not start: {e}", i + 1)),
                };
                rec.note("NODE", format!("n{} up (incarnation {incarnation})", i + 1));
                let stopped = node.stopped().await;
                if disk.died() {
                    rec.note("NODE", format!("n{} stopped: its disk lost power ({stopped:?})", i + 1));
                } else {
                    rec.anomaly(format!("n{} stopped by itself: {stopped:?}", i + 1));
                }
            })
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
