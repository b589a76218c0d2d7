//! Entry points for the fuzz targets in `fuzz/` (docs/fuzzing.md): each takes arbitrary bytes,
//! drives one of the parsers a hostile client or a broken file reaches, and panics when an
//! invariant fails. Not part of tollgate's API; hidden from its docs.
//!
//! The same entry points replay the seed corpus `fuzz/corpus/<target>/` on every `cargo test`
//! (the test at the bottom), so an input that once broke a parser keeps failing the build.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use crate::auth::claims::ClaimRules;
use crate::auth::jwks::Loaded;
use crate::auth::keys::KeySet;
use crate::auth::sigv4::SigV4Verifier;
use crate::auth::{JwtAuthorizer, JwtSettings, KeySource, TokenCache};

/// The HS256 secret of the fuzzed JWT authorizer; `fuzz/seeds.py` signs the seed tokens with it.
pub const JWT_SECRET: &[u8] = b"tollgate-fuzzing-secret-0123456789";
/// The `iss` the fuzzed JWT authorizer requires.
pub const JWT_ISSUER: &str = "https://issuer.fuzz.test";
/// The SigV4 credential the fuzzed verifier accepts (access key id, secret).
pub const SIGV4_KEY: (&str, &str) = ("AKIDFUZZEXAMPLE", "fuzz/secret/key");
/// The SigV4 region and service.
pub const SIGV4_SCOPE: (&str, &str) = ("eu-west-1", "execute-api");
/// The time the SigV4 verifier takes as now: 2026-12-01T12:00:00Z (seeds are signed then).
pub const SIGV4_NOW_UNIX: u64 = 1_796_126_400;

/// One current-thread runtime for the async parsers, built once per process.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime builds")
    })
}

/// Percent-decodes `%XX` escapes, leaving anything else as it is.
fn percent_decode(b: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The path canonicaliser (`crate::canonical::canonicalize`), on the bytes as a path and on
/// the path `http::Uri` makes of them (what hyper hands the pipeline). A canonical path is a
/// fixed point (same path, match form and exceptions again), ASCII, free of control bytes,
/// lower-case escapes and dot segments however an upstream splits it, and names the resource
/// the client named once decoded.
pub fn canonical_path(data: &[u8]) {
    accepted_path(data);
}

/// [`canonical_path`]; whether the bytes as a path were made canonical.
fn accepted_path(data: &[u8]) -> bool {
    if let Ok(uri) = http::Uri::try_from(data) {
        check_canonical(uri.path());
    }
    std::str::from_utf8(data).is_ok_and(check_canonical)
}

fn check_canonical(raw: &str) -> bool {
    let Ok(c) = crate::canonical::canonicalize(raw) else {
        return false;
    };
    let again = crate::canonical::canonicalize(&c.path)
        .unwrap_or_else(|e| panic!("canonical {:?} of {raw:?} refused: {e:?}", c.path));
    assert_eq!(again.path, c.path, "not a fixed point: {raw:?}");
    assert_eq!(again.match_form, c.match_form, "match form moved: {raw:?}");
    assert_eq!(again.exceptions, c.exceptions, "exceptions moved: {raw:?}");
    let path = c.path.as_bytes();
    assert!(path.is_ascii(), "non-ASCII canonical path {:?}", c.path);
    assert!(
        !path.iter().any(|&b| b < 0x20 || b == 0x7f),
        "control byte in {:?}",
        c.path
    );
    for w in path.windows(3) {
        if w[0] == b'%' {
            assert!(
                w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit(),
                "bad escape in {:?}",
                c.path
            );
            assert!(
                !w[1].is_ascii_lowercase() && !w[2].is_ascii_lowercase(),
                "lower-case escape in {:?}",
                c.path
            );
        }
    }
    let decoded = percent_decode(path);
    for seg in decoded.split(|&b| matches!(b, b'/' | b'\\' | b';')) {
        assert!(
            seg != b"." && seg != b"..",
            "dot segment in {:?} from {raw:?}",
            c.path
        );
    }
    assert_eq!(
        decoded,
        percent_decode(raw.as_bytes()),
        "{raw:?} and its canonical {:?} name different resources",
        c.path
    );
    true
}

/// The JWT authorizer the pipeline uses (HS256 with [`JWT_SECRET`], `iss` [`JWT_ISSUER`]), on
/// the bytes as a bearer token: header and claims parsing, `alg`, `crit`, `kid`, time and
/// audience rules. A token it accepts has three parts and a header naming HS256 without
/// `crit`; asking twice (the second time from its cache) gives the same answer.
pub fn jwt(data: &[u8]) {
    accepted_jwt(data);
}

/// [`jwt`]; whether the token was accepted.
fn accepted_jwt(data: &[u8]) -> bool {
    struct Fixture {
        authorizer: JwtAuthorizer,
    }
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    let f = FIXTURE.get_or_init(|| {
        let metrics = crate::metrics::Metrics::new();
        let keys = KeySource::Static(Arc::new(Loaded::fixed(
            KeySet::from_secret(JWT_SECRET),
            JWT_SECRET,
        )));
        let settings = JwtSettings {
            name: "fuzz".into(),
            header: http::header::AUTHORIZATION,
            algorithms: vec![jsonwebtoken::Algorithm::HS256],
            rules: ClaimRules {
                issuer: JWT_ISSUER.into(),
                audience: Vec::new(),
                token_use: None,
                leeway: 30,
            },
        };
        Fixture {
            authorizer: JwtAuthorizer::new(settings, keys, TokenCache::new(1024), &metrics)
                .expect("the fuzzing authorizer builds"),
        }
    });
    let Ok(token) = std::str::from_utf8(data) else {
        return false;
    };
    let first = runtime().block_on(f.authorizer.verify(token));
    let second = runtime().block_on(f.authorizer.verify(token));
    match (&first, &second) {
        (Ok(a), Ok(b)) => assert_eq!(a.subject, b.subject, "{token:?}"),
        (Err(a), Err(b)) => assert_eq!(a, b, "{token:?}"),
        _ => panic!("{token:?} verified once and not the other time: {first:?} / {second:?}"),
    }
    if first.is_ok() {
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "accepted a token of {} parts", parts.len());
        let header = jsonwebtoken::decode_header(token).expect("an accepted token has a header");
        assert_eq!(header.alg, jsonwebtoken::Algorithm::HS256);
        let raw = base64_url(parts[0]).expect("an accepted header is base64url");
        let v: serde_json::Value =
            serde_json::from_slice(&raw).expect("an accepted header is JSON");
        assert!(v.get("crit").is_none(), "accepted a crit header: {v}");
    }
    first.is_ok()
}

