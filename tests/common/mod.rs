//! Starts the real `herald` binary on an ephemeral port with a temporary data directory, and
//! speaks real HTTP and SSE to it.
#![allow(dead_code)] // each test file uses a different part of this

pub mod redis;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};
use serde_json::Value;

pub struct Server {
    pub url: String,
    child: Child,
    args: Vec<String>,
    data: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// A server on a fresh data directory, with extra flags.
    pub fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let mut server = Server::start_on(&data, extra);
        server._dir = Some(dir);
        server
    }

    /// A server on the given data directory.
    pub fn start_on(data: &Path, extra: &[&str]) -> Server {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, url) = spawn(data, &args);
        Server {
            url,
            child,
            args,
            data: data.to_path_buf(),
            _dir: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the process to exit; returns how long it took.
    pub fn terminate(&mut self) -> Duration {
        let started = std::time::Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        started.elapsed()
    }

    /// Waits for the process to exit by itself; its exit code if it did within `within`.
    pub fn exit_code_within(&mut self, within: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Starts the server again on the same data directory and flags (new port).
    pub fn restart(&mut self) {
        let (child, url) = spawn(&self.data, &self.args);
        self.child = child;
        self.url = url;
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(data: &Path, extra: &[String]) -> (Child, String) {
    // An ephemeral port, unless the test asks for a fixed one (to restart on the same address).
    let listen = if extra.iter().any(|a| a == "--listen") {
        vec![]
    } else {
        vec!["--listen", "127.0.0.1:0"]
    };
    let mut child = herald_command()
        .args(listen)
        .arg("--data")
        .arg(data)
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("HERALD_TEST_LOG").unwrap_or_else(|_| "herald=warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start herald");
    let url = listening_url(&mut child);
    (child, url)
}

/// The herald binary under test, as a command whose environment holds no `HERALD_*` variable
/// of the developer's shell (a stray `HERALD_JWT_SECRET` would change what every test tests);
/// `HERALD_TEST_LOG` is the tests' own.
pub fn herald_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    clean_env(&mut command);
    command
}

/// `herald serve --listen 127.0.0.1:0 <flags>` run to its end, for flags it must refuse: its
/// exit code and its stderr.
pub fn serve_refusing(flags: &[&str]) -> (Option<i32>, String) {
    let out = herald_command()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(flags)
        .env("RUST_LOG", "herald=warn")
        .output()
        .expect("run herald");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), stderr)
}

/// Removes the shell's `HERALD_*` variables (but `HERALD_TEST_LOG`) from a command's
/// environment.
pub fn clean_env(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("HERALD_") && name != "HERALD_TEST_LOG" {
            command.env_remove(name);
        }
    }
}

/// The URL a herald started with its stdout piped says it listens on, from its first line.
pub fn listening_url(child: &mut Child) -> String {
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    line.trim()
        .strip_prefix("herald listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string()
}

/// A port that was free a moment ago, for a server that must come back on the same address.
pub fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    probe.local_addr().expect("addr").port()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// Publishes raw text; returns the id.
pub async fn publish(server: &Server, stream: &str, data: &str) -> u64 {
    let response = client()
        .post(server.at(&format!("/streams/{stream}")))
        .body(data.to_string())
        .send()
        .await
        .expect("publish");
    assert_eq!(response.status(), 201, "publish to {stream}");
    id_of(&response.json::<Value>().await.expect("json")["id"])
}

/// Publishes a batch of (stream, data); returns the ids.
pub async fn publish_batch(server: &Server, events: &[(&str, String)]) -> Vec<u64> {
    let body: Vec<Value> = events
        .iter()
        .map(|(s, d)| serde_json::json!({"stream": s, "data": d}))
        .collect();
    let response = client()
        .post(server.at("/publish"))
        .json(&body)
        .send()
        .await
        .expect("publish batch");
    assert_eq!(response.status(), 201);
    let json: Value = response.json().await.expect("json");
    json["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(id_of)
        .collect()
}

pub fn id_of(value: &Value) -> u64 {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an id: {value}"))
}

/// Opens `GET /sse?{query}` (with `Last-Event-ID` if given) and returns the parsed event stream,
/// once the response headers are in (so the subscription is registered).
pub async fn subscribe(
    server: &Server,
    query: &str,
    last_event_id: Option<u64>,
) -> impl Stream<Item = Event> + Unpin {
    let mut request = client().get(server.at(&format!("/sse?{query}")));
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id.to_string());
    }
    let response = request.send().await.expect("subscribe");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    Box::pin(
        response
            .bytes_stream()
            .eventsource()
            .map(|e| e.expect("valid SSE")),
    )
}

