//! Authorizers: who is calling. This module owns the JWT authorizer (token extraction,
//! signature, claim rules, scopes), its key sources ([`keys`], [`jwks`]) and the verified-token
//! cache. It answers with an [`Identity`] or a [`TokenError`]; what the client is told is decided
//! by `crate::error`.

pub mod claims;
pub mod external;
pub mod jwks;
pub mod keys;
mod principal;
pub mod sigv4;
mod token_error;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, AlgorithmFamily, Validation, errors::ErrorKind};

use self::claims::{ClaimRules, Claims};
use self::jwks::{Loaded, RemoteJwks};
pub use self::principal::{Identity, Principal, headers, insufficient_scope_header};
pub use self::token_error::TokenError;

/// Longest token accepted; real access tokens are 1-4 KiB, and this bounds parsing work.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Entries in one authorizer's verified-token cache (about 1 KiB each).
pub const TOKEN_CACHE_CAPACITY: u64 = 100_000;
/// Longest a verified token stays cached, even when it expires later.
pub const TOKEN_CACHE_MAX_TTL: Duration = Duration::from_secs(3600);

/// The embedded issuer's app clients as one config snapshot defines them, for the
/// `issuer: self` authorizers of that snapshot: each client id with the scopes it may hold now.
///
/// A token names its client in `client_id`; the issuer's signature proves the client existed
/// and held the token's scopes when it was issued, not that it still does. With this set, an
/// `issuer: self` authorizer ([`JwtAuthorizer::only_current_clients`]) checks every token,
/// cached or not, against the config that serves the request: a client a reload removed is
/// refused ([`TokenError::RevokedClient`]), and a client whose scopes a reload reduced keeps only
/// the token's scopes it still may have.
#[derive(Debug, Default, Clone)]
pub struct CurrentClients {
    by_id: std::collections::HashMap<Box<str>, std::collections::HashSet<Box<str>>>,
}

impl CurrentClients {
    /// The set of `(client_id, allowed scopes)`.
    pub fn new<I, S>(clients: I) -> CurrentClients
    where
        I: IntoIterator<Item = (String, S)>,
        S: IntoIterator<Item = String>,
    {
        CurrentClients {
            by_id: clients
                .into_iter()
                .map(|(id, scopes)| (id.into(), scopes.into_iter().map(Into::into).collect()))
                .collect(),
        }
    }

    /// `identity` as this config allows it: unchanged when its client exists and may still hold
    /// every one of its scopes (one hash lookup per scope, no allocation); otherwise narrowed to
    /// the scopes the client may still hold. Refuses ([`TokenError::RevokedClient`]) a token
    /// without `client_id`, of a client not in the set, of a client with no scopes (the issuer
    /// gives such a client no token either), or that would be left without any scope.
    fn admit(&self, identity: Arc<Identity>) -> Result<Arc<Identity>, TokenError> {
        let allowed = identity
            .client_id
            .as_deref()
            .and_then(|c| self.by_id.get(c))
            .filter(|scopes| !scopes.is_empty())
            .ok_or(TokenError::RevokedClient)?;
        if identity.scopes.iter().all(|s| allowed.contains(&**s)) {
            return Ok(identity);
        }
        let kept: Vec<Box<str>> = identity
            .scopes
            .iter()
            .filter(|s| allowed.contains(&***s))
            .cloned()
            .collect();
        if kept.is_empty() {
            return Err(TokenError::RevokedClient);
        }
        identity.with_scopes(kept).map(Arc::new)
    }
}

/// Where an authorizer's keys come from.
pub enum KeySource {
    /// Loaded once with the config: a `jwks_file` or a `secret`.
    Static(Arc<Loaded>),
    /// Fetched and refreshed from the issuer.
    Remote(Arc<RemoteJwks>),
    /// Held in-process and swapped when they change (the embedded issuer's keys).
    Local(Arc<arc_swap::ArcSwap<Loaded>>),
}

impl KeySource {
    fn current(&self) -> Arc<Loaded> {
        match self {
            KeySource::Static(l) => l.clone(),
            KeySource::Remote(r) => r.current(),
            KeySource::Local(l) => l.load_full(),
        }
    }
}

