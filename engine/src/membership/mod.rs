//! Membership and failure detection: who is in the cluster, and who is live.
//!
//! # Algorithm
//!
//! SWIM (Das, Gupta, Motivala 2002) with the suspicion and infection-style dissemination
//! extensions, as implemented by the `foca` crate, which is sans-IO: it reads no clock
//! (timers are handed back as delays, and the node fires them through its own timer
//! table), draws randomness from the node's seeded RNG, and keeps its members in vectors.
//! So a simulation replays bit for bit. Each period a node probes one member; a member
//! that does not answer, directly or through `k` others, becomes *suspect*, and *down* if
//! it does not refute the suspicion (with a higher incarnation) within the suspicion
//! timeout. Updates ride on the probes.
//!
//! A member's identity ([`Member`]) is its [`NodeId`] (name and generation: a node whose
//! data directory was wiped has a new generation, so it never comes back as its old
//! self), its peer address, a `bump` that grows each time it rejoins after being declared
//! down, and `retired`, set when it leaves or is removed.
//!
//! On top of SWIM's up and down, this module keeps for each member since when it is in
//! that state, and answers which nodes are *live* for placement
//! ([`Membership::live`]): the members that are up, and those down for less than the
//! eviction delay; never a retired one. The reconfiguration planner
//! (`crate::reconfig::plan`) moves partitions towards the live set, so a crashed node's
//! partitions are re-replicated once it has been down for the eviction delay, and a node
//! that left loses its partitions at once.
//!
//! # Rules
//!
//! - **M1. Liveness is advisory.** The live set only feeds decrees (F1), which Paxos
//!   checks; two nodes that disagree about who is live at worst propose competing decrees.
//! - **M2. A retired identity stays retired.** `retired` wins every identity conflict for
//!   its node, and a retired identity is never renewed: a node that left or was removed
//!   is not live again until it joins anew with a new generation.
//! - **M3. The membership is durable** (`n/` + name in the silo): a restarted node knows
//!   whom to probe and whom it retired, without seeds.
//! - **M4. A node down for less than the eviction delay keeps its partitions**: a restart
//!   or a short partition moves no data.

use crate::ids::NodeId;
use crate::time::Instant;
use foca::{Foca, Identity, NoCustomBroadcast, Notification, PostcardCodec, Runtime};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::time::Duration;

/// A SWIM timer, fired by the node when its delay passed.
pub type SwimTimer = foca::Timer<Member>;

/// A member's identity in SWIM.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Member {
    /// The node.
    pub node: NodeId,
    /// Where its peers reach it (`HOST:PORT`).
    pub addr: String,
    /// Grows each time the node rejoins after being declared down.
    pub bump: u32,
    /// The node left, or was removed (M2).
    pub retired: bool,
}

impl Identity for Member {
    type Addr = NodeId;

    fn renew(&self) -> Option<Self> {
        (!self.retired).then(|| Member { bump: self.bump + 1, ..self.clone() })
    }

    fn addr(&self) -> NodeId {
        self.node.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.retired, self.bump) > (adversary.retired, adversary.bump)
    }
}

/// What a member is, as `memo cluster members` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    /// Up.
    Alive,
    /// Up in SWIM's view but suspected: a probe went unanswered.
    Suspect,
    /// Down for less than the eviction delay: it keeps its partitions.
    Dead,
    /// Down for longer: its partitions move elsewhere.
    Evicted,
    /// It left or was removed.
    Left,
}

/// A member as this node knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Known {
    /// Its latest identity.
    pub member: Member,
    /// Whether SWIM says it is up.
    pub up: bool,
    /// Since when (this node's clock) it is up or down.
    pub since: Instant,
}

/// Settings of the membership layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipConfig {
    /// This node's peer address, as others reach it.
    pub addr: String,
    /// How long a member must be down before its partitions move elsewhere.
    pub eviction_delay: Duration,
    /// SWIM's probe period (others scale from it).
    pub probe_period: Duration,
    /// Members to start from: the other founders with their addresses, or the seed a
    /// joining node was given. They are assumed up until SWIM says otherwise.
    pub seeds: Vec<Member>,
}

