//! Who may publish and who may read: the publish token, HS256 JWTs and `--private` streams.
//!
//! Two kinds of caller meet here. Server-side apps publish with `Authorization: Bearer` — the
//! shared publish token, or a JWT whose `publish` claim covers the stream. Browsers read, and a
//! browser's `EventSource` cannot set headers, so a reader's token may also come from the
//! `herald_token` cookie or the `token` query parameter. Publishing accepts the header only: a
//! cookie is sent by the browser on a cross-site form post, and a publish that a cookie could
//! authorise would be a CSRF hole.
//!
//! The policy ([`Access`]) answers with [`Denied`], which knows nothing of HTTP; the contract's
//! status codes are given where it becomes the JSON error: 401 when credentials are missing or
//! invalid (bad signature, expired, malformed), 403 when a valid token does not cover the stream.
//!
//! Here: the policy. `pattern.rs` (stream patterns), `claims.rs` (what a JWT grants),
//! `credentials.rs` (where a token comes from), `filters.rs` (the warp side).

mod app;
mod claims;
mod credentials;
mod filters;
mod jwks;
mod keys;
mod pattern;

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use subtle::ConstantTimeEq;
use warp::http::StatusCode;

pub use self::app::{app_away, AppAuthOptions, AppRequest, Verdict};
pub use self::claims::Claims;
use self::claims::RawClaims;
use self::credentials::bearer;
pub use self::credentials::{Credentials, TOKEN_COOKIE};
pub use self::filters::{app_request, challenge, publisher, reader};
pub use self::keys::PublicKey;
use self::pattern::any_matches;
pub use self::pattern::StreamPattern;
use super::error::ApiError;
use crate::broker::event::StreamName;
use crate::broker::presence::ClientId;

/// Why a request may not do what it asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No credentials where they are needed, or credentials that prove nothing.
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credentials that do not cover what was asked.
    #[error("{0}")]
    Forbidden(String),
}

impl From<Denied> for ApiError {
    fn from(denied: Denied) -> ApiError {
        match denied {
            Denied::Unauthenticated(message) => ApiError::new(StatusCode::UNAUTHORIZED, message),
            Denied::Forbidden(message) => ApiError::new(StatusCode::FORBIDDEN, message),
        }
    }
}

/// Why a read was not allowed: refused (by the rules or the app), or the app could not be
/// asked.
#[derive(Debug)]
pub enum ReadRefused {
    Denied(Denied),
    AppAway(String),
}

impl From<ReadRefused> for ApiError {
    fn from(refused: ReadRefused) -> ApiError {
        match refused {
            ReadRefused::Denied(denied) => denied.into(),
            ReadRefused::AppAway(reason) => app_away(&reason),
        }
    }
}

fn unauthorized(message: impl Into<String>) -> Denied {
    Denied::Unauthenticated(message.into())
}

fn forbidden(message: impl Into<String>) -> Denied {
    Denied::Forbidden(message.into())
}

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 10;

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
    /// What `GET /metrics` takes besides the publish token.
    metrics_token: Option<String>,
    jwt: Option<(DecodingKey, Validation)>,
    /// Keys for tokens signed by an identity provider or an app (RS256, ES256, EdDSA), shared
    /// by every clone of these rules so a reload (`SIGHUP`) reaches them all; and their files.
    public_keys: Arc<RwLock<Vec<PublicKey>>>,
    public_key_files: Vec<PathBuf>,
    /// An identity provider's key set, fetched from `--jwks-url`.
    jwks: Option<Arc<jwks::Jwks>>,
    /// The app that decides reads no token covers (`--auth-url`).
    app: Option<Arc<app::AppAuth>>,
    private: Vec<StreamPattern>,
}

