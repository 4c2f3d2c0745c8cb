//! Skewed clocks. madsim has one global virtual clock; per-node skew is added at the
//! runtime's [`Clock`] boundary (the engine only ever sees `now` from its node's clock).
//!
//! A [`SkewClock`] reads `offset + elapsed × (1 + drift)` plus any jumps, where `elapsed`
//! is simulated time since the clock was created. Offsets and drifts come from the seed
//! ([`crate::options`]); the fault scheduler may change the drift or jump the clock
//! mid-run. The clock lives in an `Arc` captured by the node's init closure, so it
//! survives restarts like a host's hardware clock does.
//!
//! Readings may go backwards after a backward jump (bounded by the scheduler: the
//! runtime's `Clock` contract asks for "not by much"); they never go below zero.

use memo_engine::Instant;
use memo_node::Clock;
use std::sync::Mutex;
use std::time::Duration;

/// Parts per million: drift is `drift_ppm / 1e6` seconds per second.
const PPM: i128 = 1_000_000;

#[derive(Debug)]
struct State {
    /// Global simulated time of the last re-anchoring.
    anchor: tokio::time::Instant,
    /// The reading at `anchor`, in nanoseconds.
    base_nanos: u64,
    drift_ppm: i64,
}

/// A node's clock: global simulated time with an offset, a drift and jumps.
#[derive(Debug)]
pub struct SkewClock {
    state: Mutex<State>,
}

impl SkewClock {
    /// A clock reading `offset` now and running `drift_ppm` parts per million fast
    /// (negative: slow). Create it inside the simulation.
    pub fn new(offset: Duration, drift_ppm: i64) -> Self {
        let base_nanos = u64::try_from(offset.as_nanos()).unwrap_or(u64::MAX);
        SkewClock { state: Mutex::new(State { anchor: tokio::time::Instant::now(), base_nanos, drift_ppm }) }
    }

    /// The current reading in nanoseconds.
    pub fn reading_nanos(&self) -> u64 {
        let state = self.lock();
        read(&state, tokio::time::Instant::now())
    }

    /// Moves the clock by `delta_nanos` (negative: backwards, saturating at zero).
    pub fn jump(&self, delta_nanos: i64) {
        let mut state = self.lock();
        let now = tokio::time::Instant::now();
        let reading = read(&state, now) as i128 + delta_nanos as i128;
        state.base_nanos = reading.clamp(0, u64::MAX as i128) as u64;
        state.anchor = now;
    }

    /// Changes the drift from now on.
    pub fn set_drift(&self, drift_ppm: i64) {
        let mut state = self.lock();
        let now = tokio::time::Instant::now();
        state.base_nanos = read(&state, now);
        state.anchor = now;
        state.drift_ppm = drift_ppm;
    }

    /// The current drift.
    pub fn drift_ppm(&self) -> i64 {
        self.lock().drift_ppm
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn read(state: &State, now: tokio::time::Instant) -> u64 {
    let elapsed = now.saturating_duration_since(state.anchor).as_nanos() as i128;
    let skewed = elapsed + elapsed * state.drift_ppm as i128 / PPM;
    (state.base_nanos as i128 + skewed).clamp(0, u64::MAX as i128) as u64
}

impl Clock for SkewClock {
    fn now(&self) -> Instant {
        Instant::from_nanos(self.reading_nanos())
    }
}
