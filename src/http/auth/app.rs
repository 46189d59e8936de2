//! Asking the app (`--auth-url`): a read of a private stream that no presented token covers is
//! decided by the app that knows the user — by its session cookie, typically — as Nchan's
//! `nchan_authorize_request` and Centrifugo's proxies do.
//!
//! herald sends `GET <auth-url>?stream=<name>…` (each such stream once) with the request's
//! `Cookie`, `Authorization` and `Origin` and an `X-Forwarded-For`. A `2xx` allows every stream
//! named, and its optional JSON body `{"client": "<id>"}` is the proven presence id; `401`/`403`
//! is passed on to the reader with the app's JSON error (or a plain one); anything else, or no
//! answer within `--auth-timeout`, means the app is away — the caller then answers `503`, or
//! tells an `EventSource` to come back. Calls are bounded: a timeout each, at most
//! [`CONCURRENT`] at once, and answers cached for `--auth-cache` seconds when asked.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use warp::http::{HeaderMap, StatusCode};

use crate::broker::event::StreamName;
use crate::broker::presence::ClientId;
use crate::http::error::ApiError;

/// Calls to the app in flight at once, at most; more wait (within the timeout).
pub const CONCURRENT: usize = 64;
/// Cached answers kept at most (the cache is emptied when full).
const CACHED: usize = 10_000;

/// How herald asks the app.
#[derive(Debug, Clone)]
pub struct AppAuthOptions {
    pub url: String,
    pub timeout: Duration,
    /// How long an answer is kept for identical headers and streams (zero: ask every time).
    pub cache: Duration,
}

/// What the app said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every stream asked for may be read; the client id the app vouches for, if it gave one.
    Allowed(Option<ClientId>),
    /// `401` or `403`, with the message for the reader.
    Refused(StatusCode, String),
}

/// The parts of a request the app decides by.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AppRequest {
    cookie: Option<String>,
    authorization: Option<String>,
    origin: Option<String>,
    forwarded_for: Option<String>,
}

impl AppRequest {
    pub fn from_request(headers: &HeaderMap, peer: Option<SocketAddr>) -> AppRequest {
        let header = |name: &str| {
            let values: Vec<&str> = headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!values.is_empty()).then(|| values.join("; "))
        };
        // The client's address appended to what a proxy in front already said.
        let forwarded_for = match (header("x-forwarded-for"), peer) {
            (Some(before), Some(peer)) => Some(format!("{before}, {}", peer.ip())),
            (Some(before), None) => Some(before),
            (None, Some(peer)) => Some(peer.ip().to_string()),
            (None, None) => None,
        };
        AppRequest {
            cookie: header("cookie"),
            authorization: header("authorization"),
            origin: header("origin"),
            forwarded_for,
        }
    }
}

pub struct AppAuth {
    options: AppAuthOptions,
    client: reqwest::Client,
    permits: Semaphore,
    cache: Mutex<HashMap<Question, (Instant, Verdict)>>,
}

/// What the app was asked: by whom (the headers) and about which streams (sorted).
type Question = (AppRequest, Vec<StreamName>);

impl std::fmt::Debug for AppAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppAuth")
            .field("url", &self.options.url)
            .finish()
    }
}

impl AppAuth {
    pub fn new(options: AppAuthOptions) -> Result<AppAuth, String> {
        let client = reqwest::Client::builder()
            .timeout(options.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build an HTTP client for --auth-url: {e}"))?;
        reqwest::Url::parse(&options.url)
            .map_err(|e| format!("--auth-url {:?} is not a URL: {e}", options.url))?;
        Ok(AppAuth {
            options,
            client,
            permits: Semaphore::new(CONCURRENT),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The app's verdict on `streams` for this request; `Err` when the app is away (no answer
    /// in time, or one that is neither a `2xx` nor `401`/`403`).
    pub async fn ask(
        &self,
        request: &AppRequest,
        streams: &[StreamName],
    ) -> Result<Verdict, String> {
        let mut streams = streams.to_vec();
        streams.sort();
        streams.dedup();
        let key = (request.clone(), streams);
        if !self.options.cache.is_zero() {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, verdict)) = cache.get(&key) {
                if at.elapsed() < self.options.cache {
                    return Ok(verdict.clone());
                }
            }
        }
        let verdict = tokio::time::timeout(self.options.timeout, self.call(&key.0, &key.1))
            .await
            .map_err(|_| format!("the app did not answer within {:?}", self.options.timeout))??;
        if !self.options.cache.is_zero() {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() >= CACHED {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), verdict.clone()));
        }
        Ok(verdict)
    }

    async fn call(&self, request: &AppRequest, streams: &[StreamName]) -> Result<Verdict, String> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| "herald is shutting down".to_owned())?;
        let query: Vec<(&str, &str)> = streams.iter().map(|s| ("stream", s.as_str())).collect();
        let mut call = self.client.get(&self.options.url).query(&query);
        for (name, value) in [
            ("cookie", &request.cookie),
            ("authorization", &request.authorization),
            ("origin", &request.origin),
            ("x-forwarded-for", &request.forwarded_for),
        ] {
            if let Some(value) = value {
                call = call.header(name, value);
            }
        }
        let response = call.send().await.map_err(|e| {
            if e.is_timeout() {
                format!("the app did not answer within {:?}", self.options.timeout)
            } else {
                format!(
                    "the app at --auth-url cannot be reached: {}",
                    crate::http::error::with_causes(&e.without_url())
                )
            }
        })?;
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        if status.is_success() {
            let client = match json.as_ref().and_then(|j| j.get("client")) {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(id)) => Some(ClientId::new(id).map_err(|e| {
                    format!("the app answered a client id herald cannot use: {}", e.0)
                })?),
                Some(other) => {
                    return Err(format!(
                        "the app answered a client that is not a string: {other}"
                    ))
                }
            };
            return Ok(Verdict::Allowed(client));
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let message = json
                .as_ref()
                .and_then(|j| j.get("error"))
                .and_then(|e| e.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    let names: Vec<&str> = streams.iter().map(StreamName::as_str).collect();
                    format!(
                        "the app does not let this request read {}",
                        names.join(", ")
                    )
                });
            return Ok(Verdict::Refused(status, message));
        }
        Err(format!("the app at --auth-url answered {status}"))
    }
}

/// The `503` for a reader while the app cannot decide: `Retry-After`, jittered.
pub fn app_away(reason: &str) -> ApiError {
    let mut error = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "herald cannot ask the app who may read this right now ({reason}); try again later"
        ),
    );
    error.retry_after = Some(1 + fastrand::u64(0..3));
    error
}
