//! Support shared by the tests that run the `memo` binary as child processes.
#![allow(dead_code)] // each test file uses its own subset

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Kills the child (SIGKILL) when dropped, however the test ends.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for the child to exit, at most `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("the child can be waited for") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Starts `memo dev --nodes 3 --base-port 0 EXTRA...` with its stderr going to `stderr`,
/// and reads the node endpoints from its banner within `timeout`.
pub fn memo_dev<I, A>(extra: I, stderr: Stdio, timeout: Duration) -> (ChildGuard, Vec<SocketAddr>)
where
    I: IntoIterator<Item = A>,
    A: AsRef<OsStr>,
{
    let child = Command::new(env!("CARGO_BIN_EXE_memo"))
        .args(["dev", "--nodes", "3", "--base-port", "0"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("memo dev starts");
    let mut guard = ChildGuard(child);
    let stdout = guard.0.stdout.take().expect("piped stdout");
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        // Drain to the end even once nobody listens: a closed pipe would fail the child's
        // next print.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let deadline = Instant::now() + timeout;
    let mut endpoints = Vec::new();
    while endpoints.len() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).expect("memo dev prints its endpoints");
        // Node lines read `  n1  127.0.0.1:PORT`.
        if let [name, addr] = line.split_whitespace().collect::<Vec<_>>()[..]
            && name.starts_with('n')
            && let Ok(addr) = addr.parse()
        {
            endpoints.push(addr);
        }
    }
    (guard, endpoints)
}
