//! One test per protocol rule of the register (docs/PROTOCOL.md), each built from the counterexample the rule
//! prevents (docs/PROTOCOL.md, H1–H11), plus the classic per-key Paxos bugs:
//! reads that flip after a minority-accepted write (CASSANDRA-12126), a non-applied CAS
//! that answers without making its read chosen (ScyllaDB #6299), and a tombstone GC that
//! resurrects an older value.

use memo_engine::kv::{Answer, Change, State};
use memo_engine::message::Message;
use memo_engine::paxos::acceptor::Register;
use memo_engine::placement::partition_of;
use memo_engine::storage::{decode_ballot, decode_register, floor_key, register_key};
use memo_engine::testing::{Faults, Sim, Verdict};
use memo_engine::{Config, KvError, Request, Response};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

const PARTITIONS: u32 = 8;
const LIMIT: Duration = Duration::from_secs(10);

fn tune(cfg: &mut Config) {
    cfg.round_timeout = Duration::from_millis(50);
    cfg.request_timeout = Duration::from_millis(600);
    cfg.forward_timeout = Duration::from_millis(200);
    cfg.gc_delay = Duration::from_millis(100);
    cfg.backoff_max = Duration::from_millis(5);
}

fn sim(seed: u64) -> Sim {
    Sim::with_config(3, PARTITIONS, 3, seed, Faults::none(), tune)
}

fn call(sim: &mut Sim, node: usize, req: Request) -> Result<Response, KvError> {
    sim.call(node, req, LIMIT).expect("a reply within the limit").result
}

fn value(v: &str) -> Result<Response, KvError> {
    Ok(Response::Value(v.as_bytes().to_vec().into()))
}

/// The primary of `key`'s partition and the two other members, by index.
fn roles(sim: &Sim, key: &str) -> (usize, usize, usize) {
    let config = sim.node(0).unwrap().map().config_of(key.as_bytes()).clone();
    let idx: Vec<usize> = config.members.iter().map(|m| sim.index_of(m)).collect();
    (idx[0], idx[1], idx[2])
}

/// The durable register of `key` on node `i`.
fn register(sim: &Sim, i: usize, key: &str) -> Option<Register> {
    let p = partition_of(key.as_bytes(), PARTITIONS);
    sim.storage(i).snapshot().get(&register_key(p, key.as_bytes())).map(|b| decode_register(b).unwrap())
}

fn is_accept_of(msg: &Message, key: &str) -> bool {
    matches!(msg, Message::Accept { key: k, .. } if k == key)
}

/// Makes node `p` write `v` to `key` so that only its own acceptor accepts it: every
/// Accept `p` sends about `key` is lost. The client learns nothing (UNAVAILABLE). Then `p`
/// restarts, so no recovery of its own (it would fence the write after the answer, R6)
/// resolves the minority state the caller wants to test.
fn write_on_minority(sim: &mut Sim, p: usize, key: &'static str, v: &str) {
    sim.set_filter(Box::new(move |from, _, env| {
        if from == p && is_accept_of(&env.message, key) { Verdict::Drop } else { Verdict::Deliver }
    }));
    assert!(matches!(call(sim, p, Request::upsert(key, v)), Err(KvError::Unavailable(_))));
    sim.crash(p);
    sim.restart(p);
    sim.clear_filter();
    sim.run_for(Duration::from_secs(1));
    let reg = register(sim, p, key).expect("accepted by its own acceptor");
    assert_eq!(
        reg.accepted.and_then(|a| a.state).and_then(|s| s.value().map(<[u8]>::to_vec)),
        Some(v.as_bytes().to_vec())
    );
}

/// Cuts both directions between `a` and `b`.
fn cut_both(sim: &mut Sim, a: usize, b: usize) {
    sim.cut(a, b);
    sim.cut(b, a);
}

#[test]
fn reads_never_flip_after_a_minority_accepted_write() {
    // CASSANDRA-12126 / R5: v is accepted by a minority only. A read whose quorum sees it
    // must make it chosen before returning it, so a later read through a quorum that
    // never saw v cannot return the older x0.
    let mut sim = sim(1);
    let key = "flip";
    let (p, a, b) = roles(&sim, key);
    assert_eq!(call(&mut sim, p, Request::upsert(key, "x0")), Ok(Response::Done));
    write_on_minority(&mut sim, p, key, "v");
    cut_both(&mut sim, a, b); // a's read quorum is {a, p}
    let first = call(&mut sim, a, Request::fetch(key));
    assert_eq!(first, value("v"), "the read quorum holds v at the highest ballot");
    sim.heal();
    sim.isolate(p); // b's read quorum is {a, b}
    assert_eq!(call(&mut sim, b, Request::fetch(key)), first, "a later read returns what an earlier one did");
    assert_eq!(call(&mut sim, a, Request::fetch(key)), first);
}

