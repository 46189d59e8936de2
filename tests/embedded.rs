//! herald as a library, in-process: the broker API a Rust app embeds, without HTTP.

use std::time::Duration;

use herald::broker::event::{EventId, NewEvent, StreamName};
use herald::broker::presence::ClientId;
use herald::broker::{Broker, BrokerError, BrokerOptions, Closed, Delivery, StartAt, Storage};

fn event(stream: &StreamName, data: &str) -> NewEvent {
    NewEvent {
        stream: stream.clone(),
        kind: None,
        data: data.into(),
    }
}

async fn next(sub: &mut herald::broker::Subscription) -> Option<Delivery> {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("a delivery within 5 s")
        .map(|d| d.expect("no broker error"))
}

#[tokio::test]
async fn seal_and_delete_reach_subscribers_in_order() {
    let broker = Broker::open(BrokerOptions::default()).unwrap();
    let (game, chat) = (
        StreamName::new("game").unwrap(),
        StreamName::new("chat").unwrap(),
    );
    let mut both = broker.subscribe(vec![game.clone(), chat.clone()], StartAt::Live);
    let mut only_game = broker.subscribe(vec![game.clone()], StartAt::Live);
    let last = broker.publish(event(&game, "final score")).await.unwrap();
    broker.seal(&game).await.unwrap();
    assert!(matches!(
        broker.publish(event(&game, "too late")).await,
        Err(BrokerError::Sealed(s)) if s == game
    ));

    for sub in [&mut both, &mut only_game] {
        match next(sub).await {
            Some(Delivery::Event(e)) => assert_eq!(e.id, last.id),
            other => panic!("expected the last event, got {other:?}"),
        }
        match next(sub).await {
            Some(Delivery::Closed(Closed { stream, deleted })) => {
                assert_eq!((stream, deleted), (game.clone(), false))
            }
            other => panic!("expected the close, got {other:?}"),
        }
    }
    assert!(
        next(&mut only_game).await.is_none(),
        "all its streams are sealed: it ends"
    );
    assert!(broker
        .subscribe(vec![game.clone()], StartAt::Live)
        .is_finished()
        .await
        .unwrap());
    assert!(!broker
        .subscribe(vec![game.clone()], StartAt::After(Default::default()))
        .is_finished()
        .await
        .unwrap());

    // `both` still reads chat; a delete of chat is told too, and chat lives on.
    broker.delete(&chat).await.unwrap();
    match next(&mut both).await {
        Some(Delivery::Closed(Closed { stream, deleted })) => {
            assert_eq!((stream, deleted), (chat.clone(), true))
        }
        other => panic!("expected the delete, got {other:?}"),
    }
    let reborn = broker.publish(event(&chat, "hello again")).await.unwrap();
    match next(&mut both).await {
        Some(Delivery::Event(e)) => assert_eq!(e.id, reborn.id),
        other => panic!("expected the new event, got {other:?}"),
    }
    broker.close().await;
}

