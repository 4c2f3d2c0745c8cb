//! Every named scenario. A scenario's name is the name of the test that runs it, so the
//! replay command `MADSIM_TEST_SEED=<seed> cargo simtest -p memo-sim-scenarios <name>`
//! finds it; and a child process (see `run.rs`) can rebuild a scenario from its name.
//! The premises are stated on the tests in `sim-scenarios/tests/`.

use crate::options::{FaultKind, Mix, Scenario, Skew};
use memo_engine::config::PlantedBug;
use memo_node::PeerTransport;

/// Minority partitions while clients write through every node.
pub fn a_minority_partition_during_writes_keeps_the_majority_linearizable() -> Scenario {
    Scenario::new("a_minority_partition_during_writes_keeps_the_majority_linearizable")
        .nodes(3..=7)
        .faults(&[FaultKind::MinorityPartition])
}

/// The hot key's primary cut off from its peers, still reachable by clients.
pub fn an_isolated_primary_is_routed_around_and_answers_nothing_stale() -> Scenario {
    Scenario::new("an_isolated_primary_is_routed_around_and_answers_nothing_stale")
        .nodes(3..=5)
        .faults(&[FaultKind::IsolatePrimary])
        .episodes(2..=5)
}

/// One-way link cuts and random symmetric splits.
pub fn one_way_and_symmetric_partitions_never_break_linearizability() -> Scenario {
    Scenario::new("one_way_and_symmetric_partitions_never_break_linearizability")
        .nodes(3..=5)
        .faults(&[FaultKind::OneWayPartition, FaultKind::Partition])
}

/// Flapping links with unary peer calls.
pub fn flapping_links_lose_messages_but_no_acknowledged_write() -> Scenario {
    Scenario::new("flapping_links_lose_messages_but_no_acknowledged_write")
        .nodes(3..=5)
        .faults(&[FaultKind::FlappingLink])
        .transport(PeerTransport::Unary)
        .episodes(3..=6)
}

/// Power cuts between a batch's write and its sync, plus plain crashes.
pub fn a_crash_during_accept_loses_only_unsynced_state() -> Scenario {
    Scenario::new("a_crash_during_accept_loses_only_unsynced_state")
        .nodes(3..=5)
        .faults(&[FaultKind::PowerCut, FaultKind::Crash])
        .mix(Mix::WRITE_HEAVY)
        .episodes(6..=12)
}

/// Every node crashes at once; the cluster restarts from its disks.
pub fn a_whole_cluster_restart_loses_no_acknowledged_write() -> Scenario {
    Scenario::new("a_whole_cluster_restart_loses_no_acknowledged_write")
        .nodes(3..=5)
        .faults(&[FaultKind::WholeClusterRestart, FaultKind::Crash])
        .episodes(2..=4)
}

/// Deletes and reinserts on few keys while nodes crash and tombstones are collected.
pub fn a_delete_then_reinsert_across_crashes_never_resurrects_old_values() -> Scenario {
    Scenario::new("a_delete_then_reinsert_across_crashes_never_resurrects_old_values")
        .nodes(3..=5)
        .keys(2..=4)
        .faults(&[FaultKind::Crash, FaultKind::PowerCut])
        .mix(Mix::CHURN)
        .episodes(5..=10)
}

/// Nodes paused for up to 3 s.
pub fn paused_nodes_resume_without_harm() -> Scenario {
    Scenario::new("paused_nodes_resume_without_harm").nodes(3..=5).faults(&[FaultKind::Pause, FaultKind::Crash])
}

/// Packet loss and latency, unary peer calls, clients cut from nodes.
pub fn a_lossy_slow_network_only_delays_answers() -> Scenario {
    Scenario::new("a_lossy_slow_network_only_delays_answers")
        .nodes(3..=5)
        .faults(&[FaultKind::NetworkDegrade, FaultKind::ClientCut])
        .transport(PeerTransport::Unary)
}

/// Wild clock offsets and drift, drift changes and jumps, with partitions and crashes.
pub fn clock_skew_drift_and_jumps_never_break_linearizability() -> Scenario {
    Scenario::new("clock_skew_drift_and_jumps_never_break_linearizability")
        .nodes(3..=5)
        .skew(Skew::Wild)
        .faults(&[FaultKind::ClockJump, FaultKind::ClockDrift, FaultKind::MinorityPartition, FaultKind::Crash])
        .episodes(6..=12)
}