#[test]
fn a_failed_precondition_makes_the_state_it_read_chosen() {
    // ScyllaDB #6299 / R2: an Insert that fails because it saw a minority-accepted v must
    // write v back, or a later read of the other quorum answers NOT_FOUND, contradicting
    // the ALREADY_EXISTS it returned.
    let mut sim = sim(2);
    let key = "cas";
    let (p, a, b) = roles(&sim, key);
    write_on_minority(&mut sim, p, key, "v");
    cut_both(&mut sim, a, b); // a coordinates with {a, p}
    sim.isolate(b);
    assert_eq!(call(&mut sim, a, Request::insert(key, "w")), Err(KvError::AlreadyExists));
    sim.heal();
    sim.isolate(p); // b reads through {a, b}
    assert_eq!(call(&mut sim, b, Request::fetch(key)), value("v"));
}

#[test]
fn a_collected_tombstone_never_lets_a_delayed_accept_resurrect_a_value() {
    // R8 / H5: C misses the Accept of v (delayed), then v is deleted and the tombstone is
    // collected with C participating. The delayed Accept then reaches C; the partition floor
    // must refuse it, or a read of {p, C} would adopt v from C and resurrect it.
    let mut sim = sim(3);
    let key = "gc";
    let (p, a, c) = roles(&sim, key);
    assert_eq!(call(&mut sim, p, Request::upsert(key, "v0")), Ok(Response::Done));
    sim.set_filter(Box::new(move |_, to, env| match &env.message {
        Message::Accept { key: k, accepted, .. } if k == key && to == c => {
            let is_v = accepted.state.as_ref().and_then(State::value) == Some(&b"v"[..]);
            if is_v { Verdict::Hold } else { Verdict::Deliver }
        }
        _ => Verdict::Deliver,
    }));
    assert_eq!(call(&mut sim, p, Request::upsert(key, "v")), Ok(Response::Done));
    assert_eq!(call(&mut sim, p, Request::delete(key)), Ok(Response::Done));
    sim.run_for(Duration::from_secs(1)); // the GC delay passes; the tombstone is collected
    for i in [p, a, c] {
        assert_eq!(register(&sim, i, key), None, "dropped on node {i}");
        let floor = sim.storage(i).snapshot().get(&floor_key(partition_of(key.as_bytes(), PARTITIONS))).cloned();
        assert!(floor.map(|f| decode_ballot(&f).unwrap()).is_some(), "floor raised on node {i}");
    }
    assert!(!sim.held().is_empty(), "the Accept of v to C is still delayed");
    sim.release_held(|_, _, _| true);
    sim.clear_filter();
    sim.run_for(Duration::from_secs(1));
    assert_eq!(register(&sim, c, key), None, "the delayed Accept was refused by the floor");
    for isolated in [p, a, c] {
        sim.heal();
        sim.isolate(isolated);
        let reader = (isolated + 1) % 3;
        assert_eq!(call(&mut sim, reader, Request::fetch(key)), Err(KvError::NotFound), "read without {isolated}");
    }
    // Ballots stay monotonic across the floor: the key can be inserted again.
    sim.heal();
    assert_eq!(call(&mut sim, a, Request::insert(key, "again")), Ok(Response::Done));
    assert_eq!(call(&mut sim, c, Request::fetch(key)), value("again"));
}

#[test]
fn a_restarted_proposer_ignores_promises_from_its_earlier_life() {
    // R1 / H1: the restart counter is part of every ballot, so after a restart the
    // proposer's round counter may start over without its new ballots matching old ones;
    // duplicated promises from the earlier life (reporting the key absent) are not counted,
    // and the second Insert sees the first one's value.
    let mut sim = sim(4);
    let key = "restart";
    let (p, _, _) = roles(&sim, key);
    sim.set_filter(Box::new(move |_, to, env| {
        if to == p && matches!(env.message, Message::Promise { .. }) {
            Verdict::DeliverAndHold
        } else {
            Verdict::Deliver
        }
    }));
    assert_eq!(call(&mut sim, p, Request::insert(key, "v1")), Ok(Response::Done));
    sim.clear_filter();
    let restarts = sim.node(p).unwrap().restart();
    sim.crash(p);
    sim.restart(p);
    assert_eq!(sim.node(p).unwrap().restart(), restarts + 1, "the restart counter is persisted and bumped");
    let id = sim.submit(p, Request::insert(key, "v2"));
    sim.release_held(|_, _, _| true); // stale promises arrive during the new round
    let mut answer = None;
    for _ in 0..10_000 {
        if let Some((_, r)) = sim.take_replies().into_iter().find(|(_, r)| r.id == id) {
            answer = Some(r.result);
            break;
        }
        sim.step();
    }
    assert_eq!(answer, Some(Err(KvError::AlreadyExists)));
    assert_eq!(call(&mut sim, p, Request::fetch(key)), value("v1"));
}

