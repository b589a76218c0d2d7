//! The SigV4 authorizer (`type: sigv4`): requests signed with AWS Signature Version 4, in the
//! `Authorization: AWS4-HMAC-SHA256 ...` header form or the presigned query-string form.
//!
//! [`SigV4Verifier::verify`] rebuilds the canonical request, the string to sign and the signing
//! key exactly as AWS defines them and compares signatures in constant time. The choices where
//! AWS's own signers leave room are these:
//!
//! - **Canonical URI.** For every service but S3, AWS signers take the path *as sent* (already
//!   percent-encoded once), remove dot segments and empty segments, and percent-encode it once
//!   more (everything but `A-Za-z0-9-_.~` and `/`), so `/a%20b` signs as `/a%2520b`. This is what
//!   both the `aws-sigv4` crate (its default `PercentEncodingMode::Double` plus path
//!   normalisation) and botocore's `SigV4Auth` produce, and exactly what is accepted here. The
//!   path is never decoded first. (The CRT suite's `get-space-normalized` vector single-encodes;
//!   neither SDK does, and the SDKs are what clients run.)
//! - **Canonical query.** Pairs are split on `&` and the first `=`, decoded (`%XX`, and `+` as a
//!   space, as every SDK's URL builder writes spaces), re-encoded with AWS's URI encoding (upper
//!   case hex, only `A-Za-z0-9-_.~` bare) and sorted by encoded name, then encoded value.
//!   `X-Amz-Signature` is left out in the presigned form.
//! - **Payload.** The hashed payload is `x-amz-content-sha256` when the request carries it, and
//!   it must then equal `hex(sha256(body))`; otherwise the body's hash is used. `UNSIGNED-PAYLOAD`
//!   and the `STREAMING-*` markers are **refused** ([`SigV4Error::BodyMismatch`]): for an API
//!   (execute-api) the body is small, already buffered, and must be covered by the signature. The
//!   presigned form signs the body's hash too (what `aws-sigv4` and botocore's `SigV4QueryAuth`
//!   do for non-S3 services), so an empty-bodied presigned GET signs the empty string's hash.
//! - **Session credentials.** There is no STS here: every access key id must be one configured
//!   with its secret. An `x-amz-security-token` header, when present, must be among the signed
//!   headers (otherwise [`SigV4Error::Malformed`]), and in the presigned form
//!   `X-Amz-Security-Token` is signed as part of the query; either way the token is only signed
//!   data, never checked against anything. Temporary (STS-issued) credentials are therefore not
//!   supported beyond being signed.
//! - **Date.** `x-amz-date` (or `X-Amz-Date` in the query); in the header form an HTTP `Date`
//!   header is accepted when `x-amz-date` is absent, as AWS allows. The credential scope's date
//!   must be that date's day. A header-signed request must be within [`MAX_CLOCK_SKEW`] of now; a
//!   presigned one must not be dated more than [`MAX_CLOCK_SKEW`] ahead and not be past its
//!   `X-Amz-Expires` (1 s to [`MAX_PRESIGNED_EXPIRES`]).
//! - **Host.** `host` must be signed. Its value is the `Host` header or, for HTTP/2 requests that
//!   carry none, the request URI's authority (`:authority`).
//! - **Header values** are trimmed and runs of spaces collapsed to one (spaces only, like
//!   `aws-sigv4` and AWS's documentation); repeated headers are joined with `,` in arrival order.
//!
//! Check order (so each refusal names the first thing wrong): unsigned → malformed → scope →
//! unknown key → stale → body → signature.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use http::header::{AUTHORIZATION, DATE, HOST};
use http::request::Parts;

/// How far a header-signed request's `x-amz-date` may lie from now, either way: AWS's own window.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// Longest validity a presigned URL may claim with `X-Amz-Expires`: AWS's own ceiling (7 days).
pub const MAX_PRESIGNED_EXPIRES: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most headers one signature may cover: real SDK requests sign fewer than 10, and this bounds
/// the canonicalisation work a forged request can cause.
pub const MAX_SIGNED_HEADERS: usize = 64;

/// The only algorithm accepted (SigV4A's `AWS4-ECDSA-P256-SHA256` is not).
const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// Last element of every SigV4 credential scope.
const TERMINATOR: &str = "aws4_request";
/// The payload marker for an unsigned body; refused (see the module docs).
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// Prefix of the chunked-upload payload markers (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD`, ...);
/// refused like `UNSIGNED-PAYLOAD`.
const STREAMING_PAYLOAD_PREFIX: &str = "STREAMING-";
/// Length of an ISO 8601 basic timestamp, `YYYYMMDDTHHMMSSZ`.
const AMZ_DATE_LEN: usize = 16;
/// Length of the scope's date, `YYYYMMDD`.
const SCOPE_DATE_LEN: usize = 8;

