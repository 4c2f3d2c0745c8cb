//! Support for memo's end-to-end tests against real processes on loopback (the tests
//! themselves are in `tests/tests/`).
//!
//! - [`memo_bin`] finds the `memo` binary under test (or builds it);
//! - [`Cluster`] runs `memo node run` processes on durable data directories under the
//!   system temp dir, and injects process faults: SIGKILL with a restart on the same data
//!   directory, SIGSTOP / SIGCONT;
//! - [`ChildGuard`] and [`TempDir`] clean up however a test ends.
//!
//! Every port is on 127.0.0.1, every wait is bounded, every child is killed when its
//! guard drops.
#![cfg(not(madsim))]

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Kills the child (SIGKILL, which also ends a stopped process) when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory under the system temp dir, removed on drop unless the test is failing or
/// [`TempDir::keep`] was called (then it is kept and its path printed, with the nodes' logs
/// in it).
pub struct TempDir {
    /// The directory.
    pub path: PathBuf,
    keep: bool,
}

impl TempDir {
    /// A fresh, empty directory whose name starts with `memo-{name}-`.
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let unique = format!("memo-{name}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let path = std::env::temp_dir().join(unique);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("the temp dir can be created");
        TempDir { path, keep: false }
    }

    /// Keeps the directory for inspection (a failed run that goes on to the next).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep || std::thread::panicking() {
            eprintln!("kept for inspection: {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Ports nothing listens on right now (bound, read, released).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port")).collect();
    listeners.iter().map(|l| l.local_addr().expect("bound").port()).collect()
}

/// The `memo` binary under test: `$MEMO_BIN` if set (to test another build, e.g. an older
/// commit), else the workspace's own (Cargo gives a package's tests the paths of its own
/// binaries only). The profile follows the test's: a test in `target/release/deps/` uses
/// `target/release/memo`.
///
/// It is brought up to date first with `cargo test --workspace --no-run`, the README's
/// build: a no-op under `cargo test --workspace`, which built it already, and the same
/// features (building `-p memo-node` alone resolves other features and would rebuild
/// memo-node and tokio, twice).
pub fn memo_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("MEMO_BIN") {
            return PathBuf::from(bin);
        }
        let exe = std::env::current_exe().expect("the test knows its path");
        // target/<profile>/deps/<test> → target/<profile>/memo
        let profile_dir = exe.parent().and_then(Path::parent).expect("the test runs from target/<profile>/deps");
        let bin = profile_dir.join(format!("memo{}", std::env::consts::EXE_SUFFIX));
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["test", "--workspace", "--no-run", "--quiet"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        if let Some(target_dir) = profile_dir.parent() {
            build.arg("--target-dir").arg(target_dir);
        }
        let status = build.stdout(Stdio::null()).status().expect("cargo runs");
        assert!(status.success(), "building memo failed: {status}");
        assert!(bin.exists(), "{} exists after the build", bin.display());
        bin
    })
    .clone()
}

/// What a node of a [`Cluster`] is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Running.
    Up,
    /// Stopped with SIGSTOP.
    Paused,
    /// Killed (or never started).
    Down,
}

/// A cluster of `memo node run` processes: node `nI` keeps its data in `ROOT/nI` and its
/// log (stderr) in `ROOT/nI.log`, appended across restarts. The processes die with it;
/// their logs' tails are printed if the test is failing.
pub struct Cluster {
    /// The root directory.
    pub root: TempDir,
    ports: Vec<u16>,
    partitions: u32,
    children: Vec<Option<ChildGuard>>,
    paused: Vec<bool>,
    /// Nodes `0..founders` create the cluster; the others join it through node 0.
    founders: usize,
    /// More `memo node run` flags for every node.
    pub extra_args: Vec<String>,
    /// More flags for node `i` only (after `extra_args`), where present.
    pub node_args: Vec<Vec<String>>,
}

impl Cluster {
    /// A cluster of `nodes` nodes with `partitions` partitions; nothing started yet.
    pub fn new(name: &str, nodes: usize, partitions: u32) -> Self {
        Self::elastic(name, nodes, nodes, partitions)
    }

