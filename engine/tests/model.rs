//! Model-based property tests: seen through its client API, a whole cluster is one
//! `BTreeMap<String, Vec<u8>>`.
//!
//! The premise: memo's registers are linearizable, so when a single client issues random
//! operations one at a time (each to a random node), every answer, status codes included,
//! must be exactly what a plain ordered map would answer: Insert on a present key is
//! ALREADY_EXISTS; Update, Delete and Fetch on an absent key are NOT_FOUND; Fetch returns
//! the value; List pages are `list_reference` over the map's keys.
//!
//! Over a perfect network the answers must match exactly. Over a hostile one (loss,
//! duplication, reordering, slow disks) a request may also fail with UNAVAILABLE, which
//! means "may or may not have happened" (R6). A read that fails changes nothing. A write
//! that fails leaves the model with two candidate states, and a pending write may take
//! effect *later* (an Accept that reached a minority can be adopted by a later round), so
//! the test resolves it before going on:
//!
//! 1. it lets the cluster settle for longer than any request can stay in flight, so no
//!    attempt of the failed write is still running;
//! 2. it fetches the key (retrying until a Fetch answers) and checks the value is one of
//!    the two candidates;
//! 3. it pins what it learned with a write acknowledged after the settle (an Upsert of the
//!    learned value; for an absent key an Upsert followed by a Delete). A write chosen
//!    after the settle is chosen at a ballot above every ballot promised before it began,
//!    so no leftover Accept of the failed write can ever be picked up again.

use memo_engine::list::{ListQuery, list_reference};
use memo_engine::testing::{Faults, Sim};
use memo_engine::{KvError, Request, Response};
use proptest::prelude::*;
use proptest::sample::select;
use std::collections::BTreeMap;
use std::time::Duration;

/// The key space: small, so operations collide, with a `/` for List's roll-up.
const KEYS: [&str; 5] = ["a", "b", "c", "d/e", "d/f"];
/// Simulated time one call may take; every request has a 5 s deadline inside the node.
const LIMIT: Duration = Duration::from_secs(10);
/// Longer than a request can stay in flight anywhere (its deadline on the node that
/// received it, plus one on a primary it was forwarded to, plus a round timeout).
const SETTLE: Duration = Duration::from_secs(12);
/// How often the resolution steps retry before the test gives up.
const ATTEMPTS: usize = 20;

type Model = BTreeMap<String, Vec<u8>>;

