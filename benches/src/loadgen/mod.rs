//! `memo-bench`: a closed-loop gRPC load generator for memo (and etcd, for comparison).
//!
//! `--clients` tasks each send one request at a time, as fast as the answers come, over
//! `--conns` connection sets. A connection set holds one HTTP/2 connection to each
//! endpoint (like one etcd `clientv3.Client` with its round-robin balancer); client `i`
//! uses set `i % conns` and sends its requests to the endpoints in turn, starting at
//! endpoint `i`, so every endpoint gets the same share of the requests.
//!
//! Keys are the decimal index of a key, zero-padded to `--key-size` bytes, drawn
//! uniformly from `--key-space`; values are `--val-size` bytes. `get` and `mixed` write
//! every key of the key space first (the prefill, not measured) unless `--no-prefill`.
//!
//! Safety: every endpoint must be on loopback (127.0.0.0/8 or ::1), and the run is
//! bounded by `--total` or `--duration`, and always by `--max-secs` (a watchdog exits
//! the process shortly after it even if a request hangs).

pub mod cpu;
pub mod report;
pub mod safety;
pub mod target;

use clap::{Args, Parser, Subcommand};
use cpu::{CpuSample, CpuUsed};
use indicatif::{ProgressBar, ProgressStyle};
use report::{Latencies, Report, ServerCpu};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use target::{Conn, Target};

/// How much longer than --max-secs the watchdog waits before it kills the process.
const WATCHDOG_GRACE: Duration = Duration::from_secs(15);
/// How often the progress bar is updated.
const PROGRESS_TICK: Duration = Duration::from_millis(200);

/// memo-bench: drive a memo (or etcd) cluster on loopback and report latency and
/// throughput like etcd's benchmark tool.
#[derive(Debug, Parser)]
#[command(name = "memo-bench", version)]
pub struct Cli {
    #[command(flatten)]
    pub options: Options,
    #[command(subcommand)]
    pub workload: Workload,
}

/// The workload.
#[derive(Clone, Copy, Debug, Subcommand)]
pub enum Workload {
    /// Writes: memo Upsert, etcd Put.
    Put,
    /// Linearizable reads of prefilled keys: memo Fetch, etcd Range.
    Get,
    /// Reads and writes mixed at random.
    Mixed {
        /// Fraction of requests that are reads (0 to 1).
        #[arg(long, default_value_t = 0.5)]
        read_ratio: f64,
    },
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::Mixed { .. } => "mixed",
        }
    }

    fn read_ratio(self) -> f64 {
        match self {
            Workload::Put => 0.0,
            Workload::Get => 1.0,
            Workload::Mixed { read_ratio } => read_ratio,
        }
    }
}

