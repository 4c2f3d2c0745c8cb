//! Write-once config decrees (F1): one Paxos instance per epoch decides the next config.
//!
//! The instance of epoch `e` runs on config `e`'s acceptors. An acceptor keeps, for the
//! instance of the epoch it holds, `promised` and `accepted` exactly as a single-decree
//! Paxos acceptor: Prepare(b) needs `b > promised`, Accept(b) needs `b >= promised`.
//! Adopting a newer config starts a fresh instance (the old one is decided).
//!
//! A proposer ([`DecreeRound`]) runs phase 1 to a quorum of config `e`, proposes the
//! highest accepted proposal it found (or its own if none), and learns the decree chosen
//! once a quorum accepted it. These types are pure: the node persists the acceptor state
//! and holds every reply until it is durable (R4).

use crate::paxos::acceptor::Refusal;
use crate::paxos::ballot::Ballot;
use crate::placement::PartitionConfig;
use crate::quorum::{MemberSet, QuorumSet, VoteResult};
use serde::{Deserialize, Serialize};

/// A proposal accepted at a ballot.
pub type AcceptedDecree = (Ballot, PartitionConfig);

/// The acceptor state of one partition's decree instance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecreeAcceptor {
    /// The epoch whose successor this instance decides.
    pub epoch: u64,
    /// Highest promised ballot.
    pub promised: Ballot,
    /// Highest accepted ballot and its proposal.
    pub accepted: Option<AcceptedDecree>,
}

impl DecreeAcceptor {
    /// A fresh instance for `epoch`.
    pub fn fresh(epoch: u64) -> Self {
        DecreeAcceptor { epoch, promised: Ballot::ZERO, accepted: None }
    }

    /// Phase 1: promise `ballot` if it is higher than every promise, reporting what was
    /// accepted.
    pub fn prepare(&mut self, ballot: Ballot) -> Result<Option<AcceptedDecree>, Refusal> {
        if ballot <= self.promised {
            return Err(Refusal::Promised(self.promised));
        }
        self.promised = ballot;
        Ok(self.accepted.clone())
    }

    /// Phase 2: accept `proposal` at `ballot` unless a higher ballot was promised. A ballot
    /// names one proposal (R1).
    pub fn accept(&mut self, ballot: Ballot, proposal: PartitionConfig) -> Result<(), Refusal> {
        if ballot < self.promised {
            return Err(Refusal::Promised(self.promised));
        }
        if let Some((b, p)) = &self.accepted
            && *b == ballot
            && *p != proposal
        {
            return Err(Refusal::BallotReused);
        }
        self.promised = ballot;
        self.accepted = Some((ballot, proposal));
        self.assert_invariants();
        Ok(())
    }

    /// Whether the instance accepted a proposal: then the epoch is fenced (F1).
    pub fn fenced(&self) -> bool {
        self.accepted.is_some()
    }

    /// `accepted <= promised`, and every proposal decides the next epoch.
    pub fn assert_invariants(&self) {
        if let Some((b, p)) = &self.accepted {
            assert!(*b <= self.promised, "decree accepted above its promise");
            assert_eq!(p.epoch, self.epoch + 1, "a decree decides the next epoch only");
        }
    }
}

/// What a proposer does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Keep waiting.
    Wait,
    /// Phase 1 won: send Accept(ballot, proposal) to every acceptor.
    Accept(PartitionConfig),
    /// The proposal is chosen.
    Chosen(PartitionConfig),
    /// The round lost (a quorum refused); retry with a higher ballot after a backoff.
    Lost,
}

/// One proposer's round in a decree instance.
#[derive(Clone, Debug)]
pub struct DecreeRound {
    /// The config whose instance this is (epoch `e`).
    pub base: PartitionConfig,
    /// This round's ballot.
    pub ballot: Ballot,
    /// What this proposer wants chosen if phase 1 finds nothing accepted.
    pub want: PartitionConfig,
    acceptors: Vec<crate::ids::NodeId>,
    quorum: QuorumSet,
    accepting: Option<PartitionConfig>,
    highest: Option<AcceptedDecree>,
    yes: MemberSet,
    no: MemberSet,
}

impl DecreeRound {
    /// A round at `ballot` in `base`'s instance, proposing `want` unless phase 1 finds an
    /// accepted proposal.
    pub fn new(base: PartitionConfig, ballot: Ballot, want: PartitionConfig) -> Self {
        assert_eq!(want.epoch, base.epoch + 1, "a decree decides the next epoch");
        assert_eq!(ballot.epoch, base.epoch, "a decree ballot belongs to its instance's epoch");
        let acceptors = base.acceptors();
        let quorum = base.quorum_set();
        DecreeRound {
            base,
            ballot,
            want,
            acceptors,
            quorum,
            accepting: None,
            highest: None,
            yes: MemberSet::EMPTY,
            no: MemberSet::EMPTY,
        }
    }

    /// The acceptors to send to.
    pub fn acceptors(&self) -> &[crate::ids::NodeId] {
        &self.acceptors
    }

    /// Whether the round is in phase 2.
    pub fn accepting(&self) -> bool {
        self.accepting.is_some()
    }

    fn index(&self, from: &crate::ids::NodeId) -> Option<usize> {
        self.acceptors.iter().position(|a| a == from)
    }