/// Decodes unpadded base64url.
fn base64_url(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
}

/// The PROXY protocol reader (`crate::proxy_protocol::read_header`) on the bytes as the
/// start of a connection. It never reads past its header: an accepted v1 header is at most 107
/// bytes ending in CRLF, an accepted v2 header is its 16-byte preamble and the length it gives.
pub fn proxy_protocol(data: &[u8]) {
    accepted_proxy_header(data);
}

/// [`proxy_protocol`]; whether a header was read.
fn accepted_proxy_header(data: &[u8]) -> bool {
    let mut rest = data;
    let got = runtime().block_on(crate::proxy_protocol::read_header(&mut rest));
    let used = data.len() - rest.len();
    if got.is_err() {
        return false;
    }
    if data.starts_with(b"PROXY ") {
        assert!(used <= 107, "a v1 header of {used} bytes");
        assert!(
            data[..used].ends_with(b"\r\n"),
            "a v1 header not ending in CRLF"
        );
    } else {
        assert!(used >= 16, "a v2 header of {used} bytes");
        let len = usize::from(u16::from_be_bytes([data[14], data[15]]));
        assert_eq!(used, 16 + len, "a v2 header read past its length");
    }
    true
}

/// SigV4 verification ([`SigV4Verifier::verify`]) of a request written as text: a request
/// line `METHOD URI`, header lines `name: value`, an empty line, the body. Verifying twice
/// gives the same answer, and `verify_path` with the request's own path is `verify`.
pub fn sigv4(data: &[u8]) {
    accepted_sigv4(data);
}

/// [`sigv4`]; whether the signature was accepted.
fn accepted_sigv4(data: &[u8]) -> bool {
    static VERIFIER: OnceLock<SigV4Verifier> = OnceLock::new();
    let v = VERIFIER.get_or_init(|| {
        SigV4Verifier::new(
            SIGV4_SCOPE.0.into(),
            SIGV4_SCOPE.1.into(),
            vec![(SIGV4_KEY.0.into(), SIGV4_KEY.1.into(), vec!["read".into()])],
        )
    });
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let mut lines = head.split(|&b| b == b'\n');
    let Some(request_line) = lines.next() else {
        return false;
    };
    let mut words = request_line.splitn(2, |&b| b == b' ');
    let (Some(method), Some(uri)) = (words.next(), words.next()) else {
        return false;
    };
    let mut req = http::Request::builder().method(method).uri(uri);
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return false;
        };
        let value = line[colon + 1..]
            .strip_prefix(b" ")
            .unwrap_or(&line[colon + 1..]);
        req = req.header(&line[..colon], value);
    }
    let Ok(req) = req.body(()) else {
        return false;
    };
    let (parts, ()) = req.into_parts();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(SIGV4_NOW_UNIX);
    let first = v.verify(&parts, body, now);
    let second = v.verify_path(&parts, parts.uri.path(), body, now);
    assert_eq!(first.is_ok(), second.is_ok());
    if let (Err(a), Err(b)) = (&first, &second) {
        assert_eq!(a, b);
    }
    first.is_ok()
}

