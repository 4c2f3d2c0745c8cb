//! The simulator has teeth: with a known protocol bug planted in every node, it must
//! find a violation within a bounded number of seeds.
#![cfg(madsim)]

use memo_sim::{Scenario, catalog, run_seed};

memo_sim::child_entry!();

/// Seeds tried before a teeth test gives up.
const SEEDS_MAX: u64 = 20;

/// Runs seeds from `base` (or only MADSIM_TEST_SEED, to replay one) until the checker
/// proves a linearizability violation; returns how many seeds that took.
fn finds_a_violation(scenario: Scenario, base: u64) -> u64 {
    finds(scenario, base, |report| report.not_linearizable())
}

/// Like [`finds_a_violation`], for a broken versioning rule (`check_versions`).
fn finds_broken_versions(scenario: Scenario, base: u64) -> u64 {
    finds(scenario, base, |report| report.versions_broken())
}

fn finds(scenario: Scenario, base: u64, found: impl Fn(&memo_sim::RunReport) -> bool) -> u64 {
    let seeds = match std::env::var("MADSIM_TEST_SEED") {
        Ok(seed) => {
            let seed = seed.parse().expect("MADSIM_TEST_SEED is a number");
            seed..seed + 1
        }
        Err(_) => base..base + SEEDS_MAX,
    };
    for seed in seeds.clone() {
        let report = run_seed(&scenario, seed);
        if found(&report) {
            let tried = seed - seeds.start + 1;
            println!("found after {tried} seed(s); replay: {}", report.replay_command());
            if let Some(first) = report.failures.first() {
                println!("first finding: {first}");
            }
            if let Ok(path) = report.write_timeline() {
                println!("timeline: {}", path.display());
            }
            return tried;
        }
        println!("seed {seed}: no violation ({:?})", report.failures.iter().map(|f| f.kind()).collect::<Vec<_>>());
    }
    panic!("no violation in seeds {seeds:?} of {}: the simulator or the checker lost its teeth", scenario.name);
}

/// Premise: reads that answer from the first replica view instead of a quorum (R5
/// broken) return stale values as soon as one replica lags, which minority partitions,
/// an isolated primary and crashes make routine. The checker must prove a
/// linearizability violation within `SEEDS_MAX` seeds.
#[test]
fn the_simulator_finds_reads_answered_by_one_replica() {
    finds_a_violation(catalog::the_simulator_finds_reads_answered_by_one_replica(), 7_000);
}

/// Premise: acceptors that accept any ballot, ignoring their promise (Paxos phase 2
/// broken), let two coordinators both get a value chosen on one contended key. The
/// checker must prove a violation within `SEEDS_MAX` seeds.
#[test]
fn the_simulator_finds_acceptors_that_ignore_their_promise() {
    finds_a_violation(catalog::the_simulator_finds_acceptors_that_ignore_their_promise(), 8_000);
}

/// Premise (issue 9): a recovery that cannot tell whether a write took effect answers
/// that it never did and never will. On a hot key the write may have taken effect and
/// been pushed out of the state's recent writes before the recovery looked, so the answer
/// is a broken promise. The checker holds the promise (an aborted write never happened)
/// and must prove a violation within `SEEDS_MAX` seeds.
#[test]
fn the_simulator_finds_aborts_that_claim_the_write_never_happened() {
    finds_a_violation(catalog::the_simulator_finds_aborts_that_claim_the_write_never_happened(), 9_000);
}

/// Premise: a recovery answers fenced ("never after this answer") without recording the
/// abort marker in the chosen state, so a Forward delayed in a blocked stream still lands
/// after the answer. The checker holds the fence and must prove a violation within
/// `SEEDS_MAX` seeds.
#[test]
fn the_simulator_finds_fences_without_an_abort_marker() {
    finds_a_violation(catalog::the_simulator_finds_fences_without_an_abort_marker(), 9_500);
}

/// Premise (F4): a rebalancer that proposes the final config of a joint epoch without
/// copying the partition to its new members loses every value the new majority never
/// received. Evictions under crashes and partitions move partitions routinely; the
/// checker must prove a violation within `SEEDS_MAX` seeds.
#[test]
fn the_simulator_finds_a_final_config_proposed_without_a_copy() {
    finds_a_violation(catalog::the_simulator_finds_a_final_config_proposed_without_a_copy(), 11_000);
}

/// Premise (F5): a member added back after an eviction that keeps its old registers
/// answers with values deleted and collected while it was away. The checker must prove a
/// violation within `SEEDS_MAX` seeds.
#[test]
fn the_simulator_finds_a_returning_member_that_does_not_wipe() {
    finds_a_violation(catalog::the_simulator_finds_a_returning_member_that_does_not_wipe(), 12_000);
}

/// Premise (V3): a Delete that drops the versions before it leaves a versioned key with a
/// history shorter than its rule keeps. Keys under a `--versions 3` rule are deleted and
/// rewritten often; a listing after a Delete must show the window of three, and the
/// checker must find one that does not within `SEEDS_MAX` seeds.
#[test]
fn the_simulator_finds_a_delete_that_drops_versions() {
    finds_broken_versions(catalog::the_simulator_finds_a_delete_that_drops_versions(), 13_000);
}

/// Premise (V4): tombstone collection that removes a deleted key whose history still
/// keeps values loses them, and the key's numbers start again from 1. The checker must
/// see the numbers go back within `SEEDS_MAX` seeds.
#[test]
fn the_simulator_finds_a_gc_that_drops_versions() {
    finds_broken_versions(catalog::the_simulator_finds_a_gc_that_drops_versions(), 13_500);
}
