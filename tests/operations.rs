//! What an operator relies on, against the real binary: `/metrics` parsed by a Prometheus text
//! parser with counters moving by exactly what happened, health endpoints, HTTPS with HTTP/2
//! carrying 20 SSE streams on one connection, JSON logs with request ids and no event data,
//! and `--version`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use futures::StreamExt;
use prometheus_parse::{Scrape, Value};
use serde_json::json;

/// One scrape of `/metrics`, parsed.
async fn scrape(server: &Server) -> Scrape {
    scrape_with(&client(), server).await
}

/// One scrape of `/metrics` with this client (over TLS, HTTP/2 or one connection of its own).
async fn scrape_with(client: &reqwest::Client, server: &Server) -> Scrape {
    let response = client
        .get(server.at("/metrics"))
        .header("connection", "close")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = response.text().await.unwrap();
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of a sample (a histogram: its count), by name and labels.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"));
    match &sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
        Value::Summary(_) => panic!("{name} is a summary"),
    }
}

#[tokio::test]
async fn metrics_move_by_exactly_what_was_published_and_delivered() {
    let server = Server::start(&[]);
    let before = scrape(&server).await;
    let published = value(&before, "herald_events_published_total", &[]);
    let delivered = value(&before, "herald_events_delivered_total", &[]);
    let timed = value(&before, "herald_publish_seconds", &[]);
    assert_eq!(
        value(
            &before,
            "herald_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    let mut a = subscribe(&server, "stream=s", None).await;
    let mut b = subscribe(&server, "stream=s&stream=t", None).await;
    for i in 0..4 {
        publish(&server, "s", &format!("{i}")).await;
    }
    publish_batch(
        &server,
        &[("s", "4".into()), ("s", "5".into()), ("t", "6".into())],
    )
    .await;
    take(&mut a, 6).await;
    take(&mut b, 7).await;
    // A late subscriber reads all 7 from the log.
    let mut late = subscribe(&server, "stream=s&stream=t", Some(0)).await;
    take(&mut late, 7).await;

    let after = scrape(&server).await;
    assert_eq!(
        value(&after, "herald_events_published_total", &[]) - published,
        7.0
    );
    assert_eq!(
        value(&after, "herald_events_delivered_total", &[]) - delivered,
        6.0 + 7.0 + 7.0
    );
    assert_eq!(
        value(&after, "herald_publish_seconds", &[]) - timed,
        5.0,
        "4 single + 1 batch"
    );
    assert_eq!(value(&after, "herald_catch_up_events_total", &[]), 7.0);
    assert!(value(&after, "herald_catch_up_reads_total", &[]) >= 1.0);
    assert!(
        value(&after, "herald_fsync_seconds", &[]) >= 5.0,
        "each publish group fsyncs"
    );
    assert_eq!(value(&after, "herald_subscriptions", &[]), 3.0);
    assert_eq!(
        value(&after, "herald_stream_subscribers", &[("stream", "s")]),
        3.0
    );
    assert_eq!(
        value(&after, "herald_stream_subscribers", &[("stream", "t")]),
        2.0
    );
    assert_eq!(value(&after, "herald_streams", &[]), 2.0);
    assert!(value(&after, "herald_connections_open", &[]) >= 3.0);
    assert!(value(&after, "herald_store_size_bytes", &[]) > 0.0);
    assert!(value(&after, "herald_uptime_seconds", &[]) > 0.0);
}

#[tokio::test]
async fn subscribers_by_stream_are_bounded_to_the_busiest_twenty() {
    let server = Server::start(&[]);
    let mut open = Vec::new();
    for i in 0..25 {
        // Stream 0 gets 3 subscribers, so it is surely among the named.
        for _ in 0..if i == 0 { 3 } else { 1 } {
            open.push(RawSse::open(&server, &format!("stream=s{i:02}"), None).await);
        }
    }
    let metrics = scrape(&server).await;
    let named: Vec<&str> = metrics
        .samples
        .iter()
        .filter(|s| s.metric == "herald_stream_subscribers")
        .filter_map(|s| s.labels.get("stream"))
        .collect();
    assert_eq!(named.len(), 21, "20 streams and (other)");
    assert_eq!(
        value(&metrics, "herald_stream_subscribers", &[("stream", "s00")]),
        3.0
    );
    assert_eq!(
        value(
            &metrics,
            "herald_stream_subscribers",
            &[("stream", "(other)")]
        ),
        5.0
    );
    drop(open);
}

#[tokio::test]
async fn health_and_readiness_answer_200_with_a_status() {
    let server = Server::start(&[]);
    for path in ["/healthz", "/readyz"] {
        let (status, body) = get_json(&server, path).await;
        assert_eq!(status, 200, "{path}");
        assert!(body["status"].is_string());
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost, written as PEM files.
fn certificate(dir: &Path) -> (PathBuf, PathBuf, String) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    let pem = cert.cert.pem();
    std::fs::write(&cert_path, &pem).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    (cert_path, key_path, pem)
}

#[tokio::test]
async fn https_with_h2_carries_20_sse_streams_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (server, pem) = tls_server(dir.path(), &[]);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let h2 = trusting(&pem);

    let mut streams = Vec::new();
    for _ in 0..20 {
        let response = h2.get(server.at("/sse?stream=many")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        streams.push(Box::pin(eventsource_stream::Eventsource::eventsource(
            response.bytes_stream(),
        )));
    }
    let published = h2
        .post(server.at("/streams/many"))
        .body("to all twenty")
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 201);
    for stream in &mut streams {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(event.data, "to all twenty");
    }
    let metrics = scrape_with(&h2, &server).await;
    assert_eq!(value(&metrics, "herald_subscriptions", &[]), 20.0);
    assert_eq!(
        value(&metrics, "herald_connections_accepted_total", &[]),
        1.0,
        "20 streams, a publish and this scrape: one TCP connection"
    );

    // HTTP/1.1 over TLS still works (ALPN), for clients that do not speak h2.
    let response = trusting_http1(&pem)
        .get(server.at("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(response.status(), 200);
}

/// An HTTP/2 connection with no open stream is closed after --idle-timeout (hyper alone keeps
/// it for ever); one that carries an SSE response is never idle.
#[tokio::test]
async fn an_idle_h2_connection_is_closed_and_one_carrying_sse_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let (server, pem) = tls_server(dir.path(), &["--idle-timeout", "1"]);
    // Connections open and ever accepted, read over a connection of its own (HTTP/1.1, closed
    // after each scrape).
    let connections = || async {
        let metrics = scrape_with(&trusting_http1(&pem), &server).await;
        (
            value(&metrics, "herald_connections_open", &[]),
            value(&metrics, "herald_connections_accepted_total", &[]),
        )
    };

    let idle = trusting(&pem);
    let response = idle.get(server.at("/healthz")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    response.text().await.unwrap();
    let busy = trusting(&pem);
    let sse = busy
        .get(server.at("/sse?stream=kept"))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.version(), reqwest::Version::HTTP_2);
    let mut events = Box::pin(eventsource_stream::Eventsource::eventsource(
        sse.bytes_stream(),
    ));
    assert_eq!(
        connections().await.0,
        3.0,
        "both h2 connections and the scrape's"
    );

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (open, accepted) = connections().await;
    assert_eq!(
        open, 2.0,
        "the idle h2 connection was closed; the SSE one and this scrape's remain"
    );

    // The SSE connection still works, publish and all, on the same connection.
    let published = busy
        .post(server.at("/streams/kept"))
        .body("still here")
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 201);
    let event = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.data, "still here");
    let (_, after) = connections().await;
    assert_eq!(
        after,
        accepted + 1.0,
        "only this scrape connected since: the SSE connection was kept"
    );
    // The closed one reconnects by itself on its next request.
    assert_eq!(
        idle.get(server.at("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn a_bad_certificate_path_is_refused_with_the_file_named() {
    let output = common::herald_command()
        .args(["--memory", "--listen", "127.0.0.1:0"])
        .args([
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let first = stderr.lines().next().unwrap_or("");
    assert!(
        first.contains("--tls-cert /nonexistent/cert.pem"),
        "{stderr}"
    );
    let only_one = common::herald_command()
        .args(["--tls-cert", "c.pem"])
        .output()
        .unwrap();
    assert!(!only_one.status.success(), "--tls-cert needs --tls-key");
}

#[test]
fn version_is_printed() {
    let output = common::herald_command().arg("--version").output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("herald {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn json_logs_carry_request_ids_and_no_event_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = common::herald_command()
        .args(["--listen", "127.0.0.1:0", "--log-format", "json", "--data"])
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "herald=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = listening_url(&mut child);

    let c = client();
    let sse = c
        .get(format!("{url}/sse?stream=logged"))
        .header("x-request-id", "test-request-42")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.headers()["x-request-id"], "test-request-42");
    let publish = c
        .post(format!("{url}/streams/logged"))
        .json(&json!({"data": "secret-payload-xyz"}))
        .send()
        .await
        .unwrap();
    assert_eq!(publish.status(), 201);
    assert_eq!(
        publish.headers()["x-request-id"].len(),
        16,
        "a generated id"
    );
    drop(sse);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let output = child.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let connected = lines
        .iter()
        .find(|l| l["fields"]["message"] == "sse connected")
        .unwrap_or_else(|| panic!("no sse connected line in {logs}"));
    assert_eq!(connected["fields"]["conn"], "test-request-42");
    assert_eq!(connected["span"]["id"], "test-request-42");
    assert!(lines
        .iter()
        .any(|l| l["fields"]["message"] == "sse disconnected"
            && l["fields"]["conn"] == "test-request-42"));
    assert!(
        !logs.contains("secret-payload-xyz"),
        "event data is never logged"
    );
}

/// A client that trusts only this certificate (and the usual public roots); HTTP/2 when the
/// server offers it.
fn trusting(pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .build()
        .unwrap()
}

/// The same, speaking HTTP/1.1 only.
fn trusting_http1(pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .http1_only()
        .build()
        .unwrap()
}

/// herald serving HTTPS with a fresh self-signed certificate, and that certificate's PEM.
fn tls_server(dir: &Path, extra: &[&str]) -> (Server, String) {
    let (cert, key, pem) = certificate(dir);
    let mut flags = vec![
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    flags.extend_from_slice(extra);
    (Server::start(&flags), pem)
}

/// An Ed25519 key pair made by openssl: (private PEM, public PEM) contents.
fn ed25519() -> (Vec<u8>, Vec<u8>) {
    let private = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519"])
        .output()
        .expect("openssl (scripts/test installs it)")
        .stdout;
    let mut pubout = std::process::Command::new("openssl")
        .args(["pkey", "-pubout"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    pubout.stdin.take().unwrap().write_all(&private).unwrap();
    let public = pubout.wait_with_output().unwrap().stdout;
    (private, public)
}

/// `herald token --jwt-private-key <file> --subscribe user:1`.
fn token_signed_with(dir: &Path, private: &[u8]) -> String {
    let path = dir.join(format!(
        "signing-{}.key",
        private.len() ^ private[40] as usize
    ));
    std::fs::write(&path, private).unwrap();
    let out = common::herald_command()
        .args(["token", "--subscribe", "user:1", "--jwt-private-key"])
        .arg(&path)
        .env_remove("HERALD_JWT_SECRET")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn sighup_swaps_the_certificate_and_the_keys_under_live_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, pem_a) = certificate(dir.path());
    let (first_private, first_public) = ed25519();
    let public_key = dir.path().join("idp.pem");
    std::fs::write(&public_key, &first_public).unwrap();
    let server = Server::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--jwt-public-key",
        public_key.to_str().unwrap(),
        "--publish-token",
        "op",
        "--private",
        "user:*",
    ]);
    let old = trusting(&pem_a);
    let response = old
        .get(server.at("/sse?stream=live"))
        .bearer_auth("op")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut live = Box::pin(eventsource_stream::Eventsource::eventsource(
        response.bytes_stream(),
    ));
    let read_private = |client: reqwest::Client, token: String| {
        let url = server.at(&format!("/streams/user:1/events?token={token}"));
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };
    let first_token = token_signed_with(dir.path(), &first_private);
    assert_eq!(
        read_private(trusting(&pem_a), first_token.clone()).await,
        200
    );

    // New files in place, then SIGHUP.
    let (_, _, pem_b) = certificate(dir.path());
    let (second_private, second_public) = ed25519();
    std::fs::write(&public_key, &second_public).unwrap();
    let hup = |pid: u32| {
        std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
    };
    hup(server.pid());
    let second_token = token_signed_with(dir.path(), &second_private);
    eventually("the new key is in use", Duration::from_secs(5), || {
        let check = read_private(trusting(&pem_b), second_token.clone());
        async move { check.await == 200 }
    })
    .await;
    assert!(
        trusting(&pem_a)
            .get(server.at("/healthz"))
            .send()
            .await
            .is_err(),
        "a new connection gets the new certificate"
    );
    assert_eq!(
        read_private(trusting(&pem_b), first_token).await,
        401,
        "the old key is gone"
    );
    // The connection opened before the swap is still up and gets the next event.
    let published = trusting(&pem_b)
        .post(server.at("/streams/live"))
        .bearer_auth("op")
        .body("after the swap")
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 201);
    let event = tokio::time::timeout(Duration::from_secs(10), live.next())
        .await
        .expect("the old connection is alive")
        .expect("an event")
        .expect("valid SSE");
    assert_eq!(event.data, "after the swap");

    // Broken files: SIGHUP keeps what is in use.
    std::fs::write(&cert, "not a certificate").unwrap();
    std::fs::write(&public_key, "not a key").unwrap();
    hup(server.pid());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(read_private(trusting(&pem_b), second_token).await, 200);
}
