//! memo's engine: the sans-IO core of a decentralized, elastic, resilient key-value store.
//!
//! Every key is its own CASPaxos register replicated on its partition's `k` members; every
//! node both coordinates and stores. The engine is a pure state machine: it never reads a
//! clock, draws OS randomness, spawns threads or touches the network or the disk. A
//! runtime drives it (see [`Node`] for the contract): production with tokio and gRPC,
//! tests with a deterministic in-process message pump, and the simulator with madsim.
//!
//! Modules: [`placement`] (where keys live), [`paxos`] (ballots and the acceptor),
//! [`node`] (the proposer, reads, List, persistence and routing), [`kv`] (the KV
//! functions), [`list`] (S3 page semantics), [`message`] (the peer protocol),
//! [`storage`] (the silo boundary), [`quorum`] (majority and joint quorums),
//! [`reconfig`] (moving partitions between members).

#![warn(missing_docs)]

mod codec;
pub mod config;
mod error;
pub mod ids;
pub mod kv;
pub mod list;
pub mod mem;
pub mod membership;
pub mod message;
pub mod node;
pub mod paxos;
pub mod placement;
pub mod quorum;
pub mod reconfig;
pub mod storage;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod time;

pub use config::{ClusterParams, Config};
pub use error::{FENCED_PREFIX, KvError};
pub use ids::{ClusterId, NodeId, OpId};
pub use kv::{Encoding, Value};
pub use node::{Node, Reply, Request, RequestId, Response, StartError, Stats, Transmit};
pub use storage::{MemoryStorage, PersistBatch, Storage};
pub use time::Instant;