    /// A cluster whose first `founders` nodes create it, and whose other nodes (up to
    /// `nodes`) join it through node 0 when started; nothing started yet.
    pub fn elastic(name: &str, founders: usize, nodes: usize, partitions: u32) -> Self {
        Cluster {
            root: TempDir::new(name),
            ports: free_ports(nodes),
            partitions,
            children: (0..nodes).map(|_| None).collect(),
            paused: vec![false; nodes],
            founders,
            extra_args: Vec::new(),
            node_args: Vec::new(),
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// Whether the cluster has no node.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// The name of node `i` (`n1`, `n2`, …).
    pub fn name(i: usize) -> String {
        format!("n{}", i + 1)
    }

    /// The client endpoint of node `i`.
    pub fn endpoint(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[i]))
    }

    /// The data directory of node `i`.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.root.path.join(Self::name(i))
    }

    /// `memo node run` arguments for node `i`.
    pub fn args(&self, i: usize) -> Vec<String> {
        let initial: Vec<String> =
            (0..self.founders).map(|j| format!("{}={}", Self::name(j), self.endpoint(j))).collect();
        let mut args: Vec<String> = ["node", "run", "--id"].map(String::from).to_vec();
        args.push(Self::name(i));
        args.extend(["--listen".into(), self.endpoint(i).to_string()]);
        if i < self.founders {
            args.extend(["--initial-nodes".into(), initial.join(",")]);
            args.extend(["--partitions".into(), self.partitions.to_string()]);
        } else {
            args.extend(["--join".into(), self.endpoint(0).to_string()]);
        }
        args.extend(["--cluster-token".into(), "memo-tests".into()]);
        args.extend(["--data-dir".into(), self.data_dir(i).display().to_string()]);
        args.extend(self.extra_args.iter().cloned());
        args.extend(self.node_args.get(i).into_iter().flatten().cloned());
        args
    }

    /// Waits up to `limit` for node `i`'s process to exit by itself; true if it did
    /// (then it is reaped and counted as down).
    pub fn wait_exit(&mut self, i: usize, limit: std::time::Duration) -> bool {
        let until = std::time::Instant::now() + limit;
        while std::time::Instant::now() < until {
            let exited = self.children[i].as_mut().is_some_and(|c| c.0.try_wait().ok().flatten().is_some());
            if exited {
                self.children[i] = None;
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        false
    }

    /// What node `i` is doing.
    pub fn state(&self, i: usize) -> NodeState {
        match (&self.children[i], self.paused[i]) {
            (None, _) => NodeState::Down,
            (Some(_), true) => NodeState::Paused,
            (Some(_), false) => NodeState::Up,
        }
    }

    /// Starts node `i` in the background.
    pub fn start(&mut self, i: usize) {
        assert!(self.children[i].is_none(), "node {i} is already running");
        let log_path = self.root.path.join(format!("{}.log", Self::name(i)));
        let log = File::options().create(true).append(true).open(&log_path).expect("the log opens");
        let child = Command::new(memo_bin())
            .args(self.args(i))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("memo node run starts");
        self.children[i] = Some(ChildGuard(child));
        self.paused[i] = false;
    }

    /// Starts every node that is down and resumes every paused one.
    pub fn heal(&mut self) {
        for i in 0..self.len() {
            match self.state(i) {
                NodeState::Down => self.start(i),
                NodeState::Paused => self.resume(i),
                NodeState::Up => {}
            }
        }
    }

    /// SIGKILLs node `i` (running or paused) and reaps it.
    pub fn kill(&mut self, i: usize) {
        let mut guard = self.children[i].take().expect("node is running");
        guard.0.kill().expect("SIGKILL is delivered");
        guard.0.wait().expect("the killed node is reaped");
        self.paused[i] = false;
    }

    /// SIGSTOPs node `i`.
    pub fn pause(&mut self, i: usize) {
        self.signal(i, "-STOP");
        self.paused[i] = true;
    }

    /// SIGCONTs node `i`.
    pub fn resume(&mut self, i: usize) {
        self.signal(i, "-CONT");
        self.paused[i] = false;
    }

    fn signal(&self, i: usize, signal: &str) {
        let pid = self.children[i].as_ref().expect("node is running").0.id();
        let status = Command::new("kill").args([signal, &pid.to_string()]).status().expect("kill(1) runs");
        assert!(status.success(), "kill {signal} {pid}: {status}");
    }

    /// The last `lines` lines of node `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let log = std::fs::read_to_string(self.root.path.join(format!("{}.log", Self::name(i)))).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            drop(child.take());
        }
        if std::thread::panicking() {
            for i in 0..self.len() {
                eprintln!("----- end of the log of {} -----\n{}", Self::name(i), self.log_tail(i, 40));
            }
        }
    }
}
