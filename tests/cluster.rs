//! Several herald nodes over one Redis: the engine contract against a real `redis-server`, and
//! nodes that act as one broker.

mod common;

use std::sync::Arc;
use std::time::Duration;

use herald::broker::engine::contract::{exercise, Subject};
use herald::broker::engine::redis::{RedisEngine, RedisOptions, RedisTarget};
use herald::broker::engine::{Engine, Retention};

use common::redis::{RedisServer, Sentinel};
use common::*;
use serde_json::Value;

fn options(redis: &RedisServer) -> RedisOptions {
    let mut options = RedisOptions::new(RedisTarget::Url(redis.url()));
    options.retention = Retention::default();
    options.trim_every = Duration::from_millis(100);
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_engine_keeps_the_engine_contract() {
    let redis = RedisServer::start();
    let options = options(&redis);
    exercise(Subject {
        open: || {
            let options = options.clone();
            async move {
                let engine = RedisEngine::connect(options).await.expect("connect");
                Arc::new(engine) as Arc<dyn Engine>
            }
        },
        keeps_its_log: true,
        trim_every: Duration::from_millis(100),
    })
    .await;
}

/// A herald node on `redis`, with extra flags.
fn node(redis: &RedisServer, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--redis", url.as_str()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Posts one event with an optional idempotency key: the status, the id (if any) and whether
/// it was a replay.
async fn post(
    server: &Server,
    stream: &str,
    data: &str,
    key: Option<&str>,
) -> (u16, Option<u64>, bool) {
    let mut request = client()
        .post(server.at(&format!("/streams/{stream}")))
        .body(data.to_owned());
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let replayed = response.headers().contains_key("idempotent-replayed");
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (
                status,
                body["id"].as_str().and_then(|s| s.parse().ok()),
                replayed,
            )
        }
        Err(_) => (0, None, false),
    }
}

