//! An identity provider's key set (`--jwks-url`): fetched at start-up (a set that cannot be
//! fetched or read then is one clear error), fetched again every [`REFRESH`] and whenever a
//! token names a `kid` the set does not have — at most once per [`AT_MOST_EVERY`], so tokens with
//! made-up kids cannot make herald hammer the provider. A failed refresh keeps the last good
//! keys and logs why.
//!
//! Each key's algorithm is the key's: RS256 for RSA, ES256 for P-256, EdDSA for Ed25519 (a key
//! of another kind, or whose `alg` says otherwise, is left out).

use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::keys::PublicKey;
use crate::http::error::with_causes;

/// How often the set is fetched again regardless.
pub const REFRESH: Duration = Duration::from_secs(600);
/// Refreshes for an unknown `kid`, at most this often.
pub const AT_MOST_EVERY: Duration = Duration::from_secs(30);
/// One fetch may take this long.
const TIMEOUT: Duration = Duration::from_secs(5);

pub struct Jwks {
    url: String,
    client: reqwest::Client,
    keys: RwLock<Vec<PublicKey>>,
    /// When a token's unknown `kid` last made herald fetch.
    last_for_kid: Mutex<Option<Instant>>,
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks").field("url", &self.url).finish()
    }
}

impl Jwks {
    pub fn new(url: String) -> Result<Jwks, String> {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build an HTTP client for --jwks-url: {e}"))?;
        Ok(Jwks {
            url,
            client,
            keys: RwLock::new(Vec::new()),
            last_for_kid: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// The keys held now.
    pub fn keys(&self) -> std::sync::RwLockReadGuard<'_, Vec<PublicKey>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Fetches the set and, if it reads, puts its keys in use; the number of keys.
    pub async fn fetch(&self) -> Result<usize, String> {
        let _one_at_a_time = self.fetching.lock().await;
        let response =
            self.client.get(&self.url).send().await.map_err(|e| {
                format!("--jwks-url {}: {}", self.url, with_causes(&e.without_url()))
            })?;
        if !response.status().is_success() {
            return Err(format!(
                "--jwks-url {} answered {}",
                self.url,
                response.status()
            ));
        }
        let set: JwkSet = response
            .json()
            .await
            .map_err(|e| format!("--jwks-url {} is not a JSON Web Key Set: {e}", self.url))?;
        let keys: Vec<PublicKey> = set.keys.iter().filter_map(usable).collect();
        if keys.is_empty() {
            return Err(format!(
                "--jwks-url {} holds no RSA, P-256 or Ed25519 signing key",
                self.url
            ));
        }
        let n = keys.len();
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(n)
    }

    /// Fetches again for a token whose `kid` is not in the set, unless a fetch happened within
    /// [`AT_MOST_EVERY`].
    pub async fn refresh_for(&self, kid: &str) {
        if self.keys().iter().any(|k| k.kid == kid) {
            return;
        }
        {
            let mut last = self.last_for_kid.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| at.elapsed() < AT_MOST_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        match self.fetch().await {
            Ok(n) => tracing::info!(keys = n, %kid, "fetched the JWKS again for a new kid"),
            Err(e) => {
                tracing::warn!(error = %e, "refreshing the JWKS failed; keeping its last keys")
            }
        }
    }
}

/// A key of the set herald can verify with, its algorithm taken from the key.
fn usable(jwk: &jsonwebtoken::jwk::Jwk) -> Option<PublicKey> {
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    let declared = jwk.common.key_algorithm.map(|a| match a {
        KeyAlgorithm::RS256 => Some(Algorithm::RS256),
        KeyAlgorithm::ES256 => Some(Algorithm::ES256),
        KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
        _ => None,
    });
    if declared.is_some_and(|d| d != Some(algorithm)) {
        return None; // a key that says it is for something else
    }
    Some(PublicKey {
        kid: jwk.common.key_id.clone().unwrap_or_default(),
        algorithm,
        key: DecodingKey::from_jwk(jwk).ok()?,
    })
}
