//! Verification keys: a JWKS document turned into a lookup by `kid`, or one shared HMAC secret.
//! Keys are parsed once, when a JWKS is loaded; requests only look them up.

use std::collections::HashMap;
use std::str::FromStr;

use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{self as sig, ParsedPublicKey, RsaPublicKeyComponents};
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, errors::ErrorKind};

/// The RSA algorithms and the aws-lc-rs verification each means (as jsonwebtoken maps them).
const RSA_ALGORITHMS: [(Algorithm, &sig::RsaParameters); 6] = [
    (Algorithm::RS256, &sig::RSA_PKCS1_2048_8192_SHA256),
    (Algorithm::RS384, &sig::RSA_PKCS1_2048_8192_SHA384),
    (Algorithm::RS512, &sig::RSA_PKCS1_2048_8192_SHA512),
    (Algorithm::PS256, &sig::RSA_PSS_2048_8192_SHA256),
    (Algorithm::PS384, &sig::RSA_PSS_2048_8192_SHA384),
    (Algorithm::PS512, &sig::RSA_PSS_2048_8192_SHA512),
];

/// One key ready for verification.
#[derive(Clone)]
pub struct VerifyKey {
    /// The parsed key.
    pub decoding: DecodingKey,
    /// When the JWK names an `alg`, only that algorithm may be used with it.
    pub alg: Option<Algorithm>,
    /// An RSA key parsed once for each algorithm it may verify: jsonwebtoken parses the key
    /// again on every verification, which is a large part of an uncached token's cost.
    pub parsed: Vec<(Algorithm, Arc<ParsedPublicKey>)>,
}

impl VerifyKey {
    /// The pre-parsed key for `alg`, if this is an RSA key that may verify it.
    pub fn parsed_for(&self, alg: Algorithm) -> Option<&ParsedPublicKey> {
        self.parsed
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, k)| &**k)
    }
}

/// Parses an RSA JWK's public key once per algorithm it may be used with (`alg`, or every RSA
/// algorithm). Empty for other key types, or when aws-lc refuses the key (verification then
/// goes through jsonwebtoken, which refuses it the same way).
fn parse_rsa(jwk: &Jwk, alg: Option<Algorithm>) -> Vec<(Algorithm, Arc<ParsedPublicKey>)> {
    let AlgorithmParameters::RSA(p) = &jwk.algorithm else {
        return Vec::new();
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (Ok(n), Ok(e)) = (b64.decode(&p.n), b64.decode(&p.e)) else {
        return Vec::new();
    };
    let Ok(der) = (RsaPublicKeyComponents { n, e }).as_der() else {
        return Vec::new();
    };
    RSA_ALGORITHMS
        .iter()
        .filter(|(a, _)| alg.is_none_or(|want| want == *a))
        .filter_map(|(a, params)| {
            ParsedPublicKey::new(*params, der.as_ref())
                .ok()
                .map(|k| (*a, Arc::new(k)))
        })
        .collect()
}

/// The keys an authorizer verifies with.
#[derive(Clone, Default)]
pub struct KeySet {
    by_kid: HashMap<String, VerifyKey>,
    /// An HMAC secret used whatever the token's `kid` (only for `secret:` authorizers).
    secret: Option<VerifyKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("kids", &self.by_kid.keys().collect::<Vec<_>>())
            .field("secret", &self.secret.is_some())
            .finish()
    }
}

impl KeySet {
    /// A set holding one HMAC secret.
    pub fn from_secret(secret: &[u8]) -> KeySet {
        KeySet {
            by_kid: HashMap::new(),
            secret: Some(VerifyKey {
                decoding: DecodingKey::from_secret(secret),
                alg: None,
                parsed: Vec::new(),
            }),
        }
    }

    /// Parses a JWKS document (`{"keys":[...]}`). Keys marked `use: enc`, keys without `kid`,
    /// symmetric (`oct`) keys and keys of unsupported types are skipped, so one odd key does not
    /// take the others down. Refuses a document that is not a JWKS or holds no usable key.
    pub fn from_jwks(json: &[u8]) -> Result<KeySet, String> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc =
            serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut by_kid = HashMap::new();
        for v in doc.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(v) else {
                continue;
            };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let Ok(decoding) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            // An HMAC key never comes from a published key set: that is how a public key
            // would end up used as an HMAC secret.
            if decoding.family() == jsonwebtoken::AlgorithmFamily::Hmac {
                continue;
            }
            let alg = match jwk.common.key_algorithm {
                Some(ka) => match Algorithm::from_str(&ka.to_string()) {
                    Ok(a) if a.family() == decoding.family() => Some(a),
                    _ => continue,
                },
                None => None,
            };
            let parsed = parse_rsa(&jwk, alg);
            by_kid.insert(
                kid,
                VerifyKey {
                    decoding,
                    alg,
                    parsed,
                },
            );
        }
        if by_kid.is_empty() {
            return Err("JWKS holds no usable signing key".to_string());
        }
        Ok(KeySet {
            by_kid,
            secret: None,
        })
    }

    /// The key for a token with this header, if the set has one.
    pub fn find(&self, kid: Option<&str>) -> Option<&VerifyKey> {
        if let Some(k) = &self.secret {
            return Some(k);
        }
        kid.and_then(|k| self.by_kid.get(k))
    }

    /// Number of keys (for logs).
    pub fn len(&self) -> usize {
        self.by_kid.len() + usize::from(self.secret.is_some())
    }

    /// Whether the set has no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a jsonwebtoken error means "the token is not well-formed" (as opposed to a bad
/// signature).
pub fn is_malformed(kind: &ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::InvalidToken
            | ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_)
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::InvalidClaimFormat(_)
            | ErrorKind::MissingRequiredClaim(_)
    )
}
