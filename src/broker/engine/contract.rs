//! The engine contract, as one suite that every engine must pass: [`exercise`].
//!
//! A new engine is done when this passes against it; herald's own engines run it in their tests
//! (`engine::local`), and an engine written outside herald can run it the same way. It panics
//! with a message on the first broken promise, like any test.
//!
//! What it holds an engine to: ids rise strictly across streams in commit order and are never
//! reused; a request is all or nothing; a sealed stream takes nothing more, and a seal racing
//! appends falls at one exact point of the order; a delete empties a stream whose name then
//! lives again with new ids; retention trims oldest first and says how far; reads by stream
//! (after an id, the last n, by id) and the paged listing agree with what was appended; a request
//! repeated with its idempotency key stores nothing and gets the first answer; the tail
//! gives every committed record in order from any position it still holds; and, for an engine
//! that keeps its log, all of it survives a restart.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::{
    Appended, Change, Committed, Engine, EngineError, IdempotencyKey, ListQuery, Position, Receipt,
    Record, StreamSettings,
};
use crate::broker::event::{Event, EventId, NewEvent, StreamName};

/// How long the suite waits for a record to reach a tail, or retention to trim, at most.
const PATIENCE: Duration = Duration::from_secs(10);

/// What the suite must know of the engine under test.
pub struct Subject<F> {
    /// Opens the engine; called again after [`Engine::close`] to reopen the same log.
    pub open: F,
    /// The log survives a close and a reopening (false for an engine in memory).
    pub keeps_its_log: bool,
    /// Retention is checked at least this often.
    pub trim_every: Duration,
}

/// Runs the whole contract against a fresh, empty engine, reopening it for the restart checks.
/// The engine must apply no retention of its own to streams without settings.
pub async fn exercise<F, Fut>(subject: Subject<F>)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Engine>>,
{
    let engine = (subject.open)().await;
    let start = engine.head().await.expect("head");
    ids_rise_strictly_and_reads_agree(engine.as_ref()).await;
    batches_are_all_or_nothing(engine.as_ref()).await;
    a_repeated_key_stores_nothing_and_answers_as_the_first_time(engine.as_ref()).await;
    seals_fall_at_one_point_of_the_order(engine.as_ref()).await;
    deletes_empty_a_stream_whose_name_lives_again(engine.as_ref()).await;
    retention_trims_oldest_first_and_says_how_far(engine.as_ref(), subject.trim_every).await;
    listing_is_paged_by_name(engine.as_ref()).await;
    the_tail_gives_every_record_in_order_from_any_position(engine.as_ref(), start).await;
    if subject.keeps_its_log {
        everything_survives_a_restart(engine, &subject.open).await;
    } else {
        engine.close().await;
    }
}

fn name(s: &str) -> StreamName {
    StreamName::new(s).expect("a valid stream name")
}

fn new(stream: &str, data: &str) -> NewEvent {
    NewEvent {
        stream: name(stream),
        kind: None,
        data: data.to_owned(),
    }
}

fn ids<E: std::borrow::Borrow<Event>>(events: &[E]) -> Vec<u64> {
    events.iter().map(|e| e.borrow().id.0).collect()
}

async fn append(engine: &dyn Engine, events: Vec<NewEvent>) -> Vec<Arc<Event>> {
    stored(engine.append(events, None).await.expect("append"))
}

fn stored(appended: Appended) -> Vec<Arc<Event>> {
    match appended {
        Appended::Stored(events) => events,
        Appended::Repeated(r) => panic!("a new request was answered as a repeat: {r:?}"),
    }
}

fn key(k: &str) -> Option<IdempotencyKey> {
    Some(IdempotencyKey::new(k).expect("a valid key"))
}

/// Every stream, on one page.
async fn list_all(engine: &dyn Engine) -> Vec<(StreamName, super::StreamState)> {
    let everything = ListQuery {
        prefix: String::new(),
        after: None,
        limit: 10_000,
    };
    engine.list(everything).await.expect("list")
}

async fn read_all(engine: &dyn Engine, stream: &str) -> Vec<Event> {
    engine
        .read(&name(stream), EventId::ZERO, EventId(u64::MAX), usize::MAX)
        .await
        .expect("read")
}

