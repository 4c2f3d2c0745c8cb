//! Determinism: a seed replays exactly, and a fixed seed's summary is stable.
#![cfg(madsim)]

use memo_sim::{catalog, run_seed};

memo_sim::child_entry!();

/// Premise: the simulator, the node code and the harness draw every choice from the
/// seed, so running one seed twice yields the same full event history: every client
/// operation with its outcome and simulated times, every fault, every node start and
/// stop (madsim's MADSIM_TEST_CHECK_DETERMINISM only compares its own RNG draws and
/// clock). Each run is a child process (see `memo_sim::child` for why).
#[test]
fn one_seed_replays_to_the_same_event_history() {
    let scenario = catalog::one_seed_replays_to_the_same_event_history();
    let seeds = match std::env::var("MADSIM_TEST_SEED") {
        Ok(seed) => vec![seed.parse().expect("MADSIM_TEST_SEED is a number")],
        Err(_) => vec![3, 1234],
    };
    for seed in seeds {
        let first = run_seed(&scenario, seed);
        let second = run_seed(&scenario, seed);
        assert!(first.passed(), "{}", first.failure_report());
        if first.hash != second.hash {
            let diverged = (first.timeline.lines().zip(second.timeline.lines()))
                .find(|(a, b)| a != b)
                .map(|(a, b)| format!("first run:  {a}\nsecond run: {b}"))
                .unwrap_or_else(|| "one timeline is a prefix of the other".to_string());
            panic!("seed {seed} is not deterministic; the timelines diverge at\n{diverged}");
        }
        assert!(first.counts.ops > 100, "the run did something");
    }
}

/// Premise: a seed's summary (its derived options, its fault schedule and the verdict)
/// depends only on the seed and the scenario, not on timing, so it can be snapshotted. A
/// change here means the derivation changed (recorded seeds then mean other runs) or the
/// verdict did.
#[test]
fn a_fixed_seed_summary_is_stable() {
    let report = run_seed(&catalog::swarm_any_seed_picks_the_cluster_faults_and_workload(), 42);
    insta::assert_snapshot!(report.summary());
}
