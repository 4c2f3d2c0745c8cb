//! One test per reconfiguration rule (docs/PROTOCOL.md, F3–F5), each built from the
//! counterexample the rule prevents, and each run twice: as memo is, where the history is
//! correct, and with the rule broken on purpose (`PlantedBug`), where the same schedule
//! must produce the wrong answer. A test whose bug twin passes proves nothing.
//!
//! One partition (`P = 1`) keeps the schedules readable: founders `n0..n2` hold it as
//! `[n1, n2, n0]`; with `n3` live instead of `n0`, its desired members are `n1, n3, n2`;
//! without `n1`, `n0, n2, n3`.

use memo_engine::config::PlantedBug;
use memo_engine::message::{Envelope, Message};
use memo_engine::testing::{Faults, Sim, Verdict};
use memo_engine::{Config, KvError, Request, Response};
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(10);

fn tune(cfg: &mut Config) {
    cfg.round_timeout = Duration::from_millis(50);
    cfg.request_timeout = Duration::from_millis(600);
    cfg.forward_timeout = Duration::from_millis(200);
    cfg.gc_delay = Duration::from_millis(100);
    cfg.backoff_max = Duration::from_millis(5);
    cfg.rebalance_interval = Duration::from_millis(20);
    cfg.rebalance_delay = Duration::ZERO;
}

fn call(sim: &mut Sim, node: usize, req: Request) -> Result<Response, KvError> {
    sim.call(node, req, LIMIT).expect("a reply within the limit").result
}

/// Plants `bug` (if any) in every node, each restarted to take it.
fn plant_everywhere(sim: &mut Sim, bug: Option<PlantedBug>) {
    let Some(bug) = bug else { return };
    for i in 0..sim.len() {
        sim.crash(i);
        sim.plant(i, bug);
        sim.restart(i);
    }
}

/// Runs until every live node's partition 0 is settled on `members` (as a set).
fn settle_on(sim: &mut Sim, members: &[usize]) {
    let want: Vec<_> = members.iter().map(|&i| sim.ids()[i].clone()).collect();
    for _ in 0..200 {
        let settled = members.iter().all(|&i| {
            let c = sim.node(i).unwrap().map().config(0).clone();
            !c.is_joint() && c.members.len() == want.len() && want.iter().all(|m| c.members.contains(m))
        });
        if settled {
            return;
        }
        sim.run_for(Duration::from_millis(50));
    }
    panic!("partition 0 did not settle on {want:?}");
}

/// F5's counterexample: `n0` holds `k = old` and goes down; the partition moves away from
/// it (had `n0` been up, it would have released its registers on learning that), `k` is
/// deleted and its tombstone collected everywhere else, then `n0` returns and is added
/// back. Keeping its old register, it would answer a read quorum with `old` at the
/// highest accepted ballot: the deleted value comes back. Returns what a read through
/// `{n0, n1}` answers.
fn returning_member_read(bug: Option<PlantedBug>, seed: u64) -> Result<Response, KvError> {
    let mut sim = Sim::with_config(3, 1, 3, seed, Faults::none(), tune);
    sim.set_membership(&[0, 1, 2]);
    assert_eq!(call(&mut sim, 1, Request::upsert("k", "old")), Ok(Response::Done));
    sim.run_for(Duration::from_millis(200));
    let n3 = sim.add_node();
    sim.crash(0);
    sim.set_membership(&[1, 2, n3]);
    settle_on(&mut sim, &[1, 2, n3]);
    assert_eq!(call(&mut sim, 1, Request::delete("k")), Ok(Response::Done));
    sim.run_for(Duration::from_secs(1)); // the tombstone is collected on n1, n2, n3
    let collected = [1, 2, n3].iter().all(|&i| sim.node(i).unwrap().stats().keys_dropped > 0);
    assert!(collected, "the tombstone was collected while n0 was away");
    if let Some(bug) = bug {
        // Planted only now: the move away from n0 above ran with the rule intact.
        sim.plant(0, bug);
    }
    // n0 comes back cut off until the move that adds it back is settled, so the first
    // config it learns is the one that lists it again (as after an eviction).
    sim.restart(0);
    sim.isolate(0);
    sim.set_membership(&[0, 1, 2]);
    let n0 = sim.ids()[0].clone();
    for _ in 0..200 {
        let c = sim.node(1).unwrap().map().config(0).clone();
        if !c.is_joint() && c.contains(&n0) {
            break;
        }
        sim.run_for(Duration::from_millis(50));
    }
    sim.heal();
    settle_on(&mut sim, &[0, 1, 2]);
    sim.isolate(2); // the read quorum is {n0, n1}
    call(&mut sim, 1, Request::fetch("k"))
}

