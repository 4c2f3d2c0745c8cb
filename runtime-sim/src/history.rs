//! The run's record: client operations for the checkers, and a readable timeline of
//! everything (operations, faults, node lifecycle, phases) in simulated time.
//!
//! Times are nanoseconds of simulated time since the recorder was created. The timeline
//! is plain text, one event per line; its FNV-1a hash is the run's fingerprint (two runs
//! of one seed must produce the same hash).

use memo_lincheck::{Command, History, OpId, Operation, Outcome};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};

/// A List call and what it returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListRecord {
    /// The client.
    pub client: u64,
    /// The request's prefix.
    pub prefix: String,
    /// The request's marker (exclusive lower bound; empty: none).
    pub marker: String,
    /// When it was invoked.
    pub invoked_at: u64,
    /// When it returned (meaningless without a result).
    pub completed_at: u64,
    /// The listed keys and the truncation flag, if the call succeeded.
    pub result: Option<ListResult>,
}

/// A successful List's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListResult {
    /// The listed keys, in the order returned.
    pub items: Vec<String>,
    /// Whether more keys follow.
    pub truncated: bool,
}

/// A versioning read (ListVersions, or Fetch of one version) and what it returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionsRecord {
    /// The client.
    pub client: u64,
    /// The key.
    pub key: String,
    /// When it was invoked.
    pub invoked_at: u64,
    /// When it returned.
    pub completed_at: u64,
    /// What it returned.
    pub result: VersionsResult,
}

/// What a versioning read returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionsResult {
    /// ListVersions: `(number, deleted)` oldest first (empty: NOT_FOUND).
    Listed(Vec<(u64, bool)>),
    /// Fetch of version `number`: its value, or `None` if NOT_FOUND.
    Fetched(u64, Option<Vec<u8>>),
}

/// Handle of a recorded List.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListId(usize);

/// Counts of outcomes, for summaries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Key operations invoked.
    pub ops: u64,
    /// Definite outcomes (success or a failed precondition).
    pub definite: u64,
    /// Unknown outcomes.
    pub unknown: u64,
    /// Lists invoked.
    pub lists: u64,
    /// Lists that returned a page.
    pub lists_ok: u64,
    /// Fault events.
    pub faults: u64,
}

#[derive(Debug)]
struct Inner {
    start: tokio::time::Instant,
    lines: Vec<String>,
    history: History,
    lists: Vec<ListRecord>,
    versions: Vec<VersionsRecord>,
    counts: Counts,
    anomalies: Vec<String>,
}

