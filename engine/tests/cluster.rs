//! Whole-cluster behaviour of the engine through the deterministic harness: the KV API's
//! status codes, routing, the fast path, List.

use memo_engine::kv::{Change, Stamp, Value};
use memo_engine::list::{ListQuery, list_reference};
use memo_engine::testing::{Faults, Sim};
use memo_engine::{KvError, Request, Response};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(10);

fn call(sim: &mut Sim, node: usize, req: Request) -> Result<Response, KvError> {
    sim.call(node, req, LIMIT).expect("a reply within the limit").result
}

#[test]
fn every_operation_answers_with_memos_status_codes() {
    let mut sim = Sim::new(3, 16, 3, 1, Faults::none());
    assert_eq!(call(&mut sim, 0, Request::fetch("k")), Err(KvError::NotFound));
    assert_eq!(call(&mut sim, 1, Request::update("k", "v")), Err(KvError::NotFound));
    assert_eq!(call(&mut sim, 2, Request::delete("k")), Err(KvError::NotFound));
    assert_eq!(call(&mut sim, 0, Request::insert("k", "v1")), Ok(Response::Done));
    assert_eq!(call(&mut sim, 1, Request::insert("k", "v2")), Err(KvError::AlreadyExists));
    assert_eq!(call(&mut sim, 2, Request::fetch("k")), Ok(Response::Value(b"v1".to_vec().into())));
    assert_eq!(call(&mut sim, 2, Request::update("k", "v3")), Ok(Response::Done));
    assert_eq!(call(&mut sim, 0, Request::fetch("k")), Ok(Response::Value(b"v3".to_vec().into())));
    assert_eq!(call(&mut sim, 1, Request::upsert("k", "v4")), Ok(Response::Done));
    assert_eq!(call(&mut sim, 1, Request::upsert("j", "")), Ok(Response::Done));
    assert_eq!(call(&mut sim, 2, Request::fetch("j")), Ok(Response::Value(vec![].into())));
    assert_eq!(call(&mut sim, 0, Request::delete("k")), Ok(Response::Done));
    assert_eq!(call(&mut sim, 1, Request::fetch("k")), Err(KvError::NotFound));
    assert_eq!(call(&mut sim, 2, Request::insert("k", "v5")), Ok(Response::Done));
    assert_eq!(call(&mut sim, 0, Request::fetch("k")), Ok(Response::Value(b"v5".to_vec().into())));
}

fn swap(key: &str, expected: Option<&str>, value: &str) -> Request {
    let expected = expected.map(|e| Value::plain(e.as_bytes()));
    Request::Kv {
        key: key.into(),
        change: Change::Swap { expected, value: Value::plain(value.as_bytes()) },
        stamp: Stamp::default(),
    }
}

/// The compare-and-set that memo's read-modify-write records use: of two swaps from the
/// same value, racing from two nodes, exactly one takes effect.
#[test]
fn of_two_racing_swaps_from_one_value_exactly_one_takes_effect() {
    for seed in 0..20 {
        let mut sim = Sim::new(3, 16, 3, 100 + seed, Faults::none());
        assert_eq!(call(&mut sim, 0, swap("t", Some("v0"), "v1")), Err(KvError::Conflict), "absent is not v0");
        assert_eq!(call(&mut sim, 0, swap("t", None, "v0")), Ok(Response::Done));
        let a = sim.submit(1, swap("t", Some("v0"), "a"));
        let b = sim.submit(2, swap("t", Some("v0"), "b"));
        sim.run_for(LIMIT);
        let replies: Vec<_> = sim.take_replies().into_iter().filter(|(_, r)| r.id == a || r.id == b).collect();
        assert_eq!(replies.len(), 2, "seed {seed}: {replies:?}");
        let done: Vec<_> = replies.iter().filter(|(_, r)| r.result == Ok(Response::Done)).collect();
        assert_eq!(done.len(), 1, "seed {seed}: {replies:?}");
        let conflicts = replies.iter().filter(|(_, r)| r.result == Err(KvError::Conflict)).count();
        assert_eq!(conflicts, 1, "seed {seed}: {replies:?}");
        let winner = if done[0].1.id == a { "a" } else { "b" };
        assert_eq!(call(&mut sim, 0, Request::fetch("t")), Ok(Response::Value(winner.as_bytes().to_vec().into())));
    }
}

#[test]
fn bad_requests_are_invalid_arguments() {
    let mut sim = Sim::new(3, 16, 3, 2, Faults::none());
    let long = "x".repeat(4097);
    for req in [
        Request::fetch(""),
        Request::insert("", "v"),
        Request::upsert(long.clone(), "v"),
        Request::insert("k", vec![0u8; 1024 * 1024 + 1]),
    ] {
        assert!(matches!(call(&mut sim, 0, req), Err(KvError::InvalidArgument(_))));
    }
    assert_eq!(call(&mut sim, 0, Request::upsert("x".repeat(4096), vec![0u8; 1024 * 1024])), Ok(Response::Done));
    let list = Request::List(ListQuery { prefix: long, ..Default::default() });
    assert!(matches!(call(&mut sim, 0, list), Err(KvError::InvalidArgument(_))));
}

