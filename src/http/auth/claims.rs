//! What a JWT grants: the `publish` and `subscribe` claims as stream patterns, `sub` as the
//! presence id, `exp` as the end of a response.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use super::pattern::StreamPattern;

/// The claims herald reads from a JWT. Unknown claims are ignored; `exp` and `nbf` are checked
/// by the decoder when present.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct RawClaims {
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
    pub(super) publish: Vec<StreamPattern>,
    pub(super) subscribe: Vec<StreamPattern>,
    /// The presence client id; `None` when the token has no `sub`.
    pub(super) sub: Option<String>,
    pub(super) expires: Option<SystemTime>,
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
