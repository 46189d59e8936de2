//! `herald publish`, `herald subscribe` and `herald relay`: clients of a running herald's HTTP
//! API, for shells and scripts (as `redis-cli` and `ntfy` users expect) and for feeding a stream
//! from any other SSE source.
//!
//! They speak only the public HTTP API, so what they do a browser or a backend can do too. What
//! they share lives here: where herald is (`--url`, `--token`), how a server's refusal becomes
//! an error message, the reconnection backoff, and reading an SSE response with a real parser.

pub mod publish;
pub mod relay;
pub mod subscribe;
pub mod token;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};

/// Where the herald to talk to is.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Base URL of the herald server.
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:7070")]
    pub url: String,

    /// Bearer token: the publish token, or a JWT (for private streams when subscribing).
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl Target {
    /// `{url}{path}`, without a doubled slash.
    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url.trim_end_matches('/'), path)
    }

    pub fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// herald (or the upstream) answered, and said no.
    #[error("{status}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Refused {
        status: reqwest::StatusCode,
        message: String,
    },
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{0}")]
    Input(String),
}

impl CliError {
    /// A refusal that retrying cannot fix (bad input, bad credentials).
    pub fn is_permanent(&self) -> bool {
        match self {
            CliError::Refused { status, .. } => {
                status.is_client_error()
                    && *status != reqwest::StatusCode::REQUEST_TIMEOUT
                    && *status != reqwest::StatusCode::TOO_MANY_REQUESTS
            }
            CliError::Unreachable { .. } => false,
            CliError::Input(_) => true,
        }
    }
}

/// An HTTP client for talking to herald: no overall timeout (SSE responses last), but a
/// bounded connect.
pub fn http_client() -> Result<reqwest::Client, CliError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| CliError::Input(format!("cannot build an HTTP client: {e}")))
}

pub fn unreachable(url: &str, error: reqwest::Error) -> CliError {
    // The URL is said once, by the caller's message, not again inside reqwest's.
    CliError::Unreachable {
        url: url.to_owned(),
        reason: crate::http::error::with_causes(&error.without_url()),
    }
}

/// Turns a non-success response into the server's own words: herald's `{"error": "..."}`, or
/// the start of whatever body another server sent.
pub async fn refusal(response: reqwest::Response) -> CliError {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(200).collect::<String>().trim().to_owned());
    CliError::Refused { status, message }
}

/// Exponential backoff with full jitter: each wait is random between half and all of
/// `first × 2^attempt`, capped at `max`, so a crowd of clients does not retry in step.
#[derive(Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    attempt: u32,
    /// The reconnection time the server asked for with `retry:` (ms; 0: none), which a wait is
    /// never shorter than — as a browser's `EventSource` honours it.
    server_retry: Arc<AtomicU64>,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max: max.max(first),
            attempt: 0,
            server_retry: Arc::default(),
        }
    }

    /// A backoff of the same shape for another purpose: it starts over, and no server's
    /// `retry:` applies to it.
    pub fn fresh(&self) -> Backoff {
        Backoff::new(self.first, self.max)
    }

    /// Where [`sse_events`] records the server's `retry:`.
    pub fn retry_hint(&self) -> Arc<AtomicU64> {
        self.server_retry.clone()
    }

    /// The next wait; each call doubles the ceiling.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .first
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let ceiling_ms = ceiling.as_millis().max(1) as u64;
        let ours = Duration::from_millis(ceiling_ms / 2 + fastrand::u64(0..=ceiling_ms / 2));
        // The server's word is jittered by the server (herald's is, at shutdown).
        let asked = Duration::from_millis(self.server_retry.load(Ordering::Relaxed));
        ours.max(asked)
    }

    /// After a connection that worked: start again from the first delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Why an SSE response stopped giving events.
#[derive(Debug)]
pub enum StreamEnd {
    /// The server ended the response.
    Closed,
    /// The connection failed, or the bytes were not SSE (garbage, bad UTF-8), or nothing at
    /// all (not even a heartbeat) came for the idle limit.
    Failed(String),
}

