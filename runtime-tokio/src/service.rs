//! The public `memo.kvs.KeyValueStore` service: each RPC becomes one engine
//! [`Request`] submitted to the event loop, and the engine's answer becomes the RPC's
//! response or status. [`status_from`] is the one place where engine errors turn into
//! gRPC status codes.

use crate::node::{Call, CallResult};
use crate::policy::table::{self, Policies, RESERVED_PREFIX};
use memo_engine::kv::{Change, Stamp, Version};
use memo_engine::list::ListQuery;
use memo_engine::{KvError, Request, Response};
use memo_proto::kvs::key_value_store_server::KeyValueStore;
use memo_proto::kvs::{
    DeleteRequest, DeleteResponse, FetchRequest, FetchResponse, InsertRequest, InsertResponse, ListItem, ListRequest,
    ListResponse, ListVersionsRequest, ListVersionsResponse, UpdateRequest, UpdateResponse, UpsertRequest,
    UpsertResponse, VersionInfo,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tonic::{Code, Status};

/// How much longer than the engine's request deadline a call waits for its answer. The
/// engine answers every request by its deadline; this only guards against a loop that
/// stopped.
pub const REPLY_GRACE: Duration = Duration::from_secs(1);

/// Maps an engine error to its gRPC status (README.md, "Status codes"). The only such mapping.
pub fn status_from(error: KvError) -> Status {
    match error {
        KvError::InvalidArgument(why) => Status::invalid_argument(why),
        KvError::AlreadyExists => Status::already_exists(KvError::AlreadyExists.to_string()),
        KvError::NotFound => Status::not_found(KvError::NotFound.to_string()),
        KvError::Conflict => Status::aborted(KvError::Conflict.to_string()),
        KvError::Unavailable(why) => Status::unavailable(why),
        KvError::ResourceExhausted(why) => Status::resource_exhausted(why),
        KvError::Internal(why) => Status::internal(why),
    }
}

/// The canonical name of a gRPC status code, e.g. `NOT_FOUND` (the `code` label of
/// the request metrics, and what `memo kv` prints).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// How often a stopping node checks whether its in-flight calls have finished.
pub const DRAIN_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Admission of client calls: open until the node starts stopping, then closed while
/// the calls already admitted finish. Peer traffic keeps flowing meanwhile, since
/// those calls may need it.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    closed: AtomicBool,
    in_flight: AtomicUsize,
}

impl Admission {
    /// Admits a call, or refuses it once closed. The guard counts it until dropped.
    fn enter(self: &Arc<Self>) -> Option<AdmissionGuard> {
        // Count first, then check: `drain` closes first, then reads the count, so a call
        // is either refused or counted, never missed.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = AdmissionGuard(self.clone());
        (!self.closed.load(Ordering::SeqCst)).then_some(guard)
    }

    /// Refuses new calls and waits until the admitted ones finish, for up to `grace`.
    /// Returns whether they all finished.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.closed.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + grace;
        while self.in_flight.load(Ordering::SeqCst) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(DRAIN_POLL_INTERVAL).await;
        }
        true
    }
}

/// One admitted call.
struct AdmissionGuard(Arc<Admission>);

impl Drop for AdmissionGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The service: a handle on the event loop's call queue.
#[derive(Clone)]
pub(crate) struct KvService {
    pub calls: mpsc::Sender<Call>,
    /// The engine's request deadline, plus [`REPLY_GRACE`].
    pub reply_timeout: Duration,
    pub admission: Arc<Admission>,
    /// This node's name, the `node` label of its request metrics.
    pub node: Arc<str>,
    /// How values written through this node are encoded: the cluster's policy table as
    /// this node has it.
    pub policies: Arc<Policies>,
    /// The largest value a client may write, and the most a stored value may decode to.
    pub value_bytes_max: usize,
}