#[tokio::test]
async fn a_subscriber_behind_the_live_channel_still_learns_of_the_seal() {
    let options = BrokerOptions {
        channel_capacity: 4,
        ..BrokerOptions::default()
    };
    let broker = Broker::open(options).unwrap();
    let s = StreamName::new("s").unwrap();
    let mut sub = broker.subscribe(vec![s.clone()], StartAt::Live);
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(broker.publish(event(&s, &i.to_string())).await.unwrap().id);
    }
    broker.seal(&s).await.unwrap(); // the channel overflowed long before: the close was dropped
    let mut got = Vec::new();
    loop {
        match next(&mut sub).await {
            Some(Delivery::Event(e)) => got.push(e.id),
            Some(Delivery::Closed(c)) => {
                assert!(!c.deleted);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, ids, "every event, then the close");
    assert!(next(&mut sub).await.is_none());
    assert!(sub.lag_recoveries() > 0, "it did fall behind");
}

#[tokio::test]
async fn presence_through_the_library() {
    let options = BrokerOptions {
        presence_grace: Duration::ZERO,
        ..BrokerOptions::default()
    };
    let broker = Broker::open(options).unwrap();
    let room = StreamName::new("room").unwrap();
    let presence = broker.presence();
    let mut watch = presence.clone().watch(std::slice::from_ref(&room));
    let alice = presence
        .clone()
        .connect(std::slice::from_ref(&room), ClientId::new("alice").unwrap());
    assert_eq!(presence.online(&room).await.unwrap(), 1);
    assert_eq!(broker.stream_info(&room).await.unwrap().online, 1);
    let join = watch.next().await.unwrap();
    assert_eq!((join.client.as_str(), join.count), ("alice", 1));
    drop(alice);
    let leave = watch.next().await.unwrap();
    assert_eq!((leave.client.as_str(), leave.count), ("alice", 0));
    assert_eq!(presence.members(&room).await.unwrap().count, 0);
}

#[tokio::test]
async fn ready_events_are_taken_in_order_without_waiting_and_never_twice() {
    let broker = Broker::open(BrokerOptions::default()).unwrap();
    let s = StreamName::new("burst").unwrap();
    let mut sub = broker.subscribe(vec![s.clone()], StartAt::Live);
    let events: Vec<NewEvent> = (0..10)
        .map(|i| NewEvent {
            stream: s.clone(),
            kind: None,
            data: i.to_string(),
        })
        .collect();
    broker.publish_batch(events).await.unwrap();
    // The first through next(), the rest as "ready now", then nothing is ready.
    let Some(Delivery::Event(first)) = next(&mut sub).await else {
        panic!("an event first");
    };
    let mut got = vec![first.data.clone()];
    while let Some(event) = sub.try_next_event() {
        got.push(event.data.clone());
    }
    assert_eq!(got, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
    assert!(sub.try_next_event().is_none());
    // A later event still comes through next(), once.
    broker
        .publish(NewEvent {
            stream: s.clone(),
            kind: None,
            data: "later".into(),
        })
        .await
        .unwrap();
    let Some(Delivery::Event(later)) = next(&mut sub).await else {
        panic!("the later event");
    };
    assert_eq!(later.data, "later");
    assert!(sub.try_next_event().is_none());
}

#[tokio::test]
async fn a_publisher_that_gives_up_while_gathering_strands_nobody() {
    let broker = Broker::open(BrokerOptions::default()).unwrap();
    let stream = StreamName::new("gathered").unwrap();
    // The first publisher starts a gathering and yields; the second joins it.
    let mut first = Box::pin(broker.publish(event(&stream, "first")));
    assert!(futures::poll!(&mut first).is_pending());
    let mut second = Box::pin(broker.publish(event(&stream, "second")));
    assert!(futures::poll!(&mut second).is_pending());
    // The first gives up (a client that disconnected): what was gathered still goes out.
    drop(first);
    let second = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the gathered publish is answered")
        .unwrap();
    let stored = broker
        .read_after(&stream, Default::default(), 10)
        .await
        .unwrap();
    let data: Vec<&str> = stored.iter().map(|e| &*e.data).collect();
    assert_eq!(data, ["first", "second"], "both were handed to the writer");
    assert_eq!(stored[1].id, second.id);
}

#[tokio::test]
async fn a_publish_gathered_before_a_seal_is_stored_before_it() {
    let broker = Broker::open(BrokerOptions::default()).unwrap();
    let stream = StreamName::new("order").unwrap();
    let mut publish = Box::pin(broker.publish(event(&stream, "last words")));
    assert!(futures::poll!(&mut publish).is_pending(), "still gathering");
    broker.seal(&stream).await.unwrap();
    let published = tokio::time::timeout(Duration::from_secs(5), publish)
        .await
        .expect("answered");
    assert!(
        published.is_ok(),
        "made before the seal, so not refused: {published:?}"
    );
}

#[tokio::test]
async fn a_data_dir_in_use_is_refused_clearly_and_free_again_once_every_handle_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let options = || BrokerOptions {
        storage: Storage::Disk {
            dir: dir.path().into(),
            cache_bytes: 8 << 20,
        },
        ..BrokerOptions::default()
    };
    let s = StreamName::new("kept").unwrap();
    let broker = Broker::open(options()).unwrap();
    let subscription = broker.subscribe(vec![s.clone()], StartAt::Live);
    let kept = broker.publish(event(&s, "kept")).await.unwrap();
    broker.close().await;

    // A subscription still holds the log, so the directory is still in use.
    let refused = Broker::open(options())
        .err()
        .expect("the directory is in use");
    let message = refused.to_string();
    assert!(message.contains("is in use"), "{message}");
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );

    // Closed, and every handle dropped: the directory is free at once, with what was kept.
    drop((subscription, broker));
    let reopened = Broker::open(options()).unwrap();
    let events = reopened.read_after(&s, EventId::ZERO, 10).await.unwrap();
    assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), [kept.id]);
    reopened.close().await;
}

