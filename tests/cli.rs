//! `herald publish`, `herald subscribe` and `herald relay`, run as the binary against the real
//! server — and, for relay, against a small fake upstream that behaves like a Mastodon
//! streaming API on a bad day (503, garbage, drops, resent events).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn herald(args: &[&str]) -> Command {
    let mut command = common::herald_command();
    command
        .args(args)
        .env_remove("HERALD_URL")
        .env_remove("HERALD_TOKEN");
    command
}

/// Runs a client command to the end, with `stdin` as its input.
fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = herald(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn first_stderr_line(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// A long-running client (subscribe, relay) whose stdout is read line by line.
struct Running {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = herald(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Running { child, lines }
    }

    /// The next `n` lines, failing the test after 20 s.
    fn take(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                self.lines
                    .recv_timeout(Duration::from_secs(20))
                    .unwrap_or_else(|_| panic!("line {i} of {n} did not come"))
            })
            .collect()
    }

    fn exit_code_within(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn signal(&self, name: &str) {
        Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn publish_and_subscribe_round_trip_through_the_binary() {
    let server = Server::start(&[]);
    let url = server.url.clone();

    let one = run(&["publish", "news", "hello", "--url", &url], "");
    assert!(one.status.success());
    let first_id = stdout_of(&one).trim().to_owned();
    let typed = run(
        &["publish", "news", "--event", "headline", "--url", &url],
        "two\nlines\n",
    );
    assert!(typed.status.success());
    let lines = run(
        &["publish", "news", "-", "--lines", "--url", &url],
        "a\nb\nc\n",
    );
    assert_eq!(stdout_of(&lines).lines().count(), 3, "one id per line");

    // From the start, as JSON: every event, with its type and exact data.
    let mut subscriber = Running::start(&[
        "subscribe",
        "news",
        "--last-id",
        "0",
        "--format",
        "json",
        "--url",
        &url,
    ]);
    let got: Vec<Value> = subscriber
        .take(5)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got[0]["id"], first_id);
    assert_eq!(got[0]["data"], "hello");
    assert_eq!(got[1]["event"], "headline");
    assert_eq!(
        got[1]["data"], "two\nlines",
        "stdin's final newline is dropped"
    );
    let data: Vec<&str> = got[2..]
        .iter()
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    assert_eq!(data, ["a", "b", "c"]);

    // Live events arrive too; sealing the stream ends the subscriber, exit 0.
    publish(&server, "news", "live").await;
    assert_eq!(
        serde_json::from_str::<Value>(&subscriber.take(1)[0]).unwrap()["data"],
        "live"
    );
    let sealed = client()
        .post(server.at("/streams/news/close"))
        .send()
        .await
        .unwrap();
    assert_eq!(sealed.status(), 200);
    assert_eq!(
        subscriber.exit_code_within(Duration::from_secs(10)),
        Some(0)
    );

    // Text format prints the data as published; several streams on one connection.
    let mut text = Running::start(&["subscribe", "a", "b", "--last-id", "0", "--url", &url]);
    publish(&server, "a", "from a").await;
    publish(&server, "b", "from b\nsecond line").await;
    assert_eq!(text.take(3), ["from a", "from b", "second line"]);
    text.signal("INT");
    assert_eq!(
        text.exit_code_within(Duration::from_secs(5)),
        Some(0),
        "Ctrl-C is a clean stop"
    );
}

#[tokio::test]
async fn refusals_exit_non_zero_with_the_servers_reason_first() {
    let server = Server::start(&[
        "--publish-token",
        "cli-token",
        "--jwt-secret",
        "a-cli-test-secret-of-32-bytes-or-more",
        "--private",
        "secret",
    ]);
    let url = server.url.clone();

    let bad = run(
        &[
            "publish",
            "bad name",
            "x",
            "--url",
            &url,
            "--token",
            "cli-token",
        ],
        "",
    );
    assert!(!bad.status.success());
    assert!(
        first_stderr_line(&bad).contains("400"),
        "{}",
        first_stderr_line(&bad)
    );
    assert!(first_stderr_line(&bad).contains("allowed are"));

    let unauthorised = run(&["publish", "news", "x", "--url", &url], "");
    assert!(!unauthorised.status.success());
    assert!(first_stderr_line(&unauthorised).contains("401"));

    let with_flag = run(
        &[
            "publish",
            "news",
            "x",
            "--url",
            &url,
            "--token",
            "cli-token",
        ],
        "",
    );
    assert!(
        with_flag.status.success(),
        "{}",
        first_stderr_line(&with_flag)
    );
    let with_env = herald(&["publish", "news", "y", "--url", &url])
        .env("HERALD_TOKEN", "cli-token")
        .output()
        .unwrap();
    assert!(with_env.status.success());

    // A subscriber refused for good does not retry for ever: it exits with the reason.
    let mut private = Running::start(&["subscribe", "secret", "--url", &url]);
    assert_eq!(private.exit_code_within(Duration::from_secs(10)), Some(1));

    let nowhere = run(
        &[
            "publish",
            "news",
            "x",
            "--url",
            &format!("http://127.0.0.1:{}", free_port()),
        ],
        "",
    );
    assert!(!nowhere.status.success());
    let line = first_stderr_line(&nowhere);
    assert!(line.contains("cannot reach"), "{line}");
    assert_eq!(line.matches("127.0.0.1").count(), 1, "the URL once: {line}");

    let flag = herald(&["subscribe"]).output().unwrap();
    assert!(!flag.status.success(), "a stream is required");
}

#[tokio::test]
async fn subscribe_resumes_after_a_kill_9_restart_with_last_event_id() {
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let mut server = Server::start(&["--listen", &listen]);
    let url = server.url.clone();
    let subscriber = Running::start(&["subscribe", "jobs", "--url", &url]);
    // Wait until the subscriber is connected, so the first event is live for it.
    eventually(
        "the subscriber is connected",
        Duration::from_secs(10),
        || async { get_json(&server, "/streams/jobs").await.1["subscribers"] == 1 },
    )
    .await;
    for i in 1..=3 {
        publish(&server, "jobs", &format!("job {i}")).await;
    }
    assert_eq!(subscriber.take(3), ["job 1", "job 2", "job 3"]);

    server.kill9();
    server.restart();
    assert_eq!(server.url, url, "back on the same address");
    // Published while the subscriber is still reconnecting: it must get them, once.
    for i in 4..=5 {
        publish(&server, "jobs", &format!("job {i}")).await;
    }
    assert_eq!(subscriber.take(2), ["job 4", "job 5"]);
    publish(&server, "jobs", "job 6").await;
    assert_eq!(subscriber.take(1), ["job 6"]);
    assert!(
        subscriber
            .lines
            .recv_timeout(Duration::from_millis(500))
            .is_err(),
        "nothing twice"
    );
}

/// What a fake upstream does with one connection.
#[derive(Clone)]
enum Script {
    /// Writes these bytes, then closes.
    Raw(&'static [u8]),
    /// Writes these bytes, then resets the connection (RST, not FIN).
    Reset(&'static [u8]),
    /// An SSE response: these frames, then closes (`hold: false`) or stays open.
    Sse { frames: Vec<String>, hold: bool },
}

/// What the fake upstream saw of one request.
#[derive(Debug, Clone, Default)]
struct Seen {
    last_event_id: Option<String>,
    authorization: Option<String>,
}

/// A fake SSE upstream on an ephemeral port: connection n follows `scripts[n]` (the last
/// script repeats).
struct FakeUpstream {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeUpstream {
    async fn start(scripts: Vec<Script>) -> FakeUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/api/v1/streaming/public",
            listener.local_addr().unwrap()
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let script = scripts[n.min(scripts.len() - 1)].clone();
                n += 1;
                let log = log.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => head.extend_from_slice(&buf[..k]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).to_lowercase();
                    let header = |name: &str| {
                        head.lines()
                            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                            .map(|v| v.trim().to_owned())
                    };
                    log.lock().unwrap().push(Seen {
                        last_event_id: header("last-event-id"),
                        authorization: header("authorization"),
                    });
                    match script {
                        Script::Raw(bytes) => {
                            let _ = socket.write_all(bytes).await;
                        }
                        Script::Reset(bytes) => {
                            let _ = socket.write_all(bytes).await;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            // Linger 0: closing sends RST. Set through socket2, as tokio's
                            // own setter is deprecated (it may block on drop; not at 0).
                            let _ =
                                socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO));
                        }
                        Script::Sse { frames, hold } => {
                            let _ = socket
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n")
                                .await;
                            for frame in frames {
                                let _ = socket.write_all(frame.as_bytes()).await;
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            if hold {
                                // Heartbeats until the relay goes away.
                                while socket.write_all(b":thump\n\n").await.is_ok() {
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                }
                            }
                        }
                    }
                });
            }
        });
        FakeUpstream { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A Mastodon-like `update` frame with a JSON status.
fn update(id: Option<u32>, status: &str, content: &str) -> String {
    let data = json!({"id": status, "content": content, "account": {"acct": "alice"}});
    match id {
        Some(id) => format!("event: update\nid: {id}\ndata: {data}\n\n"),
        None => format!("event: update\ndata: {data}\n\n"),
    }
}

async fn stream_events(server: &Server, stream: &str) -> Vec<Value> {
    let (status, page) = get_json(server, &format!("/streams/{stream}/events?limit=1000")).await;
    assert_eq!(status, 200);
    page["events"].as_array().unwrap().clone()
}

#[tokio::test]
async fn relay_lands_every_chosen_event_exactly_once_through_drops_garbage_and_its_own_restart() {
    let server = Server::start(&[]);
    let upstream = FakeUpstream::start(vec![
        Script::Raw(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"),
        Script::Raw(b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\n\r\n<html>not sse</html>"),
        // A frame cut off by a reset: never complete, so never relayed.
        Script::Reset(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\nevent: update\nid: 99\ndata: {\"id\":\"x\",\"content\":\"cut off\"}\n"),
        // Bytes that are not UTF-8 inside an event stream.
        Script::Raw(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\nevent: update\ndata: \xff\xfe\x00\n\n"),
        Script::Sse {
            frames: vec![
                ":thump\n\n".into(),
                update(Some(1), "s1", "one"),
                "event: delete\nid: 2\ndata: s0\n\n".into(),
                update(Some(3), "s3", "three\nwith a newline"),
                "event: notification\nid: 4\ndata: {\"type\":\"mention\"}\n\n".into(),
            ],
            hold: false,
        },
        // Resumes inclusively: resends 3, then 4 (skipped type) and 5, then drops.
        Script::Sse {
            frames: vec![
                update(Some(3), "s3", "three\nwith a newline"),
                "event: notification\nid: 4\ndata: {}\n\n".into(),
                update(Some(5), "s5", "five"),
            ],
            hold: false,
        },
        // Connected, quiet: the relay is killed here.
        Script::Sse {
            frames: vec![],
            hold: true,
        },
        // The restarted relay: 5 again (already relayed), then 6.
        Script::Sse {
            frames: vec![update(Some(5), "s5", "five"), update(Some(6), "s6", "six")],
            hold: true,
        },
    ])
    .await;
    let relay_args = [
        "relay",
        &upstream.url,
        "--to",
        "feed",
        "--event",
        "update",
        "--header",
        "Authorization: Bearer mastodon-token",
        "--backoff",
        "0.05",
        "--max-backoff",
        "0.2",
        "--url",
        &server.url,
    ];
    let relay = Running::start(&relay_args);
    eventually("1, 3 and 5 relayed", Duration::from_secs(20), || async {
        stream_events(&server, "feed").await.len() == 3
    })
    .await;
    eventually(
        "the relay waits on its 7th connection",
        Duration::from_secs(10),
        || async { upstream.seen().len() == 7 },
    )
    .await;
    drop(relay); // kill -9
    let _restarted = Running::start(&relay_args);
    eventually("6 relayed", Duration::from_secs(20), || async {
        stream_events(&server, "feed").await.len() >= 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let events = stream_events(&server, "feed").await;
    let contents: Vec<String> = events
        .iter()
        .map(|e| {
            assert_eq!(e["event"], "update");
            let status: Value = serde_json::from_str(e["data"].as_str().unwrap()).unwrap();
            status["content"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(contents, ["one", "three\nwith a newline", "five", "six"]);

    let seen = upstream.seen();
    let resumed: Vec<Option<&str>> = seen.iter().map(|s| s.last_event_id.as_deref()).collect();
    assert_eq!(
        resumed,
        [
            None,
            None,
            None,
            None,
            None,
            Some("3"),
            Some("5"),
            Some("5")
        ],
        "Last-Event-ID on each reconnect, and after the restart from herald's state"
    );
    assert!(seen
        .iter()
        .all(|s| s.authorization.as_deref() == Some("bearer mastodon-token")));
}

#[tokio::test]
async fn relay_with_map_id_skips_statuses_it_relayed_before_a_restart() {
    let server = Server::start(&[]);
    // Mastodon sends no SSE ids and cannot resume: after a restart it sends what it sends.
    let upstream = FakeUpstream::start(vec![
        Script::Sse {
            frames: vec![update(None, "109", "first"), update(None, "110", "second")],
            hold: true,
        },
        Script::Sse {
            frames: vec![update(None, "110", "second"), update(None, "111", "third")],
            hold: true,
        },
    ])
    .await;
    let args = [
        "relay",
        &upstream.url,
        "--to",
        "public",
        "--map-id",
        "--backoff",
        "0.05",
        "--url",
        &server.url,
    ];
    let relay = Running::start(&args);
    eventually("two relayed", Duration::from_secs(20), || async {
        stream_events(&server, "public").await.len() == 2
    })
    .await;
    drop(relay);
    let _again = Running::start(&args);
    eventually("third relayed", Duration::from_secs(20), || async {
        stream_events(&server, "public").await.len() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids: Vec<String> = stream_events(&server, "public")
        .await
        .iter()
        .map(|e| {
            let status: Value = serde_json::from_str(e["data"].as_str().unwrap()).unwrap();
            status["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids, ["109", "110", "111"]);
}

#[test]
fn subscribe_waits_as_long_as_the_servers_retry_asks() {
    let mut server = Server::start(&[]);
    let mut subscriber = herald(&["subscribe", "news", "--url", &server.url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500)); // connected: herald's `retry: 3000` is in
    server.kill9();
    let stderr = subscriber.stderr.take().unwrap();
    let line = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("reconnecting in"))
        .expect("a reconnect notice");
    let _ = subscriber.kill();
    let _ = subscriber.wait();
    let seconds: f64 = line
        .split("reconnecting in ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(
        seconds >= 3.0,
        "herald asked for 3 s, the client waits {seconds} s: {line}"
    );
}