impl MembershipConfig {
    /// Defaults for a LAN: probes every second, eviction after 10 minutes.
    pub fn new(addr: impl Into<String>, seeds: Vec<Member>) -> Self {
        MembershipConfig {
            addr: addr.into(),
            eviction_delay: Duration::from_secs(600),
            probe_period: Duration::from_secs(1),
            seeds,
        }
    }
}

/// What a call into the membership asks the node to do.
#[derive(Debug, Default)]
pub struct Output {
    /// SWIM datagrams to send.
    pub sends: Vec<(NodeId, Vec<u8>)>,
    /// Timers to set: fire each after its delay.
    pub timers: Vec<(Duration, SwimTimer)>,
    /// Members whose record changed (to persist).
    pub changed: Vec<Known>,
}

#[derive(Default)]
struct Outbox {
    sends: Vec<(NodeId, Vec<u8>)>,
    timers: Vec<(Duration, SwimTimer)>,
    /// Retirements to record (from this module, not from foca).
    downs: Vec<Member>,
    defunct: bool,
}

impl Runtime<Member> for Outbox {
    fn notify(&mut self, notification: Notification<'_, Member>) {
        if let Notification::Defunct = notification {
            self.defunct = true;
        }
    }

    fn send_to(&mut self, to: Member, data: &[u8]) {
        self.sends.push((to.node, data.to_vec()));
    }

    fn submit_after(&mut self, event: SwimTimer, after: Duration) {
        self.timers.push((after, event));
    }
}

/// The membership state machine (see the module docs).
pub struct Membership {
    me: Member,
    foca: Foca<Member, PostcardCodec, ChaCha8Rng, NoCustomBroadcast>,
    known: BTreeMap<NodeId, Known>,
    cfg: MembershipConfig,
}

/// Largest SWIM datagram accepted, in bytes.
pub const SWIM_BYTES_MAX: usize = 64 * 1024;

impl Membership {
    /// A node's membership: `me` (its identity), `restored` (the durable record, M3),
    /// seeded RNG. Returns it with the first outputs (announcements to the seeds).
    pub fn new(me: Member, restored: Vec<Known>, cfg: MembershipConfig, seed: u64, now: Instant) -> (Self, Output) {
        let mut foca_cfg = foca::Config::simple();
        foca_cfg.probe_period = cfg.probe_period;
        foca_cfg.probe_rtt = cfg.probe_period / 2;
        foca_cfg.suspect_to_down_after = cfg.probe_period * 3;
        foca_cfg.remove_down_after = Some(Duration::from_secs(24 * 3600));
        foca_cfg.max_packet_size = NonZeroUsize::new(SWIM_BYTES_MAX / 4).expect("non-zero");
        // Extensions: down members are told, and re-announced to, so a partition heals by
        // itself; updates also spread by periodic gossip, not only on probes.
        foca_cfg.notify_down_members = true;
        let every = |n: u32, members: usize| foca::PeriodicParams {
            frequency: cfg.probe_period * n,
            num_members: NonZeroUsize::new(members).expect("non-zero"),
        };
        foca_cfg.periodic_announce = Some(every(10, 1));
        foca_cfg.periodic_announce_to_down_members = Some(every(10, 1));
        foca_cfg.periodic_gossip = Some(every(1, 3));
        let foca = Foca::new(me.clone(), foca_cfg, ChaCha8Rng::seed_from_u64(seed), PostcardCodec);
        let mut m = Membership { me: me.clone(), foca, known: BTreeMap::new(), cfg };
        m.known.insert(me.node.clone(), Known { member: me, up: true, since: now });
        let mut out = Outbox::default();
        for k in restored {
            if k.member.node == m.me.node {
                continue;
            }
            m.known.insert(k.member.node.clone(), Known { since: now, ..k });
        }
        // Members restored from the record are probed like any other (so one that died
        // meanwhile is found down), without telling the cluster what may be stale.
        let restored: Vec<foca::Member<Member>> = m
            .known
            .values()
            .filter(|k| k.member.node != m.me.node && !k.member.retired)
            .map(|k| foca::Member::new(k.member.clone(), 0, foca::State::Alive))
            .collect();
        let _ = m.foca.apply_many(restored.into_iter(), false, &mut out);
        let mut seeds: Vec<Member> = m.cfg.seeds.clone();
        seeds.extend(
            m.known.values().filter(|k| k.member.node != m.me.node && !k.member.retired).map(|k| k.member.clone()),
        );
        seeds.sort();
        seeds.dedup_by(|a, b| a.node == b.node);
        for s in seeds {
            if s.node != m.me.node {
                // Errors only mean "cannot announce to this one now"; probing goes on.
                let _ = m.foca.announce(s, &mut out);
            }
        }
        let output = m.absorb(out, now);
        (m, output)
    }

