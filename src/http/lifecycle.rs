//! A stream's life besides its events: `DELETE /streams/{stream}`, `POST /streams/{stream}/close`
//! and `GET|PUT /streams/{stream}/retention`. Each is one call into the broker, whose engine
//! places it at an exact point of the publish order.

use serde::{Deserialize, Serialize};
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::Filter;

use super::api::Api;
use super::auth;
use super::error::{respond, ApiError};
use super::request::{read_body, readable_stream, with_api, writable_stream};
use crate::broker::RetentionInfo;

/// A retention body is a few numbers.
const MAX_SETTINGS_BODY: usize = 4096;

pub fn routes(api: Api) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let delete = warp::path!("streams" / String)
        .and(warp::delete())
        .and(auth::publisher(api.clone()))
        .and(with_api(api.clone()))
        .then(|stream: String, grant, api: Api| async move {
            respond(
                async {
                    let stream = writable_stream(&api, &stream, grant)?;
                    api.broker.delete(&stream).await?;
                    Ok(StatusCode::NO_CONTENT.into_response())
                }
                .await,
            )
        });
    let close = warp::path!("streams" / String / "close")
        .and(warp::post())
        .and(auth::publisher(api.clone()))
        .and(with_api(api.clone()))
        .then(|stream: String, grant, api: Api| async move {
            respond(
                async {
                    let stream = writable_stream(&api, &stream, grant)?;
                    api.broker.seal(&stream).await?;
                    let info = api.broker.stream_info(&stream).await?;
                    Ok(warp::reply::json(&super::wire::StreamJson::from(&info)).into_response())
                }
                .await,
            )
        });
    let get_retention = warp::path!("streams" / String / "retention")
        .and(warp::get())
        .and(auth::reader(api.clone()))
        .and(auth::app_request())
        .and(with_api(api.clone()))
        .then(
            |stream: String, grant, ask: auth::AppRequest, api: Api| async move {
                respond(
                    async {
                        let stream = readable_stream(&api, &stream, grant, &ask).await?;
                        let retention = api.broker.retention(&stream).await?;
                        Ok(warp::reply::json(&RetentionBody::from(retention)).into_response())
                    }
                    .await,
                )
            },
        );
    let put_retention = warp::path!("streams" / String / "retention")
        .and(warp::put())
        .and(auth::publisher(api.clone()))
        .and(warp::body::stream())
        .and(with_api(api))
        .then(|stream: String, grant, body, api: Api| async move {
            respond(
                async {
                    let stream = writable_stream(&api, &stream, grant)?;
                    let body = read_body(body, MAX_SETTINGS_BODY, api.options.idle_timeout).await?;
                    let wanted = parse_retention(&body)?;
                    let info = api
                        .broker
                        .set_retention(&stream, wanted.max_len, wanted.max_age_ms)
                        .await?;
                    Ok(warp::reply::json(&RetentionBody::from(info)).into_response())
                }
                .await,
            )
        });
    delete
        .or(close)
        .unify()
        .or(get_retention)
        .unify()
        .or(put_retention)
        .unify()
}

/// `PUT /streams/{stream}/retention`: each limit absent or `null` follows the server's, `0`
/// means unlimited.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionRequest {
    #[serde(default)]
    max_len: Option<u64>,
    /// Seconds; decimals allowed.
    #[serde(default)]
    max_age: Option<f64>,
}

#[derive(Debug, PartialEq, Eq)]
struct Wanted {
    max_len: Option<u64>,
    max_age_ms: Option<u64>,
}

fn parse_retention(body: &[u8]) -> Result<Wanted, ApiError> {
    let request: RetentionRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "expected {{\"max_len\": N or null, \"max_age\": SECONDS or null}}: {e}"
        ))
    })?;
    let max_age_ms = match request.max_age {
        None => None,
        Some(secs) if secs.is_finite() && (0.0..1e12).contains(&secs) => {
            Some((secs * 1000.0).round() as u64)
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "max_age must be a number of seconds, 0 or more (0 means unlimited)",
            ))
        }
    };
    Ok(Wanted {
        max_len: request.max_len,
        max_age_ms,
    })
}

/// What the retention endpoints answer: the stream's own limits and the ones in force.
#[derive(Debug, Serialize)]
struct RetentionBody {
    stream: String,
    /// The stream's own limits: `null` follows the server's, `0` is unlimited.
    max_len: Option<u64>,
    max_age: Option<f64>,
    /// What applies now (`null`: no limit of that kind).
    effective: Limits,
}

#[derive(Debug, Serialize)]
struct Limits {
    max_len: Option<u64>,
    max_age: Option<f64>,
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

impl From<RetentionInfo> for RetentionBody {
    fn from(info: RetentionInfo) -> Self {
        RetentionBody {
            stream: info.stream.to_string(),
            max_len: info.own.max_len,
            max_age: info.own.max_age_ms.map(secs),
            effective: Limits {
                max_len: info.effective.max_len,
                max_age: info.effective.max_age_ms.map(secs),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_bodies_are_checked() {
        assert_eq!(
            parse_retention(br#"{"max_len": 10, "max_age": 1.5}"#).unwrap(),
            Wanted {
                max_len: Some(10),
                max_age_ms: Some(1500)
            }
        );
        assert_eq!(
            parse_retention(br#"{"max_age": null}"#).unwrap(),
            Wanted {
                max_len: None,
                max_age_ms: None
            }
        );
        assert!(parse_retention(br#"{"max_len": -1}"#).is_err());
        assert!(parse_retention(br#"{"max_age": -3}"#).is_err());
        assert!(parse_retention(br#"{"maxlen": 3}"#).is_err());
        assert!(parse_retention(b"max_len=3").is_err());
    }
}
