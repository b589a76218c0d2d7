//! The JWT authorizer end to end: real keys generated at run time, real tokens, and for remote
//! key sets a real issuer on a loopback port. Every test asserts the exact `TokenError` a client
//! would be refused with, or the identity the upstream would be told about.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, Header};
use serde_json::{Value, json};
use tollgate::auth::claims::ClaimRules;
use tollgate::auth::jwks::{FETCH_TIMEOUT, JwksSource, Loaded, MIN_REFETCH_INTERVAL, RemoteJwks};
use tollgate::auth::keys::KeySet;
use tollgate::auth::{
    CurrentClients, Identity, JwtAuthorizer, JwtSettings, KeySource, TokenCache, TokenError,
};
use tollgate::fetch::Fetcher;
use tollgate::metrics::Metrics;

use crate::support::jwks_server::{JwksServer, Mode, refused_base};
use crate::support::keys::{
    TestKey, b64_bytes, b64_json, ec_key, ed_key, good_claims, jwks, mint, mint_hs256,
    mint_with_header, now, rsa_key, rsa_key2, sign_parts,
};

const ISSUER: &str = "https://idp.tollgate.test/pool-1";
const CLIENT: &str = "client-abc";
const SCOPES: &str = "orders/read orders/write";
const NAME: &str = "test";
/// Longest any wait on the remote issuer may take before the test gives up.
const WAIT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn rules(issuer: &str) -> ClaimRules {
    ClaimRules {
        issuer: issuer.to_string(),
        audience: vec![CLIENT.to_string()],
        token_use: Some("access".to_string()),
        leeway: 30,
    }
}

fn settings(name: &str, issuer: &str, algorithms: &[Algorithm]) -> JwtSettings {
    JwtSettings {
        name: name.to_string(),
        header: AUTHORIZATION,
        algorithms: algorithms.to_vec(),
        rules: rules(issuer),
    }
}

fn static_loaded(keys: KeySet) -> KeySource {
    KeySource::Static(Arc::new(Loaded {
        keys,
        generation: 1,
    }))
}

fn static_source(keys: &[&TestKey]) -> KeySource {
    static_loaded(KeySet::from_jwks(jwks(keys).as_bytes()).expect("test JWKS loads"))
}

fn authorizer(settings: JwtSettings, keys: KeySource, metrics: &Metrics) -> JwtAuthorizer {
    JwtAuthorizer::new(settings, keys, TokenCache::new(1000), metrics).expect("authorizer builds")
}

/// An authorizer over a static JWKS of `keys`, allowing `algorithms`, for issuer [`ISSUER`].
fn static_auth(algorithms: &[Algorithm], keys: &[&TestKey]) -> JwtAuthorizer {
    authorizer(
        settings(NAME, ISSUER, algorithms),
        static_source(keys),
        &Metrics::new(),
    )
}

fn remote_jwks(server: &JwksServer, metrics: &Arc<Metrics>, background: bool) -> Arc<RemoteJwks> {
    let remote = RemoteJwks::new(
        JwksSource::Discovery {
            issuer: server.base(),
        },
        NAME,
        Fetcher::new(),
        metrics.clone(),
    );
    if background {
        remote.activate();
    }
    remote
}

fn remote_auth(issuer: &str, remote: &Arc<RemoteJwks>, metrics: &Metrics) -> JwtAuthorizer {
    authorizer(
        settings(NAME, issuer, &[Algorithm::RS256]),
        KeySource::Remote(remote.clone()),
        metrics,
    )
}

async fn accepted(auth: &JwtAuthorizer, token: &str) -> Arc<Identity> {
    match auth.verify(token).await {
        Ok(id) => id,
        Err(e) => panic!("token refused with {e:?}, expected it to be accepted"),
    }
}

async fn refused(auth: &JwtAuthorizer, token: &str) -> TokenError {
    match auth.verify(token).await {
        Ok(id) => panic!("token accepted as {id:?}, expected a refusal"),
        Err(e) => e,
    }
}

fn good() -> Value {
    good_claims(ISSUER, CLIENT, SCOPES)
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

fn without(mut claims: Value, name: &str) -> Value {
    claims.as_object_mut().expect("claims object").remove(name);
    claims
}

/// `tollgate_token_cache_total{authorizer, result}` as rendered on `/metrics`.
fn cache_count(metrics: &Metrics, authorizer: &str, result: &str) -> u64 {
    let prefix =
        format!("tollgate_token_cache_total{{authorizer=\"{authorizer}\",result=\"{result}\"}} ");
    metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|v| v.trim().parse().expect("counter value"))
        .unwrap_or(0)
}

/// `tollgate_jwks_refresh_total{authorizer="test", result}`.
fn refreshes(metrics: &Metrics, result: &str) -> u64 {
    metrics
        .jwks_refresh
        .with_label_values(&[NAME, result])
        .get()
}

/// Polls `probe` until it yields a value, failing the test after `timeout`.
async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

fn upstream_header<'a>(id: &'a Identity, name: &str) -> Option<&'a str> {
    id.upstream_headers
        .iter()
        .find(|(k, _)| k.as_str() == name)
        .map(|(_, v)| v.to_str().expect("ASCII header value"))
}

// ---------------------------------------------------------------------------------------------
// Good tokens and algorithms
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rs256_token_yields_identity_and_upstream_headers() {
    let auth = static_auth(&[Algorithm::RS256], &[rsa_key()]);
    let claims = good();
    let id = accepted(&auth, &mint(rsa_key(), claims.clone())).await;

    assert_eq!(id.subject.as_deref(), Some("user-of-client-abc"));
    assert_eq!(id.client_id.as_deref(), Some(CLIENT));
    let scopes: Vec<&str> = id.scopes.iter().map(|s| &**s).collect();
    assert_eq!(scopes, ["orders/read", "orders/write"]);
    assert_eq!(id.expires_at, claims["exp"].as_u64().unwrap());
    assert_eq!(id.key_generation, 1);
    assert!(id.has_any_scope(&["orders/write".into()]));
    assert!(!id.has_any_scope(&["admin".into()]));

    assert_eq!(
        upstream_header(&id, "x-tollgate-principal"),
        Some("user-of-client-abc")
    );
    assert_eq!(upstream_header(&id, "x-tollgate-client-id"), Some(CLIENT));
    assert_eq!(
        upstream_header(&id, "x-tollgate-scopes"),
        Some("orders/read orders/write")
    );
    assert_eq!(upstream_header(&id, "x-tollgate-authorizer"), Some(NAME));
    assert_eq!(id.upstream_headers.len(), 4);
}

