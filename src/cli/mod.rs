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
    // reqwest's Display hides the cause ("error sending request"); the source says why. The
    // URL is said once, by the caller's message, not again inside reqwest's.
    let error = error.without_url();
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        reason = format!("{reason}: {cause}");
        source = cause.source();
    }
    CliError::Unreachable {
        url: url.to_owned(),
        reason,
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
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max: max.max(first),
            attempt: 0,
        }
    }

    /// The next wait; each call doubles the ceiling.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .first
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let ceiling_ms = ceiling.as_millis().max(1) as u64;
        Duration::from_millis(ceiling_ms / 2 + fastrand::u64(0..=ceiling_ms / 2))
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
) -> impl Stream<Item = Result<Event, StreamEnd>> + Unpin {
    let events = response.bytes_stream().eventsource();
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
