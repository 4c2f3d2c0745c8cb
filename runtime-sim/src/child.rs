//! Every seed runs in a fresh child process, so that a seed replays the same way
//! wherever it runs: alone, in a `MADSIM_TEST_NUM` sweep, in a loop of seeds, or in a
//! suite whose tests run on parallel threads.
//!
//! Why: memo-node's event loop and peer links use `tokio::select!`, which polls its
//! branches in a random order drawn from tokio's thread-local `FastRand` (madsim-tokio
//! re-exports the real macro). That generator is seeded from
//! `RandomState::new().hash_one(COUNTER)`, where `COUNTER` is a process-global counter
//! bumped each time a thread (or runtime) seeds one. The simulator's seed does not reach
//! it, so the k-th simulation of a process (or one racing other tests' threads) polls
//! differently from the first simulation of a fresh process: verified, seed 102 of a
//! `MADSIM_TEST_SEED=100 MADSIM_TEST_NUM=3` sweep hashed differently from
//! `MADSIM_TEST_SEED=102` alone. In a fresh process that runs only the child test, the
//! counter is in the same state every time.
//!
//! The child is the same test binary, run as
//! `<binary> --exact memo_sim_child --test-threads=1 --nocapture` with the scenario's
//! name (looked up in [`crate::catalog`]), the seed and a report path in its environment.
//! Each test file that runs scenarios declares that entry with [`crate::child_entry!`].
//! The child writes its [`RunReport`] to the path; the parent reads it back (the options
//! are re-derived from the scenario and seed: they are a pure function of both).
//!
//! `MEMO_SIM_IN_PROCESS=1` skips the child (to attach a debugger, say); such runs are
//! deterministic only as the first simulation of the process.

use crate::catalog;
use crate::check::Failure;
use crate::history::Counts;
use crate::options::{Scenario, SimOptions};
use crate::run::{RunReport, run_in_fresh_runtime};
use crate::storage::DiskStats;
use std::fmt::Write as _;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The name of the child entry test ([`crate::child_entry!`]).
pub const CHILD_TEST: &str = "memo_sim_child";
/// Set to run seeds in the calling process instead of a child.
pub const ENV_IN_PROCESS: &str = "MEMO_SIM_IN_PROCESS";
const ENV_SCENARIO: &str = "MEMO_SIM_CHILD_SCENARIO";
const ENV_SEED: &str = "MEMO_SIM_CHILD_SEED";
const ENV_REPORT: &str = "MEMO_SIM_CHILD_REPORT";
const MAGIC: &str = "memo-sim-report v1";

/// Declares the test that child processes run (`memo_sim_child`). Put it once in every
/// test file that runs scenarios; outside a child it does nothing.
#[macro_export]
macro_rules! child_entry {
    () => {
        /// Runs one seed when this binary is started as a memo-sim child process; does
        /// nothing otherwise.
        #[test]
        fn memo_sim_child() {
            $crate::child::child_main();
        }
    };
}

/// Whether seeds run in the calling process ([`ENV_IN_PROCESS`]).
pub fn in_process() -> bool {
    std::env::var_os(ENV_IN_PROCESS).is_some()
}

/// The body of the child entry test.
pub fn child_main() {
    let (Ok(name), Ok(seed), Ok(path)) =
        (std::env::var(ENV_SCENARIO), std::env::var(ENV_SEED), std::env::var(ENV_REPORT))
    else {
        return;
    };
    let scenario = catalog::by_name(&name).unwrap_or_else(|| panic!("no scenario {name:?} in memo_sim::catalog"));
    let seed: u64 = seed.parse().expect("the child's seed is a number");
    let report = run_in_fresh_runtime(&scenario, seed);
    std::fs::write(&path, encode(&report)).expect("the child writes its report");
}

