//! Latency statistics and the report, in the layout of etcd's `benchmark` tool.
//!
//! Fastest, slowest, average and standard deviation are exact (integer sums over
//! nanoseconds); percentiles come from an HDR histogram with 3 significant digits (each
//! within 0.1% of the true value).

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Percentiles reported, as etcd's benchmark does.
pub const PERCENTILES: [f64; 8] = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];
/// Largest latency the histogram holds; longer ones are clamped to it.
const LATENCY_MAX_NS: u64 = 3_600_000_000_000;
/// Buckets of the text histogram.
const HISTOGRAM_BUCKETS: usize = 10;
/// Width of the longest bar of the text histogram.
const BAR_WIDTH: u64 = 40;

/// Latencies of successful requests.
#[derive(Clone, Debug)]
pub struct Latencies {
    hist: Histogram<u64>,
    count: u64,
    sum_ns: u128,
    sum_sq_ns: u128,
    min_ns: u64,
    max_ns: u64,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            hist: Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3).expect("valid histogram bounds"),
            count: 0,
            sum_ns: 0,
            sum_sq_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }
}

impl Latencies {
    pub fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).clamp(1, LATENCY_MAX_NS);
        self.hist.record(ns).expect("value within the histogram's bounds");
        self.count += 1;
        self.sum_ns += u128::from(ns);
        self.sum_sq_ns += u128::from(ns) * u128::from(ns);
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    pub fn merge(&mut self, other: &Latencies) {
        self.hist.add(&other.hist).expect("same bounds");
        self.count += other.count;
        self.sum_ns += other.sum_ns;
        self.sum_sq_ns += other.sum_sq_ns;
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Mean and population standard deviation, in nanoseconds.
    fn moments(&self) -> (f64, f64) {
        if self.count == 0 {
            return (0.0, 0.0);
        }
        let n = u128::from(self.count);
        let mean = self.sum_ns as f64 / n as f64;
        // n·Σx² − (Σx)² is n² times the variance, computed exactly.
        let scaled = (n * self.sum_sq_ns).saturating_sub(self.sum_ns * self.sum_ns);
        let stddev = (scaled as f64).sqrt() / n as f64;
        (mean, stddev)
    }

    /// The summary, in seconds; `None` without any sample.
    pub fn summary(&self) -> Option<LatencySummary> {
        if self.count == 0 {
            return None;
        }
        let secs = |ns: f64| ns / 1e9;
        let (mean, stddev) = self.moments();
        let percentiles = PERCENTILES
            .iter()
            .map(|&p| Percentile { percent: p, secs: secs(self.hist.value_at_quantile(p / 100.0) as f64) })
            .collect();
        Some(LatencySummary {
            count: self.count,
            fastest_secs: secs(self.min_ns as f64),
            slowest_secs: secs(self.max_ns as f64),
            average_secs: secs(mean),
            stddev_secs: secs(stddev),
            percentiles,
            histogram: self.buckets(),
        })
    }

    /// etcd's response-time histogram: equal-width buckets from fastest to slowest, each
    /// labelled with its upper bound.
    fn buckets(&self) -> Vec<Bucket> {
        let (lo, hi) = (self.min_ns, self.max_ns);
        let width = (hi - lo) as f64 / HISTOGRAM_BUCKETS as f64;
        let mut counts = vec![0u64; HISTOGRAM_BUCKETS + 1];
        for value in self.hist.iter_recorded() {
            // The lowest value the HDR bucket stands for, so the fastest sample falls in
            // the first bucket as in etcd's output.
            let ns = self.hist.lowest_equivalent(value.value_iterated_to()).clamp(lo, hi);
            let index =
                if width > 0.0 { (((ns - lo) as f64 / width).ceil() as usize).min(HISTOGRAM_BUCKETS) } else { 0 };
            counts[index] += value.count_at_value();
        }
        (counts.into_iter().enumerate())
            .map(|(i, count)| Bucket { upper_secs: (lo as f64 + width * i as f64) / 1e9, count })
            .collect()
    }
}

/// One percentile.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Percentile {
    pub percent: f64,
    pub secs: f64,
}

/// One bucket of the response-time histogram.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Bucket {
    pub upper_secs: f64,
    pub count: u64,
}

/// Latency statistics of the successful requests.
#[derive(Clone, Debug, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub fastest_secs: f64,
    pub slowest_secs: f64,
    pub average_secs: f64,
    pub stddev_secs: f64,
    pub percentiles: Vec<Percentile>,
    pub histogram: Vec<Bucket>,
}

