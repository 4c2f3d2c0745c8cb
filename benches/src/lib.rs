//! memo's benchmarks.
//!
//! - `benches/engine.rs`: criterion benchmarks of the sans-IO engine alone.
//! - [`loadgen`] and the `memo-bench` binary: a gRPC load generator that drives a running
//!   memo cluster (or, for comparison, an etcd v3 cluster) from outside, in the spirit of
//!   etcd's `benchmark` tool. It only ever talks to loopback addresses.
//!
//! The load generator uses real sockets and real tokio, so it is not compiled in
//! simulation builds (`--cfg madsim`).

#[cfg(not(madsim))]
pub mod loadgen;