/// Header carrying the signing time (`YYYYMMDDTHHMMSSZ`).
const X_AMZ_DATE: &str = "x-amz-date";
/// Header carrying the hashed payload, checked against the body.
const X_AMZ_CONTENT_SHA256: &str = "x-amz-content-sha256";
/// Header carrying a session token, which must then be signed.
const X_AMZ_SECURITY_TOKEN: &str = "x-amz-security-token";

// Presigned-URL query parameters (names are case-sensitive, as AWS defines them).
const Q_ALGORITHM: &[u8] = b"X-Amz-Algorithm";
const Q_CREDENTIAL: &[u8] = b"X-Amz-Credential";
const Q_DATE: &[u8] = b"X-Amz-Date";
const Q_EXPIRES: &[u8] = b"X-Amz-Expires";
const Q_SIGNED_HEADERS: &[u8] = b"X-Amz-SignedHeaders";
const Q_SIGNATURE: &[u8] = b"X-Amz-Signature";

/// Why a request was refused. [`SigV4Error::Unsigned`] is a 401; every other variant is a 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigV4Error {
    /// No SigV4 signature at all: no `Authorization: AWS4-HMAC-SHA256 ...` header and no
    /// `X-Amz-Algorithm=AWS4-HMAC-SHA256` query parameter.
    Unsigned,
    /// A signature is there but cannot be read: a missing or repeated component, a bad
    /// credential, date or signed-header list, `host` or the security token not signed, a
    /// signed header that is absent, both forms at once.
    Malformed,
    /// The access key id is not configured.
    UnknownKey,
    /// The signature does not match the request.
    BadSignature,
    /// The date is too far from now, or a presigned URL has expired.
    Stale,
    /// The credential scope names another region or service, or its date is not the request's.
    WrongScope,
    /// `x-amz-content-sha256` is not the body's SHA-256 (or is `UNSIGNED-PAYLOAD`/streaming).
    BodyMismatch,
}

impl SigV4Error {
    /// The `reason` label for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            SigV4Error::Unsigned => "sigv4_unsigned",
            SigV4Error::Malformed => "sigv4_malformed",
            SigV4Error::UnknownKey => "sigv4_unknown_key",
            SigV4Error::BadSignature => "sigv4_bad_signature",
            SigV4Error::Stale => "sigv4_stale",
            SigV4Error::WrongScope => "sigv4_wrong_scope",
            SigV4Error::BodyMismatch => "sigv4_body_mismatch",
        }
    }
}

impl fmt::Display for SigV4Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SigV4Error::Unsigned => "the request is not signed",
            SigV4Error::Malformed => "the request's signature is malformed",
            SigV4Error::UnknownKey => "the access key id is not known",
            SigV4Error::BadSignature => "the request's signature does not match",
            SigV4Error::Stale => "the request's date is outside the accepted window",
            SigV4Error::WrongScope => "the credential scope is not accepted",
            SigV4Error::BodyMismatch => "the body does not match x-amz-content-sha256",
        })
    }
}

impl std::error::Error for SigV4Error {}

/// A verified caller: the access key that signed the request and the scopes it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigV4Identity {
    /// The access key id (the principal).
    pub access_key_id: String,
    /// Scopes configured for this key.
    pub scopes: Vec<Box<str>>,
}

impl SigV4Identity {
    /// Whether the key holds at least one of `required` (an empty list requires nothing), the
    /// same rule as JWT scopes.
    pub fn has_any_scope(&self, required: &[Box<str>]) -> bool {
        required.is_empty() || required.iter().any(|r| self.scopes.iter().any(|s| s == r))
    }
}

/// One configured access key.
struct Key {
    secret: Box<str>,
    scopes: Vec<Box<str>>,
}

/// A compiled SigV4 authorizer: the region and service every credential scope must name, and
/// the accepted access keys.
pub struct SigV4Verifier {
    region: String,
    service: String,
    keys: HashMap<String, Key>,
}

impl fmt::Debug for SigV4Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        ids.sort_unstable();
        f.debug_struct("SigV4Verifier")
            .field("region", &self.region)
            .field("service", &self.service)
            .field("access_key_ids", &ids)
            .finish()
    }
}

