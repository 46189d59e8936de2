//! `POST /streams/{stream}` and `POST /publish`: turn a request into validated events, or refuse
//! it whole. Every check happens before the broker sees anything, so a refused request stores
//! and sends nothing.

use serde_json::{Map, Value};
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::{Reply, Response};
use warp::Filter;

use super::api::Api;
use super::auth::{self, Grant};
use super::error::{respond, ApiError};
use super::request::{peer_addr, query_pairs, raw_query, read_body, stream_from_path, with_api};
use crate::broker::engine::{Appended, IdempotencyKey};
use crate::broker::event::{EventType, NewEvent, StreamName};

/// Slack above the data limit for the JSON around the data of a single publish.
const JSON_OVERHEAD: usize = 64 * 1024;

pub fn routes(
    api: Api,
) -> impl warp::Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let one = warp::path!("streams" / String)
        .and(warp::post())
        .and(within_rate(api.clone()))
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<u64>("content-length"))
        .and(idempotency_key())
        .and(raw_query())
        .and(auth::publisher(api.clone()))
        .and(warp::body::stream())
        .and(with_api(api.clone()))
        .then(
            |stream: String,
             allowed: Result<(), ApiError>,
             ctype,
             length,
             key,
             query: String,
             grant,
             body,
             api: Api| async move {
                if let Err(refused) = allowed {
                    return respond(Err(refused));
                }
                let request = PublishRequest {
                    stream,
                    content_type: ctype,
                    length,
                    key,
                    query,
                    grant,
                };
                let timer = PublishTimer::start(&api);
                respond(timer.stop(publish_one(api, request, body).await))
            },
        );
    let batch = warp::path!("publish")
        .and(warp::post())
        .and(within_rate(api.clone()))
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<u64>("content-length"))
        .and(idempotency_key())
        .and(auth::publisher(api.clone()))
        .and(warp::body::stream())
        .and(with_api(api))
        .then(
            |allowed: Result<(), ApiError>, ctype, length, key, grant, body, api: Api| async move {
                if let Err(refused) = allowed {
                    return respond(Err(refused));
                }
                let timer = PublishTimer::start(&api);
                let request = BatchRequest {
                    content_type: ctype,
                    length,
                    key,
                    grant,
                };
                respond(timer.stop(publish_batch(api, request, body).await))
            },
        );
    one.or(batch).unify()
}

/// Whether this publish request is within the rate limit of its credential (the bearer token
/// it presents) or, without one, its client address. Checked before the body is read.
fn within_rate(
    api: Api,
) -> impl Filter<Extract = (Result<(), ApiError>,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(peer_addr())
        .map(
            move |authorization: Option<String>, peer: Option<std::net::SocketAddr>| {
                let Some(limiter) = &api.publish_limiter else {
                    return Ok(());
                };
                let bearer = authorization
                    .as_deref()
                    .and_then(|h| h.strip_prefix("Bearer "))
                    .map(str::trim);
                limiter.check(bearer, peer.map(|p| p.ip()))
            },
        )
}

/// Times a publish from its arrival to its `201`, for `herald_publish_seconds`.
struct PublishTimer {
    started: std::time::Instant,
    histogram: prometheus_client::metrics::histogram::Histogram,
}

impl PublishTimer {
    fn start(api: &Api) -> PublishTimer {
        PublishTimer {
            started: std::time::Instant::now(),
            histogram: api.metrics.publish_seconds.clone(),
        }
    }

    fn stop(self, result: Result<Response, ApiError>) -> Result<Response, ApiError> {
        if result.is_ok() {
            self.histogram.observe(self.started.elapsed().as_secs_f64());
        }
        result
    }
}

/// What a `Content-Type` header says about the body.
#[derive(Debug, PartialEq, Eq)]
enum BodyKind {
    Json,
    Raw,
}

