//! Where a caller's token comes from: `Authorization: Bearer`, the `herald_token` cookie, or
//! the `token` query parameter (a browser's `EventSource` cannot set headers).

use warp::http::{header, HeaderMap};

use super::Denied;
use crate::http::request::query_pairs;

/// The cookie a browser's `EventSource` (with `withCredentials`) carries its token in.
pub const TOKEN_COOKIE: &str = "herald_token";

/// A reader's possible tokens, as the request carried them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub authorization: Option<String>,
    pub cookie: Option<String>,
    pub query: Option<String>,
}

impl Credentials {
    pub fn from_request(headers: &HeaderMap, query: &str) -> Credentials {
        Credentials {
            authorization: headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            // Over HTTP/2 a browser may split cookies over several headers.
            cookie: headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(token_cookie),
            query: query_pairs(query)
                .into_iter()
                .find(|(key, _)| key == "token")
                .map(|(_, value)| value),
        }
    }
}

/// The value of the `herald_token` cookie in one `Cookie` header.
pub(super) fn token_cookie(header: &str) -> Option<String> {
    header.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == TOKEN_COOKIE).then(|| value.trim_matches('"').to_owned())
    })
}

/// The token of an `Authorization: Bearer <token>` header.
pub(super) fn bearer(header: &str) -> Result<&str, Denied> {
    match header.trim().split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(Denied::Unauthenticated(
            "the Authorization header must be \"Bearer <token>\"".into(),
        )),
    }
}