#[test]
fn f5_a_member_added_back_wipes_what_it_held_before() {
    for seed in 0..4 {
        assert_eq!(returning_member_read(None, seed), Err(KvError::NotFound), "seed {seed}");
    }
}

#[test]
fn f5_without_the_wipe_a_collected_value_comes_back() {
    let read = returning_member_read(Some(PlantedBug::NoWipeOnAdd), 0);
    assert_eq!(read, Ok(Response::Value(b"old".to_vec().into())), "the planted bug must resurrect the value");
}

/// Registers of partition 0 in node `i`'s silo.
fn registers_held(sim: &Sim, i: usize) -> usize {
    let start = memo_engine::storage::register_key(0, b"");
    let end = memo_engine::storage::register_key(1, b"");
    sim.storage(i).snapshot().range(start..end).count()
}

/// A node that a chosen config no longer lists deletes its registers of the partition
/// (the disk space of a partition moved away is reclaimed), and every key still reads
/// back through the new members; a node that stays keeps its registers.
#[test]
fn a_node_that_a_move_leaves_out_releases_the_partition() {
    let mut sim = Sim::with_config(3, 1, 3, 0, Faults::none(), tune);
    sim.set_membership(&[0, 1, 2]);
    for i in 0..20 {
        assert_eq!(call(&mut sim, 1, Request::upsert(format!("k{i}"), "v")), Ok(Response::Done));
    }
    sim.run_for(Duration::from_millis(200));
    assert_eq!(registers_held(&sim, 0), 20, "n0 holds every key before the move");
    let n3 = sim.add_node();
    sim.set_membership(&[1, 2, n3]);
    settle_on(&mut sim, &[1, 2, n3]);
    sim.run_for(Duration::from_millis(200));
    assert!(sim.node(0).unwrap().map().config(0).members.len() == 3);
    assert!(!sim.node(0).unwrap().map().config(0).contains(&sim.ids()[0].clone()), "n0 learned the move");
    assert_eq!(registers_held(&sim, 0), 0, "n0 released the partition");
    assert_eq!(registers_held(&sim, 1), 20, "n1 is still a member and keeps its registers");
    sim.isolate(1); // reads through {n2, n3}
    for i in 0..20 {
        assert_eq!(
            call(&mut sim, 2, Request::fetch(format!("k{i}"))),
            Ok(Response::Value(b"v".to_vec().into())),
            "k{i}"
        );
    }
}

fn is_config_message(msg: &Message) -> bool {
    matches!(
        msg,
        Message::ConfigPrepare { .. }
            | Message::ConfigAccept { .. }
            | Message::ConfigCommit { .. }
            | Message::MapDigest { .. }
    )
}

/// F3's counterexample. The partition moves from `[n1, n2, n0]` to `{n0, n2, n3}` (n1 is
/// no longer live; n2 rebalances). A write W of a new key, coordinated by n1, is accepted
/// by n1 itself; its Accept to n2 is lost and its Accept to n0 delayed. The decree is
/// chosen by n1 and n2 without n0 hearing of it, and the copier's scan reaches n2 and n0
/// only. If n0 answers the scan without adopting the joint config, the scan misses W,
/// and n0 then accepts the delayed Accept at the old epoch: W is chosen on {n1, n0} and
/// acknowledged, but never copied, and the final members {n0, n2, n3} answer a read
/// through {n2, n3} with NOT_FOUND. Returns W's answer and that read.
fn unfenced_copier_run(bug: Option<PlantedBug>, seed: u64) -> (Result<Response, KvError>, Result<Response, KvError>) {
    fn slow(cfg: &mut Config) {
        tune(cfg);
        cfg.round_timeout = Duration::from_secs(2); // W's attempt waits for its Accept
        cfg.request_timeout = Duration::from_secs(8);
    }
    let mut sim = Sim::with_config(3, 1, 3, seed, Faults::none(), slow);
    let n3 = sim.add_node();
    plant_everywhere(&mut sim, bug);
    let config = sim.node(0).unwrap().map().config(0).clone();
    let [a, b, c] = [0, 1, 2].map(|i| sim.index_of(&config.members[i]));
    assert_eq!((a, b, c), (1, 2, 0), "placement of the founding config");
    let scanned = Rc::new(Cell::new(false));
    let seen = scanned.clone();
    sim.set_filter(Box::new(move |from, to, env| {
        let accept_of_w = matches!(&env.message, Message::Accept { key, .. } if key == "w");
        match &env.message {
            _ if accept_of_w && from == a && to == b => Verdict::Drop,
            _ if accept_of_w && from == a && to == c && !seen.get() => Verdict::Hold,
            m if to == c && is_config_message(m) => Verdict::Drop,
            Message::CopyScan { .. } if to == a => Verdict::Drop,
            Message::CopyScanReply { .. } if from == c => {
                seen.set(true);
                Verdict::Deliver
            }
            _ => Verdict::Deliver,
        }
    }));
    let w = sim.submit(a, Request::insert("w", "v"));
    sim.run_for(Duration::from_millis(20)); // n1 accepted W itself; its Accept to n0 waits
    sim.set_membership(&[c, b, n3]);
    for _ in 0..100 {
        if scanned.get() {
            break;
        }
        sim.run_for(Duration::from_millis(10));
    }
    assert!(scanned.get(), "the copier scanned n0");
    sim.release_held(|_, _, _| true);
    let mut answer = None;
    for _ in 0..200 {
        if let Some((_, r)) = sim.take_replies().into_iter().find(|(_, r)| r.id == w) {
            answer = Some(r.result);
            break;
        }
        sim.run_for(Duration::from_millis(50));
    }
    sim.clear_filter();
    settle_on(&mut sim, &[c, b, n3]);
    sim.isolate(c); // the read quorum is {n2, n3}
    let read = call(&mut sim, b, Request::fetch("w"));
    (answer.expect("W was answered"), read)
}

