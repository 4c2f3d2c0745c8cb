//! Unit tests of the harness itself: the checkers on hand-made histories, the
//! crash-faithful disk, the skewed clock, the option derivation.
#![cfg(madsim)]

use memo_engine::{PersistBatch, Storage};
use memo_lincheck::{Command, History, Outcome};
use memo_sim::check::{Failure, check_linearizable, check_lists};
use memo_sim::history::{ListRecord, ListResult};
use memo_sim::{CrashMode, FaultKind, Scenario, SimDisk, SimOptions, SkewClock};
use std::time::Duration;

fn list(prefix: &str, marker: &str, at: (u64, u64), items: &[&str], truncated: bool) -> ListRecord {
    ListRecord {
        client: 9,
        prefix: prefix.into(),
        marker: marker.into(),
        invoked_at: at.0,
        completed_at: at.1,
        result: Some(ListResult { items: items.iter().map(|s| s.to_string()).collect(), truncated }),
    }
}

fn v(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

#[test]
fn lists_that_match_the_writes_pass() {
    let mut h = History::new();
    let w = h.invoke(1, "a", Command::Insert(v("1")), 0);
    h.complete(w, Outcome::Ok, 10);
    let w = h.invoke(1, "b", Command::Upsert(v("2")), 20);
    h.complete(w, Outcome::Unknown, 0);
    let d = h.invoke(2, "c", Command::Upsert(v("3")), 0);
    h.complete(d, Outcome::Ok, 5);
    let d = h.invoke(2, "c", Command::Delete, 6);
    h.complete(d, Outcome::Ok, 8);
    let ops = h.operations();
    // "b" may be listed (its write was invoked before the List ended) or not (unknown).
    let lists = [
        list("", "", (30, 40), &["a", "b"], false),
        list("", "", (30, 40), &["a"], false),
        // Truncated after "a": "b" and "c" are beyond the page.
        list("", "", (30, 40), &["a"], true),
        // Marker "a" excludes "a".
        list("", "a", (30, 40), &[], false),
        // Prefix "b" excludes "a".
        list("b", "", (30, 40), &[], false),
    ];
    assert_eq!(check_lists(&ops, &lists), Vec::<String>::new());
}

#[test]
fn a_listed_key_that_was_never_written_is_caught() {
    let mut h = History::new();
    let w = h.invoke(1, "a", Command::Insert(v("1")), 50);
    h.complete(w, Outcome::Ok, 60);
    let w = h.invoke(1, "b", Command::Insert(v("1")), 0);
    h.complete(w, Outcome::AlreadyExists, 5);
    let problems = check_lists(&h.operations(), &[list("", "", (10, 40), &["a", "b", "z"], false)]);
    assert_eq!(problems.len(), 3, "{problems:?}");
}

#[test]
fn a_key_missing_from_a_list_is_caught_unless_a_delete_may_explain_it() {
    let mut h = History::new();
    let w = h.invoke(1, "a", Command::Upsert(v("1")), 0);
    h.complete(w, Outcome::Ok, 10);
    let w = h.invoke(1, "b", Command::Upsert(v("1")), 0);
    h.complete(w, Outcome::Ok, 10);
    // A Delete of "b" with an unknown outcome may explain its absence; a Delete of "a"
    // that returned NOT_FOUND may not.
    let d = h.invoke(2, "b", Command::Delete, 15);
    h.complete(d, Outcome::Unknown, 0);
    let d = h.invoke(2, "a", Command::Delete, 15);
    h.complete(d, Outcome::NotFound, 18);
    let problems = check_lists(&h.operations(), &[list("", "", (20, 30), &[], false)]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("missed \"a\""), "{problems:?}");
}

#[test]
fn a_delete_completed_before_the_write_does_not_excuse_a_missing_key() {
    let mut h = History::new();
    let d = h.invoke(2, "a", Command::Delete, 0);
    h.complete(d, Outcome::Ok, 5);
    let w = h.invoke(1, "a", Command::Insert(v("1")), 6);
    h.complete(w, Outcome::Ok, 10);
    assert_eq!(check_lists(&h.operations(), &[list("", "", (20, 30), &[], false)]).len(), 1);
}

#[test]
fn the_linearizability_wrapper_reports_stale_reads() {
    let mut h = History::new();
    let w = h.invoke(1, "k", Command::Upsert(v("new")), 0);
    h.complete(w, Outcome::Ok, 10);
    let r = h.invoke(2, "k", Command::Fetch, 20);
    h.complete(r, Outcome::NotFound, 30);
    assert!(matches!(check_linearizable(&h.operations()), Err(Failure::NotLinearizable(_))));

    let mut h = History::new();
    let w = h.invoke(1, "k", Command::Upsert(v("new")), 0);
    h.complete(w, Outcome::Unknown, 0);
    let r = h.invoke(2, "k", Command::Fetch, 20);
    h.complete(r, Outcome::NotFound, 30);
    let r = h.invoke(2, "k", Command::Fetch, 40);
    h.complete(r, Outcome::Value(v("new")), 50);
    assert!(check_linearizable(&h.operations()).is_ok(), "an unknown write may land late");
}

fn batch(id: u64, key: &str, value: &str) -> PersistBatch {
    PersistBatch { id, writes: vec![(key.as_bytes().to_vec(), Some(value.as_bytes().to_vec()))] }
}

#[test]
fn synced_writes_survive_a_crash_and_unsynced_ones_do_not() {
    let disk = SimDisk::new("d", CrashMode::DropAll);
    let s = disk.open();
    s.write(&batch(1, "a", "1")).unwrap();
    s.sync().unwrap();
    s.write(&batch(2, "b", "2")).unwrap();
    assert_eq!(s.get(b"b").unwrap(), Some(v("2")), "reads see unsynced writes");
    assert_eq!(disk.durable_get(b"b"), None);
    disk.crash(0);
    assert!(s.get(b"a").is_err(), "the crashed incarnation is fenced");
    assert!(s.write(&batch(3, "c", "3")).is_err(), "and cannot write");
    let s = disk.open();
    assert_eq!(s.get(b"a").unwrap(), Some(v("1")));
    assert_eq!(s.get(b"b").unwrap(), None);
    assert_eq!(disk.stats().lost_batches, 1);
    assert_eq!(disk.stats().fenced_calls, 2);
}

#[test]
fn keep_prefix_crashes_keep_whole_batches_in_order() {
    let disk = SimDisk::new("d", CrashMode::KeepPrefix);
    let s = disk.open();
    for i in 1..=3 {
        s.write(&batch(i, &format!("k{i}"), "v")).unwrap();
    }
    disk.crash(2); // 2 mod 4: keeps two of three
    let s = disk.open();
    assert!(s.get(b"k1").unwrap().is_some());
    assert!(s.get(b"k2").unwrap().is_some());
    assert!(s.get(b"k3").unwrap().is_none());
    assert_eq!((disk.stats().kept_batches, disk.stats().lost_batches), (2, 1));
}

#[test]
fn an_armed_power_cut_fails_the_commit_and_loses_its_batch() {
    let disk = SimDisk::new("d", CrashMode::DropAll);
    let s = disk.open();
    s.write(&batch(1, "a", "1")).unwrap();
    s.sync().unwrap();
    disk.arm(2);
    s.write(&batch(2, "b", "2")).unwrap();
    assert!(s.sync().is_err(), "the sync is the second call: the cut");
    assert!(disk.died());
    assert!(s.get(b"a").is_err(), "fenced after the cut");
    let s = disk.open();
    assert!(!disk.died(), "opening clears the mark");
    assert_eq!(s.get(b"a").unwrap(), Some(v("1")));
    assert_eq!(s.get(b"b").unwrap(), None);
}

#[madsim::test]
async fn a_skewed_clock_drifts_and_jumps() {
    use memo_sim::Clock;
    // madsim advances its clock by 50–100 ns per poll: compare to the microsecond.
    let close = |got: u64, want: u64| assert!(got.abs_diff(want) < 10_000, "{got} != {want}");
    let clock = SkewClock::new(Duration::from_secs(1000), 10_000); // 1% fast
    let start = clock.now().as_nanos();
    close(start, 1_000_000_000_000);
    madsim::time::sleep(Duration::from_secs(100)).await;
    close(clock.now().as_nanos() - start, 101_000_000_000);
    clock.jump(-500_000_000);
    close(clock.now().as_nanos() - start, 100_500_000_000);
    clock.set_drift(0);
    madsim::time::sleep(Duration::from_secs(10)).await;
    close(clock.now().as_nanos() - start, 110_500_000_000);
}

#[test]
fn options_are_a_pure_function_of_scenario_and_seed() {
    let scenario = Scenario::new("s").nodes(3..=7).swarm();
    assert_eq!(SimOptions::derive(&scenario, 5), SimOptions::derive(&scenario, 5));
    assert_ne!(SimOptions::derive(&scenario, 5), SimOptions::derive(&scenario, 6));
    for seed in 0..200 {
        let o = SimOptions::derive(&scenario, seed);
        assert!((3..=7).contains(&o.founders().len()), "seed {seed}: founders");
        assert!(o.nodes - o.founders().len() <= 2, "seed {seed}: at most two servers join");
        // At most five kinds drawn, and perhaps a rebalancer stopped mid-move.
        assert!(!o.faults.is_empty() && o.faults.len() <= 6);
        for e in &o.schedule {
            assert!(e.at + e.duration <= o.safety, "seed {seed}: {e:?} outlives the safety phase");
        }
    }
}

#[test]
fn a_scenario_without_faults_has_an_empty_schedule() {
    let o = SimOptions::derive(&Scenario::new("quiet"), 1);
    assert!(o.schedule.is_empty());
    let o = SimOptions::derive(&Scenario::new("crashy").faults(&[FaultKind::Crash]), 1);
    assert!(!o.schedule.is_empty());
}

#[test]
fn every_catalog_scenario_is_named_after_its_test() {
    let sources = [
        include_str!("partitions.rs"),
        include_str!("crashes.rs"),
        include_str!("network.rs"),
        include_str!("clocks.rs"),
        include_str!("contention.rs"),
        include_str!("swarm.rs"),
        include_str!("teeth.rs"),
        include_str!("membership.rs"),
        include_str!("determinism.rs"),
        include_str!("regressions.rs"),
        include_str!("policies.rs"),
    ]
    .concat();
    for make in memo_sim::catalog::ALL {
        let name = make().name;
        assert!(sources.contains(&format!("fn {name}()")), "no test named {name}: the replay command would miss it");
    }
}
