//! Membership changes under load: joins (`--join`), graceful leaves (`Admin/Leave`), and
//! both while other nodes are suspected. Partitions move through joint epochs while
//! clients read and write; every history must stay linearizable and replicas converge on
//! the final configs.
#![cfg(madsim)]

use memo_sim::{catalog, run_seed};

memo_sim::child_entry!();

/// Runs the scenario's seed (`MADSIM_TEST_SEED`, or its default), checks it passed and
/// that its membership changes moved partitions.
fn passes_and_moves(scenario: memo_sim::Scenario) -> memo_sim::RunReport {
    let seed = std::env::var("MADSIM_TEST_SEED").ok().and_then(|s| s.parse().ok());
    let report = run_seed(&scenario, seed.unwrap_or_else(|| scenario.default_seed()));
    println!("{}", report.stats_line());
    assert!(report.passed(), "{}", report.failure_report());
    assert!(report.moved.0 > 0, "no partition moved: the scenario lost its point");
    if scenario.joins > 0 {
        assert!(report.timeline.contains("starts and joins"), "no server joined");
    }
    if scenario.leaves > 0 {
        assert!(report.timeline.contains("is leaving"), "no founder left");
    }
    report
}

/// Premise: two servers that are not founders start mid-run and join through a founder;
/// about `k/n` of the replicas move to them through joint epochs while clients write and
/// nodes crash or are cut off.
#[test]
fn two_nodes_join_under_load_and_every_history_stays_linearizable() {
    passes_and_moves(catalog::two_nodes_join_under_load_and_every_history_stays_linearizable());
}

/// Premise: a founder is asked to leave mid-run; its partitions move to the others while
/// it keeps serving them, then no config lists it.
#[test]
fn a_founder_leaves_under_load_and_every_history_stays_linearizable() {
    passes_and_moves(catalog::a_founder_leaves_under_load_and_every_history_stays_linearizable());
}

/// Premise: a node joins (and a founder leaves) while other nodes are paused or cut off,
/// so SWIM suspects them and moves race with suspicion, refutation and eviction.
#[test]
fn a_join_while_other_nodes_are_suspected_stays_linearizable() {
    passes_and_moves(catalog::a_join_while_other_nodes_are_suspected_stays_linearizable());
}

/// Premise: three servers join, then every founder leaves in turn (through `Admin/Leave`),
/// while clients write and nodes crash. At the end no config lists a founder, and every
/// acknowledged write is still there (the convergence check reads the final configs).
#[test]
fn a_rolling_replacement_of_every_founder_keeps_every_acknowledged_write() {
    let report = passes_and_moves(catalog::a_rolling_replacement_of_every_founder_keeps_every_acknowledged_write());
    assert_eq!(report.timeline.matches("is leaving").count(), 3, "every founder's leave was accepted");
}

/// Premise: two servers join; a node found moving a partition (decree or copy in flight)
/// crashes or is cut off mid-move; its moves finish or abort safely, and every history
/// stays linearizable.
#[test]
fn a_rebalancer_stopped_mid_move_leaves_a_move_that_finishes_safely() {
    let report = passes_and_moves(catalog::a_rebalancer_stopped_mid_move_leaves_a_move_that_finishes_safely());
    assert!(report.timeline.contains("is moving a partition"), "no rebalancer was stopped mid-move");
}