/// Options shared by every workload (accepted before or after it).
#[derive(Clone, Debug, Args)]
pub struct Options {
    /// The system under test.
    #[arg(long, global = true, value_enum, default_value_t = Target::Memo)]
    pub target: Target,
    /// Endpoints, HOST:PORT or http://HOST:PORT, comma-separated; loopback only.
    #[arg(long, global = true, value_delimiter = ',', default_value = "127.0.0.1:7001")]
    pub endpoints: Vec<String>,
    /// Concurrent clients, each with one request in flight.
    #[arg(long, global = true, default_value_t = 1)]
    pub clients: usize,
    /// Connection sets (each has one connection per endpoint), shared by the clients.
    #[arg(long, global = true, default_value_t = 1)]
    pub conns: usize,
    /// Key size in bytes (keys are zero-padded decimal numbers).
    #[arg(long, global = true, default_value_t = 16)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, global = true, default_value_t = 100)]
    pub val_size: usize,
    /// What the value holds: the alphabet repeated, or JSON records (for compression).
    #[arg(long, global = true, value_enum, default_value_t = ValueKind::Alphabet)]
    pub value_kind: ValueKind,
    /// Number of distinct keys; each request picks one uniformly.
    #[arg(long, global = true, default_value_t = 100_000)]
    pub key_space: u64,
    /// Requests to send (default 10000 unless --duration).
    #[arg(long, global = true, conflicts_with = "duration")]
    pub total: Option<u64>,
    /// Send requests for this many seconds instead of a count.
    #[arg(long, global = true)]
    pub duration: Option<f64>,
    /// Pace the measured requests at this many per second in all (the clients share one
    /// schedule: request `i` is sent no earlier than `i / rate` seconds after the start);
    /// without it, every client sends its next request as soon as its last is answered.
    /// Latencies count from the send. Give enough clients to keep the pace: the report's
    /// requests per second says whether they did.
    #[arg(long, global = true)]
    pub rate: Option<f64>,
    /// Hard cap on the whole run, prefill included, in seconds.
    #[arg(long, global = true, default_value_t = 300.0)]
    pub max_secs: f64,
    /// Deadline of one request, in milliseconds.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Write every key of the key space before measuring (default for get and mixed).
    #[arg(long, global = true, conflicts_with = "no_prefill")]
    pub prefill: bool,
    /// Do not prefill (the keys are already there).
    #[arg(long, global = true)]
    pub no_prefill: bool,
    /// etcd only: serializable reads instead of linearizable ones.
    #[arg(long, global = true)]
    pub serializable: bool,
    /// Server processes whose CPU (utime+stime from /proc/PID/stat) to report per request.
    #[arg(long, global = true, value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// Client runtime threads: 1 is a current-thread tokio runtime.
    #[arg(long, global = true, default_value_t = 1)]
    pub threads: usize,
    /// Seed of the key and read/write choices.
    #[arg(long, global = true, default_value_t = 1)]
    pub seed: u64,
    /// Print the report as JSON on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bar (it is drawn only on a terminal anyway).
    #[arg(long, global = true)]
    pub no_progress: bool,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let (options, workload) = (cli.options, cli.workload);
    let checked = match check(&options, workload) {
        Ok(checked) => checked,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    start_watchdog(options.max_secs);
    let runtime = if options.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(options.threads).enable_all().build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options.clone(), workload, checked)) {
        Ok(report) => {
            if options.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(json) => println!("{json}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", report.to_text());
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Options after validation.
#[derive(Clone, Debug)]
pub struct Checked {
    pub endpoints: Vec<SocketAddr>,
    pub total: Option<u64>,
    pub duration: Option<Duration>,
    pub max: Duration,
    pub prefill: bool,
}

/// Validates the options; resolves and checks the endpoints (loopback only).
pub fn check(options: &Options, workload: Workload) -> Result<Checked, String> {
    if options.endpoints.is_empty() {
        return Err("no --endpoints".into());
    }
    let endpoints =
        options.endpoints.iter().map(|e| safety::loopback_endpoint(e)).collect::<Result<Vec<_>, String>>()?;
    if options.clients == 0 || options.conns == 0 {
        return Err("--clients and --conns must be at least 1".into());
    }
    if options.key_space == 0 {
        return Err("--key-space must be at least 1".into());
    }
    let digits = (options.key_space - 1).to_string().len();
    if options.key_size < digits {
        return Err(format!("--key-size {} cannot hold {} distinct keys", options.key_size, options.key_space));
    }
    let ratio = workload.read_ratio();
    if !(0.0..=1.0).contains(&ratio) {
        return Err("--read-ratio must be between 0 and 1".into());
    }
    if options.serializable && options.target != Target::Etcd {
        return Err("--serializable applies to etcd only (memo's reads are linearizable)".into());
    }
    if !(options.max_secs.is_finite() && options.max_secs > 0.0) {
        return Err("--max-secs must be positive".into());
    }
    if options.rate.is_some_and(|rate| !(rate.is_finite() && rate > 0.0)) {
        return Err("--rate must be positive".into());
    }
    let duration = match options.duration {
        Some(secs) if secs.is_finite() && secs > 0.0 => Some(Duration::from_secs_f64(secs)),
        Some(_) => return Err("--duration must be positive".into()),
        None => None,
    };
    let total = if duration.is_some() { None } else { Some(options.total.unwrap_or(10_000)) };
    let prefill = !options.no_prefill && (options.prefill || ratio > 0.0);
    Ok(Checked { endpoints, total, duration, max: Duration::from_secs_f64(options.max_secs), prefill })
}

/// Exits the process if it outlives --max-secs by [`WATCHDOG_GRACE`], whatever it is
/// doing (a hung request, a stuck server).
fn start_watchdog(max_secs: f64) {
    let limit = Duration::from_secs_f64(max_secs) + WATCHDOG_GRACE;
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("error: still running {} s after --max-secs; exiting", WATCHDOG_GRACE.as_secs());
        std::process::exit(3);
    });
}

