//! Contention: many writers on one key.
#![cfg(madsim)]

use memo_sim::{catalog, check};

memo_sim::child_entry!();

/// Premise: six to eight clients write one key through every node at once, so
/// coordinators duel with ballots, fold queued requests and back off, while a minority
/// partition or a crash now and then makes outcomes unknown. One linearizable history
/// for the key, and every client still gets answers once the faults heal.
#[madsim::test]
async fn concurrent_writers_on_one_key_stay_linearizable() {
    check(catalog::concurrent_writers_on_one_key_stay_linearizable()).await;
}
