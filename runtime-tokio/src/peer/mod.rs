//! Node-to-node transport: one outbound link per peer, and the receiving side (memo's own
//! framing in `tcp.rs`, and the `memo.peer.Peer` gRPC service).
//!
//! The engine encodes its own messages; this module only moves opaque bytes. A link is
//! a task with a bounded queue that the event loop fills without waiting (a full queue
//! drops: the protocol tolerates loss, and rounds time out and retry). The link connects
//! lazily, reconnects with exponential backoff, and sends everything queued at once,
//! because per-message costs dominate on this hardware (docs/CALIBRATION.md: batching cut
//! the cost per message 5–20×).
//!
//! Three transports ([`PeerTransport`]):
//! - [`PeerTransport::Tcp`], the default: length-prefixed frames on one plain TCP
//!   connection per peer, on the node's one port (`tcp.rs`). A batch is one `write`.
//! - [`PeerTransport::Stream`]: one long-lived gRPC `Stream` call per peer; the receiver
//!   acks the stream's first batch only (or ends the stream with an error). Each batch
//!   costs an HTTP/2 frame and more task hops than a `Tcp` write (docs/PERFORMANCE.md).
//! - [`PeerTransport::Unary`]: one gRPC `Send` call per batch (simpler failure semantics,
//!   used in simulation because a madsim connection never loses data but only delays it).
//!
//! Each link publishes its [`LinkStatus`] on a watch channel, for `memo status`
//! (`admin.rs`): connecting, connected (a call is open), or down with the reason.
//!
//! The receiver checks the sender's cluster id and data keys (`PeerService::check`; a
//! mismatch is refused) and hands the messages to the event loop, which decodes them;
//! malformed messages are logged and dropped there, never a panic.

pub(crate) mod tcp;

use crate::policy::crypt::Fingerprint;
use crate::stream::ChannelStream;
use memo_engine::{ClusterId, NodeId};
use memo_proto::peer::peer_client::PeerClient;
use memo_proto::peer::peer_server::Peer;
use memo_proto::peer::{Ack, Batch, DataKeyFingerprint};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

/// Engine messages queued per outbound link; beyond this new messages are dropped.
pub const PEER_QUEUE_MESSAGES_MAX: usize = 8192;
/// Messages in one batch, at most (sender side; the receiver refuses bigger batches).
pub const PEER_BATCH_MESSAGES_MAX: usize = 512;
/// Bytes of messages in one batch, at most; a single larger message travels alone.
pub const PEER_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest gRPC message the peer service decodes: one batch, or one envelope at the
/// engine's size limit travelling alone, plus framing headroom.
pub const PEER_MESSAGE_BYTES_MAX: usize = memo_engine::message::ENVELOPE_BYTES_MAX + PEER_BATCH_BYTES_MAX;
/// First delay before reconnecting after a failure.
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest delay between reconnection attempts.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long connecting to a peer may take.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one unary `Send` may take.
pub const PEER_SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// Interval of HTTP/2 keepalive pings, which detect a dead peer on an idle link.
pub const PEER_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a keepalive ping may go unanswered before the link is dropped.
pub const PEER_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Batches buffered between a link and its open stream. Small: when the stream stalls
/// the link should stall too, so its queue fills and drops instead of hoarding.
pub const STREAM_BATCHES_BUFFERED_MAX: usize = 4;
/// Acks buffered on the receiving side of a stream: a stream carries at most two (its
/// first batch's and a refusal).
pub const STREAM_ACKS_BUFFERED_MAX: usize = 2;

/// How a node sends batches to its peers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PeerTransport {
    /// memo's own length-prefixed frames on one plain TCP connection per peer, on the
    /// node's one port (`tcp.rs`).
    #[default]
    Tcp,
    /// One long-lived bidirectional gRPC `Stream` call per peer.
    Stream,
    /// One unary `Send` call per batch.
    Unary,
}

/// What a link is doing, as far as the sending side can tell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LinkState {
    /// Connecting: the first attempt, or again after a failure.
    #[default]
    Connecting,
    /// A call to the peer is open (a stream, or a channel for unary sends).
    Connected,
    /// The last attempt failed; the link retries after a backoff.
    Down,
}

/// A link's state and, until a connection succeeds, why the last attempt failed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkStatus {
    /// The state.
    pub state: LinkState,
    /// The last failure, cleared once connected.
    pub error: Option<String>,
}

