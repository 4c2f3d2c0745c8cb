//! Clients: each runs on its own simulated host and calls the public API through the
//! real generated gRPC client (`KeyValueStoreClient` over madsim-tonic), one operation at
//! a time, against a node picked at random for every call.
//!
//! Every operation has a deadline (the tonic timeout) and every write a unique value
//! (`c<client>-<seq>`), which gives the checker the most to work with. A client's
//! choices (operation, key, value, node, think time) come from its own ChaCha stream of
//! the seed, so they do not depend on how the simulation interleaves.
//!
//! Outcomes: OK, ALREADY_EXISTS and NOT_FOUND are definite; UNAVAILABLE,
//! DEADLINE_EXCEEDED, INTERNAL, CANCELLED, UNKNOWN (transport errors), and
//! RESOURCE_EXHAUSTED (overload) mean "may or may not have happened" (R6), unless the
//! message promises more: the checker holds every promise a message makes
//! (`memo_lincheck::promise_of_unavailable`). Any other code is an anomaly.

use crate::history::{ListResult, Recorder, VersionsResult};
use crate::options::{Dice, HOT_KEY, SimOptions};
use memo_lincheck::{Command, Outcome};
use memo_proto::kvs::key_value_store_client::KeyValueStoreClient;
use memo_proto::kvs::{
    DeleteRequest, FetchRequest, InsertRequest, ListRequest, ListVersionsRequest, UpdateRequest, UpsertRequest,
};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, sleep};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Pause between two attempts of one operation in the liveness phase.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// An operation a client is about to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Planned {
    /// A key operation.
    Kv {
        /// The key.
        key: String,
        /// The command.
        command: Command,
    },
    /// ListVersions of a versioned key, then a Fetch of one version it listed.
    Versions {
        /// The key.
        key: String,
    },
    /// A List.
    List {
        /// Prefix filter.
        prefix: String,
        /// Exclusive lower bound.
        marker: String,
        /// Page size (0: the default).
        max_keys: u64,
    },
}

impl fmt::Display for Planned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Planned::Kv { key, command } => write!(f, "{command} {key}"),
            Planned::Versions { key } => write!(f, "Versions {key}"),
            Planned::List { prefix, marker, max_keys } => write!(f, "List({prefix:?}, {marker:?}, {max_keys})"),
        }
    }
}

/// One client.
pub struct Client {
    index: usize,
    dice: Dice,
    stubs: Vec<KeyValueStoreClient<Channel>>,
    seq: u64,
    opts: Arc<SimOptions>,
    rec: Recorder,
}

impl Client {
    /// Client `index` of the run, with a lazily connecting channel to every node.
    pub fn new(index: usize, opts: Arc<SimOptions>, rec: Recorder) -> Client {
        let stubs = (0..opts.nodes)
            .map(|i| {
                let uri = format!("http://{}", crate::cluster::server_addr(i));
                let endpoint = Endpoint::from_shared(uri).expect("a valid URI");
                KeyValueStoreClient::new(endpoint.connect_lazy())
            })
            .collect();
        let dice = Dice::new(opts.seed, 0xc11e_0000 + index as u64);
        Client { index, dice, stubs, seq: 0, opts, rec }
    }

    /// Runs random operations until `end` (the last one may finish after it).
    pub async fn run_until(mut self, end: Instant) {
        while Instant::now() < end {
            let planned = self.plan();
            let _ = self.execute(&planned).await;
            let think = self.dice.below(self.opts.think_max.as_millis() as u64 + 1);
            sleep(Duration::from_millis(think)).await;
        }
    }

    /// Runs `ops` operations, retrying each (with a fresh value) until its outcome is
    /// definite; fails if one takes longer than `bound`.
    pub async fn run_liveness(mut self, ops: usize, bound: Duration) -> Result<(), String> {
        for _ in 0..ops {
            let planned = self.plan();
            self.until_definite(planned, bound).await?;
        }
        Ok(())
    }

