//! A fixed amount of engine work for instruction-count profiling: three nodes in one
//! process, `N` fast-path writes at each key's primary, messages delivered in memory and
//! batches persisted at once. Run under callgrind to compare engine changes independently
//! of machine load:
//!
//! ```sh
//! cargo build --release -p memo-engine --example fast_path_profile
//! valgrind --tool=callgrind target/release/examples/fast_path_profile 20000
//! valgrind --tool=callgrind target/release/examples/fast_path_profile 20000 read
//! ```
//!
//! With `read`, every operation after the first write of each key is a linearizable
//! Fetch (one round trip) coordinated by the key's primary instead of a write.

use memo_engine::message::Envelope;
use memo_engine::{ClusterParams, Config, Instant, MemoryStorage, Node, NodeId, Request, RequestId, Storage};
use std::collections::VecDeque;
use std::sync::Arc;

type N = Node<Arc<MemoryStorage>>;

fn main() {
    let writes: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let reads = std::env::args().nth(2).is_some_and(|m| m == "read");
    let ids: Vec<NodeId> = (0..3).map(|i| NodeId::initial(format!("n{i}"))).collect();
    let params = ClusterParams { partitions: 256, replication: 3, initial_nodes: ids.clone(), token: "p".into() };
    let storages: Vec<Arc<MemoryStorage>> = (0..3).map(|_| Arc::new(MemoryStorage::new())).collect();
    let mut nodes: Vec<N> = (0..3)
        .map(|i| {
            Node::new(Config::new(ids[i].clone(), params.clone()), storages[i].clone(), i as u64, Instant::ZERO)
                .unwrap()
        })
        .collect();
    let keys: Vec<String> = (0..1024).map(|i| format!("key-{i:011}")).collect();
    let primaries: Vec<usize> = keys
        .iter()
        .map(|k| ids.iter().position(|n| n == nodes[0].map().config_of(k.as_bytes()).primary()).unwrap())
        .collect();
    let mut net: VecDeque<(usize, Envelope)> = VecDeque::new();
    let mut now = 1_000u64;
    let mut answered = 0u64;
    for i in 0..writes + 1024 {
        let k = (i % 1024) as usize;
        now += 5_000;
        let p = primaries[k];
        let request = if reads && i >= 1024 {
            Request::fetch(keys[k].clone())
        } else {
            Request::upsert(keys[k].clone(), vec![7u8; 100])
        };
        nodes[p].handle_request(RequestId(i), request, Instant::from_nanos(now));
        let mut pending = vec![p];
        while let Some(n) = pending.pop() {
            loop {
                let mut progressed = false;
                while let Some(b) = nodes[n].poll_persist() {
                    storages[n].write(&b).unwrap();
                    nodes[n].handle_persisted(b.id, Instant::from_nanos(now));
                    progressed = true;
                }
                while let Some(t) = nodes[n].poll_transmit() {
                    let to = ids.iter().position(|x| x == t.to()).unwrap();
                    net.push_back((to, t.envelope));
                    progressed = true;
                }
                while nodes[n].poll_reply().is_some() {
                    answered += 1;
                }
                if !progressed {
                    break;
                }
            }
            while let Some((to, env)) = net.pop_front() {
                nodes[to].handle_envelope(env, Instant::from_nanos(now)).unwrap();
                pending.push(to);
            }
        }
    }
    assert_eq!(answered, writes + 1024);
    let fast: u64 = nodes.iter().map(|n| n.stats().fast_rounds).sum();
    println!("{answered} writes answered, {fast} on the fast path");
}
