//! The linearizable read in one round trip, with no disk write (R5).
//!
//! The coordinator sends Read(key) to the members and waits for a quorum of views. If
//! every view reports the same accepted ballot `b` (or none at all), or the view with the
//! highest ballot is marked committed, that state is the answer; otherwise the read falls
//! back to an identity round through the key's register slot, which writes back.
//!
//! **Thrifty asking.** Any quorum will do, so a coordinator that is not a member of the
//! key's partition first asks only the smallest set of members that can make a quorum,
//! from a start that rotates with each read (so every replica gets read), members that
//! recently left a read unanswered last. It asks the rest when one of them refuses, or
//! when `read_hedge` passes without a quorum (the hedge; the members that had not
//! answered are then asked last for [`SLOW_MEMBER_FOR`]). With 3 replicas that is 4 peer
//! messages instead of 6, for the `1 - k/n` of the reads that enter at a node holding no
//! replica. A coordinator that is a member asks every other member, as before: asking
//! one (its own view being the quorum's other) halves its messages but, measured at 3
//! nodes under load, made each link's batches smaller than half and a read's CPU 5–30%
//! dearer (docs/PERFORMANCE.md), and a fixed choice of that one member hid a planted
//! reconfiguration bug from the simulator's reads. Which members answer changes nothing
//! below: the argument needs a quorum, any quorum.
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
use crate::placement::{EpochRef, partition_of};
use crate::quorum::{MemberSet, QuorumSet, VoteResult};
use crate::storage::Storage;
use crate::time::Instant;
use std::collections::BTreeMap;

/// How long a member that left a hedged read unanswered is asked last by later reads.
pub const SLOW_MEMBER_FOR: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Default)]
pub(super) struct Reads {
    rounds: BTreeMap<u64, ReadRound>,
    next: u64,
    /// Members that left a hedged read unanswered, and until when reads ask them last.
    slow: BTreeMap<NodeId, Instant>,
}

struct ReadRound {
    req: ReqKey,
    key: String,
    epoch: EpochRef,
    /// Members asked so far.
    asked: MemberSet,
    /// The hedge timer, while some members are not asked yet.
    hedge: Option<TimerHandle>,
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
        Reads { rounds: BTreeMap::new(), next, slow: BTreeMap::new() }
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
        let quorum = config.quorum_set();
        let asked = self.read_subset(&members, quorum, id, now);
        let hedge = (asked.len() < members.len())
            .then(|| self.timers.set(now + self.cfg.read_hedge, Timer::ReadHedge { read: id }));
        let history = matches!(change, Change::Versions { .. });
        let message = Message::Read { key: key.clone(), epoch, attempt: id, history };
        if asked.len() == members.len() {
            self.send_all(&members, message);
        } else {
            let to: Vec<NodeId> = asked.iter().map(|i| members[i].clone()).collect();
            self.send_all(&to, message);
        }
        let round = ReadRound {
            req,
            key,
            epoch,
            asked,
            hedge,
            change,
            op,
            members,
            quorum,
            views: Vec::new(),
            viewed: MemberSet::EMPTY,
            refused: MemberSet::EMPTY,
            timer: self.timers.set(now + self.cfg.round_timeout, Timer::Read { read: id }),
        };
        self.reads.rounds.insert(id, round);
    }

    /// The members a read asks first: all of them if this node is one; otherwise the
    /// smallest set that can make a quorum, from a start that rotates with `id`, slow
    /// ones last.
    fn read_subset(&self, members: &[NodeId], quorum: QuorumSet, id: u64, now: Instant) -> MemberSet {
        let n = members.len();
        if members.contains(&self.cfg.me) {
            // Measured: asking every member costs less here (see the module docs).
            return MemberSet::first(n);
        }
        let mut asked = MemberSet::EMPTY;
        let start = (id % n.max(1) as u64) as usize;
        for slow_pass in [false, true] {
            for k in 0..n {
                if quorum.is_quorum(asked) {
                    return asked;
                }
                let i = (start + k) % n;
                let slow = self.reads.slow.get(&members[i]).is_some_and(|until| *until > now);
                if slow == slow_pass {
                    asked.insert(i);
                }
            }
        }
        // Both passes together ask every member.
        asked
    }

    /// Asks the members not asked yet.
    fn ask_the_rest(&mut self, id: u64) {
        let Some(round) = self.reads.rounds.get_mut(&id) else {
            return;
        };
        if let Some(hedge) = round.hedge.take() {
            self.timers.cancel(hedge);
        }
        let rest: Vec<NodeId> = (round.members.iter().enumerate())
            .filter(|(i, _)| !round.asked.contains(*i))
            .map(|(_, m)| m.clone())
            .collect();
        round.asked = MemberSet::first(round.members.len());
        let history = matches!(round.change, Change::Versions { .. });
        let message = Message::Read { key: round.key.clone(), epoch: round.epoch, attempt: id, history };
        self.send_all(&rest, message);
    }

    /// No quorum yet after `read_hedge`: the members that have not answered are slow for a
    /// while, and the others are asked.
    pub(super) fn on_read_hedge(&mut self, id: u64, now: Instant) {
        let Some(round) = self.reads.rounds.get_mut(&id) else {
            return;
        };
        round.hedge = None;
        let answered = round.viewed.union(round.refused);
        for i in round.asked.iter().filter(|i| !answered.contains(*i)) {
            self.reads.slow.insert(round.members[i].clone(), now + SLOW_MEMBER_FOR);
        }
        self.stats.read_hedges += 1;
        self.ask_the_rest(id);
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
                let unasked = round.asked.len() < round.members.len();
                if let Rejection::Config(c) = rejection {
                    self.learn_config(&from, c);
                }
                if hopeless {
                    self.read_fallback(attempt, now);
                } else if unasked {
                    self.ask_the_rest(attempt);
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
                let Some(round) = self.remove_read(id) else {
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
        let Some(round) = self.remove_read(id) else {
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

    /// Ends a read round and its timers.
    fn remove_read(&mut self, id: u64) -> Option<ReadRound> {
        let round = self.reads.rounds.remove(&id)?;
        self.timers.cancel(round.timer);
        if let Some(hedge) = round.hedge {
            self.timers.cancel(hedge);
        }
        Some(round)
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