/// herald's routes mounted under `/herald` in an app's own warp server, beside the app's routes:
/// the layers the `herald` binary gives them still hold there — the client's address (the
/// per-address cap), request ids, CORS for listed origins only, the body limit — and links carry
/// the prefix.
#[tokio::test]
async fn routes_embedded_in_another_warp_server_keep_every_layer() {
    use futures::StreamExt;
    use herald::http::{embed, Api, HttpOptions};
    use warp::Filter;

    let broker = Broker::open(BrokerOptions::default()).unwrap();
    let options = HttpOptions {
        max_connections_per_ip: Some(1),
        cors_origins: vec!["https://app.example".into()],
        max_data_bytes: 64,
        ..HttpOptions::default()
    };
    let (api, shutdown) = Api::new(broker.clone(), options);
    let app = warp::path!("hello")
        .map(|| "the app's own route")
        .or(warp::path("herald").and(embed(api)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        warp::serve(app)
            .incoming(listener)
            .graceful(async {
                let _ = stopped.await;
            })
            .run(),
    );
    let client = reqwest::Client::new();

    let hello = client.get(format!("{base}/hello")).send().await.unwrap();
    assert_eq!(hello.text().await.unwrap(), "the app's own route");

    // A subscriber, then a publish from an allowed origin.
    let sse = client
        .get(format!("{base}/herald/sse?stream=room"))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    assert!(sse.headers().contains_key("x-request-id"));
    let mut frames = sse.bytes_stream();
    let published = client
        .post(format!("{base}/herald/streams/room"))
        .header("origin", "https://app.example")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 201);
    let headers = published.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(headers.contains_key("x-request-id"));
    assert_eq!(
        headers["location"], "/herald/streams/room/events/1",
        "the link carries the prefix"
    );
    let mut seen = String::new();
    while !seen.contains("data: hi") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), frames.next())
            .await
            .expect("the event within 5 s")
            .expect("the stream goes on")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }

    // An unlisted origin learns nothing.
    let other = client
        .get(format!("{base}/herald/streams/room"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    assert!(!other.headers().contains_key("access-control-allow-origin"));
    assert!(!other
        .headers()
        .contains_key("access-control-allow-credentials"));

    // The same address's second subscription is over its cap of one.
    let second = client
        .get(format!("{base}/herald/sse?stream=room"))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 429, "the client's address reached herald");
    assert!(second.headers().contains_key("retry-after"));

    // Bodies over the limit are refused, and nothing is stored.
    let big = client
        .post(format!("{base}/herald/streams/room"))
        .body("x".repeat(65))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    let body: serde_json::Value = big.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("64"));
    let info: serde_json::Value = client
        .get(format!("{base}/herald/streams/room"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["length"], 1);

    drop(frames);
    shutdown.trigger();
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops")
        .unwrap();
}

/// An engine of the app's own, for the tests below: it wraps the local engine, counts what
/// passes, and can hold back the tail (as a node whose tailer has not yet seen what another
/// node committed).
mod wrapped {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use futures::future::BoxFuture;
    use futures::StreamExt;
    use herald::broker::engine::local::{LocalEngine, LocalOptions, IDEMPOTENCY_WINDOW};
    use herald::broker::engine::{
        Appended, Change, Engine, EngineFuture, IdempotencyKey, ListQuery, Position, Retention,
        StreamSettings, StreamState, Tail,
    };
    use herald::broker::event::{Event, EventId, NewEvent, StreamName};
    use herald::broker::{Durability, Storage};
    use tokio::sync::oneshot;

    pub struct Wrapped {
        inner: LocalEngine,
        pub appends: AtomicUsize,
        pub tails: AtomicUsize,
        /// While set, the next tail opened gives nothing until it is sent to.
        gate: Mutex<Option<oneshot::Receiver<()>>>,
    }

    impl Wrapped {
        /// The engine, and — with `held` — the sender that lets its first tail go.
        pub fn open(held: bool) -> (Arc<Wrapped>, Option<oneshot::Sender<()>>) {
            let (open, gate) = oneshot::channel();
            let engine = Wrapped {
                inner: LocalEngine::open(LocalOptions {
                    storage: Storage::Memory,
                    durability: Durability::Fsync,
                    retention: Retention::default(),
                    trim_every: Duration::from_secs(1),
                    idempotency_window: IDEMPOTENCY_WINDOW,
                })
                .unwrap(),
                appends: AtomicUsize::new(0),
                tails: AtomicUsize::new(0),
                gate: Mutex::new(held.then_some(gate)),
            };
            (Arc::new(engine), held.then_some(open))
        }
    }