    /// Upserts a final value into every key, each until it succeeds (within `bound`);
    /// returns the value each key ends with.
    pub async fn final_writes(mut self, keys: Vec<String>, bound: Duration) -> Result<Vec<(String, Vec<u8>)>, String> {
        let mut finals = Vec::new();
        for key in keys {
            let planned = Planned::Kv { key: key.clone(), command: Command::Upsert(Vec::new()) };
            if let Planned::Kv { command: Command::Upsert(value), .. } = self.until_definite(planned, bound).await? {
                finals.push((key, value));
            }
        }
        Ok(finals)
    }

    /// Runs `planned` until its outcome is definite; returns the attempt that was.
    async fn until_definite(&mut self, planned: Planned, bound: Duration) -> Result<Planned, String> {
        let started = Instant::now();
        loop {
            let (definite, attempt) = self.execute(&planned).await;
            if definite {
                return Ok(attempt);
            }
            if started.elapsed() > bound {
                return Err(format!(
                    "client c{} got no definite answer to {planned} within {}ms (retries included)",
                    self.index,
                    bound.as_millis()
                ));
            }
            sleep(RETRY_PAUSE).await;
        }
    }

    /// Draws the next operation.
    pub fn plan(&mut self) -> Planned {
        let key = if self.dice.chance(300) {
            HOT_KEY.to_string()
        } else {
            format!("k{}", self.dice.below(self.opts.keys as u64))
        };
        let command = match self.opts.mix.draw(&mut self.dice) {
            0 => Command::Insert(Vec::new()),
            1 => Command::Update(Vec::new()),
            2 => Command::Upsert(Vec::new()),
            3 => Command::Delete,
            // Half the reads of a versioned key read its versions instead.
            4 if self.opts.keep_of(&key) > 1 && self.dice.chance(500) => return Planned::Versions { key },
            4 => Command::Fetch,
            _ => return self.plan_list(),
        };
        Planned::Kv { key, command }
    }

    fn plan_list(&mut self) -> Planned {
        let prefix = match self.dice.below(10) {
            0..=4 => String::new(),
            5..=6 => "k".to_string(),
            _ => format!("k{}", self.dice.below(self.opts.keys as u64)),
        };
        let marker =
            if self.dice.chance(600) { String::new() } else { format!("k{}", self.dice.below(self.opts.keys as u64)) };
        let max_keys = if self.dice.chance(800) { 0 } else { self.dice.range(1..=3) };
        Planned::List { prefix, marker, max_keys }
    }

    /// Gives a write a fresh unique value.
    fn refresh(&mut self, planned: Planned) -> Planned {
        let Planned::Kv { key, command } = planned else { return planned };
        self.seq += 1;
        let mut value = format!("c{}-{}", self.index, self.seq).into_bytes();
        value.resize(value.len() + self.opts.value_pad, b'x');
        let command = match command {
            Command::Insert(_) => Command::Insert(value),
            Command::Update(_) => Command::Update(value),
            Command::Upsert(_) => Command::Upsert(value),
            other => other,
        };
        Planned::Kv { key, command }
    }

    /// Runs one operation (a write with a fresh value) against a random node and records
    /// it; returns whether its outcome is definite, and the operation as run.
    pub async fn execute(&mut self, planned: &Planned) -> (bool, Planned) {
        let planned = self.refresh(planned.clone());
        let node = self.dice.below(self.opts.nodes as u64) as usize;
        let definite = self.execute_on(node, planned.clone()).await;
        (definite, planned)
    }

