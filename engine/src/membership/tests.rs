use super::*;
use std::collections::BTreeSet;

/// A few memberships wired together: datagrams arrive 1 ms after they are sent, unless
/// their receiver is stopped.
struct Net {
    nodes: Vec<Option<Membership>>,
    events: BTreeMap<(Instant, u64), (usize, Event)>,
    seq: u64,
    now: Instant,
    stopped: BTreeSet<usize>,
}

enum Event {
    Data(Vec<u8>),
    Timer(SwimTimer),
}

fn member(i: usize) -> Member {
    Member { node: NodeId::initial(format!("n{i}")), addr: format!("10.0.0.{i}:7000"), bump: 0, retired: false }
}

fn cfg(seeds: Vec<Member>) -> MembershipConfig {
    MembershipConfig {
        addr: String::new(),
        eviction_delay: Duration::from_secs(30),
        probe_period: Duration::from_millis(500),
        seeds,
    }
}

impl Net {
    /// `n` founders, each seeded with the others.
    fn founders(n: usize) -> Net {
        let mut net = Net {
            nodes: Vec::new(),
            events: BTreeMap::new(),
            seq: 0,
            now: Instant::from_nanos(1),
            stopped: BTreeSet::new(),
        };
        for i in 0..n {
            let seeds = (0..n).filter(|j| *j != i).map(member).collect();
            net.start(i, seeds);
        }
        net
    }

    fn start(&mut self, i: usize, seeds: Vec<Member>) {
        let (m, out) = Membership::new(member(i), Vec::new(), cfg(seeds), i as u64 + 7, self.now);
        if self.nodes.len() <= i {
            self.nodes.resize_with(i + 1, || None);
        }
        self.nodes[i] = Some(m);
        self.apply(i, out);
    }

    fn index(node: &NodeId) -> usize {
        node.name[1..].parse().expect("n<i>")
    }

    fn apply(&mut self, _from: usize, out: Output) {
        for (to, data) in out.sends {
            self.push(self.now + Duration::from_millis(1), Self::index(&to), Event::Data(data));
        }
        for (after, timer) in out.timers {
            self.push(self.now + after, _from, Event::Timer(timer));
        }
    }

    fn push(&mut self, at: Instant, to: usize, event: Event) {
        self.seq += 1;
        self.events.insert((at, self.seq), (to, event));
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        while let Some(entry) = self.events.first_entry() {
            if entry.key().0 > until {
                break;
            }
            let ((at, _), (to, event)) = entry.remove_entry();
            self.now = at;
            if self.stopped.contains(&to) {
                continue;
            }
            let Some(m) = self.nodes.get_mut(to).and_then(Option::as_mut) else { continue };
            let now = self.now;
            let out = match event {
                Event::Data(data) => m.handle_data(&data, now).expect("well-formed datagram"),
                Event::Timer(t) => m.handle_timer(t, now),
            };
            self.apply(to, out);
        }
        self.now = until;
    }

    fn live(&self, i: usize) -> Vec<String> {
        self.nodes[i].as_ref().unwrap().live(self.now).into_iter().map(|n| n.name).collect()
    }
}

#[test]
fn founders_see_each_other_live() {
    let mut net = Net::founders(3);
    net.run_for(Duration::from_secs(5));
    for i in 0..3 {
        assert_eq!(net.live(i), ["n0", "n1", "n2"], "node {i}");
    }
}

#[test]
fn a_joining_node_is_learned_through_one_seed() {
    let mut net = Net::founders(3);
    net.run_for(Duration::from_secs(2));
    net.start(3, vec![member(0)]);
    net.run_for(Duration::from_secs(10));
    for i in 0..4 {
        assert_eq!(net.live(i), ["n0", "n1", "n2", "n3"], "node {i}");
    }
    assert_eq!(net.nodes[2].as_ref().unwrap().address_of(&member(3).node), Some("10.0.0.3:7000"));
}

#[test]
fn a_stopped_node_is_dead_then_evicted_after_the_delay() {
    let mut net = Net::founders(3);
    net.run_for(Duration::from_secs(2));
    net.stopped.insert(2);
    net.run_for(Duration::from_secs(10));
    let m = net.nodes[0].as_ref().unwrap();
    let state =
        |m: &Membership, now| m.members(now).into_iter().find(|(k, _)| k.member.node.name == "n2").map(|(_, s)| s);
    assert_eq!(state(m, net.now), Some(MemberState::Dead));
    assert_eq!(net.live(0), ["n0", "n1", "n2"], "down for less than the eviction delay: still placed (M4)");
    let at = m.next_eviction(net.now).expect("an eviction is due");
    net.run_for(at.saturating_since(net.now) + Duration::from_millis(1));
    let m = net.nodes[0].as_ref().unwrap();
    assert_eq!(state(m, net.now), Some(MemberState::Evicted));
    assert_eq!(net.live(0), ["n0", "n1"]);
}