/// Cache of verified tokens. Keys are the SHA-256 of the verifying authorizer's rules and the
/// token, so a cache shared by several authorizers (or kept across a reload) never serves one
/// authorizer's verdict to another with different rules. Entries leave at the token's `exp` (or
/// after [`TOKEN_CACHE_MAX_TTL`]) and are ignored once the key set's generation changes.
///
/// A token is stored the second time it is verified, not the first: a doorkeeper remembers a
/// fingerprint of each verified token that was not stored, and only a token found there is. A
/// token that never comes back (every request carrying a new one) then costs its verification
/// alone, not also an insertion and, once the cache is full, an eviction, and it takes no room.
#[derive(Clone)]
pub struct TokenCache {
    inner: moka::sync::Cache<[u8; 32], Arc<Identity>>,
    seen: Arc<SeenOnce>,
}

/// Most slots of a cache's doorkeeper (8 bytes each, 512 KiB in all): a token that comes back
/// while fewer than about this many other new tokens were verified is recognised.
const SEEN_SLOTS_MAX: usize = 1 << 16;

/// The doorkeeper: one fingerprint per slot, the slot and the fingerprint taken from different
/// bytes of the cache key (already a salted SHA-256). A newer token in the same slot pushes the
/// older one out, which only delays caching it. Lock-free: one atomic swap per verification.
struct SeenOnce {
    slots: Box<[AtomicU64]>,
}

impl SeenOnce {
    fn new(capacity: u64) -> SeenOnce {
        let n = usize::try_from(capacity)
            .unwrap_or(SEEN_SLOTS_MAX)
            .clamp(1, SEEN_SLOTS_MAX)
            .next_power_of_two();
        SeenOnce {
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Whether `key` was the last token recorded in its slot; records it either way.
    fn seen_before(&self, key: &[u8; 32]) -> bool {
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&key[i..i + 8]);
            u64::from_le_bytes(b)
        };
        // Never 0, the value of an empty slot.
        let fingerprint = word(0) | 1;
        let slot = (word(8) as usize) & (self.slots.len() - 1);
        self.slots[slot].swap(fingerprint, Ordering::Relaxed) == fingerprint
    }
}

struct UntilExpiry;

impl moka::Expiry<[u8; 32], Arc<Identity>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<Identity>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        let left = value.expires_at.saturating_sub(now_unix());
        Some(Duration::from_secs(left).min(TOKEN_CACHE_MAX_TTL))
    }
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new(TOKEN_CACHE_CAPACITY)
    }
}

impl TokenCache {
    /// A cache holding at most `capacity` tokens.
    pub fn new(capacity: u64) -> TokenCache {
        TokenCache {
            inner: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilExpiry)
                .build(),
            seen: Arc::new(SeenOnce::new(capacity)),
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Settings of a JWT authorizer, as compiled from config.
pub struct JwtSettings {
    /// Authorizer name (labels, `x-tollgate-authorizer`).
    pub name: String,
    /// Header the token is read from.
    pub header: HeaderName,
    /// Allowed algorithms.
    pub algorithms: Vec<Algorithm>,
    /// Claim rules.
    pub rules: ClaimRules,
}

/// A compiled JWT authorizer.
pub struct JwtAuthorizer {
    name: Arc<str>,
    header: HeaderName,
    algorithms: Vec<Algorithm>,
    /// One validation per key family present in `algorithms`.
    validations: Vec<(AlgorithmFamily, Validation)>,
    rules: ClaimRules,
    keys: KeySource,
    cache: TokenCache,
    /// Digest of everything that decides a verdict besides the keys; salts every cache key.
    cache_salt: [u8; 32],
    /// `issuer: self` only: the clients of the snapshot this authorizer belongs to, checked on
    /// every request after the cache (see [`CurrentClients`]).
    clients: Option<CurrentClients>,
    name_value: HeaderValue,
    hits: prometheus::IntCounter,
    misses: prometheus::IntCounter,
}

impl std::fmt::Debug for JwtAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthorizer")
            .field("name", &self.name)
            .finish()
    }
}

