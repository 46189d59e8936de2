//! Who may publish and who may read: the publish token, HS256 JWTs and `--private` streams.
//!
//! Two kinds of caller meet here. Server-side apps publish with `Authorization: Bearer` — the
//! shared publish token, or a JWT whose `publish` claim covers the stream. Browsers read, and a
//! browser's `EventSource` cannot set headers, so a reader's token may also come from the
//! `herald_token` cookie or the `token` query parameter. Publishing accepts the header only: a
//! cookie is sent by the browser on a cross-site form post, and a publish that a cookie could
//! authorise would be a CSRF hole.
//!
//! Status codes follow the contract: 401 when credentials are missing or invalid (bad
//! signature, expired, malformed), 403 when a valid token does not cover the stream.

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use warp::http::{header, HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Filter;

use super::error::ApiError;
use super::{query_pairs, raw_query, with_api, Api};
use crate::broker::event::{InvalidName, StreamName};
use crate::broker::presence::ClientId;

/// The cookie a browser's `EventSource` (with `withCredentials`) carries its token in.
pub const TOKEN_COOKIE: &str = "herald_token";

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 10;

/// A stream name, or a prefix ending in `*` (`chat:*`; `*` alone is every stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPattern {
    prefix: String,
    wildcard: bool,
}

impl StreamPattern {
    pub fn parse(pattern: &str) -> Result<StreamPattern, InvalidName> {
        let (prefix, wildcard) = match pattern.strip_suffix('*') {
            Some(prefix) => (prefix, true),
            None => (pattern, false),
        };
        if !(wildcard && prefix.is_empty()) {
            // The prefix must itself read as a stream name, so a typo is not a silent no-match.
            StreamName::new(prefix).map_err(|e| {
                InvalidName(format!(
                    "pattern {pattern:?} is neither a stream name nor a name prefix ending in *: \
                     {}",
                    e.0
                ))
            })?;
        }
        Ok(StreamPattern {
            prefix: prefix.to_owned(),
            wildcard,
        })
    }

    pub fn matches(&self, stream: &StreamName) -> bool {
        if self.wildcard {
            stream.as_str().starts_with(&self.prefix)
        } else {
            stream.as_str() == self.prefix
        }
    }
}

impl fmt::Display for StreamPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.prefix, if self.wildcard { "*" } else { "" })
    }
}

fn any_matches(patterns: &[StreamPattern], stream: &StreamName) -> bool {
    patterns.iter().any(|p| p.matches(stream))
}

/// The claims herald reads from a JWT. Unknown claims are ignored; `exp` and `nbf` are checked
/// by the decoder when present.
#[derive(Debug, Clone, Deserialize)]
struct RawClaims {
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
    sub: Option<String>,
    exp: Option<u64>,
}

/// A verified token's rights.
#[derive(Debug, Clone)]
pub struct Claims {
    publish: Vec<StreamPattern>,
    subscribe: Vec<StreamPattern>,
    /// The presence client id; `None` when the token has no `sub`.
    sub: Option<String>,
    expires: Option<SystemTime>,
}

impl From<RawClaims> for Claims {
    fn from(raw: RawClaims) -> Claims {
        // A pattern that cannot match any stream name grants nothing; it is dropped, not fatal.
        let patterns = |list: Vec<String>| {
            list.iter()
                .filter_map(|p| StreamPattern::parse(p).ok())
                .collect()
        };
        Claims {
            publish: patterns(raw.publish),
            subscribe: patterns(raw.subscribe),
            sub: raw.sub,
            expires: raw.exp.map(|secs| UNIX_EPOCH + Duration::from_secs(secs)),
        }
    }
}

/// What a request proved about its sender.
#[derive(Debug, Clone)]
pub enum Grant {
    /// No credentials, or none needed (an open herald).
    Anonymous,
    /// The publish token: the operator's own key. It may publish and read everything.
    Operator,
    Token(Claims),
}

