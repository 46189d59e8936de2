//! What the broker counts for `/metrics`: catch-ups from the log, lag recoveries, fsync
//! latency, events published. These are prometheus-client's metric values — thread-safe
//! atomics and one histogram, with no exporter or HTTP in them; the HTTP layer registers and
//! encodes them.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

#[derive(Debug, Clone)]
pub struct BrokerMetrics {
    /// Events made durable and visible, all streams.
    pub published: Counter,
    /// Pages read from the log for subscribers (resumes and lag recoveries).
    pub catch_up_reads: Counter,
    /// Events subscribers got from the log rather than from a live channel.
    pub catch_up_events: Counter,
    /// Times a subscriber fell behind its live channel and went back to the log.
    pub lag_recoveries: Counter,
    /// How long each fsync of the log took, in seconds.
    pub fsync_seconds: Histogram,
}

impl Default for BrokerMetrics {
    fn default() -> Self {
        BrokerMetrics {
            published: Counter::default(),
            catch_up_reads: Counter::default(),
            catch_up_events: Counter::default(),
            lag_recoveries: Counter::default(),
            // 50 µs to ~1.6 s.
            fsync_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
        }
    }
}
