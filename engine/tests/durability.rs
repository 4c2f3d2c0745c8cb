//! Durability before speech (R1, R4), checked on one node driven by hand: nothing is sent
//! before the restart counter is durable; accepts and read replies wait for the batch that
//! holds the state they report, promises for the durable promise ceiling that covers them
//! (and a restarted node keeps every promise under its old ceiling); a coordinator counts its own vote only once it
//! is durable; and a crash before durability loses the state without anyone having been
//! told about it.

use memo_engine::kv::{Applied, State};
use memo_engine::message::{Envelope, Message, Rejection};
use memo_engine::paxos::acceptor::{Accepted, Refusal};
use memo_engine::paxos::ballot::Ballot;
use memo_engine::placement::{EpochRef, partition_of};
use memo_engine::storage::{PROMISE_CEILING_KEY, decode_register, register_key};
use memo_engine::{ClusterParams, Config, Instant, MemoryStorage, Node, NodeId, OpId, Request, RequestId, Storage};
use std::sync::Arc;

const P: u32 = 16;

fn ids() -> Vec<NodeId> {
    (0..3).map(|i| NodeId::initial(format!("n{i}"))).collect()
}

fn params() -> ClusterParams {
    ClusterParams { partitions: P, replication: 3, initial_nodes: ids(), token: "t".into() }
}

fn start(storage: &Arc<MemoryStorage>) -> Node<Arc<MemoryStorage>> {
    Node::new(Config::new(ids()[0].clone(), params()), storage.clone(), 7, Instant::from_nanos(1)).unwrap()
}

/// Applies every pending batch to the silo and reports it durable.
fn persist_all(node: &mut Node<Arc<MemoryStorage>>, storage: &MemoryStorage) {
    let mut last = None;
    while let Some(b) = node.poll_persist() {
        storage.write(&b).unwrap();
        last = Some(b.id);
    }
    if let Some(id) = last {
        node.handle_persisted(id, Instant::from_nanos(2));
    }
}

fn transmits(node: &mut Node<Arc<MemoryStorage>>) -> Vec<Message> {
    std::iter::from_fn(|| node.poll_transmit()).map(|t| t.envelope.message).collect()
}

fn from(node: &Node<Arc<MemoryStorage>>, sender: usize, message: Message) -> Envelope {
    Envelope { cluster: params().cluster_id(), from: ids()[sender].clone(), to: node.id().clone(), message }
}

fn epoch(node: &Node<Arc<MemoryStorage>>, key: &str) -> EpochRef {
    node.map().epoch_ref(partition_of(key.as_bytes(), P))
}

fn ballot(round: u64) -> Ballot {
    Ballot { epoch: 1, round, node: ids()[1].tag(), restart: 1 }
}

fn accept(node: &Node<Arc<MemoryStorage>>, key: &str, round: u64) -> Message {
    let op = OpId { node: ids()[1].tag(), restart: 1, seq: round };
    let state = Some(State::Value {
        value: b"v".to_vec(),
        encoding: memo_engine::Encoding::PLAIN,
        recent: vec![Applied { ballot: ballot(round), op }],
        aborted: Default::default(),
        history: None,
    });
    Message::Accept {
        key: key.into(),
        epoch: epoch(node, key),
        ballot: ballot(round),
        attempt: 1,
        accepted: Accepted { ballot: ballot(round), state },
        next: None,
    }
}

#[test]
fn nothing_is_sent_before_the_restart_counter_is_durable() {
    let storage = Arc::new(MemoryStorage::new());
    let mut node = start(&storage);
    node.handle_request(RequestId(1), Request::fetch("k"), Instant::from_nanos(1));
    assert!(transmits(&mut node).is_empty(), "reads wait for the restart counter");
    persist_all(&mut node, &storage);
    let sent = transmits(&mut node);
    assert_eq!(sent.iter().filter(|m| matches!(m, Message::Read { .. })).count(), 2);
    // And the counter survives a restart, bumped.
    drop(node);
    assert_eq!(start(&storage).restart(), 2);
}

