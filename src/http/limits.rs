//! Caps on open SSE subscriptions: server-wide (`--max-connections`) and per client address
//! (`--max-connections-per-ip`). Publishing and reads are not counted, so subscribers can never
//! lock the publishers out.
//!
//! Refusing a subscriber needs care: any status but 200 makes a browser's `EventSource` give up
//! for good. So a request that accepts `text/event-stream` gets `200`, a jittered `retry:` and an
//! ended body — the browser comes back later on its own. Anything else gets `503` (or `429` for
//! the per-address cap) with `Retry-After` and the JSON error.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::{Reply, Response};

use super::error::ApiError;

#[derive(Debug, Default)]
pub struct ConnectionLimits {
    max: Option<usize>,
    per_ip: Option<usize>,
    open: AtomicUsize,
    by_ip: DashMap<IpAddr, usize>,
}

/// Why a subscriber was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    Server(usize),
    Address(usize),
    /// Not a cap: the shared event store cannot be reached now.
    StoreAway,
    /// Not a cap: the app that decides who reads (`--auth-url`) cannot be asked now.
    AppAway,
}

/// One open subscription's place; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<ConnectionLimits>,
    ip: Option<IpAddr>,
}

impl ConnectionLimits {
    pub fn new(max: Option<usize>, per_ip: Option<usize>) -> ConnectionLimits {
        ConnectionLimits {
            max,
            per_ip,
            ..ConnectionLimits::default()
        }
    }

    /// Open SSE subscriptions right now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn acquire(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Slot, Full> {
        let reserved = self.open.fetch_add(1, Ordering::AcqRel);
        if let Some(max) = self.max {
            if reserved >= max {
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(Full::Server(max));
            }
        }
        let counted_ip = match (self.per_ip, ip) {
            (Some(limit), Some(ip)) => {
                let mut count = self.by_ip.entry(ip).or_insert(0);
                if *count >= limit {
                    drop(count);
                    self.open.fetch_sub(1, Ordering::AcqRel);
                    return Err(Full::Address(limit));
                }
                *count += 1;
                Some(ip)
            }
            _ => None,
        };
        Ok(Slot {
            limits: Arc::clone(self),
            ip: counted_ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            // Remove the entry at zero, so the map does not grow with every address ever seen.
            self.limits.by_ip.remove_if_mut(&ip, |_, count| {
                *count = count.saturating_sub(1);
                *count == 0
            });
        }
    }
}

/// The answer to a subscriber turned away; `retry_window` spreads the clients' return.
pub fn turned_away(full: Full, accepts_event_stream: bool, retry_window: Duration) -> Response {
    let window_ms = retry_window.as_millis().max(1) as u64;
    let delay_ms = 1000 + fastrand::u64(0..window_ms);
    let (status, message) = match full {
        Full::Server(max) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("herald is at its limit of {max} subscriptions; try again later"),
        ),
        Full::Address(max) => (
            StatusCode::TOO_MANY_REQUESTS,
            format!("this address already has {max} subscriptions open; close some first"),
        ),
        Full::StoreAway => (
            StatusCode::SERVICE_UNAVAILABLE,
            "herald cannot reach its event store right now; try again later".to_owned(),
        ),
        Full::AppAway => (
            StatusCode::SERVICE_UNAVAILABLE,
            "herald cannot ask the app who may read this right now; try again later".to_owned(),
        ),
    };
    if accepts_event_stream {
        let body = format!(": {message}\nretry: {delay_ms}\n\n");
        let mut response = Response::new(body.into());
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return response;
    }
    let mut response = ApiError::new(status, message).into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(delay_ms.div_ceil(1000)),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_and_given_back() {
        let limits = Arc::new(ConnectionLimits::new(Some(3), Some(2)));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = limits.acquire(Some(a)).unwrap();
        let _a2 = limits.acquire(Some(a)).unwrap();
        assert_eq!(limits.acquire(Some(a)).unwrap_err(), Full::Address(2));
        let _b1 = limits.acquire(Some(b)).unwrap();
        assert_eq!(limits.acquire(Some(b)).unwrap_err(), Full::Server(3));
        assert_eq!(limits.open(), 3);
        drop(a1);
        assert_eq!(limits.open(), 2);
        let _b2 = limits.acquire(Some(b)).unwrap();
        assert_eq!(limits.by_ip.get(&a).map(|c| *c), Some(1));
    }

    #[test]
    fn addresses_leave_the_map_when_their_last_slot_goes() {
        let limits = Arc::new(ConnectionLimits::new(None, Some(5)));
        let ip: IpAddr = "::1".parse().unwrap();
        let slots: Vec<_> = (0..5).map(|_| limits.acquire(Some(ip)).unwrap()).collect();
        drop(slots);
        assert!(limits.by_ip.is_empty());
        assert_eq!(limits.open(), 0);
    }

    #[test]
    fn event_stream_clients_get_200_and_a_retry_others_get_503() {
        let window = Duration::from_secs(10);
        let sse = turned_away(Full::Server(1), true, window);
        assert_eq!(sse.status(), StatusCode::OK);
        assert_eq!(sse.headers()[header::CONTENT_TYPE], "text/event-stream");
        let other = turned_away(Full::Server(1), false, window);
        assert_eq!(other.status(), StatusCode::SERVICE_UNAVAILABLE);
        let after: u64 = other.headers()[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=11).contains(&after));
        let per_ip = turned_away(Full::Address(1), false, window);
        assert_eq!(per_ip.status(), StatusCode::TOO_MANY_REQUESTS);
    }
}
