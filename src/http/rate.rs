//! Publish rate limits (`--publish-rate`, `--publish-burst`): each credential — the bearer token
//! presented — or, without one, each client address may publish at most so many requests a
//! second, with a burst. Beyond it a `429` with `Retry-After` and the JSON error. Readers are
//! never counted: a subscriber's connections and history reads do not touch these buckets.
//!
//! The buckets are `governor`'s (GCRA, keyed); idle ones are dropped now and then.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use warp::http::StatusCode;

use super::error::ApiError;

/// Checks between two sweeps of idle buckets.
const SWEEP_EVERY: u64 = 10_000;

/// How many publish requests a second, and how many at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PublishRate {
    pub per_second: f64,
    pub burst: u32,
}

pub struct PublishLimiter {
    limiter: RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock>,
    clock: DefaultClock,
    checks: AtomicU64,
    rate: PublishRate,
}

impl PublishLimiter {
    pub fn new(rate: PublishRate) -> PublishLimiter {
        let period = Duration::from_secs_f64(1.0 / rate.per_second.max(1e-6));
        let burst = NonZeroU32::new(rate.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        PublishLimiter {
            limiter: RateLimiter::keyed(quota),
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
            rate,
        }
    }

    /// One more publish request by this credential (`bearer`) or, without one, this address.
    pub fn check(&self, bearer: Option<&str>, peer: Option<IpAddr>) -> Result<(), ApiError> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
        }
        let key = match (bearer, peer) {
            (Some(token), _) => format!("token:{token}"),
            (None, Some(ip)) => format!("address:{ip}"),
            (None, None) => "address:unknown".to_owned(),
        };
        match self.limiter.check_key(&key) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                let mut error = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "publishing faster than this herald allows ({} per second, bursts of {}); \
                         retry after {:.1} s",
                        self.rate.per_second,
                        self.rate.burst,
                        wait.as_secs_f64()
                    ),
                );
                error.retry_after = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds_per_key() {
        let limiter = PublishLimiter::new(PublishRate {
            per_second: 1.0,
            burst: 3,
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.check(None, Some(a)).is_ok());
        }
        let refused = limiter.check(None, Some(a)).unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.retry_after, Some(1));
        assert!(
            limiter.check(None, Some(b)).is_ok(),
            "another address has its own"
        );
        assert!(
            limiter.check(Some("t"), Some(a)).is_ok(),
            "a credential has its own"
        );
    }
}