/// Runs `scenario` with `seed` in a child process (or in a fresh runtime of this process
/// when [`ENV_IN_PROCESS`] is set) and returns its report. A child that panicked (a
/// panic inside node code, a harness bug) yields a report with a [`Failure::Panic`].
pub fn run_seed(scenario: &Scenario, seed: u64) -> RunReport {
    if in_process() {
        return run_in_fresh_runtime(scenario, seed);
    }
    assert!(
        catalog::by_name(scenario.name).is_some(),
        "scenario {:?} is not in memo_sim::catalog, so a child process cannot rebuild it",
        scenario.name
    );
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = crate::run::timeline_dir().join("children");
    std::fs::create_dir_all(&dir).expect("the report directory can be created");
    let path = dir.join(format!(
        "{}-{}-{}-{}.report",
        scenario.name,
        seed,
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let exe = std::env::current_exe().expect("the test binary's path");
    let output = Command::new(exe)
        .args(["--exact", CHILD_TEST, "--test-threads=1", "--nocapture", "-q"])
        .env(ENV_SCENARIO, scenario.name)
        .env(ENV_SEED, seed.to_string())
        .env(ENV_REPORT, &path)
        .env_remove("MADSIM_TEST_NUM")
        .env_remove("MADSIM_TEST_CHECK_DETERMINISM")
        .output()
        .expect("the child process starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The child's own output: the options, its stats line.
    for line in stdout.lines().filter(|l| !l.is_empty() && !is_libtest_noise(l)) {
        println!("{line}");
    }
    let options = SimOptions::derive(scenario, seed);
    let text = std::fs::read_to_string(&path);
    let _ = std::fs::remove_file(&path);
    match text.ok().and_then(|t| decode(&t, options.clone())) {
        Some(report) => report,
        None => {
            let mut why = format!("the child process for seed {seed} produced no report (status {})", output.status);
            if stdout.contains("running 0 tests") {
                why.push_str("; add `memo_sim::child_entry!();` to this test file");
            }
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
            let _ = write!(why, "\n--- child stderr (last lines) ---\n");
            for line in tail.into_iter().rev() {
                let _ = writeln!(why, "{line}");
            }
            RunReport::crashed(options, Failure::Panic(why))
        }
    }
}

fn is_libtest_noise(line: &str) -> bool {
    line.starts_with("running ") || line.starts_with("test result:") || line.trim() == "." || line.starts_with("test ")
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// The report as text: numbers, failures, then the timeline.
fn encode(r: &RunReport) -> String {
    let c = &r.counts;
    let d = &r.disks;
    let mut s = format!("{MAGIC}\n");
    let _ = writeln!(s, "hash {}", r.hash);
    let _ = writeln!(s, "simulated_ns {}", r.simulated.as_nanos());
    let _ = writeln!(s, "states {}", r.states_explored);
    let _ = writeln!(s, "counts {} {} {} {} {} {}", c.ops, c.definite, c.unknown, c.lists, c.lists_ok, c.faults);
    let _ = writeln!(
        s,
        "disks {} {} {} {} {} {}",
        d.batches, d.syncs, d.crashes, d.lost_batches, d.kept_batches, d.fenced_calls
    );
    let _ = writeln!(s, "moved {} {}", r.moved.0, r.moved.1);
    for f in &r.failures {
        let _ = writeln!(s, "failure {} {}", f.tag(), escape(f.text()));
    }
    for w in &r.warnings {
        let _ = writeln!(s, "warning {} {}", w.tag(), escape(w.text()));
    }
    s.push_str("timeline\n");
    s.push_str(&r.timeline);
    s
}

fn numbers<const N: usize>(rest: &str) -> Option<[u64; N]> {
    let parsed: Vec<u64> = rest.split(' ').map(|n| n.parse().ok()).collect::<Option<_>>()?;
    parsed.try_into().ok()
}

/// Parses [`encode`]'s output.
fn decode(text: &str, options: SimOptions) -> Option<RunReport> {
    let (head, timeline) = text.split_once("\ntimeline\n")?;
    let mut lines = head.lines();
    if lines.next()? != MAGIC {
        return None;
    }
    let mut report = RunReport::crashed(options, Failure::Panic(String::new()));
    report.failures.clear();
    report.timeline = timeline.to_string();
    for line in lines {
        let (key, rest) = line.split_once(' ')?;
        match key {
            "hash" => report.hash = rest.parse().ok()?,
            "simulated_ns" => report.simulated = Duration::from_nanos(rest.parse().ok()?),
            "states" => report.states_explored = rest.parse().ok()?,
            "counts" => {
                let [ops, definite, unknown, lists, lists_ok, faults] = numbers(rest)?;
                report.counts = Counts { ops, definite, unknown, lists, lists_ok, faults };
            }
            "disks" => {
                let [batches, syncs, crashes, lost_batches, kept_batches, fenced_calls] = numbers(rest)?;
                report.disks = DiskStats { batches, syncs, crashes, lost_batches, kept_batches, fenced_calls };
            }
            "moved" => {
                let [partitions, epoch] = numbers(rest)?;
                report.moved = (u32::try_from(partitions).ok()?, epoch);
            }
            "failure" | "warning" => {
                let (tag, text) = rest.split_once(' ').unwrap_or((rest, ""));
                let finding = Failure::from_tag(tag, unescape(text))?;
                if key == "failure" { report.failures.push(finding) } else { report.warnings.push(finding) }
            }
            _ => return None,
        }
    }
    Some(report)
}