impl Grant {
    /// When the credentials stop being valid: an SSE response ends then.
    pub fn expires(&self) -> Option<SystemTime> {
        match self {
            Grant::Token(claims) => claims.expires,
            _ => None,
        }
    }
}

/// The access rules of one herald, built from its flags.
#[derive(Clone, Default)]
pub struct Access {
    publish_token: Option<String>,
    jwt: Option<(DecodingKey, Validation)>,
    private: Vec<StreamPattern>,
}

impl fmt::Debug for Access {
    // Never print the secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Access")
            .field("publish_token", &self.publish_token.as_ref().map(|_| "…"))
            .field("jwt", &self.jwt.as_ref().map(|_| "HS256"))
            .field("private", &self.private)
            .finish()
    }
}

impl Access {
    pub fn new(
        publish_token: Option<String>,
        jwt_secret: Option<String>,
        private: Vec<StreamPattern>,
    ) -> Access {
        let jwt = jwt_secret.map(|secret| {
            let mut validation = Validation::new(Algorithm::HS256);
            // `exp` is enforced when present, not required: a backend's long-lived token is
            // the operator's choice.
            validation.required_spec_claims = HashSet::new();
            validation.validate_exp = true;
            validation.validate_nbf = true;
            validation.validate_aud = false;
            validation.leeway = LEEWAY_SECS;
            (DecodingKey::from_secret(secret.as_bytes()), validation)
        });
        Access {
            publish_token,
            jwt,
            private,
        }
    }

    /// True when anyone may publish: no publish token and no JWT secret.
    pub fn is_open(&self) -> bool {
        self.publish_token.is_none() && self.jwt.is_none()
    }

    pub fn uses_jwt(&self) -> bool {
        self.jwt.is_some()
    }

    /// The grant of a publisher, from its `Authorization` header (the only place a publisher's
    /// token may come from). On an open herald everyone is `Anonymous` and may publish.
    pub fn publisher(&self, authorization: Option<&str>) -> Result<Grant, ApiError> {
        if self.is_open() {
            return Ok(Grant::Anonymous);
        }
        let Some(header) = authorization else {
            return Err(unauthorized(
                "publishing needs Authorization: Bearer <token> (the publish token or a JWT)",
            ));
        };
        self.verify(bearer(header)?)
    }

    /// Checks that a publisher's grant covers `stream`: for publishing, closing, deleting and
    /// setting its retention.
    pub fn check_publish(&self, grant: &Grant, stream: &StreamName) -> Result<(), ApiError> {
        match grant {
            Grant::Token(claims) if !any_matches(&claims.publish, stream) => Err(forbidden(
                format!("the token's publish claim does not cover stream {stream}"),
            )),
            Grant::Anonymous if !self.is_open() => Err(unauthorized(
                "publishing needs Authorization: Bearer <token> (the publish token or a JWT)",
            )),
            _ => Ok(()),
        }
    }

    /// The grant of a reader: from its `Authorization` header, else the `herald_token` cookie,
    /// else the `token` query parameter. No credentials is `Anonymous`; bad ones are a 401.
    pub fn reader(&self, credentials: &Credentials) -> Result<Grant, ApiError> {
        if self.is_open() {
            return Ok(Grant::Anonymous);
        }
        let token = match (
            &credentials.authorization,
            &credentials.cookie,
            &credentials.query,
        ) {
            (Some(header), _, _) => bearer(header)?,
            (None, Some(cookie), _) => cookie.as_str(),
            (None, None, Some(query)) => query.as_str(),
            (None, None, None) => return Ok(Grant::Anonymous),
        };
        self.verify(token)
    }

    /// Checks that `grant` may read `stream`: public streams anyone may; a `--private` one needs
    /// the publish token or a subscribe claim that covers it.
    pub fn check_read(&self, grant: &Grant, stream: &StreamName) -> Result<(), ApiError> {
        if !any_matches(&self.private, stream) {
            return Ok(());
        }
        match grant {
            Grant::Operator => Ok(()),
            Grant::Token(claims) if any_matches(&claims.subscribe, stream) => Ok(()),
            Grant::Token(_) => Err(forbidden(format!(
                "the token's subscribe claim does not cover private stream {stream}"
            ))),
            Grant::Anonymous => Err(unauthorized(format!(
                "stream {stream} is private: present a token whose subscribe claim covers it"
            ))),
        }
    }

