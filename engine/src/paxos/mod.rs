//! Per-key registers: CASPaxos with memo's KV preconditions.
//!
//! See [`crate::node`] for the proposer and the whole protocol essay; this module holds the
//! pieces that are pure data: [`ballot`] numbers and the [`acceptor`] transitions.

pub mod acceptor;
pub mod ballot;
