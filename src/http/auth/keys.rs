//! Public keys for JWTs an identity provider (or an app with a private key) signs: one PEM file
//! each (`--jwt-public-key`, repeatable, for rotation). The algorithm is the key's — RS256 for an
//! RSA key, ES256 for a P-256 key, EdDSA for an Ed25519 key — never the token's: a token whose
//! header names another algorithm is refused, so `none` and "HS256 with the public key as the
//! secret" cannot get through.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey};

/// One verifying key.
#[derive(Clone)]
pub struct PublicKey {
    /// Matched against a token's `kid`: the file's name without its extension.
    pub kid: String,
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

impl PublicKey {
    /// Reads a PEM public key (SPKI `PUBLIC KEY`, or PKCS#1 `RSA PUBLIC KEY`); the error is one
    /// line naming the file and what is wrong.
    pub fn load(path: &Path) -> Result<PublicKey, String> {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read the public key {}: {e}", path.display()))?;
        let kid = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        PublicKey::from_pem(&pem, kid)
            .map_err(|why| format!("the public key {}: {why}", path.display()))
    }

    /// A key from PEM text, its kind (and so its algorithm) read from the key itself.
    pub fn from_pem(pem: &[u8], kid: String) -> Result<PublicKey, String> {
        let text = String::from_utf8_lossy(pem);
        if text.contains("PRIVATE KEY") {
            return Err(
                "is a private key; give herald the public key (openssl pkey -pubout)".into(),
            );
        }
        let (algorithm, key) = if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            (Algorithm::RS256, key)
        } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            (Algorithm::ES256, key)
        } else if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            (Algorithm::EdDSA, key)
        } else {
            return Err(
                "is not a PEM public key of a kind herald verifies (RSA, P-256 or Ed25519)".into(),
            );
        };
        Ok(PublicKey {
            kid,
            algorithm,
            key,
        })
    }
}
