//! The acceptor side of one per-key register (CASPaxos, Rystsov 2018, §2).
//!
//! Per key an acceptor holds `promised` (the highest ballot it promised not to go below),
//! `accepted` (the highest ballot it accepted with the state proposed at it) and a
//! `committed` flag (set when a Commit told it that its accepted ballot is chosen).
//!
//! Invariants and the rules they implement:
//! - `accepted.ballot <= promised` always.
//! - Prepare(b) needs `b > promised`, strictly; Accept(b) needs `b >= promised`; an
//!   acceptor that already accepted `b` with a different state refuses (R1), so one ballot
//!   names one proposal even if a buggy or restarted proposer reuses it.
//! - Accept(b, s, next) is the fast path's piggybacked promise (R3): in one change it sets
//!   `accepted := (b, s)` and `promised := max(promised, next)` and reports whether `next`
//!   was granted. The proposer only ever sends `next = b.successor()`.
//! - Commit(b, s) installs `(b, s)` if the accepted ballot is lower (the state is chosen,
//!   R7) and sets `committed` only when the accepted ballot equals `b`.
//! - A key that was garbage-collected (R8) is absent; an absent key behaves as if its
//!   promise were the partition's floor, so no ballot at or below a dropped key's promise
//!   or tombstone ballot can be accepted or promised again for it.
//!
//! These functions are pure; the node persists the resulting register and holds every
//! reply until the batch that holds it is durable (R4).

use super::ballot::Ballot;
use crate::kv::State;
use serde::{Deserialize, Serialize};

/// A ballot with the state proposed at it (`None` is an accepted "absent": an identity
/// round on a key that never held a value).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// The ballot.
    pub ballot: Ballot,
    /// The state.
    pub state: Option<State>,
}

/// The persisted acceptor state of one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    /// Highest promised ballot.
    pub promised: Ballot,
    /// Highest accepted ballot and its state.
    pub accepted: Option<Accepted>,
    /// Whether `accepted` is known to be chosen.
    pub committed: bool,
}

/// Why an acceptor refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// It promised (or holds a floor of) this higher ballot.
    Promised(Ballot),
    /// It already accepted this ballot with a different state (R1).
    BallotReused,
}

/// What an acceptor reports to a read (R5) or a scan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadView {
    /// Highest accepted ballot and state.
    pub accepted: Option<Accepted>,
    /// Whether that is known to be chosen.
    pub committed: bool,
    /// When nothing is accepted: the partition's GC floor, so a recovering proposer can
    /// tell "never written" from "collected" (R6, R8). Zero otherwise.
    pub floor: Ballot,
    /// When nothing is accepted: the partition's abort watermarks (writes aborted on keys
    /// that garbage collection removed), so a proposer never applies them to the key
    /// reborn. Empty otherwise.
    pub aborted: Vec<crate::ids::OpId>,
}

impl Register {
    /// The register of a key absent from storage, in a partition whose floor is `floor`.
    pub fn absent(floor: Ballot) -> Self {
        Register { promised: floor, accepted: None, committed: false }
    }

    /// The highest accepted ballot, if any.
    pub fn accepted_ballot(&self) -> Option<Ballot> {
        self.accepted.as_ref().map(|a| a.ballot)
    }

    /// Phase 1: promise `ballot` and report what was accepted.
    pub fn prepare(&mut self, ballot: Ballot) -> Result<ReadView, Refusal> {
        if ballot <= self.promised {
            return Err(Refusal::Promised(self.promised));
        }
        self.promised = ballot;
        self.assert_invariants();
        Ok(self.view())
    }

    /// What every transition keeps (asserted where it is kept): nothing is accepted above
    /// the promise (an acceptor never reports a state it would refuse to accept), and a
    /// committed register has an accepted state.
    fn assert_invariants(&self) {
        assert!(
            self.accepted_ballot().is_none_or(|b| b <= self.promised),
            "accepted {:?} above promised {:?}",
            self.accepted_ballot(),
            self.promised
        );
        assert!(!self.committed || self.accepted.is_some(), "committed with nothing accepted");
    }

    /// Phase 2, with the fast path's piggybacked promise of `next`. Returns whether `next`
    /// was granted.
    pub fn accept(&mut self, ballot: Ballot, state: Option<State>, next: Option<Ballot>) -> Result<bool, Refusal> {
        if ballot < self.promised {
            return Err(Refusal::Promised(self.promised));
        }
        if let Some(a) = &self.accepted {
            if a.ballot == ballot && a.state != state {
                return Err(Refusal::BallotReused);
            }
            if a.ballot == ballot {
                // A duplicate of an Accept already taken: idempotent.
                return Ok(next.is_some_and(|n| self.promised == n));
            }
        }
        self.accepted = Some(Accepted { ballot, state });
        self.committed = false;
        self.promised = self.promised.max(ballot);
        let Some(next) = next else { return Ok(false) };
        let well_formed =
            next > ballot && next.node == ballot.node && next.restart == ballot.restart && next.epoch == ballot.epoch;
        let granted = well_formed && next > self.promised;
        if granted {
            self.promised = next;
        }
        self.assert_invariants();
        Ok(granted)
    }