/// The records of the tail from `from` up to and including the first that `last` accepts.
async fn tail_until(
    engine: &dyn Engine,
    from: Position,
    last: impl Fn(&Committed) -> bool,
) -> Vec<Committed> {
    let mut tail = engine.tail(from);
    let mut seen = Vec::new();
    let collect = async {
        while let Some(batch) = tail.next().await {
            for record in batch.expect("the tail") {
                let done = last(&record);
                seen.push(record);
                if done {
                    return;
                }
            }
        }
        panic!("the tail ended early");
    };
    tokio::time::timeout(PATIENCE, collect)
        .await
        .unwrap_or_else(|_| panic!("the tail stopped after {seen:?}", seen = seen.len()));
    seen
}

fn event_of(record: &Committed) -> Option<&Arc<Event>> {
    match &record.record {
        Record::Event(event) => Some(event),
        _ => None,
    }
}

async fn ids_rise_strictly_and_reads_agree(engine: &dyn Engine) {
    let head = engine.head().await.expect("head");
    let first = append(
        engine,
        vec![new("o:a", "1"), new("o:b", "2"), new("o:a", "3")],
    )
    .await;
    assert!(first[0].id > head.id, "ids start above the head");
    let got = ids(&first);
    assert_eq!(
        got,
        [got[0], got[0] + 1, got[0] + 2],
        "one request's ids are consecutive"
    );
    let second = append(engine, vec![new("o:a", "4")]).await;
    assert!(second[0].id > first[2].id, "ids rise across requests");
    assert!(
        engine.head().await.expect("head").id >= second[0].id,
        "the head is at or past every committed event"
    );

    let a = name("o:a");
    let all = read_all(engine, "o:a").await;
    assert_eq!(ids(&all), [got[0], got[2], second[0].id.0]);
    assert_eq!(
        all.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
        ["1", "3", "4"]
    );
    let after_first = engine
        .read(&a, first[0].id, EventId(u64::MAX), 10)
        .await
        .expect("read");
    assert_eq!(ids(&after_first), [got[2], second[0].id.0]);
    let bounded = engine
        .read(&a, EventId::ZERO, first[2].id, 10)
        .await
        .expect("read");
    assert_eq!(ids(&bounded), [got[0], got[2]], "reads stop at `upto`");
    let limited = engine
        .read(&a, EventId::ZERO, EventId(u64::MAX), 1)
        .await
        .expect("read");
    assert_eq!(ids(&limited), [got[0]], "reads stop at `limit`");
    let last2 = engine
        .read_last(&a, EventId(u64::MAX), 2)
        .await
        .expect("read_last");
    assert_eq!(
        ids(&last2),
        [got[2], second[0].id.0],
        "the last n, ascending"
    );
    let last_upto = engine
        .read_last(&a, first[2].id, 1)
        .await
        .expect("read_last");
    assert_eq!(ids(&last_upto), [got[2]]);
    let b = engine.get(&name("o:b"), first[1].id).await.expect("get");
    assert_eq!(b.map(|e| e.data), Some("2".to_owned()));
    assert!(
        engine.get(&a, first[1].id).await.expect("get").is_none(),
        "an id of another stream is not this stream's"
    );
    let state = engine.stream(&a).await.expect("stream");
    let stats = state.stats.expect("counters of a stream published to");
    assert_eq!(
        (stats.length, stats.first_id, stats.last_id),
        (3, first[0].id, second[0].id)
    );
    assert_eq!(state.settings, StreamSettings::default());
    let never = engine.stream(&name("o:never")).await.expect("stream");
    assert!(
        never.stats.is_none(),
        "a stream never published to has no counters"
    );
}

async fn batches_are_all_or_nothing(engine: &dyn Engine) {
    let closed = name("b:closed");
    append(engine, vec![new("b:closed", "last")]).await;
    engine.change(&closed, Change::Seal).await.expect("seal");
    let open_before = engine.stream(&name("b:open")).await.expect("stream");
    let refused = engine
        .append(
            vec![new("b:open", "x"), new("b:closed", "y"), new("b:open", "z")],
            None,
        )
        .await;
    assert!(
        matches!(&refused, Err(EngineError::Sealed(s)) if *s == closed),
        "a batch touching a sealed stream is refused with its name: {refused:?}"
    );
    assert_eq!(
        engine.stream(&name("b:open")).await.expect("stream"),
        open_before,
        "nothing of a refused batch is stored"
    );
    assert_eq!(read_all(engine, "b:closed").await.len(), 1);
    let batch = append(engine, vec![new("b:open", "x"), new("b:other", "y")]).await;
    assert_eq!(batch.len(), 2, "a batch of open streams is stored whole");
}