    /// A promise (or refusal) from `from` in phase 1.
    pub fn on_promise(&mut self, from: &crate::ids::NodeId, result: Result<Option<AcceptedDecree>, ()>) -> Step {
        let Some(i) = self.index(from) else { return Step::Wait };
        if self.accepting.is_some() || self.yes.contains(i) || self.no.contains(i) {
            return Step::Wait;
        }
        match result {
            Ok(accepted) => {
                self.yes.insert(i);
                if let Some((b, p)) = accepted
                    && self.highest.as_ref().is_none_or(|(hb, _)| b > *hb)
                {
                    self.highest = Some((b, p));
                }
            }
            Err(()) => {
                self.no.insert(i);
            }
        }
        match self.quorum.vote(self.yes, self.no) {
            VoteResult::Won => {
                let proposal = match &self.highest {
                    Some((_, p)) => p.clone(),
                    None => self.want.clone(),
                };
                self.accepting = Some(proposal.clone());
                self.yes = MemberSet::EMPTY;
                self.no = MemberSet::EMPTY;
                Step::Accept(proposal)
            }
            VoteResult::Lost => Step::Lost,
            VoteResult::Pending => Step::Wait,
        }
    }

    /// An Accepted (or refusal) from `from` in phase 2.
    pub fn on_accepted(&mut self, from: &crate::ids::NodeId, ok: bool) -> Step {
        let Some(i) = self.index(from) else { return Step::Wait };
        let Some(proposal) = &self.accepting else { return Step::Wait };
        if self.yes.contains(i) || self.no.contains(i) {
            return Step::Wait;
        }
        if ok {
            self.yes.insert(i);
        } else {
            self.no.insert(i);
        }
        match self.quorum.vote(self.yes, self.no) {
            VoteResult::Won => Step::Chosen(proposal.clone()),
            VoteResult::Lost => Step::Lost,
            VoteResult::Pending => Step::Wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{NodeId, NodeTag};

    fn nodes(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|n| NodeId::initial(*n)).collect()
    }

    fn ballot(epoch: u64, round: u64, node: u64) -> Ballot {
        Ballot { epoch, round, node: NodeTag(node), restart: 1 }
    }

    #[test]
    fn an_acceptor_promises_strictly_higher_and_accepts_at_or_above_its_promise() {
        let config = PartitionConfig { epoch: 2, ..PartitionConfig::founding(0, nodes(&["a", "b", "c"])) };
        let mut acc = DecreeAcceptor::fresh(1);
        assert_eq!(acc.prepare(ballot(1, 5, 1)), Ok(None));
        assert_eq!(acc.prepare(ballot(1, 5, 1)), Err(Refusal::Promised(ballot(1, 5, 1))));
        assert_eq!(acc.accept(ballot(1, 4, 9), config.clone()), Err(Refusal::Promised(ballot(1, 5, 1))));
        assert!(!acc.fenced());
        assert_eq!(acc.accept(ballot(1, 5, 1), config.clone()), Ok(()));
        assert!(acc.fenced());
        let mut other = config.clone();
        other.members.reverse();
        assert_eq!(acc.accept(ballot(1, 5, 1), other), Err(Refusal::BallotReused));
        assert_eq!(acc.prepare(ballot(1, 6, 2)), Ok(Some((ballot(1, 5, 1), config))));
    }

    #[test]
    fn a_round_proposes_the_highest_accepted_proposal_it_finds() {
        let base = PartitionConfig::founding(0, nodes(&["a", "b", "c"]));
        let mine = base.joint_to(nodes(&["a", "b", "d"]));
        let theirs = base.joint_to(nodes(&["a", "c", "e"]));
        let mut round = DecreeRound::new(base.clone(), ballot(1, 9, 1), mine.clone());
        let [a, b, _c] = [&base.members[0], &base.members[1], &base.members[2]];
        assert_eq!(round.on_promise(a, Ok(Some((ballot(1, 3, 2), theirs.clone())))), Step::Wait);
        assert_eq!(round.on_promise(a, Ok(None)), Step::Wait, "a member counts once");
        assert_eq!(round.on_promise(b, Ok(None)), Step::Accept(theirs.clone()));
        assert_eq!(round.on_accepted(a, true), Step::Wait);
        assert_eq!(round.on_accepted(b, true), Step::Chosen(theirs));

        let mut round = DecreeRound::new(base.clone(), ballot(1, 10, 1), mine.clone());
        assert_eq!(round.on_promise(a, Ok(None)), Step::Wait);
        assert_eq!(round.on_promise(b, Ok(None)), Step::Accept(mine));
        assert_eq!(round.on_accepted(a, false), Step::Wait);
        assert_eq!(round.on_accepted(b, false), Step::Lost);
    }

    #[test]
    fn a_joint_instance_needs_both_majorities() {
        let joint = PartitionConfig::founding(0, nodes(&["a", "b", "c"])).joint_to(nodes(&["c", "d", "e"]));
        let fin = joint.settle_to(nodes(&["c", "d", "e"]));
        let mut round = DecreeRound::new(joint.clone(), ballot(2, 1, 1), fin.clone());
        let all = joint.acceptors();
        assert_eq!(all.len(), 5);
        assert_eq!(round.on_promise(&all[0], Ok(None)), Step::Wait);
        assert_eq!(round.on_promise(&all[1], Ok(None)), Step::Wait, "a majority of the old members alone");
        assert_eq!(round.on_promise(&all[3], Ok(None)), Step::Wait, "one new member is not a majority of three");
        assert_eq!(round.on_promise(&all[4], Ok(None)), Step::Accept(fin));
    }
}