impl KvService {
    /// Runs one RPC, recording its outcome and duration when metrics are enabled
    /// ([`crate::metrics`]); a call the client abandons counts as CANCELLED.
    async fn observe<T>(&self, rpc: &'static str, call: impl Future<Output = RpcResult<T>>) -> RpcResult<T> {
        if !crate::metrics::enabled() {
            return call.await;
        }
        let mut timer = RpcTimer { node: &self.node, rpc, started: tokio::time::Instant::now(), code: Code::Cancelled };
        let result = call.await;
        timer.code = match &result {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        result
    }

    /// Submits a request and waits for the engine's answer.
    pub(crate) async fn submit(&self, request: Request) -> Result<Response, Status> {
        let Some(_admitted) = self.admission.enter() else {
            return Err(status_from(stopped("the node is stopping")));
        };
        let (reply, answer) = oneshot::channel();
        let call = Call { request, reply };
        if let Err(e) = self.calls.try_send(call) {
            return Err(status_from(queue_error(e)));
        }
        let outcome: Result<CallResult, _> = match tokio::time::timeout(self.reply_timeout, answer).await {
            Ok(outcome) => outcome,
            Err(_) => return Err(status_from(stopped("the node did not answer in time"))),
        };
        // A dropped reply slot means the loop stopped with the request in flight: its
        // outcome is unknown (R6).
        let result = outcome.map_err(|_| status_from(stopped("the node stopped")))?;
        result.map_err(status_from)
    }

    /// A write of `value` to `key`: the value is checked against the limit as the
    /// client sent it, then encoded under this node's policy.
    fn encoded(
        &self,
        key: String,
        value: Vec<u8>,
        change: fn(memo_engine::Value) -> Change,
    ) -> Result<Request, Status> {
        check_key(&key)?;
        memo_engine::node::validate_value_len(value.len(), self.value_bytes_max).map_err(status_from)?;
        let (value, stamp) = self.policies.write(&key, value).map_err(status_from)?;
        Ok(Request::Kv { key, change: change(value), stamp })
    }

    /// The versions of `key` (all, or the one numbered `number`), read linearizably.
    async fn versions(&self, key: &str, number: Option<u64>) -> Result<Vec<Version>, Status> {
        let request = Request::Kv { key: key.into(), change: Change::Versions { number }, stamp: Stamp::default() };
        match self.submit(request).await? {
            Response::Versions(versions) => Ok(versions),
            other => Err(unexpected(&other)),
        }
    }

    async fn write(&self, request: Request) -> Result<(), Status> {
        match self.submit(request).await? {
            Response::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}

/// Records an RPC when dropped: when it finished, or when the client abandoned it.
struct RpcTimer<'a> {
    node: &'a Arc<str>,
    rpc: &'static str,
    started: tokio::time::Instant,
    code: Code,
}

impl Drop for RpcTimer<'_> {
    fn drop(&mut self) {
        crate::metrics::record_rpc(self.node, self.rpc, self.code, self.started.elapsed());
    }
}

fn queue_error(e: mpsc::error::TrySendError<Call>) -> KvError {
    match e {
        mpsc::error::TrySendError::Full(_) => {
            KvError::ResourceExhausted("too many requests queued on this node".into())
        }
        mpsc::error::TrySendError::Closed(_) => stopped("the node is stopping"),
    }
}

fn stopped(why: &str) -> KvError {
    KvError::Unavailable(why.into())
}

/// Refuses memo's own keys (the policy table's rule P5).
fn check_key(key: &str) -> Result<(), Status> {
    if table::is_reserved(key) {
        return Err(Status::invalid_argument(format!("keys beginning with {RESERVED_PREFIX:?} are reserved")));
    }
    Ok(())
}

/// Whether a List answer's common prefix would show memo's own keys.
fn hides_reserved(prefix: &str) -> bool {
    table::is_reserved(prefix) || (!prefix.is_empty() && RESERVED_PREFIX.starts_with(prefix))
}

/// An answer of the wrong kind: an engine bug, reported rather than panicking a server.
fn unexpected(response: &Response) -> Status {
    Status::internal(format!("unexpected engine response: {response:?}"))
}

type RpcResult<T> = Result<tonic::Response<T>, Status>;

#[tonic::async_trait]
impl KeyValueStore for KvService {
    async fn insert(&self, request: tonic::Request<InsertRequest>) -> RpcResult<InsertResponse> {
        self.observe("Insert", async {
            let InsertRequest { key, value } = request.into_inner();
            self.write(self.encoded(key, value, Change::Insert)?).await?;
            Ok(tonic::Response::new(InsertResponse {}))
        })
        .await
    }

    async fn update(&self, request: tonic::Request<UpdateRequest>) -> RpcResult<UpdateResponse> {
        self.observe("Update", async {
            let UpdateRequest { key, value } = request.into_inner();
            self.write(self.encoded(key, value, Change::Update)?).await?;
            Ok(tonic::Response::new(UpdateResponse {}))
        })
        .await
    }