fn body_kind(content_type: Option<&str>) -> Result<BodyKind, ApiError> {
    let Some(content_type) = content_type else {
        return Ok(BodyKind::Raw);
    };
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    for param in parts {
        if let Some((key, value)) = param.split_once('=') {
            let value = value.trim().trim_matches('"').to_ascii_lowercase();
            if key.trim().eq_ignore_ascii_case("charset") && value != "utf-8" && value != "utf8" {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!("herald stores UTF-8 text; charset={value} is not supported"),
                ));
            }
        }
    }
    if essence == "application/json" || essence.ends_with("+json") {
        Ok(BodyKind::Json)
    } else {
        Ok(BodyKind::Raw)
    }
}

fn check_declared_length(length: Option<u64>, limit: usize) -> Result<(), ApiError> {
    match length {
        Some(n) if n > limit as u64 => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body of {n} bytes is larger than the limit of {limit} bytes"),
        )),
        _ => Ok(()),
    }
}

/// `POST /streams/{stream}` as it arrived, before its body is read.
struct PublishRequest {
    stream: String,
    content_type: Option<String>,
    length: Option<u64>,
    key: Option<HeaderValue>,
    query: String,
    grant: Result<Grant, ApiError>,
}

struct BatchRequest {
    content_type: Option<String>,
    length: Option<u64>,
    key: Option<HeaderValue>,
    grant: Result<Grant, ApiError>,
}

/// The `Idempotency-Key` header's bytes, as sent.
fn idempotency_key(
) -> impl Filter<Extract = (Option<HeaderValue>,), Error = std::convert::Infallible> + Clone {
    warp::header::value("idempotency-key")
        .map(Some)
        .or(warp::any().map(|| None))
        .unify()
}

/// A checked `Idempotency-Key`: 1–200 printable characters (UTF-8).
fn checked_key(key: Option<HeaderValue>) -> Result<Option<IdempotencyKey>, ApiError> {
    key.map(|key| {
        let text = std::str::from_utf8(key.as_bytes())
            .map_err(|_| ApiError::bad_request("Idempotency-Key is not valid UTF-8"))?;
        IdempotencyKey::new(text)
            .map_err(|e| ApiError::bad_request(format!("Idempotency-Key: {e}")))
    })
    .transpose()
}

/// A `201` with `body`; a repeat of a key says so (`Idempotent-Replayed: true`).
fn created(body: serde_json::Value, repeated: bool) -> warp::reply::Response {
    let mut response =
        warp::reply::with_status(warp::reply::json(&body), StatusCode::CREATED).into_response();
    if repeated {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

async fn publish_one<S, B>(api: Api, request: PublishRequest, body: S) -> Result<Response, ApiError>
where
    S: futures::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    let PublishRequest {
        stream,
        content_type,
        length,
        key,
        query,
        grant,
    } = request;
    // Credentials first: an unauthorised body is never read.
    let grant = grant?;
    let key = checked_key(key)?;
    let stream = stream_from_path(&stream)?;
    api.options.access.check_publish(&grant, &stream)?;
    let max_data = api.options.max_data_bytes;
    let kind = body_kind(content_type.as_deref())?;
    let limit = match kind {
        BodyKind::Json => max_data + JSON_OVERHEAD,
        BodyKind::Raw => max_data,
    };
    check_declared_length(length, limit)?;
    let mut query_event = None;
    for (key, value) in query_pairs(&query) {
        if key == "event" {
            query_event = Some(EventType::new(&value)?);
        }
    }
    let body = read_body(body, limit, api.options.idle_timeout).await?;
    let event = match kind {
        BodyKind::Raw => NewEvent {
            stream,
            kind: query_event,
            data: utf8(body.to_vec())?,
        },
        BodyKind::Json => {
            let object = json_object(&body)?;
            event_from_json(&object, Some(stream), max_data, query_event)?
        }
    };
    let appended = api.broker.publish_once(vec![event], key).await?;
    let repeated = matches!(appended, Appended::Repeated(_));
    let receipts = appended.receipts();
    // A repeat of a batch's key on this route answers with the batch's first event.
    let Some(first) = receipts.first() else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the store answered a publish with no event",
        ));
    };
    let location = format!("/streams/{}/events/{}", first.stream, first.id);
    let mut response = created(
        serde_json::json!({ "id": first.id.to_string(), "stream": first.stream.as_str() }),
        repeated,
    );
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