    /// Whether `grant` may see `stream` at all (listings leave out what it may not read).
    pub fn may_read(&self, grant: &Grant, stream: &StreamName) -> bool {
        self.check_read(grant, stream).is_ok()
    }

    /// The presence id of a subscriber. With a JWT secret set, ids must be proven: a token's
    /// `sub` is the id (and `client=`, if given, must equal it), and `client=` alone is refused,
    /// so no one can appear online as someone else. Without one, `client=` is taken as given.
    pub fn presence_id(
        &self,
        grant: &Grant,
        client: Option<ClientId>,
    ) -> Result<Option<ClientId>, ApiError> {
        if !self.uses_jwt() {
            return Ok(client);
        }
        match grant {
            Grant::Token(Claims { sub: Some(sub), .. }) => {
                let id = ClientId::new(sub).map_err(|e| {
                    unauthorized(format!(
                        "the token's sub is not a usable client id: {}",
                        e.0
                    ))
                })?;
                match client {
                    Some(asked) if asked != id => Err(forbidden(format!(
                        "client={} does not match the token's sub",
                        asked.as_str()
                    ))),
                    _ => Ok(Some(id)),
                }
            }
            // The operator's key may speak for anyone.
            Grant::Operator => Ok(client),
            _ if client.is_none() => Ok(None),
            Grant::Token(_) => Err(forbidden(
                "client= needs a token whose sub is that client; this token has no sub",
            )),
            Grant::Anonymous => Err(unauthorized(
                "client= needs a token whose sub is that client (this herald checks presence ids)",
            )),
        }
    }

    fn verify(&self, token: &str) -> Result<Grant, ApiError> {
        if let Some(expected) = &self.publish_token {
            if bool::from(token.as_bytes().ct_eq(expected.as_bytes())) {
                return Ok(Grant::Operator);
            }
        }
        let Some((key, validation)) = &self.jwt else {
            return Err(unauthorized("the token is not the publish token"));
        };
        match jsonwebtoken::decode::<RawClaims>(token, key, validation) {
            Ok(data) => Ok(Grant::Token(data.claims.into())),
            Err(e) => Err(unauthorized(match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired".to_owned(),
                ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_owned(),
                ErrorKind::InvalidSignature => "the token's signature is wrong".to_owned(),
                ErrorKind::InvalidAlgorithm => "the token must be signed with HS256".to_owned(),
                ErrorKind::Json(_) => {
                    "the token's claims are malformed (publish and subscribe must be lists \
                     of strings, exp a number)"
                        .to_owned()
                }
                _ if self.publish_token.is_some() => {
                    "the token is neither the publish token nor a valid JWT".to_owned()
                }
                _ => "the token is not a valid JWT".to_owned(),
            })),
        }
    }
}

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
fn token_cookie(header: &str) -> Option<String> {
    header.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == TOKEN_COOKIE).then(|| value.trim_matches('"').to_owned())
    })
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(header: &str) -> Result<&str, ApiError> {
    match header.trim().split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(unauthorized(
            "the Authorization header must be \"Bearer <token>\"",
        )),
    }
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, message)
}

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, message)
}

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

