//! Presence against the real server: who is online, join and leave frames, the grace period,
//! and how soon a gone client is noticed (FIN at once, RST at once; the half-open case, which
//! needs a network namespace, is in `half_open.rs`).

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn clients(presence: &Value) -> Vec<(String, u64)> {
    presence["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .map(|c| {
            (
                c["client"].as_str().unwrap().to_string(),
                c["connections"].as_u64().unwrap(),
            )
        })
        .collect()
}

async fn online(server: &Server, stream: &str) -> u64 {
    presence(server, stream).await["count"].as_u64().unwrap()
}

/// The `data` of each `event: {kind}` frame, parsed; asserts such frames carry no id.
fn changes(text: &str, kind: &str) -> Vec<Value> {
    frames(text)
        .into_iter()
        .filter(|f| f.starts_with(&format!("event: {kind}\n")))
        .map(|f| {
            assert!(!f.contains("id:"), "presence frames carry no id: {f:?}");
            let data = f.lines().nth(1).unwrap().strip_prefix("data: ").unwrap();
            serde_json::from_str(data).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn several_connections_of_a_client_are_one_member() {
    let server = Server::start(&["--presence-grace", "0"]);
    let alice1 = RawSse::open(&server, "stream=room&client=alice", None).await;
    let alice2 = RawSse::open(&server, "stream=room&stream=lobby&client=alice", None).await;
    let bob = RawSse::open(&server, "stream=room&client=bob", None).await;
    let _anonymous = RawSse::open(&server, "stream=room", None).await;

    let room = presence(&server, "room").await;
    assert_eq!(room["stream"], "room");
    assert_eq!(room["count"], 2);
    assert_eq!(
        clients(&room),
        [("alice".to_string(), 2), ("bob".to_string(), 1)]
    );
    assert!(room["clients"][0]["since"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(online(&server, "lobby").await, 1);
    assert_eq!(online(&server, "nobody-here").await, 0);

    let (_, listing) = get_json(&server, "/streams").await;
    let row = |name: &str| {
        listing
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} listed"))
    };
    assert_eq!(row("room")["online"], 2);
    assert_eq!(row("room")["subscribers"], 4);
    assert_eq!(row("lobby")["online"], 1);
    let (_, one) = get_json(&server, "/streams/room").await;
    assert_eq!(one["online"], 2);

    drop(alice1);
    eventually(
        "alice has one connection left",
        Duration::from_secs(5),
        || async { clients(&presence(&server, "room").await)[0].1 == 1 },
    )
    .await;
    assert_eq!(online(&server, "room").await, 2);
    drop(alice2);
    drop(bob);
    eventually("everyone left", Duration::from_secs(5), || async {
        online(&server, "room").await == 0 && online(&server, "lobby").await == 0
    })
    .await;
}

#[tokio::test]
async fn watchers_get_join_and_leave_frames_with_the_count() {
    let server = Server::start(&["--presence-grace", "0"]);
    let watcher = RawSse::open(&server, "stream=room&presence=1&client=watcher", None).await;
    watcher.wait_for("\"client\":\"watcher\"").await;
    let alice = RawSse::open(&server, "stream=room&client=alice", None).await;
    watcher.wait_for("\"client\":\"alice\"").await;
    let alice_again = RawSse::open(&server, "stream=room&client=alice", None).await;
    let id = publish(&server, "room", "an event between").await;
    watcher.wait_for(&format!("id: {id}")).await;
    drop(alice);
    drop(alice_again);
    let text = watcher.wait_for("event: leave").await;

    let joins = changes(&text, "join");
    assert_eq!(
        joins,
        [
            serde_json::json!({"stream": "room", "client": "watcher", "count": 1}),
            serde_json::json!({"stream": "room", "client": "alice", "count": 2}),
        ],
        "one join per client however many connections: {text:?}"
    );
    assert_eq!(
        changes(&text, "leave"),
        [serde_json::json!({"stream": "room", "client": "alice", "count": 1})]
    );
    // Presence frames are not events: not in history, and no id that would move Last-Event-ID.
    let (_, page) = get_json(&server, "/streams/room/events").await;
    assert_eq!(page_ids(&page), [id]);
    // A subscriber without presence=1 sees none of them.
    let plain = RawSse::open(&server, "stream=room", None).await;
    let bob = RawSse::open(&server, "stream=room&client=bob", None).await;
    watcher.wait_for("\"client\":\"bob\"").await;
    drop(bob);
    watcher.wait_for("\"client\":\"bob\",\"count\":1").await;
    let last = publish(&server, "room", "after bob").await;
    let text = plain.wait_for(&format!("id: {last}")).await;
    assert!(
        !text.contains("join") && !text.contains("leave"),
        "{text:?}"
    );
}

/// A whole room arriving at once, each client a member and a watcher: every watcher is told of
/// its own join and of every later one (and of any that came in while it was being set up), once
/// each, in order, each with the count after it.
/// (Each join is encoded once for all watchers, and a busy watcher writes its backlog in one
/// go; `benches/load.rs presence` measures that.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_arriving_at_once_is_told_every_join_in_order() {
    const N: u64 = 300;
    let server = Server::start(&["--presence-grace", "0"]);
    let queries: Vec<String> = (0..N)
        .map(|i| format!("stream=hall&client=c{i}&presence=1"))
        .collect();
    let watchers =
        futures::future::join_all(queries.iter().map(|q| RawSse::open(&server, q, None))).await;
    let mut own_counts = Vec::new();
    for (i, watcher) in watchers.iter().enumerate() {
        let text = watcher.wait_for(&format!("\"count\":{N}}}")).await;
        let joins = changes(&text, "join");
        let own = joins
            .iter()
            .find(|j| j["client"] == format!("c{i}"))
            .unwrap_or_else(|| panic!("c{i} is told of its own join"));
        own_counts.push(own["count"].as_u64().unwrap());
        let first = joins[0]["count"].as_u64().unwrap();
        let counts: Vec<u64> = joins.iter().map(|j| j["count"].as_u64().unwrap()).collect();
        assert_eq!(
            counts,
            (first..=N).collect::<Vec<_>>(),
            "c{i}: every later join, in order"
        );
        let mut who: Vec<&str> = joins
            .iter()
            .map(|j| j["client"].as_str().unwrap())
            .collect();
        who.sort_unstable();
        who.dedup();
        assert_eq!(who.len(), joins.len(), "c{i}: each client once");
    }
    own_counts.sort_unstable();
    assert_eq!(
        own_counts,
        (1..=N).collect::<Vec<_>>(),
        "one join per client"
    );
    assert_eq!(online(&server, "hall").await, N);
}

#[tokio::test]
async fn a_reload_within_the_grace_period_is_neither_leave_nor_join() {
    let server = Server::start(&["--presence-grace", "1.5"]);
    let watcher = RawSse::open(&server, "stream=room&presence=1", None).await;
    let page = RawSse::open(&server, "stream=room&client=alice", None).await;
    watcher.wait_for("event: join").await;

    // Reload: the old connection goes, a new one comes half a second later.
    drop(page);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(online(&server, "room").await, 1, "still online in grace");
    assert_eq!(clients(&presence(&server, "room").await)[0].1, 0);
    let reloaded = RawSse::open(&server, "stream=room&client=alice", None).await;
    tokio::time::sleep(Duration::from_millis(2500)).await; // past the first grace period
    assert_eq!(online(&server, "room").await, 1);
    let text = watcher.text();
    assert_eq!(changes(&text, "join").len(), 1, "{text:?}");
    assert!(changes(&text, "leave").is_empty(), "{text:?}");

    // Gone for good: the leave comes once the grace period is over, not before.
    drop(reloaded);
    let gone = std::time::Instant::now();
    watcher.wait_for("event: leave").await;
    let waited = gone.elapsed();
    assert!(
        waited >= Duration::from_millis(1400),
        "left after {waited:?}, before the grace period ended"
    );
    assert_eq!(online(&server, "room").await, 0);
}

#[tokio::test]
async fn a_closed_connection_is_noticed_at_once_not_at_the_next_heartbeat() {
    // A 60 s heartbeat: if herald only noticed on write, these would take a minute.
    let server = Server::start(&["--presence-grace", "0", "--heartbeat", "60"]);

    // FIN, as when a tab is closed.
    let tab = raw_subscriber(&server, "stream=room&client=closed-tab");
    assert_eq!(online(&server, "room").await, 1);
    let closed = std::time::Instant::now();
    drop(tab);
    eventually("FIN noticed", Duration::from_secs(2), || async {
        online(&server, "room").await == 0
    })
    .await;
    eprintln!("FIN noticed after {:?}", closed.elapsed());

    // FIN on the write side only: the client still could read, but HTTP/1.1 has nothing more
    // to say on this connection; herald treats it as the end, as browsers never do this.
    let half = raw_subscriber(&server, "stream=room&client=half-closed");
    assert_eq!(online(&server, "room").await, 1);
    half.shutdown(std::net::Shutdown::Write).unwrap();
    eventually("write-side FIN noticed", Duration::from_secs(2), || async {
        online(&server, "room").await == 0
    })
    .await;

    // RST, as when a process is killed with unread data or a proxy aborts.
    let crashed = raw_subscriber(&server, "stream=room&client=crashed");
    assert_eq!(online(&server, "room").await, 1);
    socket2::SockRef::from(&crashed)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(crashed); // linger 0: close sends RST
    eventually("RST noticed", Duration::from_secs(2), || async {
        online(&server, "room").await == 0
    })
    .await;
}

#[tokio::test]
async fn bad_client_ids_and_flags_are_refused() {
    let server = Server::start(&[]);
    for query in [
        "stream=room&client=",
        "stream=room&client=a%0Ab",
        "stream=room&presence=maybe",
    ] {
        let response = client()
            .get(server.at(&format!("/sse?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().len() > 10, "{body}");
    }
    let long = "x".repeat(129);
    let response = client()
        .get(server.at(&format!("/sse?stream=room&client={long}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(online(&server, "room").await, 0);
    let (status, _) = get_json(&server, "/streams/bad%2Fname/presence").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_restart_leaves_no_ghosts() {
    let mut server = Server::start(&[]);
    let _alice = RawSse::open(&server, "stream=room&client=alice", None).await;
    assert_eq!(online(&server, "room").await, 1);
    server.kill9();
    server.restart();
    assert_eq!(online(&server, "room").await, 0);
    let (_, info) = get_json(&server, "/streams/room").await;
    assert_eq!(info["online"], 0);
}
