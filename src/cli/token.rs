//! `herald token`: mints a JWT that this herald accepts — for trying access control out, for
//! scripts, and as the reference for what an app's own minting must produce (claims
//! `publish`, `subscribe`, `sub`, `exp`; HS256 with the server's `--jwt-secret`, or signed with
//! the private half of a `--jwt-public-key`, the algorithm taken from the key).

use std::time::{SystemTime, UNIX_EPOCH};

use std::path::PathBuf;

use clap::Args;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::CliError;
use crate::broker::presence::ClientId;
use crate::http::auth::StreamPattern;

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The holder's presence client id (`sub`): a subscriber with this token is this member.
    #[arg(long)]
    pub sub: Option<String>,

    /// Streams the holder may publish to, close and delete: names or `prefix*` patterns
    /// (repeatable, or comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "PATTERN")]
    pub publish: Vec<String>,

    /// Streams the holder may read, private ones included: names or `prefix*` patterns
    /// (repeatable, or comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "PATTERN")]
    pub subscribe: Vec<String>,

    /// Seconds until the token expires (`exp`). An open SSE response ends when its token
    /// expires, and the browser reconnects with a fresh one. 0: never expires.
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    pub ttl: u64,

    /// The server's HS256 secret (its --jwt-secret). Prefer the environment variable: flags
    /// show in `ps`.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Sign with this PEM private key instead (RSA → RS256, P-256 → ES256, Ed25519 → EdDSA),
    /// for a herald started with its public key (--jwt-public-key).
    #[arg(long, value_name = "PEM", conflicts_with = "jwt_secret")]
    pub jwt_private_key: Option<PathBuf>,

    /// The token's `kid`, naming the public key herald verifies it with (the public key file's
    /// name without its extension). Without one, herald tries each key of the algorithm.
    #[arg(long)]
    pub kid: Option<String>,
}

#[derive(Serialize)]
struct Claims<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    publish: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    subscribe: &'a [String],
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
}

/// Prints the token on stdout.
pub fn run(args: TokenArgs) -> Result<(), CliError> {
    println!("{}", mint(&args, now())?);
    Ok(())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The token for these arguments, issued at `now` (Unix seconds).
pub fn mint(args: &TokenArgs, now: u64) -> Result<String, CliError> {
    let (header, key) = signer(args)?;
    if args.publish.is_empty() && args.subscribe.is_empty() && args.sub.is_none() {
        return Err(CliError::Input(
            "a token that grants nothing: give --publish, --subscribe or --sub".into(),
        ));
    }
    for (flag, patterns) in [
        ("--publish", &args.publish),
        ("--subscribe", &args.subscribe),
    ] {
        for pattern in patterns.iter() {
            StreamPattern::parse(pattern)
                .map_err(|e| CliError::Input(format!("{flag} {pattern:?}: {}", e.0)))?;
        }
    }
    if let Some(sub) = &args.sub {
        ClientId::new(sub).map_err(|e| CliError::Input(format!("--sub: {}", e.0)))?;
    }
    let claims = Claims {
        sub: args.sub.as_deref(),
        publish: &args.publish,
        subscribe: &args.subscribe,
        iat: now,
        exp: (args.ttl > 0).then(|| now + args.ttl),
    };
    encode(&header, &claims, &key)
        .map_err(|e| CliError::Input(format!("cannot sign the token: {e}")))
}

/// The header and key to sign with: the private key's kind decides the algorithm.
fn signer(args: &TokenArgs) -> Result<(Header, EncodingKey), CliError> {
    if let Some(path) = &args.jwt_private_key {
        let pem = std::fs::read(path).map_err(|e| {
            CliError::Input(format!(
                "cannot read the private key {}: {e}",
                path.display()
            ))
        })?;
        let (algorithm, key) = if let Ok(key) = EncodingKey::from_rsa_pem(&pem) {
            (Algorithm::RS256, key)
        } else if let Ok(key) = EncodingKey::from_ec_pem(&pem) {
            (Algorithm::ES256, key)
        } else if let Ok(key) = EncodingKey::from_ed_pem(&pem) {
            (Algorithm::EdDSA, key)
        } else {
            return Err(CliError::Input(format!(
                "{} is not a PEM private key of a kind herald verifies (RSA, P-256, Ed25519)",
                path.display()
            )));
        };
        let mut header = Header::new(algorithm);
        header.kid = args.kid.clone();
        return Ok((header, key));
    }
    let secret = args.jwt_secret.as_deref().ok_or_else(|| {
        CliError::Input(
            "herald token needs the server's secret (--jwt-secret or HERALD_JWT_SECRET) or a \
             private key (--jwt-private-key)"
                .into(),
        )
    })?;
    if secret.len() < 32 {
        return Err(CliError::Input(
            "--jwt-secret must be at least 32 bytes, as the server requires".into(),
        ));
    }
    let header = Header {
        kid: args.kid.clone(),
        ..Header::default()
    };
    Ok((header, EncodingKey::from_secret(secret.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> TokenArgs {
        TokenArgs {
            sub: Some("42".into()),
            publish: vec![],
            subscribe: vec!["user:42".into()],
            ttl: 60,
            jwt_secret: Some("s".repeat(32)),
            jwt_private_key: None,
            kid: None,
        }
    }

    #[test]
    fn bad_input_is_refused_with_the_reason() {
        let short = TokenArgs {
            jwt_secret: Some("short".into()),
            ..args()
        };
        assert!(mint(&short, 0)
            .unwrap_err()
            .to_string()
            .contains("32 bytes"));
        let none = TokenArgs {
            jwt_secret: None,
            ..args()
        };
        assert!(mint(&none, 0)
            .unwrap_err()
            .to_string()
            .contains("HERALD_JWT_SECRET"));
        let bad = TokenArgs {
            subscribe: vec!["a b".into()],
            ..args()
        };
        assert!(mint(&bad, 0)
            .unwrap_err()
            .to_string()
            .contains("--subscribe"));
        let nothing = TokenArgs {
            sub: None,
            subscribe: vec![],
            ..args()
        };
        assert!(mint(&nothing, 0).is_err());
        assert_eq!(mint(&args(), 0).unwrap().split('.').count(), 3);
    }
}