/// What one phase (prefill or measurement) does.
#[derive(Clone, Copy)]
enum Phase {
    /// Write keys 0..n, each once.
    Prefill,
    /// The measured workload.
    Measure { read_ratio: f64 },
}

/// Shared state of a phase.
struct Shared {
    options: Options,
    phase: Phase,
    /// Requests handed out so far.
    issued: AtomicU64,
    /// Requests answered so far.
    done: AtomicU64,
    /// Requests to hand out in all (u64::MAX with a duration).
    limit: u64,
    deadline: Instant,
    capped: AtomicBool,
    value: Vec<u8>,
    /// The measured phase's start and requests per second, with `--rate`.
    pace: Option<(Instant, f64)>,
}

/// What one client saw.
#[derive(Default)]
struct ClientResult {
    all: Latencies,
    reads: Latencies,
    writes: Latencies,
    errors: BTreeMap<String, u64>,
    sent: u64,
}

/// Runs the prefill (if any) and the measured phase; returns the report.
pub async fn run(options: Options, workload: Workload, checked: Checked) -> Result<Report, String> {
    let started = Instant::now();
    let hard_deadline = started + checked.max;
    let timeout = Duration::from_millis(options.timeout_ms);
    let mut sets = Vec::with_capacity(options.conns);
    for _ in 0..options.conns {
        let mut set = Vec::with_capacity(checked.endpoints.len());
        for &addr in &checked.endpoints {
            set.push(Conn::connect(options.target, addr, timeout).await?);
        }
        sets.push(set);
    }
    let value = options.value_kind.value(options.val_size);

    let (mut prefill_keys, mut prefill_errors, mut prefill_secs) = (0, 0, 0.0);
    if checked.prefill {
        let keys = options.key_space;
        let shared = Arc::new(Shared {
            options: options.clone(),
            phase: Phase::Prefill,
            issued: AtomicU64::new(0),
            done: AtomicU64::new(0),
            limit: keys,
            deadline: hard_deadline,
            capped: AtomicBool::new(false),
            value: value.clone(),
            pace: None,
        });
        let t0 = Instant::now();
        let results = run_phase(&shared, &sets, "prefill").await?;
        prefill_secs = t0.elapsed().as_secs_f64();
        prefill_keys = results.iter().map(|r| r.sent).sum();
        prefill_errors = results.iter().map(|r| r.errors.values().sum::<u64>()).sum();
        if shared.capped.load(Ordering::Relaxed) {
            return Err(format!("--max-secs reached during the prefill ({prefill_keys} of {keys} keys written)"));
        }
    }

    let now = Instant::now();
    let deadline = checked.duration.map_or(hard_deadline, |d| (now + d).min(hard_deadline));
    let shared = Arc::new(Shared {
        options: options.clone(),
        phase: Phase::Measure { read_ratio: workload.read_ratio() },
        issued: AtomicU64::new(0),
        done: AtomicU64::new(0),
        limit: checked.total.unwrap_or(u64::MAX),
        deadline,
        capped: AtomicBool::new(false),
        value,
        pace: options.rate.map(|rate| (Instant::now(), rate)),
    });
    let ticks = cpu::clock_ticks_per_sec();
    let before = CpuSample::take(&options.server_pids)?;
    let t0 = Instant::now();
    let results = run_phase(&shared, &sets, workload.name()).await?;
    let elapsed = t0.elapsed();
    let after = CpuSample::take(&options.server_pids)?;
    let used = CpuUsed::between(&before, &after, ticks);
    // A duration run that ends at its own deadline is not capped.
    let capped = shared.capped.load(Ordering::Relaxed) && deadline == hard_deadline;

    let mut all = Latencies::default();
    let (mut reads, mut writes) = (Latencies::default(), Latencies::default());
    let mut errors = BTreeMap::new();
    let mut sent = 0;
    for result in &results {
        all.merge(&result.all);
        reads.merge(&result.reads);
        writes.merge(&result.writes);
        for (code, count) in &result.errors {
            *errors.entry(code.clone()).or_insert(0) += count;
        }
        sent += result.sent;
    }
    let succeeded = all.count();
    let per_request = |cpu: Duration| if succeeded == 0 { 0.0 } else { cpu.as_secs_f64() * 1e6 / succeeded as f64 };
    let server_cpu: Vec<ServerCpu> = (options.server_pids.iter().zip(&used.servers))
        .map(|(&pid, &cpu)| ServerCpu { pid, cpu_secs: cpu.as_secs_f64(), us_per_request: per_request(cpu) })
        .collect();
    let server_total = (!server_cpu.is_empty()).then(|| server_cpu.iter().map(|s| s.us_per_request).sum());
    let mut per_op = BTreeMap::new();
    if let Workload::Mixed { .. } = workload {
        per_op.extend(reads.summary().map(|s| ("read".to_string(), s)));
        per_op.extend(writes.summary().map(|s| ("write".to_string(), s)));
    }
    Ok(Report {
        target: format!("{:?}", options.target).to_lowercase(),
        workload: workload.name().into(),
        read_ratio: matches!(workload, Workload::Mixed { .. }).then(|| workload.read_ratio()),
        serializable: options.serializable,
        endpoints: checked.endpoints.iter().map(ToString::to_string).collect(),
        clients: options.clients,
        conns: options.conns,
        rate: options.rate,
        key_size: options.key_size,
        val_size: options.val_size,
        key_space: options.key_space,
        client_threads: options.threads.max(1),
        prefill_keys,
        prefill_errors,
        prefill_secs,
        total_secs: elapsed.as_secs_f64(),
        requests: sent,
        succeeded,
        errors,
        requests_per_sec: succeeded as f64 / elapsed.as_secs_f64(),
        latency: all.summary(),
        per_op,
        client_cpu_us_per_request: per_request(used.client),
        server_cpu,
        server_cpu_us_per_request: server_total,
        machine_busy: used.machine_busy,
        capped,
    })
}