#[tokio::test]
async fn es256_and_eddsa_tokens_accepted_when_allowed() {
    let auth = static_auth(
        &[Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA],
        &[rsa_key(), ec_key(), ed_key()],
    );
    for key in [rsa_key(), ec_key(), ed_key()] {
        let id = accepted(&auth, &mint(key, good())).await;
        assert_eq!(id.client_id.as_deref(), Some(CLIENT), "{key:?}");
        assert_eq!(id.scopes.len(), 2, "{key:?}");
    }
    // A token signed by the EC key but claiming the RSA key's kid is refused on the key's
    // algorithm, not tried against it.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(rsa_key().kid.clone());
    let token = mint_with_header(header, ec_key(), good());
    assert_eq!(refused(&auth, &token).await, TokenError::BadAlgorithm);
}

#[tokio::test]
async fn es256_and_eddsa_tokens_refused_when_not_allowed() {
    // The key set publishes all three keys; only RS256 is allowed.
    let auth = static_auth(&[Algorithm::RS256], &[rsa_key(), ec_key(), ed_key()]);
    assert_eq!(
        refused(&auth, &mint(ec_key(), good())).await,
        TokenError::BadAlgorithm
    );
    assert_eq!(
        refused(&auth, &mint(ed_key(), good())).await,
        TokenError::BadAlgorithm
    );
    accepted(&auth, &mint(rsa_key(), good())).await;
}

// ---------------------------------------------------------------------------------------------
// Token extraction
// ---------------------------------------------------------------------------------------------

fn headers(name: HeaderName, value: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(name, HeaderValue::from_str(value).expect("header value"));
    h
}

#[tokio::test]
async fn token_extraction_from_headers() {
    let auth = static_auth(&[Algorithm::RS256], &[rsa_key()]);
    let token = mint(rsa_key(), good());

    assert_eq!(
        auth.token(&headers(AUTHORIZATION, &token)),
        Some(token.as_str())
    );
    for value in [
        format!("Bearer {token}"),
        format!("bearer {token}"),
        format!("BEARER   {token}  "),
    ] {
        assert_eq!(
            auth.token(&headers(AUTHORIZATION, &value)),
            Some(token.as_str()),
            "{value:?}"
        );
    }
    assert_eq!(auth.token(&headers(AUTHORIZATION, "")), None);
    assert_eq!(auth.token(&headers(AUTHORIZATION, "   ")), None);
    assert_eq!(auth.token(&HeaderMap::new()), None);

    // What is extracted verifies.
    let request = headers(AUTHORIZATION, &format!("Bearer {token}"));
    accepted(&auth, auth.token(&request).unwrap()).await;

    // A custom header: read there, and only there.
    let custom = HeaderName::from_static("x-access-token");
    let mut s = settings(NAME, ISSUER, &[Algorithm::RS256]);
    s.header = custom.clone();
    let auth = authorizer(s, static_source(&[rsa_key()]), &Metrics::new());
    assert_eq!(
        auth.token(&headers(custom.clone(), &token)),
        Some(token.as_str())
    );
    assert_eq!(
        auth.token(&headers(custom, &format!("Bearer {token}"))),
        Some(token.as_str())
    );
    assert_eq!(
        auth.token(&headers(AUTHORIZATION, &format!("Bearer {token}"))),
        None
    );
}

/// `token()` documents "`None` when absent or empty"; a `Bearer` scheme with nothing after it
/// is an empty token, but the scheme word itself is returned as the token (see report).
#[tokio::test]
async fn bearer_scheme_without_token_is_no_token() {
    let auth = static_auth(&[Algorithm::RS256], &[rsa_key()]);
    assert_eq!(auth.token(&headers(AUTHORIZATION, "Bearer")), None);
    assert_eq!(auth.token(&headers(AUTHORIZATION, "Bearer ")), None);
    assert_eq!(auth.token(&headers(AUTHORIZATION, "bearer   ")), None);
}

// ---------------------------------------------------------------------------------------------
// Malformed input
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn token_not_three_parts_is_malformed() {
    let auth = static_auth(&[Algorithm::RS256], &[rsa_key()]);
    let token = mint(rsa_key(), good());
    let (head_payload, _signature) = token.rsplit_once('.').unwrap();
    for bad in [
        String::new(),
        "abc".to_string(),
        head_payload.to_string(),
        format!("{token}.AAAA"),
        format!("{token}."),
        "..".to_string(),
    ] {
        assert_eq!(refused(&auth, &bad).await, TokenError::Malformed, "{bad:?}");
    }
}

#[tokio::test]
async fn token_with_bad_base64_is_malformed() {
    let auth = static_auth(&[Algorithm::RS256], &[rsa_key()]);
    let token = mint(rsa_key(), good());
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    assert_eq!(refused(&auth, "!!!.###.$$$").await, TokenError::Malformed);
    // Header or signature replaced by something that is not base64url.
    for i in [0, 2] {
        let saved = std::mem::replace(&mut parts[i], "*not*base64*".to_string());
        let bad = parts.join(".");
        assert_eq!(
            refused(&auth, &bad).await,
            TokenError::Malformed,
            "part {i}"
        );
        parts[i] = saved;
    }
    // A payload that is not base64url but correctly signed (the signature covers the encoded
    // text, and is checked first).
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": rsa_key().kid});
    let bad = sign_parts(rsa_key(), &b64_json(&header), "*not*base64*");
    assert_eq!(refused(&auth, &bad).await, TokenError::Malformed);
    // The same payload under a signature made for another payload fails on the signature.
    parts[1] = "*not*base64*".to_string();
    assert_eq!(
        refused(&auth, &parts.join(".")).await,
        TokenError::BadSignature
    );
}

