//! `GET /sse` on plain HTTP/1.1 is written by herald's own small writer, not hyper (see
//! `src/http/direct.rs`). These tests read the bytes on the wire: a well-formed chunked
//! response, error answers with a length, and a connection that carries on — to hyper — after
//! an SSE response or a refusal, with pipelined requests kept.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn connect(server: &Server) -> TcpStream {
    TcpStream::connect(server.url.strip_prefix("http://").unwrap()).unwrap()
}

fn read_until(socket: &mut TcpStream, done: impl Fn(&str) -> bool) -> (String, bool) {
    read_raw_until(socket, Duration::from_secs(10), done)
}

/// Splits an HTTP/1.1 response into its head (lowercased) and its chunked body, decoded;
/// `None` while the last chunk has not arrived.
fn dechunk(response: &str) -> Option<(String, String)> {
    let (head, mut rest) = response.split_once("\r\n\r\n")?;
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size, 16).expect("chunk size is hex");
        if size == 0 {
            assert!(after.starts_with("\r\n"), "last chunk ends with CRLF");
            return Some((head.to_ascii_lowercase(), body));
        }
        body.push_str(after.get(..size)?);
        let after = after.get(size..)?;
        assert!(
            after.starts_with("\r\n") || after.is_empty(),
            "chunk ends with CRLF"
        );
        rest = after.get(2..)?;
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|line| line.strip_prefix(&format!("{name}: ")))
}

#[tokio::test]
async fn an_sse_response_is_chunked_http1_and_ends_with_its_sealed_stream() {
    let server = Server::start(&[]);
    let mut socket = connect(&server);
    write!(
        socket,
        "GET /sse?stream=wire HTTP/1.1\r\nHost: x\r\nX-Request-ID: wire-1\r\n\r\n"
    )
    .unwrap();
    let (opening, _) = read_until(&mut socket, |s| s.contains("retry:"));
    assert!(opening.starts_with("HTTP/1.1 200 OK\r\n"), "{opening:?}");
    let id = publish(&server, "wire", "line one\nline two").await;
    assert_eq!(seal(&server, "wire").await.0, 200);
    let (rest, closed) = read_until(&mut socket, |s| dechunk(&format!("{opening}{s}")).is_some());
    let response = format!("{opening}{rest}");
    assert!(!closed, "the connection stays open after the response");
    let (head, body) = dechunk(&response)
        .unwrap_or_else(|| panic!("not a complete chunked response: {response:?}"));
    assert_eq!(header(&head, "content-type"), Some("text/event-stream"));
    assert_eq!(header(&head, "cache-control"), Some("no-cache"));
    assert_eq!(header(&head, "transfer-encoding"), Some("chunked"));
    assert_eq!(header(&head, "x-request-id"), Some("wire-1"));
    assert!(header(&head, "date").is_some(), "{head}");
    assert_eq!(
        frames(&body),
        [
            format!("id: {id}\ndata: line one\ndata: line two"),
            "event: close\ndata: wire".to_string(),
        ]
    );

    // The same connection carries the next request (hyper answers it).
    write!(socket, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (next, _) = read_until(&mut socket, |s| s.contains("\r\n\r\n"));
    assert!(next.starts_with("HTTP/1.1 200"), "{next:?}");
}

#[tokio::test]
async fn a_refused_subscription_is_a_json_error_and_the_connection_carries_on() {
    let server = Server::start(&[]);
    let mut socket = connect(&server);
    // A refusal, then a publish and a subscription pipelined behind it on one connection.
    write!(
        socket,
        "GET /sse HTTP/1.1\r\nHost: x\r\n\r\n\
         POST /streams/pipe HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
         GET /sse?stream=pipe&last_id=0 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let (got, closed) = read_until(&mut socket, |s| s.contains("data: hello"));
    assert!(!closed, "{got:?}");
    let (refusal, rest) = got.split_once("\r\n\r\n").unwrap();
    assert!(refusal.starts_with("HTTP/1.1 400 Bad Request"), "{refusal}");
    let refusal = refusal.to_ascii_lowercase();
    assert_eq!(header(&refusal, "content-type"), Some("application/json"));
    let length: usize = header(&refusal, "content-length").unwrap().parse().unwrap();
    let error: serde_json::Value = serde_json::from_str(&rest[..length]).unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("stream"),
        "{error}"
    );
    let rest = &rest[length..];
    assert!(rest.starts_with("HTTP/1.1 201"), "{rest:?}");
    assert!(rest.contains("HTTP/1.1 200 OK"), "{rest:?}");
}

#[tokio::test]
async fn a_request_pipelined_behind_an_sse_request_is_answered_after_it() {
    let server = Server::start(&[]);
    let mut socket = connect(&server);
    write!(
        socket,
        "GET /sse?stream=first HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /streams/first HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let (opening, _) = read_until(&mut socket, |s| s.contains("retry:"));
    assert!(
        !opening.contains("\"name\""),
        "not answered while the SSE runs"
    );
    let id = publish(&server, "first", "only").await;
    seal(&server, "first").await;
    let (rest, _) = read_until(&mut socket, |s| s.contains("\"name\""));
    let got = format!("{opening}{rest}");
    // The SSE response ends with its last chunk; the pipelined answer follows it.
    let end = got.find("\r\n0\r\n\r\n").expect("the SSE response ended") + 7;
    let (sse, after) = got.split_at(end);
    let (_, body) = dechunk(sse).expect("the SSE response ended first");
    assert!(body.contains(&format!("id: {id}\ndata: only")), "{body:?}");
    assert!(after.contains("\"name\":\"first\""), "{after:?}");
}

#[tokio::test]
async fn connection_close_on_an_sse_request_closes_once_the_response_ends() {
    let server = Server::start(&[]);
    let mut socket = connect(&server);
    write!(
        socket,
        "GET /sse?stream=bye HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let (opening, _) = read_until(&mut socket, |s| s.contains("retry:"));
    assert!(
        opening
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{opening:?}"
    );
    seal(&server, "bye").await;
    let (got, closed) = read_until(&mut socket, |_| false);
    assert!(closed, "closed after the response: {got:?}");
    assert!(got.ends_with("0\r\n\r\n"), "{got:?}");
}
