//! The web UI's server side against the real binary: pages and assets come out of the binary
//! with the right types, caching and security headers, and the dashboard's `/stats` and
//! `/stats/live` count exactly what happened. (The pages themselves are driven in Chromium by
//! `tests/browser/ui.mjs`.)

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

#[tokio::test]
async fn pages_and_assets_are_served_from_the_binary_with_safe_headers() {
    let server = Server::start(&[]);
    let c = client();
    for (path, needle) in [
        ("/", "What herald is doing right now"),
        ("/demo/qa", "Live Q&amp;A"),
        ("/demo/htmx", "sse-connect"),
        ("/demo/timer", "EventSource"),
    ] {
        let response = c.get(server.at(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let h = response.headers().clone();
        assert_eq!(h["content-type"], "text/html; charset=utf-8");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert!(response.text().await.unwrap().contains(needle), "{path}");
    }
    let css = c.get(server.at("/web/app.css")).send().await.unwrap();
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
    let etag = css.headers()["etag"].clone();
    let again = c
        .get(server.at("/web/app.css"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    let htmx = c
        .get(server.at("/web/vendor/htmx-2.0.11.min.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(htmx.status(), 200);
    assert!(htmx.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("javascript"));

    for missing in [
        "/web/nope.js",
        "/web/../Cargo.toml",
        "/web/%2e%2e/Cargo.toml",
        "/web/vendor/README.md",
    ] {
        let response = c.get(server.at(missing)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{missing}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string());
    }
}

#[tokio::test]
async fn stats_count_exactly_what_was_published_and_delivered() {
    let server = Server::start(&[]);
    let (_, before) = get_json(&server, "/stats").await;
    assert_eq!(before["published"], 0);
    assert_eq!(before["delivered"], 0);
    assert_eq!(before["connections"], 0);

    let mut a = subscribe(&server, "stream=s", None).await;
    let mut b = subscribe(&server, "stream=s&stream=t", None).await;
    for i in 0..5 {
        publish(&server, "s", &format!("{i}")).await;
    }
    publish(&server, "t", "x").await;
    take(&mut a, 5).await;
    take(&mut b, 6).await;
    let (status, stats) = get_json(&server, "/stats").await;
    assert_eq!(status, 200);
    assert_eq!(stats["published"], 6);
    assert_eq!(stats["delivered"], 11, "5 to a, 6 to b");
    assert_eq!(stats["connections"], 2);
    let s = stats["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "s")
        .unwrap();
    assert_eq!(s["published"], 5);
    assert_eq!(s["subscribers"], 2);
    assert!(stats["uptime"].as_f64().unwrap() > 0.0);
}

/// With more streams than a snapshot shows, it shows the busiest: those with subscribers,
/// then those with events in the last minute, then the first by name — and says there are more.
#[tokio::test]
async fn stats_show_the_busiest_streams_and_say_there_are_more() {
    let server = Server::start(&[]);
    // 150 streams with one event each, named to sort before the busy ones.
    let names: Vec<String> = (0..150).map(|i| format!("a-{i:03}")).collect();
    let events: Vec<(&str, String)> = names
        .iter()
        .map(|name| (name.as_str(), "one".to_string()))
        .collect();
    publish_batch(&server, &events).await;
    // One with a subscriber (and no event), one with more events than the rest.
    let _watching = subscribe(&server, "stream=z-watched", None).await;
    for _ in 0..5 {
        publish(&server, "z-active", "busy").await;
    }

    let (_, stats) = get_json(&server, "/stats").await;
    let shown: Vec<&str> = stats["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(shown.len(), 100);
    assert!(
        shown.contains(&"z-watched") && shown.contains(&"z-active"),
        "{shown:?}"
    );
    assert_eq!(
        shown[..98],
        names[..98].iter().map(String::as_str).collect::<Vec<_>>()[..]
    );
    assert!(shown.windows(2).all(|w| w[0] < w[1]), "by name");
    assert_eq!(stats["more_streams"], true);
    // GET /streams still pages through every one of them.
    let (_, page) = get_json(&server, "/streams?limit=1000").await;
    assert_eq!(page.as_array().unwrap().len(), 152);
}

#[tokio::test]
async fn stats_live_sends_a_snapshot_a_second_and_hides_private_streams() {
    let server = Server::start(&["--publish-token", "t0ken", "--private", "secret:*"]);
    for stream in ["open", "secret:1"] {
        let response = client()
            .post(server.at(&format!("/streams/{stream}")))
            .bearer_auth("t0ken")
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    let response = client().get(server.at("/stats/live")).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut events = Box::pin(eventsource_stream::Eventsource::eventsource(
        response.bytes_stream(),
    ));
    let started = std::time::Instant::now();
    let mut snapshots = Vec::new();
    while snapshots.len() < 2 {
        let event = tokio::time::timeout(
            Duration::from_secs(5),
            futures::StreamExt::next(&mut events),
        )
        .await
        .unwrap()
        .unwrap()
        .unwrap();
        assert_eq!(event.event, "stats");
        snapshots.push(serde_json::from_str::<Value>(&event.data).unwrap());
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "one a second"
    );
    let names: Vec<&str> = snapshots[1]["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["open"], "secret:1 is private");
    assert_eq!(snapshots[1]["connections"], 1, "the dashboard itself");
    // With the token, the private stream is listed too.
    let response = client()
        .get(server.at("/stats?token=t0ken"))
        .send()
        .await
        .unwrap();
    let stats: Value = response.json().await.unwrap();
    assert_eq!(stats["streams"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn the_demo_flag_ticks_the_timer_stream() {
    let server = Server::start(&["--demo"]);
    let mut ticks = subscribe(&server, "stream=timer", None).await;
    let got = take(&mut ticks, 2).await;
    let first: u64 = got[0].data.parse().unwrap();
    assert_eq!(got[1].data, (first + 1).to_string());
    let (_, retention) = get_json(&server, "/streams/timer/retention").await;
    assert_eq!(retention["max_len"], 100);
}
