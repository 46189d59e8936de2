//! Hostile or careless clients, against the real server: the subscription caps (and the polite
//! way an `EventSource` is turned away), oversized request heads, silent and trickling
//! connections, and CORS for listed and unlisted origins.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// `GET /sse` with or without `Accept: text/event-stream`; status, headers and the whole body
/// if the server ended it within 2 s (else what came so far).
async fn sse_attempt(
    server: &Server,
    accept_event_stream: bool,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut request = client().get(server.at("/sse?stream=s"));
    if accept_event_stream {
        request = request.header("accept", "text/event-stream");
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(Duration::from_secs(2), response.text())
        .await
        .map(|b| b.unwrap())
        .unwrap_or_else(|_| "<still open>".into());
    (status, headers, body)
}

#[tokio::test]
async fn beyond_max_connections_eventsource_is_told_to_retry_and_others_get_503() {
    let server = Server::start(&["--max-connections", "2", "--shutdown-retry-window", "4"]);
    let first = RawSse::open(&server, "stream=s", None).await;
    let second = RawSse::open(&server, "stream=t", None).await;
    assert_eq!((first.status, second.status), (200, 200));

    // An EventSource gets 200, a retry: and an ended body: it will come back by itself.
    let (status, headers, body) = sse_attempt(&server, true).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/event-stream");
    let retry: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("retry: "))
        .unwrap_or_else(|| panic!("no retry in {body:?}"))
        .parse()
        .unwrap();
    assert!((1000..5000).contains(&retry), "retry {retry}");
    assert!(body.contains("limit of 2"), "{body:?}");
    assert!(!body.contains("id:"), "no event is sent: {body:?}");

    // Anything else gets 503, Retry-After and the JSON error.
    let (status, headers, body) = sse_attempt(&server, false).await;
    assert_eq!(status, 503);
    let after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&after), "Retry-After {after}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert!(error["error"].as_str().unwrap().contains("limit of 2"));

    // Publishers and readers are never locked out by subscribers.
    let id = publish(&server, "s", "still publishing").await;
    assert_eq!(get_json(&server, "/streams/s/events").await.0, 200);
    first.wait_for(&format!("id: {id}")).await;

    // A slot comes back when its subscriber goes.
    drop(first);
    eventually("a slot is free again", Duration::from_secs(5), || async {
        sse_attempt(&server, false).await.0 == 200
    })
    .await;
}

#[tokio::test]
async fn one_address_cannot_take_more_than_its_share() {
    let server = Server::start(&["--max-connections-per-ip", "2"]);
    let _a = RawSse::open(&server, "stream=s", None).await;
    let _b = RawSse::open(&server, "stream=s", None).await;
    let (status, _, body) = sse_attempt(&server, true).await;
    assert_eq!(status, 200);
    assert!(body.contains("retry: "), "{body:?}");
    let (status, headers, body) = sse_attempt(&server, false).await;
    assert_eq!(status, 429);
    assert!(headers.contains_key("retry-after"));
    assert!(body.contains("this address already has 2"), "{body}");
}

fn address(server: &Server) -> String {
    server.url.strip_prefix("http://").unwrap().to_owned()
}

/// Reads until the server closes the socket or `within` passes; what was read and whether the
/// server closed it.
fn read_until_closed(socket: &mut TcpStream, within: Duration) -> (String, bool) {
    read_raw_until(socket, within, |_| false)
}

#[tokio::test]
async fn an_oversized_request_head_gets_431() {
    let server = Server::start(&["--max-header-bytes", "4096"]);
    let response = client()
        .get(server.at("/streams"))
        .header("x-padding", "p".repeat(8000))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    let fine = client()
        .get(server.at("/streams"))
        .header("x-padding", "p".repeat(2000))
        .send()
        .await
        .unwrap();
    assert_eq!(fine.status(), 200);
}

