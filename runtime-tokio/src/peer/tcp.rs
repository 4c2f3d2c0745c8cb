//! memo's own peer framing: engine messages as length-prefixed frames on a plain TCP
//! connection, on the node's one port (the default [`super::PeerTransport::Tcp`]).
//!
//! Why: every peer batch sent as a gRPC stream message costs an HTTP/2 frame on both
//! sides, flow-control bookkeeping, and two more task hops per batch (link → body pipe →
//! connection task; connection task → stream pump → event loop). At 12 nodes the same
//! messages travel in four times more batches than at 3, so that per-batch cost is what
//! made a put's CPU grow with the cluster (docs/PERFORMANCE.md). Here the link task
//! writes its batch to the socket itself and the receiving task hands what one `read`
//! returned straight to the event loop.
//!
//! # The wire
//!
//! ```text
//! connection := MAGIC hello { frame }            (sender → receiver)
//!             | reply { frame }                  (receiver → sender)
//! frame      := length: u32 little-endian, then `length` bytes
//! ```
//!
//! - `MAGIC` is [`MAGIC`]: its first byte is NUL, which no HTTP/2 connection preface (nor
//!   HTTP/1 request) starts with, so the node's listener tells a peer connection from a
//!   gRPC client by the first byte alone ([`classify`]).
//! - `hello` is one frame holding a protobuf `memo.peer.Batch` without messages: the
//!   cluster id, the sender's name and restart counter, and its data keys' fingerprints.
//!   The receiver checks it exactly as it checks every gRPC batch
//!   ([`super::PeerService::check`]).
//! - `reply` is one frame: empty if the link is accepted; otherwise the refusal's reason
//!   in UTF-8, and the receiver closes the connection.
//! - Every later sender frame is one engine message (the engine decodes it; a malformed
//!   one is logged and dropped by the event loop). An empty frame is a heartbeat.
//! - Every later receiver frame is an empty heartbeat, sent every
//!   [`super::PEER_KEEPALIVE_INTERVAL`].
//!
//! # Rules
//!
//! - A frame longer than [`super::PEER_MESSAGE_BYTES_MAX`] (a hello longer than
//!   [`HELLO_BYTES_MAX`]) ends the connection: the length is refused before any of it is
//!   allocated, so garbage on the port costs nothing.
//! - Each side sends a heartbeat when it has written nothing for an interval, and ends
//!   the connection after [`SILENT_INTERVALS_MAX`] intervals without hearing anything:
//!   this finds a dead or stopped peer on an idle link (what HTTP/2 keepalive pings did).
//! - A write that waits [`WRITE_TIMEOUT`] (the peer takes no bytes: stopped, or gone
//!   without a reset) ends the connection too, since a link waiting in a write checks no
//!   heartbeat. The link then reconnects, and its queue drops what it cannot hold.
//! - A link writes everything queued for its peer in one write. A batch of fewer than
//!   [`LINGER_BELOW_MESSAGES`] first waits up to [`LINGER_TURNS`] scheduler turns
//!   (`yield_now`), so that the messages the node's other ready tasks produce for this
//!   peer join it: at 12 nodes, where a node's messages spread over 11 links, batches
//!   grew from 2.1 to 3.9 messages and a put's CPU fell by a tenth or more
//!   (docs/PERFORMANCE.md). It costs no timer, only turns of the scheduler.
//! - The receiver hands the event loop what one read brought, at most
//!   [`super::PEER_BATCH_MESSAGES_MAX`] messages per item, and waits when the loop's
//!   queue is full (backpressure reaches the sender through TCP).

