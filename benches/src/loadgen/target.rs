//! The systems under test: memo through its public gRPC API, or etcd through its v3 KV
//! API, behind one small interface.

use memo_proto::kvs::key_value_store_client::KeyValueStoreClient;
use memo_proto::kvs::{FetchRequest, UpsertRequest};
use std::net::SocketAddr;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Which system to drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// A memo cluster: Upsert and (linearizable) Fetch.
    Memo,
    /// An etcd v3 cluster: KV Put and Range (linearizable unless --serializable).
    /// Needs memo-bench built with `--features etcd`.
    Etcd,
}

/// Why a request failed: a gRPC status code name, or `transport`/`timeout`.
pub type ErrorKind = String;

/// One connection to one endpoint.
#[derive(Clone)]
pub enum Conn {
    Memo(KeyValueStoreClient<Channel>),
    #[cfg(feature = "etcd")]
    Etcd(Box<etcd_client::KvClient>),
}

impl Conn {
    /// Opens a connection to `addr` (already checked to be on loopback).
    pub async fn connect(target: Target, addr: SocketAddr, timeout: Duration) -> Result<Conn, String> {
        match target {
            Target::Memo => {
                let channel = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| e.to_string())?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .timeout(timeout)
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .map_err(|e| format!("cannot connect to {addr}: {}", source_chain(&e)))?;
                Ok(Conn::Memo(KeyValueStoreClient::new(channel)))
            }
            #[cfg(feature = "etcd")]
            Target::Etcd => {
                let options =
                    etcd_client::ConnectOptions::new().with_connect_timeout(CONNECT_TIMEOUT).with_timeout(timeout);
                let client = etcd_client::Client::connect([format!("http://{addr}")], Some(options))
                    .await
                    .map_err(|e| format!("cannot connect to {addr}: {}", source_chain(&e)))?;
                Ok(Conn::Etcd(Box::new(client.kv_client())))
            }
            #[cfg(not(feature = "etcd"))]
            Target::Etcd => Err("this memo-bench was built without etcd support: rebuild it with `--features etcd` \
                     (needs protoc: apt-get install protobuf-compiler)"
                .into()),
        }
    }

    /// Writes `value` under `key`.
    pub async fn put(&mut self, key: String, value: Vec<u8>) -> Result<(), ErrorKind> {
        match self {
            Conn::Memo(client) => client.upsert(UpsertRequest { key, value }).await.map(drop).map_err(status_kind),
            #[cfg(feature = "etcd")]
            Conn::Etcd(client) => client.put(key, value, None).await.map(drop).map_err(etcd_kind),
        }
    }

    /// Reads `key`: linearizable, or serializable (etcd only) when asked.
    pub async fn get(&mut self, key: String, serializable: bool) -> Result<(), ErrorKind> {
        match self {
            Conn::Memo(client) => {
                debug_assert!(!serializable, "memo has linearizable reads only");
                client.fetch(FetchRequest { key, version: 0 }).await.map(drop).map_err(status_kind)
            }
            #[cfg(feature = "etcd")]
            Conn::Etcd(client) => {
                let options = serializable.then(|| etcd_client::GetOptions::new().with_serializable());
                let response = client.get(key, options).await.map_err(etcd_kind)?;
                // A missing key is not an error in etcd; count it like memo's NOT_FOUND.
                if response.kvs().is_empty() { Err("NotFound".into()) } else { Ok(()) }
            }
        }
    }
}

fn status_kind(status: tonic::Status) -> ErrorKind {
    format!("{:?}", status.code())
}

#[cfg(feature = "etcd")]
fn etcd_kind(error: etcd_client::Error) -> ErrorKind {
    match error {
        etcd_client::Error::GRpcStatus(status) => format!("{:?}", status.code()),
        etcd_client::Error::TransportError(_) => "transport".into(),
        other => format!("other: {other}"),
    }
}

/// An error with its causes, which is where transport errors keep the useful part.
fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
