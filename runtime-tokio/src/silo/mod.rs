//! Silos: the node's local storage behind [`memo_engine::Storage`] (docs/OPERATIONS.md, "Durability").
//!
//! - [`RedbStorage`]: the durable default, one redb file per node and its write-ahead log
//!   (see [`redb`] and [`wal`]).
//! - [`MemoryStorage`]: the engine's in-memory silo, for `memo dev`, tests and a node run
//!   without a data directory (durable only for as long as the process lives).

pub mod redb;
pub mod wal;

pub use self::redb::{REDB_CACHE_BYTES_DEFAULT, RedbOptions, RedbStorage};
pub use memo_engine::MemoryStorage;