/// Runs every client of one phase to completion, with a progress bar.
async fn run_phase(shared: &Arc<Shared>, sets: &[Vec<Conn>], label: &str) -> Result<Vec<ClientResult>, String> {
    let options = &shared.options;
    let bar = progress_bar(shared, label);
    let mut tasks = Vec::with_capacity(options.clients);
    for i in 0..options.clients {
        let conns = sets[i % sets.len()].clone();
        tasks.push(tokio::spawn(client(shared.clone(), i, conns)));
    }
    let ticker = bar.clone().map(|bar| {
        let shared = shared.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            loop {
                tokio::time::sleep(PROGRESS_TICK).await;
                update_bar(&bar, &shared, start);
            }
        })
    });
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.map_err(|e| format!("a client failed: {e}"))?);
    }
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(results)
}

fn progress_bar(shared: &Shared, label: &str) -> Option<ProgressBar> {
    if shared.options.no_progress {
        return None;
    }
    let bounded = shared.limit != u64::MAX;
    let length = if bounded {
        shared.limit
    } else {
        shared.deadline.saturating_duration_since(Instant::now()).as_millis() as u64
    };
    let template = if bounded {
        "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})"
    } else {
        "{prefix} [{elapsed_precise}] {wide_bar} {msg}"
    };
    let style = ProgressStyle::with_template(template).ok()?;
    let bar = ProgressBar::new(length).with_style(style).with_prefix(label.to_string());
    Some(bar)
}

