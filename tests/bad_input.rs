//! Every bad input of the contract gets a 4xx with a JSON `{"error"}` body, and nothing of that
//! request is stored or sent.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use reqwest::RequestBuilder;
use serde_json::{json, Value};

async fn refused(request: RequestBuilder, status: u16, mentions: &str) {
    let response = request.send().await.expect("request");
    assert_eq!(
        response.status().as_u16(),
        status,
        "expected {status} for an error about {mentions:?}"
    );
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "error bodies are JSON"
    );
    let body: Value = response.json().await.expect("JSON error body");
    let message = body["error"].as_str().expect("an error field");
    assert!(
        message.to_lowercase().contains(&mentions.to_lowercase()),
        "{message:?} should mention {mentions:?}"
    );
}

#[tokio::test]
async fn bad_publishes_are_refused_and_nothing_is_stored_or_sent() {
    let server = Server::start(&["--max-data", "1000", "--max-batch", "5000"]);
    let mut watcher = subscribe(&server, "stream=ok&stream=also-ok", None).await;
    let c = client();
    let post = |path: &str| c.post(server.at(path));

    // stream names
    refused(post("/streams/bad%20name").body("x"), 400, "stream name").await;
    refused(post("/streams/a%2Fb").body("x"), 400, "stream name").await;
    refused(
        post(&format!("/streams/{}", "n".repeat(129))).body("x"),
        400,
        "1 to 128",
    )
    .await;
    refused(post("/streams/%FF").body("x"), 400, "UTF-8").await;
    // event types
    refused(post("/streams/ok?event=a%0Ab").body("x"), 400, "control").await;
    refused(post("/streams/ok?event=a%0Db").body("x"), 400, "control").await;
    refused(post("/streams/ok?event=%3Acomment").body("x"), 400, "':'").await;
    refused(post("/streams/ok?event=").body("x"), 400, "1 to 64").await;
    refused(
        post("/streams/ok").json(&json!({"data": "x", "event": "a\r\nb"})),
        400,
        "control",
    )
    .await;
    refused(
        post("/streams/ok").json(&json!({"data": "x", "event": 5})),
        400,
        "must be a string",
    )
    .await;
    // bodies
    refused(
        post("/streams/ok").body(vec![0x66, 0x6f, 0xff, 0xfe]),
        400,
        "not valid UTF-8",
    )
    .await;
    refused(post("/streams/ok").body("x".repeat(1001)), 413, "limit").await;
    refused(
        post("/streams/ok").json(&json!({"data": "x".repeat(1001)})),
        413,
        "limit",
    )
    .await;
    refused(
        post("/streams/ok")
            .header("content-type", "application/json")
            .body("{\"data\": "),
        400,
        "not valid JSON",
    )
    .await;
    refused(
        post("/streams/ok")
            .header("content-type", "application/json")
            .body("[1]"),
        400,
        "JSON object",
    )
    .await;
    refused(
        post("/streams/ok").json(&json!({"event": "t"})),
        400,
        "missing \"data\"",
    )
    .await;
    refused(
        post("/streams/ok").json(&json!({"data": "x", "dta": 1})),
        400,
        "unknown field",
    )
    .await;
    refused(
        post("/streams/ok")
            .header("content-type", "text/plain; charset=latin1")
            .body("x"),
        415,
        "charset",
    )
    .await;
    // a chunked body with no Content-Length is still cut off at the limit
    let chunks = futures::stream::iter((0..20).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 100])));
    refused(
        post("/streams/ok").body(reqwest::Body::wrap_stream(chunks)),
        413,
        "limit",
    )
    .await;

    // batches: all or nothing
    let good = json!({"stream": "ok", "data": "fine"});
    refused(post("/publish").body("[]"), 415, "application/json").await;
    refused(post("/publish").json(&json!([])), 400, "empty").await;
    refused(
        post("/publish").json(&json!({"stream": "ok", "data": "x"})),
        400,
        "JSON array",
    )
    .await;
    refused(
        post("/publish").json(&json!([good, {"stream": "bad name", "data": "x"}])),
        400,
        "event #2 (index 1): stream name",
    )
    .await;
    refused(
        post("/publish").json(&json!([good, {"stream": "also-ok"}])),
        400,
        "event #2 (index 1): missing \"data\"",
    )
    .await;
    refused(
        post("/publish").json(&json!([good, {"data": "x"}])),
        400,
        "missing \"stream\"",
    )
    .await;
    refused(
        post("/publish").json(&json!([good, "text"])),
        400,
        "must be an object",
    )
    .await;
    refused(
        post("/publish").json(&json!([good, {"stream": "ok", "data": "x".repeat(1001)}])),
        413,
        "limit",
    )
    .await;
    refused(
        post("/publish").json(&vec![good.clone(); 200]),
        413,
        "limit",
    )
    .await;

    // nothing was stored ...
    let (_, list) = get_json(&server, "/streams").await;
    for stream in list.as_array().unwrap() {
        assert_eq!(stream["length"], 0, "nothing stored in {}", stream["name"]);
    }
    // ... and nothing was sent: the first event the watcher sees is the one published now.
    publish(&server, "ok", "the only event").await;
    let first = tokio::time::timeout(Duration::from_secs(10), watcher.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.data, "the only event");
}

#[tokio::test]
async fn bad_subscribe_and_history_requests_are_refused_with_reasons() {
    let server = Server::start(&["--max-streams", "2"]);
    let c = client();
    let get = |path: &str| c.get(server.at(path));
    refused(get("/sse"), 400, "at least one stream").await;
    refused(get("/sse?stream="), 400, "stream name").await;
    refused(get("/sse?stream=a&stream=b&stream=c"), 400, "at most 2").await;
    refused(get("/sse?stream=a&last_id=abc"), 400, "last_id").await;
    refused(get("/sse?stream=a&last_id=-1"), 400, "last_id").await;
    refused(
        get("/sse?stream=a").header("Last-Event-ID", "x1"),
        400,
        "Last-Event-ID",
    )
    .await;
    refused(get("/sse?stream=a&envelope=maybe"), 400, "envelope").await;
    refused(get("/streams/a/events?limit=0"), 400, "limit").await;
    refused(get("/streams/a/events?limit=1001"), 400, "limit").await;
    refused(get("/streams/a/events?after=x"), 400, "after").await;
    refused(get("/streams/a/events?last=5&after=1"), 400, "not both").await;
    refused(get("/streams/a/events/notanumber"), 400, "decimal").await;
    refused(get("/streams/a%20b"), 400, "stream name").await;
    refused(get("/no/such/path"), 404, "no such endpoint").await;
    refused(c.delete(server.at("/healthz")), 405, "not allowed").await;
}
