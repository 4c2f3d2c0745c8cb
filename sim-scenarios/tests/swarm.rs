//! Swarm testing: the seed picks everything.
#![cfg(madsim)]

use memo_sim::{catalog, check, run_seed};

memo_sim::child_entry!();

/// Premise: none beyond the model. Whatever the seed picks (3–7 nodes, replication,
/// a random subset of up to five fault kinds, workload mix, clock skew, peer transport,
/// engine timeouts), histories are linearizable, Lists are consistent, the healed cluster
/// is live and replicas converge. Sweep with
/// `MADSIM_TEST_NUM=1000 cargo simtest --release -p memo-sim-scenarios swarm_any`.
#[madsim::test]
async fn swarm_any_seed_picks_the_cluster_faults_and_workload() {
    check(catalog::swarm_any_seed_picks_the_cluster_faults_and_workload()).await;
}

/// Number of fixed seeds the suite always runs, on top of the random seed above.
const FIXED_SEEDS: u64 = 16;

/// Premise: as above, on seeds `0..FIXED_SEEDS` that every run of the suite covers (the
/// `#[madsim::test]` above draws a new seed each run unless MADSIM_TEST_SEED is set).
#[test]
fn swarm_fixed_seeds_all_pass() {
    let scenario = catalog::swarm_any_seed_picks_the_cluster_faults_and_workload();
    for seed in 0..FIXED_SEEDS {
        let report = run_seed(&scenario, seed);
        assert!(report.passed(), "{}", report.failure_report());
    }
}
