//! Bad input from the network is an error, never a panic (docs/ARCHITECTURE.md, "The engine contract"): garbage bytes,
//! truncated or mutated envelopes, other clusters, forged senders, out-of-range fields.

use memo_engine::kv::{Change, Stamp};
use memo_engine::message::{self, Envelope, Message, PeerError, ScanRange};
use memo_engine::paxos::acceptor::Accepted;
use memo_engine::paxos::ballot::Ballot;
use memo_engine::placement::EpochRef;
use memo_engine::{ClusterId, ClusterParams, Config, Instant, MemoryStorage, Node, NodeId, OpId, Storage};
use proptest::prelude::*;
use std::sync::Arc;

fn ids() -> Vec<NodeId> {
    (0..3).map(|i| NodeId::initial(format!("n{i}"))).collect()
}

fn params() -> ClusterParams {
    ClusterParams { partitions: 16, replication: 3, initial_nodes: ids(), token: "t".into() }
}

fn node() -> Node<Arc<MemoryStorage>> {
    let storage = Arc::new(MemoryStorage::new());
    let mut node = Node::new(Config::new(ids()[0].clone(), params()), storage.clone(), 1, Instant::ZERO).unwrap();
    while let Some(b) = node.poll_persist() {
        storage.write(&b).unwrap();
        node.handle_persisted(b.id, Instant::ZERO);
    }
    node
}

fn envelope(message: Message) -> Envelope {
    Envelope { cluster: params().cluster_id(), from: ids()[1].clone(), to: ids()[0].clone(), message }
}

fn valid_messages() -> Vec<Message> {
    let epoch = EpochRef { epoch: 1, hash: 0 };
    let b = Ballot { epoch: 1, round: 3, node: ids()[1].tag(), restart: 1 };
    vec![
        Message::Prepare { key: "k".into(), epoch, ballot: b, attempt: 1 },
        Message::Accept {
            key: "k".into(),
            epoch,
            ballot: b,
            attempt: 1,
            accepted: Accepted { ballot: b, state: None },
            next: Some(b.successor()),
        },
        Message::Read { key: "k".into(), epoch, attempt: 2, history: false },
        Message::Scan {
            id: 1,
            partitions: vec![(0, epoch)],
            range: ScanRange { start: String::new(), exclusive: false, prefix: String::new(), limit: 10 },
        },
        Message::Forward {
            id: 1,
            seq: 1,
            op: OpId { node: ids()[1].tag(), restart: 1, seq: 1 },
            stamp: Stamp::default(),
            key: "k".into(),
            change: Change::Upsert(b"v".to_vec().into()),
        },
    ]
}

#[test]
fn envelopes_from_elsewhere_are_refused_with_a_reason() {
    let mut n = node();
    let mut other_cluster = envelope(valid_messages()[0].clone());
    other_cluster.cluster = ClusterId([9; 32]);
    assert!(matches!(n.handle_envelope(other_cluster, Instant::ZERO), Err(PeerError::WrongCluster { .. })));
    let mut wrong_receiver = envelope(valid_messages()[0].clone());
    wrong_receiver.to = NodeId { name: "n0".into(), generation: 5 };
    assert!(matches!(n.handle_envelope(wrong_receiver, Instant::ZERO), Err(PeerError::WrongReceiver(_))));
    let mut stranger = envelope(valid_messages()[0].clone());
    stranger.from = NodeId::initial("mallory");
    assert!(matches!(n.handle_envelope(stranger, Instant::ZERO), Err(PeerError::UnknownSender(_))));
    let mut spoofed_self = envelope(valid_messages()[0].clone());
    spoofed_self.from = ids()[0].clone();
    assert!(matches!(n.handle_envelope(spoofed_self, Instant::ZERO), Err(PeerError::Invalid(_))));
    assert_eq!(n.stats().peer_errors, 4);
}

#[test]
fn out_of_range_fields_are_refused() {
    let mut n = node();
    let epoch = EpochRef { epoch: 1, hash: 0 };
    let bad = [
        Message::Read { key: String::new(), epoch, attempt: 1, history: false },
        Message::Read { key: "x".repeat(4097), epoch, attempt: 1, history: false },
        Message::Scan {
            id: 1,
            partitions: vec![(16, epoch)],
            range: ScanRange { start: String::new(), exclusive: false, prefix: String::new(), limit: 1 },
        },
        Message::Forward {
            id: 1,
            seq: 1,
            op: OpId { node: ids()[1].tag(), restart: 1, seq: 1 },
            stamp: Stamp::default(),
            key: "k".into(),
            change: Change::Upsert(vec![0; 2 * 1024 * 1024].into()),
        },
    ];
    for m in bad {
        assert!(matches!(n.handle_envelope(envelope(m.clone()), Instant::ZERO), Err(PeerError::Invalid(_))), "{m:?}");
    }
    assert!(matches!(
        n.handle_peer_bytes(&vec![0u8; message::ENVELOPE_BYTES_MAX + 1], Instant::ZERO),
        Err(PeerError::TooLarge(_))
    ));
}

#[test]
fn valid_messages_with_a_stale_epoch_are_answered_not_applied() {
    let mut n = node();
    for m in valid_messages() {
        // Epoch hash 0 is not the partition's: acceptors refuse with their config, the
        // forward is coordinated (and fails later for lack of a quorum). No panic.
        n.handle_envelope(envelope(m), Instant::ZERO).unwrap();
    }
    while n.poll_transmit().is_some() {}
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut n = node();
        let _ = n.handle_peer_bytes(&bytes, Instant::ZERO);
    }

    #[test]
    fn truncated_or_mutated_envelopes_never_panic(which in 0usize..5, cut in any::<prop::sample::Index>(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4)) {
        let mut n = node();
        let mut bytes = message::encode(&envelope(valid_messages()[which].clone()));
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let len = cut.index(bytes.len() + 1);
        let _ = n.handle_peer_bytes(&bytes[..len], Instant::ZERO);
        while n.poll_transmit().is_some() {}
    }
}
