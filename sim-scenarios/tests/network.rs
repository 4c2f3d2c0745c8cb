//! A degraded network: loss and latency.
#![cfg(madsim)]

use memo_sim::{catalog, check};

memo_sim::child_entry!();

/// Premise: for seconds at a time the network drops up to 30% of packets and delays
/// messages by up to 220 ms, and some clients cannot reach some nodes; peer calls are
/// unary, so loss surfaces as failed sends (a madsim stream only delays). Rounds time out
/// and retry; clients see more UNAVAILABLE and DEADLINE_EXCEEDED, never a wrong answer.
#[madsim::test]
async fn a_lossy_slow_network_only_delays_answers() {
    check(catalog::a_lossy_slow_network_only_delays_answers()).await;
}