async fn a_repeated_key_stores_nothing_and_answers_as_the_first_time(engine: &dyn Engine) {
    let first = stored(
        engine
            .append(vec![new("k:a", "1"), new("k:b", "2")], key("batch-1"))
            .await
            .expect("append"),
    );
    let receipts: Vec<Receipt> = first
        .iter()
        .map(|e| Receipt {
            id: e.id,
            stream: e.stream.clone(),
        })
        .collect();
    let before = engine.head().await.expect("head");
    // The same key again — a retry, even with other events — stores nothing.
    for events in [
        vec![new("k:a", "1"), new("k:b", "2")],
        vec![new("k:c", "something else")],
    ] {
        match engine.append(events, key("batch-1")).await.expect("append") {
            Appended::Repeated(again) => assert_eq!(again, receipts, "the first answer"),
            Appended::Stored(e) => panic!("a repeat was stored again: {e:?}"),
        }
    }
    assert_eq!(
        engine.head().await.expect("head"),
        before,
        "nothing committed"
    );
    assert_eq!(read_all(engine, "k:a").await.len(), 1);
    assert!(engine
        .stream(&name("k:c"))
        .await
        .expect("stream")
        .stats
        .is_none());
    // Another key, and no key, are new requests.
    let other = stored(
        engine
            .append(vec![new("k:a", "3")], key("batch-2"))
            .await
            .expect("append"),
    );
    assert!(other[0].id > first[1].id);
    // Repeats racing their first request: exactly one is stored, every answer names it.
    let racing = (0..8).map(|_| engine.append(vec![new("k:race", "x")], key("racing")));
    let answers = futures::future::join_all(racing).await;
    let mut stored_once = 0;
    let mut named = Vec::new();
    for answer in answers {
        let answer = answer.expect("append");
        if matches!(answer, Appended::Stored(_)) {
            stored_once += 1;
        }
        named.push(answer.receipts());
    }
    assert_eq!(stored_once, 1, "one of the racing requests stores");
    assert!(named.windows(2).all(|w| w[0] == w[1]), "{named:?}");
    assert_eq!(read_all(engine, "k:race").await.len(), 1);
}

async fn seals_fall_at_one_point_of_the_order(engine: &dyn Engine) {
    let race = name("s:race");
    let from = engine.head().await.expect("head");
    let appends = (0..40).map(|i| engine.append(vec![new("s:race", &i.to_string())], None));
    let seal = engine.change(&race, Change::Seal);
    let (answers, sealed) = futures::future::join(futures::future::join_all(appends), seal).await;
    let settings = sealed.expect("seal");
    assert!(settings.sealed);
    let mut stored = Vec::new();
    for answer in answers {
        match answer {
            Ok(appended) => stored.extend(ids(&self::stored(appended))),
            Err(EngineError::Sealed(s)) => assert_eq!(s, race),
            Err(e) => panic!("an append racing a seal failed otherwise: {e}"),
        }
    }
    stored.sort_unstable();
    assert_eq!(
        ids(&read_all(engine, "s:race").await),
        stored,
        "exactly the acknowledged appends are stored"
    );
    let records = tail_until(
        engine,
        from,
        |r| matches!(&r.record, Record::Sealed(s) if *s == race),
    )
    .await;
    let told: Vec<u64> = records
        .iter()
        .filter_map(event_of)
        .filter(|e| e.stream == race)
        .map(|e| e.id.0)
        .collect();
    assert_eq!(told, stored, "every stored event is told before the seal");
    let late = engine.append(vec![new("s:race", "late")], None).await;
    assert!(matches!(late, Err(EngineError::Sealed(_))));
    // Sealing again changes nothing and is no error.
    assert!(
        engine
            .change(&race, Change::Seal)
            .await
            .expect("seal")
            .sealed
    );
}

