//! The copier (F3): brings every key of a partition to a majority of its new members
//! under the joint epoch.
//!
//! The copier walks the key space in pages. For a page it sends a fenced scan to every old
//! member (`Message::CopyScan`, which carries the joint config: its receiver adopts it
//! before it reads, so it can accept no more writes of the old epoch), and waits for a
//! majority of the old members. Each answer covers the keys up to its `complete_to`; the
//! page covers up to the smallest of them, and its keys are the union of the answers'
//! keys in that range: every key with any accepted state, tombstones included. Any value
//! chosen before the joint epoch sits on a majority of the old members, which meets the
//! majority that answered, so the union holds every key that has a chosen state.
//!
//! Each key of the page is then copied by an identity round at the joint epoch (the node's
//! proposer, `Work::Copy`): phase 1 on a joint quorum finds the chosen state, phase 2
//! writes it back to a joint quorum, which holds a majority of the new members.
//!
//! Keys that garbage collection removed left their aborted writes (R6) in the partition's
//! abort watermarks; the scan answers carry them, and once every key is copied the copier
//! merges their union into a majority of the new members (`Message::CopyAborts`), so a
//! write aborted before the move stays refused after it. Then [`Copier::complete`] is the
//! copy-complete mark that lets the rebalancer propose the final config (F4).

use crate::ids::{NodeId, OpId};
use crate::kv::Aborts;
use crate::message::ScanEntries;
use crate::placement::{EpochRef, PartitionConfig};
use crate::quorum::{MemberSet, QuorumSet, VoteResult};
use std::collections::BTreeSet;

/// What the copier does after a scan answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanStep {
    /// Wait for more answers.
    Wait,
    /// The page is known: copy these keys (possibly none; then call
    /// [`Copier::page_copied`] at once).
    Copy(Vec<String>),
    /// A majority of the old members cannot answer: scan the page again later.
    Retry,
}

/// One partition's copy under one joint config.
#[derive(Clone, Debug)]
pub struct Copier {
    joint: PartitionConfig,
    epoch: EpochRef,
    quorum: QuorumSet,
    /// Keys after this one remain (`None`: from the start).
    cursor: Option<String>,
    page: Option<Page>,
    /// Keys of the current page whose copy is outstanding.
    pending: BTreeSet<String>,
    /// Where the current page ends (`None`: it reaches the end of the partition).
    page_end: Option<String>,
    /// Every key is copied; the watermarks are being merged (`Some(id)`: in flight).
    keys_done: bool,
    aborts: Aborts,
    merge: Option<(u64, MemberSet)>,
    complete: bool,
    /// Keys copied so far.
    pub copied: u64,
}

#[derive(Clone, Debug)]
struct Page {
    id: u64,
    answered: MemberSet,
    refused: MemberSet,
    keys: BTreeSet<String>,
    /// The smallest `complete_to` so far; `None` inside: complete.
    end: Option<Option<String>>,
}

impl Copier {
    /// A copier for `joint`, which must be a joint config.
    pub fn new(joint: PartitionConfig) -> Self {
        assert!(joint.is_joint(), "only a joint epoch is copied");
        let epoch = joint.epoch_ref();
        let quorum = QuorumSet::majority(joint.members.len());
        Copier {
            joint,
            epoch,
            quorum,
            cursor: None,
            page: None,
            pending: BTreeSet::new(),
            page_end: None,
            keys_done: false,
            aborts: Aborts::default(),
            merge: None,
            complete: false,
            copied: 0,
        }
    }

    /// The joint config being copied.
    pub fn joint(&self) -> &PartitionConfig {
        &self.joint
    }

    /// Its `(epoch, hash)`.
    pub fn epoch(&self) -> EpochRef {
        self.epoch
    }

    /// The copy-complete mark (F4): every key of the partition was copied.
    pub fn complete(&self) -> bool {
        self.complete
    }

    /// Whether a scan is waiting for answers.
    pub fn scanning(&self) -> bool {
        self.page.is_some()
    }

    /// Whether every key is copied and the watermarks remain to merge.
    pub fn keys_done(&self) -> bool {
        self.keys_done && !self.complete
    }

    /// Starts merging the watermarks as request `id`: returns the new members to send them
    /// to, and the watermarks.
    pub fn start_merge(&mut self, id: u64) -> (Vec<NodeId>, Vec<OpId>) {
        assert!(self.keys_done, "the watermarks are merged after every key is copied");
        self.merge = Some((id, MemberSet::EMPTY));
        (self.joint.next.clone(), self.aborts.below.clone())
    }