#[tokio::test]
async fn token_header_not_json_is_malformed() {
    let auth = static_auth(&[Algorithm::RS256], &[rsa_key()]);
    let token = sign_parts(
        rsa_key(),
        &b64_bytes(b"this is not json"),
        &b64_json(&good()),
    );
    assert_eq!(refused(&auth, &token).await, TokenError::Malformed);
}

#[tokio::test]
async fn token_payload_not_json_is_malformed() {
    let auth = static_auth(&[Algorithm::RS256], &[rsa_key()]);
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": rsa_key().kid});
    // Correctly signed, so only the payload's content is at fault.
    for payload in [&b"this is not json"[..], b"[1,2,3", b""] {
        let token = sign_parts(rsa_key(), &b64_json(&header), &b64_bytes(payload));
        assert_eq!(
            refused(&auth, &token).await,
            TokenError::Malformed,
            "{}",
            String::from_utf8_lossy(payload)
        );
    }
}

#[tokio::test]
async fn oversized_token_is_malformed() {
    let auth = static_auth(&[Algorithm::RS256], &[rsa_key()]);
    // Correctly signed and otherwise valid: refused for its size alone.
    let huge = mint(rsa_key(), with(good(), "pad", json!("x".repeat(16 * 1024))));
    assert!(huge.len() > 16 * 1024);
    assert_eq!(refused(&auth, &huge).await, TokenError::Malformed);
    // A large but acceptable token passes.
    let big = mint(rsa_key(), with(good(), "pad", json!("x".repeat(5 * 1024))));
    assert!(
        big.len() > 6 * 1024 && big.len() < 8 * 1024,
        "{}",
        big.len()
    );
    accepted(&auth, &big).await;
}

#[tokio::test]
async fn alg_none_is_refused() {
    let auth = static_auth(&[Algorithm::RS256], &[rsa_key()]);
    for alg in ["none", "None", "NONE"] {
        let header = json!({"alg": alg, "typ": "JWT", "kid": rsa_key().kid});
        let token = format!("{}.{}.", b64_json(&header), b64_json(&good()));
        assert_eq!(
            refused(&auth, &token).await,
            TokenError::BadAlgorithm,
            "{alg}"
        );
    }
    // With a signature part copied from a real token it is still refused.
    let real = mint(rsa_key(), good());
    let signature = real.rsplit_once('.').unwrap().1;
    let header = json!({"alg": "none", "typ": "JWT", "kid": rsa_key().kid});
    let token = format!("{}.{}.{signature}", b64_json(&header), b64_json(&good()));
    assert_eq!(refused(&auth, &token).await, TokenError::BadAlgorithm);
}

/// The RSA public key, in every form an attacker might guess the HMAC secret to be.
fn public_key_secrets() -> Vec<(&'static str, Vec<u8>)> {
    let k = rsa_key();
    vec![
        ("SPKI DER", k.public_spki_der.clone()),
        ("PKCS#1 DER", k.public_pkcs1_der.clone()),
        ("PEM text", k.public_pem().into_bytes()),
    ]
}

#[tokio::test]
async fn hs256_signed_with_public_key_refused_by_rs256_authorizer() {
    let auth = static_auth(&[Algorithm::RS256], &[rsa_key()]);
    for (form, secret) in public_key_secrets() {
        let token = mint_hs256(&secret, Some(&rsa_key().kid), good());
        assert_eq!(
            refused(&auth, &token).await,
            TokenError::BadAlgorithm,
            "{form}"
        );
    }
}

#[tokio::test]
async fn hs256_signed_with_public_key_refused_when_hs256_also_allowed() {
    let algorithms = [Algorithm::RS256, Algorithm::HS256];
    let auth = static_auth(&algorithms, &[rsa_key()]);
    // The same JWKS with the key's `alg` removed: the key's family alone must refuse HS256.
    let mut jwk = rsa_key().jwk();
    jwk.as_object_mut().unwrap().remove("alg");
    let no_alg = json!({"keys": [jwk]}).to_string();
    let auth_no_alg = authorizer(
        settings(NAME, ISSUER, &algorithms),
        static_loaded(KeySet::from_jwks(no_alg.as_bytes()).unwrap()),
        &Metrics::new(),
    );
    for (form, secret) in public_key_secrets() {
        let token = mint_hs256(&secret, Some(&rsa_key().kid), good());
        assert_eq!(
            refused(&auth, &token).await,
            TokenError::BadAlgorithm,
            "{form}"
        );
        assert_eq!(
            refused(&auth_no_alg, &token).await,
            TokenError::BadAlgorithm,
            "{form}, JWK without alg"
        );
        let token = mint_hs256(&secret, None, good());
        assert_eq!(
            refused(&auth, &token).await,
            TokenError::UnknownKey,
            "{form}, no kid"
        );
    }
    // A symmetric key published in the JWKS is never used, even under its own kid.
    let with_oct = json!({"keys": [
        rsa_key().jwk(),
        {"kty": "oct", "kid": "shared", "alg": "HS256", "use": "sig", "k": b64_bytes(b"shared-secret")},
    ]})
    .to_string();
    let auth = authorizer(
        settings(NAME, ISSUER, &algorithms),
        static_loaded(KeySet::from_jwks(with_oct.as_bytes()).unwrap()),
        &Metrics::new(),
    );
    let token = mint_hs256(b"shared-secret", Some("shared"), good());
    assert_eq!(refused(&auth, &token).await, TokenError::UnknownKey);
    accepted(&auth, &mint(rsa_key(), good())).await;
}