impl JwtAuthorizer {
    /// Builds an authorizer. Refuses an empty algorithm list and a name that cannot be a
    /// header value.
    pub fn new(
        s: JwtSettings,
        keys: KeySource,
        cache: TokenCache,
        metrics: &crate::metrics::Metrics,
    ) -> Result<JwtAuthorizer, String> {
        if s.algorithms.is_empty() {
            return Err("no algorithms allowed".into());
        }
        let mut validations: Vec<(AlgorithmFamily, Validation)> = Vec::new();
        for alg in &s.algorithms {
            let fam = alg.family();
            if let Some((_, v)) = validations.iter_mut().find(|(f, _)| *f == fam) {
                v.algorithms.push(*alg);
            } else {
                // Signature and algorithm only: claim rules are ours (`claims::check`).
                let mut v = Validation::new(*alg);
                v.validate_exp = false;
                v.validate_nbf = false;
                v.validate_aud = false;
                v.required_spec_claims.clear();
                validations.push((fam, v));
            }
        }
        let name_value =
            HeaderValue::from_str(&s.name).map_err(|_| "bad authorizer name".to_string())?;
        let cache_salt = crate::util::sha256(
            format!("{}|{}|{:?}|{:?}", s.name, s.header, s.algorithms, s.rules).as_bytes(),
        );
        Ok(JwtAuthorizer {
            hits: metrics
                .token_cache
                .with_label_values(&[s.name.as_str(), "hit"]),
            misses: metrics
                .token_cache
                .with_label_values(&[s.name.as_str(), "miss"]),
            name: s.name.into(),
            header: s.header,
            algorithms: s.algorithms,
            validations,
            rules: s.rules,
            keys,
            cache,
            cache_salt,
            clients: None,
            name_value,
        })
    }

    /// Makes this authorizer accept only tokens of `clients`, with at most the scopes each may
    /// hold now (for `issuer: self`, whose clients the config defines). The check runs on
    /// every request, after the verified-token cache: the cache may be shared with the
    /// authorizer of an earlier config, the client set is this config's.
    pub fn only_current_clients(mut self, clients: CurrentClients) -> JwtAuthorizer {
        self.clients = Some(clients);
        self
    }

