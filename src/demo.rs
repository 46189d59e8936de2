//! `herald --demo`: a built-in publisher for `/demo/timer`, the simplest live page — a
//! counter ticking every second — so a newcomer sees events flow before writing any code. It is
//! an ordinary publisher (through the library's `Broker::publish`), nothing special-cased.

use std::time::Duration;

use crate::broker::event::{NewEvent, StreamName};
use crate::broker::{Broker, BrokerError};

/// The stream the timer page reads.
pub const TIMER_STREAM: &str = "timer";

/// Publishes 1, 2, 3, … to `timer`, one a second, until the broker shuts down. The stream keeps
/// its last 100 ticks only.
pub async fn run_timer(broker: Broker) {
    let Ok(stream) = StreamName::new(TIMER_STREAM) else {
        return;
    };
    if let Err(e) = broker.set_retention(&stream, Some(100), None).await {
        tracing::warn!(error = %e, "demo timer: cannot limit the timer stream");
    }
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    for count in 1u64.. {
        ticks.tick().await;
        let tick = NewEvent {
            stream: stream.clone(),
            kind: None,
            data: count.to_string(),
        };
        match broker.publish(tick).await {
            Ok(_) => {}
            Err(BrokerError::ShuttingDown) => return,
            Err(e) => tracing::warn!(error = %e, "demo timer: publish failed"),
        }
    }
}
