//! Reconfiguration: moving a partition from one set of members to another while clients
//! read and write it (docs/PROTOCOL.md, F1–F5).
//!
//! # Algorithm
//!
//! Every partition has a chosen config `{epoch, members, next}` (see
//! [`crate::placement::PartitionConfig`]); every data message names it by `(epoch, hash)`
//! and an acceptor refuses any other. A move from members `C` to members `C'` takes two
//! epochs:
//!
//! 1. **Joint decree.** The rebalancer proposes config `e+1 = {members: C, next: C'}` in the
//!    decree instance of epoch `e`: a write-once Paxos instance ([`decree`]) whose acceptors
//!    are config `e`'s acceptors, with config `e`'s quorums. Once chosen, it is sent to the
//!    acceptors of both configs, who adopt it.
//! 2. **Copy.** Under the joint config every quorum is a majority of `C` *and* one of `C'`.
//!    The copier ([`copy`]) asks the members of `C` for every key holding any accepted
//!    state, fencing each member at the joint epoch as it asks, until a majority of `C`
//!    answered; then it runs an identity round at the joint epoch on each key, which
//!    writes the key's chosen state (tombstones and R6 markers included) to a joint quorum,
//!    hence to a majority of `C'`.
//! 3. **Final decree.** Once the copy of the joint epoch is complete, the rebalancer
//!    proposes `e+2 = {members: C'}` in the joint epoch's decree instance (with the joint
//!    quorums). If the move cannot finish (a new member left), it proposes
//!    `e+2 = {members: C}` instead: an abort, safe because every joint write also reached
//!    a majority of `C`.
//!
//! Who rebalances a partition, and when, is [`plan`]'s business: the first live acceptor of
//! the current config, once the desired members (the top `k` live nodes by rendezvous
//! score) have differed from the current ones for the rebalance delay.
//!
//! # Rules
//!
//! - **F1. Config changes are write-once Paxos decrees.** Epoch `e → e+1` is decided by one
//!   instance run on config `e` with config `e`'s quorum set (joint quorums when `e` is
//!   joint); a proposer adopts the highest accepted proposal it finds. An acceptor that
//!   accepted a proposal for `e+1` refuses epoch-`e` data operations (`Rejection::Moving`),
//!   durably in the same batch as the accept. Enforced by [`decree::DecreeAcceptor`] and
//!   the node's epoch fence.
//! - **F2. Joint, then copy, then final.** A config's members only change through a joint
//!   config ([`plan::next_config`]).
//! - **F3. The copier reads fenced members only.** A member's scan answer counts only if
//!   it was given at the joint epoch: the scan request carries the joint config and its
//!   receiver adopts it before it reads. The copier copies the union of keys from a
//!   majority of the old members, every key with any accepted state.
//! - **F4. Finishing a joint epoch.** The final config may be proposed only after the copy
//!   of the joint epoch completed ([`copy::Copier::complete`]); the copy-complete mark is the
//!   copier's own (a rebalancer that did not copy, after a crash, copies again: the copy
//!   is idempotent). Every decree names the whole config it replaces (its `(epoch,
//!   hash)`), never only the epoch number.
//! - **F5. A member added at epoch `e` wipes the partition before it answers at `e`.** A
//!   node adopting a config in which it is an acceptor wipes its data of that partition
//!   unless it was an acceptor of the epoch just before (then its state is a lagging
//!   acceptor's, which Paxos allows): an evicted node that comes back cannot resurrect
//!   values collected while it was away.
//! - **F6. Configs only move forward.** A node adopts a config only with a higher epoch
//!   than the one it holds, and persists it before it answers at it.

pub mod copy;
pub mod decree;
pub mod plan;