// ----- receiving side -----

/// The `memo.peer.Peer` service: checks batches and hands them to the event loop.
#[derive(Clone)]
pub(crate) struct PeerService {
    pub cluster: ClusterId,
    /// This node's data keys by name ([`crate::policy::crypt`]): a batch from a node
    /// holding a key of the same name with other bytes is refused.
    pub keys: Arc<BTreeMap<String, Fingerprint>>,
    pub inbound: mpsc::Sender<Vec<Vec<u8>>>,
    /// Set when the server stops: open streams end so graceful shutdown can finish.
    pub stop: watch::Receiver<bool>,
}

impl PeerService {
    /// Checks a batch's header: its cluster, its sender's data keys and its size.
    fn check(&self, batch: &Batch) -> Result<(), Status> {
        if batch.cluster_id != self.cluster.0 {
            tracing::warn!(from = %batch.from_name, "refused a batch from another cluster");
            return Err(Status::failed_precondition("the batch belongs to another cluster"));
        }
        if let Some(why) = self.key_mismatch(batch) {
            tracing::error!(from = %batch.from_name, "{why}");
            return Err(Status::failed_precondition(why));
        }
        if batch.messages.len() > PEER_BATCH_MESSAGES_MAX {
            return Err(Status::invalid_argument(format!(
                "a batch carries at most {PEER_BATCH_MESSAGES_MAX} messages"
            )));
        }
        Ok(())
    }

    /// Checks a batch and queues its messages; returns its sequence number to ack.
    async fn deliver(&self, batch: Batch) -> Result<u64, Status> {
        self.check(&batch)?;
        if !batch.messages.is_empty() && self.inbound.send(batch.messages).await.is_err() {
            return Err(Status::unavailable("the node is stopping"));
        }
        Ok(batch.sequence)
    }

    /// Why the sender's data keys contradict this node's, if they do.
    fn key_mismatch(&self, batch: &Batch) -> Option<String> {
        batch.keys.iter().find_map(|theirs| {
            let mine = self.keys.get(&theirs.name)?;
            (mine.0[..] != theirs.fingerprint[..]).then(|| {
                format!(
                    "the data key {:?} of {} (fingerprint {}) differs from this node's ({mine}): \
                     one of the two key files is wrong",
                    theirs.name,
                    batch.from_name,
                    crate::policy::crypt::hex(&theirs.fingerprint)
                )
            })
        })
    }