#[test]
fn a_promise_above_the_ceiling_is_released_only_when_the_raised_ceiling_is_durable() {
    let storage = Arc::new(MemoryStorage::new());
    let mut node = start(&storage);
    persist_all(&mut node, &storage);
    let e = epoch(&node, "k");
    let prepare = from(&node, 1, Message::Prepare { key: "k".into(), epoch: e, ballot: ballot(3), attempt: 9 });
    node.handle_envelope(prepare, Instant::from_nanos(3)).unwrap();
    assert!(transmits(&mut node).is_empty());
    let batch = node.poll_persist().expect("the raised promise ceiling is in a batch");
    assert!(batch.writes.iter().any(|(k, _)| k == PROMISE_CEILING_KEY));
    storage.write(&batch).unwrap();
    assert!(transmits(&mut node).is_empty(), "written is not durable");
    node.handle_persisted(batch.id, Instant::from_nanos(4));
    assert!(matches!(transmits(&mut node).as_slice(), [Message::Promise { attempt: 9, result: Ok(_), .. }]));
}

/// The promise ceiling's counterexample: a promise sent without its own write being
/// durable, then a crash. Unless the restarted node promises at least its old ceiling on
/// every key, it accepts a ballot below the promise it sent, and a proposer that counted
/// that promise can have its chosen value overwritten.
#[test]
fn a_promise_sent_before_its_write_is_durable_is_kept_after_a_crash() {
    let storage = Arc::new(MemoryStorage::new());
    let mut node = start(&storage);
    persist_all(&mut node, &storage);
    let e = epoch(&node, "k");
    let prepare = |round, attempt| Message::Prepare { key: "k".into(), epoch: e, ballot: ballot(round), attempt };
    node.handle_envelope(from(&node, 1, prepare(3, 1)), Instant::from_nanos(3)).unwrap();
    persist_all(&mut node, &storage);
    assert!(matches!(transmits(&mut node).as_slice(), [Message::Promise { attempt: 1, result: Ok(_), .. }]));
    // Under the ceiling: answered at once, with nothing to sync.
    node.handle_envelope(from(&node, 1, prepare(5, 2)), Instant::from_nanos(4)).unwrap();
    assert!(matches!(transmits(&mut node).as_slice(), [Message::Promise { attempt: 2, result: Ok(_), .. }]));
    // Crash: whatever was not durable is lost (the promise of round 5 was never synced).
    drop(node);
    let mut node = start(&storage);
    persist_all(&mut node, &storage);
    node.handle_envelope(from(&node, 2, accept(&node, "k", 4)), Instant::from_nanos(5)).unwrap();
    persist_all(&mut node, &storage);
    match transmits(&mut node).as_slice() {
        [Message::Accepted { result: Err(Rejection::Refused(Refusal::Promised(b))), .. }] => {
            assert!(*b >= ballot(5), "refused with {b:?}")
        }
        other => panic!("an Accept below a promise sent before the crash was not refused: {other:?}"),
    }
    // A ballot above the old ceiling is fine, and raises the new life's ceiling.
    let high = ballot(3 + (1 << 20) + 1);
    let msg = Message::Prepare { key: "k".into(), epoch: e, ballot: high, attempt: 3 };
    node.handle_envelope(from(&node, 1, msg), Instant::from_nanos(6)).unwrap();
    persist_all(&mut node, &storage);
    assert!(matches!(transmits(&mut node).as_slice(), [Message::Promise { attempt: 3, result: Ok(_), .. }]));
}