    impl Engine for Wrapped {
        fn append(
            &self,
            events: Vec<NewEvent>,
            key: Option<IdempotencyKey>,
        ) -> EngineFuture<'_, Appended> {
            self.appends.fetch_add(1, Ordering::SeqCst);
            self.inner.append(events, key)
        }
        fn change(&self, stream: &StreamName, change: Change) -> EngineFuture<'_, StreamSettings> {
            self.inner.change(stream, change)
        }
        fn read(
            &self,
            stream: &StreamName,
            after: EventId,
            upto: EventId,
            limit: usize,
        ) -> EngineFuture<'_, Vec<Event>> {
            self.inner.read(stream, after, upto, limit)
        }
        fn read_last(
            &self,
            stream: &StreamName,
            upto: EventId,
            n: usize,
        ) -> EngineFuture<'_, Vec<Event>> {
            self.inner.read_last(stream, upto, n)
        }
        fn get(&self, stream: &StreamName, id: EventId) -> EngineFuture<'_, Option<Event>> {
            self.inner.get(stream, id)
        }
        fn stream(&self, stream: &StreamName) -> EngineFuture<'_, StreamState> {
            self.inner.stream(stream)
        }
        fn list(&self, query: ListQuery) -> EngineFuture<'_, Vec<(StreamName, StreamState)>> {
            self.inner.list(query)
        }
        fn head(&self) -> EngineFuture<'_, Position> {
            self.inner.head()
        }
        fn tail(&self, from: Position) -> Tail {
            self.tails.fetch_add(1, Ordering::SeqCst);
            let tail = self.inner.tail(from);
            match self.gate.lock().unwrap().take() {
                Some(gate) => futures::stream::once(async move {
                    let _ = gate.await;
                    tail
                })
                .flatten()
                .boxed(),
                None => tail,
            }
        }
        fn retention(&self) -> Retention {
            self.inner.retention()
        }
        fn is_writable(&self) -> bool {
            self.inner.is_writable()
        }
        fn size_on_disk(&self) -> u64 {
            self.inner.size_on_disk()
        }
        fn close(&self) -> BoxFuture<'_, ()> {
            self.inner.close()
        }
    }
}

/// `Broker::on_engine` serves an engine the app passes in like any other; everything a
/// subscriber sees comes from that engine's tail.
#[tokio::test]
async fn a_broker_serves_an_engine_the_app_passes_in() {
    use std::sync::atomic::Ordering;

    let (engine, _) = wrapped::Wrapped::open(false);
    let broker = Broker::on_engine(engine.clone(), herald::broker::NodeOptions::default())
        .await
        .unwrap();
    let room = StreamName::new("room").unwrap();
    let mut sub = broker.subscribe(vec![room.clone()], StartAt::Live);
    let published = broker.publish(event(&room, "hello")).await.unwrap();
    match next(&mut sub).await {
        Some(Delivery::Event(e)) => assert_eq!((e.id, e.data.as_str()), (published.id, "hello")),
        other => panic!("expected the event, got {other:?}"),
    }
    assert_eq!(engine.appends.load(Ordering::SeqCst), 1);
    assert_eq!(
        engine.tails.load(Ordering::SeqCst),
        1,
        "the node's one tailer"
    );
    assert_eq!(
        broker
            .read_after(&room, EventId(0), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    broker.close().await;
}

/// A `Last-Event-ID` this node's tailer has not reached yet — an event another node committed
/// a moment ago — is where the subscriber is: it gets what comes after it, nothing twice.
/// (Only an id above everything ever committed is taken as "now".)
#[tokio::test]
async fn a_resume_point_committed_elsewhere_but_not_yet_seen_here_is_honoured() {
    use herald::broker::engine::Engine;

    let (engine, open) = wrapped::Wrapped::open(true);
    let broker = Broker::on_engine(engine.clone(), herald::broker::NodeOptions::default())
        .await
        .unwrap();
    let room = StreamName::new("room").unwrap();
    // Committed by "another node": straight to the engine; this node's tail is held back.
    let mut ids = Vec::new();
    for data in ["1", "2", "3"] {
        let appended = engine.append(vec![event(&room, data)], None).await.unwrap();
        ids.push(appended.last_id().unwrap());
    }
    assert_eq!(broker.last_visible_id(), EventId(0), "not seen here yet");
    // The client saw event 2 on the other node.
    let mut sub = broker.subscribe(vec![room.clone()], StartAt::After(ids[1]));
    let first = tokio::spawn(async move {
        let delivery = next(&mut sub).await;
        (delivery, sub)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    open.unwrap().send(()).unwrap();
    let (delivery, mut sub) = first.await.unwrap();
    match delivery {
        Some(Delivery::Event(e)) => assert_eq!(e.id, ids[2], "event 3 first, 1 and 2 not again"),
        other => panic!("expected event 3, got {other:?}"),
    }
    broker.publish(event(&room, "4")).await.unwrap();
    match next(&mut sub).await {
        Some(Delivery::Event(e)) => assert_eq!(e.data, "4"),
        other => panic!("expected event 4, got {other:?}"),
    }
    // From the future: "now".
    let mut ahead = broker.subscribe(vec![room.clone()], StartAt::After(EventId(1_000)));
    let live = broker.publish(event(&room, "5")).await.unwrap();
    match next(&mut ahead).await {
        Some(Delivery::Event(e)) => assert_eq!(e.id, live.id),
        other => panic!("expected event 5, got {other:?}"),
    }
    broker.close().await;
}