/// Where the signature travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// `Authorization` header.
    Header,
    /// Presigned URL, valid for this many seconds after its date.
    Query { expires: u64 },
}

/// The signature's claims, read from the header or the query.
#[derive(Debug)]
struct Presented {
    form: Form,
    access_key_id: String,
    scope_date: String,
    scope_region: String,
    scope_service: String,
    /// As sent (`host;x-amz-date`), checked sorted and unique.
    signed_headers: String,
    signature: [u8; 32],
    /// `YYYYMMDDTHHMMSSZ`.
    amz_date: String,
    /// `amz_date` in seconds since the epoch.
    timestamp: i64,
}

impl Presented {
    fn signed_header_names(&self) -> impl Iterator<Item = &str> {
        self.signed_headers.split(';')
    }
}

/// A decoded query: (name, value) bytes in arrival order.
type Query = Vec<(Vec<u8>, Vec<u8>)>;

/// Whether the request carries a SigV4 signature: an `Authorization` header starting
/// `AWS4-HMAC-SHA256`, or a query with `X-Amz-Algorithm=AWS4-HMAC-SHA256`. It says nothing
/// about whether the signature is any good.
pub fn is_signed(parts: &Parts) -> bool {
    header_signed(parts) || query_signed(&parse_query(parts.uri.query()))
}

fn header_signed(parts: &Parts) -> bool {
    parts
        .headers
        .get_all(AUTHORIZATION)
        .iter()
        .any(|v| v.as_bytes().starts_with(ALGORITHM.as_bytes()))
}

fn query_signed(query: &Query) -> bool {
    query
        .iter()
        .any(|(k, v)| k == Q_ALGORITHM && v == ALGORITHM.as_bytes())
}

impl SigV4Verifier {
    /// A verifier for credential scopes `<date>/<region>/<service>/aws4_request`, accepting the
    /// given `(access key id, secret access key, scopes)`. Should an access key id repeat, the
    /// last entry wins (config validation is expected to refuse duplicates).
    pub fn new(
        region: String,
        service: String,
        credentials: Vec<(String, String, Vec<String>)>,
    ) -> SigV4Verifier {
        let keys = credentials
            .into_iter()
            .map(|(id, secret, scopes)| {
                let key = Key {
                    secret: secret.into(),
                    scopes: scopes.into_iter().map(Into::into).collect(),
                };
                (id, key)
            })
            .collect();
        SigV4Verifier {
            region,
            service,
            keys,
        }
    }

    /// Verifies a signed request. `parts` must be the request as received (path and query
    /// untouched, all headers); `body` is the whole buffered body; `now` is the current time.
    pub fn verify(
        &self,
        parts: &Parts,
        body: &[u8],
        now: SystemTime,
    ) -> Result<SigV4Identity, SigV4Error> {
        self.verify_path(parts, parts.uri.path(), body, now)
    }

    /// [`SigV4Verifier::verify`] for a request whose URI the gateway has made canonical:
    /// `path` is the path as the client sent (and signed) it.
    pub fn verify_path(
        &self,
        parts: &Parts,
        path: &str,
        body: &[u8],
        now: SystemTime,
    ) -> Result<SigV4Identity, SigV4Error> {
        let query = parse_query(parts.uri.query());
        let presented = presented(parts, &query)?;

        if presented.scope_region != self.region
            || presented.scope_service != self.service
            || presented.scope_date != presented.amz_date[..SCOPE_DATE_LEN]
        {
            return Err(SigV4Error::WrongScope);
        }
        let key = self
            .keys
            .get(&presented.access_key_id)
            .ok_or(SigV4Error::UnknownKey)?;
        check_fresh(&presented, now)?;

        let payload_hash = payload_hash(parts, body)?;
        let creq = canonical_request(parts, path, &query, &presented, &payload_hash)?;
        let sts = string_to_sign(&presented, &creq);
        let signing_key = signing_key(
            &key.secret,
            &presented.scope_date,
            &self.region,
            &self.service,
        );
        hmac::verify(&signing_key, sts.as_bytes(), &presented.signature)
            .map_err(|_| SigV4Error::BadSignature)?;

        Ok(SigV4Identity {
            access_key_id: presented.access_key_id,
            scopes: key.scopes.clone(),
        })
    }
}

