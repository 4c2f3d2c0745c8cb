//! Network partitions: minority, isolated primary, one-way, flapping links.
#![cfg(madsim)]

use memo_sim::{catalog, check};

memo_sim::child_entry!();

/// Premise: a minority of the nodes is cut off from the majority, again and again, while
/// clients keep writing through every node (those talking to the minority see
/// UNAVAILABLE or time out). The majority keeps serving; no acknowledged write is lost
/// and every read is linearizable.
#[madsim::test]
async fn a_minority_partition_during_writes_keeps_the_majority_linearizable() {
    check(catalog::a_minority_partition_during_writes_keeps_the_majority_linearizable()).await;
}

/// Premise: the hot key's primary (the preferred coordinator, where requests are
/// forwarded) is cut off from every other node, while clients can still reach it. Its
/// own clients get UNAVAILABLE; the other nodes stop waiting for forwards (forward
/// timeout, primary suspicion) and coordinate themselves. Nothing it answers, before or
/// after, may contradict the majority.
#[madsim::test]
async fn an_isolated_primary_is_routed_around_and_answers_nothing_stale() {
    check(catalog::an_isolated_primary_is_routed_around_and_answers_nothing_stale()).await;
}

/// Premise: links fail in one direction only (a node hears its peers but cannot answer,
/// or the reverse) and random symmetric splits come and go. Asymmetric reachability must
/// never produce two different chosen values.
#[madsim::test]
async fn one_way_and_symmetric_partitions_never_break_linearizability() {
    check(catalog::one_way_and_symmetric_partitions_never_break_linearizability()).await;
}

/// Premise: one link goes down and up every 20–400 ms for seconds at a time, with unary
/// peer calls so every flap surfaces as failed sends. Messages are lost mid-round;
/// rounds retry; nothing acknowledged is lost.
#[madsim::test]
async fn flapping_links_lose_messages_but_no_acknowledged_write() {
    check(catalog::flapping_links_lose_messages_but_no_acknowledged_write()).await;
}
