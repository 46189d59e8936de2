//! What an event is: its id, its stream, its type and data.
//!
//! Names and types are validated once, when they enter herald, so everything downstream can trust
//! them. How an event looks on the wire is the HTTP layer's business (`http::wire`); an event only
//! keeps room for each encoding, made at most once and then shared as `Bytes` by every subscriber
//! that receives the same `Arc<Event>`: fan-out never re-encodes or copies data.

use std::fmt;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

/// A position in the broker-wide sequence. Ids rise strictly across all streams and are never
/// reused; `EventId(0)` is "before the first event".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventId(pub u64);

impl EventId {
    pub const ZERO: EventId = EventId(0);

    /// Parses the decimal form used on the wire (`Last-Event-ID`, `last_id`, `after`).
    pub fn parse(text: &str) -> Option<EventId> {
        let text = text.trim();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok().map(EventId)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a name or type was refused; the message is shown to the client as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidName(pub String);

/// A validated stream name: 1–128 characters from `A-Z a-z 0-9 _ - . :`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName(Arc<str>);

impl StreamName {
    pub const MAX_LEN: usize = 128;

    pub fn new(name: &str) -> Result<StreamName, InvalidName> {
        if name.is_empty() || name.len() > Self::MAX_LEN {
            return Err(InvalidName(format!(
                "stream name must be 1 to {} characters long, got {}",
                Self::MAX_LEN,
                name.len()
            )));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
        {
            return Err(InvalidName(format!(
                "stream name {:?} contains {:?}; allowed are A-Z a-z 0-9 _ - . :",
                name, bad
            )));
        }
        Ok(StreamName(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A name compares, hashes and orders exactly as its text, so maps keyed by names can be
/// searched by text (`range` from a prefix).
impl std::borrow::Borrow<str> for StreamName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A validated event type (the SSE `event:` field): 1–64 printable characters, no control
/// characters, not starting with `:` or white space, so it can never end its line early or be
/// read as a comment.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EventType(Arc<str>);

impl EventType {
    pub const MAX_LEN: usize = 64;

    pub fn new(kind: &str) -> Result<EventType, InvalidName> {
        let chars = kind.chars().count();
        if chars == 0 || chars > Self::MAX_LEN {
            return Err(InvalidName(format!(
                "event type must be 1 to {} characters long, got {}",
                Self::MAX_LEN,
                chars
            )));
        }
        if kind.chars().any(char::is_control) {
            return Err(InvalidName(
                "event type must not contain control characters (CR, LF, tab, ...)".into(),
            ));
        }
        if kind.starts_with(':') || kind.starts_with(char::is_whitespace) {
            return Err(InvalidName(
                "event type must not start with ':' or white space".into(),
            ));
        }
        Ok(EventType(Arc::from(kind)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// An event as a publisher hands it in: where it goes and what it says. The broker gives it an
/// id and a time.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub stream: StreamName,
    pub kind: Option<EventType>,
    pub data: String,
}

/// A stored event. Shared as `Arc<Event>` between the log reader, the fan-out and every
/// subscriber; its wire encodings are computed once, on first use.
pub struct Event {
    pub id: EventId,
    pub stream: StreamName,
    pub kind: Option<EventType>,
    pub data: String,
    /// The broker's publish time, in Unix milliseconds.
    pub time: u64,
    encoded: [OnceLock<Bytes>; 2],
}

/// The encodings an event keeps room for (see [`Event::encoded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// The event as served to a subscriber.
    Plain = 0,
    /// The event wrapped with its stream and time (`?envelope=1`).
    Envelope = 1,
}

impl Event {
    pub fn new(
        id: EventId,
        stream: StreamName,
        kind: Option<EventType>,
        data: String,
        time: u64,
    ) -> Event {
        Event {
            id,
            stream,
            kind,
            data,
            time,
            encoded: [OnceLock::new(), OnceLock::new()],
        }
    }

    /// An owned copy, for the reads that hand out events by value (without the encodings made so
    /// far: the copy makes its own).
    pub fn copy(&self) -> Event {
        Event::new(
            self.id,
            self.stream.clone(),
            self.kind.clone(),
            self.data.clone(),
            self.time,
        )
    }

    /// This event's bytes in `form`: made by `encode` the first time they are asked for, then
    /// shared (a clone of `Bytes` is a reference count).
    pub fn encoded(&self, form: Form, encode: impl FnOnce(&Event) -> Bytes) -> Bytes {
        self.encoded[form as usize]
            .get_or_init(|| encode(self))
            .clone()
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("id", &self.id)
            .field("stream", &self.stream)
            .field("kind", &self.kind)
            .field("data", &self.data)
            .field("time", &self.time)
            .finish()
    }
}

/// The current time in Unix milliseconds.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_types_are_validated() {
        assert!(StreamName::new("realtime-qa:common").is_ok());
        assert!(StreamName::new("").is_err());
        assert!(StreamName::new("a b").is_err());
        assert!(StreamName::new("a/b").is_err());
        assert!(StreamName::new(&"x".repeat(129)).is_err());
        assert!(EventType::new("new-notification").is_ok());
        assert!(EventType::new("a\nb").is_err());
        assert!(EventType::new(":comment").is_err());
        assert!(EventType::new(" lead").is_err());
        assert!(EventType::new(&"é".repeat(64)).is_ok());
        assert!(EventType::new(&"é".repeat(65)).is_err());
    }

    #[test]
    fn ids_parse_only_as_decimal_u64() {
        assert_eq!(EventId::parse("42"), Some(EventId(42)));
        assert_eq!(EventId::parse("0"), Some(EventId(0)));
        assert_eq!(EventId::parse("-1"), None);
        assert_eq!(EventId::parse("1e3"), None);
        assert_eq!(EventId::parse("18446744073709551616"), None);
        assert_eq!(EventId::parse(""), None);
    }

    proptest::proptest! {
        /// Every string either is a valid name or is refused; none panics, and a valid name
        /// holds only the allowed characters.
        #[test]
        fn fuzz_names_types_and_ids_are_validated_without_panics(text in ".{0,200}") {
            if let Ok(name) = StreamName::new(&text) {
                proptest::prop_assert!(name.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b)));
            }
            if let Ok(kind) = EventType::new(&text) {
                proptest::prop_assert!(!kind.as_str().contains(['\n', '\r']));
            }
            if let Some(id) = EventId::parse(&text) {
                // Only digits parse, around white space (leading zeros are fine: "007" is 7).
                let text = text.trim();
                proptest::prop_assert!(text.bytes().all(|b| b.is_ascii_digit()));
                let significant = text.trim_start_matches('0');
                let expected = if significant.is_empty() { "0" } else { significant };
                proptest::prop_assert_eq!(id.0.to_string(), expected);
            }
        }

        #[test]
        fn fuzz_every_id_round_trips_and_signs_are_refused(n in proptest::prelude::any::<u64>()) {
            proptest::prop_assert_eq!(EventId::parse(&n.to_string()), Some(EventId(n)));
            proptest::prop_assert_eq!(EventId::parse(&format!("+{n}")), None);
            proptest::prop_assert_eq!(EventId::parse(&format!("-{n}")), None);
            proptest::prop_assert_eq!(EventId::parse(&format!("{n}.0")), None);
        }
    }
}
