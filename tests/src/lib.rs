//! Home for end-to-end tests that span several binaries.
//!
//! Today every end-to-end test drives the `memo` binary of the `memo-node` package, so
//! those tests live in `runtime-tokio/tests/` (`e2e.rs`, `durability.rs`, `ops.rs`), where
//! Cargo provides the binary's path (`CARGO_BIN_EXE_memo`) and builds it first. Tests that
//! combine `memo` with other programs (the load generator, client libraries) belong here.