/// Six to eight writers on one key.
pub fn concurrent_writers_on_one_key_stay_linearizable() -> Scenario {
    Scenario::new("concurrent_writers_on_one_key_stay_linearizable")
        .nodes(3..=5)
        .keys(1..=1)
        .clients(6..=8)
        .mix(Mix::WRITE_HEAVY)
        .faults(&[FaultKind::MinorityPartition, FaultKind::Crash])
        .episodes(2..=4)
}

/// The seed picks everything.
pub fn swarm_any_seed_picks_the_cluster_faults_and_workload() -> Scenario {
    Scenario::new("swarm_any_seed_picks_the_cluster_faults_and_workload").nodes(3..=7).swarm()
}

/// Every moving part at once, for the determinism test.
pub fn one_seed_replays_to_the_same_event_history() -> Scenario {
    Scenario::new("one_seed_replays_to_the_same_event_history").nodes(3..=5).faults(&[
        FaultKind::MinorityPartition,
        FaultKind::OneWayPartition,
        FaultKind::Crash,
        FaultKind::PowerCut,
        FaultKind::Pause,
        FaultKind::ClockJump,
        FaultKind::NetworkDegrade,
    ])
}

/// Reads answered by one replica (R5 broken on purpose), under partitions and crashes.
pub fn the_simulator_finds_reads_answered_by_one_replica() -> Scenario {
    Scenario::new("the_simulator_finds_reads_answered_by_one_replica")
        .faults(&[FaultKind::MinorityPartition, FaultKind::IsolatePrimary, FaultKind::Crash])
        .planted_bug(PlantedBug::ReadFromOneReplica)
}

/// Acceptors that ignore their promise (Paxos phase 2 broken on purpose).
pub fn the_simulator_finds_acceptors_that_ignore_their_promise() -> Scenario {
    Scenario::new("the_simulator_finds_acceptors_that_ignore_their_promise")
        .keys(1..=2)
        .clients(5..=8)
        .mix(Mix::WRITE_HEAVY)
        .faults(&[FaultKind::MinorityPartition, FaultKind::Crash, FaultKind::NetworkDegrade])
        .planted_bug(PlantedBug::AcceptIgnoresPromise)
}

/// Recoveries that answer "it will never take effect" for writes they cannot classify
/// (memo before issue 9), on hot keys written faster than a state remembers, with pauses
/// and a lossy network so forwards and their answers go astray.
pub fn the_simulator_finds_aborts_that_claim_the_write_never_happened() -> Scenario {
    Scenario::new("the_simulator_finds_aborts_that_claim_the_write_never_happened")
        .nodes(4..=6)
        .keys(1..=1)
        .clients(10..=14)
        .mix(Mix::WRITE_HEAVY)
        .faults(&[FaultKind::NetworkDegrade])
        .transport(PeerTransport::Unary)
        .episodes(6..=10)
        .planted_bug(PlantedBug::AbortClaimsNeverHappened)
}

/// Recoveries that answer fenced without the abort marker that enforces it, with
/// partitions that delay forwards in blocked streams (the zombie-write setting).
pub fn the_simulator_finds_fences_without_an_abort_marker() -> Scenario {
    Scenario::new("the_simulator_finds_fences_without_an_abort_marker")
        .nodes(3..=5)
        .keys(1..=2)
        .clients(5..=8)
        .mix(Mix::WRITE_HEAVY)
        .faults(&[FaultKind::Partition, FaultKind::IsolatePrimary, FaultKind::Pause])
        .planted_bug(PlantedBug::FenceWithoutMarker)
}

/// Nodes crash, lose power or are cut off for longer than the eviction delay, so their
/// partitions move to the others through joint epochs, and move back when they return.
pub fn nodes_down_past_the_eviction_delay_move_partitions_away_and_back() -> Scenario {
    Scenario::new("nodes_down_past_the_eviction_delay_move_partitions_away_and_back")
        .nodes(4..=7)
        .replication(3)
        .faults(&[FaultKind::Crash, FaultKind::PowerCut, FaultKind::MinorityPartition])
        .episodes(4..=8)
}