/// The reader's grant (or the 401 its bad credentials earn), for read routes.
pub fn reader(
    api: Api,
) -> impl Filter<Extract = (Result<Grant, ApiError>,), Error = std::convert::Infallible> + Clone {
    warp::header::headers_cloned()
        .and(raw_query())
        .and(with_api(api))
        .map(|headers: HeaderMap, query: String, api: Api| {
            api.options
                .access
                .reader(&Credentials::from_request(&headers, &query))
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
        .map(|authorization: Option<String>, api: Api| {
            api.options.access.publisher(authorization.as_deref())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn name(s: &str) -> StreamName {
        StreamName::new(s).unwrap()
    }

    fn token(secret: &str, claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn patterns_are_names_or_prefixes() {
        let chat = StreamPattern::parse("chat:*").unwrap();
        assert!(chat.matches(&name("chat:lobby")));
        assert!(chat.matches(&name("chat:")));
        assert!(!chat.matches(&name("chatter")));
        let all = StreamPattern::parse("*").unwrap();
        assert!(all.matches(&name("anything")));
        let exact = StreamPattern::parse("news").unwrap();
        assert!(exact.matches(&name("news")));
        assert!(!exact.matches(&name("news2")));
        assert!(StreamPattern::parse("a*b").is_err());
        assert!(StreamPattern::parse("**").is_err());
        assert!(StreamPattern::parse("").is_err());
        assert!(StreamPattern::parse("a/b*").is_err());
    }

    #[test]
    fn an_open_herald_lets_anyone_publish_and_read() {
        let access = Access::default();
        assert!(access.is_open());
        let publisher = access.publisher(None).unwrap();
        assert!(access.check_publish(&publisher, &name("a")).is_ok());
        let grant = access.reader(&Credentials::default()).unwrap();
        assert!(access.check_read(&grant, &name("a")).is_ok());
    }

    #[test]
    fn the_publish_token_is_compared_whole() {
        let access = Access::new(Some("s3cret".into()), None, vec![]);
        let status = |h: Option<&str>| {
            access
                .publisher(h)
                .and_then(|g| access.check_publish(&g, &name("a")))
                .map(|_| StatusCode::OK)
                .unwrap_or_else(|e| e.status)
        };
        assert_eq!(status(Some("Bearer s3cret")), StatusCode::OK);
        assert_eq!(status(Some("bearer  s3cret ")), StatusCode::OK);
        assert_eq!(status(Some("Bearer s3cre")), StatusCode::UNAUTHORIZED);
        assert_eq!(status(Some("Bearer s3cret2")), StatusCode::UNAUTHORIZED);
        assert_eq!(status(Some("Basic s3cret")), StatusCode::UNAUTHORIZED);
        assert_eq!(status(Some("Bearer")), StatusCode::UNAUTHORIZED);
        assert_eq!(status(None), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn jwt_claims_decide_publish_and_private_reads() {
        let private = vec![StreamPattern::parse("user:*").unwrap()];
        let access = Access::new(None, Some("k".into()), private);
        let t = token(
            "k",
            json!({"publish": ["news", "chat:*"], "subscribe": ["user:42"], "exp": now() + 60}),
        );
        let publisher = access.publisher(Some(&format!("Bearer {t}"))).unwrap();
        assert!(access.check_publish(&publisher, &name("news")).is_ok());
        assert!(access.check_publish(&publisher, &name("chat:x")).is_ok());
        let refused = access
            .check_publish(&publisher, &name("other"))
            .unwrap_err();
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert!(refused.message.contains("other"));

        let reader = |c: Credentials| access.reader(&c).unwrap();
        let by_cookie = reader(Credentials {
            cookie: Some(t.clone()),
            ..Default::default()
        });
        assert!(access.check_read(&by_cookie, &name("user:42")).is_ok());
        assert!(access.check_read(&by_cookie, &name("public")).is_ok());
        let other = access.check_read(&by_cookie, &name("user:43")).unwrap_err();
        assert_eq!(other.status, StatusCode::FORBIDDEN);
        let anonymous = reader(Credentials::default());
        let refused = access.check_read(&anonymous, &name("user:42")).unwrap_err();
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert!(access.check_read(&anonymous, &name("public")).is_ok());
    }

    #[test]
    fn expired_wrong_and_malformed_tokens_are_401() {
        let access = Access::new(None, Some("k".into()), vec![]);
        let cases = [
            (
                token("k", json!({"publish": ["*"], "exp": now() - 120})),
                "expired",
            ),
            (token("other", json!({"publish": ["*"]})), "signature"),
            (token("k", json!({"publish": "news"})), "malformed"),
            ("not.a.jwt".to_owned(), "not a valid JWT"),
        ];
        for (t, words) in cases {
            let e = access.publisher(Some(&format!("Bearer {t}"))).unwrap_err();
            assert_eq!(e.status, StatusCode::UNAUTHORIZED, "{words}");
            assert!(e.message.contains(words), "{} lacks {words}", e.message);
        }
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &json!({"publish": ["*"]}),
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap();
        let e = access
            .publisher(Some(&format!("Bearer {hs512}")))
            .unwrap_err();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn the_header_wins_over_cookie_and_query() {
        let access = Access::new(None, Some("k".into()), vec![]);
        let good = token("k", json!({"subscribe": ["*"]}));
        let credentials = Credentials {
            authorization: Some("Bearer bad".into()),
            cookie: Some(good.clone()),
            query: Some(good),
        };
        assert_eq!(
            access.reader(&credentials).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn presence_ids_come_from_the_token_when_jwt_is_on() {
        let id = |s: &str| ClientId::new(s).unwrap();
        let trusting = Access::new(Some("p".into()), None, vec![]);
        assert_eq!(
            trusting
                .presence_id(&Grant::Anonymous, Some(id("alice")))
                .unwrap(),
            Some(id("alice"))
        );
        let access = Access::new(None, Some("k".into()), vec![]);
        let alice = access
            .reader(&Credentials {
                query: Some(token("k", json!({"sub": "alice"}))),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(access.presence_id(&alice, None).unwrap(), Some(id("alice")));
        assert_eq!(
            access.presence_id(&alice, Some(id("alice"))).unwrap(),
            Some(id("alice"))
        );
        let status = |grant: &Grant, client: &str| {
            access
                .presence_id(grant, Some(id(client)))
                .unwrap_err()
                .status
        };
        assert_eq!(status(&alice, "mallory"), StatusCode::FORBIDDEN);
        assert_eq!(status(&Grant::Anonymous, "alice"), StatusCode::UNAUTHORIZED);
        assert_eq!(access.presence_id(&Grant::Anonymous, None).unwrap(), None);
    }

    #[test]
    fn the_token_cookie_is_found_among_others() {
        assert_eq!(
            token_cookie("a=1; herald_token=xyz; b=2").as_deref(),
            Some("xyz")
        );
        assert_eq!(token_cookie("herald_token_old=1"), None);
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1"));
        headers.append(header::COOKIE, HeaderValue::from_static("herald_token=t"));
        let c = Credentials::from_request(&headers, "stream=a&token=q");
        assert_eq!(c.cookie.as_deref(), Some("t"));
        assert_eq!(c.query.as_deref(), Some("q"));
    }

    proptest::proptest! {
        /// No header, cookie or query a client sends panics, and none but the real secrets
        /// earns more than `Anonymous`.
        #[test]
        fn fuzz_credentials_never_panic_and_never_grant_by_accident(
            authorization in proptest::option::of(".{0,80}"),
            cookie in ".{0,80}",
            query in ".{0,80}",
            pattern in ".{0,20}",
        ) {
            let access = Access::new(
                Some("the-real-publish-token".into()),
                Some("k".repeat(32)),
                vec![StreamPattern::parse("p:*").expect("valid")],
            );
            let mut headers = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                headers.insert(header::COOKIE, value);
            }
            if let Some(Ok(value)) = authorization.as_deref().map(HeaderValue::from_str) {
                headers.insert(header::AUTHORIZATION, value);
            }
            let credentials = Credentials::from_request(&headers, &query);
            if let Ok(grant) = access.reader(&credentials) {
                proptest::prop_assert!(matches!(grant, Grant::Anonymous));
            }
            if let Err(e) = access.publisher(authorization.as_deref()) {
                proptest::prop_assert_eq!(e.status, StatusCode::UNAUTHORIZED);
            } else {
                proptest::prop_assert!(false, "a random header was accepted");
            }
            let _ = StreamPattern::parse(&pattern);
        }
    }
}
