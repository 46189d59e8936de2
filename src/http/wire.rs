//! What herald's answers look like on the wire: SSE frames and the JSON shapes of events,
//! streams, gaps and presence. The core hands over plain values; this file alone decides their
//! bytes, so the contract's formats live in one place.
//!
//! An event's frame is encoded once, on first use, and kept with the event (see
//! [`Event::encoded`]): every subscriber that receives the same `Arc<Event>` shares its bytes, so
//! fan-out never re-encodes or copies data.

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};
use serde::ser::{Serialize, SerializeStruct, Serializer};

use crate::broker::event::{Event, EventId, EventType, Form};
use crate::broker::presence::{ChangeKind, ClientId, PresenceChange, PresenceInfo};
use crate::broker::{Closed, Gap, StreamInfo};

/// The event's SSE frame: `id:`, `event:` if typed, one `data:` line per line of data, blank line.
pub fn event_frame(event: &Event) -> Bytes {
    event.encoded(Form::Plain, |e| {
        encode_frame(e.id, e.kind.as_ref(), &e.data)
    })
}

/// The SSE frame whose data is the event as a JSON object (`?envelope=1`).
pub fn envelope_frame(event: &Event) -> Bytes {
    event.encoded(Form::Envelope, |e| {
        // Serializing a struct of strings and integers cannot fail.
        let json = serde_json::to_string(&EventJson(e)).unwrap_or_default();
        encode_frame(e.id, e.kind.as_ref(), &json)
    })
}

/// Encodes one SSE frame. Data is split on CRLF, LF and CR, exactly the line ends an SSE parser
/// recognises, so no byte of data can end a field or a frame early: a publisher cannot forge a
/// frame, an id or a field.
pub fn encode_frame(id: EventId, kind: Option<&EventType>, data: &str) -> Bytes {
    let kind = kind.map(EventType::as_str);
    let mut buf = BytesMut::with_capacity(data.len() + 32 + kind.map_or(0, |k| k.len() + 8));
    // Writing into BytesMut cannot fail; formatting the id in place saves an allocation.
    let _ = writeln!(buf, "id: {}", id.0);
    if let Some(kind) = kind {
        buf.put_slice(b"event: ");
        buf.put_slice(kind.as_bytes());
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

/// `event: join` / `event: leave`, no id: live only, never in history. Encoded once per change
/// and shared by every watcher (see [`PresenceChange::encoded`]).
pub fn presence_frame(change: &PresenceChange) -> Bytes {
    change.encoded(|change| {
        let kind = match change.kind {
            ChangeKind::Join => "join",
            ChangeKind::Leave => "leave",
        };
        let json = serde_json::to_string(&PresenceChangeJson(change)).unwrap_or_default();
        Bytes::from(format!("event: {kind}\ndata: {json}\n\n"))
    })
}

/// `event: close`, data the stream's name (a stream name never holds a newline), no id.
pub fn close_frame(closed: &Closed) -> Bytes {
    Bytes::from(format!("event: close\ndata: {}\n\n", closed.stream))
}

/// `event: gap` has no id, so it does not move the client's `Last-Event-ID`.
pub fn gap_frame(gap: &Gap) -> Bytes {
    let json = serde_json::to_string(&GapJson(gap)).unwrap_or_default();
    Bytes::from(format!("event: gap\ndata: {json}\n\n"))
}

/// On shutdown: a reconnection delay spread over the window, so a restart is not met by every
/// client in the same millisecond.
pub fn come_back_later(window: std::time::Duration) -> Bytes {
    let window = window.as_millis().max(1) as u64;
    let delay = 1000 + fastrand::u64(0..window);
    Bytes::from(format!(": herald is restarting\nretry: {delay}\n\n"))
}

/// Ids on the wire are decimal strings: JavaScript numbers lose precision past 2^53.
fn id(id: EventId) -> String {
    id.0.to_string()
}

fn opt_id(id: Option<EventId>) -> Option<String> {
    id.map(self::id)
}

/// An event as the history API and envelopes show it: `{"id","stream","event","data","time"}`,
/// `event` null when untyped.
pub struct EventJson<'a>(pub &'a Event);

impl Serialize for EventJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        let mut st = s.serialize_struct("Event", 5)?;
        st.serialize_field("id", &id(e.id))?;
        st.serialize_field("stream", e.stream.as_str())?;
        st.serialize_field("event", &e.kind.as_ref().map(EventType::as_str))?;
        st.serialize_field("data", &e.data)?;
        st.serialize_field("time", &e.time)?;
        st.end()
    }
}

