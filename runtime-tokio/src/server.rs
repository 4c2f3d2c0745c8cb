//! The node's one listening port, serving `memo.kvs.KeyValueStore`, `memo.peer.Peer`
//! and `memo.admin.Admin` (and, in real builds, gRPC health and reflection), and memo's
//! own peer connections ([`crate::peer::tcp`]): the accept loop tells them apart by
//! their first byte. In simulation, where madsim-tonic binds its own simulated
//! endpoint, peer connections have a simulated TCP listener on the same address.
//!
//! Binding is separate from serving so that callers can bind port 0 first, learn the
//! address, and build the peer table before any node starts (tests, `memo dev`). Real
//! tonic serves a bound `TcpListener`; madsim-tonic has no `serve_with_incoming`, so in
//! simulation the listener is just the address and the simulated server binds it.

use crate::Error;
use crate::admin::AdminService;
use crate::health::Health;
use crate::peer::{PEER_KEEPALIVE_INTERVAL, PEER_MESSAGE_BYTES_MAX, PeerService};
use crate::service::KvService;
use memo_proto::admin::admin_server::AdminServer;
use memo_proto::kvs::key_value_store_server::KeyValueStoreServer;
use memo_proto::peer::peer_server::PeerServer;
use std::net::SocketAddr;
use tokio::sync::watch;
use tonic::transport::server::Router;

/// A bound listening address, ready for [`crate::spawn_node_on`].
#[derive(Debug)]
pub struct Listener {
    addr: SocketAddr,
    #[cfg(not(madsim))]
    tcp: tokio::net::TcpListener,
}

impl Listener {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr) -> Result<Listener, Error> {
        #[cfg(not(madsim))]
        {
            let bind_error = |source| Error::Bind { addr, source };
            let tcp = tokio::net::TcpListener::bind(addr).await.map_err(bind_error)?;
            let addr = tcp.local_addr().map_err(bind_error)?;
            Ok(Listener { addr, tcp })
        }
        #[cfg(madsim)]
        {
            Ok(Listener { addr })
        }
    }

    /// The address clients and peers connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The node's services on one router: `memo.kvs.KeyValueStore`, `memo.peer.Peer` and
/// `memo.admin.Admin`, plus gRPC health and reflection in real builds
/// ([`crate::health`]).
pub(crate) fn router(
    kv: KvService,
    kv_message_bytes_max: usize,
    peer: PeerService,
    admin: AdminService,
    health: &Health,
) -> Result<Router, Error> {
    let kv = KeyValueStoreServer::new(kv).max_decoding_message_size(kv_message_bytes_max);
    let peer = PeerServer::new(peer).max_decoding_message_size(PEER_MESSAGE_BYTES_MAX);
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(PEER_KEEPALIVE_INTERVAL))
        .add_service(kv)
        .add_service(peer)
        .add_service(AdminServer::new(admin));
    health.mount(router)
}

/// Connections accepted but not yet taken by the gRPC server.
#[cfg(not(madsim))]
const HTTP_CONNECTIONS_QUEUED_MAX: usize = 64;
/// Pause after a failed `accept` (out of file descriptors, say) before the next.
const ACCEPT_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

/// Serves `router` and peer connections until `stop` is set, then finishes in-flight
/// calls.
pub(crate) async fn serve(
    listener: Listener,
    router: Router,
    peer: PeerService,
    stop: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    let mut stop_signal = stop.clone();
    let signal = async move {
        // A dropped sender also means stop.
        let _ = stop_signal.wait_for(|stopped| *stopped).await;
    };
    #[cfg(not(madsim))]
    {
        let (http, incoming) = tokio::sync::mpsc::channel(HTTP_CONNECTIONS_QUEUED_MAX);
        tokio::spawn(accept(listener.tcp, peer, http, stop));
        router.serve_with_incoming_shutdown(crate::stream::ChannelStream(incoming), signal).await
    }
    #[cfg(madsim)]
    {
        match tokio::net::TcpListener::bind(listener.addr).await {
            Ok(tcp) => {
                tokio::spawn(accept(tcp, peer, stop));
            }
            Err(error) => tracing::error!(addr = %listener.addr, %error, "cannot listen for peer connections"),
        }
        router.serve_with_shutdown(listener.addr, signal).await
    }
}

/// Accepts connections until `stop` is set. In a real build each goes to
/// [`crate::peer::tcp::classify`], which tells a peer connection from a gRPC client; in
/// simulation every connection to this listener is a peer connection.
async fn accept(
    tcp: tokio::net::TcpListener,
    peer: PeerService,
    #[cfg(not(madsim))] http: tokio::sync::mpsc::Sender<std::io::Result<tokio::net::TcpStream>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            accepted = tcp.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                #[cfg(not(madsim))]
                {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(crate::peer::tcp::classify(stream, peer.clone(), http.clone()));
                }
                #[cfg(madsim)]
                tokio::spawn(crate::peer::tcp::serve_connection(peer.clone(), stream));
            }
            Err(error) => {
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
            }
        }
    }
}