use super::{
    BatchHeader, Batcher, LinkEnd, PEER_BATCH_MESSAGES_MAX, PEER_CONNECT_TIMEOUT, PEER_KEEPALIVE_INTERVAL,
    PEER_MESSAGE_BYTES_MAX, PeerService,
};
use memo_proto::peer::Batch;
use prost::Message as _;
use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// What a peer connection opens with.
pub const MAGIC: &[u8; 8] = b"\0memo/p1";
/// Largest hello frame the receiver reads.
pub const HELLO_BYTES_MAX: usize = 64 * 1024;
/// Bytes of a frame's length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;
/// The read buffer's usual size; it grows only for a larger frame, and shrinks back.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;
/// A batch smaller than this waits for more messages (up to [`LINGER_TURNS`] scheduler
/// turns) before it is written.
pub const LINGER_BELOW_MESSAGES: usize = 8;
/// Scheduler turns a small batch waits for more messages.
pub const LINGER_TURNS: usize = 2;
/// Heartbeat intervals without hearing from the other side before a connection ends.
pub const SILENT_INTERVALS_MAX: u32 = 3;
/// How long one write (one batch, within the batch byte bound) may take, as long as the
/// heartbeats allow a silence. A write waits when the socket's buffer is full: the peer
/// is stopped, overwhelmed, or gone without a reset (a machine that vanished), and while
/// it waits the link checks no heartbeat.
pub const WRITE_TIMEOUT: Duration = PEER_KEEPALIVE_INTERVAL.saturating_mul(SILENT_INTERVALS_MAX);
/// How long the hello and its reply may take.
pub const HANDSHAKE_TIMEOUT: Duration = PEER_CONNECT_TIMEOUT;
/// How long an accepted connection may stay silent before its first byte says what it
/// is; a silent connection is then handed to the gRPC server, as before this transport.
#[cfg(not(madsim))]
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection's input cannot be read as frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A length beyond the bound: garbage, or a peer that does not speak this protocol.
    #[error("a frame of {len} bytes is over the {max}-byte bound")]
    TooLong { len: usize, max: usize },
    /// The connection ended in the middle of a frame.
    #[error("the connection ended inside a frame")]
    Truncated,
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Splits a byte stream into frames. The buffer holds `buf[start..end]` unread; it is
/// allocated once at its full length so that reads never zero-fill it again.
#[derive(Debug)]
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max: usize,
}

impl FrameReader {
    /// A reader that refuses frames longer than `max`.
    pub fn new(max: usize) -> Self {
        FrameReader { buf: vec![0; READ_BUFFER_BYTES], start: 0, end: 0, max }
    }

    /// Changes the bound (the hello has a smaller one than messages).
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// The next complete frame in the buffer, if there is one.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let available = self.end - self.start;
        if available < FRAME_HEADER_BYTES {
            return Ok(None);
        }
        let header: [u8; FRAME_HEADER_BYTES] =
            self.buf[self.start..self.start + FRAME_HEADER_BYTES].try_into().expect("four bytes");
        let len = u32::from_le_bytes(header) as usize;
        if len > self.max {
            return Err(FrameError::TooLong { len, max: self.max });
        }
        if available < FRAME_HEADER_BYTES + len {
            return Ok(None);
        }
        let body = self.start + FRAME_HEADER_BYTES;
        self.start = body + len;
        Ok(Some(&self.buf[body..body + len]))
    }

    /// Reads more bytes (at least one); `Ok(false)` at a clean end of the stream.
    /// Cancel-safe: bytes count only once a read has returned them.
    pub async fn read_more<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> Result<bool, FrameError> {
        self.make_room();
        let read = reader.read(&mut self.buf[self.end..]).await?;
        if read == 0 {
            return if self.start == self.end { Ok(false) } else { Err(FrameError::Truncated) };
        }
        self.end += read;
        Ok(true)
    }

    /// Makes room after `end` for the rest of the frame being read (or a buffer's worth).
    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > READ_BUFFER_BYTES {
                // A large frame is done: give its memory back.
                self.buf = vec![0; READ_BUFFER_BYTES];
            }
        }
        let pending = self.end - self.start;
        let wanted = if pending >= FRAME_HEADER_BYTES {
            let header: [u8; FRAME_HEADER_BYTES] =
                self.buf[self.start..self.start + FRAME_HEADER_BYTES].try_into().expect("four bytes");
            // The bound was checked when the header was first seen by `next_frame`.
            (FRAME_HEADER_BYTES + u32::from_le_bytes(header) as usize).max(pending + 1)
        } else {
            FRAME_HEADER_BYTES
        };
        if self.start + wanted <= self.buf.len() && self.end < self.buf.len() {
            return;
        }
        self.buf.copy_within(self.start..self.end, 0);
        self.start = 0;
        self.end = pending;
        if self.buf.len() < wanted {
            self.buf.resize(wanted, 0);
        }
    }
}

/// Appends one frame holding `body` to `out`.
pub(crate) fn push_frame(out: &mut Vec<u8>, body: &[u8]) {
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
}

