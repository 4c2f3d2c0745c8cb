//! Time for the engine. The engine never reads a clock; the event loop asks a [`Clock`]
//! for `now` before every input. Production uses [`MonotonicClock`]; the simulator
//! injects a clock with a per-node offset, drift and jumps (madsim has one global
//! virtual clock, so skew has to be added at this boundary).

use memo_engine::Instant;
use std::fmt;

/// A source of engine time. Readings of one clock should not go backwards by much: the
/// engine tolerates skew between nodes, and a clock that stalls or jumps only delays or
/// hastens its own timers.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time on this node's clock.
    fn now(&self) -> Instant;
}

/// Time elapsed since the clock was created, read from `tokio::time::Instant`, which
/// madsim virtualizes in simulation. Create it inside the runtime that drives the node.
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock {
    origin: tokio::time::Instant,
}

impl MonotonicClock {
    /// A clock whose origin (engine instant zero) is now.
    pub fn new() -> Self {
        MonotonicClock { origin: tokio::time::Instant::now() }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Instant {
        // u64 nanoseconds last 584 years; saturate rather than wrap past that.
        let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Instant::from_nanos(nanos)
    }
}