/// The next `n` events, failing the test if they take more than 30 s.
pub async fn take(events: &mut (impl Stream<Item = Event> + Unpin), n: usize) -> Vec<Event> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(30), events.next()).await {
            Ok(Some(e)) => got.push(e),
            Ok(None) => panic!("stream ended after {} of {n} events", got.len()),
            Err(_) => panic!("timed out after {} of {n} events", got.len()),
        }
    }
    got
}

pub fn ids(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e.id.parse().expect("numeric id"))
        .collect()
}

pub async fn get_json(server: &Server, path: &str) -> (u16, Value) {
    let response = client().get(server.at(path)).send().await.expect("get");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json body"))
}

/// The ids of a `GET /streams/{s}/events` page.
pub fn page_ids(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .expect("events array")
        .iter()
        .map(|e| id_of(&e["id"]))
        .collect()
}

/// Polls `check` until it holds, failing the test with `what` after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `GET /streams/{stream}/presence`.
pub async fn presence(server: &Server, stream: &str) -> Value {
    let (status, body) = get_json(server, &format!("/streams/{stream}/presence")).await;
    assert_eq!(status, 200);
    body
}

/// An SSE response read as raw text in the background: for checking frames byte by byte
/// (`event: join` without `id:`, say) and for seeing the response end.
pub struct RawSse {
    pub status: u16,
    text: std::sync::Arc<std::sync::Mutex<String>>,
    ended: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RawSse {
    pub async fn open(server: &Server, query: &str, last_event_id: Option<u64>) -> RawSse {
        let mut request = client().get(server.at(&format!("/sse?{query}")));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.expect("subscribe");
        let status = response.status().as_u16();
        let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (t, e) = (text.clone(), ended.clone());
        let task = tokio::spawn(async move {
            let mut body = response.bytes_stream();
            while let Some(Ok(chunk)) = body.next().await {
                t.lock().unwrap().push_str(&String::from_utf8_lossy(&chunk));
            }
            e.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        RawSse {
            status,
            text,
            ended,
            task,
        }
    }

    pub fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// True once the server ended the response.
    pub fn ended(&self) -> bool {
        self.ended.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until the text received so far contains `needle`; returns all of it.
    pub async fn wait_for(&self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let text = self.text();
            if text.contains(needle) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{needle:?} not received within 15 s; got {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the server ends the response; returns everything received.
    pub async fn wait_end(&self) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !self.ended() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "response not ended within 15 s; got {:?}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.text()
    }
}

impl Drop for RawSse {
    fn drop(&mut self) {
        self.task.abort(); // closes the connection
    }
}

/// The SSE frames of a raw text (blank-line separated), without the opening `retry:` and
/// heartbeats.
pub fn frames(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter(|f| !f.is_empty() && !f.starts_with("retry:") && !f.starts_with(':'))
        .map(str::to_string)
        .collect()
}

/// A subscriber on a raw socket of its own, to close (FIN, RST) or lose exactly as a test wants.
pub fn raw_subscriber(server: &Server, query: &str) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let address = server.url.strip_prefix("http://").unwrap();
    let mut socket = std::net::TcpStream::connect(address).unwrap();
    write!(
        socket,
        "GET /sse?{query} HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 512];
    let n = socket.read(&mut head).unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "subscribed");
    socket
}

/// Reads a raw socket until `done` says the text so far is complete, the server closes the
/// connection, or `within` passes. Returns the text and whether the server closed it.
pub fn read_raw_until(
    socket: &mut std::net::TcpStream,
    within: Duration,
    done: impl Fn(&str) -> bool,
) -> (String, bool) {
    use std::io::Read;
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let deadline = std::time::Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let text = |got: &[u8]| String::from_utf8_lossy(got).into_owned();
    while std::time::Instant::now() < deadline {
        if done(&text(&got)) {
            return (text(&got), false);
        }
        match socket.read(&mut buf) {
            Ok(0) => return (text(&got), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (text(&got), true),
        }
    }
    (text(&got), false)
}

/// A response's status, and its JSON body (`null` for `204`).
pub async fn status_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = if status == 204 {
        Value::Null
    } else {
        response.json().await.expect("json body")
    };
    (status, body)
}

/// `POST /streams/{stream}/close`: seals the stream.
pub async fn seal(server: &Server, stream: &str) -> (u16, Value) {
    status_of(
        client()
            .post(server.at(&format!("/streams/{stream}/close")))
            .send()
            .await
            .unwrap(),
    )
    .await
}