/// A volatile promise must not be forgotten when its cache entry is evicted: eviction
/// writes it first.
#[test]
fn an_evicted_volatile_promise_is_written_not_forgotten() {
    let storage = Arc::new(MemoryStorage::new());
    let mut cfg = Config::new(ids()[0].clone(), params());
    cfg.register_cache_bytes_max = 1; // every clean entry is evicted at once
    let mut node = Node::new(cfg, storage.clone(), 7, Instant::from_nanos(1)).unwrap();
    persist_all(&mut node, &storage);
    let e = epoch(&node, "k");
    let prepare = |round, attempt| Message::Prepare { key: "k".into(), epoch: e, ballot: ballot(round), attempt };
    node.handle_envelope(from(&node, 1, prepare(3, 1)), Instant::from_nanos(3)).unwrap();
    persist_all(&mut node, &storage);
    node.handle_envelope(from(&node, 1, prepare(5, 2)), Instant::from_nanos(4)).unwrap();
    // Touch other keys so eviction sweeps past "k".
    for i in 0..8 {
        let key = format!("other{i}");
        let msg = Message::Read { key: key.clone(), epoch: epoch(&node, &key), attempt: 10 + i, history: false };
        node.handle_envelope(from(&node, 2, msg), Instant::from_nanos(5)).unwrap();
    }
    persist_all(&mut node, &storage);
    let stored = storage.get(&register_key(partition_of(b"k", P), b"k")).unwrap().expect("k is stored");
    assert_eq!(decode_register(&stored).unwrap().promised, ballot(5), "the volatile promise reached the silo");
    node.handle_envelope(from(&node, 2, accept(&node, "k", 4)), Instant::from_nanos(6)).unwrap();
    persist_all(&mut node, &storage);
    let refused = transmits(&mut node).into_iter().any(|m| {
        matches!(m, Message::Accepted { result: Err(Rejection::Refused(Refusal::Promised(b))), .. } if b == ballot(5))
    });
    assert!(refused, "an Accept below the evicted promise was not refused");
}

#[test]
fn a_read_waits_for_a_pending_accept_of_its_key_but_not_of_other_keys() {
    let storage = Arc::new(MemoryStorage::new());
    let mut node = start(&storage);
    persist_all(&mut node, &storage);
    node.handle_envelope(from(&node, 1, accept(&node, "k", 2)), Instant::from_nanos(3)).unwrap();
    let read = |node: &Node<_>, key: &str| Message::Read {
        key: key.into(),
        epoch: epoch(node, key),
        attempt: 5,
        history: false,
    };
    let msg = from(&node, 2, read(&node, "k"));
    node.handle_envelope(msg, Instant::from_nanos(3)).unwrap();
    let msg = from(&node, 2, read(&node, "other"));
    node.handle_envelope(msg, Instant::from_nanos(3)).unwrap();
    let sent = transmits(&mut node);
    assert!(matches!(sent.as_slice(), [Message::ReadReply { key, .. }] if key == "other"), "{sent:?}");
    persist_all(&mut node, &storage);
    let sent = transmits(&mut node);
    assert!(sent.iter().any(|m| matches!(m, Message::Accepted { result: Ok(_), .. })));
    assert!(
        sent.iter()
            .any(|m| matches!(m, Message::ReadReply { key, result: Ok(v), .. } if key == "k" && v.accepted.is_some()))
    );
}

#[test]
fn a_crash_before_durability_loses_the_accept_and_nobody_heard_of_it() {
    let storage = Arc::new(MemoryStorage::new());
    let mut node = start(&storage);
    persist_all(&mut node, &storage);
    node.handle_envelope(from(&node, 1, accept(&node, "k", 2)), Instant::from_nanos(3)).unwrap();
    let _lost = node.poll_persist().expect("pending batch");
    assert!(transmits(&mut node).is_empty(), "no Accepted before durability");
    drop(node); // crash: the batch never reached the silo
    let key = register_key(partition_of(b"k", P), b"k");
    assert!(storage.get(&key).unwrap().is_none());
    // A durable accept, by contrast, survives the restart.
    let mut node = start(&storage);
    persist_all(&mut node, &storage);
    node.handle_envelope(from(&node, 1, accept(&node, "k", 3)), Instant::from_nanos(3)).unwrap();
    persist_all(&mut node, &storage);
    drop(node);
    let reg = decode_register(&storage.get(&key).unwrap().expect("durable")).unwrap();
    assert_eq!(reg.accepted.map(|a| a.ballot), Some(ballot(3)));
}

