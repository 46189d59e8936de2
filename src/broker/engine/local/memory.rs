//! The log in memory (`--memory`): same contract as the sled log, nothing survives a restart.
//! Useful for tests, demos and deployments where history only needs to outlive a reconnect.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::store::{
    by_name, flatten, keyed_answers, page_of, Answered, Request, Store, StoreError, TrimOutcome,
};
use crate::broker::engine::{IdempotencyKey, ListQuery, Retention, StreamSettings, StreamStats};
use crate::broker::event::{Event, EventId, EventType, NewEvent, StreamName};

#[derive(Default)]
pub struct MemoryStore {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    last: u64,
    /// In name order, so a page of the listing is a range search.
    streams: BTreeMap<StreamName, Stream>,
    settings: BTreeMap<StreamName, StreamSettings>,
    /// Idempotency keys and their answers, and the same keys by time, oldest first.
    answered: HashMap<IdempotencyKey, Answered>,
    answered_by_time: BTreeSet<(u64, IdempotencyKey)>,
}

#[derive(Default)]
struct Stream {
    stats: StreamStats,
    events: BTreeMap<u64, Record>,
}

struct Record {
    time: u64,
    kind: Option<EventType>,
    data: String,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    // Every writer leaves the maps consistent before it can panic, so poisoning is harmless.
    fn read_lock(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_lock(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn to_event(stream: &StreamName, id: u64, record: &Record) -> Event {
    Event::new(
        EventId(id),
        stream.clone(),
        record.kind.clone(),
        record.data.clone(),
        record.time,
    )
}

impl Inner {
    fn append(&mut self, events: Vec<NewEvent>, time: u64) -> Result<Vec<Arc<Event>>, StoreError> {
        self.last
            .checked_add(events.len() as u64)
            .ok_or(StoreError::IdsExhausted)?;
        let mut appended = Vec::with_capacity(events.len());
        for new in events {
            self.last += 1;
            let id = self.last;
            let stream = self.streams.entry(new.stream.clone()).or_default();
            stream.stats.count(EventId(id), time);
            let record = Record {
                time,
                kind: new.kind,
                data: new.data,
            };
            appended.push(Arc::new(to_event(&new.stream, id, &record)));
            stream.events.insert(id, record);
        }
        Ok(appended)
    }
}

impl Store for MemoryStore {
    fn append(&self, events: Vec<NewEvent>, time: u64) -> Result<Vec<Arc<Event>>, StoreError> {
        self.write_lock().append(events, time)
    }

    fn append_group(
        &self,
        requests: Vec<Request>,
        time: u64,
    ) -> Result<Vec<Arc<Event>>, StoreError> {
        let (events, shape) = flatten(requests);
        let mut inner = self.write_lock();
        let appended = inner.append(events, time)?;
        for (key, receipts) in keyed_answers(&shape, &appended) {
            if let Some(old) = inner
                .answered
                .insert(key.clone(), Answered { time, receipts })
            {
                inner.answered_by_time.remove(&(old.time, key.clone()));
            }
            inner.answered_by_time.insert((time, key));
        }
        Ok(appended)
    }

    fn answered(&self, key: &IdempotencyKey) -> Result<Option<Answered>, StoreError> {
        Ok(self.read_lock().answered.get(key).cloned())
    }

    fn forget_keys(&self, before: u64, budget: usize) -> Result<bool, StoreError> {
        let mut inner = self.write_lock();
        for _ in 0..budget {
            match inner.answered_by_time.first() {
                Some((time, _)) if *time < before => {}
                _ => return Ok(false),
            }
            if let Some((_, key)) = inner.answered_by_time.pop_first() {
                inner.answered.remove(&key);
            }
        }
        Ok(inner
            .answered_by_time
            .first()
            .is_some_and(|(time, _)| *time < before))
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Nothing to keep: a memory store has no write-ahead log.
    fn checkpoint(&self, _wal_position: u64) -> Result<(), StoreError> {
        Ok(())
    }

    fn read(
        &self,
        stream: &StreamName,
        after: EventId,
        upto: EventId,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        if after >= upto {
            return Ok(Vec::new());
        }
        let inner = self.read_lock();
        Ok(inner.streams.get(stream).map_or_else(Vec::new, |s| {
            s.events
                .range(after.0 + 1..=upto.0)
                .take(limit)
                .map(|(id, r)| to_event(stream, *id, r))
                .collect()
        }))
    }

    fn read_last(
        &self,
        stream: &StreamName,
        upto: EventId,
        n: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let inner = self.read_lock();
        let mut events: Vec<Event> = inner.streams.get(stream).map_or_else(Vec::new, |s| {
            s.events
                .range(..=upto.0)
                .rev()
                .take(n)
                .map(|(id, r)| to_event(stream, *id, r))
                .collect()
        });
        events.reverse();
        Ok(events)
    }

    fn get(&self, stream: &StreamName, id: EventId) -> Result<Option<Event>, StoreError> {
        let inner = self.read_lock();
        Ok(inner
            .streams
            .get(stream)
            .and_then(|s| s.events.get(&id.0))
            .map(|r| to_event(stream, id.0, r)))
    }

    fn trim(
        &self,
        stream: &StreamName,
        retention: &Retention,
        now: u64,
        budget: usize,
    ) -> Result<TrimOutcome, StoreError> {
        let mut inner = self.write_lock();
        let Some(s) = inner.streams.get_mut(stream) else {
            return Ok(TrimOutcome::default());
        };
        let mut plan = retention.plan(&s.stats, now);
        let mut outcome = TrimOutcome::default();
        while let Some(entry) = s.events.first_entry() {
            let (id, time) = (*entry.key(), entry.get().time);
            if outcome.removed as usize == budget {
                outcome.more = plan.remove(time);
                break;
            }
            if !plan.remove(time) {
                break;
            }
            entry.remove();
            outcome.removed += 1;
            s.stats.trimmed_through = EventId(id);
        }
        s.stats.length -= outcome.removed;
        (s.stats.first_id, s.stats.first_time) = s
            .events
            .first_key_value()
            .map_or((EventId(0), 0), |(id, r)| (EventId(*id), r.time));
        Ok(outcome)
    }

    fn put_settings(
        &self,
        stream: &StreamName,
        settings: StreamSettings,
    ) -> Result<(), StoreError> {
        let mut inner = self.write_lock();
        if settings.is_default() {
            inner.settings.remove(stream);
        } else {
            inner.settings.insert(stream.clone(), settings);
        }
        Ok(())
    }

    fn settings(&self, stream: &StreamName) -> StreamSettings {
        self.read_lock()
            .settings
            .get(stream)
            .copied()
            .unwrap_or_default()
    }

    fn all_settings(&self) -> Vec<(StreamName, StreamSettings)> {
        by_name(&self.read_lock().settings)
    }

    fn delete(&self, stream: &StreamName) -> Result<(), StoreError> {
        let mut inner = self.write_lock();
        inner.settings.remove(stream);
        let old = inner.streams.remove(stream);
        drop(inner);
        drop(old); // freed outside the lock; nothing is left for `purge`
        Ok(())
    }

    fn purge(&self, _budget: usize) -> Result<bool, StoreError> {
        Ok(false)
    }

    fn stats(&self, stream: &StreamName) -> Option<StreamStats> {
        self.read_lock().streams.get(stream).map(|s| s.stats)
    }

    fn all_stats(&self) -> Vec<(StreamName, StreamStats)> {
        self.read_lock()
            .streams
            .iter()
            .map(|(name, s)| (name.clone(), s.stats))
            .collect()
    }

    fn names(&self, query: &ListQuery) -> Vec<StreamName> {
        let inner = self.read_lock();
        page_of(&inner.streams, &inner.settings, query)
    }

    fn last_id(&self) -> EventId {
        EventId(self.read_lock().last)
    }

    fn size_on_disk(&self) -> u64 {
        0
    }

    fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