/// Reads the next frame, waiting for more bytes as needed; `None` at a clean end.
async fn read_frame<R: AsyncRead + Unpin>(
    frames: &mut FrameReader,
    reader: &mut R,
) -> Result<Option<Vec<u8>>, FrameError> {
    loop {
        if let Some(frame) = frames.next_frame()? {
            return Ok(Some(frame.to_vec()));
        }
        if !frames.read_more(reader).await? {
            return Ok(None);
        }
    }
}

/// Counts heartbeat intervals: whether this side wrote and heard anything in the current
/// one, and how many passed in silence.
#[derive(Debug, Default)]
struct Liveness {
    wrote: bool,
    heard: bool,
    silent: u32,
}

impl Liveness {
    /// At an interval's end: whether to send a heartbeat, or `Err` once the other side
    /// has been silent too long.
    fn tick(&mut self) -> Result<bool, String> {
        self.silent = if self.heard { 0 } else { self.silent + 1 };
        let beat = !self.wrote;
        self.heard = false;
        self.wrote = false;
        if self.silent >= SILENT_INTERVALS_MAX {
            let quiet = PEER_KEEPALIVE_INTERVAL * self.silent;
            return Err(format!("nothing heard from the peer for {} s", quiet.as_secs()));
        }
        Ok(beat)
    }
}

/// Writes `bytes` and flushes them (a no-op on a real socket, and what makes madsim's
/// simulated stream send at all), giving up after [`WRITE_TIMEOUT`].
async fn send<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> io::Result<()> {
    let write = async {
        writer.write_all(bytes).await?;
        writer.flush().await
    };
    // The timer is only registered if the write has to wait: `timeout` polls the write
    // first, and a socket with room in its buffer takes the bytes at once.
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(written) => written,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the peer took nothing for {} s (stopped, or gone without a reset?)", WRITE_TIMEOUT.as_secs()),
        )),
    }
}

/// A heartbeat: an empty frame.
const HEARTBEAT: [u8; FRAME_HEADER_BYTES] = [0; FRAME_HEADER_BYTES];

fn heartbeat_interval() -> tokio::time::Interval {
    let mut interval = tokio::time::interval(PEER_KEEPALIVE_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

// ----- receiving side -----

/// Decides what an accepted connection is by its first byte: a peer connection is
/// served here, anything else goes to the gRPC server through `http`.
#[cfg(not(madsim))]
pub(crate) async fn classify(
    stream: tokio::net::TcpStream,
    peer: PeerService,
    http: mpsc::Sender<io::Result<tokio::net::TcpStream>>,
) {
    let mut first = [0u8; 1];
    match tokio::time::timeout(FIRST_BYTE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(_)) if first[0] == MAGIC[0] => serve_connection(peer, stream).await,
        // A gRPC client, or one slow to speak: tonic has its own timeouts.
        Ok(Ok(_)) | Err(_) => {
            let _ = http.send(Ok(stream)).await;
        }
        Ok(Err(error)) => tracing::debug!(%error, "an accepted connection failed before its first byte"),
    }
}

/// Serves one inbound peer connection until it ends, fails, or the server stops.
pub(crate) async fn serve_connection<S: AsyncRead + AsyncWrite + Send + 'static>(peer: PeerService, stream: S) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut frames = FrameReader::new(HELLO_BYTES_MAX);
    let hello = match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_hello(&mut frames, &mut reader)).await {
        Ok(Ok(hello)) => hello,
        Ok(Err(why)) => {
            tracing::debug!(%why, "refused a peer connection");
            return;
        }
        Err(_) => {
            tracing::debug!("a peer connection sent no hello in time");
            return;
        }
    };
    let from = hello.from_name.clone();
    if let Err(status) = peer.check(&hello) {
        let mut reply = Vec::new();
        push_frame(&mut reply, status.message().as_bytes());
        let _ = send(&mut writer, &reply).await;
        let _ = writer.shutdown().await;
        return;
    }
    if send(&mut writer, &HEARTBEAT).await.is_err() {
        return;
    }
    frames.set_max(PEER_MESSAGE_BYTES_MAX);
    // The read that brought the hello may have brought messages too.
    if let Err(error) = deliver_frames(&mut frames, &peer.inbound).await {
        tracing::warn!(%from, %error, "ended a peer connection");
        return;
    }
    let mut stop = peer.stop.clone();
    let mut interval = heartbeat_interval();
    interval.tick().await;
    let mut liveness = Liveness::default();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = interval.tick() => match liveness.tick() {
                Ok(true) => {
                    if send(&mut writer, &HEARTBEAT).await.is_err() {
                        return;
                    }
                }
                Ok(false) => {}
                Err(why) => {
                    tracing::info!(%from, "peer connection ended: {why}");
                    return;
                }
            },
            more = frames.read_more(&mut reader) => {
                match more {
                    Ok(true) => liveness.heard = true,
                    Ok(false) => return,
                    Err(error) => {
                        tracing::debug!(%from, %error, "inbound peer connection failed");
                        return;
                    }
                }
                if let Err(error) = deliver_frames(&mut frames, &peer.inbound).await {
                    tracing::warn!(%from, %error, "ended a peer connection");
                    return;
                }
            }
        }
    }
}

