//! What an event is, and its bytes on the wire.
//!
//! Names and types are validated once, when they enter herald, so everything downstream can trust
//! them. An event's SSE frame is encoded at most once, lazily, and then shared as `Bytes` by every
//! subscriber that receives the same `Arc<Event>`: fan-out never re-encodes or copies data.

use std::fmt::{self, Write as _};
use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};
use serde::ser::{Serialize, SerializeStruct, Serializer};

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

impl Serialize for StreamName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
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
    frame: OnceLock<Bytes>,
    envelope_frame: OnceLock<Bytes>,
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
            frame: OnceLock::new(),
            envelope_frame: OnceLock::new(),
        }
    }

    /// The SSE frame: `id:`, `event:` if typed, one `data:` line per line of data, blank line.
    pub fn sse_frame(&self) -> Bytes {
        self.frame
            .get_or_init(|| encode_frame(self.id, self.kind.as_ref(), &self.data))
            .clone()
    }

    /// The SSE frame whose data is this event as a JSON object (`?envelope=1`).
    pub fn sse_envelope_frame(&self) -> Bytes {
        self.envelope_frame
            .get_or_init(|| {
                // Serializing a struct of strings and integers cannot fail.
                let json = serde_json::to_string(self).unwrap_or_default();
                encode_frame(self.id, self.kind.as_ref(), &json)
            })
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

/// The JSON form used by the history API and by envelopes: ids as decimal strings (JavaScript
/// numbers lose precision past 2^53), `event` null when untyped.
impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Event", 5)?;
        st.serialize_field("id", &self.id.0.to_string())?;
        st.serialize_field("stream", &self.stream)?;
        st.serialize_field("event", &self.kind.as_ref().map(EventType::as_str))?;
        st.serialize_field("data", &self.data)?;
        st.serialize_field("time", &self.time)?;
        st.end()
    }
}

/// Encodes one SSE frame. Data is split on CRLF, LF and CR, exactly the line ends an SSE parser
/// recognises, so no byte of data can end a field or a frame early: a publisher cannot forge a
/// frame, an id or a field.
pub fn encode_frame(id: EventId, kind: Option<&EventType>, data: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(data.len() + 32 + kind.map_or(0, |k| k.0.len() + 8));
    // Writing into BytesMut cannot fail; formatting the id in place saves an allocation.
    let _ = writeln!(buf, "id: {}", id.0);
    if let Some(kind) = kind {
        buf.put_slice(b"event: ");
        buf.put_slice(kind.0.as_bytes());
        buf.put_u8(b'\n');
    }
    for line in data_lines(data) {
        buf.put_slice(b"data: ");
        buf.put_slice(line.as_bytes());
        buf.put_u8(b'\n');
    }
    buf.put_u8(b'\n');
    buf.freeze()
}

