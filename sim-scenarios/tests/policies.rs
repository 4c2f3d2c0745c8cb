//! Value policies under faults: the policy table's rules decide how each key's values are
//! stored (docs/OPERATIONS.md, "Policies" and "Encryption").
#![cfg(madsim)]

use memo_sim::{catalog, check};

memo_sim::child_entry!();

/// Premise: before the workload, the policy table gets three rules through node 1: `k0`
/// zstd and encrypted, `k1` lz4, `k2` encrypted only; other keys stay plain. Every value
/// carries 200 bytes of padding, so compression engages. Crashes, power cuts, partitions
/// and pauses then play out while clients write and read through every node; restarted
/// nodes refresh the table from the cluster. Every answer stays linearizable (a value a
/// read returns was written, and in the register's order), and after the final heal the
/// replicas' registers, decoded by their own encoding, hold each key's final value.
#[madsim::test]
async fn values_under_every_policy_stay_linearizable_through_faults() {
    check(catalog::values_under_every_policy_stay_linearizable_through_faults()).await;
}