    /// This node's identity.
    pub fn me(&self) -> &Member {
        &self.me
    }

    /// Called periodically: while this node knows no other member (its first
    /// announcements were lost, or every seed was down), it announces itself to its seeds
    /// again.
    pub fn tick(&mut self, now: Instant) -> Output {
        if self.me.retired || self.foca.iter_members().next().is_some() {
            return Output::default();
        }
        let mut out = Outbox::default();
        for s in self.cfg.seeds.clone() {
            if s.node != self.me.node {
                let _ = self.foca.announce(s, &mut out);
            }
        }
        self.absorb(out, now)
    }

    /// A SWIM datagram from a peer.
    pub fn handle_data(&mut self, data: &[u8], now: Instant) -> Result<Output, String> {
        if data.len() > SWIM_BYTES_MAX {
            return Err(format!("SWIM datagram of {} bytes is over the limit", data.len()));
        }
        let mut out = Outbox::default();
        let result = self.foca.handle_data(data, &mut out).map_err(|e| e.to_string());
        let output = self.absorb(out, now);
        result.map(|()| output)
    }

    /// A SWIM timer fired.
    pub fn handle_timer(&mut self, timer: SwimTimer, now: Instant) -> Output {
        let mut out = Outbox::default();
        let _ = self.foca.handle_timer(timer, &mut out);
        self.absorb(out, now)
    }

    /// This node leaves: it retires its identity and tells the cluster (M2). SWIM sees it
    /// go down; the retirement itself spreads with the partition map's gossip
    /// ([`Membership::retired`], [`Membership::retire`]), so it reaches every member even
    /// if the leave's own datagrams are lost.
    pub fn leave(&mut self, now: Instant) -> Output {
        let mut out = Outbox::default();
        let _ = self.foca.leave_cluster(&mut out);
        self.me.retired = true;
        let me = self.me.clone();
        self.known.insert(me.node.clone(), Known { member: me.clone(), up: false, since: now });
        let mut output = self.absorb(out, now);
        output.changed.push(Known { member: me, up: false, since: now });
        output
    }

    /// Removes `node` at once (the operator's word replaces the eviction delay). Refused
    /// for an unknown node, this node (it leaves instead), and one that is up.
    pub fn remove(&mut self, node: &NodeId, now: Instant) -> Result<Output, String> {
        if *node == self.me.node {
            return Err("a node does not remove itself: ask it to leave".into());
        }
        let Some(k) = self.known.get(node) else {
            return Err(format!("no member {node}"));
        };
        if k.member.retired {
            return Ok(Output::default());
        }
        if k.up {
            return Err(format!("{node} is up: ask it to leave, or stop it first"));
        }
        let member = k.member.clone();
        Ok(self.retire(member, now))
    }

    /// `member` left or was removed, as a peer reports (M2): it is not live again.
    pub fn retire(&mut self, member: Member, now: Instant) -> Output {
        if member.node == self.me.node {
            return Output::default();
        }
        let mut out = Outbox::default();
        out.downs.push(Member { retired: true, ..member });
        self.absorb(out, now)
    }

    /// SWIM's own view of the members (for test failures).
    pub fn swim_view(&self) -> String {
        let view: Vec<String> = self
            .foca
            .iter_membership_state()
            .map(|m| format!("{}.{}:{:?}@{}", m.id().node.name, m.id().bump, m.state(), m.incarnation()))
            .collect();
        format!(
            "{view:?} known {:?}",
            self.known
                .values()
                .map(|k| format!("{}.{} up={}", k.member.node.name, k.member.bump, k.up))
                .collect::<Vec<_>>()
        )
    }

    /// Every member known to have left or been removed, for gossip.
    pub fn retired(&self) -> Vec<Member> {
        self.known.values().filter(|k| k.member.retired).map(|k| k.member.clone()).collect()
    }

