//! Publish over HTTP, receive over SSE — parsed by a real SSE client crate, not our own parser.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn json_raw_and_batch_publishes_reach_a_live_subscriber() {
    let server = Server::start(&[]);
    let mut events = subscribe(&server, "stream=news", None).await;
    let c = client();

    let raw = c
        .post(server.at("/streams/news?event=raw-type"))
        .header("content-type", "text/plain")
        .body("plain text")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 201);
    let raw_id = id_of(&raw.json::<Value>().await.unwrap()["id"]);

    let json_response = c
        .post(server.at("/streams/news"))
        .json(&json!({"data": "from json", "event": "json-type"}))
        .send()
        .await
        .unwrap();
    assert_eq!(json_response.status(), 201);
    let body: Value = json_response.json().await.unwrap();
    assert_eq!(body["stream"], "news");

    let structured = c
        .post(server.at("/streams/news"))
        .json(&json!({"data": {"n": 1, "tags": ["a", "b"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(structured.status(), 201);

    let batch = publish_batch(
        &server,
        &[
            ("news", "b1".into()),
            ("other", "x".into()),
            ("news", "b2".into()),
        ],
    )
    .await;
    assert_eq!(batch.len(), 3);
    assert!(batch.windows(2).all(|w| w[0] < w[1]));

    let got = take(&mut events, 5).await;
    let data: Vec<&str> = got.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(
        data,
        [
            "plain text",
            "from json",
            r#"{"n":1,"tags":["a","b"]}"#,
            "b1",
            "b2"
        ]
    );
    assert_eq!(got[0].event, "raw-type");
    assert_eq!(got[1].event, "json-type");
    assert_eq!(got[2].event, "message");
    assert_eq!(ids(&got)[0], raw_id);
    assert!(ids(&got).windows(2).all(|w| w[0] < w[1]), "ids rise");
}

#[tokio::test]
async fn data_arrives_exactly_as_published_and_cannot_forge_frames() {
    let server = Server::start(&[]);
    let mut events = subscribe(&server, "stream=tricky", None).await;
    let cases = [
        "line one\nline two",
        "crlf\r\nline",
        "cr\ronly",
        "\n\nleading blank lines",
        "trailing newline\n",
        "",
        "unicode: héllo ✓ 🚀 — ünïcödé",
        "\n\nid: 9\ndata: x",
        "x\n\nevent: admin\ndata: forged\n\n",
        ": not a comment\nretry: 1",
        "data: nested",
    ];
    for case in cases {
        publish(&server, "tricky", case).await;
    }
    let got = take(&mut events, cases.len()).await;
    for (event, sent) in got.iter().zip(cases) {
        let expected = sent.replace("\r\n", "\n").replace('\r', "\n");
        assert_eq!(event.data, expected, "published {sent:?}");
        assert_eq!(event.event, "message", "no event type can be injected");
    }
    let ids = ids(&got);
    assert!(ids.windows(2).all(|w| w[1] > w[0]), "no forged id: {ids:?}");
    // And history returns the data byte for byte, before normalisation.
    let (_, page) = get_json(&server, "/streams/tricky/events?limit=20").await;
    let stored: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    assert_eq!(stored, cases);
}

#[tokio::test]
async fn envelope_carries_stream_type_id_and_time() {
    let server = Server::start(&[]);
    let mut events = subscribe(&server, "stream=a&stream=b&envelope=1", None).await;
    let c = client();
    c.post(server.at("/streams/b?event=ping"))
        .body("two\nlines")
        .send()
        .await
        .unwrap();
    let got = take(&mut events, 1).await;
    let envelope: Value = serde_json::from_str(&got[0].data).unwrap();
    assert_eq!(envelope["stream"], "b");
    assert_eq!(envelope["event"], "ping");
    assert_eq!(envelope["data"], "two\nlines");
    assert_eq!(envelope["id"], got[0].id.as_str());
    assert!(envelope["time"].as_u64().unwrap() > 1_600_000_000_000);
}

#[tokio::test]
async fn one_last_event_id_resumes_every_stream_exactly() {
    let server = Server::start(&[]);
    let mut sent = Vec::new();
    for i in 0..30 {
        let stream = ["a", "b", "c"][i % 3];
        let id = publish(&server, stream, &format!("{stream}{i}")).await;
        sent.push((id, stream));
    }
    let resume_from = sent[10].0;
    let expected: Vec<u64> = sent
        .iter()
        .filter(|(id, s)| *id > resume_from && (*s == "a" || *s == "c"))
        .map(|(id, _)| *id)
        .collect();
    // Header form (what a reconnecting EventSource sends) ...
    let mut events = subscribe(&server, "stream=c&stream=a", Some(resume_from)).await;
    assert_eq!(ids(&take(&mut events, expected.len()).await), expected);
    // ... and query form, then live events keep coming in order after the catch-up.
    let mut events = subscribe(
        &server,
        &format!("stream=a&stream=c&last_id={resume_from}"),
        None,
    )
    .await;
    let live = publish(&server, "a", "live").await;
    publish(&server, "b", "not subscribed").await;
    let live2 = publish(&server, "c", "live2").await;
    let mut all = expected.clone();
    all.extend([live, live2]);
    assert_eq!(ids(&take(&mut events, all.len()).await), all);
}

#[tokio::test]
async fn last_id_zero_replays_all_history_and_no_last_id_is_live_only() {
    let server = Server::start(&[]);
    let first = publish(&server, "s", "old-1").await;
    publish(&server, "s", "old-2").await;
    let mut everything = subscribe(&server, "stream=s&last_id=0", None).await;
    let mut live_only = subscribe(&server, "stream=s", None).await;
    let new = publish(&server, "s", "new").await;
    let got = take(&mut everything, 3).await;
    assert_eq!(ids(&got)[0], first);
    assert_eq!(got[2].data, "new");
    let got = take(&mut live_only, 1).await;
    assert_eq!(ids(&got), [new]);
}

#[tokio::test]
async fn events_published_during_a_long_catch_up_arrive_once_in_order() {
    let server = Server::start(&[]);
    let history: Vec<(&str, String)> = (0..3000).map(|i| ("seam", format!("h{i}"))).collect();
    let mut expected = publish_batch(&server, &history).await;
    let mut events = subscribe(&server, "stream=seam&last_id=0", None).await;
    // Publish while the subscriber is still reading history from the log.
    let publisher = {
        let url = server.url.clone();
        tokio::spawn(async move {
            let c = client();
            let mut ids = Vec::new();
            for i in 0..200 {
                let r = c
                    .post(format!("{url}/streams/seam"))
                    .body(format!("live{i}"))
                    .send()
                    .await
                    .unwrap();
                ids.push(id_of(&r.json::<Value>().await.unwrap()["id"]));
            }
            ids
        })
    };
    let mut got = take(&mut events, 3000).await;
    expected.extend(publisher.await.unwrap());
    got.extend(take(&mut events, 200).await);
    assert_eq!(ids(&got), expected);
}

#[tokio::test]
async fn an_idle_connection_gets_heartbeats() {
    let server = Server::start(&["--heartbeat", "0.3"]);
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    socket
        .write_all(format!("GET /sse?stream=quiet HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.matches(": heartbeat\n\n").count() < 2 {
        let n = tokio::time::timeout_at(deadline, socket.read(&mut buf))
            .await
            .expect("heartbeats within 10 s")
            .unwrap();
        assert!(n > 0, "connection closed");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("x-accel-buffering: no"));
    assert!(seen.contains("cache-control: no-cache"));
    assert!(seen.contains("retry: "), "first bytes are flushed at once");
}

#[tokio::test]
async fn heartbeat_can_be_the_seed_talks_event_form() {
    let server = Server::start(&["--heartbeat", "0.2", "--heartbeat-event"]);
    let mut events = subscribe(&server, "stream=quiet", None).await;
    let got = take(&mut events, 1).await;
    assert_eq!(got[0].event, "heartbeat");
    assert_eq!(got[0].data, "ping");
}

#[tokio::test]
async fn history_and_stream_listing_follow_the_contract() {
    let server = Server::start(&[]);
    let mut ids_sent = Vec::new();
    for i in 0..5 {
        ids_sent.push(publish(&server, "h", &format!("e{i}")).await);
    }
    publish(&server, "other", "x").await;

    let (status, page) = get_json(
        &server,
        &format!("/streams/h/events?after={}&limit=2", ids_sent[0]),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(page_ids(&page), ids_sent[1..3]);
    assert_eq!(id_of(&page["next"]), ids_sent[2]);

    let (_, page) = get_json(&server, "/streams/h/events?last=2").await;
    assert_eq!(page_ids(&page), ids_sent[3..5]);

    let (status, event) = get_json(&server, &format!("/streams/h/events/{}", ids_sent[1])).await;
    assert_eq!(status, 200);
    assert_eq!(event["data"], "e1");
    assert_eq!(event["stream"], "h");
    assert_eq!(event["event"], Value::Null);
    let (status, error) =
        get_json(&server, &format!("/streams/other/events/{}", ids_sent[1])).await;
    assert_eq!(status, 404);
    assert!(error["error"].as_str().unwrap().contains("no event"));

    let (_, info) = get_json(&server, "/streams/h").await;
    assert_eq!(info["length"], 5);
    assert_eq!(id_of(&info["first_id"]), ids_sent[0]);
    assert_eq!(id_of(&info["last_id"]), ids_sent[4]);
    let (status, empty) = get_json(&server, "/streams/never").await;
    assert_eq!(status, 200);
    assert_eq!(empty["length"], 0);

    let _watching = subscribe(&server, "stream=watched", None).await;
    let (_, list) = get_json(&server, "/streams").await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["h", "other", "watched"],
        "a stream appears on first subscribe too"
    );
    assert_eq!(list[2]["subscribers"], 1);
}

#[tokio::test]
async fn retention_keeps_the_newest_max_len_and_tells_resumers_of_the_gap() {
    let server = Server::start(&["--max-len", "10"]);
    let first = publish(&server, "r", "first").await;
    let batch: Vec<(&str, String)> = (0..50).map(|i| ("r", format!("{i}"))).collect();
    let ids_sent = publish_batch(&server, &batch).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, info) = get_json(&server, "/streams/r").await;
        if info["length"] == 10 {
            assert_eq!(id_of(&info["first_id"]), ids_sent[40]);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not trimmed: {info}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut events = subscribe(&server, "stream=r", Some(first)).await;
    let got = take(&mut events, 11).await;
    assert_eq!(got[0].event, "gap");
    let gap: Value = serde_json::from_str(&got[0].data).unwrap();
    assert_eq!(gap["stream"], "r");
    assert_eq!(id_of(&gap["requested_after"]), first);
    assert_eq!(id_of(&gap["oldest_available"]), ids_sent[40]);
    assert_eq!(ids(&got[1..]), ids_sent[40..]);
}

#[tokio::test]
async fn streams_of_names_with_colons_work_in_paths_and_queries() {
    let server = Server::start(&[]);
    let mut events = subscribe(&server, "stream=realtime-qa%3Acommon", None).await;
    publish(&server, "realtime-qa:common", "raw colon").await;
    publish(&server, "realtime-qa%3Acommon", "encoded colon").await;
    let got = take(&mut events, 2).await;
    assert_eq!(got[1].data, "encoded colon");
    let next = tokio::time::timeout(Duration::from_millis(200), events.next()).await;
    assert!(next.is_err(), "nothing else arrives");
}

/// `Idempotency-Key` makes a retry safe: a repeat within the window (a publisher that timed out,
/// got a 503, lost its connection) stores nothing and gets the first answer, with
/// `Idempotent-Replayed: true` — for single events and batches, and across a `kill -9`.
#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_stores_nothing_even_after_kill_9() {
    let mut server = Server::start(&[]);
    let client = client();
    let post = |url: String, key: &'static str, body: &'static str| {
        client
            .post(url)
            .header("idempotency-key", key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let first = post(
        server.at("/streams/orders"),
        "order-42",
        r#"{"data":"paid"}"#,
    )
    .await
    .unwrap();
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let location = first.headers()["location"].clone();
    let first: Value = first.json().await.unwrap();

    let again = post(
        server.at("/streams/orders"),
        "order-42",
        r#"{"data":"paid"}"#,
    )
    .await
    .unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["location"], location);
    assert_eq!(again.json::<Value>().await.unwrap(), first);

    let batch = r#"[{"stream":"orders","data":"a"},{"stream":"invoices","data":"b"}]"#;
    let stored: Value = post(server.at("/publish"), "batch-7", batch)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stored["ids"].as_array().unwrap().len(), 2);
    let (_, orders) = get_json(&server, "/streams/orders").await;
    assert_eq!(orders["length"], 2);

    // kill -9: the keys were committed with their events.
    server.kill9();
    server.restart();
    let replayed = post(server.at("/publish"), "batch-7", batch).await.unwrap();
    assert_eq!(replayed.status(), 201);
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    assert_eq!(replayed.json::<Value>().await.unwrap(), stored);
    let single = post(
        server.at("/streams/orders"),
        "order-42",
        r#"{"data":"paid"}"#,
    )
    .await
    .unwrap();
    assert_eq!(single.json::<Value>().await.unwrap(), first);
    let (_, orders) = get_json(&server, "/streams/orders").await;
    assert_eq!(orders["length"], 2, "nothing stored twice");

    // Another key is another request; a bad key is refused and stores nothing.
    let other = post(
        server.at("/streams/orders"),
        "order-43",
        r#"{"data":"paid"}"#,
    )
    .await
    .unwrap();
    assert!(other.headers().get("idempotent-replayed").is_none());
    for bad in [String::new(), "x".repeat(201), "a\tb".into()] {
        let response = client
            .post(server.at("/streams/orders"))
            .header("idempotency-key", bad.clone())
            .body("x")
            .send()
            .await
            .unwrap();
        let (status, body) = status_of(response).await;
        assert_eq!(status, 400, "{bad:?}");
        assert!(
            body["error"].as_str().unwrap().contains("Idempotency-Key"),
            "{body}"
        );
    }
    let (_, orders) = get_json(&server, "/streams/orders").await;
    assert_eq!(orders["length"], 3);
}
