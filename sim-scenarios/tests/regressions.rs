//! Seeds that found bugs in memo, each replayed so it guards its fix. A seed of a bug not
//! fixed yet is added `#[ignore]`d (run those with
//! `cargo simtest -p memo-sim-scenarios --test regressions -- --ignored`); none is now.
#![cfg(madsim)]

use memo_sim::{RunReport, Scenario, catalog, run_seed};

memo_sim::child_entry!();

fn replay(scenario: Scenario, seed: u64) -> RunReport {
    let report = run_seed(&scenario, seed);
    assert!(report.passed(), "{}", report.failure_report());
    report
}

/// A client got the answer meant for another request: Upsert answered ALREADY_EXISTS,
/// Insert NOT_FOUND, Update ALREADY_EXISTS, each from a node that had restarted shortly
/// before. Cause: a node's request, read and attempt ids restarted at 0 with the process,
/// so a primary's late reply to a forward from the previous incarnation answered the new
/// incarnation's request with the same id. Fixed: ids are namespaced by the restart
/// counter (`engine/src/node/mod.rs`, `life_base`).
#[test]
fn a_restarted_node_never_hands_a_client_another_requests_answer() {
    replay(catalog::a_crash_during_accept_loses_only_unsynced_state(), 10002);
    replay(catalog::a_delete_then_reinsert_across_crashes_never_resurrects_old_values(), 10277);
    replay(catalog::concurrent_writers_on_one_key_stay_linearizable(), 10060);
    replay(catalog::swarm_any_seed_picks_the_cluster_faults_and_workload(), 3199);
}

/// A write answered UNAVAILABLE took effect seconds later, after newer writes were
/// acknowledged (in seed 4629, a client's own retry: v2 UNAVAILABLE, v3 OK, then v2
/// replaced v3). Linearizability allows it (an unknown write may land at any later time),
/// so these seeds pass without `MEMO_SIM_STRICT`; memo's R6 does not mean to. Most likely
/// cause: a Forward that was delayed in transit (a stream blocked by a partition delivers
/// up to ~10 s after the heal) is executed by the primary as a new request with a fresh
/// deadline, although its origin already answered UNAVAILABLE. Fixed: a recovery that
/// answers UNAVAILABLE first makes an "aborted" marker for the op chosen in the key's
/// state, and every application of a write checks it (`engine/src/kv.rs`, `Aborts`). Seed
/// 4629 also needed the per-node watermarks: its Forward arrived ~19 s late, after nine
/// later aborts on the key had pushed its marker out of the named list. Once the promise
/// ceiling changed its history, it found the next path: the aborted writes' key was
/// deleted and garbage collected (markers and all) before their Forwards arrived; the
/// markers now outlive the key as its partition's abort watermarks.
#[test]
fn a_write_answered_unavailable_never_lands_after_a_later_acknowledged_write() {
    let swarm = catalog::swarm_any_seed_picks_the_cluster_faults_and_workload;
    for (scenario, seed) in [
        (swarm(), 2174),
        (swarm(), 4629),
        // A Delete answered UNAVAILABLE by its deadline, before any recovery marked it,
        // landed after the final write; a later write of its node had been aborted on the
        // key: markers now refuse the older unapplied writes of their node too.
        (swarm(), 141),
        (catalog::a_minority_partition_during_writes_keeps_the_majority_linearizable(), 10066),
    ] {
        let report = replay(scenario, seed);
        assert!(report.warnings.is_empty(), "{}\n{}", report.replay_command(), report.warnings[0]);
    }
}

/// Issue 9: a write answered "the outcome of this write was unknown; it is now aborted and
/// will never take effect" had taken effect (seed 45: a Fetch returned its value 30 ms
/// after it was invoked, three seconds before that answer). Its forwarder was paused, the
/// primary's answer went astray, and by the time the forwarder's recovery looked, more
/// writes than a state remembers had pushed the op out of the key's recent writes: the
/// recovery could not tell, and claimed "never". Found once the workload held that promise
/// (`memo_lincheck::promise_of_unavailable`), on 20 of seeds 0–399 (these four are the
/// first). Fixed: such an answer is *fenced* (if the write took effect, it did so before the
/// answer, never after), which the abort marker guarantees and the checker now holds.
#[test]
fn an_aborted_write_is_answered_fenced_because_it_may_have_taken_effect() {
    let swarm = catalog::swarm_any_seed_picks_the_cluster_faults_and_workload;
    for seed in [45, 56, 125, 132] {
        let report = replay(swarm(), seed);
        assert!(report.warnings.is_empty(), "{}\n{}", report.replay_command(), report.warnings[0]);
    }
}

/// A replica that missed a write never converged: swarm seed 4804 (found by the 10,000-seed
/// sweep of issue 9) ended with the final value on two members and the key absent on the
/// third. That member had restarted, so its absent key promised the previous life's
/// promise ceiling; the final write was chosen by the other two at a lower ballot, and its
/// Commit was ignored as if the key had been collected after that state. Fixed: only the
/// partition's GC floor makes a Commit to an absent key stale (`Register::commit`, R7).
#[test]
fn a_replica_that_restarted_installs_the_commits_it_missed() {
    replay(catalog::swarm_any_seed_picks_the_cluster_faults_and_workload(), 4804);
}
