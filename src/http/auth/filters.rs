//! The warp side of access: each route's grant as a filter, and the `WWW-Authenticate`
//! challenge on every 401.

use warp::http::{header, HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Filter;

use super::{Credentials, Grant};
use crate::http::api::Api;
use crate::http::error::ApiError;
use crate::http::request::{raw_query, with_api};

/// Adds `WWW-Authenticate` to a 401, as RFC 6750 asks of a bearer-token server.
pub fn challenge(mut response: Response) -> Response {
    if response.status() == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"herald\""),
        );
    }
    response
}

/// What the app is asked with, when a read needs it (`--auth-url`).
pub fn app_request(
) -> impl Filter<Extract = (super::AppRequest,), Error = std::convert::Infallible> + Clone {
    warp::header::headers_cloned()
        .and(crate::http::request::peer_addr())
        .map(|headers: HeaderMap, peer| super::AppRequest::from_request(&headers, peer))
}

/// The reader's grant (or the 401 its bad credentials earn), for read routes.
pub fn reader(
    api: Api,
) -> impl Filter<Extract = (Result<Grant, ApiError>,), Error = std::convert::Infallible> + Clone {
    warp::header::headers_cloned()
        .and(raw_query())
        .and(with_api(api))
        .then(|headers: HeaderMap, query: String, api: Api| async move {
            let credentials = Credentials::from_request(&headers, &query);
            let token = credentials
                .authorization
                .as_deref()
                .and_then(|h| h.strip_prefix("Bearer "))
                .or(credentials.cookie.as_deref())
                .or(credentials.query.as_deref());
            api.options.access.prepare(token).await;
            api.options
                .access
                .reader(&credentials)
                .map_err(ApiError::from)
        })
}

/// The publisher's grant (or the 401 its missing or bad token earns), for write routes.
pub fn publisher(
    api: Api,
) -> impl Filter<Extract = (Result<Grant, ApiError>,), Error = std::convert::Infallible> + Clone {
    warp::header::optional::<String>("authorization")
        .or(warp::any().map(|| None))
        .unify()
        .and(with_api(api))
        .then(|authorization: Option<String>, api: Api| async move {
            let token = authorization
                .as_deref()
                .and_then(|h| h.strip_prefix("Bearer "));
            api.options.access.prepare(token).await;
            api.options
                .access
                .publisher(authorization.as_deref())
                .map_err(ApiError::from)
        })
}
