//! The linearizable read in one round trip, with no disk write (R5).
//!
//! The coordinator sends Read(key) to the members and waits for a quorum of views. If
//! every view reports the same accepted ballot `b` (or none at all), or the view with the
//! highest ballot is marked committed, that state is the answer; otherwise the read falls
//! back to an identity round through the key's register slot, which writes back.
//!
//! **Why this is linearizable.** Let `w` be a write chosen (acknowledged) before the read
//! began. It was accepted by a quorum, which meets the read's quorum in some acceptor;
//! accepted ballots only grow, so that acceptor reports a ballot at least `w`'s. So the
//! highest ballot the read sees is at least that of every write completed before it, and
//! the read never returns something older. Conversely, when all views of a quorum carry
//! the same ballot `b`, the state at `b` is accepted by a quorum and is therefore chosen;
//! a committed flag certifies the same thing (it is only set by a Commit, sent after the
//! state was chosen). A value accepted by a minority is never returned without being made
//! chosen first (the fallback writes it back), so two reads cannot flip between an
//! unchosen value and an older one (CASSANDRA-12126). The read linearizes right after `b`'s
//! write, within the read's interval. It depends on R1 (one ballot, one state), R4 (views
//! are durable before they are reported) and a quorum of the message's epoch.

use super::proposer::{Queued, proven_state};
use super::timers::{Timer, TimerHandle};
use super::{Node, ReqKey};
use crate::config::PlantedBug;
use crate::ids::{NodeId, OpId};
use crate::kv::{self, Answer, Change, Stamp, State};
use crate::message::{Message, Rejection};
use crate::paxos::acceptor::ReadView;
use crate::placement::partition_of;
use crate::quorum::{MemberSet, QuorumSet, VoteResult};
use crate::storage::Storage;
use crate::time::Instant;
use std::collections::BTreeMap;

#[derive(Default)]
pub(super) struct Reads {
    rounds: BTreeMap<u64, ReadRound>,
    next: u64,
}

struct ReadRound {
    req: ReqKey,
    key: String,
    /// What the read asks: [`Change::Fetch`] or [`Change::Versions`].
    change: Change,
    op: OpId,
    members: Vec<NodeId>,
    quorum: QuorumSet,
    views: Vec<(NodeId, ReadView)>,
    /// Members whose view is in `views`.
    viewed: MemberSet,
    refused: MemberSet,
    timer: TimerHandle,
}

impl Reads {
    pub(super) fn starting_at(next: u64) -> Self {
        Reads { rounds: BTreeMap::new(), next }
    }
}

impl<S: Storage> Node<S> {
    pub(super) fn start_read(&mut self, req: ReqKey, key: String, change: Change, op: OpId, now: Instant) {
        let p = partition_of(key.as_bytes(), self.map.partitions());
        let config = self.map.config(p);
        let epoch = self.map.epoch_ref(p);
        self.reads.next += 1;
        let id = self.reads.next;
        let members = config.acceptors();
        let round = ReadRound {
            req,
            key: key.clone(),
            change,
            op,
            members: members.clone(),
            quorum: config.quorum_set(),
            views: Vec::new(),
            viewed: MemberSet::EMPTY,
            refused: MemberSet::EMPTY,
            timer: self.timers.set(now + self.cfg.round_timeout, Timer::Read { read: id }),
        };
        let history = matches!(round.change, Change::Versions { .. });
        self.reads.rounds.insert(id, round);
        self.send_all(&members, Message::Read { key, epoch, attempt: id, history });
    }

    pub(super) fn on_read_reply(
        &mut self,
        from: NodeId,
        key: String,
        attempt: u64,
        result: Result<ReadView, Rejection>,
        now: Instant,
    ) {
        let Some(round) = self.reads.rounds.get_mut(&attempt) else {
            return;
        };
        let Some(index) = round.members.iter().position(|m| *m == from) else {
            return;
        };
        if round.key != key || round.viewed.contains(index) || round.refused.contains(index) {
            return;
        }
        match result {
            Ok(view) => {
                round.views.push((from, view));
                round.viewed.insert(index);
                let won = if self.cfg.planted_bug == Some(PlantedBug::ReadFromOneReplica) {
                    round.viewed.len() == 1 // one view is no quorum: R5 broken on purpose
                } else {
                    round.quorum.vote(round.viewed, round.refused) == VoteResult::Won
                };
                if won {
                    self.decide_read(attempt, now);
                }
            }
            Err(rejection) => {
                round.refused.insert(index);
                let hopeless = round.quorum.vote(round.viewed, round.refused) == VoteResult::Lost;
                if let Rejection::Config(c) = rejection {
                    self.learn_config(&from, c);
                }
                if hopeless {
                    self.read_fallback(attempt, now);
                }
            }
        }
    }

    fn decide_read(&mut self, id: u64, now: Instant) {
        let Some(round) = self.reads.rounds.get(&id) else {
            return;
        };
        let views: Vec<ReadView> = round.views.iter().map(|(_, v)| v.clone()).collect();
        match proven_state(&views) {
            Some(state) => {
                let Some(round) = self.reads.rounds.remove(&id).inspect(|r| self.timers.cancel(r.timer)) else {
                    return;
                };
                self.stats.fast_reads += 1;
                self.finish(round.req, Ok(read_answer(state.as_ref(), &round.change)));
            }
            None => self.read_fallback(id, now),
        }
    }

    /// The views disagree (or no quorum answered): finish with an identity round.
    fn read_fallback(&mut self, id: u64, now: Instant) {
        let Some(round) = self.reads.rounds.remove(&id).inspect(|r| self.timers.cancel(r.timer)) else {
            return;
        };
        self.stats.read_fallbacks += 1;
        let queued = Queued {
            req: round.req,
            change: round.change,
            op: round.op,
            stamp: Stamp::default(),
            recover: None,
            orphan_until: None,
        };
        self.enqueue(round.key, queued, now);
    }

    pub(super) fn on_read_timeout(&mut self, id: u64, now: Instant) {
        if self.reads.rounds.contains_key(&id) {
            self.read_fallback(id, now);
        }
    }
}

/// The answer of a read (a change that writes nothing) on the chosen `state`.
fn read_answer(state: Option<&State>, change: &Change) -> Answer {
    match change {
        Change::Versions { number } => Answer::Versions(kv::versions(state, *number)),
        _ => match state.and_then(State::stored) {
            Some(v) => Answer::Value(v),
            None => Answer::NotFound,
        },
    }
}