/// A rebalancer that proposes the final config of a joint epoch without copying it (F4
/// broken), under the same evictions. Many keys and mostly reads, so that a key the
/// missing copy left on old members only is soon read through the new ones: with 4 keys
/// and the balanced mix, 1 seed in 100 (11000–11099) found the bug; with 16–32 keys and
/// 8–12 episodes, 9–10 in each of 11000–11099, 11100–11199 and 11200–11299; with these,
/// 19, 12 and 14 (a miss in all 20 seeds of the teeth test: 4% rather than 13%).
pub fn the_simulator_finds_a_final_config_proposed_without_a_copy() -> Scenario {
    Scenario::new("the_simulator_finds_a_final_config_proposed_without_a_copy")
        .nodes(5..=7)
        .replication(3)
        .keys(64..=128)
        .mix(Mix::READ_HEAVY)
        .faults(&[FaultKind::MinorityPartition])
        .episodes(12..=16)
        .planted_bug(PlantedBug::FinalWithoutCopy)
}

/// Members added back after an eviction that keep the data of their earlier spell (F5
/// broken), with keys deleted and collected while they were away.
pub fn the_simulator_finds_a_returning_member_that_does_not_wipe() -> Scenario {
    Scenario::new("the_simulator_finds_a_returning_member_that_does_not_wipe")
        .nodes(5..=7)
        .replication(3)
        .faults(&[FaultKind::MinorityPartition])
        .mix(Mix::CHURN)
        .episodes(6..=10)
        .planted_bug(PlantedBug::NoWipeOnAdd)
}

/// Two servers join the running cluster (`--join`) while clients write, with crashes and
/// minority partitions.
pub fn two_nodes_join_under_load_and_every_history_stays_linearizable() -> Scenario {
    Scenario::new("two_nodes_join_under_load_and_every_history_stays_linearizable")
        .nodes(3..=5)
        .replication(3)
        .faults(&[FaultKind::Crash, FaultKind::MinorityPartition])
        .episodes(2..=5)
        .membership_changes(2, 0)
}

/// A founder leaves gracefully while clients write, with crashes and partitions.
pub fn a_founder_leaves_under_load_and_every_history_stays_linearizable() -> Scenario {
    Scenario::new("a_founder_leaves_under_load_and_every_history_stays_linearizable")
        .nodes(4..=6)
        .replication(3)
        .faults(&[FaultKind::Crash, FaultKind::MinorityPartition])
        .episodes(2..=5)
        .membership_changes(0, 1)
}

/// A node joins while others are paused or cut off (suspected by SWIM), and a founder
/// leaves.
pub fn a_join_while_other_nodes_are_suspected_stays_linearizable() -> Scenario {
    Scenario::new("a_join_while_other_nodes_are_suspected_stays_linearizable")
        .nodes(4..=5)
        .replication(3)
        .faults(&[FaultKind::Pause, FaultKind::MinorityPartition, FaultKind::OneWayPartition])
        .episodes(6..=10)
        .membership_changes(1, 1)
}

/// A rolling replacement: three servers join, then every founder leaves in turn, while
/// clients write and nodes crash; the cluster ends with none of its founders.
pub fn a_rolling_replacement_of_every_founder_keeps_every_acknowledged_write() -> Scenario {
    Scenario::new("a_rolling_replacement_of_every_founder_keeps_every_acknowledged_write")
        .nodes(3..=3)
        .replication(3)
        .faults(&[FaultKind::Crash])
        .episodes(1..=3)
        .membership_changes(3, 3)
}

/// Servers join under load, and whichever node is found moving a partition (its decree
/// in flight or its copier running) crashes or is cut off from every other server in
/// the middle of the move; the move is finished or aborted safely by it once back, or by
/// another member.
pub fn a_rebalancer_stopped_mid_move_leaves_a_move_that_finishes_safely() -> Scenario {
    Scenario::new("a_rebalancer_stopped_mid_move_leaves_a_move_that_finishes_safely")
        .nodes(3..=4)
        .replication(3)
        .faults(&[FaultKind::RebalancerDown])
        .episodes(2..=4)
        .membership_changes(2, 0)
}