async fn publish_batch<S, B>(api: Api, request: BatchRequest, body: S) -> Result<Response, ApiError>
where
    S: futures::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    let BatchRequest {
        content_type,
        length,
        key,
        grant,
    } = request;
    let grant = grant?;
    let key = checked_key(key)?;
    if body_kind(content_type.as_deref())? != BodyKind::Json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "POST /publish takes a JSON array; send Content-Type: application/json",
        ));
    }
    let limit = api.options.max_batch_bytes;
    check_declared_length(length, limit)?;
    let body = read_body(body, limit, api.options.idle_timeout).await?;
    let items: Vec<Value> = match serde_json::from_slice(&body) {
        Ok(Value::Array(items)) => items,
        Ok(_) => {
            return Err(ApiError::bad_request(
                r#"body must be a JSON array of {"stream", "event"?, "data"} objects"#,
            ))
        }
        Err(e) => {
            return Err(ApiError::bad_request(format!(
                "body is not valid JSON: {e}"
            )))
        }
    };
    if items.is_empty() {
        return Err(ApiError::bad_request(
            "the batch is empty; send at least one event",
        ));
    }
    let mut events = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        // Counted from 1, as people count; the index is for code that looks it up.
        let at = |e: ApiError| {
            let message = format!("event #{} (index {index}): {}", index + 1, e.message);
            ApiError::new(e.status, message)
        };
        let Value::Object(object) = item else {
            return Err(at(ApiError::bad_request(
                r#"must be an object like {"stream": "name", "data": "..."}"#,
            )));
        };
        let event = event_from_json(&object, None, api.options.max_data_bytes, None).map_err(at)?;
        api.options
            .access
            .check_publish(&grant, &event.stream)
            .map_err(|e| at(e.into()))?;
        events.push(event);
    }
    let appended = api.broker.publish_once(events, key).await?;
    let repeated = matches!(appended, Appended::Repeated(_));
    let ids: Vec<String> = appended
        .receipts()
        .iter()
        .map(|r| r.id.to_string())
        .collect();
    Ok(created(serde_json::json!({ "ids": ids }), repeated))
}

fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(ApiError::bad_request(
            r#"body must be a JSON object like {"data": "...", "event": "type"}"#,
        )),
        Err(e) => Err(ApiError::bad_request(format!(
            "body is not valid JSON: {e}"
        ))),
    }
}

/// Builds an event from `{"stream"?, "event"?, "data"}`. `stream` is taken from the object only
/// when the path did not give one (the batch form).
fn event_from_json(
    object: &Map<String, Value>,
    path_stream: Option<StreamName>,
    max_data: usize,
    query_event: Option<EventType>,
) -> Result<NewEvent, ApiError> {
    let allowed: &[&str] = if path_stream.is_some() {
        &["data", "event"]
    } else {
        &["stream", "data", "event"]
    };
    if let Some(unknown) = object.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown field {unknown:?}; allowed fields are {}",
            allowed.join(", ")
        )));
    }
    let stream = match path_stream {
        Some(stream) => stream,
        None => match object.get("stream") {
            Some(Value::String(name)) => StreamName::new(name)?,
            Some(_) => return Err(ApiError::bad_request("\"stream\" must be a string")),
            None => return Err(ApiError::bad_request("missing \"stream\"")),
        },
    };
    let kind = match object.get("event") {
        None | Some(Value::Null) => query_event,
        Some(Value::String(kind)) => Some(EventType::new(kind)?),
        Some(_) => return Err(ApiError::bad_request("\"event\" must be a string")),
    };
    let data = match object.get("data") {
        None => return Err(ApiError::bad_request("missing \"data\"")),
        Some(Value::String(text)) => text.clone(),
        // Compact JSON text: serde_json escapes control characters, so it holds no raw newline.
        Some(other) => other.to_string(),
    };
    if data.len() > max_data {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "data is {} bytes, over the limit of {max_data} bytes",
                data.len()
            ),
        ));
    }
    Ok(NewEvent { stream, kind, data })
}