#[test]
fn sequential_writes_to_one_key_take_the_fast_path() {
    let mut sim = Sim::new(3, 16, 3, 3, Faults::none());
    for i in 0..20 {
        assert_eq!(call(&mut sim, i % 3, Request::upsert("hot", format!("v{i}"))), Ok(Response::Done));
    }
    let fast: u64 = (0..3).map(|i| sim.node(i).unwrap().stats().fast_rounds).sum();
    let full: u64 = (0..3).map(|i| sim.node(i).unwrap().stats().full_rounds).sum();
    assert_eq!(full, 1, "only the first write needs phase 1");
    assert_eq!(fast, 19);
    assert_eq!(call(&mut sim, 1, Request::fetch("hot")), Ok(Response::Value(b"v19".to_vec().into())));
}

#[test]
fn list_pages_through_every_live_key_in_order() {
    let mut sim = Sim::new(3, 16, 3, 4, Faults::none());
    let mut live = Vec::new();
    for i in 0..60 {
        let key = format!("dir{}/key{i:03}", i % 4);
        assert_eq!(call(&mut sim, i % 3, Request::upsert(key.clone(), "v")), Ok(Response::Done));
        live.push(key);
    }
    for i in (0..60).step_by(7) {
        let key = format!("dir{}/key{i:03}", i % 4);
        assert_eq!(call(&mut sim, 0, Request::delete(key.clone())), Ok(Response::Done));
        live.retain(|k| *k != key);
    }
    let queries = [
        ListQuery::default(),
        ListQuery { max_keys: 7, ..Default::default() },
        ListQuery { prefix: "dir2/".into(), ..Default::default() },
        ListQuery { delimiter: "/".into(), ..Default::default() },
        ListQuery { marker: "dir1/key030".into(), max_keys: 5, ..Default::default() },
        ListQuery { prefix: "dir3/".into(), marker: "dir3/key011".into(), max_keys: 3, ..Default::default() },
    ];
    for (i, query) in queries.into_iter().enumerate() {
        let expected = list_reference(live.iter().map(String::as_str), &query);
        let got = call(&mut sim, i % 3, Request::List(query.clone()));
        assert_eq!(got, Ok(Response::List(expected)), "query {query:?}");
    }
}

#[test]
fn proposer_state_stays_bounded_and_evicted_keys_still_work() {
    fn tune(cfg: &mut memo_engine::Config) {
        cfg.proposer_keys_max = 4;
        cfg.register_cache_bytes_max = 0;
    }
    let mut sim = Sim::with_config(3, 16, 3, 5, Faults::none(), tune);
    for round in 0..3 {
        for i in 0..40 {
            let v = format!("v{round}-{i}");
            assert_eq!(call(&mut sim, i % 3, Request::upsert(format!("key{i}"), v)), Ok(Response::Done));
        }
    }
    for n in 0..3 {
        assert!(sim.node(n).unwrap().proposer_keys() <= 5, "node {n}: {}", sim.node(n).unwrap().proposer_keys());
    }
    for i in 0..40 {
        assert_eq!(
            call(&mut sim, (i + 1) % 3, Request::fetch(format!("key{i}"))),
            Ok(Response::Value(format!("v2-{i}").into_bytes().into()))
        );
    }
}

/// The proposer's fast-path state holds each key's last value, so it is bounded in bytes
/// as well as in keys: with 4 KiB values and a 32 KiB bound, a node keeps at most a
/// handful of fast paths, however many keys it writes, and every key still works.
#[test]
fn proposer_state_stays_within_its_byte_bound_with_big_values() {
    fn tune(cfg: &mut memo_engine::Config) {
        cfg.proposer_bytes_max = 32 * 1024;
    }
    let mut sim = Sim::with_config(3, 16, 3, 6, Faults::none(), tune);
    let value = |i: usize, round: usize| vec![(i + round) as u8; 4096];
    for round in 0..2 {
        for i in 0..60 {
            assert_eq!(call(&mut sim, i % 3, Request::upsert(format!("key{i}"), value(i, round))), Ok(Response::Done));
        }
    }
    for n in 0..3 {
        // 32 KiB / (4 KiB + the slot) is 7; one more may be over until the next write.
        let keys = sim.node(n).unwrap().proposer_keys();
        assert!(keys <= 8, "node {n} keeps {keys} fast paths");
    }
    for i in 0..60 {
        assert_eq!(
            call(&mut sim, (i + 1) % 3, Request::fetch(format!("key{i}"))),
            Ok(Response::Value(value(i, 1).into()))
        );
    }
}