    /// Learns that `(ballot, state)` is chosen (R7). Returns whether the register changed.
    ///
    /// `floor` is the partition's GC floor (R8). An absent key with a Commit below the floor
    /// was dropped after that state: the Commit is ignored, or it would resurrect a
    /// collected value. Only the floor says so: an absent key also *promises* the previous
    /// life's promise ceiling after a restart, and a Commit below that is a state chosen
    /// by the others while this replica could not vote; it must be installed, or the
    /// replica never converges (simulator swarm seed 4804).
    pub fn commit(&mut self, ballot: Ballot, state: Option<State>, floor: Ballot) -> bool {
        match self.accepted_ballot() {
            Some(b) if b == ballot => {
                let changed = !self.committed;
                self.committed = true;
                changed
            }
            Some(b) if b > ballot => false,
            _ if ballot < floor && self.accepted.is_none() => {
                // Absent below the floor: the key was dropped after this state; ignore.
                false
            }
            _ => {
                self.accepted = Some(Accepted { ballot, state });
                self.committed = true;
                self.promised = self.promised.max(ballot);
                self.assert_invariants();
                true
            }
        }
    }

    /// What a read sees.
    pub fn view(&self) -> ReadView {
        ReadView {
            accepted: self.accepted.clone(),
            committed: self.committed,
            floor: Ballot::ZERO,
            aborted: Vec::new(),
        }
    }

    /// [`Register::view`], leaving out the state's version history (a read of the current
    /// value needs none, and the history can be many times the value). The read rule (R5)
    /// looks at ballots and the committed flag only, so it decides alike either way.
    pub fn view_without_history(&self) -> ReadView {
        let accepted = (self.accepted.as_ref())
            .map(|a| Accepted { ballot: a.ballot, state: a.state.as_ref().map(State::without_history) });
        ReadView { accepted, committed: self.committed, floor: Ballot::ZERO, aborted: Vec::new() }
    }

    /// Whether a Drop for `ballot` may remove this key: its accepted state is exactly the
    /// tombstone the GC round wrote at `ballot` (R8).
    pub fn droppable_at(&self, ballot: Ballot) -> bool {
        matches!(&self.accepted, Some(Accepted { ballot: b, state: Some(State::Tombstone { .. }) }) if *b == ballot)
    }