/// Reads and decodes the hello after checking the magic.
async fn read_hello<R: AsyncRead + Unpin>(frames: &mut FrameReader, reader: &mut R) -> Result<Batch, String> {
    let mut magic = [0u8; MAGIC.len()];
    reader.read_exact(&mut magic).await.map_err(|e| e.to_string())?;
    if &magic != MAGIC {
        return Err("the connection does not start with memo's peer magic".into());
    }
    let frame = read_frame(frames, reader).await.map_err(|e| e.to_string())?.ok_or("the connection ended")?;
    Batch::decode(&frame[..]).map_err(|e| format!("malformed hello: {e}"))
}

/// Hands every complete message in the buffer to the event loop; `Err` when the loop is
/// gone or a frame is over the bound.
async fn deliver_frames(frames: &mut FrameReader, inbound: &mpsc::Sender<Vec<Vec<u8>>>) -> Result<(), String> {
    let mut batch = Vec::new();
    let end = loop {
        match frames.next_frame() {
            Ok(Some([])) => {}
            Ok(Some(frame)) => batch.push(frame.to_vec()),
            Ok(None) => break Ok(()),
            // The messages before a bad frame are whole: they are delivered.
            Err(error) => break Err(error.to_string()),
        }
        if batch.len() == PEER_BATCH_MESSAGES_MAX {
            inbound.send(std::mem::take(&mut batch)).await.map_err(|_| "the node is stopping")?;
        }
    };
    if !batch.is_empty() {
        inbound.send(batch).await.map_err(|_| "the node is stopping")?;
    }
    end
}

// ----- sending side -----

/// One connection of a link: connects, says hello, then writes batches until something
/// fails.
pub(super) async fn run_link(link: &mut super::Link) -> LinkEnd {
    let stream = match tokio::time::timeout(PEER_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(link.addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return LinkEnd::Failed(format!("connecting to {}: {error}", link.addr)),
        Err(_) => return LinkEnd::Failed(format!("connecting to {} timed out", link.addr)),
    };
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut frames = FrameReader::new(HELLO_BYTES_MAX);
    let handshake = async {
        let mut out = MAGIC.to_vec();
        push_frame(&mut out, &hello(&link.header).encode_to_vec());
        send(&mut writer, &out).await.map_err(|e| e.to_string())?;
        read_frame(&mut frames, &mut reader).await.map_err(|e| e.to_string())?.ok_or_else(|| {
            "the peer closed the connection during the handshake (is it a memo node of this version?)".to_string()
        })
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(reply)) if reply.is_empty() => {}
        Ok(Ok(refusal)) => {
            return LinkEnd::Failed(format!("refused by the peer: {}", String::from_utf8_lossy(&refusal)));
        }
        Ok(Err(why)) => return LinkEnd::Failed(why),
        Err(_) => return LinkEnd::Failed("the handshake timed out".into()),
    }
    link.note_connected();
    link.note_success();
    send_batches(&mut link.queue, &mut link.batcher, &link.header, &mut frames, &mut reader, &mut writer).await
}

/// The hello: a batch without messages.
fn hello(header: &BatchHeader) -> Batch {
    Batch {
        cluster_id: header.cluster.0.to_vec(),
        from_name: header.from.name.clone(),
        from_generation: header.restart,
        sequence: 0,
        messages: Vec::new(),
        keys: header.keys.clone(),
    }
}

