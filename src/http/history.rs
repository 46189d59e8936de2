//! Reading without subscribing: `GET /streams` (paged), `GET /streams/{stream}`,
//! `GET /streams/{stream}/events` and `GET /streams/{stream}/events/{id}`.

use warp::http::{header, HeaderValue};
use warp::reply::{Reply, Response};
use warp::Filter;

use super::api::Api;
use super::auth::{self, AppRequest, Grant};
use super::error::{respond, ApiError};
use super::request::{query_pairs, raw_query, readable_stream, with_api};
use super::wire::{streams_json, EventJson, StreamJson};
use crate::broker::engine::ListQuery;
use crate::broker::event::{EventId, StreamName};

/// Default and largest page of `GET /streams/{stream}/events`.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

pub fn routes(api: Api) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let list = warp::path!("streams")
        .and(warp::get())
        .and(raw_query())
        .and(auth::reader(api.clone()))
        .and(with_api(api.clone()))
        .then(
            |query: String, grant: Result<Grant, ApiError>, api: Api| async move {
                respond(list_streams(&api, grant, &query).await)
            },
        );
    let one = warp::path!("streams" / String)
        .and(warp::get())
        .and(auth::reader(api.clone()))
        .and(auth::app_request())
        .and(with_api(api.clone()))
        .then(
            |stream: String, grant, ask: AppRequest, api: Api| async move {
                respond(
                    async {
                        let stream = readable_stream(&api, &stream, grant, &ask).await?;
                        let info = api.broker.stream_info(&stream).await?;
                        Ok(warp::reply::json(&StreamJson::from(&info)).into_response())
                    }
                    .await,
                )
            },
        );
    let events = warp::path!("streams" / String / "events")
        .and(warp::get())
        .and(raw_query())
        .and(auth::reader(api.clone()))
        .and(auth::app_request())
        .and(with_api(api.clone()))
        .then(
            |stream: String, query: String, grant, ask: AppRequest, api: Api| async move {
                respond(
                    async {
                        let stream = readable_stream(&api, &stream, grant, &ask).await?;
                        read_events(&api, stream, &query).await
                    }
                    .await,
                )
            },
        );
    let event = warp::path!("streams" / String / "events" / String)
        .and(warp::get())
        .and(auth::reader(api.clone()))
        .and(auth::app_request())
        .and(with_api(api))
        .then(
            |stream: String, id: String, grant, ask: AppRequest, api: Api| async move {
                respond(
                    async {
                        let stream = readable_stream(&api, &stream, grant, &ask).await?;
                        read_event(&api, stream, &id).await
                    }
                    .await,
                )
            },
        );
    event.or(events).unify().or(one).unify().or(list).unify()
}

#[derive(serde::Serialize)]
struct EventsPage<'a> {
    events: Vec<EventJson<'a>>,
    next: String,
}

/// `GET /streams?prefix=&after=&limit=`: one page of names, and a `Link: rel="next"` while more
/// remain. A private stream the caller may not read is not listed: its name is private too (the
/// page may then hold fewer than `limit`; the link still goes on from where the page ended).
async fn list_streams(
    api: &Api,
    grant: Result<Grant, ApiError>,
    query: &str,
) -> Result<Response, ApiError> {
    let grant = grant?;
    let mut page = ListQuery {
        prefix: String::new(),
        after: None,
        limit: MAX_LIMIT,
    };
    for (key, value) in query_pairs(query) {
        match key.as_str() {
            "prefix" => page.prefix = value,
            "after" => page.after = Some(StreamName::new(&value)?),
            "limit" => {
                page.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit must be a number from 1 to {MAX_LIMIT}"
                        ))
                    })?
            }
            _ => {}
        }
    }
    let limit = page.limit;
    // One more than asked: whether it comes says whether more remain.
    page.limit += 1;
    let mut streams = api.broker.streams(page.clone()).await?;
    let more = streams.len() > limit;
    streams.truncate(limit);
    let next = streams.last().map(|info| info.name.clone());
    streams.retain(|info| api.options.access.may_read(&grant, &info.name));
    let mut response = warp::reply::json(&streams_json(&streams)).into_response();
    if let (true, Some(last)) = (more, next) {
        let mut link = form_urlencoded::Serializer::new(String::new());
        if !page.prefix.is_empty() {
            link.append_pair("prefix", &page.prefix);
        }
        link.append_pair("after", last.as_str());
        link.append_pair("limit", &limit.to_string());
        let link = format!("</streams?{}>; rel=\"next\"", link.finish());
        if let Ok(value) = HeaderValue::from_str(&link) {
            response.headers_mut().insert(header::LINK, value);
        }
    }
    Ok(response)
}

