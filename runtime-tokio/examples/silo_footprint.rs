//! How much disk the redb silo takes for a given amount of register data, and how the
//! checkpoint interval changes it (docs/PERFORMANCE.md, "Footprint"). Writes `keys`
//! registers of 172 bytes (a 16-byte key's encoded register with a 100-byte value) in a
//! shuffled order, in groups of 64 writes, `passes` times over, through the write-ahead
//! log, and prints the file's size on disk after each pass; then the database's size once
//! redb has compacted it (what the table itself needs).
//!
//!   cargo run --release -p memo-node --example silo_footprint -- KEYS PASSES CHECKPOINT_MIB [SLICES]
//!
//! `SLICES` is the number of durable commits per checkpoint (default: the silo's).

use memo_engine::storage::{PersistBatch, Storage};
use memo_node::{RedbOptions, RedbStorage};
use std::os::unix::fs::MetadataExt;

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().expect("a number")).collect();
    let (&[keys, passes, checkpoint_mib], slices) = (args.get(..3).unwrap_or_default(), args.get(3)) else {
        panic!("usage: silo_footprint KEYS PASSES CHECKPOINT_MIB [SLICES]");
    };
    let dir = std::env::temp_dir().join(format!("memo-silo-footprint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let path = dir.join("data.redb");
    let mut options = RedbOptions { wal_checkpoint_bytes: checkpoint_mib << 20, ..RedbOptions::default() };
    if let Some(&slices) = slices {
        options.checkpoint_slices = slices as usize;
    }
    let silo = RedbStorage::create(&path, &options).expect("created");
    // A fixed permutation (multiplicative, so every key appears once per pass).
    let order: Vec<u64> = (0..keys).map(|i| (i * 2_654_435_761) % keys).collect();
    let mut batch_id = 0;
    for pass in 0..passes {
        for group in order.chunks(64) {
            batch_id += 1;
            let writes = group
                .iter()
                .map(|&k| {
                    let mut key = vec![0u8; 5];
                    key.extend_from_slice(format!("{k:016}").as_bytes());
                    (key, Some(vec![(pass as u8).wrapping_add(k as u8); 151]))
                })
                .collect();
            silo.commit(&[PersistBatch { id: batch_id, writes }]).expect("committed");
        }
        let on_disk: u64 = std::fs::read_dir(&dir)
            .expect("the dir")
            .map(|e| e.expect("an entry").metadata().expect("metadata").blocks() * 512)
            .sum();
        let live = keys * 172;
        println!(
            "keys {keys} checkpoint {checkpoint_mib} MiB in {} slices, pass {pass}: on disk {:.1} MiB, {:.2}x the {:.1} MiB of registers",
            options.checkpoint_slices,
            on_disk as f64 / 1048576.0,
            on_disk as f64 / live as f64,
            live as f64 / 1048576.0,
        );
    }
    silo.close().expect("closed");
    let mut db = redb::Database::open(&path).expect("reopened");
    while db.compact().expect("compacted") {}
    drop(db);
    let compacted = std::fs::metadata(&path).expect("metadata").blocks() * 512;
    println!("the database compacted: {:.1} MiB", compacted as f64 / 1048576.0);
    std::fs::remove_dir_all(&dir).expect("removed");
}