fn update_bar(bar: &ProgressBar, shared: &Shared, start: Instant) {
    let done = shared.done.load(Ordering::Relaxed);
    if shared.limit != u64::MAX {
        bar.set_position(done);
    } else {
        let elapsed = start.elapsed();
        bar.set_position(elapsed.as_millis() as u64);
        bar.set_message(format!("{done} requests ({:.0}/s)", done as f64 / elapsed.as_secs_f64().max(1e-3)));
    }
}

/// One client: sends one request at a time until the phase's count or deadline.
async fn client(shared: Arc<Shared>, index: usize, mut conns: Vec<Conn>) -> ClientResult {
    let options = &shared.options;
    let mut rng = SplitMix64::for_client(options.seed, index);
    let mut result = ClientResult::default();
    let mut endpoint = index % conns.len();
    loop {
        let seq = shared.issued.fetch_add(1, Ordering::Relaxed);
        if seq >= shared.limit {
            break;
        }
        if let Some((start, rate)) = shared.pace {
            let due = start + Duration::from_secs_f64(seq as f64 / rate);
            if due >= shared.deadline {
                shared.capped.store(true, Ordering::Relaxed);
                break;
            }
            tokio::time::sleep_until(due.into()).await;
        }
        if Instant::now() >= shared.deadline {
            shared.capped.store(true, Ordering::Relaxed);
            break;
        }
        let (key_index, read) = match shared.phase {
            Phase::Prefill => (seq, false),
            Phase::Measure { read_ratio } => {
                let key = rng.below(options.key_space);
                let read = read_ratio >= 1.0 || (read_ratio > 0.0 && rng.unit() < read_ratio);
                (key, read)
            }
        };
        let key = format!("{key_index:0width$}", width = options.key_size);
        let endpoints = conns.len();
        let conn = &mut conns[endpoint];
        endpoint = (endpoint + 1) % endpoints;
        let t0 = Instant::now();
        let outcome =
            if read { conn.get(key, options.serializable).await } else { conn.put(key, shared.value.clone()).await };
        let latency = t0.elapsed();
        result.sent += 1;
        match outcome {
            Ok(()) => {
                result.all.record(latency);
                if read { result.reads.record(latency) } else { result.writes.record(latency) }
            }
            Err(kind) => *result.errors.entry(kind).or_insert(0) += 1,
        }
        shared.done.fetch_add(1, Ordering::Relaxed);
    }
    result
}

/// A small, fast, seedable generator for key choice (splitmix64).
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// Client `index`'s generator: its state starts at a hash of `(seed, index)`. (Seeding
    /// with `seed ^ index * step` would start every client on the same sequence, `index`
    /// steps apart, since the state advances by that very step: 64 clients then chose
    /// among a few hundred keys instead of the whole key space.)
    fn for_client(seed: u64, index: usize) -> Self {
        let mut mixer = SplitMix64::new(seed);
        let a = mixer.next();
        SplitMix64::new(SplitMix64::new(a ^ index as u64).next())
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0), by multiply-shift (bias below 2^-32 for n < 2^32).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What a benchmark's values hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ValueKind {
    /// `abc…z` repeated.
    #[default]
    Alphabet,
    /// JSON records with varied numbers and names, as a document store holds.
    Json,
}

