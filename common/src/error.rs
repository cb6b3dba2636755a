//! The crate's one error type, [`Error`], and the one place an error becomes
//! an HTTP status ([`Error::status`], [`Error::response`]).
//!
//! Each layer keeps its own precise error (what failed, with the value that
//! fired), and `?` lifts it into [`Error`] at the boundary: a node's start-up,
//! a handler's answer. Per-message outcomes are not errors at all: they are
//! [`crate::pipeline::Verdict`]s, which become wire answers in
//! [`crate::pipeline::Verdict::answer`].
//!
//! | variant | when | HTTP status |
//! |---|---|---|
//! | [`Error::Config`] | a config file that cannot be used | 500 (start-up only) |
//! | [`Error::Tls`] | TLS material that cannot be loaded | 500 (start-up only) |
//! | [`Error::Store`] | a full spool (507), anything else in the store (503) | 507 / 503 |
//! | [`Error::Link`] | the parent could not be reached or refused | 502 |
//! | [`Error::Envelope`] | a POST whose envelope is unusable as a whole | 415 / 413 / 400 |
//! | [`Error::TooLarge`] | a message that could never travel in an exchange | 413 |
//! | [`Error::Io`], [`Error::Setup`] | anything else at start-up (bind, threads, URLs) | 500 |

use http::{Response, StatusCode};

use crate::config::ConfigError;
use crate::envelope::budget::TooLarge;
use crate::envelope::EnvelopeError;
use crate::http_util::Body;
use crate::link::LinkError;
use crate::store::StoreError;
use crate::tls::TlsError;

/// See the module docs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A config file that cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// TLS material that cannot be loaded, or a peer without an identity.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The uplink failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// An envelope refused as a whole.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// A message too large for any exchange.
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    /// I/O at start-up (bind, files, threads).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Any other start-up problem (a bad parent URL, a proxy setting), said in words.
    #[error("{0}")]
    Setup(String),
}

impl From<String> for Error {
    fn from(s: String) -> Self {
        Error::Setup(s)
    }
}

impl Error {
    /// The HTTP status a node answers with for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Store(StoreError::Full { .. }) => StatusCode::INSUFFICIENT_STORAGE,
            Error::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Link(_) => StatusCode::BAD_GATEWAY,
            Error::Envelope(e) => e.status(),
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Config(_) | Error::Tls(_) | Error::Io(_) | Error::Setup(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The answer a handler gives for this error: its status and
    /// `{"error": "..."}`.
    pub fn response(&self) -> Response<Body> {
        crate::http_util::error(self.status(), self)
    }
}

/// Shorthand.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_one_status() {
        let full = Error::from(StoreError::Full {
            needed: 1,
            free: 0,
            capacity: 1,
        });
        assert_eq!(full.status(), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(
            Error::from(StoreError::Closed).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            Error::from(EnvelopeError::TooManyParts(3)).status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            Error::from(EnvelopeError::ContentType("x".into())).status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        let big = Error::from(TooLarge::Hops {
            hops: 20,
            limit: 16,
        });
        assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(big.to_string().contains("20 routing hops"));
        assert_eq!(
            Error::from("bad url".to_string()).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
