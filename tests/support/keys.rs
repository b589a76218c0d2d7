//! Test-time signing keys and token minting. Nothing is committed: every key is generated when
//! the test process first asks for it (once per process, since RSA generation is slow in debug
//! builds), and the matching public JWK is derived from the same key pair.

use std::sync::OnceLock;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The public half of a test key, in the form its JWK needs.
#[derive(Clone)]
enum Public {
    /// Big-endian modulus and exponent, no leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// P-256 affine coordinates, 32 bytes each.
    Ec { x: Vec<u8>, y: Vec<u8> },
    /// The 32-byte Ed25519 public key.
    Ed { x: Vec<u8> },
}

/// A signing key pair generated at run time.
#[derive(Clone)]
pub struct TestKey {
    /// The `kid` put in token headers and in the JWK.
    pub kid: String,
    /// The algorithm tokens are signed with.
    pub alg: Algorithm,
    /// The private key, as jsonwebtoken signs with it.
    pub encoding: EncodingKey,
    /// The public key as a DER `SubjectPublicKeyInfo` (RSA only; empty otherwise).
    pub public_spki_der: Vec<u8>,
    /// The public key as a DER PKCS#1 `RSAPublicKey` (RSA only; empty otherwise).
    pub public_pkcs1_der: Vec<u8>,
    public: Public,
}

impl std::fmt::Debug for TestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish()
    }
}

fn b64u(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl TestKey {
    /// A fresh RSA 2048 key (RS256).
    pub fn generate_rsa(kid: &str) -> TestKey {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .expect("RSA key generation");
        let pkcs8 = pair.as_der().expect("PKCS#8 encoding");
        // jsonwebtoken's aws-lc backend signs with `RsaKeyPair::from_der`, which takes the
        // PKCS#1 `RSAPrivateKey` that PKCS#8 wraps.
        let pkcs1 = pkcs8_inner_key(pkcs8.as_ref()).expect("PKCS#8 holds a private key");
        let public = pair.public_key();
        let n = public.modulus().big_endian_without_leading_zero().to_vec();
        let e = public.exponent().big_endian_without_leading_zero().to_vec();
        let spki = public.as_der().expect("SPKI encoding");
        TestKey {
            kid: kid.to_string(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(pkcs1),
            public_spki_der: spki.as_ref().to_vec(),
            public_pkcs1_der: public.as_ref().to_vec(),
            public: Public::Rsa { n, e },
        }
    }

    /// A fresh EC P-256 key (ES256).
    pub fn generate_ec(kid: &str) -> TestKey {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("EC key generation");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .expect("EC key parses");
        // Uncompressed point: 0x04 || x || y.
        let point = pair.public_key().as_ref();
        assert_eq!(point.len(), 65, "uncompressed P-256 point");
        TestKey {
            kid: kid.to_string(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            public_spki_der: Vec::new(),
            public_pkcs1_der: Vec::new(),
            public: Public::Ec {
                x: point[1..33].to_vec(),
                y: point[33..].to_vec(),
            },
        }
    }

    /// A fresh Ed25519 key (EdDSA).
    pub fn generate_ed(kid: &str) -> TestKey {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("Ed25519 key generation");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("Ed25519 key parses");
        TestKey {
            kid: kid.to_string(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            public_spki_der: Vec::new(),
            public_pkcs1_der: Vec::new(),
            public: Public::Ed {
                x: pair.public_key().as_ref().to_vec(),
            },
        }
    }

    /// The same key pair under another `kid`.
    pub fn with_kid(&self, kid: &str) -> TestKey {
        TestKey {
            kid: kid.to_string(),
            ..self.clone()
        }
    }

    /// The public JWK, with `kid`, `alg` and `use: sig`.
    pub fn jwk(&self) -> Value {
        let alg = match self.alg {
            Algorithm::RS256 => "RS256",
            Algorithm::ES256 => "ES256",
            Algorithm::EdDSA => "EdDSA",
            other => panic!("no JWK for {other:?}"),
        };
        let mut jwk = match &self.public {
            Public::Rsa { n, e } => json!({"kty": "RSA", "n": b64u(n), "e": b64u(e)}),
            Public::Ec { x, y } => json!({"kty": "EC", "crv": "P-256", "x": b64u(x), "y": b64u(y)}),
            Public::Ed { x } => json!({"kty": "OKP", "crv": "Ed25519", "x": b64u(x)}),
        };
        jwk["kid"] = json!(self.kid);
        jwk["alg"] = json!(alg);
        jwk["use"] = json!("sig");
        jwk
    }

    /// The public key as PEM text (`-----BEGIN PUBLIC KEY-----`, RSA only).
    pub fn public_pem(&self) -> String {
        assert!(
            !self.public_spki_der.is_empty(),
            "PEM is only kept for RSA keys"
        );
        let b64 = STANDARD.encode(&self.public_spki_der);
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }
}

/// Reads one DER TLV: (tag, contents, rest).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, after) = rest.split_at(count);
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    if rest.len() < len {
        return None;
    }
    let (contents, after) = rest.split_at(len);
    Some((tag, contents, after))
}

/// The `privateKey` OCTET STRING of a PKCS#8 `PrivateKeyInfo`
/// (SEQUENCE { version INTEGER, algorithm SEQUENCE, privateKey OCTET STRING, ... }).
fn pkcs8_inner_key(pkcs8: &[u8]) -> Option<&[u8]> {
    let (0x30, info, _) = der_tlv(pkcs8)? else {
        return None;
    };
    let (0x02, _, rest) = der_tlv(info)? else {
        return None;
    };
    let (0x30, _, rest) = der_tlv(rest)? else {
        return None;
    };
    let (0x04, key, _) = der_tlv(rest)? else {
        return None;
    };
    Some(key)
}

/// The first RSA key (kid `rsa-1`).
pub fn rsa_key() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(|| TestKey::generate_rsa("rsa-1"))
}

/// A second, unrelated RSA key (kid `rsa-2`), for rotation and impostor tests.
pub fn rsa_key2() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(|| TestKey::generate_rsa("rsa-2"))
}

/// An EC P-256 key (kid `ec-1`).
pub fn ec_key() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(|| TestKey::generate_ec("ec-1"))
}