    /// The authorizer's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The header the token is read from.
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// The token in the request, bare or as `Bearer <token>`; `None` when absent or empty.
    pub fn token<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        let raw = headers.get(&self.header)?.to_str().ok()?.trim();
        let token = match raw.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            // The scheme alone (`Bearer` with nothing after it) carries no token.
            None if raw.eq_ignore_ascii_case("bearer") => "",
            _ => raw,
        };
        (!token.is_empty()).then_some(token)
    }

    /// Verifies a token: from the cache when this exact token was verified under the current
    /// keys and has not expired; otherwise header, signature, algorithm and every claim rule.
    /// Then, cached or not, for an authorizer made with
    /// [`JwtAuthorizer::only_current_clients`], the token's client and scopes against the
    /// current clients.
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, TokenError> {
        let identity = self.verify_signed(token).await?;
        match &self.clients {
            Some(clients) => clients.admit(identity),
            None => Ok(identity),
        }
    }

    /// The token's own verdict (what the cache holds): everything [`JwtAuthorizer::verify`]
    /// checks but the current clients.
    async fn verify_signed(&self, token: &str) -> Result<Arc<Identity>, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let now = now_unix();
        let mut loaded = self.keys.current();
        let digest = self.cache_key(token);
        if let Some(id) = self.cache.inner.get(&digest)
            && id.key_generation == loaded.generation
            && id.expires_at.saturating_add(self.rules.leeway) > now
        {
            self.hits.inc();
            return Ok(id);
        }
        self.misses.inc();
        let header = protected_header(token)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(TokenError::BadAlgorithm);
        }
        if loaded.keys.find(header.kid.as_deref()).is_none()
            && header.kid.is_some()
            && let KeySource::Remote(remote) = &self.keys
        {
            loaded = remote.refetch_for_unknown_kid(loaded.generation).await;
        }
        // Borrowed from the loaded set: a key is never copied per verification.
        let key = loaded
            .keys
            .find(header.kid.as_deref())
            .ok_or(TokenError::UnknownKey)?;
        if key.alg.is_some_and(|a| a != header.alg) || key.decoding.family() != header.alg.family()
        {
            return Err(TokenError::BadAlgorithm);
        }
        let validation = self
            .validations
            .iter()
            .find(|(f, _)| *f == header.alg.family())
            .map(|(_, v)| v)
            .ok_or(TokenError::BadAlgorithm)?;
        let claims = match key.parsed_for(header.alg) {
            Some(parsed) => verify_parsed(token, parsed)?,
            None => {
                jsonwebtoken::decode::<Claims>(token, &key.decoding, validation)
                    .map_err(|e| match e.kind() {
                        ErrorKind::InvalidSignature => TokenError::BadSignature,
                        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
                            TokenError::BadAlgorithm
                        }
                        k if keys::is_malformed(k) => TokenError::Malformed,
                        _ => TokenError::BadSignature,
                    })?
                    .claims
            }
        };
        let checked = claims::check(&claims, &self.rules, now)?;
        let identity = Arc::new(self.identity(checked, loaded.generation)?);
        if self.cache.seen.seen_before(&digest) {
            self.cache.inner.insert(digest, identity.clone());
        }
        Ok(identity)
    }

    /// How many verified tokens the cache holds now (after its pending maintenance).
    pub fn cached_tokens(&self) -> u64 {
        self.cache.inner.run_pending_tasks();
        self.cache.inner.entry_count()
    }

    /// SHA-256 over this authorizer's salt and the token.
    fn cache_key(&self, token: &str) -> [u8; 32] {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(&self.cache_salt);
        ctx.update(token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    fn identity(&self, c: claims::CheckedClaims, generation: u64) -> Result<Identity, TokenError> {
        let value = |s: &str| HeaderValue::from_str(s).map_err(|_| TokenError::BadClaim);
        let mut upstream_headers = Vec::with_capacity(4);
        if let Some(s) = &c.subject {
            upstream_headers.push((headers::PRINCIPAL, value(s)?));
        }
        if let Some(s) = &c.client_id {
            upstream_headers.push((headers::CLIENT_ID, value(s)?));
        }
        if !c.scopes.is_empty() {
            upstream_headers.push((headers::SCOPES, value(&c.scopes.join(" "))?));
        }
        upstream_headers.push((headers::AUTHORIZER, self.name_value.clone()));
        Ok(Identity {
            subject: c.subject.map(Into::into),
            client_id: c.client_id.map(Into::into),
            scopes: c.scopes.into_iter().map(Into::into).collect(),
            expires_at: c.expires_at,
            key_generation: generation,
            upstream_headers,
        })
    }
}

/// Verifies a compact JWS with a pre-parsed key (the header was already read and its `alg`
/// matched to the key), then reads the claims: what `jsonwebtoken::decode` does, without
/// parsing the key and the claims again. Signature first, so unverified claims are never read.
fn verify_parsed(
    token: &str,
    key: &aws_lc_rs::signature::ParsedPublicKey,
) -> Result<Claims, TokenError> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (message, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let (_, payload) = message.split_once('.').ok_or(TokenError::Malformed)?;
    let signature = b64.decode(signature).map_err(|_| TokenError::Malformed)?;
    key.verify_sig(message.as_bytes(), &signature)
        .map_err(|_| TokenError::BadSignature)?;
    let payload = b64.decode(payload).map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)
}

/// Whether a JSON object has a `crit` member, whatever its value (`null` and `[]` included:
/// RFC 7515 allows neither, and a header that has one is refused like any other `crit`), however
/// often it is repeated and however its name is escaped (`"cr\u0069t"`). It walks the member names
/// and skips the values without building them, and, unlike a derived struct, does not fail on a
/// repeated member, so the answer never depends on which duplicate a parser would keep.
struct HasCrit(bool);