#[test]
fn f3_the_copier_only_counts_members_fenced_at_the_joint_epoch() {
    for seed in 0..4 {
        let (w, read) = unfenced_copier_run(None, seed);
        match w {
            Ok(_) => assert_eq!(read, Ok(Response::Value(b"v".to_vec().into())), "seed {seed}: an acknowledged write"),
            Err(e) => assert!(e.is_unknown_outcome(), "seed {seed}: {e}"),
        }
    }
}

#[test]
fn f3_a_copier_that_reads_an_unfenced_member_loses_an_acknowledged_write() {
    let (w, read) = unfenced_copier_run(Some(PlantedBug::CopierReadsUnfenced), 0);
    assert_eq!((w, read), (Ok(Response::Done), Err(KvError::NotFound)), "the planted bug must lose W");
}

/// After a move, steady state is as before it: a write at the key's new primary takes the
/// fast path (one round trip) again, and a read is answered in one round trip, with no
/// fallback.
#[test]
fn after_a_move_the_fast_path_and_the_one_round_trip_read_work_again() {
    let mut sim = Sim::with_config(3, 1, 3, 5, Faults::none(), tune);
    sim.set_membership(&[0, 1, 2]);
    assert_eq!(call(&mut sim, 1, Request::upsert("k", "v0")), Ok(Response::Done));
    let n3 = sim.add_node();
    sim.set_membership(&[1, 2, n3]);
    settle_on(&mut sim, &[1, 2, n3]);
    let primary = sim.index_of(sim.node(1).unwrap().map().config(0).primary());
    // The first write at the new epoch runs phase 1 and earns the next ballot.
    assert_eq!(call(&mut sim, primary, Request::upsert("k", "v1")), Ok(Response::Done));
    let stats = |sim: &Sim| {
        let s = sim.node(primary).unwrap().stats();
        (s.fast_rounds, s.full_rounds, s.fast_reads, s.read_fallbacks)
    };
    let (fast, full, reads, fallbacks) = stats(&sim);
    for i in 2..12 {
        assert_eq!(call(&mut sim, primary, Request::upsert("k", format!("v{i}"))), Ok(Response::Done));
    }
    sim.run_for(Duration::from_millis(200)); // commits reach every member
    for _ in 0..10 {
        assert_eq!(call(&mut sim, primary, Request::fetch("k")), Ok(Response::Value(b"v11".to_vec().into())));
    }
    let (fast2, full2, reads2, fallbacks2) = stats(&sim);
    assert_eq!((fast2 - fast, full2 - full), (10, 0), "every write after the first took the fast path");
    assert_eq!((reads2 - reads, fallbacks2 - fallbacks), (10, 0), "every read took one round trip");
}