/// Reads the signature's claims from the `Authorization` header or the query, and checks
/// everything that needs neither the key nor the clock.
fn presented(parts: &Parts, query: &Query) -> Result<Presented, SigV4Error> {
    let by_header = header_signed(parts);
    let by_query = query_signed(query);
    let mut p = match (by_header, by_query) {
        (false, false) => return Err(SigV4Error::Unsigned),
        (true, true) => return Err(SigV4Error::Malformed),
        (true, false) => from_header(parts)?,
        (false, true) => from_query(query)?,
    };
    check_signed_headers(&p.signed_headers)?;
    if !p.signed_header_names().any(|h| h == "host") {
        return Err(SigV4Error::Malformed);
    }
    // A security token sent as a header is only meaningful when the signature covers it.
    if parts.headers.contains_key(X_AMZ_SECURITY_TOKEN)
        && !p.signed_header_names().any(|h| h == X_AMZ_SECURITY_TOKEN)
    {
        return Err(SigV4Error::Malformed);
    }
    p.timestamp = parse_amz_date(&p.amz_date).ok_or(SigV4Error::Malformed)?;
    Ok(p)
}

/// `Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`.
fn from_header(parts: &Parts) -> Result<Presented, SigV4Error> {
    let mut values = parts.headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(SigV4Error::Malformed);
    };
    let value = value.to_str().map_err(|_| SigV4Error::Malformed)?;
    let rest = value
        .strip_prefix(ALGORITHM)
        .filter(|r| r.starts_with([' ', '\t']))
        .ok_or(SigV4Error::Malformed)?;
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for component in rest.split(',') {
        let (name, v) = component
            .trim()
            .split_once('=')
            .ok_or(SigV4Error::Malformed)?;
        let slot = match name {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => return Err(SigV4Error::Malformed),
        };
        if slot.replace(v).is_some() {
            return Err(SigV4Error::Malformed);
        }
    }
    let (Some(credential), Some(signed_headers), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(SigV4Error::Malformed);
    };
    let amz_date = header_date(parts)?;
    presented_from(
        Form::Header,
        credential,
        signed_headers,
        signature,
        amz_date,
    )
}

/// The request's date in the header form: `x-amz-date`, else an HTTP `Date` header.
fn header_date(parts: &Parts) -> Result<String, SigV4Error> {
    let single = |name| {
        let mut values = parts.headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (None, _) => Ok(None),
            (Some(v), None) => v.to_str().map(|s| Some(s.trim())).map_err(|_| ()),
            (Some(_), Some(_)) => Err(()),
        }
    };
    if let Some(d) = single(X_AMZ_DATE).map_err(|_| SigV4Error::Malformed)? {
        return Ok(d.to_string());
    }
    let d = single(DATE.as_str())
        .map_err(|_| SigV4Error::Malformed)?
        .ok_or(SigV4Error::Malformed)?;
    let t = httpdate::parse_http_date(d).map_err(|_| SigV4Error::Malformed)?;
    format_amz_date(t).ok_or(SigV4Error::Malformed)
}

/// `?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=...&X-Amz-Signature=...`.
fn from_query(query: &Query) -> Result<Presented, SigV4Error> {
    let one = |name: &[u8]| -> Result<&str, SigV4Error> {
        let mut values = query.iter().filter(|(k, _)| k == name);
        match (values.next(), values.next()) {
            (Some((_, v)), None) => std::str::from_utf8(v).map_err(|_| SigV4Error::Malformed),
            _ => Err(SigV4Error::Malformed),
        }
    };
    one(Q_ALGORITHM)?;
    let expires: u64 = one(Q_EXPIRES)?.parse().map_err(|_| SigV4Error::Malformed)?;
    if expires == 0 || expires > MAX_PRESIGNED_EXPIRES.as_secs() {
        return Err(SigV4Error::Malformed);
    }
    presented_from(
        Form::Query { expires },
        one(Q_CREDENTIAL)?,
        one(Q_SIGNED_HEADERS)?,
        one(Q_SIGNATURE)?,
        one(Q_DATE)?.to_string(),
    )
}

/// Splits `AKID/20150830/us-east-1/service/aws4_request` and decodes the signature.
fn presented_from(
    form: Form,
    credential: &str,
    signed_headers: &str,
    signature: &str,
    amz_date: String,
) -> Result<Presented, SigV4Error> {
    let mut it = credential.split('/');
    let (Some(id), Some(date), Some(region), Some(service), Some(TERMINATOR), None) = (
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
    ) else {
        return Err(SigV4Error::Malformed);
    };
    if id.is_empty()
        || region.is_empty()
        || service.is_empty()
        || date.len() != SCOPE_DATE_LEN
        || !date.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(SigV4Error::Malformed);
    }
    let mut sig = [0u8; 32];
    hex::decode_to_slice(signature, &mut sig).map_err(|_| SigV4Error::Malformed)?;
    Ok(Presented {
        form,
        access_key_id: id.to_string(),
        scope_date: date.to_string(),
        scope_region: region.to_string(),
        scope_service: service.to_string(),
        signed_headers: signed_headers.to_string(),
        signature: sig,
        amz_date,
        timestamp: 0,
    })
}