#[test]
fn two_requests_racing_on_one_fast_path_ballot_are_folded_into_one_value() {
    // R3 / H2: with a granted next ballot cached, concurrent Inserts must never send
    // Accepts at one ballot with different values: one ballot is outstanding per key, and
    // requests that queue behind it are folded into one proposal. One Insert succeeds, the
    // others see its value, and every quorum agrees.
    let mut sim = sim(5);
    let key = "race";
    let (p, a, b) = roles(&sim, key);
    assert_eq!(call(&mut sim, p, Request::upsert(key, "x")), Ok(Response::Done));
    assert_eq!(call(&mut sim, p, Request::delete(key)), Ok(Response::Done));
    let proposals = Rc::new(RefCell::new(BTreeMap::new()));
    let seen = proposals.clone();
    sim.set_filter(Box::new(move |_, _, env| {
        if let Message::Accept { key: k, accepted, .. } = &env.message
            && k == key
        {
            let previous = seen.borrow_mut().insert(accepted.ballot, accepted.state.clone());
            assert!(previous.is_none_or(|s| s == accepted.state), "two states at ballot {:?}", accepted.ballot);
        }
        Verdict::Deliver
    }));
    let fast_before = sim.node(p).unwrap().stats().fast_rounds;
    let ids: Vec<_> = ["v", "w", "u"].into_iter().map(|v| sim.submit(p, Request::insert(key, v))).collect();
    sim.run_for(Duration::from_millis(500));
    let replies = sim.take_replies();
    let answer = |id| replies.iter().find(|(_, r)| r.id == id).map(|(_, r)| r.result.clone());
    assert_eq!(answer(ids[0]), Some(Ok(Response::Done)));
    assert_eq!(answer(ids[1]), Some(Err(KvError::AlreadyExists)));
    assert_eq!(answer(ids[2]), Some(Err(KvError::AlreadyExists)));
    // The first Insert started alone; the two that queued behind it shared one proposal.
    assert_eq!(sim.node(p).unwrap().stats().fast_rounds, fast_before + 2);
    assert_eq!(proposals.borrow().len(), 2, "two ballots, one state each");
    for isolated in [p, a, b] {
        sim.heal();
        sim.isolate(isolated);
        assert_eq!(call(&mut sim, (isolated + 1) % 3, Request::fetch(key)), value("v"));
    }
}

#[test]
fn a_retry_after_an_unknown_outcome_recovers_instead_of_reapplying() {
    // R6 / H4: P's Insert v is accepted by P's acceptor only; a read elsewhere adopts v
    // and makes it chosen. P's retry must find its own op in the state and answer success,
    // never ALREADY_EXISTS for its own insert.
    let mut sim = sim(6);
    let key = "retry";
    let (p, a, b) = roles(&sim, key);
    sim.set_filter(Box::new(move |from, _, env| {
        if from == p && is_accept_of(&env.message, key) { Verdict::Drop } else { Verdict::Deliver }
    }));
    let id = sim.submit(p, Request::insert(key, "v"));
    sim.run_for(Duration::from_millis(120)); // P's first attempt has timed out; it recovers
    cut_both(&mut sim, a, b); // a reads through {a, p} and adopts v
    assert_eq!(call(&mut sim, a, Request::fetch(key)), value("v"));
    sim.heal();
    sim.clear_filter();
    sim.run_for(Duration::from_secs(1));
    let answer = sim.take_replies().into_iter().find(|(_, r)| r.id == id).map(|(_, r)| r.result);
    assert_eq!(answer, Some(Ok(Response::Done)), "P recovers its own insert");
}

#[test]
fn a_write_whose_accept_may_have_landed_is_never_applied_twice() {
    // R6: a stale fast-path Accept lands on a minority while another node's round takes the
    // key further; the primary's retry may re-apply its write only when it can prove the
    // write never took effect. Here the write is an Update, so applying it twice or
    // resurrecting it after the later Upsert would both be visible.
    let mut sim = sim(7);
    let key = "twice";
    let (p, a, b) = roles(&sim, key);
    assert_eq!(call(&mut sim, p, Request::upsert(key, "base")), Ok(Response::Done));
    // b takes the key further with a full round while p's fast-path Accept only reaches p.
    // b's first write is forwarded to the isolated primary and times out (its outcome is
    // unknown, but p never received it); b then bypasses p and coordinates itself.
    sim.isolate(p);
    assert!(matches!(call(&mut sim, b, Request::upsert(key, "lost")), Err(KvError::Unavailable(_))));
    assert_eq!(call(&mut sim, b, Request::upsert(key, "from-b")), Ok(Response::Done));
    sim.heal();
    sim.set_filter(Box::new(move |from, _, env| {
        if from == p && is_accept_of(&env.message, key) { Verdict::Hold } else { Verdict::Deliver }
    }));
    let id = sim.submit(p, Request::update(key, "from-p"));
    sim.run_for(Duration::from_millis(30));
    sim.clear_filter();
    sim.release_held(|_, _, _| true);
    sim.run_for(Duration::from_secs(1));
    let answer = sim.take_replies().into_iter().find(|(_, r)| r.id == id).map(|(_, r)| r.result);
    let final_value = call(&mut sim, a, Request::fetch(key));
    match answer {
        Some(Ok(Response::Done)) => assert_eq!(final_value, value("from-p")),
        Some(Err(KvError::Unavailable(_))) => assert!(final_value == value("from-p") || final_value == value("from-b")),
        other => panic!("unexpected answer {other:?}"),
    }
}