/// Every scenario of the catalog.
pub const ALL: &[fn() -> Scenario] = &[
    a_minority_partition_during_writes_keeps_the_majority_linearizable,
    an_isolated_primary_is_routed_around_and_answers_nothing_stale,
    one_way_and_symmetric_partitions_never_break_linearizability,
    flapping_links_lose_messages_but_no_acknowledged_write,
    a_crash_during_accept_loses_only_unsynced_state,
    a_whole_cluster_restart_loses_no_acknowledged_write,
    a_delete_then_reinsert_across_crashes_never_resurrects_old_values,
    paused_nodes_resume_without_harm,
    a_lossy_slow_network_only_delays_answers,
    clock_skew_drift_and_jumps_never_break_linearizability,
    concurrent_writers_on_one_key_stay_linearizable,
    swarm_any_seed_picks_the_cluster_faults_and_workload,
    one_seed_replays_to_the_same_event_history,
    the_simulator_finds_reads_answered_by_one_replica,
    the_simulator_finds_acceptors_that_ignore_their_promise,
    the_simulator_finds_aborts_that_claim_the_write_never_happened,
    the_simulator_finds_fences_without_an_abort_marker,
    nodes_down_past_the_eviction_delay_move_partitions_away_and_back,
    the_simulator_finds_a_final_config_proposed_without_a_copy,
    the_simulator_finds_a_returning_member_that_does_not_wipe,
    two_nodes_join_under_load_and_every_history_stays_linearizable,
    a_founder_leaves_under_load_and_every_history_stays_linearizable,
    a_join_while_other_nodes_are_suspected_stays_linearizable,
    a_rolling_replacement_of_every_founder_keeps_every_acknowledged_write,
    a_rebalancer_stopped_mid_move_leaves_a_move_that_finishes_safely,
    values_under_every_policy_stay_linearizable_through_faults,
    the_simulator_finds_a_delete_that_drops_versions,
    the_simulator_finds_a_gc_that_drops_versions,
];

/// The versioning rules of the policy scenario, with deletes frequent (CHURN) and no
/// faults, so any run that deletes a versioned key tests V3 and V4.
fn versioned_churn(name: &'static str, bug: PlantedBug) -> Scenario {
    use crate::options::SimRule;
    use memo_node::policy::Compression;
    let rules = [SimRule { prefix: "k", compression: Compression::None, encrypt: false, versions: 3 }];
    Scenario::new(name).nodes(3..=5).keys(2..=4).mix(Mix::CHURN).policies(&rules, 0).planted_bug(bug)
}

/// A Delete that drops the versions before it (V3 broken).
pub fn the_simulator_finds_a_delete_that_drops_versions() -> Scenario {
    versioned_churn("the_simulator_finds_a_delete_that_drops_versions", PlantedBug::DeleteDropsVersions)
}

/// Tombstone collection that removes versioned tombstones (V4 broken).
pub fn the_simulator_finds_a_gc_that_drops_versions() -> Scenario {
    versioned_churn("the_simulator_finds_a_gc_that_drops_versions", PlantedBug::GcDropsVersions)
}

/// Mixed policy prefixes (compressed, encrypted, both, versioned, plain) under crashes,
/// power cuts, partitions and pauses.
pub fn values_under_every_policy_stay_linearizable_through_faults() -> Scenario {
    use crate::options::SimRule;
    use memo_node::policy::Compression;
    let rules = [
        SimRule { prefix: "k0", compression: Compression::Zstd(3), encrypt: true, versions: 3 },
        SimRule { prefix: "k1", compression: Compression::Lz4, encrypt: false, versions: 0 },
        SimRule { prefix: "k2", compression: Compression::None, encrypt: true, versions: 0 },
        SimRule { prefix: "k3", compression: Compression::None, encrypt: false, versions: 4 },
    ];
    Scenario::new("values_under_every_policy_stay_linearizable_through_faults")
        .nodes(3..=5)
        .keys(4..=6)
        .faults(&[FaultKind::Crash, FaultKind::PowerCut, FaultKind::Partition, FaultKind::Pause])
        .policies(&rules, 200)
}

/// The scenario called `name`.
pub fn by_name(name: &str) -> Option<Scenario> {
    ALL.iter().map(|f| f()).find(|s| s.name == name)
}