fn strictly_rising(ids: &[u64]) -> bool {
    ids.windows(2).all(|w| w[0] < w[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_publishing_at_once_give_every_subscriber_one_rising_sequence() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    let query = "stream=x&stream=y&stream=z";
    let mut on_a = subscribe(&a, query, None).await;
    let mut on_b = subscribe(&b, query, None).await;

    let publishers = [&a, &b].map(|server| {
        let url = server.url.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..60 {
                let stream = ["x", "y", "z"][i % 3];
                let response = client()
                    .post(format!("{url}/streams/{stream}"))
                    .body(format!("{url} #{i}"))
                    .send()
                    .await
                    .expect("publish");
                assert_eq!(response.status(), 201);
                let body: Value = response.json().await.expect("json");
                acked.push(id_of(&body["id"]));
            }
            acked
        })
    });
    let mut acked = Vec::new();
    for publisher in publishers {
        acked.extend(publisher.await.expect("publisher"));
    }
    acked.sort_unstable();

    let seen_a = ids(&take(&mut on_a, 120).await);
    let seen_b = ids(&take(&mut on_b, 120).await);
    assert!(strictly_rising(&seen_a), "ids rise in delivery order on A");
    assert_eq!(seen_a, seen_b, "both nodes deliver the same sequence");
    assert_eq!(seen_a, acked, "every acknowledged event, nothing else");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resumes_on_another_node_without_gap_or_duplicate() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    let mut first = subscribe(&a, "stream=r1&stream=r2", None).await;
    let mut published = Vec::new();
    for i in 0..6 {
        let stream = if i % 2 == 0 { "r1" } else { "r2" };
        published.push(publish(&a, stream, &format!("e{i}")).await);
    }
    let got = ids(&take(&mut first, 3).await);
    assert_eq!(got, published[..3]);
    drop(first);

    let mut resumed = subscribe(&b, "stream=r1&stream=r2", Some(got[2])).await;
    let later = publish(&a, "r1", "after the move").await;
    let rest = ids(&take(&mut resumed, 4).await);
    let mut expected = published[3..].to_vec();
    expected.push(later);
    assert_eq!(rest, expected, "B gives what A had not, then the live one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_delete_retention_and_history_look_the_same_from_every_node() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);

    // Seal on A: B's subscriber is told and let go; B refuses publishes.
    let closing = RawSse::open(&b, "stream=qa", None).await;
    let id = publish(&a, "qa", "the last question").await;
    closing.wait_for(&format!("id: {id}")).await;
    assert_eq!(seal(&a, "qa").await.0, 200);
    let text = closing.wait_end().await;
    assert!(text.contains("event: close\ndata: qa"), "{text:?}");
    assert_eq!(post(&b, "qa", "too late", None).await.0, 409);
    let (status, _) = status_of(client().get(b.at("/sse?stream=qa")).send().await.unwrap()).await;
    assert_eq!(
        status, 204,
        "a sealed, fully read stream ends EventSource on any node"
    );

    // Delete on B: A's subscriber is told, A's history is empty.
    let watching = RawSse::open(&a, "stream=gone", None).await;
    publish(&b, "gone", "soon gone").await;
    let deleted = client().delete(b.at("/streams/gone")).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    watching.wait_for("event: close\ndata: gone").await;
    drop(watching); // a node lists streams its own subscribers read, too
    let (_, info) = get_json(&a, "/streams/gone").await;
    assert_eq!(info["length"], 0);

    // Retention set on A trims what B reads.
    for i in 0..10 {
        publish(&b, "kept", &i.to_string()).await;
    }
    let set = client()
        .put(a.at("/streams/kept/retention"))
        .json(&serde_json::json!({"max_len": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    eventually(
        "B sees the stream trimmed to 3",
        Duration::from_secs(10),
        || async { get_json(&b, "/streams/kept").await.1["length"] == 3 },
    )
    .await;
    let (_, page) = get_json(&b, "/streams/kept/events?after=0").await;
    let datas: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    assert_eq!(datas, ["7", "8", "9"]);
    let (_, retention) = get_json(&b, "/streams/kept/retention").await;
    assert_eq!(retention["max_len"], 3, "{retention}");

    // The listing is the same from both.
    let names = |listing: Value| -> Vec<String> {
        listing
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect()
    };
    eventually(
        "both nodes list the same streams",
        Duration::from_secs(5),
        || async {
            let on_a = names(get_json(&a, "/streams").await.1);
            on_a == ["kept", "qa"] && on_a == names(get_json(&b, "/streams").await.1)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_the_same_key_on_another_node_stores_nothing() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    let (status, first, replayed) = post(&a, "orders", "order 1", Some("order-1")).await;
    assert_eq!((status, replayed), (201, false));
    // Read back at once from the other node, by id: committed is readable everywhere.
    let (status, event) = get_json(&b, &format!("/streams/orders/events/{}", first.unwrap())).await;
    assert_eq!((status, event["data"].as_str()), (200, Some("order 1")));
    let (status, again, replayed) = post(&b, "orders", "order 1", Some("order-1")).await;
    assert_eq!((status, again, replayed), (201, first, true));
    let (_, page) = get_json(&b, "/streams/orders/events").await;
    assert_eq!(page_ids(&page), [first.unwrap()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_one_across_nodes_and_a_dead_nodes_members_leave() {
    let redis = RedisServer::start();
    let a = node(&redis, &["--presence-grace", "1"]);
    let b = node(&redis, &["--presence-grace", "1"]);
    let mut c = node(&redis, &["--presence-grace", "1"]);
    let watcher = RawSse::open(&b, "stream=room&presence=1", None).await;

    let alice_a = RawSse::open(&a, "stream=room&client=alice", None).await;
    let alice_b = RawSse::open(&b, "stream=room&client=alice", None).await;
    watcher.wait_for("\"client\":\"alice\"").await;
    eventually(
        "alice is one member with two connections",
        Duration::from_secs(5),
        || async {
            let room = presence(&a, "room").await;
            room["count"] == 1 && room["clients"][0]["connections"] == 2
        },
    )
    .await;
    assert_eq!(presence(&b, "room").await["count"], 1);
    let (_, listing) = get_json(&b, "/streams").await;
    let room = listing
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "room");
    assert_eq!(
        room.map(|r| r["online"].clone()),
        Some(1.into()),
        "{listing}"
    );

    // A reload on the other node is neither a leave nor a join.
    drop(alice_a);
    let _alice_again = RawSse::open(&a, "stream=room&client=alice", None).await;
    drop(alice_b);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(presence(&b, "room").await["count"], 1);

    // Carol's node dies: she leaves within the grace period and about three refreshes.
    let _carol = RawSse::open(&c, "stream=room&client=carol", None).await;
    watcher.wait_for("\"client\":\"carol\",\"count\":2").await;
    c.kill9();
    let killed = std::time::Instant::now();
    let text = watcher.wait_for("\"client\":\"carol\",\"count\":1").await;
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(12), "carol left after {took:?}");
    assert!(text.contains("event: leave"), "{text:?}");
    let joins = text.matches("event: join").count();
    assert_eq!(joins, 2, "alice and carol joined once each: {text:?}");
    assert_eq!(presence(&a, "room").await["count"], 1);
}

/// Publishes `n` events to `stream` one after another, each with its own idempotency key,
/// retrying each (same key) until it is acknowledged — as a careful publisher does through an
/// outage. Returns the acknowledged ids in order. `after_each(i)` runs after event i's ack.
async fn publish_through_outages(
    url: String,
    stream: &'static str,
    n: usize,
    acked_count: Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<u64> {
    let mut acked = Vec::with_capacity(n);
    for i in 0..n {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let response = client()
                .post(format!("{url}/streams/{stream}"))
                .header("Idempotency-Key", format!("{stream}-{i}"))
                .body(format!("{stream}-{i}"))
                .send()
                .await;
            if let Ok(response) = response {
                if response.status() == 201 {
                    let body: Value = response.json().await.expect("json");
                    acked.push(id_of(&body["id"]));
                    acked_count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    break;
                }
                let status = response.status().as_u16();
                assert!(
                    status == 503 || status == 500,
                    "only an outage may refuse a publish, got {status}"
                );
                if status == 503 {
                    assert!(response.headers().contains_key("retry-after"));
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "event {i} not acknowledged within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    acked
}

/// Every event of `stream` in history, as (id, data).
async fn history(server: &Server, stream: &str) -> Vec<(u64, String)> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let (status, page) = get_json(
            server,
            &format!("/streams/{stream}/events?after={after}&limit=1000"),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().expect("events").clone();
        if events.is_empty() {
            return all;
        }
        for e in events {
            after = id_of(&e["id"]);
            all.push((after, e["data"].as_str().unwrap_or_default().to_owned()));
        }
    }
}

/// A stream's history on `server` once that node has made the last acknowledged event
/// visible (history on a node goes up to what its own tailer has passed, which may be a few
/// milliseconds behind the node that acknowledged it — longer right after a failover, when
/// a node also waits for the replicas). Gives up waiting after 10 s and returns what it has.
async fn history_through(server: &Server, stream: &str, acked: &[u64]) -> Vec<(u64, String)> {
    let last = acked.last().copied().unwrap_or(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events = history(server, stream).await;
        let through = events.last().map_or(0, |(id, _)| *id);
        if through >= last || std::time::Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_count(count: &std::sync::atomic::AtomicUsize, at_least: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while count.load(std::sync::atomic::Ordering::SeqCst) < at_least {
        assert!(std::time::Instant::now() < deadline, "publishing stalled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Checks that history holds exactly the acknowledged events, each once, in publish order.
fn exactly_the_acknowledged(history: &[(u64, String)], acked: &[u64], stream: &str) {
    let ids: Vec<u64> = history.iter().map(|(id, _)| *id).collect();
    assert!(strictly_rising(&ids), "history ids rise strictly");
    assert!(
        strictly_rising(acked),
        "acknowledged ids rise with publish order"
    );
    assert_eq!(ids, acked, "history is exactly the acknowledged events");
    for (i, (_, data)) in history.iter().enumerate() {
        assert_eq!(data, &format!("{stream}-{i}"), "each event once, in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_is_a_quick_503_while_subscribers_keep_their_heartbeats() {
    let redis = RedisServer::start();
    let a = node(&redis, &["--heartbeat", "0.5"]);
    let sub = RawSse::open(&a, "stream=s", None).await;
    let before = publish(&a, "s", "before").await;
    sub.wait_for(&format!("id: {before}")).await;

    redis.pause();
    let started = std::time::Instant::now();
    let refused = client()
        .post(a.at("/streams/s"))
        .header("Idempotency-Key", "during")
        .body("during")
        .send()
        .await
        .expect("an answer, not a hang");
    let took = started.elapsed();
    assert_eq!(refused.status(), 503);
    assert!(took < Duration::from_secs(5), "503 after {took:?}");
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.expect("json error");
    assert!(body["error"].as_str().unwrap().contains("Redis"), "{body}");
    let started = std::time::Instant::now();
    let (status, _) = get_json(&a, "/streams/s/events").await;
    assert_eq!(status, 503, "history reads too");
    assert!(started.elapsed() < Duration::from_secs(5));
    eventually("/healthz says 503", Duration::from_secs(5), || async {
        client()
            .get(a.at("/healthz"))
            .send()
            .await
            .unwrap()
            .status()
            == 503
    })
    .await;
    // A new subscriber meanwhile: an EventSource is told to come back, anything else gets 503.
    let browser = client()
        .get(a.at("/sse?stream=s"))
        .header("Accept", "text/event-stream")
        .send()
        .await
        .expect("an answer");
    assert_eq!(browser.status(), 200);
    let body = browser.text().await.expect("an ended body");
    assert!(body.contains("retry: "), "{body:?}");
    let plain = client().get(a.at("/sse?stream=s")).send().await.unwrap();
    assert_eq!(plain.status(), 503);
    assert!(plain.headers().contains_key("retry-after"));
    let beats = sub.text().matches(": heartbeat").count();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        sub.text().matches(": heartbeat").count() > beats,
        "heartbeats go on while Redis is away"
    );

    redis.resume();
    eventually("/healthz is 200 again", Duration::from_secs(10), || async {
        client()
            .get(a.at("/healthz"))
            .send()
            .await
            .unwrap()
            .status()
            == 200
    })
    .await;
    // The retry of the refused publish, with its key: stored once, whether the first attempt
    // got through in the end or not.
    let (status, during, _) = post(&a, "s", "during", Some("during")).await;
    assert_eq!(status, 201);
    let after = publish(&a, "s", "after").await;
    let text = sub.wait_for(&format!("id: {after}")).await;
    let datas: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(datas, ["before", "during", "after"], "{text:?}");
    assert!(during.unwrap() > before && after > during.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_from_its_aof_loses_nothing_acknowledged() {
    let mut redis = RedisServer::start(); // appendfsync always
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    let mut on_b = subscribe(&b, "stream=k", Some(0)).await;
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publisher = tokio::spawn(publish_through_outages(
        a.url.clone(),
        "k",
        150,
        count.clone(),
    ));
    wait_count(&count, 40).await;
    redis.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart();
    let acked = publisher.await.expect("publisher");

    exactly_the_acknowledged(&history_through(&b, "k", &acked).await, &acked, "k");
    let delivered = take(&mut on_b, 150).await;
    assert_eq!(
        ids(&delivered),
        acked,
        "the open subscriber got every event, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_loses_nothing_it_acknowledged() {
    let redis = RedisServer::start();
    let mut a = node(&redis, &[]);
    let b = node(&redis, &[]);
    let url = a.url.clone();
    let publisher = tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 0.. {
            let sent = client()
                .post(format!("{url}/streams/n"))
                .body(format!("n-{i}"))
                .send()
                .await;
            match sent {
                Ok(r) if r.status() == 201 => {
                    let body: Value = r.json().await.expect("json");
                    acked.push(id_of(&body["id"]));
                }
                _ => return acked,
            }
        }
        acked
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.kill9();
    let acked = publisher.await.expect("publisher");
    assert!(acked.len() > 5, "some were acknowledged first");
    let stored: Vec<u64> = history(&b, "n").await.iter().map(|(id, _)| *id).collect();
    assert!(
        acked.iter().all(|id| stored.contains(id)),
        "every acknowledged event is in history"
    );
    assert!(
        stored.len() <= acked.len() + 1,
        "at most the one in flight beyond"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_under_load_loses_no_acknowledged_event_and_reuses_no_id() {
    let mut primary = RedisServer::start();
    let replicas = [
        RedisServer::replica_of(&primary),
        RedisServer::replica_of(&primary),
    ];
    for replica in &replicas {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
        {
            assert!(std::time::Instant::now() < deadline, "replica never synced");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let sentinels: Vec<Sentinel> = (0..3)
        .map(|_| Sentinel::start(&primary, "herald", 2))
        .collect();
    let addresses: Vec<String> = sentinels.iter().map(Sentinel::address).collect();
    let addresses = addresses.join(",");
    let flags = [
        "--redis-sentinel",
        addresses.as_str(),
        "--redis-master",
        "herald",
        "--redis-replicas",
        "1",
    ];
    let a = Server::start(&flags);
    let b = Server::start(&flags);
    let mut on_b = subscribe(&b, "stream=f", Some(0)).await;

    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publisher = tokio::spawn(publish_through_outages(
        a.url.clone(),
        "f",
        120,
        count.clone(),
    ));
    wait_count(&count, 40).await;
    let old = primary.port;
    primary.kill9();
    let acked = publisher.await.expect("publisher");
    let now = sentinels[0].primary_port("herald");
    assert!(
        now.is_some_and(|p| p != old),
        "the Sentinels elected a new primary"
    );

    exactly_the_acknowledged(&history_through(&b, "f", &acked).await, &acked, "f");
    let delivered = take(&mut on_b, 120).await;
    assert_eq!(
        ids(&delivered),
        acked,
        "the open subscriber got every event, in order"
    );
}

/// `herald relay redis://… --key <key> --to <stream> --url <herald>`, killed when dropped.
struct Relay(std::process::Child);

impl Relay {
    fn start(redis: &RedisServer, key: &str, herald: &Server) -> Relay {
        let child = common::herald_command()
            .args(["relay", &redis.url(), "--key", key, "--to", key])
            .args(["--url", &herald.url, "--backoff", "0.1"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start the relay");
        Relay(child)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill(); // SIGKILL: no goodbye
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_imports_an_apps_redis_stream_exactly_once_across_its_restarts() {
    let app_redis = RedisServer::start();
    let herald = Server::start(&[]);
    let xadd = |i: usize| {
        let data = format!("{{\"n\":{i}}}");
        let added = app_redis.cli(&["XADD", "orders", "*", "v", &data]);
        assert!(added.contains('-'), "XADD answered {added:?}");
    };
    let datas = |history: Vec<(u64, String)>| -> Vec<String> {
        history.into_iter().map(|(_, d)| d).collect()
    };
    let expected = |n: usize| -> Vec<String> { (0..n).map(|i| format!("{{\"n\":{i}}}")).collect() };

    for i in 0..5 {
        xadd(i);
    }
    let relay = Relay::start(&app_redis, "orders", &herald);
    eventually(
        "the first five imported",
        Duration::from_secs(20),
        || async { history(&herald, "orders").await.len() == 5 },
    )
    .await;
    // Live: an entry added now reaches a subscriber.
    let mut live = subscribe(&herald, "stream=orders", None).await;
    xadd(5);
    let got = take(&mut live, 1).await;
    assert_eq!(got[0].data, "{\"n\":5}");

    drop(relay); // kill -9
    for i in 6..12 {
        xadd(i);
    }
    app_redis.cli(&["XADD", "orders", "*", "other", "no v field here"]);
    xadd(12);
    let _again = Relay::start(&app_redis, "orders", &herald);
    eventually("every entry imported", Duration::from_secs(20), || async {
        history(&herald, "orders").await.len() >= 13
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        datas(history(&herald, "orders").await),
        expected(13),
        "each entry once, in order; the one without the field skipped"
    );
}

#[test]
fn a_misconfigured_redis_is_one_clear_line_at_start_up() {
    let locked = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let cluster = RedisServer::start_with(&["--cluster-enabled", "yes"]);
    let nowhere = format!("redis://127.0.0.1:{}", free_port());
    let wrong = format!("redis://:wrong@127.0.0.1:{}", locked.port);
    for (url, expected) in [
        (locked.url(), "refused herald's credentials"),
        (wrong, "refused herald's credentials"),
        (cluster.url(), "is a Redis Cluster"),
        (nowhere, "cannot be reached"),
        ("not a url".to_owned(), "is not a Redis URL"),
    ] {
        let (code, stderr) = serve_refusing(&["--redis", &url]);
        let first = stderr.lines().next().unwrap_or_default();
        assert_eq!(code, Some(1), "{url}: {stderr}");
        assert!(first.contains(expected), "{url}: {first:?}");
        assert!(
            !first.contains("s3cret") && !first.contains("wrong"),
            "no password shown: {first}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_is_caught_up_from_the_nodes_memory_not_from_redis() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    let data = "x".repeat(2000);
    let mut published = Vec::new();
    for _ in 0..20 {
        published.push(publish(&a, "storm", &data).await);
    }
    let resume_from = published[9];
    let sent = || -> u64 {
        let stats = redis.cli(&["INFO", "stats"]);
        stats
            .lines()
            .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("Redis counts the bytes it sends")
    };
    let before = sent();
    let mut subscribers = Vec::new();
    for _ in 0..50 {
        subscribers.push(subscribe(&b, "stream=storm", Some(resume_from)).await);
    }
    for subscriber in &mut subscribers {
        assert_eq!(ids(&take(subscriber, 10).await), published[10..]);
    }
    // Reading the events from Redis would be 50 x 10 x 2 KB = 1 MB; the counters and heads
    // the reconnects still ask for are a few hundred bytes each.
    let from_redis = sent() - before;
    assert!(
        from_redis < 150_000,
        "50 resuming subscribers pulled {from_redis} bytes from Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_relay_prints_nothing_per_event() {
    let app_redis = RedisServer::start();
    let herald = Server::start(&[]);
    for i in 0..3 {
        app_redis.cli(&["XADD", "quiet", "*", "v", &i.to_string()]);
    }
    let mut relay = common::herald_command()
        .args([
            "relay",
            &app_redis.url(),
            "--key",
            "quiet",
            "--to",
            "quiet",
            "--quiet",
        ])
        .args(["--url", &herald.url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the relay");
    eventually("imported", Duration::from_secs(20), || async {
        history(&herald, "quiet").await.len() == 3
    })
    .await;
    let _ = relay.kill();
    let out = relay.wait_with_output().expect("the relay's output");
    assert!(
        out.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
}
