//! Stream patterns: a name, or a prefix ending in `*`, as `--private` and a token's claims use
//! them.

use std::fmt;

use crate::broker::event::{InvalidName, StreamName};

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

/// Whether any of `patterns` matches `stream`.
pub(super) fn any_matches(patterns: &[StreamPattern], stream: &StreamName) -> bool {
    patterns.iter().any(|p| p.matches(stream))
}