/// Whether `msg` is a Forward of a write of `v` to `key`.
fn is_forward_of(msg: &Message, key: &str, v: &str) -> bool {
    matches!(msg, Message::Forward { key: k, change, .. } if k == key && *change == Change::Upsert(v.as_bytes().to_vec().into()))
}

/// The Forwards of the late write as `(forwarder, id)`, and every answer to a forward as
/// `((forwarder, id), answer)`.
#[derive(Debug, Default)]
struct Forwards {
    late: Vec<(usize, u64)>,
    answers: Vec<((usize, u64), Result<Answer, KvError>)>,
}

impl Forwards {
    /// What the primary answered to the late write's Forwards.
    fn to_late(&self) -> Vec<Result<Answer, KvError>> {
        self.answers.iter().filter(|(f, _)| self.late.contains(f)).map(|(_, r)| r.clone()).collect()
    }

    fn record(&mut self, from: usize, to: usize, msg: &Message, key: &str, v: &str) {
        match msg {
            Message::Forward { id, .. } if is_forward_of(msg, key, v) => self.late.push((from, *id)),
            Message::ForwardReply { id, result } => self.answers.push(((to, *id), result.clone())),
            _ => {}
        }
    }
}

type ForwardAnswers = Rc<RefCell<Forwards>>;

/// Holds every Forward of `v` to `key` (the delayed Forward of the "zombie write"), and
/// records the primary's answers to forwards.
fn hold_forward_of(sim: &mut Sim, key: &'static str, v: &'static str) -> ForwardAnswers {
    let answers: ForwardAnswers = Rc::default();
    let seen = answers.clone();
    sim.set_filter(Box::new(move |from, to, env| {
        seen.borrow_mut().record(from, to, &env.message, key, v);
        if is_forward_of(&env.message, key, v) { Verdict::Hold } else { Verdict::Deliver }
    }));
    answers
}

/// Every quorum of the three nodes reads `v` for `key`.
fn assert_every_quorum_reads(sim: &mut Sim, key: &str, v: &str) {
    for isolated in 0..3 {
        sim.heal();
        sim.isolate(isolated);
        assert_eq!(call(sim, (isolated + 1) % 3, Request::fetch(key)), value(v), "read without node {isolated}");
    }
    sim.heal();
}

/// Delivers every held message, then checks that the primary refused the one late
/// write and that every quorum reads `v`.
fn release_the_late_write_and_assert_it_is_refused(sim: &mut Sim, answers: &ForwardAnswers, key: &str, v: &str) {
    sim.release_held(|_, _, _| true);
    sim.run_for(Duration::from_secs(1));
    let late = answers.borrow().to_late();
    assert!(late.len() == 1 && is_unavailable(&late[0]), "p answered the late write {late:?}");
    assert_every_quorum_reads(sim, key, v);
}

fn is_unavailable(r: &Result<Answer, KvError>) -> bool {
    matches!(r, Err(KvError::Unavailable(_)))
}

#[test]
fn a_write_answered_unavailable_after_its_recovery_never_lands_later() {
    // R6 / the simulator's "zombie write" (madsim seed 4629). a forwards v2 to the primary p;
    // the Forward is delayed in the network. a times out, recovers, does not find v2 and
    // answers UNAVAILABLE; then v3 is acknowledged. When the Forward finally reaches p, p
    // must refuse it: a's recovery round recorded v2's op as aborted in the chosen state.
    let mut sim = sim(12);
    let key = "zombie";
    let (p, a, _) = roles(&sim, key);
    let answers = hold_forward_of(&mut sim, key, "v2");
    assert!(matches!(call(&mut sim, a, Request::upsert(key, "v2")), Err(KvError::Unavailable(_))));
    assert_eq!(sim.held().len(), 1, "the Forward of v2 is still in the network");
    assert_eq!(call(&mut sim, a, Request::upsert(key, "v3")), Ok(Response::Done));
    sim.release_held(|_, _, _| true);
    sim.run_for(Duration::from_secs(1));
    let late = answers.borrow().to_late();
    assert!(late.len() == 1 && is_unavailable(&late[0]), "p answered the late write {late:?}");
    assert!(sim.node(p).unwrap().stats().aborted_refused >= 1);
    assert_every_quorum_reads(&mut sim, key, "v3");
}