/// `SignedHeaders` must be lower-case header names, sorted, unique, at most
/// [`MAX_SIGNED_HEADERS`].
fn check_signed_headers(list: &str) -> Result<(), SigV4Error> {
    let mut previous: Option<&str> = None;
    for (i, name) in list.split(';').enumerate() {
        let token =
            |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b);
        if i >= MAX_SIGNED_HEADERS
            || name.is_empty()
            || !name.bytes().all(token)
            || previous.is_some_and(|p| p >= name)
        {
            return Err(SigV4Error::Malformed);
        }
        previous = Some(name);
    }
    Ok(())
}

fn now_secs(now: SystemTime) -> i64 {
    match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn check_fresh(p: &Presented, now: SystemTime) -> Result<(), SigV4Error> {
    let now = now_secs(now);
    let skew = MAX_CLOCK_SKEW.as_secs() as i64;
    let fresh = match p.form {
        Form::Header => (p.timestamp - now).abs() <= skew,
        // `expires` is at most MAX_PRESIGNED_EXPIRES, so the sum cannot overflow.
        Form::Query { expires } => p.timestamp <= now + skew && now <= p.timestamp + expires as i64,
    };
    if fresh {
        Ok(())
    } else {
        Err(SigV4Error::Stale)
    }
}

/// The hashed payload line: `x-amz-content-sha256` when sent (and equal to the body's hash),
/// else the body's hash.
fn payload_hash(parts: &Parts, body: &[u8]) -> Result<String, SigV4Error> {
    let body_hash = crate::util::sha256_hex(body);
    let mut values = parts.headers.get_all(X_AMZ_CONTENT_SHA256).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(body_hash),
        (Some(v), None) => {
            let v = v.to_str().map_err(|_| SigV4Error::Malformed)?.trim();
            if v == UNSIGNED_PAYLOAD
                || v.starts_with(STREAMING_PAYLOAD_PREFIX)
                || !v.eq_ignore_ascii_case(&body_hash)
            {
                return Err(SigV4Error::BodyMismatch);
            }
            Ok(v.to_string())
        }
        (Some(_), Some(_)) => Err(SigV4Error::Malformed),
    }
}

/// The canonical request, as bytes (header values need not be UTF-8).
fn canonical_request(
    parts: &Parts,
    path: &str,
    query: &Query,
    p: &Presented,
    payload_hash: &str,
) -> Result<Vec<u8>, SigV4Error> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(canonical_uri(path).as_bytes());
    out.push(b'\n');
    let skip_signature = matches!(p.form, Form::Query { .. });
    out.extend_from_slice(canonical_query(query, skip_signature).as_bytes());
    out.push(b'\n');
    for name in p.signed_header_names() {
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        let values: Vec<&[u8]> = if name == HOST.as_str() && !parts.headers.contains_key(HOST) {
            // HTTP/2: no Host header, the authority is in the URI.
            parts
                .uri
                .authority()
                .map(|a| a.as_str().as_bytes())
                .into_iter()
                .collect()
        } else {
            parts
                .headers
                .get_all(name)
                .iter()
                .map(|v| v.as_bytes())
                .collect()
        };
        if values.is_empty() {
            return Err(SigV4Error::Malformed);
        }
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            trim_all(v, &mut out);
        }
        out.push(b'\n');
    }
    out.push(b'\n');
    out.extend_from_slice(p.signed_headers.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(payload_hash.as_bytes());
    Ok(out)
}

/// `AWS4-HMAC-SHA256\n<amz date>\n<scope>\n<hex(sha256(canonical request))>`.
fn string_to_sign(p: &Presented, creq: &[u8]) -> String {
    format!(
        "{ALGORITHM}\n{}\n{}/{}/{}/{TERMINATOR}\n{}",
        p.amz_date,
        p.scope_date,
        p.scope_region,
        p.scope_service,
        crate::util::sha256_hex(creq)
    )
}

