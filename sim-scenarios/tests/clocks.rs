//! Clock skew, drift and jumps.
#![cfg(madsim)]

use memo_sim::{catalog, check};

memo_sim::child_entry!();

/// Premise: node clocks are offset by up to a day, run up to 5% fast or slow, change
/// drift by up to 10%, and jump forward by up to 10 s or back by up to 0.5 s. Time only
/// drives timers (timeouts, backoff, GC, suspicion), never correctness: histories stay
/// linearizable and the cluster stays live, with partitions and crashes mixed in.
#[madsim::test]
async fn clock_skew_drift_and_jumps_never_break_linearizability() {
    check(catalog::clock_skew_drift_and_jumps_never_break_linearizability()).await;
}
