//! Planning: which config a partition should move to, and who moves it.
//!
//! A partition's *desired* members are the top `k` live nodes by rendezvous score
//! ([`crate::placement::desired_members`]): a join takes about `k/n` of the replicas and
//! moves nothing else. Desired members are advisory; they only feed decrees (F1), so two
//! nodes that disagree about who is live at worst propose competing decrees, of which
//! Paxos chooses one.
//!
//! - A settled config whose members differ (as a set) from the desired ones moves to the
//!   joint config `{members, next: desired}` (F2). It never moves to fewer members than it
//!   has while fewer than `k` nodes are live: losing a node is no reason to drop a replica
//!   that cannot be placed elsewhere.
//! - A joint config finishes to `{members: next}` once its copy is complete (F4), or aborts
//!   to `{members}` when a member of `next` is no longer live.
//! - The rebalancer of a partition is the first live acceptor of its config.

use crate::ids::NodeId;
use crate::placement::{PartitionConfig, desired_members};

/// The config a partition should move to next, given the live nodes and the replication
/// factor: `None` when it is where it should be. For a joint config this is the final
/// config, or the abort back to the old members.
pub fn next_config(config: &PartitionConfig, live: &[NodeId], k: usize) -> Option<PartitionConfig> {
    if config.is_joint() {
        let target = if config.next.iter().all(|n| live.contains(n)) { &config.next } else { &config.members };
        return Some(config.settle_to(target.clone()));
    }
    let desired = desired_members(config.partition, live, k);
    if desired.len() < k.min(config.members.len()) || same_set(&desired, &config.members) {
        return None;
    }
    Some(config.joint_to(desired))
}

/// The node that moves `config`'s partition: its first live acceptor.
pub fn rebalancer<'a>(config: &'a PartitionConfig, live: &[NodeId]) -> Option<&'a NodeId> {
    config.members.iter().chain(config.next.iter()).find(|m| live.contains(m))
}

fn same_set(a: &[NodeId], b: &[NodeId]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<NodeId> {
        (0..n).map(|i| NodeId::initial(format!("n{i}"))).collect()
    }

    #[test]
    fn a_settled_partition_moves_through_a_joint_config_to_its_desired_members() {
        let live = nodes(4);
        let moved = (0..64)
            .filter_map(|p| {
                let config = PartitionConfig::founding(p, desired_members(p, &live[..3], 3));
                let joint = next_config(&config, &live, 3)?;
                assert_eq!(joint.epoch, 2);
                assert_eq!(joint.members, config.members, "a joint config keeps the old members");
                assert_eq!(joint.next, desired_members(p, &live, 3));
                assert!(joint.added().eq(std::iter::once(&live[3])), "only the new node is added");
                let fin = next_config(&joint, &live, 3).expect("a joint config always moves on");
                assert_eq!((fin.epoch, &fin.members, fin.is_joint()), (3, &joint.next, false));
                assert_eq!(fin.since(&live[3]), Some(2), "the new node's spell began at the joint epoch");
                assert_eq!(next_config(&fin, &live, 3), None, "settled where it should be");
                Some(p)
            })
            .count();
        // A fourth node takes a quarter of the 192 replicas: one replica in about 3/4 of the
        // partitions, and each such partition moves that one replica only (asserted above).
        assert!((36..=60).contains(&moved), "{moved} partitions moved");
    }

    #[test]
    fn a_joint_config_aborts_when_a_new_member_is_gone() {
        let all = nodes(4);
        let joint = PartitionConfig::founding(0, all[..3].to_vec()).joint_to(all[1..].to_vec());
        let live = all[..3].to_vec();
        let abort = next_config(&joint, &live, 3).expect("moves on");
        assert_eq!((abort.epoch, &abort.members, abort.is_joint()), (3, &all[..3].to_vec(), false));
        assert_eq!(abort.validate(1), Ok(()));
    }

    #[test]
    fn losing_a_node_never_drops_a_replica_that_has_nowhere_to_go() {
        let all = nodes(3);
        let config = PartitionConfig::founding(0, all.clone());
        assert_eq!(next_config(&config, &all[..2], 3), None);
        // With a spare node, the dead one's replica moves there.
        let mut live = all[..2].to_vec();
        live.push(NodeId::initial("spare"));
        let joint = next_config(&config, &live, 3).expect("moves to the spare");
        assert!(joint.next.contains(&live[2]) && !joint.next.contains(&all[2]));
    }

    #[test]
    fn the_rebalancer_is_the_first_live_acceptor() {
        let all = nodes(4);
        let joint = PartitionConfig::founding(0, all[..3].to_vec()).joint_to(all[1..].to_vec());
        assert_eq!(rebalancer(&joint, &all), Some(&all[0]));
        assert_eq!(rebalancer(&joint, &all[1..]), Some(&all[1]));
        assert_eq!(rebalancer(&joint, &all[3..]), Some(&all[3]));
        assert_eq!(rebalancer(&joint, &[]), None);
    }
}