    async fn upsert(&self, request: tonic::Request<UpsertRequest>) -> RpcResult<UpsertResponse> {
        self.observe("Upsert", async {
            let UpsertRequest { key, value } = request.into_inner();
            self.write(self.encoded(key, value, Change::Upsert)?).await?;
            Ok(tonic::Response::new(UpsertResponse {}))
        })
        .await
    }

    async fn fetch(&self, request: tonic::Request<FetchRequest>) -> RpcResult<FetchResponse> {
        self.observe("Fetch", async {
            let FetchRequest { key, version } = request.into_inner();
            check_key(&key)?;
            // Version 0, the default, is the current value.
            let stored = if version == 0 {
                match self.submit(Request::fetch(key.clone())).await? {
                    Response::Value(value) => value,
                    other => return Err(unexpected(&other)),
                }
            } else {
                match self.versions(&key, Some(version)).await?.pop() {
                    Some(Version { value: Some(value), .. }) => value,
                    Some(Version { value: None, .. }) => {
                        return Err(Status::not_found(format!("version {version} is a Delete")));
                    }
                    None => return Err(Status::not_found(format!("version {version} of the key is not kept"))),
                }
            };
            let value = self.policies.decode(&key, stored, self.value_bytes_max).map_err(status_from)?;
            Ok(tonic::Response::new(FetchResponse { value }))
        })
        .await
    }

    async fn delete(&self, request: tonic::Request<DeleteRequest>) -> RpcResult<DeleteResponse> {
        self.observe("Delete", async {
            let DeleteRequest { key } = request.into_inner();
            check_key(&key)?;
            let stamp = self.policies.stamp(&key);
            self.write(Request::Kv { key, change: Change::Delete, stamp }).await?;
            Ok(tonic::Response::new(DeleteResponse {}))
        })
        .await
    }

    async fn list_versions(&self, request: tonic::Request<ListVersionsRequest>) -> RpcResult<ListVersionsResponse> {
        self.observe("ListVersions", async {
            let ListVersionsRequest { key } = request.into_inner();
            check_key(&key)?;
            let versions = self.versions(&key, None).await?;
            if versions.is_empty() {
                return Err(status_from(KvError::NotFound));
            }
            let mut infos = Vec::with_capacity(versions.len());
            for Version { number, at_ms, value } in versions {
                let deleted = value.is_none();
                let size = match value {
                    // The size as the client wrote it: decoding also proves the version readable.
                    Some(v) => self.policies.decode(&key, v, self.value_bytes_max).map_err(status_from)?.len(),
                    None => 0,
                };
                infos.push(VersionInfo { number, size: size as u64, deleted, time_ms: at_ms });
            }
            Ok(tonic::Response::new(ListVersionsResponse { versions: infos }))
        })
        .await
    }

    async fn list(&self, request: tonic::Request<ListRequest>) -> RpcResult<ListResponse> {
        self.observe("List", async {
            let ListRequest { prefix, marker, delimiter, max_keys } = request.into_inner();
            let query = ListQuery { prefix, marker, delimiter, max_keys };
            let page = match self.submit(Request::List(query)).await? {
                Response::List(page) => page,
                other => return Err(unexpected(&other)),
            };
            Ok(tonic::Response::new(ListResponse {
                items: (page.items.into_iter())
                    .filter(|key| !table::is_reserved(key))
                    .map(|key| ListItem { key })
                    .collect(),
                prefixes: page.prefixes.into_iter().filter(|p| !hides_reserved(p)).collect(),
                truncated: page.truncated,
            }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn every_engine_error_maps_to_its_status_code() {
        let table = [
            (KvError::InvalidArgument("x".into()), Code::InvalidArgument),
            (KvError::AlreadyExists, Code::AlreadyExists),
            (KvError::NotFound, Code::NotFound),
            (KvError::Conflict, Code::Aborted),
            (KvError::Unavailable("x".into()), Code::Unavailable),
            (KvError::ResourceExhausted("x".into()), Code::ResourceExhausted),
            (KvError::Internal("x".into()), Code::Internal),
        ];
        for (error, code) in table {
            assert_eq!(status_from(error.clone()).code(), code, "{error:?}");
        }
    }

    #[test]
    fn not_found_says_so_plainly() {
        assert_eq!(status_from(KvError::NotFound).message(), "key not found");
    }
}