    /// The nodes placement may use at `now` (see the module docs).
    pub fn live(&self, now: Instant) -> Vec<NodeId> {
        self.known
            .values()
            .filter(|k| {
                self.state_of(k, now)
                    .is_some_and(|s| matches!(s, MemberState::Alive | MemberState::Suspect | MemberState::Dead))
            })
            .map(|k| k.member.node.clone())
            .collect()
    }

    /// Every member with its state.
    pub fn members(&self, now: Instant) -> Vec<(Known, MemberState)> {
        self.known.values().filter_map(|k| Some((k.clone(), self.state_of(k, now)?))).collect()
    }

    /// The peer address of `node`, if known.
    pub fn address_of(&self, node: &NodeId) -> Option<&str> {
        let seed = || self.cfg.seeds.iter().find(|s| s.node == *node);
        self.known.get(node).map(|k| &k.member).or_else(seed).map(|m| m.addr.as_str())
    }

    /// When the live set changes next without any message (a down member's eviction).
    pub fn next_eviction(&self, now: Instant) -> Option<Instant> {
        self.known
            .values()
            .filter(|k| !k.up && !k.member.retired)
            .map(|k| k.since + self.cfg.eviction_delay)
            .filter(|at| *at > now)
            .min()
    }

    fn state_of(&self, k: &Known, now: Instant) -> Option<MemberState> {
        if k.member.retired {
            return Some(MemberState::Left);
        }
        if k.up {
            let suspect = self
                .foca
                .iter_membership_state()
                .any(|m| m.id().node == k.member.node && m.state() == foca::State::Suspect);
            return Some(if suspect { MemberState::Suspect } else { MemberState::Alive });
        }
        if now.saturating_since(k.since) < self.cfg.eviction_delay {
            Some(MemberState::Dead)
        } else {
            Some(MemberState::Evicted)
        }
    }

    /// Applies what foca reported to the member records.
    fn absorb(&mut self, out: Outbox, now: Instant) -> Output {
        let mut changed = Vec::new();
        let mut record = |known: &mut BTreeMap<NodeId, Known>, member: Member, up: bool| {
            let entry = known.get(&member.node);
            // A retired identity stays retired (M2), whatever its bump; otherwise an older
            // identity never replaces a newer one.
            if let Some(e) = entry
                && (e.member.retired || (e.member.bump > member.bump && !member.retired))
            {
                return;
            }
            let same = entry.is_some_and(|e| e.up == up && e.member == member);
            if same {
                return;
            }
            let k = Known { member: member.clone(), up: up && !member.retired, since: now };
            known.insert(member.node.clone(), k.clone());
            changed.push(k);
        };
        // Retirements come from this module (leave, remove, gossip); everything else is
        // read back from SWIM's own member table, which is authoritative (foca notifies
        // only changes of its active set, so a member it first learns of as down, or
        // renames while down, would otherwise be missed).
        for m in out.downs.into_iter().filter(|m| m.retired) {
            if m.node != self.me.node {
                record(&mut self.known, m, false);
            }
        }
        let swim: Vec<(Member, bool)> =
            self.foca.iter_membership_state().map(|m| (m.id().clone(), m.state() != foca::State::Down)).collect();
        for (m, up) in swim {
            if m.node != self.me.node {
                record(&mut self.known, m, up);
            }
        }
        if out.defunct && !self.me.retired {
            // Declared down while alive: rejoin under a renewed identity (foca renews it).
            let mut rejoin = Outbox::default();
            let _ = self.foca.reuse_down_identity();
            let seeds: Vec<Member> = self
                .known
                .values()
                .filter(|k| k.up && k.member.node != self.me.node)
                .map(|k| k.member.clone())
                .collect();
            for s in seeds {
                let _ = self.foca.announce(s, &mut rejoin);
            }
            let mut more = self.absorb(rejoin, now);
            changed.append(&mut more.changed);
            let mut sends = out.sends;
            sends.append(&mut more.sends);
            let mut timers = out.timers;
            timers.append(&mut more.timers);
            return Output { sends, timers, changed };
        }
        Output { sends: out.sends, timers: out.timers, changed }
    }
}

#[cfg(test)]
mod tests;
