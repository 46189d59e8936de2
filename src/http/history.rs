//! Reading without subscribing: `GET /streams`, `GET /streams/{stream}`,
//! `GET /streams/{stream}/events` and `GET /streams/{stream}/events/{id}`.

use warp::reply::{Reply, Response};
use warp::Filter;

use super::auth::{self, Grant};
use super::error::{respond, ApiError};
use super::{query_pairs, raw_query, readable_stream, with_api, Api};
use crate::broker::event::{Event, EventId, StreamName};

/// Default and largest page of `GET /streams/{stream}/events`.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

pub fn routes(api: Api) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let list = warp::path!("streams")
        .and(warp::get())
        .and(auth::reader(api.clone()))
        .and(with_api(api.clone()))
        .then(|grant: Result<Grant, ApiError>, api: Api| async move {
            respond(
                async {
                    let grant = grant?;
                    // A private stream the caller may not read is not listed: its name is
                    // private too.
                    let mut streams = api.broker.all_streams().await?;
                    streams.retain(|info| api.options.access.may_read(&grant, &info.name));
                    Ok(warp::reply::json(&streams).into_response())
                }
                .await,
            )
        });
    let one = warp::path!("streams" / String)
        .and(warp::get())
        .and(auth::reader(api.clone()))
        .and(with_api(api.clone()))
        .then(|stream: String, grant, api: Api| async move {
            respond(
                async {
                    let stream = readable_stream(&api, &stream, grant)?;
                    let info = api.broker.stream_info(&stream).await?;
                    Ok(warp::reply::json(&info).into_response())
                }
                .await,
            )
        });
    let events = warp::path!("streams" / String / "events")
        .and(warp::get())
        .and(raw_query())
        .and(auth::reader(api.clone()))
        .and(with_api(api.clone()))
        .then(
            |stream: String, query: String, grant, api: Api| async move {
                respond(
                    async {
                        let stream = readable_stream(&api, &stream, grant)?;
                        read_events(&api, stream, &query).await
                    }
                    .await,
                )
            },
        );
    let event = warp::path!("streams" / String / "events" / String)
        .and(warp::get())
        .and(auth::reader(api.clone()))
        .and(with_api(api))
        .then(|stream: String, id: String, grant, api: Api| async move {
            respond(
                async {
                    let stream = readable_stream(&api, &stream, grant)?;
                    read_event(&api, stream, &id).await
                }
                .await,
            )
        });
    event.or(events).unify().or(one).unify().or(list).unify()
}

#[derive(serde::Serialize)]
struct EventsPage<'a> {
    events: &'a [Event],
    next: String,
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
        events: &events,
        next: next.to_string(),
    };
    Ok(warp::reply::json(&page).into_response())
}

async fn read_event(api: &Api, stream: StreamName, id: &str) -> Result<Response, ApiError> {
    let id = EventId::parse(id).ok_or_else(|| {
        ApiError::bad_request(format!("event id must be a decimal number, got {id:?}"))
    })?;
    match api.broker.get(&stream, id).await? {
        Some(event) => Ok(warp::reply::json(&event).into_response()),
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