impl<'de> serde::Deserialize<'de> for HasCrit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<HasCrit, D::Error> {
        /// One member name: whether it is `crit`.
        struct IsCrit(bool);
        impl<'de> serde::Deserialize<'de> for IsCrit {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<IsCrit, D::Error> {
                struct Name;
                impl serde::de::Visitor<'_> for Name {
                    type Value = IsCrit;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("a member name")
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IsCrit, E> {
                        Ok(IsCrit(v == "crit"))
                    }
                }
                d.deserialize_str(Name)
            }
        }
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = HasCrit;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<HasCrit, A::Error> {
                let mut found = false;
                while let Some(IsCrit(crit)) = m.next_key()? {
                    found |= crit;
                    m.next_value::<serde::de::IgnoredAny>()?;
                }
                Ok(HasCrit(found))
            }
        }
        d.deserialize_map(Members)
    }
}

/// Decodes the protected header of a compact JWS, on the path of every token not served from
/// the cache. Refuses a token that is not exactly three parts or whose header is not
/// base64url JSON ([`TokenError::Malformed`]), a header with a `crit` member
/// ([`TokenError::CriticalHeader`]: RFC 7515 §4.1.11 says a recipient that does not understand
/// a listed extension must refuse the JWS, and tollgate understands none), and a header whose
/// `alg` is unknown, such as `none` ([`TokenError::BadAlgorithm`]).
///
/// The segment is decoded once; the JSON is read twice (the first pass, [`HasCrit`], only
/// looks at member names), because jsonwebtoken's `Header` turns `crit: null` into "no
/// `crit`" and refuses a repeated member as malformed.
fn protected_header(token: &str) -> Result<jsonwebtoken::Header, TokenError> {
    use base64::Engine;
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed)?;
    if serde_json::from_slice::<HasCrit>(&bytes).is_ok_and(|h| h.0) {
        return Err(TokenError::CriticalHeader);
    }
    serde_json::from_slice(&bytes).map_err(|_| {
        if header_alg_unsupported(&bytes) {
            TokenError::BadAlgorithm
        } else {
            TokenError::Malformed
        }
    })
}

/// Whether the decoded header is JSON whose `alg` is not one we know (for example `none`).
fn header_alg_unsupported(header: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(header)
        .ok()
        .and_then(|v| {
            v.get("alg")
                .and_then(|a| a.as_str())
                .map(|a| a.parse::<Algorithm>().is_err())
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::SeenOnce;

    /// A cache key whose fingerprint bytes are `fp` and whose slot bytes are `slot`.
    fn key(fp: u8, slot: u8) -> [u8; 32] {
        let mut k = [0u8; 32];
        k[0] = fp;
        k[8] = slot;
        k
    }

    #[test]
    fn the_doorkeeper_knows_a_key_on_its_second_sight() {
        let seen = SeenOnce::new(1024);
        assert!(!seen.seen_before(&key(1, 1)));
        assert!(seen.seen_before(&key(1, 1)));
        assert!(seen.seen_before(&key(1, 1)));
        // An all-zero key is not taken for an empty slot.
        assert!(!seen.seen_before(&[0u8; 32]));
    }

    #[test]
    fn a_newer_key_in_the_same_slot_pushes_the_older_out() {
        let seen = SeenOnce::new(1024);
        assert!(!seen.seen_before(&key(2, 7)));
        assert!(!seen.seen_before(&key(4, 7)));
        assert!(!seen.seen_before(&key(2, 7)), "pushed out, so new again");
        // Other slots are untouched.
        assert!(!seen.seen_before(&key(6, 8)));
        assert!(!seen.seen_before(&key(4, 7)));
        assert!(seen.seen_before(&key(6, 8)));
    }

    #[test]
    fn slots_follow_the_capacity_up_to_the_maximum() {
        assert_eq!(SeenOnce::new(0).slots.len(), 1);
        assert_eq!(SeenOnce::new(1000).slots.len(), 1024);
        assert_eq!(SeenOnce::new(100_000).slots.len(), super::SEEN_SLOTS_MAX);
    }
}