/// H9's counterexample. Partition 0 moves from `C = [n1, n2, n0]` to `Y' = {n2, n0, n4}`
/// (n1 is no longer live; n2 rebalances) and the joint config `Y` is chosen without n1
/// hearing of it. n1 instead holds a joint config `X` of the same epoch that was never
/// chosen (towards `{n1, n2, n3}`; it is handed to n1 directly, as a leak would). While
/// the final decree is held back, n1 coordinates a write W of a new key under `X`, which
/// reaches n1 and n2 only. If n2 compares configs by epoch number only, it accepts W,
/// and W is acknowledged by a quorum of `X` (`{n1, n2}` of both `C` and `{n1, n2, n3}`);
/// but `Y`'s copier had scanned before W, so the final members `{n2, n0, n4}` answer a
/// read through `{n0, n4}` with NOT_FOUND. Returns W's answer and that read.
fn leaked_config_run(bug: Option<PlantedBug>) -> (Result<Response, KvError>, Result<Response, KvError>) {
    let mut sim = Sim::with_config(3, 1, 3, 0, Faults::none(), tune);
    let n3 = sim.add_node();
    let n4 = sim.add_node();
    plant_everywhere(&mut sim, bug);
    sim.set_membership(&[0, 1, 2]);
    let config = sim.node(0).unwrap().map().config(0).clone();
    let [a, b, c] = [0, 1, 2].map(|i| sim.index_of(&config.members[i]));
    assert_eq!((a, b, c), (1, 2, 0), "placement of the founding config");
    // n1 hears nothing of the move; the final decree (the joint epoch's instance) waits
    // until W is answered.
    let joint = config.epoch + 1;
    sim.set_filter(Box::new(move |from, to, env| match &env.message {
        m if to == a && (is_config_message(m) || matches!(m, Message::CopyScan { .. })) => Verdict::Drop,
        Message::ConfigPrepare { epoch, .. } | Message::ConfigAccept { epoch, .. } if epoch.epoch == joint => {
            Verdict::Hold
        }
        Message::Prepare { key, .. } | Message::Accept { key, .. } | Message::Commit { key, .. }
            if key == "w" && from == a && to == c =>
        {
            Verdict::Drop
        }
        _ => Verdict::Deliver,
    }));
    sim.set_membership(&[b, c, n4]);
    for _ in 0..200 {
        if [b, c].iter().all(|&i| sim.node(i).unwrap().map().config(0).is_joint()) {
            break;
        }
        sim.run_for(Duration::from_millis(5));
    }
    let chosen = sim.node(b).unwrap().map().config(0).clone();
    assert!(chosen.is_joint() && chosen.epoch == joint, "the joint config Y was chosen: {chosen:?}");
    sim.run_for(Duration::from_millis(100)); // Y's copier scans n2 and n0 (nothing there yet)
    // The leak: n1 adopts a joint config of the same epoch that was never chosen.
    let ids = sim.ids().to_vec();
    let leaked = config.joint_to(vec![ids[a].clone(), ids[b].clone(), ids[n3].clone()]);
    assert_eq!(leaked.epoch, chosen.epoch);
    assert_ne!(leaked.epoch_ref(), chosen.epoch_ref());
    let cluster = sim.node(a).unwrap().cluster();
    let envelope = Envelope {
        cluster,
        from: ids[b].clone(),
        to: ids[a].clone(),
        message: Message::ConfigCommit { config: leaked.clone() },
    };
    sim.with_node(a, |n, now| n.handle_envelope(envelope, now)).unwrap().expect("a well-formed envelope");
    assert_eq!(sim.node(a).unwrap().map().config(0), &leaked, "n1 holds the leaked config");
    let w = call(&mut sim, a, Request::insert("w", "v"));
    sim.clear_filter();
    sim.release_held(|_, _, _| true);
    settle_on(&mut sim, &[b, c, n4]);
    sim.isolate(b); // the read quorum is {n0, n4}
    let read = call(&mut sim, c, Request::fetch("w"));
    (w, read)
}

#[test]
fn f4_a_config_that_leaked_without_being_chosen_is_refused_by_its_hash() {
    let (w, read) = leaked_config_run(None);
    match w {
        Ok(_) => assert_eq!(read, Ok(Response::Value(b"v".to_vec().into())), "an acknowledged write"),
        Err(e) => assert!(!matches!(e, KvError::AlreadyExists), "W failed: {e}"),
    }
}

#[test]
fn f4_configs_compared_by_epoch_number_only_lose_an_acknowledged_write() {
    let (w, read) = leaked_config_run(Some(PlantedBug::ConfigCheckedByEpochOnly));
    assert_eq!((w, read), (Ok(Response::Done), Err(KvError::NotFound)), "the planted bug must lose W");
}
