//! `memo-bench`: a gRPC load generator for memo and etcd (see `memo_benches::loadgen`).
//!
//! ```text
//! memo-bench --endpoints 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 \
//!     --clients 64 --conns 8 --total 60000 put
//! memo-bench --target etcd --endpoints 127.0.0.1:12379 --clients 64 --conns 8 --total 100000 get
//! ```
//!
//! In simulation builds (`--cfg madsim`) there are no real sockets, so the binary is an
//! empty stub there.

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    memo_benches::loadgen::main()
}

#[cfg(madsim)]
fn main() {}