#[derive(Clone, Debug)]
enum Op {
    Insert(&'static str, Vec<u8>),
    Update(&'static str, Vec<u8>),
    Upsert(&'static str, Vec<u8>),
    Delete(&'static str),
    Fetch(&'static str),
    List(ListQuery),
}

impl Op {
    fn request(&self) -> Request {
        match self {
            Op::Insert(k, v) => Request::insert(*k, v.clone()),
            Op::Update(k, v) => Request::update(*k, v.clone()),
            Op::Upsert(k, v) => Request::upsert(*k, v.clone()),
            Op::Delete(k) => Request::delete(*k),
            Op::Fetch(k) => Request::fetch(*k),
            Op::List(q) => Request::List(q.clone()),
        }
    }

    /// The key a write changes.
    fn written_key(&self) -> Option<&'static str> {
        match self {
            Op::Insert(k, _) | Op::Update(k, _) | Op::Upsert(k, _) | Op::Delete(k) => Some(k),
            Op::Fetch(_) | Op::List(_) => None,
        }
    }

    /// The model's answer; applies the operation to `model`.
    fn apply(&self, model: &mut Model) -> Result<Response, KvError> {
        match self {
            Op::Insert(k, v) => {
                if model.contains_key(*k) {
                    return Err(KvError::AlreadyExists);
                }
                model.insert(k.to_string(), v.clone());
            }
            Op::Update(k, v) => match model.get_mut(*k) {
                Some(old) => *old = v.clone(),
                None => return Err(KvError::NotFound),
            },
            Op::Upsert(k, v) => {
                model.insert(k.to_string(), v.clone());
            }
            Op::Delete(k) => {
                if model.remove(*k).is_none() {
                    return Err(KvError::NotFound);
                }
            }
            Op::Fetch(k) => {
                return match model.get(*k) {
                    Some(v) => Ok(Response::Value(v.clone().into())),
                    None => Err(KvError::NotFound),
                };
            }
            Op::List(q) => {
                return Ok(Response::List(list_reference(model.keys().map(String::as_str), q)));
            }
        }
        Ok(Response::Done)
    }
}

fn key() -> impl Strategy<Value = &'static str> {
    select(KEYS.to_vec())
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(b'x'..=b'z', 0..3)
}

fn query() -> impl Strategy<Value = ListQuery> {
    (
        select(vec!["", "d/", "b", "z"]),
        select(vec!["", "a", "c", "d/", "d/e"]),
        select(vec!["", "/"]),
        select(vec![0u64, 1, 2, 3]),
    )
        .prop_map(|(prefix, marker, delimiter, max_keys)| ListQuery {
            prefix: prefix.into(),
            marker: marker.into(),
            delimiter: delimiter.into(),
            max_keys,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (key(), value()).prop_map(|(k, v)| Op::Insert(k, v)),
        3 => (key(), value()).prop_map(|(k, v)| Op::Update(k, v)),
        3 => (key(), value()).prop_map(|(k, v)| Op::Upsert(k, v)),
        3 => key().prop_map(Op::Delete),
        3 => key().prop_map(Op::Fetch),
        1 => query().prop_map(Op::List),
    ]
}

/// Cluster size, seed, and the operations with the node (index modulo the size) each
/// is sent to.
fn scenario() -> impl Strategy<Value = (usize, u64, Vec<(usize, Op)>)> {
    (select(vec![1usize, 3, 5]), any::<u64>(), prop::collection::vec((0usize..5, op()), 1..60))
}

fn call(sim: &mut Sim, node: usize, request: Request) -> Result<Result<Response, KvError>, String> {
    match sim.call(node, request.clone(), LIMIT) {
        Some(reply) => Ok(reply.result),
        None => Err(format!("no reply to {request:?} at node {node} within {LIMIT:?}")),
    }
}

/// Fetches `key` until a Fetch answers; the visible value.
fn learn(sim: &mut Sim, node: usize, key: &str) -> Result<Option<Vec<u8>>, TestCaseError> {
    for attempt in 0..ATTEMPTS {
        let at = (node + attempt) % sim.len();
        match call(sim, at, Request::fetch(key)).map_err(TestCaseError::fail)? {
            Ok(Response::Value(v)) => return Ok(Some(v.bytes)),
            Err(KvError::NotFound) => return Ok(None),
            Err(KvError::Unavailable(_)) => {}
            other => {
                return Err(TestCaseError::fail(format!("Fetch({key:?}) answered {other:?}")));
            }
        }
    }
    Err(TestCaseError::fail(format!("no Fetch of {key:?} answered in {ATTEMPTS} attempts")))
}

/// Writes until one write is acknowledged; settles after every UNAVAILABLE. Returns the
/// acknowledged answer.
fn write_until_answered(
    sim: &mut Sim,
    node: usize,
    request: Request,
) -> Result<Result<Response, KvError>, TestCaseError> {
    for attempt in 0..ATTEMPTS {
        let at = (node + attempt) % sim.len();
        match call(sim, at, request.clone()).map_err(TestCaseError::fail)? {
            Err(KvError::Unavailable(_)) => sim.run_for(SETTLE),
            answer => return Ok(answer),
        }
    }
    Err(TestCaseError::fail(format!("{request:?} was not acknowledged in {ATTEMPTS} attempts")))
}

/// Makes `key` hold `value` (absent for `None`) through writes acknowledged after the
/// cluster settled, so nothing older can resurface (see the module docs).
fn pin(sim: &mut Sim, node: usize, key: &str, value: Option<&[u8]>) -> Result<(), TestCaseError> {
    for _ in 0..ATTEMPTS {
        let upsert = Request::upsert(key, value.unwrap_or(b"pin").to_vec());
        let answer = write_until_answered(sim, node, upsert)?;
        prop_assert_eq!(answer, Ok(Response::Done), "pinning Upsert of {:?}", key);
        if value.is_some() {
            return Ok(());
        }
        match call(sim, node, Request::delete(key)).map_err(TestCaseError::fail)? {
            Ok(Response::Done) => return Ok(()),
            // The Delete may linger: the next Upsert outvotes it.
            Err(KvError::Unavailable(_)) => sim.run_for(SETTLE),
            other => {
                return Err(TestCaseError::fail(format!("pinning Delete of {key:?} answered {other:?}")));
            }
        }
    }
    Err(TestCaseError::fail(format!("could not pin {key:?} in {ATTEMPTS} attempts")))
}

/// Runs `script` against a cluster of `n` and the model. With `unknown_allowed`, a reply
/// may also be UNAVAILABLE, and failed writes are resolved as the module docs describe.
fn run(
    n: usize,
    seed: u64,
    faults: Faults,
    script: &[(usize, Op)],
    unknown_allowed: bool,
) -> Result<(), TestCaseError> {
    let mut sim = Sim::new(n, 16, 3, seed, faults);
    let mut model = Model::new();
    for (step, (node, op)) in script.iter().enumerate() {
        let node = node % n;
        let got = call(&mut sim, node, op.request()).map_err(TestCaseError::fail)?;
        let mut next = model.clone();
        let want = op.apply(&mut next);
        if unknown_allowed && matches!(got, Err(KvError::Unavailable(_))) {
            let Some(key) = op.written_key() else {
                continue; // a failed read or List changed nothing
            };
            sim.run_for(SETTLE);
            let learned = learn(&mut sim, node, key)?;
            let before = model.get(key).cloned();
            let after = next.get(key).cloned();
            prop_assert!(
                learned == before || learned == after,
                "step {}: after UNAVAILABLE {:?} at node {}, {:?} holds {:?}, \
                 neither {:?} (not applied) nor {:?} (applied)",
                step,
                op,
                node,
                key,
                learned,
                before,
                after
            );
            pin(&mut sim, node, key, learned.as_deref())?;
            match learned {
                Some(v) => model.insert(key.to_string(), v),
                None => model.remove(key),
            };
            continue;
        }
        prop_assert_eq!(got, want, "step {}: {:?} at node {} of {}; model before: {:?}", step, op, node, n, model);
        model = next;
    }
    // Finally every key reads back as the model says, from every node.
    for key in KEYS {
        for node in 0..n {
            let got = if unknown_allowed {
                learn(&mut sim, node, key)?
            } else {
                match call(&mut sim, node, Request::fetch(key)).map_err(TestCaseError::fail)? {
                    Ok(Response::Value(v)) => Some(v.bytes),
                    Err(KvError::NotFound) => None,
                    other => return Err(TestCaseError::fail(format!("final Fetch: {other:?}"))),
                }
            };
            prop_assert_eq!(got.as_ref(), model.get(key), "final Fetch({:?}) at {}", key, node);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn a_cluster_matches_a_btreemap_model_op_by_op((n, seed, script) in scenario()) {
        run(n, seed, Faults::none(), &script, false)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn over_a_hostile_network_every_answer_is_the_models_or_unavailable(
        (n, seed, script) in scenario()
    ) {
        run(n, seed, Faults::hostile(), &script, true)?;
    }
}