async fn deletes_empty_a_stream_whose_name_lives_again(engine: &dyn Engine) {
    let gone = name("d:gone");
    let old = append(engine, vec![new("d:gone", "1"), new("d:gone", "2")]).await;
    engine
        .change(
            &gone,
            Change::Retention {
                max_len: Some(50),
                max_age_ms: None,
            },
        )
        .await
        .expect("settings");
    engine.change(&gone, Change::Seal).await.expect("seal");
    let from = engine.head().await.expect("head");
    let after = engine.change(&gone, Change::Delete).await.expect("delete");
    assert_eq!(
        after,
        StreamSettings::default(),
        "settings go with the stream"
    );
    let state = engine.stream(&gone).await.expect("stream");
    assert!(state.stats.is_none() && state.settings == StreamSettings::default());
    assert!(read_all(engine, "d:gone").await.is_empty());
    assert!(engine
        .read_last(&gone, EventId(u64::MAX), 5)
        .await
        .expect("read_last")
        .is_empty());
    assert!(engine.get(&gone, old[0].id).await.expect("get").is_none());
    let records = tail_until(engine, from, |r| matches!(r.record, Record::Deleted(_))).await;
    assert!(matches!(&records[0].record, Record::Deleted(s) if *s == gone));
    let reborn = append(engine, vec![new("d:gone", "again")]).await;
    assert!(reborn[0].id > old[1].id, "a reborn stream gets new ids");
    assert_eq!(ids(&read_all(engine, "d:gone").await), ids(&reborn));
    let stats = engine
        .stream(&gone)
        .await
        .expect("stream")
        .stats
        .expect("counters");
    assert_eq!((stats.length, stats.trimmed_through), (1, EventId::ZERO));
}

async fn retention_trims_oldest_first_and_says_how_far(engine: &dyn Engine, trim_every: Duration) {
    let kept = name("r:kept");
    let events = append(
        engine,
        (0..10).map(|i| new("r:kept", &i.to_string())).collect(),
    )
    .await;
    let from = engine.head().await.expect("head");
    let own = engine
        .change(
            &kept,
            Change::Retention {
                max_len: Some(4),
                max_age_ms: None,
            },
        )
        .await
        .expect("settings");
    assert_eq!((own.max_len, own.max_age_ms), (Some(4), None));
    let records = tail_until(
        engine,
        from,
        |r| matches!(&r.record, Record::Trimmed { stream, .. } if *stream == kept),
    )
    .await;
    assert!(
        records
            .iter()
            .any(|r| matches!(&r.record, Record::Settings(s, own) if *s == kept && own.max_len == Some(4))),
        "the settings change is on the tail before the trim"
    );
    let Some(Record::Trimmed { through, .. }) = records.last().map(|r| &r.record) else {
        unreachable!("tail_until stops at a trim");
    };
    assert_eq!(*through, events[5].id, "the six oldest are trimmed");
    let stats = engine
        .stream(&kept)
        .await
        .expect("stream")
        .stats
        .expect("counters");
    assert_eq!(
        (stats.length, stats.first_id, stats.trimmed_through),
        (4, events[6].id, events[5].id)
    );
    assert_eq!(ids(&read_all(engine, "r:kept").await), ids(&events[6..]));
    // Unlimited again: nothing more goes, even after a few trim intervals.
    engine
        .change(
            &kept,
            Change::Retention {
                max_len: Some(0),
                max_age_ms: None,
            },
        )
        .await
        .expect("settings");
    append(engine, vec![new("r:kept", "10"), new("r:kept", "11")]).await;
    tokio::time::sleep(trim_every * 3).await;
    assert_eq!(read_all(engine, "r:kept").await.len(), 6);
}

async fn listing_is_paged_by_name(engine: &dyn Engine) {
    for n in ["l:c", "l:a", "l:b", "m:x"] {
        append(engine, vec![new(n, "x")]).await;
    }
    engine
        .change(
            &name("l:d"),
            Change::Retention {
                max_len: Some(9),
                max_age_ms: None,
            },
        )
        .await
        .expect("settings");
    let page = |after: Option<&str>, limit| ListQuery {
        prefix: "l:".into(),
        after: after.map(name),
        limit,
    };
    let names = |listed: Vec<(StreamName, super::StreamState)>| {
        listed
            .into_iter()
            .map(|(n, _)| n.to_string())
            .collect::<Vec<_>>()
    };
    let first = engine.list(page(None, 2)).await.expect("list");
    assert_eq!(names(first), ["l:a", "l:b"]);
    let rest = engine.list(page(Some("l:b"), 10)).await.expect("list");
    let rest_states: Vec<_> = rest.iter().map(|(_, s)| *s).collect();
    assert_eq!(
        names(rest),
        ["l:c", "l:d"],
        "a stream with only settings is listed"
    );
    assert!(rest_states[1].stats.is_none() && rest_states[1].settings.max_len == Some(9));
    let everything = list_all(engine).await;
    let all = names(everything);
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "listed by name");
    assert!(all.contains(&"m:x".to_owned()) && all.contains(&"o:a".to_owned()));
}