/// `HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")`.
fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> hmac::Key {
    let step = |key: &[u8], data: &str| {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
    };
    let k_date = step(format!("AWS4{secret}").as_bytes(), date);
    let k_region = step(k_date.as_ref(), region);
    let k_service = step(k_region.as_ref(), service);
    let k_signing = step(k_service.as_ref(), TERMINATOR);
    hmac::Key::new(hmac::HMAC_SHA256, k_signing.as_ref())
}

/// Appends `v` with leading and trailing whitespace removed and runs of spaces made one.
fn trim_all(v: &[u8], out: &mut Vec<u8>) {
    let is_ws = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !is_ws(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !is_ws(b)).map_or(start, |i| i + 1);
    let mut last_space = false;
    for &b in &v[start..end] {
        if b == b' ' {
            if !last_space {
                out.push(b);
            }
            last_space = true;
        } else {
            out.push(b);
            last_space = false;
        }
    }
}

/// AWS's URI encoding: `A-Za-z0-9-_.~` bare (and `/` when `keep_slash`), every other byte as
/// `%XX` with upper-case hex.
fn uri_encode(bytes: &[u8], keep_slash: bool, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
    }
}

/// The canonical URI of a path as sent: dot and empty segments removed, then encoded once more
/// (see the module docs: `/a%20b` becomes `/a%2520b`).
fn canonical_uri(path: &str) -> String {
    let normalized = normalize_path(path);
    let mut out = String::with_capacity(normalized.len() + 16);
    uri_encode(normalized.as_bytes(), true, &mut out);
    out
}

/// RFC 3986 section 5.2.4 dot-segment removal plus collapsing of empty segments, as AWS's
/// signers do for every service but S3. Always starts with `/`; keeps a trailing `/`.
fn normalize_path(path: &str) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    if path.is_empty() {
        return Cow::Borrowed("/");
    }
    if path.starts_with('/') && !path.contains("//") && !path.contains('.') {
        return Cow::Borrowed(path);
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len() + 1);
    out.push('/');
    out.push_str(&segments.join("/"));
    let trailing = ["/", "/.", "/./", "/..", "/../"]
        .iter()
        .any(|s| path.ends_with(s));
    if trailing && !out.ends_with('/') {
        out.push('/');
    }
    Cow::Owned(out)
}

/// Splits a raw query on `&` (empty pieces skipped) and the first `=`, and decodes `%XX` and
/// `+` (a space). Invalid `%` sequences stay as they are; bytes need not be UTF-8.
fn parse_query(query: Option<&str>) -> Query {
    query
        .unwrap_or("")
        .split('&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| {
            let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
            (form_decode(k.as_bytes()), form_decode(v.as_bytes()))
        })
        .collect()
}

fn form_decode(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => match (hex(s[i + 1]), hex(s[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// The canonical query string: every pair re-encoded, sorted by name then value, joined by `&`;
/// `X-Amz-Signature` left out when `skip_signature` (the presigned form).
fn canonical_query(query: &Query, skip_signature: bool) -> String {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .filter(|(k, _)| !(skip_signature && k == Q_SIGNATURE))
        .map(|(k, v)| {
            let (mut ek, mut ev) = (String::new(), String::new());
            uri_encode(k, false, &mut ek);
            uri_encode(v, false, &mut ev);
            (ek, ev)
        })
        .collect();
    pairs.sort_unstable();
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// `YYYYMMDDTHHMMSSZ` to seconds since the epoch.
fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    // ASCII only: slicing below is by byte position (a decoded query value may be any UTF-8).
    if !s.is_ascii() || b.len() != AMZ_DATE_LEN || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let d = &s[r];
        d.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| d.parse().ok())
            .flatten()
    };
    let date = time::Date::from_calendar_date(
        num(0..4)? as i32,
        time::Month::try_from(num(4..6)? as u8).ok()?,
        num(6..8)? as u8,
    )
    .ok()?;
    let t = time::Time::from_hms(num(9..11)? as u8, num(11..13)? as u8, num(13..15)? as u8).ok()?;
    Some(
        time::PrimitiveDateTime::new(date, t)
            .assume_utc()
            .unix_timestamp(),
    )
}

/// Seconds since the epoch to `YYYYMMDDTHHMMSSZ`.
fn format_amz_date(t: SystemTime) -> Option<String> {
    let t = time::OffsetDateTime::from(t);
    if !(0..=9999).contains(&t.year()) {
        return None;
    }
    Some(format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    ))
}

#[cfg(test)]
#[path = "sigv4_tests.rs"]
mod tests;