// ---------------------------------------------------------------------------------------------
// Keys and signatures
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_or_missing_kid_is_unknown_key() {
    let auth = static_auth(&[Algorithm::RS256], &[rsa_key()]);
    assert_eq!(
        refused(&auth, &mint(rsa_key2(), good())).await,
        TokenError::UnknownKey
    );
    let token = mint_with_header(Header::new(Algorithm::RS256), rsa_key(), good());
    assert_eq!(refused(&auth, &token).await, TokenError::UnknownKey);
}

#[tokio::test]
async fn signature_from_another_key_with_the_same_kid_is_bad_signature() {
    let auth = static_auth(&[Algorithm::RS256], &[rsa_key()]);
    let impostor = rsa_key2().with_kid(&rsa_key().kid);
    assert_eq!(
        refused(&auth, &mint(&impostor, good())).await,
        TokenError::BadSignature
    );
    // A genuine token with its payload swapped keeps a signature that no longer matches.
    let genuine = mint(rsa_key(), good());
    let parts: Vec<&str> = genuine.split('.').collect();
    let forged_payload = b64_json(&with(good(), "scope", json!("admin")));
    let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    assert_eq!(refused(&auth, &forged).await, TokenError::BadSignature);
}

// ---------------------------------------------------------------------------------------------
// Claim rules
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn expired_token_is_refused() {
    let auth = static_auth(&[Algorithm::RS256], &[rsa_key()]);
    let t = now();
    let expired = with(with(good(), "exp", json!(t - 3600)), "iat", json!(t - 7200));
    assert_eq!(
        refused(&auth, &mint(rsa_key(), expired)).await,
        TokenError::Expired
    );
    // Just past `exp` but inside the 30 s leeway: still accepted.
    let skewed = with(good(), "exp", json!(t - 5));
    accepted(&auth, &mint(rsa_key(), skewed)).await;
    // No `exp` at all is not a valid access token.
    assert_eq!(
        refused(&auth, &mint(rsa_key(), without(good(), "exp"))).await,
        TokenError::BadClaim
    );
}

#[tokio::test]
async fn nbf_in_the_future_is_not_yet_valid() {
    let auth = static_auth(&[Algorithm::RS256], &[rsa_key()]);
    let token = mint(rsa_key(), with(good(), "nbf", json!(now() + 600)));
    assert_eq!(refused(&auth, &token).await, TokenError::NotYetValid);
    let past = mint(rsa_key(), with(good(), "nbf", json!(now() - 10)));
    accepted(&auth, &past).await;
}

#[tokio::test]
async fn iat_in_the_future_is_not_yet_valid() {
    let auth = static_auth(&[Algorithm::RS256], &[rsa_key()]);
    let token = mint(rsa_key(), with(good(), "iat", json!(now() + 600)));
    assert_eq!(refused(&auth, &token).await, TokenError::NotYetValid);
}

#[tokio::test]
async fn wrong_issuer_is_refused() {
    let auth = static_auth(&[Algorithm::RS256], &[rsa_key()]);
    for claims in [
        good_claims("https://evil.example/pool-1", CLIENT, SCOPES),
        good_claims(&format!("{ISSUER}/"), CLIENT, SCOPES),
        without(good(), "iss"),
    ] {
        assert_eq!(
            refused(&auth, &mint(rsa_key(), claims.clone())).await,
            TokenError::WrongIssuer,
            "{claims}"
        );
    }
}

#[tokio::test]
async fn wrong_audience_is_refused() {
    let auth = static_auth(&[Algorithm::RS256], &[rsa_key()]);
    // `aud` present and wrong: refused even though `client_id` is right.
    let token = mint(rsa_key(), with(good(), "aud", json!("someone-else")));
    assert_eq!(refused(&auth, &token).await, TokenError::WrongAudience);
    let token = mint(rsa_key(), with(good(), "aud", json!(["a", "b"])));
    assert_eq!(refused(&auth, &token).await, TokenError::WrongAudience);
    // No `aud`, wrong `client_id`.
    let token = mint(rsa_key(), good_claims(ISSUER, "someone-else", SCOPES));
    assert_eq!(refused(&auth, &token).await, TokenError::WrongAudience);
    // No `aud`, no `client_id`.
    let token = mint(rsa_key(), without(good(), "client_id"));
    assert_eq!(refused(&auth, &token).await, TokenError::WrongAudience);
    // Right `aud` (with another client's `client_id`) passes.
    let claims = with(
        good_claims(ISSUER, "someone-else", SCOPES),
        "aud",
        json!(["x", CLIENT]),
    );
    accepted(&auth, &mint(rsa_key(), claims)).await;
}

#[tokio::test]
async fn wrong_token_use_is_refused() {
    let auth = static_auth(&[Algorithm::RS256], &[rsa_key()]);
    let token = mint(rsa_key(), with(good(), "token_use", json!("id")));
    assert_eq!(refused(&auth, &token).await, TokenError::WrongTokenUse);
    let token = mint(rsa_key(), without(good(), "token_use"));
    assert_eq!(refused(&auth, &token).await, TokenError::WrongTokenUse);
}

#[tokio::test]
async fn scope_of_the_wrong_type_is_bad_claim() {
    let auth = static_auth(&[Algorithm::RS256], &[rsa_key()]);
    for scope in [
        json!(42),
        json!(["orders/read"]),
        json!({"a": 1}),
        json!(true),
    ] {
        let token = mint(rsa_key(), with(good(), "scope", scope.clone()));
        assert_eq!(
            refused(&auth, &token).await,
            TokenError::BadClaim,
            "{scope}"
        );
    }
    let token = mint(rsa_key(), with(good(), "scp", json!([1, 2])));
    assert_eq!(refused(&auth, &token).await, TokenError::BadClaim);
}