impl LatencySummary {
    /// The latency at `percent` (one of [`PERCENTILES`]).
    pub fn at(&self, percent: f64) -> Option<f64> {
        self.percentiles.iter().find(|p| p.percent == percent).map(|p| p.secs)
    }
}

/// Server CPU of one process.
#[derive(Clone, Debug, Serialize)]
pub struct ServerCpu {
    pub pid: u32,
    pub cpu_secs: f64,
    pub us_per_request: f64,
}

/// Everything a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub target: String,
    pub workload: String,
    pub read_ratio: Option<f64>,
    pub serializable: bool,
    pub endpoints: Vec<String>,
    pub clients: usize,
    pub conns: usize,
    /// The pace asked with `--rate`, in requests per second (none: closed loop).
    pub rate: Option<f64>,
    pub key_size: usize,
    pub val_size: usize,
    pub key_space: u64,
    pub client_threads: usize,
    /// Keys written by the prefill phase (not measured), and its errors.
    pub prefill_keys: u64,
    pub prefill_errors: u64,
    pub prefill_secs: f64,
    /// Wall time of the measured phase.
    pub total_secs: f64,
    /// Requests sent (successful or not).
    pub requests: u64,
    pub succeeded: u64,
    /// Failed requests by gRPC status code name (or `transport`).
    pub errors: BTreeMap<String, u64>,
    /// Successful requests per second.
    pub requests_per_sec: f64,
    pub latency: Option<LatencySummary>,
    /// Per operation (mixed workload only): "read" and "write".
    pub per_op: BTreeMap<String, LatencySummary>,
    /// CPU of this process per successful request.
    pub client_cpu_us_per_request: f64,
    pub server_cpu: Vec<ServerCpu>,
    /// Sum over `server_cpu`, per successful request.
    pub server_cpu_us_per_request: Option<f64>,
    /// Fraction of the whole machine's CPU that was busy during the measured phase.
    pub machine_busy: Option<f64>,
    /// The run was cut short by `--max-secs`.
    pub capped: bool,
}

impl Report {
    /// The report as etcd's benchmark prints it (with microsecond precision), plus
    /// errors, CPU and the run's parameters.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(
            w,
            "{} {} against {} ({} clients, {} conns, key {} B, value {} B, key space {}{}{}{})",
            self.target,
            self.workload,
            self.endpoints.join(","),
            self.clients,
            self.conns,
            self.key_size,
            self.val_size,
            self.key_space,
            self.read_ratio.map(|r| format!(", read ratio {r}")).unwrap_or_default(),
            if self.serializable { ", serializable" } else { "" },
            self.rate.map(|r| format!(", paced at {r} requests/s")).unwrap_or_default(),
        );
        if self.prefill_keys > 0 {
            let _ = writeln!(
                w,
                "Prefill: {} keys in {:.1} secs ({} errors).",
                self.prefill_keys, self.prefill_secs, self.prefill_errors
            );
        }
        let _ = writeln!(w, "\nSummary:");
        let _ = writeln!(w, "  Total:\t{:.4} secs.", self.total_secs);
        if let Some(lat) = &self.latency {
            write_latency(w, lat);
        }
        let _ = writeln!(w, "  Requests/sec:\t{:.4}", self.requests_per_sec);
        if let Some(lat) = &self.latency {
            write_histogram(w, lat);
            write_percentiles(w, lat);
        }
        for (op, lat) in &self.per_op {
            let _ = writeln!(w, "\n{op} ({} requests):", lat.count);
            write_latency(w, lat);
            write_percentiles(w, lat);
        }
        let _ = writeln!(w, "\nRequests: {} sent, {} succeeded.", self.requests, self.succeeded);
        if !self.errors.is_empty() {
            let _ = writeln!(w, "Error distribution:");
            for (code, count) in &self.errors {
                let _ = writeln!(w, "  [{count}]\t{code}");
            }
        }
        let _ = writeln!(w, "\nCPU:");
        let _ = writeln!(
            w,
            "  client:\t{:.1} µs/request ({} thread{})",
            self.client_cpu_us_per_request,
            self.client_threads,
            if self.client_threads == 1 { "" } else { "s" }
        );
        for server in &self.server_cpu {
            let _ = writeln!(
                w,
                "  pid {}:\t{:.1} µs/request ({:.2} s)",
                server.pid, server.us_per_request, server.cpu_secs
            );
        }
        if let Some(total) = self.server_cpu_us_per_request {
            let _ = writeln!(w, "  servers:\t{total:.1} µs/request");
        }
        if let Some(busy) = self.machine_busy {
            let _ = writeln!(w, "  machine busy:\t{:.0}%", busy * 100.0);
        }
        if self.capped {
            let _ = writeln!(w, "\nStopped early by --max-secs.");
        }
        out
    }
}

