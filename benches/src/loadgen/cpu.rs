//! CPU time of processes and of the machine, from `/proc`.

use std::time::Duration;

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`; 100 on Linux).
pub fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|&ticks: &u64| ticks > 0)
        .unwrap_or(100)
}

/// utime + stime of a process (all its threads, dead ones included), in clock ticks.
pub fn process_ticks(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    parse_stat_ticks(&text).ok_or_else(|| format!("{path}: unexpected format"))
}

/// utime (field 14) + stime (field 15) of a `/proc/<pid>/stat` line. The command name
/// (field 2) is in parentheses and may contain spaces, so fields are counted after the
/// last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name come field 3 (state) onwards: utime is field 14, index 11 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Busy and total ticks of the whole machine (first line of `/proc/stat`).
pub fn machine_ticks() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_ticks(text.lines().next()?)
}

/// (busy, total) from the `cpu ...` line: idle and iowait are not busy; guest time is
/// already inside user time.
pub fn parse_machine_ticks(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields.take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let total: u64 = values.iter().sum();
    let idle = values.get(3)? + values.get(4)?;
    Some((total - idle, total))
}

/// A snapshot of the CPU counters the report uses.
#[derive(Clone, Debug)]
pub struct CpuSample {
    /// This process.
    pub client: u64,
    /// Each `--server-pids` process, in order.
    pub servers: Vec<u64>,
    /// The machine: (busy, total).
    pub machine: Option<(u64, u64)>,
}

impl CpuSample {
    /// Reads every counter now.
    pub fn take(server_pids: &[u32]) -> Result<Self, String> {
        let client = process_ticks(std::process::id())?;
        let servers = server_pids.iter().map(|&pid| process_ticks(pid)).collect::<Result<_, _>>()?;
        Ok(CpuSample { client, servers, machine: machine_ticks() })
    }
}

/// CPU used between two samples, as durations.
#[derive(Clone, Debug)]
pub struct CpuUsed {
    pub client: Duration,
    pub servers: Vec<Duration>,
    /// Fraction of the machine's CPU that was busy (all processes), 0..=1.
    pub machine_busy: Option<f64>,
}

impl CpuUsed {
    pub fn between(before: &CpuSample, after: &CpuSample, ticks_per_sec: u64) -> Self {
        let to_time = |ticks: u64| Duration::from_micros(ticks * 1_000_000 / ticks_per_sec);
        let machine_busy = match (before.machine, after.machine) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => Some((b1 - b0) as f64 / (t1 - t0) as f64),
            _ => None,
        };
        CpuUsed {
            client: to_time(after.client.saturating_sub(before.client)),
            servers: (after.servers.iter().zip(&before.servers)).map(|(a, b)| to_time(a.saturating_sub(*b))).collect(),
            machine_busy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line() {
        let line = "1234 (memo node (x)) S 1 1234 1234 0 -1 4194560 2000 0 0 0 250 75 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_stat_ticks(line), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn own_process_is_readable() {
        assert!(process_ticks(std::process::id()).is_ok());
    }

    #[test]
    fn machine_line() {
        assert_eq!(parse_machine_ticks("cpu  100 5 50 800 20 3 2 10 0 0"), Some((170, 990)));
        assert_eq!(parse_machine_ticks("cpu0 1 2 3 4 5 6 7 8"), None);
    }
}