#[tokio::test]
async fn silent_and_trickling_connections_are_closed() {
    let server = Server::start(&["--idle-timeout", "1"]);
    let address = address(&server);

    // Connected, never sends a byte.
    let mut silent = TcpStream::connect(&address).unwrap();
    let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(4));
    assert!(closed, "a silent connection is closed");

    // One request, then an idle keep-alive connection.
    let mut idle = TcpStream::connect(&address).unwrap();
    write!(idle, "GET /healthz HTTP/1.1\r\nHost: {address}\r\n\r\n").unwrap();
    let (answer, closed) = read_until_closed(&mut idle, Duration::from_secs(4));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(closed, "an idle keep-alive connection is closed");

    // A publish whose body stops halfway is refused with 408 and stores nothing.
    let mut trickle = TcpStream::connect(&address).unwrap();
    write!(
        trickle,
        "POST /streams/slow HTTP/1.1\r\nHost: {address}\r\nContent-Length: 10\r\n\r\nabc"
    )
    .unwrap();
    let (answer, _) = read_until_closed(&mut trickle, Duration::from_secs(4));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("stalled"), "{answer:?}");
    assert_eq!(get_json(&server, "/streams/slow").await.1["length"], 0);

    // A subscriber is not idle: it sent its request, and its response goes on.
    let sse = RawSse::open(&server, "stream=s", None).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!sse.ended());
    let id = publish(&server, "s", "still here").await;
    sse.wait_for(&format!("id: {id}")).await;
}