// ---------------------------------------------------------------------------------------------
// HMAC secret authorizer
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn hs256_secret_authorizer() {
    const SECRET: &[u8] = b"a-32-byte-shared-secret-for-test";
    let auth = authorizer(
        settings(NAME, ISSUER, &[Algorithm::HS256]),
        static_loaded(KeySet::from_secret(SECRET)),
        &Metrics::new(),
    );
    let id = accepted(&auth, &mint_hs256(SECRET, None, good())).await;
    assert_eq!(id.client_id.as_deref(), Some(CLIENT));
    accepted(&auth, &mint_hs256(SECRET, Some("any-kid"), good())).await;

    assert_eq!(
        refused(&auth, &mint_hs256(b"another-secret", None, good())).await,
        TokenError::BadSignature
    );
    let claims = with(good(), "aud", json!("someone-else"));
    assert_eq!(
        refused(&auth, &mint_hs256(SECRET, None, claims)).await,
        TokenError::WrongAudience
    );
    assert_eq!(
        refused(&auth, &mint(rsa_key(), good())).await,
        TokenError::BadAlgorithm
    );
}

// ---------------------------------------------------------------------------------------------
// Verified-token cache
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_token_is_cached_when_it_comes_back_and_then_served_from_the_cache() {
    let metrics = Metrics::new();
    let auth = authorizer(
        settings(NAME, ISSUER, &[Algorithm::RS256]),
        static_source(&[rsa_key()]),
        &metrics,
    );
    let token = mint(rsa_key(), good());
    // Seen once: verified, not stored (a token that never comes back costs no insertion).
    let first = accepted(&auth, &token).await;
    assert_eq!(cache_count(&metrics, NAME, "hit"), 0);
    assert_eq!(cache_count(&metrics, NAME, "miss"), 1);
    let second = accepted(&auth, &token).await;
    assert_eq!(cache_count(&metrics, NAME, "hit"), 0);
    assert_eq!(cache_count(&metrics, NAME, "miss"), 2);
    assert!(
        !Arc::ptr_eq(&first, &second),
        "the second verification ran again"
    );
    // Seen twice: stored, and served from then on.
    let third = accepted(&auth, &token).await;
    let fourth = accepted(&auth, &token).await;
    assert_eq!(cache_count(&metrics, NAME, "hit"), 2);
    assert_eq!(cache_count(&metrics, NAME, "miss"), 2);
    assert!(
        Arc::ptr_eq(&second, &third) && Arc::ptr_eq(&third, &fourth),
        "the cached identity is served"
    );

    // Another token is a miss; refusals are never cached, however often they come.
    accepted(&auth, &mint(rsa_key(), good())).await;
    let bad = mint(
        rsa_key(),
        good_claims("https://evil.example", CLIENT, SCOPES),
    );
    for _ in 0..3 {
        assert_eq!(refused(&auth, &bad).await, TokenError::WrongIssuer);
    }
    assert_eq!(cache_count(&metrics, NAME, "hit"), 2);
    assert_eq!(cache_count(&metrics, NAME, "miss"), 6);
}

#[tokio::test]
async fn tokens_seen_once_take_no_room_in_the_cache() {
    let metrics = Metrics::new();
    let auth = authorizer(
        settings(NAME, ISSUER, &[Algorithm::RS256]),
        static_source(&[rsa_key()]),
        &metrics,
    );
    for _ in 0..20 {
        accepted(&auth, &mint(rsa_key(), good())).await;
    }
    assert_eq!(auth.cached_tokens(), 0);
    let token = mint(rsa_key(), good());
    accepted(&auth, &token).await;
    accepted(&auth, &token).await;
    assert_eq!(
        auth.cached_tokens(),
        1,
        "the token that came back is stored"
    );
}

/// `TokenCache` is `Clone` and handed to `JwtAuthorizer::new`, so one cache can serve several
/// authorizers (or an authorizer and its replacement after a config reload). Entries are keyed
/// by the token alone, so a token one authorizer accepted is served to another whose rules
/// refuse it (see report).
#[tokio::test]
async fn shared_cache_does_not_leak_between_authorizers() {
    let metrics = Metrics::new();
    let cache = TokenCache::new(1000);
    let lenient = JwtAuthorizer::new(
        settings("lenient", ISSUER, &[Algorithm::RS256]),
        static_source(&[rsa_key()]),
        cache.clone(),
        &metrics,
    )
    .unwrap();
    let mut strict_settings = settings("strict", ISSUER, &[Algorithm::RS256]);
    strict_settings.rules.audience = vec!["another-client".to_string()];
    let strict = JwtAuthorizer::new(
        strict_settings,
        static_source(&[rsa_key()]),
        cache,
        &metrics,
    )
    .unwrap();

    let token = mint(rsa_key(), good());
    assert_eq!(refused(&strict, &token).await, TokenError::WrongAudience);
    accepted(&lenient, &token).await;
    assert_eq!(refused(&strict, &token).await, TokenError::WrongAudience);
}

#[tokio::test]
async fn key_rotation_invalidates_cached_tokens() {
    let server = JwksServer::start(Mode::Serve(jwks(&[rsa_key()]))).await;
    let metrics = Arc::new(Metrics::new());
    let remote = remote_jwks(&server, &metrics, false);
    let auth = remote_auth(&server.base(), &remote, &metrics);

    let old = mint(rsa_key(), good_claims(&server.base(), CLIENT, SCOPES));
    // Verified twice (cached the second time), then served from the cache.
    for _ in 0..3 {
        assert_eq!(accepted(&auth, &old).await.key_generation, 1);
    }
    assert_eq!(cache_count(&metrics, NAME, "hit"), 1);
    let last_fetch = Instant::now();

    // The issuer rotates: rsa-1 is gone, rsa-2 is in.
    server.set(Mode::Serve(jwks(&[rsa_key2()])));
    let new = mint(rsa_key2(), good_claims(&server.base(), CLIENT, SCOPES));
    // Unknown-kid refetches are rate-limited, so the new kid is seen once the limit allows.
    let id = wait_for("the rotated key to be fetched", WAIT, async || {
        match auth.verify(&new).await {
            Ok(id) => Some(id),
            Err(TokenError::UnknownKey) => None,
            Err(e) => panic!("unexpected {e:?}"),
        }
    })
    .await;
    assert!(
        last_fetch.elapsed() >= MIN_REFETCH_INTERVAL - Duration::from_secs(1),
        "refetched after {:?}, before the rate limit allows",
        last_fetch.elapsed()
    );
    assert_eq!(id.key_generation, 2);
    assert_eq!(remote.current().generation, 2);
    assert_eq!(server.jwks_requests(), 2);

    // The token verified under generation 1 is verified again, not served from the cache: its
    // key is gone, so it is refused.
    let hits = cache_count(&metrics, NAME, "hit");
    assert_eq!(refused(&auth, &old).await, TokenError::UnknownKey);
    assert_eq!(cache_count(&metrics, NAME, "hit"), hits);
    assert_eq!(
        server.jwks_requests(),
        2,
        "no refetch within the rate limit"
    );
}