/// A scratch directory for the file-reading targets, made once per process.
fn scratch() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tollgate-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        dir
    })
}

/// Config loading as `tollgate run` does it, offline ([`crate::gateway::Gateway::load`]): read,
/// parse, validate, compile. Every error names the file and a message, and a line within the
/// file (or 0, for the file as a whole), never a panic.
pub fn config_load(data: &[u8]) {
    accepted_config(data);
}

/// [`config_load`]; whether the config loaded.
fn accepted_config(data: &[u8]) -> bool {
    let path = scratch().join("gateway.yaml");
    std::fs::write(&path, data).expect("the scratch config is written");
    let _rt = runtime().enter();
    if let Err(errors) = crate::gateway::Gateway::load(&path, false) {
        assert!(!errors.is_empty(), "a failed load without an error");
        let lines = data.split(|&b| b == b'\n').count();
        for e in &errors {
            assert!(
                !e.message.trim().is_empty(),
                "an error without a message: {e:?}"
            );
            if e.file == path {
                assert!(e.line <= lines + 1, "{e:?} past the file's {lines} lines");
            }
        }
        return false;
    }
    true
}

/// The API key CSV import ([`crate::apikeys::read_csv`]). Every error names a line of the
/// file (or 0 when it cannot be read at all); every key read has a name.
pub fn csv_import(data: &[u8]) {
    accepted_csv(data);
}

/// [`csv_import`]; whether the file was imported without an error.
fn accepted_csv(data: &[u8]) -> bool {
    let path = scratch().join("keys.csv");
    std::fs::write(&path, data).expect("the scratch CSV is written");
    let lines = data.split(|&b| b == b'\n').count();
    match crate::apikeys::read_csv(&path) {
        Ok((records, literal)) => {
            assert!(literal <= records.len());
            for r in &records {
                assert!(!r.id.is_empty(), "a key without a name");
            }
            true
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "a failed import without an error");
            for e in &errors {
                assert!(!e.message.is_empty());
                assert!(e.line <= lines + 1, "{e:?} past the file's {lines} lines");
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a target accepted an input.
    type Verdict = fn(&[u8]) -> bool;

    /// Every seed of every target's corpus goes through its entry point: inputs that once
    /// broke a parser stay in the corpus and fail the build if they break it again. Seeds named
    /// `seed-ok-*` are well-formed inputs the parser must accept (so the corpus keeps reaching
    /// past the first check); `seed-bad-*` ones must be refused.
    #[test]
    fn the_seed_corpus_passes_every_target() {
        let targets: [(&str, Verdict); 6] = [
            ("canonical_path", accepted_path),
            ("jwt", accepted_jwt),
            ("proxy_protocol", accepted_proxy_header),
            ("sigv4", accepted_sigv4),
            ("config_load", accepted_config),
            ("csv_import", accepted_csv),
        ];
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        for (name, accepts) in targets {
            let dir = root.join(name);
            let mut seeds: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|e| e.expect("a corpus entry").path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
                })
                .collect();
            seeds.sort();
            let ok = seeds
                .iter()
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("seed-ok-"))
                })
                .count();
            assert!(
                ok >= 1 && seeds.len() > ok,
                "{}: {ok} of {} seeds are seed-ok-*",
                dir.display(),
                seeds.len()
            );
            for seed in seeds {
                let data = std::fs::read(&seed).expect("a readable seed");
                let file = seed.file_name().unwrap_or_default().to_string_lossy();
                let accepted = std::panic::catch_unwind(|| accepts(&data))
                    .unwrap_or_else(|_| panic!("{name}: {} breaks an invariant", seed.display()));
                if file.starts_with("seed-ok-") {
                    assert!(accepted, "{name}: {} is refused", seed.display());
                } else if file.starts_with("seed-bad-") {
                    assert!(!accepted, "{name}: {} is accepted", seed.display());
                }
            }
        }
    }
}