    /// Reads a stream of batches until it ends, fails or the server stops. Only the
    /// stream's first batch is acked (it tells the sender the whole path works, the
    /// cluster check included) and a refused one (its error ends the stream): an ack
    /// per batch would double the frames, syscalls and wake-ups a batch costs, and the
    /// sender has no use for them (the protocol tolerates loss; HTTP/2 keepalive pings
    /// find a dead peer).
    async fn pump_stream(self, mut batches: Streaming<Batch>, acks: mpsc::Sender<Result<Ack, Status>>) {
        let mut stop = self.stop.clone();
        let mut acked = false;
        loop {
            let next = tokio::select! {
                _ = stop.changed() => return,
                next = batches.message() => next,
            };
            let batch = match next {
                Ok(Some(batch)) => batch,
                Ok(None) => return,
                Err(status) => {
                    tracing::debug!(%status, "inbound peer stream failed");
                    return;
                }
            };
            let ack = self.deliver(batch).await.map(|sequence| Ack { sequence });
            let refused = ack.is_err();
            if refused || !acked {
                acked = true;
                let _ = acks.send(ack).await;
            }
            if refused {
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    type StreamStream = ChannelStream<Result<Ack, Status>>;

    async fn stream(&self, request: Request<Streaming<Batch>>) -> Result<Response<Self::StreamStream>, Status> {
        let (acks, acks_out) = mpsc::channel(STREAM_ACKS_BUFFERED_MAX);
        tokio::spawn(self.clone().pump_stream(request.into_inner(), acks));
        Ok(Response::new(ChannelStream(acks_out)))
    }

    async fn send(&self, request: Request<Batch>) -> Result<Response<Ack>, Status> {
        let sequence = self.deliver(request.into_inner()).await?;
        Ok(Response::new(Ack { sequence }))
    }
}

// ----- sending side -----

/// What every batch from this node says about its sender.
#[derive(Clone, Debug)]
pub(crate) struct BatchHeader {
    pub cluster: ClusterId,
    pub from: NodeId,
    /// The engine's restart counter: it grows with every restart of this node.
    pub restart: u64,
    /// Batches sent by every link of this node (for `memo status`: messages per batch).
    pub batches_sent: Arc<AtomicU64>,
    /// This node's data keys, sent with every batch (empty without a key file).
    pub keys: Vec<DataKeyFingerprint>,
}

/// Packs queued messages into batches within the count and byte bounds. A message
/// that would overflow a batch waits for the next one.
#[derive(Debug, Default)]
struct Batcher {
    carry: Option<Vec<u8>>,
}

impl Batcher {
    /// Waits for a message, then takes what else is queued; `None` once the queue is
    /// closed and empty. Cancel-safe: the only await is the queue's `recv`.
    async fn next(&mut self, queue: &mut mpsc::Receiver<Vec<u8>>) -> Option<Vec<Vec<u8>>> {
        let first = match self.carry.take() {
            Some(message) => message,
            None => queue.recv().await?,
        };
        let mut batch = vec![first];
        self.fill(queue, &mut batch);
        Some(batch)
    }

    /// Adds what is queued to `batch`, within the bounds.
    fn fill(&mut self, queue: &mut mpsc::Receiver<Vec<u8>>, batch: &mut Vec<Vec<u8>>) {
        if self.carry.is_some() {
            return;
        }
        let mut bytes: usize = batch.iter().map(Vec::len).sum();
        while batch.len() < PEER_BATCH_MESSAGES_MAX {
            let Ok(message) = queue.try_recv() else { break };
            if bytes + message.len() > PEER_BATCH_BYTES_MAX {
                self.carry = Some(message);
                break;
            }
            bytes += message.len();
            batch.push(message);
        }
    }
}

/// Delays between reconnection attempts: doubling from the minimum to the maximum,
/// back to the minimum once a link works.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff { next: RECONNECT_BACKOFF_MIN }
    }

    fn take(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(RECONNECT_BACKOFF_MAX);
        delay
    }

    fn reset(&mut self) {
        self.next = RECONNECT_BACKOFF_MIN;
    }
}

/// Why a connected link stopped.
enum LinkEnd {
    /// The loop closed the queue: the node is stopping.
    QueueClosed,
    /// The connection or the call failed; reconnect after a backoff.
    Failed(String),
}

/// What woke a streaming link.
enum StreamEvent {
    Messages(Option<Vec<Vec<u8>>>),
    Ack(Result<Option<Ack>, Status>),
}

/// One outbound link. See the module docs.
pub(crate) struct Link {
    to: NodeId,
    addr: SocketAddr,
    header: BatchHeader,
    transport: PeerTransport,
    queue: mpsc::Receiver<Vec<u8>>,
    batcher: Batcher,
    backoff: Backoff,
    /// Sequence number of the last batch sent by this life of the node.
    sequence: u64,
    /// Whether the link last worked, to log transitions rather than every retry.
    up: bool,
    /// Published for `memo status`.
    status: watch::Sender<LinkStatus>,
}

impl Link {
    /// A link to `to` at `addr`, the sender that feeds it, and where it publishes its
    /// status.
    pub fn new(
        to: NodeId,
        addr: SocketAddr,
        header: BatchHeader,
        transport: PeerTransport,
    ) -> (Self, mpsc::Sender<Vec<u8>>, watch::Receiver<LinkStatus>) {
        let (tx, queue) = mpsc::channel(PEER_QUEUE_MESSAGES_MAX);
        let (status, status_rx) = watch::channel(LinkStatus::default());
        let link = Link {
            to,
            addr,
            header,
            transport,
            queue,
            batcher: Batcher::default(),
            backoff: Backoff::new(),
            sequence: 0,
            up: false,
            status,
        };
        (link, tx, status_rx)
    }

