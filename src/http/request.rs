//! What handlers share for reading a request: the [`Api`] as a filter, the client's address,
//! the query, stream names from the path (checked against the caller's grant), and bodies read
//! within their limits.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use warp::http::StatusCode;
use warp::Filter;

use super::api::{Api, PeerAddr};
use super::auth;
use super::error::ApiError;
use crate::broker::event::StreamName;

pub(super) fn with_api(api: Api) -> impl Filter<Extract = (Api,), Error = Infallible> + Clone {
    warp::any().map(move || api.clone())
}

/// The client's address, when the request came through herald's own listener.
pub(super) fn peer_addr() -> impl Filter<Extract = (Option<SocketAddr>,), Error = Infallible> + Clone
{
    warp::ext::optional::<PeerAddr>().map(|peer: Option<PeerAddr>| peer.map(|p| p.0))
}

/// The query string, or "" when there is none.
pub(super) fn raw_query() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

/// Decodes query pairs (`+` and `%XX`), keeping repeated keys.
pub(super) fn query_pairs(raw: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// A stream name from a path segment, percent-decoded (`a%3Ab` is `a:b`).
pub(super) fn stream_from_path(segment: &str) -> Result<StreamName, ApiError> {
    let decoded = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| ApiError::bad_request("stream name is not valid UTF-8"))?;
    Ok(StreamName::new(&decoded)?)
}

/// The path's stream, when `grant` may read it — or, for a private stream no token covers,
/// when the app says so (`--auth-url`). Credentials are checked before the name.
pub(super) async fn readable_stream(
    api: &Api,
    segment: &str,
    grant: Result<auth::Grant, ApiError>,
    ask: &auth::AppRequest,
) -> Result<StreamName, ApiError> {
    let grant = grant?;
    let stream = stream_from_path(segment)?;
    api.options
        .access
        .authorize_reads(&grant, std::slice::from_ref(&stream), ask)
        .await
        .map_err(ApiError::from)?;
    Ok(stream)
}

/// The path's stream, when `grant` may publish to (close, delete, configure) it.
pub(super) fn writable_stream(
    api: &Api,
    segment: &str,
    grant: Result<auth::Grant, ApiError>,
) -> Result<StreamName, ApiError> {
    permitted_stream(segment, grant, |grant, stream| {
        api.options
            .access
            .check_publish(grant, stream)
            .map_err(ApiError::from)
    })
}

fn permitted_stream(
    segment: &str,
    grant: Result<auth::Grant, ApiError>,
    check: impl FnOnce(&auth::Grant, &StreamName) -> Result<(), ApiError>,
) -> Result<StreamName, ApiError> {
    let grant = grant?;
    let stream = stream_from_path(segment)?;
    check(&grant, &stream)?;
    Ok(stream)
}

/// Reads a request body, refusing it with 413 as soon as it passes `limit` bytes, so an
/// oversized body is never held in memory whole. Works for chunked bodies too. A body that
/// stalls for `idle` is refused with 408, so a trickling client cannot hold a request open.
pub(super) async fn read_body<S, B>(
    body: S,
    limit: usize,
    idle: Duration,
) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the limit of {limit} bytes"),
        )
    };
    let mut body = std::pin::pin!(body);
    let mut collected = BytesMut::new();
    loop {
        let next = tokio::time::timeout(idle, body.next()).await.map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body stalled for {} s; send it whole",
                    idle.as_secs_f64()
                ),
            )
        })?;
        let Some(chunk) = next else { break };
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("could not read the body: {e}")))?;
        if collected.len() + chunk.remaining() > limit {
            return Err(too_large());
        }
        collected.put(chunk);
    }
    Ok(collected.freeze())
}