async fn the_tail_gives_every_record_in_order_from_any_position(
    engine: &dyn Engine,
    start: Position,
) {
    let from = engine.head().await.expect("head");
    append(engine, vec![new("t:a", "1"), new("t:b", "2")]).await;
    engine
        .change(&name("t:a"), Change::Seal)
        .await
        .expect("seal");
    let last = append(engine, vec![new("t:b", "3")]).await;
    let last_position = Position::of_event(last[0].id);
    let whole = tail_until(engine, from, |r| r.position == last_position).await;
    assert!(
        whole.windows(2).all(|w| w[0].position < w[1].position),
        "positions rise strictly"
    );
    for record in &whole {
        if let Some(event) = event_of(record) {
            assert_eq!(record.position, Position::of_event(event.id));
        }
        assert!(
            !matches!(record.record, Record::Skipped),
            "recent records are held"
        );
    }
    let kinds: Vec<String> = whole
        .iter()
        .map(|r| match &r.record {
            Record::Event(e) => format!("{}:{}", e.stream, e.data),
            Record::Sealed(s) => format!("sealed {s}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["t:a:1", "t:b:2", "sealed t:a", "t:b:3"]);
    // From every position within: exactly the records after it.
    for (i, record) in whole.iter().enumerate().take(whole.len() - 1) {
        let rest = tail_until(engine, record.position, |r| r.position == last_position).await;
        let positions: Vec<Position> = rest.iter().map(|r| r.position).collect();
        let expected: Vec<Position> = whole[i + 1..].iter().map(|r| r.position).collect();
        assert_eq!(positions, expected, "the tail from {}", record.position);
    }
    // From the very start: each record there is, or a skip to where they are held, then the
    // rest in order, ending with the same records.
    let from_start = tail_until(engine, start, |r| r.position == last_position).await;
    assert!(from_start.windows(2).all(|w| w[0].position < w[1].position));
    if let Some(skip) = from_start
        .first()
        .filter(|r| matches!(r.record, Record::Skipped))
    {
        assert!(skip.position > start);
    }
    let tail_end: Vec<Position> = from_start[from_start.len() - whole.len()..]
        .iter()
        .map(|r| r.position)
        .collect();
    assert_eq!(
        tail_end,
        whole.iter().map(|r| r.position).collect::<Vec<_>>()
    );
}

async fn everything_survives_a_restart<F, Fut>(engine: Arc<dyn Engine>, open: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Engine>>,
{
    let before = append(
        engine.as_ref(),
        vec![new("z:kept", "a"), new("z:kept", "b")],
    )
    .await;
    let sealed = engine
        .stream(&name("s:race"))
        .await
        .expect("stream")
        .settings;
    let retained = engine.stream(&name("r:kept")).await.expect("stream");
    let listed = list_all(engine.as_ref()).await;
    engine.close().await;
    let closed = engine.append(vec![new("z:kept", "c")], None).await;
    assert!(
        matches!(closed, Err(EngineError::ShuttingDown)),
        "a closed engine takes nothing: {closed:?}"
    );
    drop(engine);

    let engine = open().await;
    let head = engine.head().await.expect("head");
    assert!(head.id >= before[1].id, "the head is past every event kept");
    assert_eq!(
        ids(&read_all(engine.as_ref(), "z:kept").await),
        ids(&before)
    );
    assert_eq!(
        engine
            .stream(&name("s:race"))
            .await
            .expect("stream")
            .settings,
        sealed,
        "a seal is kept"
    );
    assert_eq!(
        engine.stream(&name("r:kept")).await.expect("stream"),
        retained,
        "counters and retention settings are kept"
    );
    let relisted = list_all(engine.as_ref()).await;
    assert_eq!(relisted, listed);
    let next = append(engine.as_ref(), vec![new("z:kept", "c")]).await;
    assert!(
        next[0].id > before[1].id,
        "ids are never reused after a restart"
    );
    match engine
        .append(vec![new("k:a", "1"), new("k:b", "2")], key("batch-1"))
        .await
        .expect("append")
    {
        Appended::Repeated(receipts) => assert_eq!(receipts.len(), 2),
        Appended::Stored(e) => panic!("a key answered before the restart was stored again: {e:?}"),
    }
    engine.close().await;
}
