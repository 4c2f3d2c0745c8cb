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

impl KvError {
    /// Whether a client must treat the operation as "may or may not have happened" (R6).
    pub fn is_unknown_outcome(&self) -> bool {
        matches!(self, KvError::Unavailable(_) | KvError::Internal(_))
    }
}