impl fmt::Debug for Access {
    // Never print the secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Access")
            .field("publish_token", &self.publish_token.as_ref().map(|_| "…"))
            .field("metrics_token", &self.metrics_token.as_ref().map(|_| "…"))
            .field("jwt", &self.jwt.as_ref().map(|_| "HS256"))
            .field("public_keys", &self.public_keys)
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
            (
                DecodingKey::from_secret(secret.as_bytes()),
                validation(Algorithm::HS256),
            )
        });
        Access {
            publish_token,
            metrics_token: None,
            jwt,
            public_keys: Arc::default(),
            public_key_files: Vec::new(),
            jwks: None,
            app: None,
            private,
        }
    }

    /// These rules, asking the app about reads of private streams no token covers.
    pub fn with_app_auth(mut self, options: Option<AppAuthOptions>) -> Result<Access, String> {
        self.app = options.map(app::AppAuth::new).transpose()?.map(Arc::new);
        Ok(self)
    }

    /// Whether reads no token covers are put to the app.
    pub fn asks_the_app(&self) -> bool {
        self.app.is_some()
    }

    /// Checks that `grant` may read every one of `streams`; those no token covers go to the app
    /// when there is one (all in one call). The client id the app vouched for, if any.
    pub async fn authorize_reads(
        &self,
        grant: &Grant,
        streams: &[StreamName],
        request: &AppRequest,
    ) -> Result<Option<ClientId>, ReadRefused> {
        let mut uncovered = Vec::new();
        let mut first = None;
        for stream in streams {
            if let Err(denied) = self.check_read(grant, stream) {
                uncovered.push(stream.clone());
                first.get_or_insert(denied);
            }
        }
        let Some(denied) = first else {
            return Ok(None);
        };
        let Some(app) = &self.app else {
            return Err(ReadRefused::Denied(denied));
        };
        match app.ask(request, &uncovered).await {
            Ok(Verdict::Allowed(client)) => Ok(client),
            Ok(Verdict::Refused(status, message)) if status == StatusCode::UNAUTHORIZED => {
                Err(ReadRefused::Denied(unauthorized(message)))
            }
            Ok(Verdict::Refused(_, message)) => Err(ReadRefused::Denied(forbidden(message))),
            Err(reason) => Err(ReadRefused::AppAway(reason)),
        }
    }

    /// These rules, also taking tokens signed with a key of the set at `url` (fetched by
    /// [`Access::start`]).
    pub fn with_jwks_url(mut self, url: Option<String>) -> Result<Access, String> {
        self.jwks = url.map(jwks::Jwks::new).transpose()?.map(Arc::new);
        Ok(self)
    }

    /// Fetches the JWKS, if there is one (an error is one line saying why), and keeps it
    /// fresh from then on. Call once, on the runtime that serves.
    pub async fn start(&self) -> Result<(), String> {
        let Some(set) = &self.jwks else {
            return Ok(());
        };
        let n = set.fetch().await?;
        tracing::info!(keys = n, "fetched the JWKS");
        let set = Arc::downgrade(set);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(jwks::REFRESH).await;
                let Some(set) = set.upgrade() else {
                    return;
                };
                if let Err(e) = set.fetch().await {
                    tracing::warn!(error = %e, "refreshing the JWKS failed; keeping its last keys");
                }
            }
        });
        Ok(())
    }

    /// Before a token is checked: when it names a `kid` that no key has, fetch the JWKS again
    /// (rate-limited), so a provider's new key works from its first token.
    pub async fn prepare(&self, token: Option<&str>) {
        let (Some(set), Some(token)) = (&self.jwks, token) else {
            return;
        };
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return;
        };
        if header.alg == Algorithm::HS256 {
            return;
        }
        if let Some(kid) = header.kid {
            let in_files = self
                .public_keys
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|k| k.kid == kid);
            if !in_files {
                set.refresh_for(&kid).await;
            }
        }
    }

    /// These rules, also taking tokens signed with the private halves of the keys in these PEM
    /// files; the error is one line naming the file that does not load.
    pub fn with_public_key_files(mut self, files: Vec<PathBuf>) -> Result<Access, String> {
        let keys = load_keys(&files)?;
        self.public_keys = Arc::new(RwLock::new(keys));
        self.public_key_files = files;
        Ok(self)
    }

    /// Reads the public key files again: all of them or, if any fails, none (the keys in use
    /// stay). The number of keys loaded.
    pub fn reload_public_keys(&self) -> Result<usize, String> {
        if self.public_key_files.is_empty() {
            return Ok(0);
        }
        let keys = load_keys(&self.public_key_files)?;
        let n = keys.len();
        *self.public_keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(n)
    }

    /// These rules with a token for `GET /metrics` (`--metrics-token`).
    pub fn with_metrics_token(mut self, token: Option<String>) -> Access {
        self.metrics_token = token;
        self
    }

    /// Whether `GET /metrics` needs a token: once any credential is configured, because it
    /// names streams, private ones included.
    pub fn metrics_need_a_token(&self) -> bool {
        self.has_credentials() || self.metrics_token.is_some()
    }

    /// Checks `GET /metrics`'s `Authorization` header: the metrics token or the publish token,
    /// when [`Access::metrics_need_a_token`].
    pub fn check_metrics(&self, authorization: Option<&str>) -> Result<(), Denied> {
        if !self.metrics_need_a_token() {
            return Ok(());
        }
        let bearer = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                unauthorized(
                    "/metrics names streams: it needs Authorization: Bearer with the metrics \
                     token (--metrics-token) or the publish token",
                )
            })?;
        let matches = |expected: &Option<String>| {
            expected
                .as_ref()
                .is_some_and(|e| bool::from(bearer.as_bytes().ct_eq(e.as_bytes())))
        };
        if matches(&self.metrics_token) || matches(&self.publish_token) {
            Ok(())
        } else {
            Err(unauthorized(
                "the token is neither the metrics token nor the publish token",
            ))
        }
    }

    /// True when anyone may publish: no publish token and no JWT secret.
    pub fn is_open(&self) -> bool {
        self.publish_token.is_none() && !self.uses_jwt()
    }

    /// Whether any credential is configured (so `/metrics` needs a token).
    pub fn has_credentials(&self) -> bool {
        !self.is_open() || self.app.is_some()
    }

    pub fn uses_jwt(&self) -> bool {
        self.jwt.is_some() || !self.public_key_files.is_empty() || self.jwks.is_some()
    }

    /// The grant of a publisher, from its `Authorization` header (the only place a publisher's
    /// token may come from). On an open herald everyone is `Anonymous` and may publish.
    pub fn publisher(&self, authorization: Option<&str>) -> Result<Grant, Denied> {
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
    pub fn check_publish(&self, grant: &Grant, stream: &StreamName) -> Result<(), Denied> {
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
    pub fn reader(&self, credentials: &Credentials) -> Result<Grant, Denied> {
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
    pub fn check_read(&self, grant: &Grant, stream: &StreamName) -> Result<(), Denied> {
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
    ) -> Result<Option<ClientId>, Denied> {
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

    fn verify(&self, token: &str) -> Result<Grant, Denied> {
        if let Some(expected) = &self.publish_token {
            if bool::from(token.as_bytes().ct_eq(expected.as_bytes())) {
                return Ok(Grant::Operator);
            }
        }
        if !self.uses_jwt() {
            return Err(unauthorized("the token is not the publish token"));
        }
        let not_a_jwt = || {
            unauthorized(if self.publish_token.is_some() {
                "the token is neither the publish token nor a valid JWT"
            } else {
                "the token is not a valid JWT"
            })
        };
        let header = jsonwebtoken::decode_header(token).map_err(|_| not_a_jwt())?;
        // The key decides the algorithm: a token naming one no configured key has is refused
        // before any verification (`none`, HS256 signed with a public key, ...).
        if header.alg == Algorithm::HS256 {
            let Some((key, validation)) = &self.jwt else {
                return Err(unauthorized(
                    "this herald takes no HS256 tokens: sign with a key it has the public key of",
                ));
            };
            return decoded(token, key, validation);
        }
        let public_keys = self.public_keys.read().unwrap_or_else(|e| e.into_inner());
        let from_jwks = self.jwks.as_ref().map(|set| set.keys());
        let mut keys = public_keys
            .iter()
            .chain(from_jwks.iter().flat_map(|set| set.iter()))
            .filter(|k| k.algorithm == header.alg)
            .filter(|k| header.kid.as_ref().is_none_or(|kid| *kid == k.kid))
            .peekable();
        if keys.peek().is_none() {
            return Err(unauthorized(match &header.kid {
                Some(kid) => format!("no {:?} key with kid {kid:?} is configured", header.alg),
                None => format!("this herald has no {:?} key", header.alg),
            }));
        }
        let mut refused = not_a_jwt();
        for key in keys {
            match decoded(token, &key.key, &validation(key.algorithm)) {
                Ok(grant) => return Ok(grant),
                Err(e) => refused = e,
            }
        }
        Err(refused)
    }
}

fn load_keys(files: &[PathBuf]) -> Result<Vec<PublicKey>, String> {
    files.iter().map(|path| PublicKey::load(path)).collect()
}

/// How tokens are checked: `exp` and `nbf` enforced when present (not required: a backend's
/// long-lived token is the operator's choice), with some clock skew allowed; `aud` not checked.
fn validation(algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.required_spec_claims = HashSet::new();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    validation.leeway = LEEWAY_SECS;
    validation
}

/// A token verified with one key, or why not.
fn decoded(token: &str, key: &DecodingKey, validation: &Validation) -> Result<Grant, Denied> {
    match jsonwebtoken::decode::<RawClaims>(token, key, validation) {
        Ok(data) => Ok(Grant::Token(data.claims.into())),
        Err(e) => Err(unauthorized(match e.kind() {
            ErrorKind::ExpiredSignature => "the token has expired",
            ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
            ErrorKind::InvalidSignature => "the token's signature is wrong",
            ErrorKind::InvalidAlgorithm => "the token's algorithm does not match its key",
            ErrorKind::Json(_) => {
                "the token's claims are malformed (publish and subscribe must be lists of \
                 strings, exp a number)"
            }
            _ => "the token is not a valid JWT",
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::credentials::token_cookie;
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;
    use std::time::UNIX_EPOCH;
    use warp::http::{header, HeaderMap, HeaderValue};

    /// The status the JSON error of a denial carries.
    trait Status {
        fn status(self) -> StatusCode;
    }

    impl Status for &Denied {
        fn status(self) -> StatusCode {
            ApiError::from(self.clone()).status
        }
    }

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
                .unwrap_or_else(|e| e.status())
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
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert!(refused.to_string().contains("other"));

        let reader = |c: Credentials| access.reader(&c).unwrap();
        let by_cookie = reader(Credentials {
            cookie: Some(t.clone()),
            ..Default::default()
        });
        assert!(access.check_read(&by_cookie, &name("user:42")).is_ok());
        assert!(access.check_read(&by_cookie, &name("public")).is_ok());
        let other = access.check_read(&by_cookie, &name("user:43")).unwrap_err();
        assert_eq!(other.status(), StatusCode::FORBIDDEN);
        let anonymous = reader(Credentials::default());
        let refused = access.check_read(&anonymous, &name("user:42")).unwrap_err();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
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
            assert_eq!(e.status(), StatusCode::UNAUTHORIZED, "{words}");
            assert!(e.to_string().contains(words), "{e} lacks {words}");
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
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
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
            access.reader(&credentials).unwrap_err().status(),
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
                .status()
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
                proptest::prop_assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
            } else {
                proptest::prop_assert!(false, "a random header was accepted");
            }
            let _ = StreamPattern::parse(&pattern);
        }
    }
}
