//! Downloads with HTTP ranges: how a release's file moves down the tree,
//! one hop at a time, each child fetching from its own parent.
//!
//! * [`serve`]: a file on disk to a child, whole (200) or from an offset
//!   (`Range: bytes=N-`, 206), streamed in chunks, counted.
//! * [`fetch`]: a file from the parent into a `.part` file, resuming from
//!   what that file already holds; at the end its size and SHA-256 are
//!   checked against the manifest and only a match is renamed into place.
//!
//! Neither side ever holds a file whole in memory.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use http::{header, HeaderMap, Method, Response, StatusCode};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::bulk;
use crate::http_util::{error, stream_body, Body};
use crate::link::Link;
use crate::metrics::Counter;
use crate::release::Manifest;

/// The start of a `Range: bytes=N-` header: `Ok(None)` without one.
///
/// # Errors
/// Any other form of range (this server sends one open-ended range only).
pub fn range_start(headers: &HeaderMap) -> Result<Option<u64>, String> {
    let Some(v) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.strip_prefix("bytes="))
        .and_then(|s| s.strip_suffix('-'))
        .and_then(|s| s.parse().ok())
        .map(Some)
        .ok_or_else(|| "Range: only bytes=N- is served".to_string())
}

/// Serves the `size`-byte file at `path`, from the start or from a
/// `Range: bytes=N-`; `served` counts the bytes sent.
pub async fn serve(
    path: &Path,
    size: u64,
    headers: &HeaderMap,
    served: &Counter,
) -> Response<Body> {
    let start = match range_start(headers) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::RANGE_NOT_SATISFIABLE, e),
    };
    let from = start.unwrap_or(0);
    if from > size || (start.is_some() && from == size && size > 0) {
        let mut r = error(
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!("the file has {size} bytes"),
        );
        if let Ok(v) = format!("bytes */{size}").parse() {
            r.headers_mut().insert(header::CONTENT_RANGE, v);
        }
        return r;
    }
    let body = match bulk::file_body(path, from, served.cell(), 0).await {
        Ok(b) => b,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("file: {e}")),
    };
    let mut b = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, size - from)
        .header(header::ACCEPT_RANGES, "bytes");
    b = match start {
        Some(n) => b.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {n}-{}/{size}", size.saturating_sub(1)),
        ),
        None => b.status(StatusCode::OK),
    };
    b.body(body)
        .unwrap_or_else(|_| Response::new(crate::http_util::full("")))
}

/// Why a fetch stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The parent could not be reached, or the transfer broke off: try
    /// again later (what arrived is kept).
    #[error("{0}")]
    Link(String),
    /// The parent refused (its status and reason).
    #[error("parent answered {0}: {1}")]
    Refused(StatusCode, String),
    /// The file is not the one the manifest names (discarded).
    #[error("{0}")]
    Mismatch(String),
    /// Local disk.
    #[error("{0}")]
    Io(String),
}

/// One download: what to fetch and where it goes.
#[derive(Debug, Clone, Copy)]
pub struct Download<'a> {
    /// The parent's path ([`crate::release::file_path`]).
    pub path: &'a str,
    /// What the file must be.
    pub manifest: &'a Manifest,
    /// Where the bytes collect (resumed from its length).
    pub part: &'a Path,
    /// Where the checked file goes.
    pub dest: &'a Path,
    /// A chunk must arrive within this of the last one.
    pub idle: Duration,
    /// Bytes per second, 0 for no cap.
    pub max_rate: u64,
}