/// Which page of a stream `GET /streams/{stream}/events` asked for.
#[derive(Debug, PartialEq, Eq)]
enum Page {
    After { after: EventId, limit: usize },
    Last(usize),
}

fn parse_page(query: &str) -> Result<Page, ApiError> {
    let mut after = None;
    let mut limit = None;
    let mut last = None;
    let count = |key: &str, value: &str| {
        value
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!("{key} must be a number from 1 to {MAX_LIMIT}"))
            })
    };
    for (key, value) in query_pairs(query) {
        match key.as_str() {
            "after" => {
                after = Some(EventId::parse(&value).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "after must be a decimal event id, got {value:?}"
                    ))
                })?)
            }
            "limit" => limit = Some(count("limit", &value)?),
            "last" => last = Some(count("last", &value)?),
            _ => {}
        }
    }
    match (last, after.is_some() || limit.is_some()) {
        (Some(_), true) => Err(ApiError::bad_request(
            "use either last=N, or after=ID with limit=N, not both",
        )),
        (Some(n), false) => Ok(Page::Last(n)),
        (None, _) => Ok(Page::After {
            after: after.unwrap_or(EventId::ZERO),
            limit: limit.unwrap_or(DEFAULT_LIMIT),
        }),
    }
}

async fn read_events(api: &Api, stream: StreamName, query: &str) -> Result<Response, ApiError> {
    let page = parse_page(query)?;
    let (events, start) = match page {
        Page::After { after, limit } => {
            (api.broker.read_after(&stream, after, limit).await?, after)
        }
        Page::Last(n) => (api.broker.read_last(&stream, n).await?, EventId::ZERO),
    };
    // `next` is what to pass as `after` to continue: the last id returned, else where we began.
    let next = events.last().map_or(start, |e| e.id);
    let page = EventsPage {
        events: events.iter().map(EventJson).collect(),
        next: next.to_string(),
    };
    Ok(warp::reply::json(&page).into_response())
}

async fn read_event(api: &Api, stream: StreamName, id: &str) -> Result<Response, ApiError> {
    let id = EventId::parse(id).ok_or_else(|| {
        ApiError::bad_request(format!("event id must be a decimal number, got {id:?}"))
    })?;
    match api.broker.get(&stream, id).await? {
        Some(event) => Ok(warp::reply::json(&EventJson(&event)).into_response()),
        None => Err(ApiError::not_found(format!(
            "stream {stream} holds no event {id} (never published there, or trimmed)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_parsed_and_bounded() {
        assert_eq!(
            parse_page("").unwrap(),
            Page::After {
                after: EventId(0),
                limit: 100
            }
        );
        assert_eq!(
            parse_page("after=7&limit=1000").unwrap(),
            Page::After {
                after: EventId(7),
                limit: 1000
            }
        );
        assert_eq!(parse_page("last=3").unwrap(), Page::Last(3));
        assert!(parse_page("limit=1001").is_err());
        assert!(parse_page("limit=0").is_err());
        assert!(parse_page("last=3&after=1").is_err());
        assert!(parse_page("after=abc").is_err());
    }

    proptest::proptest! {
        #[test]
        fn fuzz_page_queries_are_bounded_or_refused(query in ".{0,80}") {
            match parse_page(&query) {
                Ok(Page::After { limit, .. }) | Ok(Page::Last(limit)) => {
                    proptest::prop_assert!((1..=MAX_LIMIT).contains(&limit))
                }
                Err(e) => proptest::prop_assert!(e.status.is_client_error()),
            }
        }
    }
}