#[test]
fn a_write_applied_then_forgotten_is_answered_fenced_never_not_happened() {
    // Issue 9 (a kill -9 run on real processes; madsim swarm seed 45): a forwards v1 to the
    // primary p, which applies it, and a read sees it; p's answer to a is lost. While a is
    // cut off, more writes than a state remembers (RECENT_OPS_MAX) push v1's op out of the
    // key's recent writes. a's recovery then finds a state that does not remember v1: it
    // cannot tell whether v1 took effect. memo answered "it is now aborted and will never
    // take effect", a promise already broken, since v1 had been read. The answer must be
    // fenced: if v1 took effect, it did so before the answer, and it never will after it.
    let mut sim = sim(45);
    let key = "forgotten";
    let (p, a, b) = roles(&sim, key);
    sim.set_filter(Box::new(move |from, to, env| {
        let reply = from == p && to == a && matches!(env.message, Message::ForwardReply { .. });
        if reply { Verdict::Drop } else { Verdict::Deliver }
    }));
    let id = sim.submit(a, Request::upsert(key, "v1"));
    sim.run_for(Duration::from_millis(50)); // well within a's forward timeout
    assert_eq!(call(&mut sim, b, Request::fetch(key)), value("v1"), "p applied v1");
    sim.isolate(a);
    let last = format!("w{}", memo_engine::kv::RECENT_OPS_MAX);
    for i in 0..=memo_engine::kv::RECENT_OPS_MAX {
        let w = format!("w{i}");
        assert_eq!(call(&mut sim, p, Request::upsert(key, w.as_str())), Ok(Response::Done));
    }
    sim.heal();
    let deadline = sim.now() + LIMIT;
    let answer = loop {
        if let Some((_, reply)) = sim.take_replies().into_iter().find(|(_, r)| r.id == id) {
            break reply.result;
        }
        assert!(sim.now() < deadline && sim.step(), "a answered v1");
    };
    match &answer {
        Err(e) => assert!(e.is_fenced(), "a answered v1 with {e}, not a fenced UNAVAILABLE"),
        Ok(r) => panic!("a answered v1 with {r:?}, but its op was forgotten"),
    }
    sim.clear_filter();
    assert_every_quorum_reads(&mut sim, key, &last);
}

#[test]
fn a_write_answered_by_its_deadline_is_fenced_afterwards_and_never_lands_later() {
    // The zombie writes still left after issue 9 (swarm seeds 873, 1429, 3467, 9966): a
    // forwards v2 to the primary p, and the Forward is delayed in the network; a is cut
    // off, so its recovery reaches no quorum and the request deadline answers plain
    // UNAVAILABLE, with no marker. Then a keeps recovering the write after its answer and
    // fences it once it can; the delayed Forward, released after v3 is acknowledged, is
    // refused.
    let mut sim = sim(31);
    let key = "late-zombie";
    let (p, a, _) = roles(&sim, key);
    let answers = hold_forward_of(&mut sim, key, "v2");
    let id = sim.submit(a, Request::upsert(key, "v2"));
    while sim.held().is_empty() {
        assert!(sim.step(), "the Forward of v2 is sent");
    }
    sim.isolate(a);
    let deadline = sim.now() + LIMIT;
    let answer = loop {
        if let Some((_, reply)) = sim.take_replies().into_iter().find(|(_, r)| r.id == id) {
            break reply.result;
        }
        assert!(sim.now() < deadline && sim.step(), "a answered v2");
    };
    match answer {
        Err(e @ KvError::Unavailable(_)) => assert!(!e.is_fenced(), "no recovery completed before the deadline: {e}"),
        other => panic!("a answered v2 with {other:?}"),
    }
    sim.heal();
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.node(a).unwrap().stats().fenced_after_answer, 1, "a fenced v2 after answering");
    assert_eq!(call(&mut sim, p, Request::upsert(key, "v3")), Ok(Response::Done));
    release_the_late_write_and_assert_it_is_refused(&mut sim, &answers, key, "v3");
}

#[test]
fn an_aborted_write_stays_refused_after_its_key_is_collected() {
    // Madsim seed 4629 (once the promise ceiling changed its history): writes aborted by
    // their forwarder's recovery; the key deleted and garbage collected, which removed the
    // key with its abort markers; the delayed Forwards arrived and landed on the key
    // written again, over a newer acknowledged write. Collection now folds a key's markers
    // into its partition's abort watermarks, which phase 1 reports for an absent key.
    let mut sim = sim(23);
    let key = "zombie-gc";
    let (p, a, _) = roles(&sim, key);
    assert_eq!(call(&mut sim, p, Request::upsert(key, "v1")), Ok(Response::Done));
    let answers = hold_forward_of(&mut sim, key, "v2");
    assert!(matches!(call(&mut sim, a, Request::upsert(key, "v2")), Err(KvError::Unavailable(_))));
    assert_eq!(sim.held().len(), 1, "the Forward of v2 is still in the network");
    assert_eq!(call(&mut sim, p, Request::delete(key)), Ok(Response::Done));
    sim.run_for(Duration::from_secs(2));
    let dropped: u64 = (0..3).map(|i| sim.node(i).unwrap().stats().keys_dropped).sum();
    assert_eq!(dropped, 3, "the tombstone was collected on every member");
    assert_eq!(call(&mut sim, p, Request::upsert(key, "v3")), Ok(Response::Done));
    release_the_late_write_and_assert_it_is_refused(&mut sim, &answers, key, "v3");
}