    async fn execute_on(&mut self, node: usize, planned: Planned) -> bool {
        let client = self.index as u64;
        match planned {
            Planned::Kv { key, command } => {
                let op = self.rec.invoke(client, node, &key, command.clone());
                let (outcome, detail) = match self.call(node, &key, &command).await {
                    Ok(outcome) => (outcome, String::new()),
                    Err(status) => self.classify(&status),
                };
                let definite = outcome.is_observed();
                self.rec.complete(client, op, outcome, &detail);
                definite
            }
            Planned::Versions { key } => self.read_versions(node, key).await,
            Planned::List { prefix, marker, max_keys } => {
                let id = self.rec.list_invoke(client, node, &prefix, &marker, max_keys);
                let request = ListRequest { prefix, marker, delimiter: String::new(), max_keys };
                match self.stubs[node].list(with_deadline(request, self.opts.client_deadline)).await {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        let items = reply.items.into_iter().map(|i| i.key).collect();
                        self.rec.list_complete(id, Some(ListResult { items, truncated: reply.truncated }), "");
                        true
                    }
                    Err(status) => {
                        let (_, detail) = self.classify(&status);
                        self.rec.list_complete(id, None, &detail);
                        false
                    }
                }
            }
        }
    }

    /// ListVersions of `key`, then a Fetch of one version it listed (a value, if any),
    /// both through `node`; each answer is recorded for `check_versions`.
    async fn read_versions(&mut self, node: usize, key: String) -> bool {
        let (client, deadline) = (self.index as u64, self.opts.client_deadline);
        let invoked = self.rec.now();
        let request = with_deadline(ListVersionsRequest { key: key.clone() }, deadline);
        let listed: Vec<(u64, bool)> = match self.stubs[node].list_versions(request).await {
            Ok(reply) => reply.into_inner().versions.into_iter().map(|v| (v.number, v.deleted)).collect(),
            Err(status) if status.code() == Code::NotFound => Vec::new(),
            Err(status) => {
                let _ = self.classify(&status);
                return false;
            }
        };
        self.rec.versions_read(client, node, &key, invoked, VersionsResult::Listed(listed.clone()));
        let values: Vec<u64> = listed.iter().filter(|(_, deleted)| !deleted).map(|(n, _)| *n).collect();
        if values.is_empty() {
            return true;
        }
        let number = values[self.dice.below(values.len() as u64) as usize];
        let invoked = self.rec.now();
        let request = with_deadline(FetchRequest { key: key.clone(), version: number }, deadline);
        let fetched = match self.stubs[node].fetch(request).await {
            Ok(reply) => Some(reply.into_inner().value),
            Err(status) if status.code() == Code::NotFound => None,
            Err(status) => {
                let _ = self.classify(&status);
                return false;
            }
        };
        self.rec.versions_read(client, node, &key, invoked, VersionsResult::Fetched(number, fetched));
        true
    }

    async fn call(&mut self, node: usize, key: &str, command: &Command) -> Result<Outcome, Status> {
        let deadline = self.opts.client_deadline;
        let stub = &mut self.stubs[node];
        let key = key.to_string();
        match command.clone() {
            Command::Insert(value) => {
                stub.insert(with_deadline(InsertRequest { key, value }, deadline)).await.map(|_| Outcome::Ok)
            }
            Command::Update(value) => {
                stub.update(with_deadline(UpdateRequest { key, value }, deadline)).await.map(|_| Outcome::Ok)
            }
            Command::Upsert(value) => {
                stub.upsert(with_deadline(UpsertRequest { key, value }, deadline)).await.map(|_| Outcome::Ok)
            }
            Command::Delete => stub.delete(with_deadline(DeleteRequest { key }, deadline)).await.map(|_| Outcome::Ok),
            Command::Fetch => stub
                .fetch(with_deadline(FetchRequest { key, version: 0 }, deadline))
                .await
                .map(|reply| Outcome::Value(reply.into_inner().value)),
        }
    }

    /// The outcome a failed call stands for, and a note for the timeline.
    fn classify(&self, status: &Status) -> (Outcome, String) {
        let detail = format!("{:?}: {}", status.code(), status.message());
        match status.code() {
            Code::AlreadyExists => (Outcome::AlreadyExists, String::new()),
            Code::NotFound => (Outcome::NotFound, String::new()),
            Code::Unavailable => (memo_lincheck::promise_of_unavailable(status.message()), detail),
            Code::DeadlineExceeded | Code::Internal | Code::Cancelled | Code::Unknown | Code::ResourceExhausted => {
                (Outcome::Unknown, detail)
            }
            _ => {
                self.rec.anomaly(format!("client c{} got an unexpected status: {detail}", self.index));
                (Outcome::Unknown, detail)
            }
        }
    }
}

fn with_deadline<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}
