//! The node's side of membership: it runs [`crate::membership`]'s SWIM state machine on
//! its own timers and peer messages (`Message::Swim`), persists every member record
//! (`n/` + name, M3), learns the tags of new members, and hands the live set to the
//! rebalancer. A node bumps its SWIM identity at every start, so a restart is never
//! mistaken for the life that others may have declared down.

use super::Node;
use super::timers::Timer;
use crate::ids::NodeId;
use crate::membership::{Known, Member, MemberState, Membership, Output, SwimTimer};
use crate::message::Message;
use crate::storage::{self, Storage};
use crate::time::Instant;

/// A member as `memo cluster members` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// The node.
    pub id: NodeId,
    /// Its peer address.
    pub addr: String,
    /// Its state.
    pub state: MemberState,
    /// Partitions whose config (as this node knows it) lists it as an acceptor.
    pub partitions: u32,
}

impl<S: Storage> Node<S> {
    /// Starts SWIM if configured: restores the member records, bumps this node's identity,
    /// announces itself to the seeds and to every member it knew.
    pub(super) fn start_membership(&mut self, seed: u64, now: Instant) -> Result<(), super::StartError> {
        let Some(cfg) = self.cfg.membership.clone() else { return Ok(()) };
        let mut me = Member { node: self.cfg.me.clone(), addr: cfg.addr.clone(), bump: 0, retired: false };
        let mut restored = Vec::new();
        for (sk, bytes) in super::reconfig::scan_prefix(&self.storage, b"n/")? {
            let (member, up): (Member, bool) = postcard::from_bytes(&bytes).map_err(|e| {
                storage::StorageError(format!("corrupt member record under {:?}: {e}", String::from_utf8_lossy(&sk)))
            })?;
            if member.node == self.cfg.me {
                me.bump = member.bump;
                me.retired = member.retired;
            } else if member.node.name != self.cfg.me.name {
                self.learn_node(member.node.clone());
                restored.push(Known { member, up, since: now });
            }
        }
        if !me.retired {
            me.bump += 1;
        }
        self.persist_member(&me, !me.retired);
        let (membership, out) = Membership::new(me, restored, cfg, seed ^ 0x5357_494d, now);
        self.membership = Some(membership);
        self.apply_swim(out, now);
        Ok(())
    }

    fn persist_member(&mut self, member: &Member, up: bool) {
        let bytes = postcard::to_stdvec(&(member, up)).expect("member encodes");
        self.persist.put_raw(storage::member_key(&member.node.name), Some(bytes));
    }

    fn apply_swim(&mut self, out: Output, now: Instant) {
        for (to, data) in out.sends {
            self.send(to, Message::Swim { data }, None);
        }
        for (after, timer) in out.timers {
            self.timers.set(now + after, Timer::Swim(Box::new(timer)));
        }
        for k in out.changed {
            self.persist_member(&k.member, k.up);
            if !k.member.retired {
                self.learn_node(k.member.node.clone());
            }
        }
        self.refresh_live(now);
    }

    /// The rebalancer's tick: retries announcements while alone, refreshes the live set.
    pub(super) fn membership_tick(&mut self, now: Instant) {
        let Some(m) = self.membership.as_mut() else { return };
        let out = m.tick(now);
        self.apply_swim(out, now);
    }

    /// Hands SWIM's live set to the rebalancer if it changed.
    pub(super) fn refresh_live(&mut self, now: Instant) {
        let Some(m) = &self.membership else { return };
        let live = m.live(now);
        if live != self.live() {
            self.set_live(live, now);
        }
    }

    pub(super) fn on_swim(&mut self, data: Vec<u8>, now: Instant) {
        let Some(m) = self.membership.as_mut() else { return };
        match m.handle_data(&data, now) {
            Ok(out) => self.apply_swim(out, now),
            Err(_) => self.stats.peer_errors += 1,
        }
    }

    pub(super) fn on_swim_timer(&mut self, timer: SwimTimer, now: Instant) {
        let Some(m) = self.membership.as_mut() else { return };
        let out = m.handle_timer(timer, now);
        self.apply_swim(out, now);
    }