#[test]
fn a_coordinator_counts_its_own_vote_only_once_it_is_durable() {
    let storage = Arc::new(MemoryStorage::new());
    let mut node = start(&storage);
    persist_all(&mut node, &storage);
    // A key whose primary is n0, so the write is coordinated here.
    let key =
        (0..).map(|i| format!("key{i}")).find(|k| node.map().config_of(k.as_bytes()).primary() == node.id()).unwrap();
    node.handle_request(RequestId(1), Request::upsert(key.clone(), "v"), Instant::from_nanos(3));
    let sent = transmits(&mut node);
    let (ballot, attempt) = match sent.first() {
        Some(Message::Prepare { ballot, attempt, .. }) => (*ballot, *attempt),
        other => panic!("expected a Prepare, got {other:?}"),
    };
    // One remote promise arrives; the node's own promise is not durable yet: no quorum.
    let view = memo_engine::paxos::acceptor::ReadView {
        accepted: None,
        committed: false,
        floor: Ballot::ZERO,
        aborted: Vec::new(),
    };
    let promise = Message::Promise { key: key.clone(), ballot, attempt, result: Ok(view) };
    node.handle_envelope(from(&node, 1, promise), Instant::from_nanos(4)).unwrap();
    assert!(!transmits(&mut node).iter().any(|m| matches!(m, Message::Accept { .. })), "own vote not durable");
    persist_all(&mut node, &storage);
    assert!(
        transmits(&mut node).iter().any(|m| matches!(m, Message::Accept { .. })),
        "quorum with its own durable vote"
    );
}

#[test]
fn a_full_batch_is_closed_and_replies_wait_for_the_batch_that_holds_their_key() {
    let storage = Arc::new(MemoryStorage::new());
    let mut cfg = Config::new(ids()[0].clone(), params());
    cfg.batch_writes_max = 2;
    let mut node = Node::new(cfg, storage.clone(), 7, Instant::from_nanos(1)).unwrap();
    persist_all(&mut node, &storage);
    for (i, key) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
        node.handle_envelope(from(&node, 1, accept(&node, key, 2 + i as u64)), Instant::from_nanos(3)).unwrap();
    }
    let batches: Vec<_> = std::iter::from_fn(|| node.poll_persist()).collect();
    assert_eq!(batches.iter().map(|b| b.writes.len()).collect::<Vec<_>>(), vec![2, 2, 1]);
    storage.write(&batches[0]).unwrap();
    node.handle_persisted(batches[0].id, Instant::from_nanos(4));
    let released = transmits(&mut node);
    assert_eq!(released.len(), 2, "only the replies whose batch is durable: {released:?}");
    for b in &batches[1..] {
        storage.write(b).unwrap();
    }
    node.handle_persisted(batches[2].id, Instant::from_nanos(5));
    assert_eq!(transmits(&mut node).len(), 3);
}

#[test]
fn ids_echoed_by_replies_never_repeat_across_a_restart() {
    // Replies sent to a node's previous life may arrive after it restarts; the ids they
    // echo (read attempts, proposer attempts, forwarded requests) must not match any id of
    // the new life, or a stale view or answer would be taken for a current one.
    let storage = Arc::new(MemoryStorage::new());
    let first_ids = |storage: &Arc<MemoryStorage>| {
        let mut node = start(storage);
        persist_all(&mut node, storage);
        node.handle_request(RequestId(1), Request::fetch("k"), Instant::from_nanos(3));
        node.handle_request(RequestId(2), Request::upsert("k", "v"), Instant::from_nanos(3));
        let ids: Vec<u64> = transmits(&mut node)
            .into_iter()
            .filter_map(|m| match m {
                Message::Read { attempt, .. } | Message::Prepare { attempt, .. } => Some(attempt),
                Message::Forward { id, .. } => Some(id),
                _ => None,
            })
            .collect();
        assert!(!ids.is_empty());
        ids
    };
    let life1 = first_ids(&storage);
    let life2 = first_ids(&storage);
    assert!(life1.iter().all(|id| !life2.contains(id)), "{life1:?} vs {life2:?}");
}