/// Records a run. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct Recorder(Arc<Mutex<Inner>>);

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty record whose time zero is now. Create it inside the simulation.
    pub fn new() -> Self {
        Recorder(Arc::new(Mutex::new(Inner {
            start: tokio::time::Instant::now(),
            lines: Vec::new(),
            history: History::new(),
            lists: Vec::new(),
            versions: Vec::new(),
            counts: Counts::default(),
            anomalies: Vec::new(),
        })))
    }

    /// Simulated nanoseconds since the start.
    pub fn now(&self) -> u64 {
        let start = self.lock().start;
        start.elapsed().as_nanos() as u64
    }

    /// Adds a timeline line: `tag` is a short upper-case category (FAULT, HEAL, NODE,
    /// PHASE, ...).
    pub fn note(&self, tag: &str, text: impl AsRef<str>) {
        let at = self.now();
        let mut inner = self.lock();
        if tag == "FAULT" {
            inner.counts.faults += 1;
        }
        inner.lines.push(format!("{} {tag:<6} {}", stamp(at), text.as_ref()));
    }

    /// Records something that must never happen (an impossible status code, a node that
    /// failed to start); the run fails.
    pub fn anomaly(&self, text: impl Into<String>) {
        let text = text.into();
        self.note("ANOMALY", &text);
        self.lock().anomalies.push(text);
    }

    /// Records that `client` invoked `command` on `key` through server `node`.
    pub fn invoke(&self, client: u64, node: usize, key: &str, command: Command) -> OpId {
        let at = self.now();
        let mut inner = self.lock();
        let line = format!("{} c{client:<5} -> n{} {command} {key}", stamp(at), node + 1);
        let op = inner.history.invoke(client, key, command, at);
        inner.lines.push(format!("{line}  #{}", op.0));
        inner.counts.ops += 1;
        op
    }

    /// Records the outcome of `op`; `detail` (a status message) goes to the timeline only.
    pub fn complete(&self, client: u64, op: OpId, outcome: Outcome, detail: &str) {
        let at = self.now();
        let mut inner = self.lock();
        if !outcome.is_observed() {
            inner.counts.unknown += 1;
        } else {
            inner.counts.definite += 1;
        }
        let mut line = format!("{} c{client:<5} <-    {outcome}  #{}", stamp(at), op.0);
        if !detail.is_empty() {
            let _ = write!(line, "  ({detail})");
        }
        inner.lines.push(line);
        inner.history.complete(op, outcome, at);
    }

    /// Records a List invocation.
    pub fn list_invoke(&self, client: u64, node: usize, prefix: &str, marker: &str, max_keys: u64) -> ListId {
        let at = self.now();
        let mut inner = self.lock();
        let id = ListId(inner.lists.len());
        inner.lines.push(format!(
            "{} c{client:<5} -> n{} List(prefix {prefix:?}, marker {marker:?}, max {max_keys})  L{}",
            stamp(at),
            node + 1,
            id.0
        ));
        inner.lists.push(ListRecord {
            client,
            prefix: prefix.to_string(),
            marker: marker.to_string(),
            invoked_at: at,
            completed_at: at,
            result: None,
        });
        inner.counts.lists += 1;
        id
    }

    /// Records a List's answer (`None`: the call failed; `detail` says how).
    pub fn list_complete(&self, id: ListId, result: Option<ListResult>, detail: &str) {
        let at = self.now();
        let mut inner = self.lock();
        let client = inner.lists[id.0].client;
        let text = match &result {
            Some(r) => format!("listed [{}]{}", r.items.join(","), if r.truncated { " (truncated)" } else { "" }),
            None => format!("failed ({detail})"),
        };
        inner.lines.push(format!("{} c{client:<5} <-    {text}  L{}", stamp(at), id.0));
        if result.is_some() {
            inner.counts.lists_ok += 1;
        }
        let list = &mut inner.lists[id.0];
        list.completed_at = at;
        list.result = result;
    }

    /// Records a versioning read that returned (`invoked_at` from [`Recorder::now`]
    /// before the call); failed calls are not recorded.
    pub fn versions_read(&self, client: u64, node: usize, key: &str, invoked_at: u64, result: VersionsResult) {
        let at = self.now();
        let mut inner = self.lock();
        let text = match &result {
            VersionsResult::Listed(v) => {
                let v: Vec<String> =
                    v.iter().map(|(n, d)| if *d { format!("{n}:deleted") } else { n.to_string() }).collect();
                format!("ListVersions {key} via n{} = [{}]", node + 1, v.join(","))
            }
            VersionsResult::Fetched(n, value) => {
                // The value without its padding (`c<client>-<seq>` then `x`s).
                let shown =
                    |v: &Vec<u8>| String::from_utf8_lossy(v.split(|b| *b == b'x').next().unwrap_or(v)).into_owned();
                let value = value.as_ref().map_or("NOT_FOUND".into(), shown);
                format!("Fetch {key} version {n} via n{} = {value}", node + 1)
            }
        };
        inner.lines.push(format!("{} c{client:<5} <>    {text}", stamp(at)));
        inner.versions.push(VersionsRecord { client, key: key.to_string(), invoked_at, completed_at: at, result });
    }

    /// The versioning reads so far.
    pub fn versions(&self) -> Vec<VersionsRecord> {
        self.lock().versions.clone()
    }

    /// The key operations so far.
    pub fn operations(&self) -> Vec<Operation> {
        self.lock().history.operations()
    }

    /// The Lists so far.
    pub fn lists(&self) -> Vec<ListRecord> {
        self.lock().lists.clone()
    }

    /// The anomalies so far.
    pub fn anomalies(&self) -> Vec<String> {
        self.lock().anomalies.clone()
    }

    /// The outcome counts so far.
    pub fn counts(&self) -> Counts {
        self.lock().counts
    }

    /// The timeline as text.
    pub fn timeline(&self) -> String {
        let inner = self.lock();
        let mut out = String::with_capacity(inner.lines.len() * 64);
        for line in &inner.lines {
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// FNV-1a (64-bit) of the timeline: the run's fingerprint.
    pub fn hash(&self) -> u64 {
        fnv1a(self.timeline().as_bytes())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Single-threaded simulation; a poisoned lock only follows a panic elsewhere.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `   12.345678` seconds, right-aligned.
fn stamp(nanos: u64) -> String {
    format!("{:>5}.{:06}", nanos / 1_000_000_000, (nanos % 1_000_000_000) / 1000)
}

/// FNV-1a, 64 bits.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
