//! The fences around herald's HTTP/1.1 handling, on both of its writers — herald's own for
//! `GET /sse` (plain and over TLS) and hyper for everything else (or for everything, with
//! `--no-direct-sse`): RFC 9112's `Host` rule, a write deadline for a peer that takes no bytes, a
//! shutdown that returns only once every connection got its goodbye, and a differential test
//! that the two writers answer the same bytes with the same status, headers and body, in plain
//! HTTP and over TLS.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use herald::broker::event::{NewEvent, StreamName};
use herald::broker::{Broker, BrokerOptions};
use herald::http::{listener, Api, HttpOptions};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use tokio_rustls::rustls;

/// A self-signed certificate for 127.0.0.1 (its PEM files, for herald) and a client that
/// trusts it.
struct Tls {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    client: Arc<rustls::ClientConfig>,
}

impl Tls {
    fn new() -> Tls {
        let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(made.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Tls {
            _dir: dir,
            cert,
            key,
            client: Arc::new(client),
        }
    }

    /// herald's flags for serving this certificate.
    fn flags(&self) -> [&str; 4] {
        [
            "--tls-cert",
            self.cert.to_str().unwrap(),
            "--tls-key",
            self.key.to_str().unwrap(),
        ]
    }
}

trait Connection: Read + Write + Send {}
impl<T: Read + Write + Send> Connection for T {}

/// A fresh connection to `address`, over TLS (HTTP/1.1: no ALPN offered) when `tls` is given.
fn connect(address: &str, tls: Option<&Tls>) -> Box<dyn Connection> {
    let socket = TcpStream::connect(address).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    match tls {
        None => Box::new(socket),
        Some(tls) => {
            let name = "127.0.0.1".try_into().unwrap();
            let session = rustls::ClientConnection::new(tls.client.clone(), name).unwrap();
            Box::new(rustls::StreamOwned::new(session, socket))
        }
    }
}

/// Sends `request` on a fresh connection and reads one response: its status line, its
/// headers (lowercased names, in order) and, when it has a `content-length`, its body.
fn exchange(address: &str, tls: Option<&Tls>, request: &[u8]) -> Option<Response> {
    let mut socket = connect(address, tls);
    if socket
        .write_all(request)
        .and_then(|()| socket.flush())
        .is_err()
    {
        return None;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        match socket.read(&mut buf) {
            Ok(0) | Err(_) if got.is_empty() => return None,
            Ok(0) | Err(_) => panic!("a response head cut short: {got:?}"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = got[head_end + 4..].to_vec();
    let head_only = request.starts_with(b"HEAD ");
    if head_only {
        body.clear();
    } else if let Some(length) = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        while body.len() < length {
            match socket.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&buf[..n]),
            }
        }
        body.truncate(length);
    } else {
        // A streamed body (SSE): its opening is not compared, only the head.
        body.clear();
    }
    Some(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

#[derive(Debug, PartialEq)]
struct Response {
    status: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The headers as a client sees them: order aside, and without what differs per response
    /// by design (the date, a generated request id).
    fn comparable(&self, request_id_given: bool) -> BTreeMap<String, Vec<String>> {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in &self.headers {
            if name == "date" || (name == "x-request-id" && !request_id_given) {
                continue;
            }
            map.entry(name.clone()).or_default().push(value.clone());
        }
        map
    }
}

fn address(server: &Server) -> String {
    let url = &server.url;
    let address = url.strip_prefix("https://").or(url.strip_prefix("http://"));
    address.unwrap().to_string()
}

/// herald's flags: over TLS when `tls` is given, through hyper alone unless `direct`.
/// Plain and over TLS, each with the direct SSE writer and with hyper's.
fn every_way(tls: &Tls) -> [(Option<&Tls>, bool); 4] {
    [
        (None, true),
        (None, false),
        (Some(tls), true),
        (Some(tls), false),
    ]
}

fn flags(tls: Option<&Tls>, direct: bool) -> Vec<&str> {
    let mut flags: Vec<&str> = tls.map_or(Vec::new(), |tls| tls.flags().to_vec());
    if !direct {
        flags.push("--no-direct-sse");
    }
    flags
}

#[test]
fn an_http11_request_without_one_host_is_a_400_on_both_writers() {
    let tls = Tls::new();
    for (secure, direct) in every_way(&tls) {
        let flags = flags(secure, direct);
        let server = Server::start(&flags);
        let address = address(&server);
        let refused: [&[u8]; 5] = [
            b"GET /sse?stream=a HTTP/1.1\r\n\r\n",
            b"GET /sse?stream=a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\n\r\n",
            b"GET /streams HTTP/1.1\r\nHost: x\r\nhost: x\r\n\r\n",
            b"POST /streams/a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        ];
        for request in refused {
            let answer = exchange(&address, secure, request).expect("an answer");
            let shown = String::from_utf8_lossy(request);
            assert_eq!(
                answer.status, "HTTP/1.1 400 Bad Request",
                "{shown:?} {flags:?}"
            );
            assert_eq!(answer.header("connection"), Some("close"), "{shown:?}");
            let error: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
            let message = error["error"].as_str().unwrap();
            assert!(
                message.contains("Host") && message.contains("RFC 9112"),
                "{message}"
            );
        }
        // HTTP/1.0 has no such rule; one Host is the normal case.
        let old = exchange(&address, secure, b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(old.status, "HTTP/1.0 200 OK");
        let normal = exchange(
            &address,
            secure,
            b"GET /streams/a HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .unwrap();
        assert_eq!(normal.status, "HTTP/1.1 200 OK");
        let stored: serde_json::Value = serde_json::from_str(&normal.body).unwrap();
        assert_eq!(stored["length"], 0, "the refused publish stored nothing");
    }
}

/// herald's own server, in-process (over TLS when `tls` is given), without `TCP_USER_TIMEOUT`
/// on its socket: what ends a stalled connection here is herald's write deadline alone.
async fn in_process(
    options: HttpOptions,
    tls: Option<&Tls>,
) -> (Broker, String, herald::http::ShutdownSignal, Stop) {
    let broker = Broker::open(BrokerOptions::default()).unwrap();
    let (api, shutdown) = Api::new(broker.clone(), options);
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let acceptor = tls.map(|tls| herald::http::tls::acceptor(&tls.cert, &tls.key).unwrap().0);
    let served = tokio::spawn(listener::serve(socket, api, acceptor, async {
        let _ = stopped.await;
    }));
    (broker, address, shutdown, Stop { stop, served })
}

struct Stop {
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<()>,
}

fn subscribe_raw(address: &str, tls: Option<&Tls>, stream: &str) -> Box<dyn Connection> {
    let mut socket = connect(address, tls);
    write!(
        socket,
        "GET /sse?stream={stream} HTTP/1.1\r\nHost: {address}\r\n\r\n"
    )
    .unwrap();
    socket.flush().unwrap();
    let mut head = [0u8; 256];
    let n = socket.read(&mut head).unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "subscribed");
    socket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_takes_no_bytes_is_dropped_after_the_peer_timeout() {
    let tls = Tls::new();
    for (secure, direct_sse) in every_way(&tls) {
        let (broker, address, shutdown, stop) = in_process(
            HttpOptions {
                peer_timeout: Some(Duration::from_secs(1)),
                direct_sse,
                ..HttpOptions::default()
            },
            secure,
        )
        .await;
        let stalled = subscribe_raw(&address, secure, "flood");
        flood(&broker).await;
        let stuck = std::time::Instant::now();
        let stream = StreamName::new("flood").unwrap();
        eventually(
            "the stalled subscriber is dropped",
            Duration::from_secs(20),
            || async { broker.stream_info(&stream).await.unwrap().subscribers == 0 },
        )
        .await;
        eprintln!(
            "tls={} direct_sse={direct_sse}: dropped {:?} after the flood was published",
            secure.is_some(),
            stuck.elapsed()
        );
        // The connection is gone from herald's side: reading what is buffered ends in EOF or
        // a reset, not in a wait.
        let mut stalled = stalled;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match stalled.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        shutdown.trigger();
        let _ = stop.stop.send(());
        tokio::time::timeout(Duration::from_secs(5), stop.served)
            .await
            .expect("serve returns")
            .unwrap();
    }
}

/// Publishes ~20 MB to `flood`: enough to fill a non-reading subscriber's socket buffers both
/// ways and shut its TCP window.
async fn flood(broker: &Broker) {
    let stream = StreamName::new("flood").unwrap();
    let padding = "p".repeat(1000);
    for _ in 0..40 {
        let batch = (0..500)
            .map(|i| NewEvent {
                stream: stream.clone(),
                kind: None,
                data: format!("{i} {padding}"),
            })
            .collect();
        broker.publish_batch(batch).await.unwrap();
    }
}

/// Reads everything until the server closes the connection (within the read timeout).
fn read_to_end(socket: &mut Box<dyn Connection>) -> String {
    let mut got = Vec::new();
    let _ = socket.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_returns_only_after_every_subscriber_got_its_goodbye() {
    let tls = Tls::new();
    for secure in [None, Some(&tls)] {
        serve_waits_for_every_goodbye(secure).await;
    }
}

async fn serve_waits_for_every_goodbye(tls: Option<&Tls>) {
    let (broker, address, shutdown, stop) = in_process(
        HttpOptions {
            peer_timeout: Some(Duration::from_secs(60)),
            ..HttpOptions::default()
        },
        tls,
    )
    .await;
    let mut subscribers: Vec<Box<dyn Connection>> = (0..20)
        .map(|i| subscribe_raw(&address, tls, &format!("s{}", i % 5)))
        .collect();
    // One subscriber is not reading: its goodbye can go out only once it reads again.
    let mut stalled = subscribe_raw(&address, tls, "flood");
    flood(&broker).await;
    shutdown.trigger();
    let _ = stop.stop.send(());
    let mut served = stop.served;
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut served)
            .await
            .is_err(),
        "serve waits while a subscriber has not had its goodbye"
    );
    let reader = tokio::task::spawn_blocking(move || read_to_end(&mut stalled));
    tokio::time::timeout(Duration::from_secs(30), served)
        .await
        .expect("serve returns once the goodbye is out")
        .unwrap();
    let text = reader.await.unwrap();
    assert!(
        text.ends_with("0\r\n\r\n"),
        "{:?}",
        &text[text.len().saturating_sub(200)..]
    );
    assert!(text[text.len().saturating_sub(200)..].contains("retry: "));
    for (i, socket) in subscribers.iter_mut().enumerate() {
        let text = read_to_end(socket);
        assert!(
            text.matches("retry: ").count() == 2 && text.ends_with("0\r\n\r\n"),
            "subscriber {i} got its goodbye and the end of its response: {text:?}"
        );
    }
}

/// Publishes one event to `stream`, over the server's own scheme.
fn publish_to(server: &Server, tls: Option<&Tls>, stream: &str) {
    let request = format!(
        "POST /streams/{stream} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\none"
    );
    let answer = exchange(&address(server), tls, request.as_bytes()).unwrap();
    assert_eq!(answer.status, "HTTP/1.1 201 Created", "{answer:?}");
}

/// Seals `stream`, over the server's own scheme.
fn seal_over(server: &Server, tls: Option<&Tls>, stream: &str) {
    let request = format!(
        "POST /streams/{stream}/close HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let answer = exchange(&address(server), tls, request.as_bytes()).unwrap();
    assert_eq!(answer.status, "HTTP/1.1 200 OK", "{answer:?}");
}

/// One request, described so that proptest can generate and shrink it.
#[derive(Debug, Clone)]
struct Request {
    method: &'static str,
    target: String,
    version: &'static str,
    headers: Vec<(String, Vec<u8>)>,
    line_end: &'static str,
}

impl Request {
    fn bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {} {}{}",
            self.method, self.target, self.version, self.line_end
        )
        .into_bytes();
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(value);
            out.extend_from_slice(self.line_end.as_bytes());
        }
        out.extend_from_slice(self.line_end.as_bytes());
        out
    }

    /// Whether the request's (first) request id is one herald takes; a bad one is replaced by a
    /// fresh, random one.
    fn gives_request_id(&self) -> bool {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("x-request-id: "))
            .is_some_and(|(_, v)| v == b"diff-1")
    }
}

fn requests() -> impl Strategy<Value = Request> {
    let method = prop_oneof![
        8 => Just("GET"),
        1 => Just("HEAD"),
        1 => Just("get"),
        1 => Just("OPTIONS"),
    ];
    let target = prop_oneof![
        Just("/sse?stream=s".to_string()),
        Just("/sse?stream=done".to_string()),
        Just("/sse?stream=s&stream=done".to_string()),
        Just("/sse".to_string()),
        Just("/sse?".to_string()),
        Just("/sse?stream=".to_string()),
        Just("/sse?stream=%ff".to_string()),
        Just("/sse?stream=a%20b".to_string()),
        Just("/sse?stream=s&last_id=0".to_string()),
        Just("/sse?stream=s&last_id=x".to_string()),
        Just("/sse?stream=s&client=alice&presence=1".to_string()),
        Just("/sse?stream=s&unknown=1".to_string()),
        Just("/sse/".to_string()),
        Just("/sse#x".to_string()),
        Just("/sse?stream=s#x".to_string()),
        Just("/SSE?stream=s".to_string()),
        Just("//sse?stream=s".to_string()),
        Just("http://x/sse?stream=s".to_string()),
        Just("*".to_string()),
        "[a-z]{1,300}".prop_map(|name| format!("/sse?stream={name}")),
        proptest::collection::vec(Just("stream=s"), 0..40)
            .prop_map(|parts| format!("/sse?{}", parts.join("&"))),
    ];
    let version = prop_oneof![8 => Just("HTTP/1.1"), 1 => Just("HTTP/1.0"), 1 => Just("HTTP/1.2")];
    let value = |values: Vec<&'static [u8]>| {
        proptest::sample::select(values).prop_map(|v: &[u8]| v.to_vec())
    };
    // Headers a client sends (weighted up), and odd or hostile ones.
    let header = prop_oneof![
        1 => (Just("Host: "), value(vec![b"x", b"", b"x:99999", b"[::1]:1", b"a b"])),
        1 => (Just("host: "), value(vec![b"x"])),
        6 => (
            Just("Last-Event-ID: "),
            value(vec![b"0", b"1", b"abc", b"-1", b"99999999999999999999999", b"\x80\xff", b" 1 "])
        ),
        6 => (Just("Accept: "), value(vec![b"text/event-stream", b"*/*", b"application/json"])),
        6 => (
            Just("Connection: "),
            value(vec![b"close", b"keep-alive", b"Close, Upgrade", b"CLOSE"])
        ),
        6 => (Just("X-Request-ID: "), value(vec![b"diff-1", b"bad id!", b""])),
        4 => (
            Just("Authorization: "),
            value(vec![b"Bearer nope", b"Basic eDp5", b"Bearer"])
        ),
        4 => (Just("Origin: "), value(vec![b"https://elsewhere.example", b"null"])),
        4 => (Just("Cookie: "), value(vec![b"a=b", b"herald_token=zzz"])),
        2 => (Just("X-Odd: "), value(vec![b" spaced \t", b"\tlead", b"\x7f", b"caf\xc3\xa9"])),
        1 => (Just("X-Empty:"), value(vec![b""])),
        1 => (Just("X-Folded: "), value(vec![b"a\r\n b"])),
        1 => (Just("No-Colon"), value(vec![b""])),
        1 => (Just("Bad Name: "), value(vec![b"x"])),
        1 => (Just("X-Long: "), "[a-z]{0,2000}".prop_map(String::into_bytes)),
        // A body that never comes only waits for the idle timeout; an empty one is enough to
        // send the request to hyper.
        1 => (Just("Content-Length: "), value(vec![b"0"])),
        1 => (Just("Expect: "), value(vec![b"100-continue"])),
    ]
    .prop_map(|(name, value)| (name.to_string(), value));
    let headers = (
        proptest::bool::weighted(0.9),
        proptest::collection::vec(header, 0..5),
    )
        .prop_map(|(with_host, mut headers)| {
            if with_host {
                headers.insert(0, ("Host: ".to_string(), b"herald.test".to_vec()));
            }
            headers
        });
    let line_end = prop_oneof![9 => Just("\r\n"), 1 => Just("\n")];
    (method, target, version, headers, line_end).prop_map(
        |(method, target, version, headers, line_end)| Request {
            method,
            target,
            version,
            headers,
            line_end,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_writer_and_hyper_answer_the_same_bytes_alike() {
    let tls = Arc::new(Tls::new());
    for secure in [None, Some(tls)] {
        answered_alike(secure).await;
    }
}

async fn answered_alike(tls: Option<Arc<Tls>>) {
    let start = |direct: bool| {
        let mut flags = flags(tls.as_deref(), direct);
        flags.extend(["--idle-timeout", "2"]);
        Server::start(&flags)
    };
    let (direct, hyper) = (start(true), start(false));
    for server in [&direct, &hyper] {
        publish_to(server, tls.as_deref(), "s");
        seal_over(server, tls.as_deref(), "done");
    }
    let (direct, hyper) = (address(&direct), address(&hyper));
    let secure = tls.is_some();
    let both = tokio::task::spawn_blocking(move || {
        let tls = tls.as_deref();
        // A fixed seed: the same 400 requests on every run, so a difference found once is
        // found again (change the seed to explore further).
        let mut runner = TestRunner::new_with_rng(
            Config {
                cases: 400,
                failure_persistence: None,
                ..Config::default()
            },
            TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
        );
        let statuses = std::cell::RefCell::new(BTreeMap::<String, usize>::new());
        let result = runner.run(&requests(), |request| {
            let bytes = request.bytes();
            let (a, b) = (
                exchange(&direct, tls, &bytes),
                exchange(&hyper, tls, &bytes),
            );
            let given = request.gives_request_id();
            let same = match (&a, &b) {
                (Some(a), Some(b)) => {
                    a.status == b.status
                        && a.comparable(given) == b.comparable(given)
                        && a.body == b.body
                }
                (None, None) => true,
                _ => false,
            };
            let status = a.as_ref().map_or("no answer".into(), |a| a.status.clone());
            *statuses.borrow_mut().entry(status).or_default() += 1;
            prop_assert!(
                same,
                "{:?}\n direct: {a:#?}\n hyper:  {b:#?}",
                String::from_utf8_lossy(&bytes)
            );
            Ok(())
        });
        (result, statuses.into_inner())
    })
    .await
    .unwrap();
    let (result, statuses) = both;
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!("answered alike by both writers (tls: {secure}): {statuses:?}");
    // The generated requests reach the direct writer's answers, not only hyper's refusals.
    let count = |status: &str| statuses.get(status).copied().unwrap_or(0);
    assert!(count("HTTP/1.1 200 OK") >= 40 && count("HTTP/1.1 204 No Content") >= 3);
}