    /// The partition floor after dropping this key at `ballot`.
    pub fn floor_after_drop(&self, floor: Ballot, ballot: Ballot) -> Ballot {
        floor.max(self.promised).max(ballot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{NodeTag, OpId};
    use crate::kv::{Applied, Encoding};

    fn b(round: u64, node: u64) -> Ballot {
        Ballot { epoch: 1, round, node: NodeTag(node), restart: 1 }
    }
    fn val(s: &str) -> Option<State> {
        let op = OpId { node: NodeTag(9), restart: 1, seq: 1 };
        Some(State::Value {
            value: s.as_bytes().to_vec(),
            encoding: Encoding::PLAIN,
            recent: vec![Applied { ballot: b(1, 9), op }],
            aborted: Default::default(),
            history: None,
        })
    }

    #[test]
    fn prepare_needs_a_strictly_higher_ballot() {
        let mut r = Register::absent(Ballot::ZERO);
        assert!(r.prepare(b(1, 1)).is_ok());
        assert_eq!(r.prepare(b(1, 1)), Err(Refusal::Promised(b(1, 1))));
        assert_eq!(r.prepare(b(1, 0)), Err(Refusal::Promised(b(1, 1))));
        assert!(r.prepare(b(2, 0)).is_ok());
    }

    #[test]
    fn accept_at_the_promised_ballot_and_refuse_below() {
        let mut r = Register::absent(Ballot::ZERO);
        r.prepare(b(2, 1)).unwrap();
        assert_eq!(r.accept(b(1, 1), val("x"), None), Err(Refusal::Promised(b(2, 1))));
        assert_eq!(r.accept(b(2, 1), val("x"), None), Ok(false));
        assert_eq!(r.accepted_ballot(), Some(b(2, 1)));
    }

    #[test]
    fn a_reused_ballot_with_another_state_is_refused() {
        // R1's counterexample: a restarted proposer reissuing ballot b with a new value must
        // not overwrite what was accepted at b.
        let mut r = Register::absent(Ballot::ZERO);
        r.accept(b(5, 1), val("v1"), None).unwrap();
        assert_eq!(r.accept(b(5, 1), val("v2"), None), Err(Refusal::BallotReused));
        assert_eq!(r.accepted.as_ref().unwrap().state, val("v1"));
        // The same proposal again is idempotent.
        assert_eq!(r.accept(b(5, 1), val("v1"), None), Ok(false));
    }

    #[test]
    fn the_fast_path_promise_is_granted_once_and_fences_others() {
        let mut r = Register::absent(Ballot::ZERO);
        assert_eq!(r.accept(b(1, 1), val("a"), Some(b(2, 1))), Ok(true));
        // Another proposer between the two ballots is fenced.
        assert_eq!(r.prepare(b(1, 7)), Err(Refusal::Promised(b(2, 1))));
        // A malformed next (other node) is never granted.
        assert_eq!(r.accept(b(2, 1), val("b"), Some(b(3, 2))), Ok(false));
        // A duplicate of the first Accept arrives late: refused, the newer state stays.
        assert_eq!(r.accept(b(1, 1), val("a"), Some(b(2, 1))), Err(Refusal::Promised(b(2, 1))));
        assert_eq!(r.accepted.as_ref().unwrap().state, val("b"));
    }

    #[test]
    fn commit_installs_a_missed_state_and_marks_the_current_one() {
        // R7: a replica that missed a write converges from the Commit.
        let mut r = Register::absent(Ballot::ZERO);
        r.accept(b(1, 1), val("old"), None).unwrap();
        assert!(r.commit(b(3, 1), val("new"), Ballot::ZERO));
        assert_eq!(
            r.view(),
            ReadView {
                accepted: Some(Accepted { ballot: b(3, 1), state: val("new") }),
                committed: true,
                floor: Ballot::ZERO,
                aborted: Vec::new()
            }
        );
        // An older commit changes nothing.
        assert!(!r.commit(b(2, 1), val("older"), Ballot::ZERO));
        assert_eq!(r.accepted_ballot(), Some(b(3, 1)));
        // A higher accept clears the flag.
        r.accept(b(4, 1), val("newer"), None).unwrap();
        assert!(!r.view().committed);
    }

    #[test]
    fn a_dropped_key_keeps_its_promise_as_the_floor() {
        // R8: the floor is the max of the floor, the key's promise and the GC ballot.
        let mut r = Register::absent(Ballot::ZERO);
        r.accept(b(4, 1), Some(State::Tombstone { recent: vec![], aborted: Default::default(), history: None }), None)
            .unwrap();
        r.prepare(b(9, 2)).unwrap();
        assert!(r.droppable_at(b(4, 1)) && !r.droppable_at(b(3, 1)));
        let floor = r.floor_after_drop(b(2, 1), b(4, 1));
        assert_eq!(floor, b(9, 2));
        let mut absent = Register::absent(floor);
        assert!(absent.accept(b(8, 2), val("late"), None).is_err());
        assert!(absent.prepare(b(9, 2)).is_err());
        assert!(!absent.commit(b(5, 1), val("late"), floor));
    }

    #[test]
    fn an_absent_key_above_its_floor_installs_a_commit_below_its_promise() {
        // Swarm seed 4804: after a restart an absent key promises the previous life's
        // promise ceiling, far above the ballots of the others' rounds. Those rounds are
        // chosen without this replica; their Commit must still be installed (R7).
        let floor = b(2, 1);
        let mut absent = Register::absent(floor);
        absent.promised = b(1 << 21, 3); // the life floor
        assert!(absent.accept(b(40, 1), val("v"), None).is_err(), "the promise still refuses Accepts");
        assert!(absent.commit(b(40, 1), val("v"), floor), "the chosen state is installed");
        assert_eq!(absent.accepted_ballot(), Some(b(40, 1)));
        assert_eq!(absent.promised, b(1 << 21, 3), "the promise is kept");
        assert!(absent.view().committed);
    }

    #[test]
    fn a_view_for_a_read_of_the_value_leaves_the_history_out_and_nothing_else() {
        let mut r = Register::absent(Ballot::ZERO);
        let mut state = val("now");
        if let Some(State::Value { history, .. }) = &mut state {
            let earlier = vec![crate::kv::Version { number: 1, at_ms: 7, value: Some(crate::kv::Value::plain("old")) }];
            *history = Some(Box::new(crate::kv::History { number: 2, at_ms: 9, earlier }));
        }
        r.accept(b(4, 1), state.clone(), None).unwrap();
        let full = r.view();
        let light = r.view_without_history();
        assert_eq!(full.accepted.as_ref().and_then(|a| a.state.clone()), state);
        assert_eq!(light.accepted.as_ref().map(|a| a.ballot), full.accepted.as_ref().map(|a| a.ballot));
        assert_eq!(light.committed, full.committed);
        let light_state = light.accepted.and_then(|a| a.state).expect("a state");
        assert!(light_state.history().is_none());
        assert_eq!(light_state.stored(), state.as_ref().and_then(State::stored));
        assert_eq!(light_state.recent(), state.as_ref().map(State::recent).unwrap_or_default());
    }
}