// ---------------------------------------------------------------------------------------------
// Remote key sets
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn remote_discovery_fetches_keys_for_first_token() {
    let server = JwksServer::start(Mode::Serve(jwks(&[rsa_key()]))).await;
    let metrics = Arc::new(Metrics::new());
    let remote = remote_jwks(&server, &metrics, false);
    let auth = remote_auth(&server.base(), &remote, &metrics);
    assert_eq!(remote.current().generation, 0);
    assert!(remote.current().keys.is_empty());

    // The first token's kid is unknown (nothing loaded yet): discovery, then the JWKS.
    let id = accepted(
        &auth,
        &mint(rsa_key(), good_claims(&server.base(), CLIENT, SCOPES)),
    )
    .await;
    assert_eq!(id.key_generation, 1);
    assert_eq!(server.discovery_requests(), 1);
    assert_eq!(server.jwks_requests(), 1);
    assert_eq!(refreshes(&metrics, "ok"), 1);

    // Later tokens use the loaded keys without fetching.
    accepted(
        &auth,
        &mint(rsa_key(), good_claims(&server.base(), CLIENT, SCOPES)),
    )
    .await;
    assert_eq!(server.discovery_requests(), 1);
    assert_eq!(server.jwks_requests(), 1);
}

#[tokio::test]
async fn remote_issuer_down_at_start_then_recovers() {
    let server = JwksServer::start(Mode::Down).await;
    let metrics = Arc::new(Metrics::new());
    let remote = remote_jwks(&server, &metrics, true);
    let auth = remote_auth(&server.base(), &remote, &metrics);
    let token = mint(rsa_key(), good_claims(&server.base(), CLIENT, SCOPES));

    wait_for("the first background fetch to fail", WAIT, async || {
        (refreshes(&metrics, "error") >= 1).then_some(())
    })
    .await;
    assert_eq!(refused(&auth, &token).await, TokenError::UnknownKey);
    assert_eq!(remote.current().generation, 0);

    // The issuer comes back; the background task retries and loads the keys.
    server.set(Mode::Serve(jwks(&[rsa_key()])));
    wait_for("the background retry to load keys", WAIT, async || {
        (remote.current().generation >= 1).then_some(())
    })
    .await;
    let id = accepted(&auth, &token).await;
    assert_eq!(id.key_generation, 1);
    assert_eq!(server.jwks_requests(), 1);
}

/// Loads keys, switches the issuer to `mode`, waits until a token with an unknown kid makes
/// the gateway fetch again, and checks that the fetch failed without losing the keys.
async fn keys_survive(mode: Mode) {
    let label = format!("{mode:?}").chars().take(12).collect::<String>();
    let server = JwksServer::start(Mode::Serve(jwks(&[rsa_key()]))).await;
    let metrics = Arc::new(Metrics::new());
    let remote = remote_jwks(&server, &metrics, false);
    let auth = remote_auth(&server.base(), &remote, &metrics);
    let known = mint(rsa_key(), good_claims(&server.base(), CLIENT, SCOPES));
    accepted(&auth, &known).await;
    let loaded_at = Instant::now();
    assert_eq!(server.jwks_requests(), 1, "{label}");

    server.set(mode);
    // `rsa-2` is what a `Huge` document would publish: if it were accepted, this token would
    // verify.
    let probe = mint(rsa_key2(), good_claims(&server.base(), CLIENT, SCOPES));
    let took = wait_for(&format!("a refetch ({label})"), WAIT, async || {
        let started = Instant::now();
        assert_eq!(
            refused(&auth, &probe).await,
            TokenError::UnknownKey,
            "{label}"
        );
        (server.jwks_requests() >= 2).then(|| started.elapsed())
    })
    .await;
    assert!(
        loaded_at.elapsed() >= MIN_REFETCH_INTERVAL - Duration::from_secs(1),
        "{label}: refetched before the rate limit allows"
    );
    assert!(
        took < FETCH_TIMEOUT + Duration::from_secs(1),
        "{label}: the failed fetch held the request for {took:?}"
    );
    assert_eq!(server.jwks_requests(), 2, "{label}");
    assert_eq!(refreshes(&metrics, "error"), 1, "{label}");
    assert_eq!(remote.current().generation, 1, "{label}: keys replaced");

    // The known key still verifies (a new token, so not from the cache).
    let fresh = mint(rsa_key(), good_claims(&server.base(), CLIENT, SCOPES));
    assert_eq!(accepted(&auth, &fresh).await.key_generation, 1, "{label}");
}

#[tokio::test]
async fn remote_keys_kept_while_issuer_fails() {
    tokio::join!(
        keys_survive(Mode::Down),
        keys_survive(Mode::Garbage),
        keys_survive(Mode::Huge(jwks(&[rsa_key2()]))),
        keys_survive(Mode::Hang),
    );
}

#[tokio::test]
async fn remote_hanging_issuer_is_cut_off_by_fetch_timeout() {
    let server = JwksServer::start(Mode::Hang).await;
    let metrics = Arc::new(Metrics::new());
    let remote = RemoteJwks::new(
        JwksSource::Uri(server.jwks_uri()),
        NAME,
        Fetcher::new(),
        metrics.clone(),
    );
    let auth = remote_auth(ISSUER, &remote, &metrics);
    let started = Instant::now();
    let verdict = tokio::time::timeout(WAIT, auth.verify(&mint(rsa_key(), good())))
        .await
        .expect("verification returns despite the hanging issuer");
    let took = started.elapsed();
    assert_eq!(verdict.err(), Some(TokenError::UnknownKey));
    assert!(
        took >= FETCH_TIMEOUT - Duration::from_millis(100),
        "{took:?}"
    );
    assert!(took < Duration::from_millis(2500), "{took:?}");
    assert_eq!(server.jwks_requests(), 1);
    assert_eq!(refreshes(&metrics, "error"), 1);
}

