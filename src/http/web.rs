//! The web UI: the pages and assets of `web/`, built into the binary (rust-embed; in debug
//! builds too, so tests exercise what ships). No second process, no CDN: htmx is vendored.
//!
//! Pages get a strict Content-Security-Policy — scripts and styles from herald only, no inline
//! script — so even an event whose data slipped into the page as HTML could not run code, and
//! `Referrer-Policy: no-referrer`, so a `?token=` never leaks to another site.

use std::borrow::Cow;

use bytes::Bytes;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::{Reply, Response};
use warp::Filter;

use super::error::ApiError;

#[derive(rust_embed::RustEmbed)]
#[folder = "web/"]
#[exclude = "*.md"]
struct Assets;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn routes() -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let page = |file: &'static str| {
        warp::get()
            .and(warp::header::optional::<String>("if-none-match"))
            .map(move |etag: Option<String>| serve(file, etag.as_deref()))
    };
    let index = warp::path::end().and(page("index.html"));
    let qa = warp::path!("demo" / "qa").and(page("qa.html"));
    let htmx = warp::path!("demo" / "htmx").and(page("htmx.html"));
    let timer = warp::path!("demo" / "timer").and(page("timer.html"));
    let assets = warp::path("web")
        .and(warp::path::tail())
        .and(warp::get())
        .and(warp::header::optional::<String>("if-none-match"))
        .map(|tail: warp::path::Tail, etag: Option<String>| serve(tail.as_str(), etag.as_deref()));
    index
        .or(qa)
        .unify()
        .or(htmx)
        .unify()
        .or(timer)
        .unify()
        .or(assets)
        .unify()
}

/// One embedded file, with its type and an ETag; `304` when the browser has it already.
fn serve(path: &str, if_none_match: Option<&str>) -> Response {
    let Some(file) = Assets::get(path) else {
        return ApiError::not_found(format!("no such file in the web UI: {path}")).into_response();
    };
    let hash = file.metadata.sha256_hash();
    let etag = format!(
        "\"{}\"",
        hash[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let mut response = if if_none_match == Some(etag.as_str()) {
        let mut not_modified = Response::new(Bytes::new().into());
        *not_modified.status_mut() = StatusCode::NOT_MODIFIED;
        not_modified
    } else {
        let body = match file.data {
            Cow::Borrowed(bytes) => Bytes::from_static(bytes),
            Cow::Owned(bytes) => Bytes::from(bytes),
        };
        Response::new(body.into())
    };
    let mime = file.metadata.mimetype();
    let content_type = if mime.starts_with("text/") || mime.ends_with("javascript") {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_owned()
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    // Revalidate every time (cheap, with the ETag): an upgraded herald serves its new UI at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    if mime == "text/html" {
        headers.insert("content-security-policy", HeaderValue::from_static(CSP));
    }
    response
}