#[tokio::test]
async fn cors_answers_listed_origins_with_credentials_and_no_one_else() {
    let server = Server::start(&[
        "--cors-origin",
        "https://app.example",
        "--cors-origin",
        "http://localhost:3000",
    ]);
    let c = client();
    let preflight = |origin: &'static str| {
        c.request(reqwest::Method::OPTIONS, server.at("/streams/news"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let allowed = preflight("https://app.example").await.unwrap();
    assert!(allowed.status().is_success());
    let h = allowed.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert!(h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("authorization"));

    let refused = preflight("https://evil.example").await.unwrap();
    assert!(!refused
        .headers()
        .contains_key("access-control-allow-origin"));
    assert!(!refused
        .headers()
        .contains_key("access-control-allow-credentials"));

    // Actual requests: the SSE response names the listed origin; an unlisted one gets nothing.
    let sse = c
        .get(server.at("/sse?stream=news"))
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    assert_eq!(
        sse.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    drop(sse);
    let other = c
        .get(server.at("/streams"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));

    // '*' allows any origin, never with credentials.
    let any = Server::start(&["--cors-origin", "*"]);
    let response = c
        .get(any.at("/streams"))
        .header("origin", "https://whoever.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    assert!(!response
        .headers()
        .contains_key("access-control-allow-credentials"));
}

/// Sends `bytes` on a fresh connection and reads whatever comes back within a moment.
fn send_raw(address: &str, bytes: &[u8]) -> String {
    let Ok(mut socket) = TcpStream::connect(address) else {
        panic!("herald stopped accepting connections");
    };
    let _ = socket.write_all(bytes);
    let _ = socket.shutdown(std::net::Shutdown::Write);
    read_until_closed(&mut socket, Duration::from_millis(500)).0
}

#[tokio::test]
async fn garbage_on_the_wire_never_takes_the_server_down() {
    let server = Server::start(&["--idle-timeout", "1"]);
    let address = address(&server);
    let mut subscriber = subscribe(&server, "stream=s", None).await;
    let host = format!("Host: {address}\r\n");
    let malformed: Vec<Vec<u8>> = vec![
        b"\r\n\r\n".to_vec(),
        b"GET\r\n\r\n".to_vec(),
        b"GET / HTTP/9.9\r\n\r\n".to_vec(),
        format!("GET /sse?stream=%ff%fe HTTP/1.1\r\n{host}\r\n").into_bytes(),
        format!("GET /sse?stream=s&last_id=99999999999999999999999 HTTP/1.1\r\n{host}\r\n").into_bytes(),
        format!("GET /sse?stream=s HTTP/1.1\r\n{host}Last-Event-ID: \u{0}\r\n\r\n").into_bytes(),
        [format!("GET /streams/s HTTP/1.1\r\n{host}X-Bad: ").as_bytes(), b"\xff\r\n\r\n"].concat(),
        format!("POST /streams/s HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nx\r\n").into_bytes(),
        format!("POST /streams/s HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\nzz\r\n").into_bytes(),
        format!("POST /streams/s HTTP/1.1\r\n{host}Content-Length: 3\r\nContent-Length: 5\r\n\r\nabcde").into_bytes(),
        format!("POST /streams/s HTTP/1.1\r\n{host}Content-Length: -1\r\n\r\n").into_bytes(),
        format!("POST /streams/s HTTP/1.1\r\n{host}Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}").into_bytes(),
        [format!("POST /streams/s HTTP/1.1\r\n{host}Content-Length: 2\r\n\r\n").as_bytes(), b"\xc3\x28"].concat(),
        format!("POST /publish HTTP/1.1\r\n{host}Content-Type: application/json\r\nContent-Length: 1\r\n\r\n[").into_bytes(),
        format!("DELETE /streams/%00 HTTP/1.1\r\n{host}\r\n").into_bytes(),
        format!("GET /streams/{}/events HTTP/1.1\r\n{host}\r\n", "a".repeat(5000)).into_bytes(),
    ];
    for request in &malformed {
        let answer = send_raw(&address, request);
        // An answer, if any, is never a server error (an opaque header byte is legal: 200).
        assert!(
            answer.is_empty()
                || answer.starts_with("HTTP/1.1 4")
                || answer.starts_with("HTTP/1.1 2"),
            "{:?} got {answer:?}",
            String::from_utf8_lossy(request)
        );
    }
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for _ in 0..300 {
        let mut bytes: Vec<u8> = match rng.u8(0..3) {
            0 => (0..rng.usize(0..512)).map(|_| rng.u8(..)).collect(),
            1 => format!("GET /sse?stream=s HTTP/1.1\r\n{host}").into_bytes(),
            _ => {
                format!("POST /streams/s HTTP/1.1\r\n{host}Content-Length: 8\r\n\r\n").into_bytes()
            }
        };
        bytes.extend((0..rng.usize(0..64)).map(|_| rng.u8(..)));
        send_raw(&address, &bytes);
    }
    // Still up, still correct: health, publish, and the subscriber from before got every event.
    assert_eq!(get_json(&server, "/healthz").await.0, 200);
    let length = get_json(&server, "/streams/s").await.1["length"]
        .as_u64()
        .unwrap();
    let id = publish(&server, "s", "after the garbage").await;
    let got = take(&mut subscriber, length as usize + 1).await;
    assert_eq!(got.last().unwrap().id, id.to_string());
    assert_eq!(got.last().unwrap().data, "after the garbage");
}

#[tokio::test]
async fn publishing_past_the_rate_is_429_and_readers_are_never_limited() {
    let server = Server::start(&["--publish-rate", "2", "--publish-burst", "3"]);
    let post = |data: &str| {
        client()
            .post(server.at("/streams/paced"))
            .body(data.to_owned())
            .send()
    };
    for i in 0..3 {
        assert_eq!(post(&format!("burst {i}")).await.unwrap().status(), 201);
    }
    let refused = post("one too many").await.unwrap();
    assert_eq!(refused.status(), 429);
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("2 per second"),
        "{body}"
    );
    // A batch is one request, refused whole.
    let batch = client()
        .post(server.at("/publish"))
        .json(&serde_json::json!([{"stream": "paced", "data": "in a batch"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), 429);
    // Readers go on: history and a new subscription.
    let (status, page) = get_json(&server, "/streams/paced/events").await;
    assert_eq!(status, 200);
    assert_eq!(page_ids(&page).len(), 3, "nothing refused was stored");
    let mut reader = subscribe(&server, "stream=paced", Some(0)).await;
    assert_eq!(take(&mut reader, 3).await.len(), 3);
    // The rate refills: half a second later one more fits.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(post("paced again").await.unwrap().status(), 201);
}
