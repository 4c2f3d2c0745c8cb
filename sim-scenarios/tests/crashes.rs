//! Crashes: power cuts inside commits, process crashes, pauses, whole-cluster restarts.
#![cfg(madsim)]

use memo_sim::{catalog, check, run_seed};

memo_sim::child_entry!();

/// Premise: a node's disk loses power between writing a batch (a promise, an accept) and
/// syncing it, so the batch is lost (or, in some seeds, a prefix of the unsynced batches
/// survives). The node had not spoken about that state (durability before speech, R4),
/// so after it restarts from what was synced, nothing it said is contradicted. Plain
/// crashes between commits are mixed in.
#[madsim::test]
async fn a_crash_during_accept_loses_only_unsynced_state() {
    check(catalog::a_crash_during_accept_loses_only_unsynced_state()).await;
}

/// Premise: every node crashes at once (losing its unsynced writes) and the cluster
/// comes back from its disks only; restart counters keep new ballots above old ones
/// (R1). Every write acknowledged before the blackout is still there after it.
#[madsim::test]
async fn a_whole_cluster_restart_loses_no_acknowledged_write() {
    check(catalog::a_whole_cluster_restart_loses_no_acknowledged_write()).await;
}

/// Premise: keys are deleted and inserted again and again while nodes crash and lose
/// power; tombstones are garbage-collected (R8) in between. A deleted key must not come
/// back with an old value, and a reinserted one must not vanish.
#[madsim::test]
async fn a_delete_then_reinsert_across_crashes_never_resurrects_old_values() {
    check(catalog::a_delete_then_reinsert_across_crashes_never_resurrects_old_values()).await;
}

/// Premise: nodes stop executing for up to 3 s (a GC pause, a frozen VM) and resume with
/// stale timers and queued messages. A paused coordinator's late messages must be
/// harmless.
#[madsim::test]
async fn paused_nodes_resume_without_harm() {
    check(catalog::paused_nodes_resume_without_harm()).await;
}

/// Premise: nodes stay down or cut off for longer than the eviction delay (0.2-1.5 s
/// here), so failure detection declares them dead, their partitions move to the other
/// nodes through joint epochs (copier, final config), and move back when they return
/// (wiping what they held, F5), while clients read and write. Every history is
/// linearizable, and partitions did move.
#[test]
fn nodes_down_past_the_eviction_delay_move_partitions_away_and_back() {
    let scenario = catalog::nodes_down_past_the_eviction_delay_move_partitions_away_and_back();
    let seed = std::env::var("MADSIM_TEST_SEED").ok().and_then(|s| s.parse().ok());
    let report = run_seed(&scenario, seed.unwrap_or_else(|| scenario.default_seed()));
    println!("{}", report.stats_line());
    assert!(report.passed(), "{}", report.failure_report());
    assert!(report.moved.0 > 0, "no partition moved: the scenario lost its point");
}
