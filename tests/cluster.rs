//! Several herald nodes over one Redis: the engine contract against a real `redis-server`, and
//! nodes that act as one broker.

mod common;

use std::sync::Arc;
use std::time::Duration;

use herald::broker::engine::contract::{exercise, Subject};
use herald::broker::engine::redis::{RedisEngine, RedisOptions, RedisTarget};
use herald::broker::engine::{Engine, Retention};

use common::redis::RedisServer;
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
