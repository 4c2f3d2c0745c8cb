//! Simulation-only harness for memo (built with `--cfg madsim`): it runs the real node
//! code (`memo-node`, written against madsim-tokio/madsim-tonic) on simulated hosts and
//! checks what clients observe. See `docs/SIMULATION.md`.
//!
//! - [`options`]: scenarios (named menus) and the options one seed derives from them;
//! - [`cluster`]: hosts, node incarnations, link cuts, crash/restart/pause;
//! - [`clock`]: [`SkewClock`], per-node offset, drift and jumps;
//! - [`storage`]: [`SimDisk`]/[`SimStorage`], synced vs unsynced writes, power cuts;
//! - [`faults`]: the fault scheduler;
//! - [`workload`]: gRPC clients;
//! - [`history`]: the record and the timeline;
//! - [`check`]: linearizability (memo-lincheck), List consistency, failure kinds;
//! - [`run`]: phases and entry points ([`check`](run::check), [`run_seed`]);
//! - [`child`]: one child process per seed (why: `tokio::select!` and a process-global
//!   counter);
//! - [`catalog`]: every named scenario.
#![cfg(madsim)]

pub mod catalog;
pub mod check;
pub mod child;
pub mod clock;
pub mod cluster;
pub mod faults;
pub mod history;
pub mod options;
pub mod run;
pub mod storage;
pub mod workload;

pub use check::Failure;
pub use child::run_seed;
pub use clock::SkewClock;
pub use options::{FaultKind, Mix, Scenario, SimOptions, Skew};
pub use run::{RunReport, check, run};
pub use storage::{CrashMode, SimDisk, SimStorage};

/// Re-exported for scenarios that plant bugs.
pub use memo_engine::config::PlantedBug;
/// Re-exported for scenarios that fix the peer transport, and for clock tests.
pub use memo_node::{Clock, PeerTransport};