fn versioned(key: &str, change: Change, keep: u16, at_ms: u64) -> Request {
    Request::Kv { key: key.into(), change, stamp: Stamp { keep, at_ms } }
}

fn versions_of(sim: &mut Sim, node: usize, key: &str) -> Vec<(u64, Option<Vec<u8>>)> {
    let req = Request::Kv { key: key.into(), change: Change::Versions { number: None }, stamp: Stamp::default() };
    match call(sim, node, req) {
        Ok(Response::Versions(v)) => v.into_iter().map(|v| (v.number, v.value.map(|v| v.bytes))).collect(),
        other => panic!("versions of {key}: {other:?}"),
    }
}

/// Versioning (V1–V4) through the whole engine: writes racing from every node under lost
/// and delayed messages are numbered in one order that every node reads back alike; a
/// Delete keeps the versions before it, through the GC delay.
fn versions_race_and_survive_a_delete(bug: Option<memo_engine::config::PlantedBug>) -> Result<(), String> {
    fn tune(cfg: &mut memo_engine::Config) {
        cfg.gc_delay = Duration::from_millis(200);
    }
    for seed in 0..10 {
        let mut sim = Sim::with_config(3, 16, 3, 300 + seed, Faults::hostile(), tune);
        if let Some(bug) = bug {
            for i in 0..3 {
                sim.plant(i, bug); // takes effect at the next start
                sim.crash(i);
                sim.restart(i);
            }
        }
        let mut written = std::collections::BTreeSet::new();
        for round in 0..4u64 {
            let ids: Vec<_> = (0..3)
                .map(|n| {
                    let v = format!("r{round}n{n}");
                    written.insert(v.clone().into_bytes());
                    sim.submit(n, versioned("doc", Change::Upsert(Value::plain(v)), 10, round))
                })
                .collect();
            sim.run_for(LIMIT);
            let replies = sim.take_replies();
            assert!(ids.iter().all(|id| replies.iter().any(|(_, r)| r.id == *id)), "seed {seed}: every write answered");
        }
        let seen: Vec<_> = (0..3).map(|n| versions_of(&mut sim, n, "doc")).collect();
        assert!(seen.iter().all(|v| *v == seen[0]), "seed {seed}: every node reads the same versions: {seen:?}");
        let numbers: Vec<u64> = seen[0].iter().map(|v| v.0).collect();
        let last = *numbers.last().expect("versions");
        assert_eq!(numbers, (last + 1 - numbers.len() as u64..=last).collect::<Vec<_>>(), "seed {seed}: consecutive");
        assert!(seen[0].iter().all(|(_, v)| v.as_ref().is_some_and(|v| written.contains(v))), "seed {seed}: written");
        // List sees the key (its scan views leave the history out).
        let listed = |sim: &mut Sim| match call(sim, 1, Request::List(ListQuery::default())) {
            Ok(Response::List(page)) => page.items,
            other => panic!("list: {other:?}"),
        };
        assert_eq!(listed(&mut sim), ["doc"], "seed {seed}");
        // The Delete is a version; the values before it stay readable past the GC delay.
        let before = seen[0].clone();
        // Retried while the hostile network leaves its outcome unknown: exactly one Delete
        // takes effect (a retry after one that did answers NOT_FOUND).
        loop {
            match call(&mut sim, 1, versioned("doc", Change::Delete, 10, 9)) {
                Ok(Response::Done) | Err(KvError::NotFound) => break,
                Err(KvError::Unavailable(_)) => continue,
                other => panic!("seed {seed}: delete: {other:?}"),
            }
        }
        sim.run_for(Duration::from_secs(5));
        let after = versions_of(&mut sim, 2, "doc");
        let mut expected = before.clone();
        expected.push((last + 1, None));
        if expected.len() > 10 {
            expected.remove(0);
        }
        if after != expected {
            return Err(format!("seed {seed}: after the Delete, {after:?}, expected {expected:?}"));
        }
        assert_eq!(call(&mut sim, 0, Request::fetch("doc")), Err(KvError::NotFound));
        assert!(listed(&mut sim).is_empty(), "seed {seed}: a deleted versioned key is not listed");
    }
    Ok(())
}

#[test]
fn versions_are_numbered_alike_on_every_node_and_a_delete_keeps_them() {
    versions_race_and_survive_a_delete(None).unwrap();
}

#[test]
fn the_versioning_test_catches_a_delete_or_a_gc_that_drops_versions() {
    use memo_engine::config::PlantedBug;
    for bug in [PlantedBug::DeleteDropsVersions, PlantedBug::GcDropsVersions] {
        let found = versions_race_and_survive_a_delete(Some(bug));
        assert!(found.is_err(), "{bug:?} went unnoticed");
    }
}
