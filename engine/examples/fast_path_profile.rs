//! A fixed amount of engine work for instruction-count profiling: three nodes in one
//! process, `N` fast-path writes at each key's primary, messages delivered in memory and
//! batches persisted at once ([`memo_engine::testing::Direct`]). Run under callgrind to
//! compare engine changes independently of machine load:
//!
//! ```sh
//! cargo build --release -p memo-engine --example fast_path_profile
//! valgrind --tool=callgrind target/release/examples/fast_path_profile 20000
//! valgrind --tool=callgrind target/release/examples/fast_path_profile 20000 read
//! ```
//!
//! With `read`, every operation after the first write of each key is a linearizable
//! Fetch (one round trip) coordinated by the key's primary instead of a write.

use memo_engine::testing::Direct;
use memo_engine::{Instant, Request, RequestId};

fn main() {
    let writes: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let reads = std::env::args().nth(2).is_some_and(|m| m == "read");
    let mut cluster = Direct::new(3, 256, |_| {});
    let keys: Vec<String> = (0..1024).map(|i| format!("key-{i:011}")).collect();
    let primaries: Vec<usize> = keys.iter().map(|k| cluster.primary(k)).collect();
    let mut now = 1_000u64;
    let mut answered = 0u64;
    for i in 0..writes + 1024 {
        let k = (i % 1024) as usize;
        now += 5_000;
        let request = if reads && i >= 1024 {
            Request::fetch(keys[k].clone())
        } else {
            Request::upsert(keys[k].clone(), vec![7u8; 100])
        };
        answered += cluster.run(primaries[k], RequestId(i), request, Instant::from_nanos(now)) as u64;
    }
    assert_eq!(answered, writes + 1024);
    let fast: u64 = cluster.nodes.iter().map(|n| n.stats().fast_rounds).sum();
    println!("{answered} writes answered, {fast} on the fast path");
}