    /// Members this node knows retired, for the map digest (bounded).
    pub(super) fn retired_gossip(&self) -> Vec<Member> {
        let mut retired = self.membership.as_ref().map(Membership::retired).unwrap_or_default();
        retired.truncate(crate::node::RETIRED_GOSSIP_MAX);
        retired
    }

    /// Retirements a peer gossiped.
    pub(super) fn on_retired(&mut self, retired: Vec<Member>, now: Instant) {
        let Some(m) = self.membership.as_mut() else { return };
        let mut changed = Vec::new();
        for member in retired {
            changed.extend(m.retire(member, now).changed);
        }
        if !changed.is_empty() {
            self.apply_swim(Output { changed, ..Output::default() }, now);
        }
    }

    /// This node leaves the cluster gracefully: it retires its identity, the others stop
    /// placing partitions on it and move its partitions away; it goes on serving them
    /// until they are gone ([`Node::has_left`]). Refused if fewer than `k` nodes would
    /// remain live, or without SWIM.
    pub fn leave(&mut self, now: Instant) -> Result<(), String> {
        let k = self.cfg.cluster.replication as usize;
        let Some(m) = self.membership.as_mut() else {
            return Err("this node runs without membership; it cannot leave".into());
        };
        if m.me().retired {
            return Ok(());
        }
        let remaining = m.live(now).len().saturating_sub(1);
        if remaining < k {
            return Err(format!("only {remaining} node(s) would remain, fewer than the replication factor {k}"));
        }
        let out = m.leave(now);
        let me = m.me().clone();
        self.persist_member(&me, false);
        self.apply_swim(out, now);
        self.drive(now);
        Ok(())
    }

    /// Removes a node that is down, at once (the operator's word replaces the eviction
    /// delay). Refused for an unknown node, one that is up, this node, or if fewer than
    /// `k` nodes would remain live.
    pub fn remove(&mut self, node: &NodeId, now: Instant) -> Result<(), String> {
        let k = self.cfg.cluster.replication as usize;
        let Some(m) = self.membership.as_mut() else {
            return Err("this node runs without membership; it cannot remove members".into());
        };
        let live = m.live(now);
        let remaining = live.iter().filter(|n| *n != node).count();
        if live.contains(node) && remaining < k {
            return Err(format!("only {remaining} node(s) would remain, fewer than the replication factor {k}"));
        }
        let out = m.remove(node, now)?;
        self.apply_swim(out, now);
        self.drive(now);
        Ok(())
    }

    /// Every member this node knows, with its state and the partitions it holds.
    pub fn members(&self, now: Instant) -> Vec<MemberInfo> {
        let Some(m) = &self.membership else {
            // Without SWIM, the members are the nodes of the partition map.
            let mut ids: Vec<NodeId> = self.map.iter().flat_map(|c| c.acceptors()).collect();
            ids.sort();
            ids.dedup();
            return ids
                .into_iter()
                .map(|id| MemberInfo {
                    partitions: self.partitions_of(&id),
                    state: MemberState::Alive,
                    addr: String::new(),
                    id,
                })
                .collect();
        };
        m.members(now)
            .into_iter()
            .map(|(k, state)| MemberInfo {
                partitions: self.partitions_of(&k.member.node),
                id: k.member.node,
                addr: k.member.addr,
                state,
            })
            .collect()
    }

    fn partitions_of(&self, node: &NodeId) -> u32 {
        self.map.iter().filter(|c| c.contains(node)).count() as u32
    }

    /// SWIM's view, for test failures.
    pub fn swim_view(&self) -> String {
        self.membership.as_ref().map(Membership::swim_view).unwrap_or_default()
    }

    /// The peer address of `node`, as membership knows it.
    pub fn address_of(&self, node: &NodeId) -> Option<&str> {
        self.membership.as_ref()?.address_of(node)
    }

    /// Whether this node left: it retired, and no partition it knows lists it any more.
    pub fn has_left(&self) -> bool {
        self.membership.as_ref().is_some_and(|m| m.me().retired) && self.partitions_of(&self.cfg.me) == 0
    }
}
