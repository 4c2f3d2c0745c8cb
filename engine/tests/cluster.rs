//! Whole-cluster behaviour of the engine through the deterministic harness: the KV API's
//! status codes, routing, the fast path, List.

use memo_engine::kv::{Change, Value};
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
    Request::Kv { key: key.into(), change: Change::Swap { expected, value: Value::plain(value.as_bytes()) } }
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
