//! Simulation-only harness for memo (built with `--cfg madsim`): cluster builder, skewed
//! clocks, crash-faithful storage, fault scheduler, client workloads, history recorder
//! and checkers. See `docs/SIMULATION.md` for what exists today and what comes next.
//!
//! The per-key linearizability checker it builds on is the `memo-lincheck` crate, and the
//! engine's own deterministic harness is `memo_engine::testing`.
