//! The one error type clients see. The runtime maps it to gRPC status codes in exactly
//! one place.

use serde::{Deserialize, Serialize};

/// Why a client request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum KvError {
    /// Malformed request: empty or oversized key, oversized value (INVALID_ARGUMENT).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Insert on a present key (ALREADY_EXISTS).
    #[error("key already exists")]
    AlreadyExists,
    /// Update, Delete or Fetch on an absent key (NOT_FOUND).
    #[error("key not found")]
    NotFound,
    /// A swap found another value than the one it expected (ABORTED).
    #[error("the value changed since it was read")]
    Conflict,
    /// No quorum answered in time, or the outcome of a write is unknown (UNAVAILABLE):
    /// the request may or may not have taken effect.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A bound of the node is reached (RESOURCE_EXHAUSTED); retry later.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// The node's storage failed (INTERNAL); the outcome is unknown.
    #[error("internal error: {0}")]
    Internal(String),
}

/// How every *fenced* UNAVAILABLE message begins (R6, docs/ARCHITECTURE.md). A fenced
/// answer promises more than "unknown": if the write took effect, it did so before the
/// answer, and it never will after it, so a read issued after the answer tells whether it
/// happened. Clients and checkers recognise the promise by this prefix (memo-lincheck keeps
/// its own copy, the checker's contract; `tests::the_checker_reads_the_promise` ties them).
pub const FENCED_PREFIX: &str = "fenced: ";

impl KvError {
    /// Whether a client must treat the operation as "may or may not have happened" (R6).
    pub fn is_unknown_outcome(&self) -> bool {
        matches!(self, KvError::Unavailable(_) | KvError::Internal(_))
    }

    /// A fenced UNAVAILABLE (R6): the write's outcome is unknown, but if it took effect it
    /// did so before this answer, and it never will after it. `why` says how it was fenced.
    pub fn fenced(why: &str) -> KvError {
        KvError::Unavailable(format!(
            "{FENCED_PREFIX}{why}; if this write took effect, it did so before this answer, and it never will after it"
        ))
    }

    /// Whether this is a fenced UNAVAILABLE ([`KvError::fenced`]).
    pub fn is_fenced(&self) -> bool {
        matches!(self, KvError::Unavailable(why) if why.starts_with(FENCED_PREFIX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checker_reads_the_promise() {
        assert_eq!(FENCED_PREFIX, memo_lincheck::FENCED_PREFIX);
        let fenced = KvError::fenced("why");
        assert!(fenced.is_fenced());
        let KvError::Unavailable(message) = fenced else { panic!("fenced is UNAVAILABLE") };
        assert_eq!(memo_lincheck::promise_of_unavailable(&message), memo_lincheck::Outcome::Fenced);
        let plain = "no quorum answered before the request deadline";
        assert!(!KvError::Unavailable(plain.into()).is_fenced());
        assert_eq!(memo_lincheck::promise_of_unavailable(plain), memo_lincheck::Outcome::Unknown);
    }
}
