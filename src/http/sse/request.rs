//! Reading a `GET /sse` request: which streams, from where, with which options.

use crate::broker::event::{EventId, StreamName};
use crate::broker::presence::ClientId;
use crate::broker::StartAt;
use crate::http::error::ApiError;
use crate::http::request::query_pairs;

/// A parsed `GET /sse` request.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct SseRequest {
    pub streams: Vec<StreamName>,
    pub start: StartAt,
    pub envelope: bool,
    pub client: Option<ClientId>,
    pub presence: bool,
}

fn flag(key: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "1" | "true" | "" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(ApiError::bad_request(format!("{key} must be 1 or 0"))),
    }
}

pub(super) fn parse_request(
    query: &str,
    last_event_id: Option<&str>,
    max_streams: usize,
) -> Result<SseRequest, ApiError> {
    let mut streams = Vec::new();
    let mut last_id = None;
    let mut envelope = false;
    let mut client = None;
    let mut presence = false;
    for (key, value) in query_pairs(query) {
        match key.as_str() {
            "stream" => streams.push(StreamName::new(&value)?),
            "last_id" => {
                last_id = Some(EventId::parse(&value).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "last_id must be a decimal event id, got {value:?}"
                    ))
                })?)
            }
            "envelope" => envelope = flag("envelope", &value)?,
            "presence" => presence = flag("presence", &value)?,
            "client" => client = Some(ClientId::new(&value)?),
            // Other parameters (cache busters, tokens handled elsewhere) are ignored.
            _ => {}
        }
    }
    if streams.is_empty() {
        return Err(ApiError::bad_request(
            "name at least one stream: /sse?stream=NAME (repeat for more)",
        ));
    }
    if streams.len() > max_streams {
        return Err(ApiError::bad_request(format!(
            "{} streams requested; one connection may read at most {max_streams}",
            streams.len()
        )));
    }
    // The header wins: it is what a reconnecting EventSource sends, and it is newer than the
    // last_id the page was first opened with.
    if let Some(header) = last_event_id {
        let id = EventId::parse(header).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Last-Event-ID must be a decimal event id, got {header:?}"
            ))
        })?;
        last_id = Some(id);
    }
    Ok(SseRequest {
        streams,
        start: last_id.map_or(StartAt::Live, StartAt::After),
        envelope,
        client,
        presence,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_id_header_wins_over_the_query() {
        let request = parse_request("stream=a&stream=b&last_id=5", Some("9"), 32).unwrap();
        assert_eq!(request.start, StartAt::After(EventId(9)));
        assert_eq!(request.streams.len(), 2);
        let request = parse_request("stream=a&last_id=5", None, 32).unwrap();
        assert_eq!(request.start, StartAt::After(EventId(5)));
        assert_eq!(
            parse_request("stream=a", None, 32).unwrap().start,
            StartAt::Live
        );
    }

    #[test]
    fn bad_subscriptions_are_refused_with_reasons() {
        assert!(parse_request("", None, 32).is_err());
        assert!(parse_request("stream=a%2Fb", None, 32).is_err());
        assert!(parse_request("stream=a&last_id=x", None, 32).is_err());
        assert!(parse_request("stream=a", Some("-1"), 32).is_err());
        assert!(parse_request("stream=a&stream=b&stream=c", None, 2).is_err());
        assert!(parse_request("stream=a&envelope=yes", None, 32).is_err());
        assert!(
            parse_request("stream=realtime-qa%3Acommon&envelope=1", None, 32)
                .unwrap()
                .envelope
        );
    }

    /// Query strings as anything might send them: known and unknown keys, percent-encoded
    /// values of any text.
    fn any_query() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let key = prop_oneof![
            Just("stream"),
            Just("last_id"),
            Just("envelope"),
            Just("presence"),
            Just("client"),
            Just("token"),
            Just("x"),
        ];
        let value = prop_oneof![
            "[a-z0-9:._-]{0,8}".boxed(),
            any::<String>().boxed(),
            any::<u64>().prop_map(|n| n.to_string()).boxed()
        ];
        proptest::collection::vec((key, value), 0..40).prop_map(|pairs| {
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs)
                .finish()
        })
    }

    proptest::proptest! {
        /// Whatever the query and Last-Event-ID, parsing never panics; an accepted request
        /// names 1 to max valid streams, and a numeric Last-Event-ID is where it starts.
        #[test]
        fn fuzz_subscription_queries_and_last_event_ids(
            query in any_query(),
            raw in ".{0,60}",
            header in proptest::option::of(proptest::prelude::any::<u64>()),
            max in 1usize..8,
        ) {
            let _ = parse_request(&raw, Some(&raw), max);
            let header_text = header.map(|n| n.to_string());
            if let Ok(request) = parse_request(&query, header_text.as_deref(), max) {
                proptest::prop_assert!((1..=max).contains(&request.streams.len()));
                if let Some(n) = header {
                    proptest::prop_assert_eq!(request.start, StartAt::After(EventId(n)));
                }
            }
        }
    }
}