    /// Runs until the queue closes or `stop` is set.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            let end = tokio::select! {
                _ = stop.changed() => return,
                end = self.connect_and_send() => end,
            };
            let reason = match end {
                LinkEnd::QueueClosed => return,
                LinkEnd::Failed(reason) => reason,
            };
            self.note_failure(&reason);
            let delay = self.backoff.take();
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn note_failure(&mut self, reason: &str) {
        if self.up {
            tracing::info!(peer = %self.to, addr = %self.addr, %reason, "peer link down");
        } else {
            tracing::debug!(peer = %self.to, addr = %self.addr, %reason, "peer link retry failed");
        }
        self.up = false;
        self.status.send_replace(LinkStatus { state: LinkState::Down, error: Some(reason.to_string()) });
    }

    /// A new attempt starts; the last failure stays visible until it succeeds.
    fn note_connecting(&mut self) {
        self.status.send_modify(|status| status.state = LinkState::Connecting);
    }

    /// A call to the peer is open.
    fn note_connected(&mut self) {
        self.status.send_replace(LinkStatus { state: LinkState::Connected, error: None });
    }

    fn note_success(&mut self) {
        if !self.up {
            tracing::info!(peer = %self.to, addr = %self.addr, "peer link up");
        }
        self.up = true;
        self.backoff.reset();
    }

    /// Connects, then sends batches until something fails.
    async fn connect_and_send(&mut self) -> LinkEnd {
        self.note_connecting();
        if self.transport == PeerTransport::Tcp {
            return tcp::run_link(self).await;
        }
        let client = match self.connect().await {
            Ok(client) => client,
            Err(reason) => return LinkEnd::Failed(reason),
        };
        if self.transport == PeerTransport::Stream {
            self.send_streamed(client).await
        } else {
            self.send_unary(client).await
        }
    }

    async fn connect(&self) -> Result<PeerClient<tonic::transport::Channel>, String> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .map_err(|e| e.to_string())?
            .connect_timeout(PEER_CONNECT_TIMEOUT)
            .http2_keep_alive_interval(PEER_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(PEER_KEEPALIVE_TIMEOUT)
            .tcp_nodelay(true);
        let channel = endpoint.connect().await.map_err(|e| error_chain(&e))?;
        Ok(PeerClient::new(channel).max_encoding_message_size(PEER_MESSAGE_BYTES_MAX))
    }

    fn next_batch(&mut self, messages: Vec<Vec<u8>>) -> Batch {
        self.sequence += 1;
        self.header.batches_sent.fetch_add(1, Ordering::Relaxed);
        Batch {
            cluster_id: self.header.cluster.0.to_vec(),
            from_name: self.header.from.name.clone(),
            from_generation: self.header.restart,
            sequence: self.sequence,
            messages,
            keys: self.header.keys.clone(),
        }
    }

    /// One long-lived stream: batches out, cumulative acks back.
    async fn send_streamed(&mut self, mut client: PeerClient<tonic::transport::Channel>) -> LinkEnd {
        let (batches, batches_out) = mpsc::channel(STREAM_BATCHES_BUFFERED_MAX);
        let response = match client.stream(ChannelStream(batches_out)).await {
            Ok(response) => response,
            Err(status) => return LinkEnd::Failed(status.to_string()),
        };
        self.note_connected();
        let mut acks = response.into_inner();
        loop {
            let event = tokio::select! {
                messages = self.batcher.next(&mut self.queue) => StreamEvent::Messages(messages),
                ack = acks.message() => StreamEvent::Ack(ack),
            };
            let messages = match event {
                StreamEvent::Messages(Some(messages)) => messages,
                StreamEvent::Messages(None) => return LinkEnd::QueueClosed,
                // The first ack proves the whole path works, the cluster check included.
                StreamEvent::Ack(Ok(Some(_))) => {
                    self.note_success();
                    continue;
                }
                StreamEvent::Ack(Ok(None)) => {
                    return LinkEnd::Failed("the peer closed the stream".into());
                }
                StreamEvent::Ack(Err(status)) => return LinkEnd::Failed(status.to_string()),
            };
            let batch = self.next_batch(messages);
            if batches.send(batch).await.is_err() {
                return LinkEnd::Failed("the stream closed".into());
            }
        }
    }

    /// One `Send` call per batch; a failed batch is dropped.
    async fn send_unary(&mut self, mut client: PeerClient<tonic::transport::Channel>) -> LinkEnd {
        self.note_connected();
        loop {
            let Some(messages) = self.batcher.next(&mut self.queue).await else {
                return LinkEnd::QueueClosed;
            };
            let batch = self.next_batch(messages);
            match tokio::time::timeout(PEER_SEND_TIMEOUT, client.send(batch)).await {
                Ok(Ok(_ack)) => self.note_success(),
                Ok(Err(status)) => return LinkEnd::Failed(status.to_string()),
                Err(_) => return LinkEnd::Failed("send timed out".into()),
            }
        }
    }
}