impl ValueKind {
    /// A value of exactly `size` bytes.
    pub fn value(self, size: usize) -> Vec<u8> {
        match self {
            ValueKind::Alphabet => (0..size).map(|i| b'a' + (i % 26) as u8).collect(),
            ValueKind::Json => {
                let mut out = String::from("[");
                let mut i: u64 = 0;
                while out.len() < size {
                    let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
                    out.push_str(&format!(
                        "{{\"id\":{},\"user\":\"user-{}\",\"score\":{}.{},\"tags\":[\"t{}\",\"t{}\"],\"active\":{}}},",
                        1_000_000 + i,
                        x % 5000,
                        x % 1000,
                        x % 97,
                        x % 13,
                        x % 29,
                        x.is_multiple_of(3)
                    ));
                    i += 1;
                }
                let mut bytes = out.into_bytes();
                bytes.truncate(size);
                bytes
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(args: &[&str]) -> (Options, Workload) {
        let cli = Cli::try_parse_from(std::iter::once("memo-bench").chain(args.iter().copied())).unwrap();
        (cli.options, cli.workload)
    }

    #[test]
    fn etcd_style_command_line() {
        let (o, w) = options(&[
            "--endpoints",
            "127.0.0.1:7001,127.0.0.1:7002",
            "put",
            "--clients",
            "64",
            "--conns",
            "8",
            "--total",
            "100",
        ]);
        assert!(matches!(w, Workload::Put));
        assert_eq!((o.clients, o.conns, o.total), (64, 8, Some(100)));
        let checked = check(&o, w).unwrap();
        assert_eq!(checked.endpoints.len(), 2);
        assert!(!checked.prefill);
        let (o, w) = options(&["mixed", "--read-ratio", "0.9"]);
        assert_eq!(w.read_ratio(), 0.9);
        assert!(check(&o, w).unwrap().prefill);
    }

    #[test]
    fn refusals() {
        let (o, w) = options(&["--endpoints", "10.1.2.3:7001", "put"]);
        assert!(check(&o, w).unwrap_err().contains("not a loopback"));
        let (o, w) = options(&["--key-size", "3", "--key-space", "10000", "put"]);
        assert!(check(&o, w).is_err());
        let (o, w) = options(&["--serializable", "get"]);
        assert!(check(&o, w).is_err());
        let (o, w) = options(&["mixed", "--read-ratio", "1.5"]);
        assert!(check(&o, w).is_err());
        assert!(Cli::try_parse_from(["memo-bench", "--total", "5", "--duration", "1", "put"]).is_err());
        for rate in ["0", "-5", "inf"] {
            let rate = &format!("--rate={rate}");
            let (o, w) = options(&[rate, "put"]);
            assert!(check(&o, w).unwrap_err().contains("--rate"), "{rate}");
        }
    }

    #[test]
    fn values_have_the_asked_size_and_json_values_vary() {
        for size in [0, 1, 100, 4096] {
            assert_eq!(ValueKind::Alphabet.value(size).len(), size);
            assert_eq!(ValueKind::Json.value(size).len(), size);
        }
        let json = String::from_utf8(ValueKind::Json.value(4096)).unwrap();
        assert!(json.starts_with("[{\"id\":1000000,"), "{json}");
        let users: std::collections::BTreeSet<&str> = json.split("\"user\":").skip(1).map(|r| &r[..12]).collect();
        assert!(users.len() > 20, "the records repeat: {users:?}");
    }

    #[test]
    fn clients_choose_independent_keys() {
        // 64 clients × 312 writes over 100,000 keys: about 18,200 distinct keys expected
        // (100,000 · (1 − e^(−19,968/100,000))). The old seeding gave 743.
        let mut keys = std::collections::BTreeSet::new();
        for index in 0..64 {
            let mut rng = SplitMix64::for_client(1, index);
            keys.extend((0..312).map(|_| rng.below(100_000)));
        }
        assert!(keys.len() > 17_500, "only {} distinct keys", keys.len());
    }

    #[test]
    fn key_choice_is_uniform_enough() {
        let mut rng = SplitMix64::new(7);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[rng.below(10) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (9_000..11_000).contains(&c)), "{counts:?}");
        let u = rng.unit();
        assert!((0.0..1.0).contains(&u));
    }
}