fn write_latency(w: &mut String, lat: &LatencySummary) {
    let _ = writeln!(w, "  Slowest:\t{:.6} secs.", lat.slowest_secs);
    let _ = writeln!(w, "  Fastest:\t{:.6} secs.", lat.fastest_secs);
    let _ = writeln!(w, "  Average:\t{:.6} secs.", lat.average_secs);
    let _ = writeln!(w, "  Stddev:\t{:.6} secs.", lat.stddev_secs);
}

fn write_histogram(w: &mut String, lat: &LatencySummary) {
    let _ = writeln!(w, "\nResponse time histogram:");
    let most = lat.histogram.iter().map(|b| b.count).max().unwrap_or(0).max(1);
    for bucket in &lat.histogram {
        let bar = "∎".repeat((bucket.count * BAR_WIDTH / most) as usize);
        let _ = writeln!(w, "  {:.6} [{}]\t|{bar}", bucket.upper_secs, bucket.count);
    }
}

fn write_percentiles(w: &mut String, lat: &LatencySummary) {
    let _ = writeln!(w, "\nLatency distribution:");
    for p in &lat.percentiles {
        let _ = writeln!(w, "  {}% in {:.6} secs.", p.percent, p.secs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: f64, expected: f64, relative: f64) -> bool {
        (actual - expected).abs() <= expected.abs() * relative
    }

    #[test]
    fn uniform_latencies() {
        // 1, 2, ..., 1000 µs: every statistic is known in closed form.
        let mut lat = Latencies::default();
        for us in 1..=1000u64 {
            lat.record(Duration::from_micros(us));
        }
        let s = lat.summary().unwrap();
        assert_eq!(s.count, 1000);
        assert_eq!(s.fastest_secs, 1e-6);
        assert_eq!(s.slowest_secs, 1e-3);
        assert!(close(s.average_secs, 500.5e-6, 1e-12), "{}", s.average_secs);
        // Population stddev of 1..=n is sqrt((n² − 1) / 12).
        let stddev = ((1000.0f64 * 1000.0 - 1.0) / 12.0).sqrt() * 1e-6;
        assert!(close(s.stddev_secs, stddev, 1e-9), "{} vs {stddev}", s.stddev_secs);
        for (percent, expected_us) in [(10.0, 100.0), (50.0, 500.0), (90.0, 900.0), (99.0, 990.0), (99.9, 999.0)] {
            let got = s.at(percent).unwrap();
            assert!(close(got, expected_us * 1e-6, 0.002), "p{percent}: {got}");
        }
        assert_eq!(s.histogram.len(), HISTOGRAM_BUCKETS + 1);
        assert_eq!(s.histogram.iter().map(|b| b.count).sum::<u64>(), 1000);
        assert_eq!(s.histogram[0].upper_secs, 1e-6);
        assert!(close(s.histogram[HISTOGRAM_BUCKETS].upper_secs, 1e-3, 1e-12));
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let mut all = Latencies::default();
        let mut parts = [Latencies::default(), Latencies::default(), Latencies::default()];
        for i in 0..3000u64 {
            let d = Duration::from_nanos(10_000 + i * i);
            all.record(d);
            parts[(i % 3) as usize].record(d);
        }
        let mut merged = Latencies::default();
        for part in &parts {
            merged.merge(part);
        }
        let (a, m) = (all.summary().unwrap(), merged.summary().unwrap());
        assert_eq!(a.count, m.count);
        assert_eq!(a.fastest_secs, m.fastest_secs);
        assert_eq!(a.slowest_secs, m.slowest_secs);
        assert_eq!(a.average_secs, m.average_secs);
        assert_eq!(a.stddev_secs, m.stddev_secs);
        assert_eq!(a.percentiles, m.percentiles);
        assert_eq!(a.histogram, m.histogram);
    }

    #[test]
    fn constant_and_empty() {
        assert!(Latencies::default().summary().is_none());
        let mut lat = Latencies::default();
        for _ in 0..10 {
            lat.record(Duration::from_millis(2));
        }
        let s = lat.summary().unwrap();
        assert_eq!(s.stddev_secs, 0.0);
        assert!(close(s.at(99.9).unwrap(), 2e-3, 0.001));
        assert_eq!(s.histogram[0].count, 10);
    }
}
