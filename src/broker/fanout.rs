//! Live delivery: tokio broadcast channels, created on first subscribe, dropped with the last.
//!
//! A channel belongs to a *topic*: the exact set of streams a subscription reads. The node's
//! tailer sends each event, in id order, to every topic that contains its stream. So a subscriber
//! of several streams reads one channel whose order is the global id order — the property that
//! lets one `Last-Event-ID` position it in all of them. Merging one receiver per stream could not promise
//! that: two receivers can be polled in either order. Subscribers of the same set share a channel,
//! and each event is sent once per topic, never per subscriber.

use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use tokio::sync::broadcast;

use super::event::{Event, StreamName};

/// The sorted, deduplicated set of streams one subscription reads.
pub type Topic = Arc<[StreamName]>;

pub fn topic(mut streams: Vec<StreamName>) -> Topic {
    streams.sort();
    streams.dedup();
    streams.into()
}

/// What travels on a live channel: events, and the end of a stream, in the order they happened.
#[derive(Debug, Clone)]
pub enum Live {
    Event(Arc<Event>),
    /// The stream was sealed (`deleted: None`) or deleted (`Some(n)`: its n-th delete since
    /// start-up, so a subscription can tell a delete it already knows of from a new one).
    Closed {
        stream: StreamName,
        deleted: Option<u64>,
    },
    /// Records were skipped on the way here (the engine's tail no longer held them): read the
    /// log from the cursor again.
    Resync,
}

type Sender = broadcast::Sender<Live>;

pub struct Fanout {
    capacity: usize,
    topics: DashMap<Topic, Sender>,
    /// For each stream, the channels of the topics that contain it: what the tailer walks.
    routes: DashMap<StreamName, Vec<(Topic, Sender)>>,
    /// Serialises joins and leaves, so `topics` and `routes` change together.
    membership: Mutex<()>,
}

impl Fanout {
    pub fn new(capacity: usize) -> Fanout {
        Fanout {
            capacity: capacity.max(1),
            topics: DashMap::new(),
            routes: DashMap::new(),
            membership: Mutex::new(()),
        }
    }

    /// Starts receiving every event sent to a stream of `topic` from now on.
    pub fn join(self: &Arc<Self>, topic: Topic) -> Membership {
        let _serial = self.membership.lock().unwrap_or_else(|e| e.into_inner());
        let receiver = match self.topics.get(&topic) {
            Some(sender) => sender.subscribe(),
            None => {
                let (sender, receiver) = broadcast::channel(self.capacity);
                for stream in topic.iter() {
                    self.routes
                        .entry(stream.clone())
                        .or_default()
                        .push((topic.clone(), sender.clone()));
                }
                self.topics.insert(topic.clone(), sender);
                receiver
            }
        };
        Membership {
            fanout: self.clone(),
            topic,
            receiver: Some(receiver),
        }
    }

    fn leave(&self, topic: &Topic) {
        let _serial = self.membership.lock().unwrap_or_else(|e| e.into_inner());
        let unused = self
            .topics
            .get(topic)
            .is_some_and(|sender| sender.receiver_count() == 0);
        if !unused {
            return;
        }
        self.topics.remove(topic);
        for stream in topic.iter() {
            if let Some(mut routes) = self.routes.get_mut(stream) {
                routes.retain(|(t, _)| t != topic);
            }
            self.routes.remove_if(stream, |_, routes| routes.is_empty());
        }
    }

    /// Sends an event to every topic of its stream. Never blocks: a receiver that falls more than
    /// the channel capacity behind is told it lagged and catches up from the log.
    pub fn send(&self, event: &Arc<Event>) {
        self.send_to(&event.stream, || Live::Event(event.clone()));
    }

    /// Tells every topic of `stream` that it was sealed or deleted.
    pub fn send_closed(&self, stream: &StreamName, deleted: Option<u64>) {
        self.send_to(stream, || Live::Closed {
            stream: stream.clone(),
            deleted,
        });
    }

    /// Tells every channel to catch up from the log.
    pub fn send_resync(&self) {
        for topic in self.topics.iter() {
            let _ = topic.value().send(Live::Resync);
        }
    }

    fn send_to(&self, stream: &StreamName, item: impl Fn() -> Live) {
        if let Some(routes) = self.routes.get(stream) {
            for (_, sender) in routes.iter() {
                // An error only means every receiver left since; `leave` will drop the channel.
                let _ = sender.send(item());
            }
        }
    }

    /// Live subscriptions that read `stream`.
    pub fn subscribers(&self, stream: &StreamName) -> usize {
        self.routes.get(stream).map_or(0, |routes| {
            routes.iter().map(|(_, s)| s.receiver_count()).sum()
        })
    }

    /// Streams that have at least one live subscription.
    pub fn streams(&self) -> Vec<StreamName> {
        self.routes.iter().map(|r| r.key().clone()).collect()
    }

    /// Channels alive now (for tests and metrics: one per distinct topic).
    pub fn channels(&self) -> usize {
        self.topics.len()
    }
}

/// A subscription's place in a topic's channel. Dropping it drops the channel once nobody else
/// reads the same topic.
pub struct Membership {
    fanout: Arc<Fanout>,
    topic: Topic,
    receiver: Option<broadcast::Receiver<Live>>,
}

impl Membership {
    pub fn receiver(&mut self) -> &mut broadcast::Receiver<Live> {
        // Only `drop` takes the receiver out.
        self.receiver
            .as_mut()
            .expect("receiver is present until drop")
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        drop(self.receiver.take());
        self.fanout.leave(&self.topic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::event::EventId;

    fn name(s: &str) -> StreamName {
        StreamName::new(s).unwrap()
    }

    fn event(id: u64, stream: &str) -> Arc<Event> {
        Arc::new(Event::new(
            EventId(id),
            name(stream),
            None,
            String::new(),
            0,
        ))
    }

    #[test]
    fn a_multi_stream_topic_sees_events_in_send_order_and_channels_are_dropped() {
        let fanout = Arc::new(Fanout::new(16));
        let mut ab = fanout.join(topic(vec![name("b"), name("a"), name("a")]));
        let mut a = fanout.join(topic(vec![name("a")]));
        let ab2 = fanout.join(topic(vec![name("a"), name("b")]));
        assert_eq!(fanout.channels(), 2);
        assert_eq!(fanout.subscribers(&name("a")), 3);
        for (id, s) in [(1, "b"), (2, "a"), (3, "c"), (4, "b")] {
            fanout.send(&event(id, s));
        }
        let id = |live: Live| match live {
            Live::Event(e) => e.id.0,
            other => panic!("not an event: {other:?}"),
        };
        let got: Vec<u64> = (0..3)
            .map(|_| id(ab.receiver().try_recv().unwrap()))
            .collect();
        assert_eq!(got, [1, 2, 4]);
        assert_eq!(id(a.receiver().try_recv().unwrap()), 2);
        fanout.send_closed(&name("b"), None);
        assert!(matches!(
            ab.receiver().try_recv().unwrap(),
            Live::Closed { deleted: None, .. }
        ));
        assert!(a.receiver().try_recv().is_err());
        drop((ab, ab2, a));
        assert_eq!(fanout.channels(), 0);
        assert!(fanout.streams().is_empty());
    }
}