fn utf8(bytes: Vec<u8>) -> Result<String, ApiError> {
    String::from_utf8(bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "data is not valid UTF-8 (invalid byte at offset {}); herald stores text",
            e.utf8_error().valid_up_to()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_are_read_as_users_send_them() {
        assert_eq!(body_kind(None), Ok(BodyKind::Raw));
        assert_eq!(body_kind(Some("application/json")), Ok(BodyKind::Json));
        assert_eq!(
            body_kind(Some("Application/JSON; charset=UTF-8")),
            Ok(BodyKind::Json)
        );
        assert_eq!(
            body_kind(Some("application/activity+json")),
            Ok(BodyKind::Json)
        );
        assert_eq!(body_kind(Some("text/plain")), Ok(BodyKind::Raw));
        assert_eq!(
            body_kind(Some("application/x-www-form-urlencoded")),
            Ok(BodyKind::Raw)
        );
        let latin1 = body_kind(Some("text/plain; charset=iso-8859-1")).unwrap_err();
        assert_eq!(latin1.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[test]
    fn json_data_that_is_not_a_string_is_stored_as_compact_json() {
        let object = json_object(br#"{"data": {"a": [1, 2], "b": "x\ny"}}"#).unwrap();
        let stream = StreamName::new("s").unwrap();
        let event = event_from_json(&object, Some(stream), 1000, None).unwrap();
        assert_eq!(event.data, r#"{"a":[1,2],"b":"x\ny"}"#);
        assert!(!event.data.contains('\n'));
    }

    /// Bodies as a careless or hostile publisher sends them: random bytes, near-JSON, and JSON
    /// objects with every kind of field.
    fn any_body() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let json_value = prop_oneof![
            any::<String>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<bool>().prop_map(serde_json::Value::from),
            Just(serde_json::Value::Null),
            proptest::collection::vec(any::<String>(), 0..3).prop_map(serde_json::Value::from),
        ];
        let object = proptest::collection::btree_map(
            prop_oneof![
                Just("data".to_owned()),
                Just("event".to_owned()),
                Just("stream".to_owned()),
                "[a-z]{1,6}"
            ],
            json_value,
            0..4,
        )
        .prop_map(|m| serde_json::to_vec(&m).unwrap_or_default());
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            object.clone(),
            object.prop_map(|mut b| {
                b.pop();
                b
            }),
        ]
    }

    proptest::proptest! {
        /// No body panics the parser; what it accepts has exactly the data that was sent.
        #[test]
        fn fuzz_publish_bodies_are_accepted_exactly_or_refused_with_4xx(
            body in any_body(),
            content_type in proptest::option::of(".{0,40}"),
            max_data in 1usize..64,
        ) {
            let _ = body_kind(content_type.as_deref());
            let stream = StreamName::new("s").expect("valid");
            let parsed = json_object(&body)
                .and_then(|object| event_from_json(&object, Some(stream), max_data, None));
            match parsed {
                Ok(event) => {
                    proptest::prop_assert!(event.data.len() <= max_data);
                    let sent: serde_json::Value = serde_json::from_slice(&body).expect("was JSON");
                    match &sent["data"] {
                        serde_json::Value::String(text) => proptest::prop_assert_eq!(&event.data, text),
                        other => proptest::prop_assert_eq!(&event.data, &other.to_string()),
                    }
                }
                Err(e) => proptest::prop_assert!(e.status.is_client_error(), "{:?}", e),
            }
            // The raw form: bytes are data exactly when they are UTF-8.
            match utf8(body.clone()) {
                Ok(text) => proptest::prop_assert_eq!(text.as_bytes(), &body[..]),
                Err(e) => proptest::prop_assert!(std::str::from_utf8(&body).is_err() && e.status == StatusCode::BAD_REQUEST),
            }
        }
    }
}