/// The events of an SSE response, parsed by a real SSE parser (comments, `retry:`, CR/LF/CRLF,
/// split chunks). Ends with `Err(StreamEnd)` when the response does.
pub fn sse_events(
    response: reqwest::Response,
    idle: Duration,
    retry_hint: Arc<AtomicU64>,
) -> impl Stream<Item = Result<Event, StreamEnd>> + Unpin {
    // The parser drops frames without data, and `retry:` usually comes alone (herald's first
    // frame, its goodbye at shutdown): the bytes are read for it before they are parsed.
    let mut scanner = RetryScanner::default();
    let events = response
        .bytes_stream()
        .inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                if let Some(ms) = scanner.feed(chunk) {
                    retry_hint.store(ms, Ordering::Relaxed);
                }
            }
        })
        .eventsource();
    Box::pin(futures::stream::unfold(
        (Box::pin(events), false),
        move |(mut events, done)| async move {
            if done {
                return None;
            }
            let next = match tokio::time::timeout(idle, events.next()).await {
                Err(_) => Err(StreamEnd::Failed(format!(
                    "nothing received for {} s",
                    idle.as_secs()
                ))),
                Ok(None) => Err(StreamEnd::Closed),
                Ok(Some(Err(e))) => Err(StreamEnd::Failed(e.to_string())),
                Ok(Some(Ok(event))) => Ok(event),
            };
            let done = next.is_err();
            Some((next, (events, done)))
        },
    ))
}

/// Finds `retry: <ms>` lines in an SSE byte stream, across chunk boundaries.
#[derive(Debug, Default)]
struct RetryScanner {
    /// The start of a line not ended yet (only kept while it may be a `retry:` line).
    partial: Vec<u8>,
}

impl RetryScanner {
    /// The last `retry:` value completed in this chunk, if any.
    fn feed(&mut self, chunk: &[u8]) -> Option<u64> {
        let mut found = None;
        for &byte in chunk {
            if byte == b'\n' || byte == b'\r' {
                found = Self::retry_of(&self.partial).or(found);
                self.partial.clear();
            } else if self.partial.len() < 32 {
                self.partial.push(byte);
            }
        }
        found
    }

    fn retry_of(line: &[u8]) -> Option<u64> {
        let value = line.strip_prefix(b"retry:")?;
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
            return None; // the spec ignores a retry that is not all digits
        }
        std::str::from_utf8(value).ok()?.parse().ok()
    }
}

/// Sleeps for `delay`, or returns false at once if Ctrl-C comes first.
pub async fn pause(delay: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = tokio::signal::ctrl_c() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_lines_are_found_across_chunks_and_garbage_is_ignored() {
        let mut scanner = RetryScanner::default();
        assert_eq!(scanner.feed(b"retry: 3000\n\n"), Some(3000));
        assert_eq!(scanner.feed(b"id: 1\ndata: retry: 9\n\nret"), None);
        assert_eq!(scanner.feed(b"ry:250"), None, "not ended yet");
        assert_eq!(scanner.feed(b"0\r\n"), Some(2500));
        assert_eq!(scanner.feed(b"retry: 12x\n"), None);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        backoff
            .retry_hint()
            .store(2500, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            backoff.next_delay(),
            Duration::from_millis(2500),
            "the server's wait"
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay()).collect();
        assert!((50..=100).contains(&(delays[0].as_millis() as u64)));
        assert!((100..=200).contains(&(delays[1].as_millis() as u64)));
        assert!((200..=400).contains(&(delays[2].as_millis() as u64)));
        for late in &delays[4..] {
            assert!(
                (500..=1000).contains(&(late.as_millis() as u64)),
                "{late:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn only_client_errors_other_than_timeouts_and_rate_limits_are_permanent() {
        let refused = |status| CliError::Refused {
            status,
            message: String::new(),
        };
        assert!(refused(reqwest::StatusCode::FORBIDDEN).is_permanent());
        assert!(refused(reqwest::StatusCode::BAD_REQUEST).is_permanent());
        assert!(!refused(reqwest::StatusCode::TOO_MANY_REQUESTS).is_permanent());
        assert!(!refused(reqwest::StatusCode::SERVICE_UNAVAILABLE).is_permanent());
        assert!(!CliError::Unreachable {
            url: String::new(),
            reason: String::new()
        }
        .is_permanent());
    }

    #[test]
    fn urls_join_without_double_slashes() {
        let target = Target {
            url: "http://h:1/".into(),
            token: None,
        };
        assert_eq!(target.at("/streams/a"), "http://h:1/streams/a");
    }
}
