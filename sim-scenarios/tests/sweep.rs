//! Seed sweeps and the simulator's throughput benchmark (ignored: run on demand).
//!
//! ```text
//! MEMO_SIM_SCENARIO=swarm_any_seed_picks_the_cluster_faults_and_workload \
//! MADSIM_TEST_SEED=0 MADSIM_TEST_NUM=1000 MADSIM_TEST_JOBS=2 \
//!   cargo simtest --release -p memo-sim-scenarios --test sweep -- --ignored --nocapture
//! ```
//!
//! Unlike `MADSIM_TEST_NUM` on a scenario test, which stops at the first failing seed, a
//! sweep runs every seed (each in its own child process, `MADSIM_TEST_JOBS` at a time),
//! lists every failure with its replay command, and reports simulated client operations
//! per wall-clock second and seeds per minute.
#![cfg(madsim)]

use memo_sim::{catalog, run_seed};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

memo_sim::child_entry!();

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name} is a number")))
}

#[test]
#[ignore = "a sweep or benchmark, run on demand"]
fn sweep() {
    let name = std::env::var("MEMO_SIM_SCENARIO")
        .unwrap_or_else(|_| "swarm_any_seed_picks_the_cluster_faults_and_workload".to_string());
    let scenario = catalog::by_name(&name).unwrap_or_else(|| panic!("no scenario {name:?} in memo_sim::catalog"));
    let base = env_u64("MADSIM_TEST_SEED", 0);
    let count = env_u64("MADSIM_TEST_NUM", 100);
    let jobs = env_u64("MADSIM_TEST_JOBS", 1).max(1);
    let next = Arc::new(AtomicU64::new(base));
    let totals = Arc::new(Mutex::new((0u64, 0u64, 0f64, Vec::<String>::new(), 0u64)));
    let started = Instant::now();
    let workers: Vec<_> = (0..jobs)
        .map(|_| {
            let (scenario, next, totals) = (scenario.clone(), next.clone(), totals.clone());
            std::thread::spawn(move || {
                loop {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= base + count {
                        return;
                    }
                    let report = run_seed(&scenario, seed);
                    let mut t = totals.lock().unwrap();
                    t.0 += 1;
                    t.1 += report.counts.ops + report.counts.lists;
                    t.2 += report.simulated.as_secs_f64();
                    if !report.warnings.is_empty() {
                        let kinds: Vec<&str> = report.warnings.iter().map(|f| f.kind()).collect();
                        println!("WARNING seed {seed} ({}): {}", kinds.join(", "), report.replay_command());
                        let _ = report.write_timeline();
                        t.4 += 1;
                    }
                    if !report.passed() {
                        let kinds: Vec<&str> = report.failures.iter().map(|f| f.kind()).collect();
                        println!("FAILED seed {seed} ({}): {}", kinds.join(", "), report.replay_command());
                        let _ = report.write_timeline();
                        t.3.push(format!("{seed}: {}", kinds.join(", ")));
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a sweep worker finishes");
    }
    let wall = started.elapsed().as_secs_f64();
    let (seeds, ops, simulated, failed, warned) = &*totals.lock().unwrap();
    println!(
        "\n{name}: {seeds} seeds from {base} in {wall:.1}s wall ({jobs} jobs): {:.0} seeds/min, {:.0} simulated client ops/s wall, {:.0}x real time; {} failed, {warned} with warnings",
        *seeds as f64 * 60.0 / wall,
        *ops as f64 / wall,
        simulated / wall,
        failed.len()
    );
    for f in failed {
        println!("  failed seed {f}");
    }
    assert!(failed.is_empty(), "{} of {seeds} seeds failed", failed.len());
}