/// An error with its causes: a transport error keeps the useful part ("connection
/// refused") in its sources. (`memo`'s client commands use it too.)
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batcher_respects_the_count_bound() {
        let (tx, mut rx) = mpsc::channel(PEER_QUEUE_MESSAGES_MAX);
        for i in 0..PEER_BATCH_MESSAGES_MAX + 3 {
            tx.send(vec![i as u8]).await.unwrap();
        }
        let mut batcher = Batcher::default();
        let first = batcher.next(&mut rx).await.unwrap();
        assert_eq!(first.len(), PEER_BATCH_MESSAGES_MAX);
        let second = batcher.next(&mut rx).await.unwrap();
        assert_eq!(second.len(), 3);
    }

    #[tokio::test]
    async fn filling_a_batch_keeps_both_bounds() {
        let (tx, mut rx) = mpsc::channel(PEER_QUEUE_MESSAGES_MAX);
        let mut batcher = Batcher::default();
        // The count bound, counting what the batch already holds.
        for i in 0..PEER_BATCH_MESSAGES_MAX {
            tx.send(vec![i as u8]).await.unwrap();
        }
        let mut batch = vec![vec![0], vec![1]];
        batcher.fill(&mut rx, &mut batch);
        assert_eq!(batch.len(), PEER_BATCH_MESSAGES_MAX);
        assert_eq!(rx.len(), 2, "two messages stay queued");
        batcher.fill(&mut rx, &mut Vec::new());
        // The byte bound: the message that would overflow it is carried, and a carried
        // message is not overtaken by a later fill.
        let half = PEER_BATCH_BYTES_MAX / 2;
        tx.send(vec![1; half + 1]).await.unwrap();
        tx.send(vec![2; 1]).await.unwrap();
        let mut batch = vec![vec![0; half]];
        batcher.fill(&mut rx, &mut batch);
        assert_eq!(batch.len(), 1);
        batcher.fill(&mut rx, &mut batch);
        assert_eq!(batch.len(), 1, "the carried message goes first, in the next batch");
        let sizes = |b: Vec<Vec<u8>>| b.iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(sizes(batcher.next(&mut rx).await.unwrap()), [half + 1, 1]);
    }

    #[tokio::test]
    async fn batcher_carries_a_message_that_would_overflow_the_byte_bound() {
        let (tx, mut rx) = mpsc::channel(PEER_QUEUE_MESSAGES_MAX);
        let half = PEER_BATCH_BYTES_MAX / 2;
        tx.send(vec![1; half]).await.unwrap();
        tx.send(vec![2; half]).await.unwrap();
        tx.send(vec![3; 1]).await.unwrap();
        tx.send(vec![4; PEER_BATCH_BYTES_MAX * 2]).await.unwrap();
        drop(tx);
        let mut batcher = Batcher::default();
        let sizes = |b: Vec<Vec<u8>>| b.iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(sizes(batcher.next(&mut rx).await.unwrap()), [half, half]);
        assert_eq!(sizes(batcher.next(&mut rx).await.unwrap()), [1]);
        // A message over the byte bound travels alone.
        assert_eq!(sizes(batcher.next(&mut rx).await.unwrap()), [PEER_BATCH_BYTES_MAX * 2]);
        assert!(batcher.next(&mut rx).await.is_none());
    }

    #[tokio::test]
    async fn a_batch_from_a_node_with_another_key_of_the_same_name_is_refused() {
        let cluster = ClusterId([7; 32]);
        let (inbound, mut delivered) = mpsc::channel(4);
        let (_stop, stop) = watch::channel(false);
        let mine = BTreeMap::from([("k1".to_string(), Fingerprint([1; 8])), ("k2".to_string(), Fingerprint([2; 8]))]);
        let service = PeerService { cluster, keys: Arc::new(mine), inbound, stop };
        let batch = |keys: &[(&str, u8)]| Batch {
            cluster_id: cluster.0.to_vec(),
            from_name: "n2".into(),
            from_generation: 1,
            sequence: 1,
            messages: vec![vec![9]],
            keys: (keys.iter())
                .map(|(name, b)| DataKeyFingerprint { name: name.to_string(), fingerprint: vec![*b; 8] })
                .collect(),
        };
        // No keys, the same keys, or keys this node does not have: delivered.
        for keys in [&[][..], &[("k1", 1), ("k2", 2)], &[("k1", 1), ("k3", 3)]] {
            assert!(service.deliver(batch(keys)).await.is_ok(), "{keys:?}");
            assert_eq!(delivered.recv().await.unwrap(), vec![vec![9]]);
        }
        let refused = service.deliver(batch(&[("k1", 1), ("k2", 5)])).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(refused.message().contains("\"k2\" of n2"), "{}", refused.message());
        assert!(delivered.try_recv().is_err(), "a refused batch was delivered");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new();
        let delays: Vec<_> = (0..8).map(|_| backoff.take()).collect();
        assert_eq!(delays[0], RECONNECT_BACKOFF_MIN);
        assert_eq!(delays[1], RECONNECT_BACKOFF_MIN * 2);
        assert_eq!(*delays.last().unwrap(), RECONNECT_BACKOFF_MAX);
        backoff.reset();
        assert_eq!(backoff.take(), RECONNECT_BACKOFF_MIN);
    }

    /// Real sockets: madsim-tonic has no `serve_with_incoming`.
    #[cfg(not(madsim))]
    mod streams {
        use super::*;

        /// A loopback server with only the peer service, and a stream opened to it.
        async fn open_stream(
            cluster: ClusterId,
        ) -> (mpsc::Receiver<Vec<Vec<u8>>>, mpsc::Sender<Batch>, Streaming<Ack>, watch::Sender<bool>) {
            use memo_proto::peer::peer_server::PeerServer;
            let (inbound, delivered) = mpsc::channel(16);
            let (stop_tx, stop) = watch::channel(false);
            let service = PeerService { cluster, keys: Default::default(), inbound, stop };
            let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = tcp.local_addr().unwrap();
            let incoming = tonic::transport::server::TcpIncoming::from(tcp);
            tokio::spawn(
                tonic::transport::Server::builder().add_service(PeerServer::new(service)).serve_with_incoming(incoming),
            );
            let mut client = PeerClient::connect(format!("http://{addr}")).await.unwrap();
            let (batches, batches_out) = mpsc::channel(4);
            let acks = client.stream(ChannelStream(batches_out)).await.unwrap().into_inner();
            (delivered, batches, acks, stop_tx)
        }

        fn batch(cluster: &ClusterId, sequence: u64) -> Batch {
            Batch {
                cluster_id: cluster.0.to_vec(),
                from_name: "n1".into(),
                from_generation: 1,
                sequence,
                messages: vec![vec![sequence as u8]],
                keys: Vec::new(),
            }
        }

        #[tokio::test]
        async fn a_stream_acks_its_first_batch_only_and_delivers_every_batch() {
            let cluster = ClusterId([7; 32]);
            let (mut delivered, batches, mut acks, _stop) = open_stream(cluster).await;
            for sequence in 1..=3 {
                batches.send(batch(&cluster, sequence)).await.unwrap();
            }
            for sequence in 1..=3u8 {
                assert_eq!(delivered.recv().await.unwrap(), vec![vec![sequence]]);
            }
            assert_eq!(acks.message().await.unwrap(), Some(Ack { sequence: 1 }));
            // The stream ends cleanly once the sender closes it: no ack for batches 2 and 3.
            drop(batches);
            assert_eq!(acks.message().await.unwrap(), None);
        }

        #[tokio::test]
        async fn a_stream_ends_with_an_error_at_a_batch_from_another_cluster() {
            let cluster = ClusterId([7; 32]);
            let (mut delivered, batches, mut acks, _stop) = open_stream(cluster).await;
            batches.send(batch(&cluster, 1)).await.unwrap();
            assert_eq!(acks.message().await.unwrap(), Some(Ack { sequence: 1 }));
            batches.send(batch(&ClusterId([8; 32]), 2)).await.unwrap();
            let status = acks.message().await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::FailedPrecondition);
            assert_eq!(delivered.recv().await.unwrap(), vec![vec![1]]);
            assert!(delivered.try_recv().is_err(), "the foreign batch was delivered");
        }
    }
}
