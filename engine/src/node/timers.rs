//! The node's deadline table: one enum of timer kinds plus an ordered set of deadlines.
//! Timers are never cancelled eagerly; each handler checks that what it was set for is
//! still pending (attempt ids, request keys), which keeps the table simple and bounded by
//! the in-flight bounds.

use super::ReqKey;
use crate::message::AttemptId;
use crate::time::Instant;
use std::collections::BTreeMap;

/// Why the node wants to be woken (for logs and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerReason {
    /// A client request's deadline.
    RequestDeadline,
    /// A forwarded request's primary did not answer.
    ForwardTimeout,
    /// A Paxos phase did not reach its quorum.
    RoundTimeout,
    /// A randomized backoff after a ballot conflict ends.
    Backoff,
    /// A one-round-trip read did not reach its quorum.
    ReadTimeout,
    /// A tombstone is due for garbage collection.
    GarbageCollection,
    /// A List round did not complete.
    ListTimeout,
    /// The rebalancer looks at its partitions.
    Rebalance,
    /// A config decree round did not complete.
    DecreeTimeout,
    /// A copy scan did not complete.
    CopyScanTimeout,
    /// A SWIM timer (probe, suspicion, gossip).
    Membership,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Timer {
    Request { req: ReqKey },
    Forward { req: ReqKey },
    Attempt { key: String, attempt: AttemptId },
    Backoff { key: String },
    Read { read: u64 },
    ReadHedge { read: u64 },
    Gc { key: String },
    List { list: u64 },
    Rebalance,
    Decree { partition: crate::placement::PartitionId, round: u64 },
    CopyScan { id: u64 },
    Swim(Box<crate::membership::SwimTimer>),
}

impl Timer {
    fn reason(&self) -> TimerReason {
        match self {
            Timer::Request { .. } => TimerReason::RequestDeadline,
            Timer::Forward { .. } => TimerReason::ForwardTimeout,
            Timer::Attempt { .. } => TimerReason::RoundTimeout,
            Timer::Backoff { .. } => TimerReason::Backoff,
            Timer::Read { .. } | Timer::ReadHedge { .. } => TimerReason::ReadTimeout,
            Timer::Gc { .. } => TimerReason::GarbageCollection,
            Timer::List { .. } => TimerReason::ListTimeout,
            Timer::Rebalance => TimerReason::Rebalance,
            Timer::Decree { .. } => TimerReason::DecreeTimeout,
            Timer::CopyScan { .. } => TimerReason::CopyScanTimeout,
            Timer::Swim(_) => TimerReason::Membership,
        }
    }
}

/// Names one set timer, for [`Timers::cancel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TimerHandle((Instant, u64));

#[derive(Default)]
pub(super) struct Timers {
    /// `(deadline, sequence)` → timer; the sequence keeps equal deadlines in set order.
    table: BTreeMap<(Instant, u64), Timer>,
    seq: u64,
}

impl Timers {
    pub(super) fn set(&mut self, at: Instant, timer: Timer) -> TimerHandle {
        self.seq += 1;
        self.table.insert((at, self.seq), timer);
        TimerHandle((at, self.seq))
    }

    /// Removes a timer that is no longer needed (a no-op if it already fired), so the
    /// table stays as small as the work in flight.
    pub(super) fn cancel(&mut self, handle: TimerHandle) {
        self.table.remove(&handle.0);
    }

    pub(super) fn next(&self) -> Option<(Instant, TimerReason)> {
        self.table.first_key_value().map(|((at, _), t)| (*at, t.reason()))
    }

    pub(super) fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        let (&(at, _), _) = self.table.first_key_value()?;
        if at > now {
            return None;
        }
        self.table.pop_first().map(|(_, t)| t)
    }
}