/// Splits text into lines on CRLF, LF or CR. Unlike `str::lines`, a lone CR ends a line and a
/// trailing line end yields a final empty line, so joining the result with LF gives back the text
/// with its line ends normalised: what `EventSource` reassembles.
pub fn data_lines(data: &str) -> impl Iterator<Item = &str> {
    let bytes = data.as_bytes();
    let mut start = 0;
    let mut i = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        while i < bytes.len() {
            match bytes[i] {
                b'\n' => {
                    let line = &data[start..i];
                    i += 1;
                    start = i;
                    return Some(line);
                }
                b'\r' => {
                    let line = &data[start..i];
                    i += 1;
                    if bytes.get(i) == Some(&b'\n') {
                        i += 1;
                    }
                    start = i;
                    return Some(line);
                }
                _ => i += 1,
            }
        }
        done = true;
        Some(&data[start..])
    })
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

    fn lines(s: &str) -> Vec<&str> {
        data_lines(s).collect()
    }

    #[test]
    fn splits_on_every_line_ending_an_sse_parser_knows() {
        assert_eq!(lines("a"), ["a"]);
        assert_eq!(lines(""), [""]);
        assert_eq!(lines("a\nb"), ["a", "b"]);
        assert_eq!(lines("a\r\nb"), ["a", "b"]);
        assert_eq!(lines("a\rb"), ["a", "b"]);
        assert_eq!(lines("a\n"), ["a", ""]);
        assert_eq!(lines("\r\n\r\n"), ["", "", ""]);
        assert_eq!(lines("a\r\rb"), ["a", "", "b"]);
    }

    #[test]
    fn a_frame_cannot_be_forged_from_data() {
        let frame = encode_frame(EventId(7), None, "x\n\nid: 9\ndata: y");
        assert_eq!(
            &frame[..],
            b"id: 7\ndata: x\ndata: \ndata: id: 9\ndata: data: y\n\n"
        );
    }

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

    /// Data as publishers send it: any text, with every kind of line end mixed in.
    fn any_data() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        proptest::collection::vec(
            prop_oneof![
                any::<String>(),
                Just("\n".to_owned()),
                Just("\r".to_owned()),
                Just("\r\n".to_owned()),
                Just("data: ".to_owned()),
                Just("id: 1".to_owned()),
                Just(":".to_owned()),
                Just(" ".to_owned()),
            ],
            0..12,
        )
        .prop_map(|parts| parts.concat())
    }

    /// Parses SSE bytes, delivered in two chunks split at `split`, with a real SSE parser.
    fn parse(frame: &[u8], split: usize) -> Vec<eventsource_stream::Event> {
        use eventsource_stream::Eventsource;
        use futures::StreamExt;
        let split = split.min(frame.len());
        let chunks = vec![
            Ok::<_, std::convert::Infallible>(Bytes::copy_from_slice(&frame[..split])),
            Ok(Bytes::copy_from_slice(&frame[split..])),
        ];
        futures::executor::block_on(
            futures::stream::iter(chunks)
                .eventsource()
                .map(|e| e.expect("the frame parses"))
                .collect(),
        )
    }

    proptest::proptest! {
        /// Any data, any valid type, any id: exactly one event comes out, with the data
        /// published (line ends normalised to LF), the id and the type. Nothing forges more.
        #[test]
        fn fuzz_sse_frames_round_trip_through_a_real_parser(
            data in any_data(),
            kind in proptest::option::of("[^\\p{Cc}:\\s][^\\p{Cc}]{0,20}"),
            id in proptest::prelude::any::<u64>(),
            split in 0usize..4096,
        ) {
            let kind = kind.map(|k| EventType::new(&k).expect("the strategy makes valid types"));
            let frame = encode_frame(EventId(id), kind.as_ref(), &data);
            let events = parse(&frame, split);
            proptest::prop_assert_eq!(events.len(), 1);
            let normalised = data.replace("\r\n", "\n").replace('\r', "\n");
            proptest::prop_assert_eq!(&events[0].data, &normalised);
            proptest::prop_assert_eq!(&events[0].id, &id.to_string());
            let expected_type = kind.as_ref().map_or("message", |k| k.as_str());
            proptest::prop_assert_eq!(events[0].event.as_str(), expected_type);
        }

        /// With `envelope=1` the data is JSON that gives back the event exactly, raw line ends
        /// included.
        #[test]
        fn fuzz_envelopes_carry_the_exact_event(data in any_data(), id in 0u64..u64::MAX) {
            let stream = StreamName::new("s:1").expect("valid");
            let event = Event::new(EventId(id), stream, None, data.clone(), 1);
            let events = parse(&event.sse_envelope_frame(), usize::MAX);
            proptest::prop_assert_eq!(events.len(), 1);
            let json: serde_json::Value = serde_json::from_str(&events[0].data).expect("JSON");
            proptest::prop_assert_eq!(json["data"].as_str(), Some(data.as_str()));
            let id = id.to_string();
            proptest::prop_assert_eq!(json["id"].as_str(), Some(id.as_str()));
        }

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