    /// A new member acknowledged merge `id`. Returns true once a majority of the new
    /// members did: the copy is complete.
    pub fn on_merge_ack(&mut self, from: &NodeId, id: u64) -> bool {
        let Some(i) = self.joint.next.iter().position(|m| m == from) else { return false };
        let Some((merge, acked)) = self.merge.as_mut().filter(|(m, _)| *m == id) else { return false };
        let _ = merge;
        acked.insert(i);
        if QuorumSet::majority(self.joint.next.len()).is_quorum(*acked) {
            self.merge = None;
            self.complete = true;
        }
        self.complete
    }

    /// The merge in flight, if any.
    pub fn merge_id(&self) -> Option<u64> {
        self.merge.as_ref().map(|(id, _)| *id)
    }

    /// The merge timed out: merge again.
    pub fn merge_timed_out(&mut self, id: u64) {
        if self.merge_id() == Some(id) {
            self.merge = None;
        }
    }

    /// Whether key copies are outstanding.
    pub fn copying(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Starts scanning the next page as scan `id`: returns the old members to ask and where
    /// the page starts (`(start, exclusive)`).
    pub fn start_page(&mut self, id: u64) -> (Vec<NodeId>, String, bool) {
        assert!(!self.keys_done && self.pending.is_empty(), "a page starts after the previous one is copied");
        self.page =
            Some(Page { id, answered: MemberSet::EMPTY, refused: MemberSet::EMPTY, keys: BTreeSet::new(), end: None });
        let (start, exclusive) = match &self.cursor {
            Some(k) => (k.clone(), true),
            None => (String::new(), false),
        };
        (self.joint.members.clone(), start, exclusive)
    }

    /// The id of the scan in flight.
    pub fn page_id(&self) -> Option<u64> {
        self.page.as_ref().map(|p| p.id)
    }

    /// An old member's answer to scan `id` with its partition watermarks (`Err` if it
    /// refused or could not read).
    pub fn on_scan_reply(&mut self, from: &NodeId, id: u64, result: Result<(ScanEntries, Vec<OpId>), ()>) -> ScanStep {
        let Some(i) = self.joint.members.iter().position(|m| m == from) else { return ScanStep::Wait };
        let Some(page) = self.page.as_mut().filter(|p| p.id == id) else { return ScanStep::Wait };
        if page.answered.contains(i) || page.refused.contains(i) {
            return ScanStep::Wait;
        }
        match result {
            Ok((entries, aborted)) => {
                for op in aborted {
                    self.aborts.raise(op);
                }
                page.answered.insert(i);
                let end = entries.complete_to.clone();
                page.keys.extend(entries.entries.into_iter().map(|(k, _)| k));
                page.end = Some(match (page.end.take(), end) {
                    (None, e) => e,
                    (Some(None), e) | (Some(e), None) => e,
                    (Some(Some(a)), Some(b)) => Some(a.min(b)),
                });
            }
            Err(()) => {
                page.refused.insert(i);
            }
        }
        match self.quorum.vote(page.answered, page.refused) {
            VoteResult::Pending => ScanStep::Wait,
            VoteResult::Lost => {
                self.page = None;
                ScanStep::Retry
            }
            VoteResult::Won => {
                // Present: matched above.
                let page = self.page.take().expect("page in flight");
                let end = page.end.flatten();
                let keys: Vec<String> = page.keys.into_iter().filter(|k| end.as_ref().is_none_or(|e| k <= e)).collect();
                self.pending = keys.iter().cloned().collect();
                self.page_end = end;
                ScanStep::Copy(keys)
            }
        }
    }

    /// Abandons the scan in flight (it timed out): scan the page again.
    pub fn scan_timed_out(&mut self, id: u64) -> bool {
        if self.page_id() == Some(id) {
            self.page = None;
            return true;
        }
        false
    }

    /// `key` was copied. Returns true when that finished the page.
    pub fn key_copied(&mut self, key: &str) -> bool {
        if self.pending.remove(key) {
            self.copied += 1;
            if self.pending.is_empty() {
                self.page_copied();
                return true;
            }
        }
        false
    }

    /// Every key of the current page is copied: move the cursor, or go on to merging the
    /// watermarks.
    pub fn page_copied(&mut self) {
        assert!(self.pending.is_empty(), "keys of the page are still being copied");
        match self.page_end.take() {
            Some(end) => self.cursor = Some(end),
            None => self.keys_done = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paxos::acceptor::ReadView;

    fn nodes(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|n| NodeId::initial(*n)).collect()
    }

    fn entries(keys: &[&str], complete_to: Option<&str>) -> (ScanEntries, Vec<OpId>) {
        let view = ReadView { accepted: None, committed: false, floor: Default::default(), aborted: Vec::new() };
        let entries = ScanEntries {
            entries: keys.iter().map(|k| (k.to_string(), view.clone())).collect(),
            complete_to: complete_to.map(str::to_string),
        };
        (entries, Vec::new())
    }

    #[test]
    fn a_page_is_the_union_of_a_majority_up_to_the_shortest_answer() {
        let joint = PartitionConfig::founding(0, nodes(&["a", "b", "c"])).joint_to(nodes(&["d"]));
        let [a, b, c] = [joint.members[0].clone(), joint.members[1].clone(), joint.members[2].clone()];
        let mut copier = Copier::new(joint);
        let (targets, start, exclusive) = copier.start_page(7);
        assert_eq!((targets.len(), start.as_str(), exclusive), (3, "", false));
        assert_eq!(copier.on_scan_reply(&a, 7, Ok(entries(&["k1", "k3", "k5"], Some("k5")))), ScanStep::Wait);
        assert_eq!(copier.on_scan_reply(&a, 7, Ok(entries(&["zz"], None))), ScanStep::Wait, "counted once");
        assert_eq!(copier.on_scan_reply(&c, 6, Ok(entries(&["zz"], None))), ScanStep::Wait, "another scan");
        let step = copier.on_scan_reply(&b, 7, Ok(entries(&["k2", "k4", "k9"], None)));
        assert_eq!(step, ScanStep::Copy(vec!["k1".into(), "k2".into(), "k3".into(), "k4".into(), "k5".into()]));
        for k in ["k1", "k2", "k3", "k4"] {
            assert!(!copier.key_copied(k));
        }
        assert!(copier.key_copied("k5"));
        assert!(!copier.complete());
        let (_, start, exclusive) = copier.start_page(8);
        assert_eq!((start.as_str(), exclusive), ("k5", true));
        assert_eq!(copier.on_scan_reply(&a, 8, Err(())), ScanStep::Wait);
        assert_eq!(copier.on_scan_reply(&b, 8, Ok(entries(&["k9"], None))), ScanStep::Wait);
        assert_eq!(copier.on_scan_reply(&c, 8, Ok(entries(&[], None))), ScanStep::Copy(vec!["k9".into()]));
        assert!(copier.key_copied("k9"));
        assert!(copier.keys_done() && !copier.complete(), "the last page reached the end");
        let (to, _) = copier.start_merge(3);
        assert!(copier.on_merge_ack(&to[0], 3));
        assert!(copier.complete(), "the only new member acknowledged the watermarks");
    }

    #[test]
    fn the_watermarks_of_every_answer_reach_a_majority_of_the_new_members() {
        let joint = PartitionConfig::founding(0, nodes(&["a", "b", "c"])).joint_to(nodes(&["a", "d", "e"]));
        let old = joint.members.clone();
        let mut copier = Copier::new(joint);
        copier.start_page(1);
        let op = |node, seq| OpId { node: crate::ids::NodeTag(node), restart: 1, seq };
        let (e, _) = entries(&[], None);
        assert_eq!(copier.on_scan_reply(&old[0], 1, Ok((e.clone(), vec![op(7, 3)]))), ScanStep::Wait);
        assert_eq!(copier.on_scan_reply(&old[2], 1, Ok((e, vec![op(7, 5), op(8, 1)]))), ScanStep::Copy(vec![]));
        copier.page_copied();
        let (to, aborted) = copier.start_merge(2);
        assert_eq!(to, nodes(&["a", "d", "e"]));
        assert_eq!(aborted, vec![op(7, 5), op(8, 1)], "the highest watermark per node");
        assert!(!copier.on_merge_ack(&to[1], 2));
        assert!(!copier.on_merge_ack(&to[1], 2), "counted once");
        assert!(!copier.on_merge_ack(&old[1], 2), "an old member does not count");
        assert!(copier.on_merge_ack(&to[2], 2));
    }

    #[test]
    fn a_page_that_a_majority_refuses_is_scanned_again() {
        let joint = PartitionConfig::founding(0, nodes(&["a", "b", "c"])).joint_to(nodes(&["d"]));
        let members = joint.members.clone();
        let mut copier = Copier::new(joint);
        copier.start_page(1);
        assert_eq!(copier.on_scan_reply(&members[0], 1, Err(())), ScanStep::Wait);
        assert_eq!(copier.on_scan_reply(&members[1], 1, Err(())), ScanStep::Retry);
        assert!(!copier.scanning());
        copier.start_page(2);
        assert_eq!(copier.on_scan_reply(&members[0], 2, Ok(entries(&[], None))), ScanStep::Wait);
        assert_eq!(copier.on_scan_reply(&members[2], 2, Ok(entries(&[], None))), ScanStep::Copy(vec![]));
        copier.page_copied();
        assert!(copier.keys_done());
    }
}
