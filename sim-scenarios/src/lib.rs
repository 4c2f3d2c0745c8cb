//! Named deterministic-simulation scenarios for memo. The scenarios live in `tests/` and
//! only run under `cargo simtest` (a build with `--cfg madsim`); see `docs/SIMULATION.md`.