/// An Ed25519 key (kid `ed-1`).
pub fn ed_key() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(|| TestKey::generate_ed("ed-1"))
}

/// A JWKS document (`{"keys":[...]}`) publishing these keys.
pub fn jwks(keys: &[&TestKey]) -> String {
    let keys: Vec<Value> = keys.iter().map(|k| k.jwk()).collect();
    json!({ "keys": keys }).to_string()
}

/// A token signed by `key`, with its `kid` and `alg` in the header.
pub fn mint(key: &TestKey, claims: Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    mint_with_header(header, key, claims)
}

/// A token signed by `key` with the given header (whose `alg` must suit the key).
pub fn mint_with_header(header: Header, key: &TestKey, claims: Value) -> String {
    jsonwebtoken::encode(&header, &claims, &key.encoding).expect("token signs")
}

/// An HS256 token signed with `secret`, with `kid` when given.
pub fn mint_hs256(secret: &[u8], kid: Option<&str>, claims: Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret)).expect("token signs")
}

/// base64url (no padding) of a JSON value's text, for hand-built tokens.
pub fn b64_json(value: &Value) -> String {
    b64u(value.to_string().as_bytes())
}

/// base64url (no padding) of raw bytes, for hand-built tokens.
pub fn b64_bytes(bytes: &[u8]) -> String {
    b64u(bytes)
}

/// A token made of arbitrary header and payload parts, correctly signed by `key`, so that only
/// the parts' content can be wrong.
pub fn sign_parts(key: &TestKey, header_b64: &str, payload_b64: &str) -> String {
    let message = format!("{header_b64}.{payload_b64}");
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key.encoding, key.alg).expect("signs");
    format!("{message}.{signature}")
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Claims of a valid Cognito-style access token: `exp` in an hour, `iat` now,
/// `token_use: access`, `sub`, `client_id`, a fresh `jti`, `version: 2`.
pub fn good_claims(issuer: &str, client_id: &str, scope: &str) -> Value {
    let now = now();
    json!({
        "iss": issuer,
        "sub": format!("user-of-{client_id}"),
        "client_id": client_id,
        "token_use": "access",
        "scope": scope,
        "exp": now + 3600,
        "iat": now,
        "auth_time": now,
        "jti": uuid::Uuid::new_v4().to_string(),
        "version": 2,
    })
}
