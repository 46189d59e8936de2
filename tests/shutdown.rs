//! Graceful shutdown against the real server: every subscriber is told when to come back, at
//! spread-out times; herald exits by itself in bounded time; a second signal exits at once.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn signal(server: &Server, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sigterm_spreads_reconnects_over_the_window_and_exits_in_time() {
    let mut server = Server::start(&["--shutdown-retry-window", "5"]);
    let mut subscribers = Vec::new();
    for i in 0..40 {
        subscribers.push(RawSse::open(&server, &format!("stream=s{}", i % 4), None).await);
    }
    for s in &subscribers {
        s.wait_for("retry: 3000").await;
    }
    let last = publish(&server, "s0", "before the end").await;
    subscribers[0].wait_for(&format!("id: {last}")).await;

    let signalled = Instant::now();
    signal(&server, "TERM");
    let mut delays = Vec::new();
    for s in &subscribers {
        let text = s.wait_end().await;
        let told: Vec<u64> = text
            .lines()
            .filter_map(|l| l.strip_prefix("retry: "))
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(told.len(), 2, "the opening retry and the goodbye: {text:?}");
        delays.push(told[1]);
    }
    let code = server.exit_code_within(Duration::from_secs(10));
    let took = signalled.elapsed();
    assert_eq!(code, Some(0), "exits by itself, successfully");
    assert!(took < Duration::from_secs(6), "exited after {took:?}");
    eprintln!("40 subscribers told and process exited {took:?} after SIGTERM");

    assert!(
        delays.iter().all(|d| (1000..6000).contains(d)),
        "every delay within 1 s + the 5 s window: {delays:?}"
    );
    delays.sort_unstable();
    delays.dedup();
    assert!(
        delays.len() >= 30,
        "40 clients must not all come back at once: {delays:?}"
    );
    let spread = delays[delays.len() - 1] - delays[0];
    assert!(spread >= 2500, "delays spread over the window: {delays:?}");

    // The acknowledged event is there after the restart: the store was flushed.
    server.restart();
    let (_, page) = get_json(&server, "/streams/s0/events").await;
    assert_eq!(page_ids(&page), [last]);
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let mut server = Server::start(&[]);
    // A publisher stuck mid-upload: graceful shutdown would wait for it (up to 5 s).
    let address = server.url.strip_prefix("http://").unwrap().to_string();
    let mut upload = TcpStream::connect(&address).unwrap();
    write!(
        upload,
        "POST /streams/slow HTTP/1.1\r\nHost: {address}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    signal(&server, "TERM");
    assert_eq!(
        server.exit_code_within(Duration::from_millis(1000)),
        None,
        "the first signal waits for the upload"
    );
    assert!(
        TcpStream::connect(&address).is_err(),
        "no new connections are accepted while shutting down"
    );
    let second = Instant::now();
    signal(&server, "INT");
    let code = server.exit_code_within(Duration::from_secs(2));
    assert_eq!(code, Some(130), "a second signal exits at once");
    eprintln!("exited {:?} after the second signal", second.elapsed());
    drop(upload);
}