#[test]
fn an_aborted_write_stays_refused_after_more_later_aborts_than_the_state_names() {
    // The marker of v2 is pushed out of the named list by later aborts on the same key
    // (madsim seed 4629: nine later aborts, then the Forward arrived ~19 s late). The
    // per-node watermark it leaves still refuses v2, and every other aborted write.
    let mut sim = sim(17);
    let key = "zombie-many";
    let (p, a, _) = roles(&sim, key);
    let answers: ForwardAnswers = Rc::default();
    let seen = answers.clone();
    sim.set_filter(Box::new(move |from, to, env| {
        seen.borrow_mut().record(from, to, &env.message, key, "v2");
        if matches!(&env.message, Message::Forward { key: k, .. } if k == key) {
            Verdict::Hold
        } else {
            Verdict::Deliver
        }
    }));
    let later = memo_engine::kv::ABORTED_OPS_MAX + 2;
    for v in std::iter::once("v2".to_string()).chain((0..later).map(|i| format!("z{i}"))) {
        assert!(matches!(call(&mut sim, a, Request::upsert(key, v.as_str())), Err(KvError::Unavailable(_))), "{v}");
    }
    assert_eq!(sim.held().len(), later + 1, "every Forward is still in the network");
    sim.clear_filter();
    assert_eq!(call(&mut sim, p, Request::upsert(key, "v3")), Ok(Response::Done));
    let refused = sim.node(p).unwrap().stats().aborted_refused;
    sim.set_filter(Box::new(move |from, to, env| {
        answers.borrow_mut().record(from, to, &env.message, key, "v2");
        Verdict::Deliver
    }));
    sim.release_held(|_, _, _| true);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.node(p).unwrap().stats().aborted_refused, refused + later as u64 + 1, "every late Forward refused");
    assert_every_quorum_reads(&mut sim, key, "v3");
}

#[test]
fn a_late_forward_on_the_primarys_fast_path_is_refused_too() {
    // As above, but p holds a granted next ballot for the key (its fast path, R3) from before
    // a's recovery round, and its cached state predates the abort marker. Its one-round-trip
    // Accept of v2 is refused by every acceptor that promised the recovery's higher ballot;
    // its retry then reads the marker and refuses v2.
    let mut sim = sim(13);
    let key = "zombie-fast";
    let (p, a, _) = roles(&sim, key);
    assert_eq!(call(&mut sim, a, Request::upsert(key, "v1")), Ok(Response::Done)); // via p
    let answers = hold_forward_of(&mut sim, key, "v2");
    assert!(matches!(call(&mut sim, a, Request::upsert(key, "v2")), Err(KvError::Unavailable(_))));
    assert_eq!(call(&mut sim, a, Request::upsert(key, "v3")), Ok(Response::Done));
    let fast = sim.node(p).unwrap().stats().fast_rounds;
    sim.release_held(|_, _, _| true);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.node(p).unwrap().stats().fast_rounds, fast + 1, "p tried its stale fast path");
    let late = answers.borrow().to_late();
    assert!(late.len() == 1 && is_unavailable(&late[0]), "p answered the late write {late:?}");
    assert_every_quorum_reads(&mut sim, key, "v3");
}

#[test]
fn a_primarys_retry_never_applies_a_write_its_forwarder_answered_unavailable() {
    // The Forward arrives in time, p proposes v2 on its fast path, but its Accepts to the
    // other members are delayed and p is then cut off: only p's own acceptor holds v2. a's
    // forward times out; its recovery through {a, b} does not find v2 and answers
    // UNAVAILABLE; v3 is acknowledged. When p can talk again, its retry may prove that v2
    // never took effect (an entry below v2's ballot is still remembered) and would apply
    // it now, after v3, unless the abort marker stops it.
    let mut sim = sim(14);
    let key = "zombie-retry";
    let (p, a, _) = roles(&sim, key);
    assert_eq!(call(&mut sim, a, Request::upsert(key, "v1")), Ok(Response::Done)); // via p
    let answers: ForwardAnswers = Rc::default();
    let seen = answers.clone();
    // Only the Accepts of p's first proposal of v2 are delayed.
    let first = RefCell::new(None);
    sim.set_filter(Box::new(move |from, to, env| {
        seen.borrow_mut().record(from, to, &env.message, key, "v2");
        match &env.message {
            Message::Accept { key: k, accepted, .. } if k == key && from == p && to != p => {
                let v2 = accepted.state.as_ref().and_then(State::value) == Some(&b"v2"[..]);
                let first = *first.borrow_mut().get_or_insert(accepted.ballot) == accepted.ballot;
                if v2 && first { Verdict::Hold } else { Verdict::Deliver }
            }
            _ => Verdict::Deliver,
        }
    }));
    let id = sim.submit(a, Request::upsert(key, "v2"));
    sim.run_for(Duration::from_millis(10));
    assert!(!sim.held().is_empty(), "p proposed v2; its Accepts are delayed");
    sim.isolate(p);
    sim.run_for(Duration::from_millis(400));
    let answer = sim.take_replies().into_iter().find(|(_, r)| r.id == id).map(|(_, r)| r.result);
    assert!(matches!(answer, Some(Err(KvError::Unavailable(_)))), "a answered {answer:?}");
    assert_eq!(call(&mut sim, a, Request::upsert(key, "v3")), Ok(Response::Done));
    sim.heal();
    release_the_late_write_and_assert_it_is_refused(&mut sim, &answers, key, "v3");
}