/// Writes each batch the queue yields as frames in one write, sends heartbeats when
/// idle, and watches the other side for heartbeats, a refusal or the end.
async fn send_batches<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    queue: &mut mpsc::Receiver<Vec<u8>>,
    batcher: &mut Batcher,
    header: &BatchHeader,
    frames: &mut FrameReader,
    reader: &mut R,
    writer: &mut W,
) -> LinkEnd {
    let mut out = Vec::with_capacity(READ_BUFFER_BYTES);
    let mut interval = heartbeat_interval();
    interval.tick().await;
    let mut liveness = Liveness::default();
    loop {
        tokio::select! {
            messages = batcher.next(queue) => {
                let Some(mut messages) = messages else { return LinkEnd::QueueClosed };
                for _ in 0..LINGER_TURNS {
                    if messages.len() >= LINGER_BELOW_MESSAGES {
                        break;
                    }
                    tokio::task::yield_now().await;
                    batcher.fill(queue, &mut messages);
                }
                out.clear();
                for message in &messages {
                    push_frame(&mut out, message);
                }
                if let Err(error) = send(writer, &out).await {
                    return LinkEnd::Failed(format!("writing to the peer: {error}"));
                }
                if out.capacity() > 4 * READ_BUFFER_BYTES {
                    out = Vec::with_capacity(READ_BUFFER_BYTES);
                }
                liveness.wrote = true;
                header.batches_sent.fetch_add(1, Ordering::Relaxed);
            }
            more = frames.read_more(reader) => {
                match more {
                    Ok(true) => liveness.heard = true,
                    Ok(false) => return LinkEnd::Failed("the peer closed the connection".into()),
                    Err(error) => return LinkEnd::Failed(format!("reading from the peer: {error}")),
                }
                loop {
                    match frames.next_frame() {
                        Ok(Some([])) => {}
                        Ok(Some(refusal)) => {
                            let why = String::from_utf8_lossy(refusal);
                            return LinkEnd::Failed(format!("refused by the peer: {why}"));
                        }
                        Ok(None) => break,
                        Err(error) => return LinkEnd::Failed(error.to_string()),
                    }
                }
            }
            _ = interval.tick() => match liveness.tick() {
                Ok(true) => {
                    if let Err(error) = send(writer, &HEARTBEAT).await {
                        return LinkEnd::Failed(format!("writing to the peer: {error}"));
                    }
                }
                Ok(false) => {}
                Err(why) => return LinkEnd::Failed(why),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::crypt::Fingerprint;
    use memo_engine::ClusterId;
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use tokio::sync::watch;

    fn frames_of(bodies: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for body in bodies {
            push_frame(&mut out, body);
        }
        out
    }

    /// Reads every frame from `bytes` delivered `chunk` bytes at a time.
    async fn read_all(bytes: Vec<u8>, chunk: usize, max: usize) -> Result<Vec<Vec<u8>>, FrameError> {
        let (mut tx, mut rx) = tokio::io::duplex(chunk);
        let writer = tokio::spawn(async move {
            let _ = tx.write_all(&bytes).await;
        });
        let mut frames = FrameReader::new(max);
        let mut out = Vec::new();
        while let Some(frame) = read_frame(&mut frames, &mut rx).await? {
            out.push(frame);
        }
        writer.await.unwrap();
        Ok(out)
    }

    #[tokio::test]
    async fn frames_come_out_whole_however_the_bytes_are_cut() {
        let big = vec![7u8; READ_BUFFER_BYTES * 2 + 5];
        let bodies: [&[u8]; 5] = [b"", b"a", &[1; 100], &big, b"tail"];
        for chunk in [1, 3, 4096, READ_BUFFER_BYTES * 4] {
            let got = read_all(frames_of(&bodies), chunk, PEER_MESSAGE_BYTES_MAX).await.unwrap();
            assert_eq!(got, bodies.iter().map(|b| b.to_vec()).collect::<Vec<_>>(), "chunk {chunk}");
        }
    }

    #[tokio::test]
    async fn a_length_over_the_bound_is_refused_before_it_is_read() {
        let mut bytes = frames_of(&[b"fine"]);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        let error = read_all(bytes, 64, 1024).await.unwrap_err();
        assert!(matches!(error, FrameError::TooLong { len, max: 1024 } if len == u32::MAX as usize), "{error}");
    }

    #[tokio::test]
    async fn a_stream_that_ends_inside_a_frame_is_truncated() {
        let mut bytes = frames_of(&[b"whole", b"cut short"]);
        bytes.truncate(bytes.len() - 3);
        assert!(matches!(read_all(bytes, 64, 1024).await, Err(FrameError::Truncated)));
        // Inside the length prefix, too.
        assert!(matches!(read_all(vec![1, 0], 64, 1024).await, Err(FrameError::Truncated)));
    }

    #[test]
    fn liveness_beats_when_idle_and_gives_up_after_the_silent_intervals() {
        let mut liveness = Liveness { wrote: true, heard: true, ..Default::default() };
        assert_eq!(liveness.tick(), Ok(false), "wrote in the interval: no heartbeat needed");
        for _ in 1..SILENT_INTERVALS_MAX {
            assert_eq!(liveness.tick(), Ok(true));
        }
        assert!(liveness.tick().unwrap_err().contains("nothing heard"));
        let mut liveness = Liveness::default();
        for _ in 0..10 {
            liveness.heard = true;
            assert_eq!(liveness.tick(), Ok(true), "hearing anything resets the count");
        }
    }

    /// A link whose peer stops taking bytes (its socket buffer full: a stopped or vanished
    /// machine) gives up after `WRITE_TIMEOUT` instead of waiting in the write forever,
    /// deaf to heartbeats. Counterexample: a bare `write_all`, which never returns here.
    #[cfg(not(madsim))]
    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_takes_ends_the_connection() {
        use memo_engine::NodeId;
        let (mut writer, _peer_never_reads) = tokio::io::duplex(1024);
        let (mut reader, _peer_never_writes) = tokio::io::duplex(1024);
        let (queue_tx, mut queue) = mpsc::channel(16);
        queue_tx.send(vec![1; 64 * 1024]).await.unwrap();
        let header = BatchHeader {
            cluster: ClusterId([7; 32]),
            from: NodeId::initial("n1"),
            restart: 1,
            batches_sent: Default::default(),
            keys: Vec::new(),
        };
        let mut batcher = Batcher::default();
        let mut frames = FrameReader::new(HELLO_BYTES_MAX);
        let started = tokio::time::Instant::now();
        let sending = send_batches(&mut queue, &mut batcher, &header, &mut frames, &mut reader, &mut writer);
        let end = tokio::time::timeout(WRITE_TIMEOUT * 4, sending).await.expect("the link gave up on the write");
        let LinkEnd::Failed(why) = end else { panic!("the link ended for another reason") };
        assert!(why.contains("took nothing"), "{why}");
        assert_eq!(started.elapsed(), WRITE_TIMEOUT);
    }

    struct Receiver {
        delivered: mpsc::Receiver<Vec<Vec<u8>>>,
        client: tokio::io::DuplexStream,
        served: tokio::task::JoinHandle<()>,
        _stop: watch::Sender<bool>,
    }

    /// A receiving side holding the data key `k1`, served over an in-memory pipe.
    fn receiver(cluster: ClusterId) -> Receiver {
        let (inbound, delivered) = mpsc::channel(16);
        let (stop_tx, stop) = watch::channel(false);
        let keys = Arc::new(BTreeMap::from([("k1".to_string(), Fingerprint([1; 8]))]));
        let peer = PeerService { cluster, keys, inbound, stop };
        let (client, server) = tokio::io::duplex(1 << 20);
        let served = tokio::spawn(serve_connection(peer, server));
        Receiver { delivered, client, served, _stop: stop_tx }
    }

    fn hello_bytes(cluster: ClusterId, key: u8) -> Vec<u8> {
        let hello = Batch {
            cluster_id: cluster.0.to_vec(),
            from_name: "n2".into(),
            from_generation: 3,
            sequence: 0,
            messages: Vec::new(),
            keys: vec![memo_proto::peer::DataKeyFingerprint { name: "k1".into(), fingerprint: vec![key; 8] }],
        };
        let mut out = MAGIC.to_vec();
        push_frame(&mut out, &hello.encode_to_vec());
        out
    }

    async fn reply(client: &mut tokio::io::DuplexStream) -> Option<Vec<u8>> {
        read_frame(&mut FrameReader::new(HELLO_BYTES_MAX), client).await.unwrap()
    }

    #[tokio::test]
    async fn a_connection_delivers_its_messages_after_an_accepted_hello() {
        let cluster = ClusterId([7; 32]);
        let mut r = receiver(cluster);
        r.client.write_all(&hello_bytes(cluster, 1)).await.unwrap();
        assert_eq!(reply(&mut r.client).await, Some(Vec::new()), "accepted");
        // A heartbeat (empty frame) between messages is not delivered.
        r.client.write_all(&frames_of(&[b"m1", b"", b"m2"])).await.unwrap();
        let mut got = Vec::new();
        while got.len() < 2 {
            got.extend(r.delivered.recv().await.unwrap());
        }
        assert_eq!(got, [b"m1".to_vec(), b"m2".to_vec()]);
        drop(r.client);
        r.served.await.unwrap();
    }

    #[tokio::test]
    async fn a_hello_from_another_cluster_or_with_another_key_is_refused_with_its_reason() {
        let cluster = ClusterId([7; 32]);
        for (hello, reason) in
            [(hello_bytes(ClusterId([8; 32]), 1), "another cluster"), (hello_bytes(cluster, 2), "\"k1\" of n2")]
        {
            let mut r = receiver(cluster);
            r.client.write_all(&hello).await.unwrap();
            r.client.write_all(&frames_of(&[b"m1"])).await.unwrap();
            let refusal = String::from_utf8(reply(&mut r.client).await.unwrap()).unwrap();
            assert!(refusal.contains(reason), "{refusal}");
            r.served.await.unwrap();
            assert!(r.delivered.try_recv().is_err(), "a refused connection delivered a message");
        }
    }

    #[tokio::test]
    async fn garbage_on_the_peer_port_delivers_nothing_and_ends_the_connection() {
        let cluster = ClusterId([7; 32]);
        let mut valid_then_huge = hello_bytes(cluster, 1);
        valid_then_huge.extend(frames_of(&[b"m1"]));
        valid_then_huge.extend_from_slice(&u32::MAX.to_le_bytes());
        let mut bad_hello = MAGIC.to_vec();
        push_frame(&mut bad_hello, &[0xff; 40]);
        let mut long_hello = MAGIC.to_vec();
        long_hello.extend_from_slice(&((HELLO_BYTES_MAX + 1) as u32).to_le_bytes());
        let cases: [(&str, Vec<u8>, usize); 4] = [
            ("a wrong magic", b"\0memo/p2garbage".to_vec(), 0),
            ("a malformed hello", bad_hello, 0),
            ("a hello over its bound", long_hello, 0),
            ("a message length over the bound", valid_then_huge, 1),
        ];
        for (case, bytes, good) in cases {
            let mut r = receiver(cluster);
            r.client.write_all(&bytes).await.unwrap();
            r.served.await.unwrap();
            let mut delivered = 0;
            while let Ok(batch) = r.delivered.try_recv() {
                delivered += batch.len();
            }
            assert_eq!(delivered, good, "{case}");
        }
    }

    /// Real sockets: a link with the TCP transport reaches a node's port, which also
    /// serves gRPC.
    #[cfg(not(madsim))]
    #[tokio::test]
    async fn a_tcp_link_delivers_batches_through_the_shared_port() {
        use super::super::{Link, PeerTransport};
        use memo_engine::NodeId;
        let cluster = ClusterId([7; 32]);
        let (inbound, mut delivered) = mpsc::channel(16);
        let (_stop_tx, stop) = watch::channel(false);
        let peer = PeerService { cluster, keys: Default::default(), inbound, stop: stop.clone() };
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let (http, mut http_rx) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let (stream, _) = tcp.accept().await.unwrap();
                tokio::spawn(classify(stream, peer.clone(), http.clone()));
            }
        });
        let header = BatchHeader {
            cluster,
            from: NodeId::initial("n1"),
            restart: 1,
            batches_sent: Default::default(),
            keys: Vec::new(),
        };
        let (link, queue, mut status) = Link::new(NodeId::initial("n2"), addr, header.clone(), PeerTransport::Tcp);
        tokio::spawn(link.run(stop));
        for i in 0..100u8 {
            queue.send(vec![i; usize::from(i) + 1]).await.unwrap();
        }
        let mut got = Vec::new();
        while got.len() < 100 {
            got.extend(delivered.recv().await.unwrap());
        }
        assert_eq!(got, (0..100u8).map(|i| vec![i; usize::from(i) + 1]).collect::<Vec<_>>());
        status.wait_for(|s| s.state == super::super::LinkState::Connected).await.unwrap();
        assert!(header.batches_sent.load(Ordering::Relaxed) >= 1);
        // A gRPC client's connection on the same port goes to the gRPC server.
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        let to_http = http_rx.recv().await.unwrap().unwrap();
        assert_eq!(to_http.peer_addr().unwrap(), client.local_addr().unwrap());
    }
}
