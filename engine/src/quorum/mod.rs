//! Quorums: which answers decide a phase, and when a phase can no longer be decided.
//!
//! # Algorithm
//!
//! A partition config lists its acceptors in order (primary first). A phase's answers are
//! kept as [`MemberSet`]s over that list: bit `i` is the `i`-th member. A [`QuorumSet`]
//! turns the members that said yes and those that said no into a [`VoteResult`]:
//!
//! - **`Majority(set)`**: won once more than half of `set` said yes; lost once so many said
//!   no that the others can no longer make a majority; pending otherwise. This is every
//!   quorum of a settled epoch: Paxos phases 1 and 2, the fast path's grants (R3), reads
//!   (R5), List scans (R9).
//! - **`Joint(old, new)`** (docs/PROTOCOL.md, F2): a majority of `old` *and* a majority of `new`.
//!   Won when both are won, lost when either is lost. The quorum of a joint epoch, while a
//!   partition moves from `old` to `new` members.
//! - **`Unanimous(set)`**: every member of `set` (R8: a tombstone is collected only after
//!   every member accepted it).
//!
//! # Rules
//!
//! - **Q1. Any two quorums of one quorum set intersect.** Two majorities of one set share a
//!   member; a joint quorum contains a majority of each of its configs, so it meets every
//!   quorum of either, which is what lets a joint epoch hand over from `old` to `new`
//!   without losing a chosen value. Tested exhaustively for every set of up to 7 members
//!   (`tests::any_two_quorums_intersect`).
//! - **Q2. Won and lost are final and exclusive.** More yes votes never turn a won vote
//!   into pending, more no votes never turn a lost one back, and no vote is both: a phase
//!   acts once on its outcome.
//! - **Q3. Every quorum decision of the engine goes through [`QuorumSet::vote`].** Counts
//!   compared to a number do not survive a joint config.
//!
//! A member that answers twice is counted once: sets, not counters.

use crate::config::REPLICATION_MAX;

/// A set of members of one config, by their index in the config's member list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MemberSet(u64);

// Indices are bits of a u64.
const _: () = assert!(REPLICATION_MAX <= 64);

impl MemberSet {
    /// No member.
    pub const EMPTY: MemberSet = MemberSet(0);

    /// The first `n` members: the whole of an `n`-member config.
    pub fn first(n: usize) -> MemberSet {
        assert!(n <= 64, "a config has at most 64 members");
        MemberSet(if n == 64 { u64::MAX } else { (1u64 << n) - 1 })
    }

    /// The members whose indices `indices` yields.
    pub fn of(indices: impl IntoIterator<Item = usize>) -> MemberSet {
        let mut set = MemberSet::EMPTY;
        for i in indices {
            set.insert(i);
        }
        set
    }

    /// Adds member `i`; returns whether it was new.
    pub fn insert(&mut self, i: usize) -> bool {
        assert!(i < 64, "member index {i} out of range");
        let bit = 1u64 << i;
        let new = self.0 & bit == 0;
        self.0 |= bit;
        new
    }

    /// Whether member `i` is in the set.
    pub fn contains(self, i: usize) -> bool {
        i < 64 && self.0 & (1u64 << i) != 0
    }

    /// Number of members.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The members of both sets.
    pub fn intersection(self, other: MemberSet) -> MemberSet {
        MemberSet(self.0 & other.0)
    }

    /// The members of either set.
    pub fn union(self, other: MemberSet) -> MemberSet {
        MemberSet(self.0 | other.0)
    }

    /// Whether every member of `self` is in `other`.
    pub fn is_subset(self, other: MemberSet) -> bool {
        self.0 & !other.0 == 0
    }

    /// The indices, in increasing order.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..64).filter(move |&i| self.contains(i))
    }
}

/// The outcome of a vote so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// The yes votes form a quorum.
    Won,
    /// Neither yet.
    Pending,
    /// The no votes leave no quorum possible.
    Lost,
}

/// Which sets of members form a quorum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuorumSet {
    /// More than half of the set.
    Majority(MemberSet),
    /// A majority of each of the two sets (a joint epoch: old members, new members).
    Joint(MemberSet, MemberSet),
    /// Every member of the set.
    Unanimous(MemberSet),
}

impl QuorumSet {
    /// Majorities of an `n`-member config.
    pub fn majority(n: usize) -> QuorumSet {
        QuorumSet::Majority(MemberSet::first(n))
    }

    /// Every member of an `n`-member config.
    pub fn unanimous(n: usize) -> QuorumSet {
        QuorumSet::Unanimous(MemberSet::first(n))
    }

    /// The vote, given the members that said yes and those that said no (a member in both
    /// counts as yes; members outside the set are ignored).
    pub fn vote(self, yes: MemberSet, no: MemberSet) -> VoteResult {
        match self {
            QuorumSet::Majority(set) => majority(set, yes, no),
            QuorumSet::Unanimous(set) => {
                if set.is_subset(yes) {
                    VoteResult::Won
                } else if !no.intersection(set).is_subset(yes) {
                    VoteResult::Lost
                } else {
                    VoteResult::Pending
                }
            }
            QuorumSet::Joint(a, b) => match (majority(a, yes, no), majority(b, yes, no)) {
                (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
                (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
                _ => VoteResult::Pending,
            },
        }
    }

    /// Whether `yes` forms a quorum.
    pub fn is_quorum(self, yes: MemberSet) -> bool {
        self.vote(yes, MemberSet::EMPTY) == VoteResult::Won
    }
}

fn majority(set: MemberSet, yes: MemberSet, no: MemberSet) -> VoteResult {
    let need = set.len() / 2 + 1;
    let yes = yes.intersection(set);
    let no = no.intersection(set);
    let no_only = MemberSet(no.0 & !yes.0);
    if yes.len() >= need {
        VoteResult::Won
    } else if set.len() - no_only.len() < need {
        VoteResult::Lost
    } else {
        VoteResult::Pending
    }
}

#[cfg(test)]
mod tests;
