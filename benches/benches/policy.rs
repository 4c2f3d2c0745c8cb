//! What a value policy costs per value at the node that takes the write (encode) and the
//! node that answers a Fetch (decode): compression none, lz4 or zstd, with and without
//! encryption (XChaCha20-Poly1305), on a 100-byte value and a 4 KiB JSON document.
//! Everything runs in memory; no runtime, network or disk.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use memo_node::policy::crypt::Keyring;
use memo_node::policy::table::{Policies, PolicyTable};
use memo_node::policy::{Compression, ValuePolicy};
use std::hint::black_box;
use std::sync::Arc;

const KEY: &str = "bench/0123456789";
const LIMIT: usize = 1 << 20;

fn json(bytes: usize) -> Vec<u8> {
    let mut out = String::from("[");
    let mut i = 0;
    while out.len() + 80 < bytes {
        out.push_str(&format!(
            "{{\"id\":{i},\"name\":\"user-{}\",\"score\":{},\"active\":true}},",
            i % 97,
            i * 7 % 1000
        ));
        i += 1;
    }
    out.push(']');
    out.into_bytes()
}

/// Policies whose table applies `policy` to every key, with a keyring.
fn policies(policy: ValuePolicy) -> Policies {
    let keys = Keyring::parse(&format!("k1 {}\n", "ab".repeat(32)), [1; 32]).expect("a key file");
    let policies = Policies::open(ValuePolicy::default(), None, Some(Arc::new(keys))).expect("policies");
    let mut table = PolicyTable { revision: 1, ..PolicyTable::default() };
    table.set(String::new(), policy).expect("a rule");
    policies.install(table).expect("installed");
    policies
}

fn bench(c: &mut Criterion) {
    for (name, value) in [("100B", b"v".repeat(100)), ("4KiB-json", json(4096))] {
        let mut group = c.benchmark_group(format!("policy/{name}"));
        group.throughput(Throughput::Bytes(value.len() as u64));
        for compression in [Compression::None, Compression::Lz4, Compression::Zstd(3)] {
            for encrypt in [false, true] {
                let label = format!("{compression}{}", if encrypt { "+enc" } else { "" });
                let policies = policies(ValuePolicy { compression, encrypt, versions: 0 });
                group.bench_function(format!("encode/{label}"), |b| {
                    b.iter(|| policies.encode(black_box(KEY), black_box(value.clone())).expect("encodes"))
                });
                let stored = policies.encode(KEY, value.clone()).expect("encodes");
                assert_eq!(policies.decode(KEY, stored.clone(), LIMIT).expect("decodes"), value);
                group.bench_function(format!("decode/{label}"), |b| {
                    b.iter(|| policies.decode(black_box(KEY), black_box(stored.clone()), LIMIT).expect("decodes"))
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