impl Net {
    /// One round of the retirement gossip the node runs with its map digest: every
    /// running member tells every other what it knows retired.
    fn gossip_retired(&mut self) {
        let now = self.now;
        let retired: Vec<Vec<Member>> =
            self.nodes.iter().map(|m| m.as_ref().map(Membership::retired).unwrap_or_default()).collect();
        for (i, m) in self.nodes.iter_mut().enumerate() {
            let Some(m) = m.as_mut() else { continue };
            for (j, list) in retired.iter().enumerate() {
                if i != j && !self.stopped.contains(&i) {
                    for r in list {
                        let _ = m.retire(r.clone(), now);
                    }
                }
            }
        }
    }
}

#[test]
fn a_node_that_leaves_is_not_live_anywhere_and_stays_retired() {
    let mut net = Net::founders(3);
    net.run_for(Duration::from_secs(2));
    let now = net.now;
    let out = net.nodes[1].as_mut().unwrap().leave(now);
    net.apply(1, out);
    net.run_for(Duration::from_secs(2));
    assert!(!net.live(1).contains(&"n1".to_string()), "the leaver does not place data on itself");
    net.gossip_retired();
    assert_eq!(net.live(0), ["n0", "n2"]);
    assert_eq!(net.live(2), ["n0", "n2"]);
    // SWIM news of the old identity does not bring it back (M2).
    let now = net.now;
    let m = net.nodes[0].as_mut().unwrap();
    let stale = foca::Member::new(Member { bump: 7, ..member(1) }, 9, foca::State::Alive);
    let mut out = Outbox::default();
    let _ = m.foca.apply_many(std::iter::once(stale), true, &mut out);
    let _ = m.absorb(out, now);
    net.run_for(Duration::from_secs(5));
    assert_eq!(net.live(0), ["n0", "n2"]);
}

#[test]
fn remove_is_refused_for_a_live_unknown_or_own_node_and_evicts_a_dead_one_at_once() {
    let mut net = Net::founders(3);
    net.run_for(Duration::from_secs(2));
    let now = net.now;
    let m = net.nodes[0].as_mut().unwrap();
    assert!(m.remove(&member(1).node, now).unwrap_err().contains("is up"));
    assert!(m.remove(&NodeId::initial("ghost"), now).unwrap_err().contains("no member"));
    assert!(m.remove(&member(0).node, now).unwrap_err().contains("leave"));
    net.stopped.insert(2);
    net.run_for(Duration::from_secs(10));
    let now = net.now;
    let out = net.nodes[0].as_mut().unwrap().remove(&member(2).node, now).expect("a dead node can be removed");
    assert_eq!(out.changed.len(), 1, "the removal is recorded");
    net.apply(0, out);
    assert_eq!(net.live(0), ["n0", "n1"], "no eviction delay after a remove");
    net.gossip_retired();
    assert_eq!(net.live(1), ["n0", "n1"], "the removal spreads");
}

#[test]
fn runs_replay_bit_for_bit() {
    let trace = || {
        let mut net = Net::founders(4);
        net.run_for(Duration::from_secs(3));
        net.stopped.insert(3);
        net.run_for(Duration::from_secs(5));
        (0..3).map(|i| format!("{:?}", net.nodes[i].as_ref().unwrap().members(net.now))).collect::<Vec<_>>()
    };
    assert_eq!(trace(), trace());
}

#[test]
fn a_leave_whose_messages_are_lost_still_ends_in_eviction() {
    let mut net = Net::founders(3);
    net.run_for(Duration::from_secs(2));
    let now = net.now;
    let out = net.nodes[1].as_mut().unwrap().leave(now);
    // Every datagram of the leave is lost; n1's process stays up (and silent).
    let _ = out;
    net.run_for(Duration::from_secs(40));
    assert_eq!(net.live(0), ["n0", "n2"]);
    assert_eq!(net.live(2), ["n0", "n2"]);
}

#[test]
fn a_restarted_node_keeps_what_it_knew_and_finds_a_dead_member_down() {
    let mut net = Net::founders(3);
    net.run_for(Duration::from_secs(2));
    net.stopped.insert(2);
    // n0 restarts from its record, which still says n2 is up.
    let restored: Vec<Known> = net.nodes[0].as_ref().unwrap().members(net.now).into_iter().map(|(k, _)| k).collect();
    let me = Member { bump: 1, ..member(0) };
    let (m, out) = Membership::new(me, restored, cfg(Vec::new()), 99, net.now);
    net.nodes[0] = Some(m);
    net.apply(0, out);
    net.run_for(Duration::from_secs(40));
    assert_eq!(net.live(0), ["n0", "n1"], "the dead member is found down and evicted");
}