/// A stream as `GET /streams` shows it.
#[derive(serde::Serialize)]
pub struct StreamJson<'a> {
    name: &'a str,
    length: u64,
    first_id: Option<String>,
    last_id: Option<String>,
    subscribers: usize,
    /// Events published to it since herald started (for rates).
    published: u64,
    online: usize,
    sealed: bool,
}

impl<'a> From<&'a StreamInfo> for StreamJson<'a> {
    fn from(info: &'a StreamInfo) -> Self {
        StreamJson {
            name: info.name.as_str(),
            length: info.length,
            first_id: opt_id(info.first_id),
            last_id: opt_id(info.last_id),
            subscribers: info.subscribers,
            published: info.published,
            online: info.online,
            sealed: info.sealed,
        }
    }
}

/// Streams as a JSON list.
pub fn streams_json(infos: &[StreamInfo]) -> Vec<StreamJson<'_>> {
    infos.iter().map(StreamJson::from).collect()
}

/// `event: gap`'s data: `{"stream", "requested_after", "oldest_available"}`.
struct GapJson<'a>(&'a Gap);

impl Serialize for GapJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Gap", 3)?;
        st.serialize_field("stream", self.0.stream.as_str())?;
        st.serialize_field("requested_after", &id(self.0.requested_after))?;
        st.serialize_field("oldest_available", &opt_id(self.0.oldest_available))?;
        st.end()
    }
}

/// A join or leave's data: `{"stream", "client", "count"}`.
struct PresenceChangeJson<'a>(&'a PresenceChange);

impl Serialize for PresenceChangeJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("PresenceChange", 3)?;
        st.serialize_field("stream", self.0.stream.as_str())?;
        st.serialize_field("client", self.0.client.as_str())?;
        st.serialize_field("count", &self.0.count)?;
        st.end()
    }
}

/// `GET /streams/{stream}/presence`: `{"stream", "count", "clients": [{"client", "connections",
/// "since"}]}`.
#[derive(serde::Serialize)]
pub struct PresenceJson<'a> {
    stream: &'a str,
    count: usize,
    clients: Vec<MemberJson<'a>>,
}

#[derive(serde::Serialize)]
struct MemberJson<'a> {
    client: &'a str,
    /// Open connections now; 0 while the client is within its grace period.
    connections: usize,
    /// When the client joined (Unix milliseconds).
    since: u64,
}

impl<'a> From<&'a PresenceInfo> for PresenceJson<'a> {
    fn from(info: &'a PresenceInfo) -> Self {
        PresenceJson {
            stream: info.stream.as_str(),
            count: info.count,
            clients: info
                .clients
                .iter()
                .map(|m| MemberJson {
                    client: ClientId::as_str(&m.client),
                    connections: m.connections,
                    since: m.since,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::event::StreamName;

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
            let events = parse(&envelope_frame(&event), usize::MAX);
            proptest::prop_assert_eq!(events.len(), 1);
            let json: serde_json::Value = serde_json::from_str(&events[0].data).expect("JSON");
            proptest::prop_assert_eq!(json["data"].as_str(), Some(data.as_str()));
            let id = id.to_string();
            proptest::prop_assert_eq!(json["id"].as_str(), Some(id.as_str()));
        }
    }
}