#[test]
fn the_abort_marker_survives_restarts_of_every_node() {
    // As in the first zombie test, but every node crashes and restarts before the delayed
    // Forward arrives: the primary's forward dedup window is gone, so only the marker in
    // the durable register stands between the Forward and a late write.
    let mut sim = sim(15);
    let key = "zombie-restart";
    let (p, a, b) = roles(&sim, key);
    let answers = hold_forward_of(&mut sim, key, "v2");
    assert!(matches!(call(&mut sim, a, Request::upsert(key, "v2")), Err(KvError::Unavailable(_))));
    assert_eq!(call(&mut sim, b, Request::upsert(key, "v3")), Ok(Response::Done));
    sim.run_for(Duration::from_millis(100)); // every batch is durable
    for i in [p, a, b] {
        sim.crash(i);
        sim.restart(i);
    }
    sim.run_for(Duration::from_millis(100));
    release_the_late_write_and_assert_it_is_refused(&mut sim, &answers, key, "v3");
}

#[test]
fn a_duplicated_forward_after_the_primary_restarts_is_not_applied_twice() {
    // The applied half of "neither applied nor aborted": a Forward is duplicated in the
    // network; p applies v2 and a acknowledges it; v3 is acknowledged after it; p restarts
    // (losing its forward dedup window) and the duplicate arrives. p must see that v2's op
    // is already in the state and not apply it again after v3.
    let mut sim = sim(16);
    let key = "zombie-dup";
    let (p, a, _) = roles(&sim, key);
    sim.set_filter(Box::new(move |_, _, env| {
        if is_forward_of(&env.message, key, "v2") { Verdict::DeliverAndHold } else { Verdict::Deliver }
    }));
    assert_eq!(call(&mut sim, a, Request::upsert(key, "v2")), Ok(Response::Done));
    assert_eq!(call(&mut sim, a, Request::upsert(key, "v3")), Ok(Response::Done));
    sim.run_for(Duration::from_millis(100));
    sim.crash(p);
    sim.restart(p);
    sim.run_for(Duration::from_millis(100));
    sim.release_held(|_, _, _| true);
    sim.run_for(Duration::from_secs(1));
    assert_every_quorum_reads(&mut sim, key, "v3");
}

#[test]
fn a_replica_that_missed_the_accept_converges_from_the_commit() {
    // R7: Commit carries the state, so a member that missed the Accept installs it.
    let mut sim = sim(8);
    let key = "converge";
    let (p, _, c) = roles(&sim, key);
    sim.set_filter(Box::new(
        move |_, to, env| {
            if to == c && is_accept_of(&env.message, key) { Verdict::Drop } else { Verdict::Deliver }
        },
    ));
    assert_eq!(call(&mut sim, p, Request::upsert(key, "v")), Ok(Response::Done));
    sim.run_for(Duration::from_millis(100));
    let reg = register(&sim, c, key).expect("installed from the Commit");
    assert!(reg.committed);
    assert_eq!(reg.accepted.and_then(|a| a.state).and_then(|s| s.value().map(<[u8]>::to_vec)), Some(b"v".to_vec()));
    assert_eq!(register(&sim, p, key).unwrap().accepted, register(&sim, c, key).unwrap().accepted);
}

#[test]
fn a_linearizable_read_of_a_settled_key_takes_one_round_trip_and_writes_nothing() {
    // R5: no disk write, one round trip.
    let mut sim = sim(9);
    let key = "settled";
    assert_eq!(call(&mut sim, 0, Request::upsert(key, "v")), Ok(Response::Done));
    sim.run_for(Duration::from_millis(100));
    let batches = sim.batches;
    let fast_reads: u64 = (0..3).map(|i| sim.node(i).unwrap().stats().fast_reads).sum();
    for reader in 0..3 {
        assert_eq!(call(&mut sim, reader, Request::fetch(key)), value("v"));
    }
    assert_eq!(sim.batches, batches, "reads persist nothing");
    let after: u64 = (0..3).map(|i| sim.node(i).unwrap().stats().fast_reads).sum();
    assert_eq!(after, fast_reads + 3);
}

/// Counts the Read messages the filter lets through, and drops those from `from` to
/// `silent` (if any).
fn count_reads(sim: &mut Sim, from: usize, silent: Option<usize>) -> Rc<RefCell<usize>> {
    let reads = Rc::new(RefCell::new(0));
    let counted = reads.clone();
    sim.set_filter(Box::new(move |f, to, env| {
        if !matches!(env.message, Message::Read { .. }) {
            return Verdict::Deliver;
        }
        *counted.borrow_mut() += 1;
        if f == from && Some(to) == silent { Verdict::Drop } else { Verdict::Deliver }
    }));
    reads
}

fn read_stats(sim: &Sim) -> (u64, u64) {
    let stats: Vec<_> = (0..sim.len()).filter_map(|i| sim.node(i).map(|n| n.stats().clone())).collect();
    (stats.iter().map(|s| s.read_hedges).sum(), stats.iter().map(|s| s.read_fallbacks).sum())
}