/// Fetches `d.path` from the parent over `link` into `d.dest`, through
/// `d.part` (resumed from its length), checking it against `d.manifest`;
/// `progress` holds the bytes on disk so far. With `d.max_rate` the
/// download is paced to it.
///
/// # Errors
/// [`FetchError`]; after a mismatch `part` is gone, after a link error it
/// holds what arrived.
pub async fn fetch(link: &Link, d: &Download<'_>, progress: &AtomicU64) -> Result<(), FetchError> {
    let Download {
        path,
        manifest,
        part,
        dest,
        idle,
        max_rate,
    } = *d;
    let io = |e: std::io::Error| FetchError::Io(format!("{}: {e}", part.display()));
    let size = manifest.size;
    let mut held = tokio::fs::metadata(part)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    if held > size {
        tokio::fs::remove_file(part).await.map_err(io)?;
        held = 0;
    }
    progress.store(held, Ordering::Relaxed);
    let mut hasher = (held == 0).then(Sha256::new);
    if size == 0 {
        tokio::fs::File::create(part).await.map_err(io)?;
    }
    if held < size {
        let range = [(header::RANGE.as_str(), format!("bytes={held}-"))];
        let resp = link
            .stream(
                Method::GET,
                path,
                if held > 0 { &range[..] } else { &[] },
                bulk::empty(),
                Duration::from_secs(10),
            )
            .await
            .map_err(|e| FetchError::Link(e.to_string()))?;
        let status = resp.status();
        // A parent that declares another length than the manifest's has
        // another file: no point reading it.
        let wrong = |total: Option<u64>| match total {
            Some(t) if t != size => Err(FetchError::Mismatch(format!(
                "the parent's file has {t} bytes, the manifest says {size}"
            ))),
            _ => Ok(()),
        };
        match status {
            StatusCode::PARTIAL_CONTENT if held > 0 => {
                let range = resp
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split_once('/'));
                let from = range
                    .and_then(|(r, _)| r.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                wrong(range.and_then(|(_, t)| t.parse().ok()))?;
                if from != Some(held) {
                    return Err(FetchError::Link(format!(
                        "asked for bytes from {held}, the parent sent from {from:?}"
                    )));
                }
            }
            StatusCode::OK => {
                wrong(
                    resp.headers()
                        .get(header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok()),
                )?;
                held = 0;
                hasher = Some(Sha256::new());
            }
            s => {
                let why = crate::http_util::error_text(resp.into_body(), idle).await;
                return Err(FetchError::Refused(s, why));
            }
        }
        let mut f = if held == 0 {
            tokio::fs::File::create(part).await.map_err(io)?
        } else {
            tokio::fs::OpenOptions::new()
                .append(true)
                .open(part)
                .await
                .map_err(io)?
        };
        let mut body = std::pin::pin!(stream_body(resp.into_body(), idle));
        let mut n = held;
        let started = std::time::Instant::now();
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    f.flush().await.map_err(io)?;
                    return Err(FetchError::Link(format!(
                        "download cut off at {n} bytes: {e}"
                    )));
                }
            };
            if n + chunk.len() as u64 > size {
                drop(f);
                let _ = tokio::fs::remove_file(part).await;
                return Err(FetchError::Mismatch(format!(
                    "the parent sent more than the manifest's {size} bytes"
                )));
            }
            f.write_all(&chunk).await.map_err(io)?;
            if let Some(h) = &mut hasher {
                h.update(&chunk);
            }
            n += chunk.len() as u64;
            progress.store(n, Ordering::Relaxed);
            if max_rate > 0 {
                let due = Duration::from_secs_f64((n - held) as f64 / max_rate as f64);
                if let Some(ahead) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(ahead).await;
                }
            }
        }
        f.flush().await.map_err(io)?;
        f.sync_all().await.map_err(io)?;
        if n < size {
            return Err(FetchError::Link(format!(
                "download ended at {n} of {size} bytes"
            )));
        }
    }
    let got = match hasher.filter(|_| held == 0 && size > 0) {
        Some(h) => bulk::hex(&h.finalize()),
        None => bulk::sha256_file(part).await.map_err(io)?,
    };
    if let Err(e) = manifest.check_file(size, &got) {
        let _ = tokio::fs::remove_file(part).await;
        return Err(FetchError::Mismatch(e.to_string()));
    }
    tokio::fs::rename(part, dest).await.map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_open_ended_byte_ranges_are_served() {
        let mut h = HeaderMap::new();
        assert_eq!(range_start(&h), Ok(None));
        h.insert(header::RANGE, "bytes=100-".parse().unwrap());
        assert_eq!(range_start(&h), Ok(Some(100)));
        for bad in ["bytes=1-2", "bytes=-5", "items=1-", "bytes=a-"] {
            h.insert(header::RANGE, bad.parse().unwrap());
            assert!(range_start(&h).is_err(), "{bad}");
        }
    }
}
