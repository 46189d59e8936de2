//! A subscriber that stops reading holds back no one, and misses nothing once it reads again.

mod common;

use std::time::Duration;

use common::*;
use eventsource_stream::Eventsource;
use futures::StreamExt;

const EVENTS: usize = 50_000;
const BATCH: usize = 500;

#[tokio::test]
async fn a_stalled_subscriber_gets_every_event_later_and_slows_no_one() {
    // The stalled reader's TCP window stays shut while the flood is published. A reader stalled
    // longer than --peer-timeout (default: the 15 s heartbeat) is dropped by design, to resume
    // later (see docs/API.md); this test is about catching up, so it must not depend on how fast
    // this machine publishes 50 MB.
    let server = Server::start(&["--peer-timeout", "120"]);
    // ~1 KiB per event: 50 MB in all, far more than the kernel's socket buffers and the HTTP
    // client's buffers can hold, so the stalled connection is under real TCP backpressure and
    // its live channel (256 slots) overflows many times over.
    let padding = "p".repeat(1000);

    // The slow subscriber: connected, then not read at all until every event is published
    // and the fast subscriber is done.
    let slow = client()
        .get(server.at("/sse?stream=flood"))
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 200);

    let mut fast = subscribe(&server, "stream=flood", None).await;
    let fast_reader = tokio::spawn(async move {
        let mut ids = Vec::with_capacity(EVENTS);
        while ids.len() < EVENTS {
            match tokio::time::timeout(Duration::from_secs(60), fast.next()).await {
                Ok(Some(event)) => ids.push(event.id.parse::<u64>().unwrap()),
                other => panic!("fast subscriber stalled after {}: {other:?}", ids.len()),
            }
        }
        ids
    });

    let mut published = Vec::with_capacity(EVENTS);
    for start in (0..EVENTS).step_by(BATCH) {
        let batch: Vec<(&str, String)> = (start..start + BATCH)
            .map(|i| ("flood", format!("{i} {padding}")))
            .collect();
        published.extend(publish_batch(&server, &batch).await);
    }
    let fast_ids = tokio::time::timeout(Duration::from_secs(120), fast_reader)
        .await
        .expect("the fast subscriber finished while the slow one was stalled")
        .unwrap();
    assert_eq!(fast_ids, published);

    // Now the slow subscriber reads: everything, in order, once.
    let mut slow = slow.bytes_stream().eventsource();
    let mut next_index = 0;
    while next_index < EVENTS {
        let event = match tokio::time::timeout(Duration::from_secs(60), slow.next()).await {
            Ok(Some(Ok(event))) => event,
            other => panic!("slow subscriber stalled after {next_index}: {other:?}"),
        };
        assert_eq!(event.id.parse::<u64>().unwrap(), published[next_index]);
        assert!(event.data.starts_with(&format!("{next_index} ")));
        next_index += 1;
    }
}

#[tokio::test]
async fn a_reader_stalled_past_the_peer_timeout_is_let_go_and_can_resume() {
    let server = Server::start(&["--peer-timeout", "2"]);
    let padding = "p".repeat(1000);
    let stalled = client()
        .get(server.at("/sse?stream=flood"))
        .send()
        .await
        .unwrap();
    assert_eq!(stalled.status(), 200);
    // 20 MB: enough to fill the socket buffers both ways and shut the reader's TCP window.
    let mut published = Vec::new();
    for start in (0..20_000).step_by(BATCH) {
        let batch: Vec<(&str, String)> = (start..start + BATCH)
            .map(|i| ("flood", format!("{i} {padding}")))
            .collect();
        published.extend(publish_batch(&server, &batch).await);
    }
    let since = std::time::Instant::now();
    eventually(
        "the stalled reader is dropped",
        Duration::from_secs(30),
        || async { get_json(&server, "/streams/flood").await.1["subscribers"] == 0 },
    )
    .await;
    eprintln!(
        "stalled reader dropped {:?} after the flood",
        since.elapsed()
    );
    drop(stalled);

    // It comes back with its Last-Event-ID (here: the first event) and gets the rest.
    let mut resumed = subscribe(&server, "stream=flood", Some(published[0])).await;
    let got = take(&mut resumed, published.len() - 1).await;
    assert_eq!(ids(&got), published[1..]);
}