#[tokio::test]
async fn remote_refused_connection_fails_fast() {
    let metrics = Arc::new(Metrics::new());
    let base = refused_base();
    let remote = RemoteJwks::new(
        JwksSource::Discovery {
            issuer: base.clone(),
        },
        NAME,
        Fetcher::new(),
        metrics.clone(),
    );
    let auth = remote_auth(&base, &remote, &metrics);
    let started = Instant::now();
    let token = mint(rsa_key(), good_claims(&base, CLIENT, SCOPES));
    assert_eq!(refused(&auth, &token).await, TokenError::UnknownKey);
    assert!(started.elapsed() < FETCH_TIMEOUT, "{:?}", started.elapsed());
    assert_eq!(refreshes(&metrics, "error"), 1);
    assert_eq!(remote.current().generation, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unknown_kids_share_one_fetch() {
    let server = JwksServer::start(Mode::Serve(jwks(&[rsa_key()]))).await;
    let metrics = Arc::new(Metrics::new());
    let remote = remote_jwks(&server, &metrics, false);
    let auth = Arc::new(remote_auth(&server.base(), &remote, &metrics));

    let burst = async |first: usize| {
        let mut tasks = tokio::task::JoinSet::new();
        for i in first..first + 64 {
            let auth = auth.clone();
            let token = mint(
                &rsa_key().with_kid(&format!("forged-{i}")),
                good_claims(&server.base(), CLIENT, SCOPES),
            );
            tasks.spawn(async move { auth.verify(&token).await.err() });
        }
        while let Some(verdict) = tasks.join_next().await {
            assert_eq!(verdict.expect("task"), Some(TokenError::UnknownKey));
        }
    };

    // 64 unknown kids at once, nothing loaded yet: one fetch between them.
    burst(0).await;
    assert_eq!(server.jwks_requests(), 1);
    assert_eq!(remote.current().generation, 1);
    // The keys it loaded are usable.
    accepted(
        &auth,
        &mint(rsa_key(), good_claims(&server.base(), CLIENT, SCOPES)),
    )
    .await;
    // Another burst right after: no fetch at all.
    burst(64).await;
    assert_eq!(server.jwks_requests(), 1);
    assert_eq!(server.discovery_requests(), 1);
}

// ---------------------------------------------------------------------------------------------
// Critical header parameters (RFC 7515 §4.1.11)
// ---------------------------------------------------------------------------------------------

/// A token signed by `key` whose header is exactly the JSON text `header`.
fn with_header_text(key: &TestKey, header: &str) -> String {
    sign_parts(key, &b64_bytes(header.as_bytes()), &b64_json(&good()))
}

#[tokio::test]
async fn a_correctly_signed_token_with_crit_is_refused() {
    let auth = static_auth(
        &[Algorithm::RS256, Algorithm::ES256],
        &[rsa_key(), ec_key()],
    );
    let kid = &rsa_key().kid;
    // The control: the same header without `crit` is accepted.
    accepted(
        &auth,
        &with_header_text(rsa_key(), &format!(r#"{{"alg":"RS256","kid":"{kid}"}}"#)),
    )
    .await;
    // Only a member of the header itself counts: `crit` nested in another member, or as a value.
    for header in [
        format!(r#"{{"alg":"RS256","kid":"{kid}","x-ext":{{"crit":["exp"]}}}}"#),
        format!(r#"{{"alg":"RS256","kid":"{kid}","typ":"crit","x":["crit"]}}"#),
    ] {
        accepted(&auth, &with_header_text(rsa_key(), &header)).await;
    }
    // Through jsonwebtoken's own header type, as an issuer would send it.
    for crit in [vec!["exp"], vec!["b64"], vec!["exp", "b64"]] {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.clone());
        header.crit = Some(crit.iter().map(|s| s.to_string()).collect());
        let token = mint_with_header(header, rsa_key(), good());
        assert_eq!(
            refused(&auth, &token).await,
            TokenError::CriticalHeader,
            "{crit:?}"
        );
    }
    // Every spelling and value of the member, valid or not, is refused the same way.
    for header in [
        format!(r#"{{"alg":"RS256","kid":"{kid}","crit":["b64"],"b64":false}}"#),
        format!(r#"{{"alg":"RS256","kid":"{kid}","crit":["x-custom"],"x-custom":1}}"#),
        format!(r#"{{"alg":"RS256","kid":"{kid}","crit":[]}}"#),
        format!(r#"{{"alg":"RS256","kid":"{kid}","crit":null}}"#),
        format!(r#"{{"alg":"RS256","kid":"{kid}","crit":"exp"}}"#),
        format!(r#"{{"alg":"RS256","kid":"{kid}","crit":[7]}}"#),
        format!(r#"{{"alg":"RS256","kid":"{kid}","cr\u0069t":["exp"]}}"#),
        format!(r#"{{"crit":["exp"],"alg":"RS256","kid":"{kid}"}}"#),
        // A repeated member is still there, whichever value a parser would keep.
        format!(r#"{{"alg":"RS256","kid":"{kid}","crit":["exp"],"crit":null}}"#),
        format!(r#"{{"alg":"RS256","kid":"{kid}","crit":null,"crit":null}}"#),
        format!(r#"{{"alg":"RS256","kid":"{kid}","crit":["exp"],"crit":["exp"]}}"#),
    ] {
        assert_eq!(
            refused(&auth, &with_header_text(rsa_key(), &header)).await,
            TokenError::CriticalHeader,
            "{header}"
        );
    }
    // Keys verified by jsonwebtoken itself (not pre-parsed RSA) go through the same check.
    let ec = &ec_key().kid;
    let header = format!(r#"{{"alg":"ES256","kid":"{ec}","crit":["exp"]}}"#);
    assert_eq!(
        refused(&auth, &with_header_text(ec_key(), &header)).await,
        TokenError::CriticalHeader
    );
    assert_eq!(TokenError::CriticalHeader.reason(), "token_crit_header");
}

#[tokio::test]
async fn a_crit_header_is_refused_by_a_secret_authorizer_too() {
    const SECRET: &[u8] = b"a-32-byte-shared-secret-for-test";
    let auth = authorizer(
        settings(NAME, ISSUER, &[Algorithm::HS256]),
        static_loaded(KeySet::from_secret(SECRET)),
        &Metrics::new(),
    );
    let mut header = Header::new(Algorithm::HS256);
    header.crit = Some(vec!["b64".to_string()]);
    let token = jsonwebtoken::encode(
        &header,
        &good(),
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    for _ in 0..3 {
        // Refused every time: a refusal is never cached.
        assert_eq!(refused(&auth, &token).await, TokenError::CriticalHeader);
    }
}

// ---------------------------------------------------------------------------------------------
// `issuer: self`: the current clients
// ---------------------------------------------------------------------------------------------

/// An authorizer over [`rsa_key`] restricted to `clients`, sharing `cache`.
fn for_clients(
    clients: &[(&str, &[&str])],
    cache: &TokenCache,
    metrics: &Metrics,
) -> JwtAuthorizer {
    let clients = CurrentClients::new(clients.iter().map(|(id, scopes)| {
        (
            id.to_string(),
            scopes.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
    }));
    JwtAuthorizer::new(
        settings(NAME, ISSUER, &[Algorithm::RS256]),
        static_source(&[rsa_key()]),
        cache.clone(),
        metrics,
    )
    .unwrap()
    .only_current_clients(clients)
}

#[tokio::test]
async fn a_removed_client_is_refused_even_from_the_cache() {
    let metrics = Metrics::new();
    let cache = TokenCache::new(1000);
    let before = for_clients(
        &[
            (CLIENT, &["orders/read", "orders/write"]),
            ("other", &["orders/read"]),
        ],
        &cache,
        &metrics,
    );
    let token = mint(rsa_key(), good());
    let kept = accepted(&before, &token).await;
    accepted(&before, &token).await;
    let cached = accepted(&before, &token).await;
    assert_eq!(
        cache_count(&metrics, NAME, "hit"),
        1,
        "now served from the cache"
    );
    assert!(Arc::ptr_eq(&accepted(&before, &token).await, &cached));
    assert_eq!(upstream_header(&kept, "x-tollgate-scopes"), Some(SCOPES));

    // The next config (sharing the cache, as a reload does) no longer has the client.
    let after = for_clients(&[("other", &["orders/read"])], &cache, &metrics);
    assert_eq!(refused(&after, &token).await, TokenError::RevokedClient);
    assert_eq!(
        cache_count(&metrics, NAME, "hit"),
        3,
        "the refusal came after a cache hit"
    );
    assert_eq!(TokenError::RevokedClient.reason(), "token_client_revoked");

    // A client with no scopes gets no token from the issuer, and its tokens are refused.
    let none = for_clients(&[(CLIENT, &[])], &cache, &metrics);
    assert_eq!(refused(&none, &token).await, TokenError::RevokedClient);
    // A token without `client_id` names no client.
    let anonymous = mint(rsa_key(), without(good(), "client_id"));
    let mut audience_free = settings(NAME, ISSUER, &[Algorithm::RS256]);
    audience_free.rules.audience.clear();
    let open = JwtAuthorizer::new(
        audience_free,
        static_source(&[rsa_key()]),
        TokenCache::new(10),
        &metrics,
    )
    .unwrap()
    .only_current_clients(CurrentClients::new([(
        CLIENT.to_string(),
        vec!["orders/read".to_string()],
    )]));
    assert_eq!(refused(&open, &anonymous).await, TokenError::RevokedClient);
}

#[tokio::test]
async fn a_client_whose_scopes_were_reduced_keeps_only_the_rest() {
    let metrics = Metrics::new();
    let cache = TokenCache::new(1000);
    let token = mint(rsa_key(), good());
    let full = for_clients(
        &[(CLIENT, &["orders/read", "orders/write"])],
        &cache,
        &metrics,
    );
    for _ in 0..3 {
        accepted(&full, &token).await;
    }
    let cached = accepted(&full, &token).await;

    let reduced = for_clients(
        &[(CLIENT, &["orders/read", "orders/admin"])],
        &cache,
        &metrics,
    );
    let id = accepted(&reduced, &token).await;
    let scopes: Vec<&str> = id.scopes.iter().map(|s| &**s).collect();
    assert_eq!(
        scopes,
        ["orders/read"],
        "orders/write is no longer the client's"
    );
    assert!(!id.has_any_scope(&["orders/write".into()]));
    assert!(
        !id.has_any_scope(&["orders/admin".into()]),
        "never more than the token carried"
    );
    assert_eq!(
        upstream_header(&id, "x-tollgate-scopes"),
        Some("orders/read")
    );
    assert_eq!(upstream_header(&id, "x-tollgate-client-id"), Some(CLIENT));
    assert_eq!(
        upstream_header(&id, "x-tollgate-principal"),
        Some("user-of-client-abc")
    );
    assert_eq!(upstream_header(&id, "x-tollgate-authorizer"), Some(NAME));
    assert_eq!(id.upstream_headers.len(), 4);
    // The cached verdict itself is untouched: the full config still sees every scope.
    assert!(Arc::ptr_eq(&accepted(&full, &token).await, &cached));
    assert_eq!(cached.scopes.len(), 2);

    // A client left with none of the token's scopes: the token grants nothing, refused.
    let other = for_clients(&[(CLIENT, &["orders/admin"])], &cache, &metrics);
    assert_eq!(refused(&other, &token).await, TokenError::RevokedClient);
}
