//! The appserver's one error type for operator calls, and its one mapping to
//! HTTP statuses. Start-up and exchange errors are [`rsnet_common::Error`].

use http::{Response, StatusCode};
use rsnet_common::envelope::budget::TooLarge;
use rsnet_common::http_util::{error, Body};
use rsnet_common::store::StoreError;

/// Why an operator call was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input, naming the field (400).
    #[error("{0}")]
    Invalid(String),
    /// A named group does not exist (404).
    #[error("no such group {0}")]
    NoGroup(String),
    /// A message that could never travel down in an exchange (413).
    #[error("too large for an exchange: {0}")]
    TooLarge(#[from] TooLarge),
    /// Something named does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// Not in a state that allows it (409).
    #[error("{0}")]
    Conflict(String),
    /// Queues full or storage failed (503); nothing was changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Invalid(_) => StatusCode::BAD_REQUEST,
            Error::NoGroup(_) | Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The answer: the status and `{"error": "..."}`.
    pub fn response(&self) -> Response<Body> {
        error(self.status(), self)
    }
}