#[test]
fn a_read_entering_at_a_member_asks_every_other_member() {
    // node/read.rs: a member's own view is free, and asking both others measured cheaper
    // at 3 nodes than asking one.
    let mut sim = sim(11);
    let key = "thrifty";
    let (p, a, _) = roles(&sim, key);
    assert_eq!(call(&mut sim, p, Request::upsert(key, "v")), Ok(Response::Done));
    sim.run_for(Duration::from_millis(100));
    let reads = count_reads(&mut sim, a, None);
    for _ in 0..6 {
        assert_eq!(call(&mut sim, a, Request::fetch(key)), value("v"));
    }
    assert_eq!(*reads.borrow(), 12, "two Reads per read");
    assert_eq!(read_stats(&sim), (0, 0));
}

#[test]
fn a_read_entering_at_a_node_without_a_replica_asks_two_of_three_and_hedges_once_past_a_silent_one() {
    // Thrifty reads (node/read.rs): a quorum first, from a rotating start; a silent member
    // costs one hedge, then is asked last, and no read falls back to a write round.
    let mut sim = Sim::with_config(5, PARTITIONS, 3, 12, Faults::none(), tune);
    let key = "thrifty-outside";
    let config = sim.node(0).unwrap().map().config_of(key.as_bytes()).clone();
    let outside = (0..5).find(|i| !config.members.contains(&sim.ids()[*i])).unwrap();
    let silent = sim.index_of(&config.members[1]);
    assert_eq!(call(&mut sim, outside, Request::upsert(key, "v")), Ok(Response::Done));
    sim.run_for(Duration::from_millis(100));
    let reads = count_reads(&mut sim, outside, None);
    for _ in 0..6 {
        assert_eq!(call(&mut sim, outside, Request::fetch(key)), value("v"));
    }
    assert_eq!(*reads.borrow(), 12, "two Reads per read");
    assert_eq!(read_stats(&sim), (0, 0));
    let reads = count_reads(&mut sim, outside, Some(silent));
    for _ in 0..6 {
        assert_eq!(call(&mut sim, outside, Request::fetch(key)), value("v"));
    }
    assert_eq!(read_stats(&sim), (1, 0), "one hedge, then the silent member is asked last");
    assert_eq!(*reads.borrow(), 13, "two Reads per read, and the hedge's");
}

#[test]
fn list_resolves_a_minority_accepted_key_before_listing_it() {
    // R9: a key whose replicas disagree is resolved by an identity round, never listed (or
    // skipped) from raw key sets; what List returns, later reads confirm.
    let mut sim = sim(10);
    let key = "list/minority";
    let (p, a, b) = roles(&sim, key);
    assert_eq!(call(&mut sim, a, Request::upsert("list/live", "x")), Ok(Response::Done));
    assert_eq!(call(&mut sim, a, Request::upsert("list/dead", "x")), Ok(Response::Done));
    assert_eq!(call(&mut sim, a, Request::delete("list/dead")), Ok(Response::Done));
    write_on_minority(&mut sim, p, key, "v");
    cut_both(&mut sim, a, b); // a lists through {a, p}
    let query = memo_engine::list::ListQuery { prefix: "list/".into(), ..Default::default() };
    let page = match call(&mut sim, a, Request::List(query)) {
        Ok(Response::List(page)) => page,
        other => panic!("List answered {other:?}"),
    };
    assert_eq!(page.items, vec!["list/live".to_string(), key.to_string()]);
    sim.heal();
    sim.isolate(p);
    assert_eq!(call(&mut sim, b, Request::fetch(key)), value("v"), "what List saw is chosen");
}

#[test]
fn a_dead_primary_costs_one_unknown_write_then_writes_are_coordinated_elsewhere() {
    // Routing: writes are forwarded to the primary. When it stops answering, the first
    // forwarded write's outcome is unknown (the primary may still apply it), and the node
    // then coordinates that primary's writes itself until it hears from it again.
    let mut sim = sim(11);
    let key = "dead-primary";
    let (p, a, _) = roles(&sim, key);
    assert_eq!(call(&mut sim, a, Request::upsert(key, "v0")), Ok(Response::Done));
    sim.crash(p);
    assert!(matches!(call(&mut sim, a, Request::upsert(key, "v1")), Err(KvError::Unavailable(_))));
    for i in 0..20 {
        let v = format!("v{}", i + 2);
        assert_eq!(call(&mut sim, a, Request::upsert(key, v.as_str())), Ok(Response::Done), "write {i}");
        sim.run_for(Duration::from_millis(500)); // well past a fixed suspicion period
    }
    sim.restart(p);
    sim.run_for(Duration::from_millis(200));
    // Once the primary is heard from again (here: it answers a's reads), writes return to it.
    assert_eq!(call(&mut sim, a, Request::fetch(key)), value("v21"));
    let forwards = sim.node(a).unwrap().stats().forwards;
    assert_eq!(call(&mut sim, a, Request::upsert(key, "back")), Ok(Response::Done));
    assert_eq!(sim.node(a).unwrap().stats().forwards, forwards + 1, "forwarded to the primary again");
}
