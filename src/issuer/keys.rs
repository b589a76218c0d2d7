//! The issuer's RS256 signing keys: the current key (one PEM file, created with mode 0600 on
//! first start and reused after restarts) and retired keys that stay published until every
//! token they signed has expired. Rotation renames the current file to
//! `<name>.retired-<unix time it may be forgotten>` and writes a new key in its place, so the
//! whole key ring survives restarts as plain files.

use crate::auth::now_unix;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use jsonwebtoken::EncodingKey;

use crate::auth::jwks::Loaded;
use crate::auth::keys::KeySet;

/// Longest token lifetime accepted in config; keys stay published at least this long after
/// they stop signing, so every token they signed can still be verified.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(86_400);

/// Extra time a retired key stays published beyond the token lifetime (clock skew, leeway).
pub const RETIRE_MARGIN: Duration = Duration::from_secs(300);
/// Smallest RSA key accepted from a configured file.
pub const MIN_RSA_BITS: usize = 2048;

/// One signing key.
pub struct SigningKey {
    /// Key id (RFC 7638 thumbprint).
    pub kid: String,
    /// For signing.
    pub encoding: EncodingKey,
    /// The public JWK.
    pub jwk: serde_json::Value,
}

struct Ring {
    current: Arc<SigningKey>,
    /// Retired keys and the unix time after which they are no longer published.
    retired: Vec<(Arc<SigningKey>, u64)>,
}

/// The issuer's keys, shared by every snapshot that names the same key file.
pub struct KeyRing {
    path: PathBuf,
    /// Set by [`KeyRing::persist`]: the ring may write its files (rotation, cleanup).
    writable: std::sync::atomic::AtomicBool,
    /// A key generated at open because the file did not exist, not written yet.
    unsaved: Mutex<Option<String>>,
    ring: ArcSwap<Ring>,
    jwks: ArcSwap<Bytes>,
    verify: Arc<ArcSwap<Loaded>>,
    rotating: Mutex<()>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").field("path", &self.path).finish()
    }
}

/// Parses an RSA private key PEM (PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`).
fn parse_key(pem_text: &[u8], origin: &Path) -> Result<SigningKey, String> {
    let parsed =
        pem::parse(pem_text).map_err(|e| format!("{}: not a PEM file: {e}", origin.display()))?;
    let pair = match parsed.tag() {
        "PRIVATE KEY" => KeyPair::from_pkcs8(parsed.contents()),
        "RSA PRIVATE KEY" => KeyPair::from_der(parsed.contents()),
        other => {
            return Err(format!(
                "{}: expected an RSA private key, found {other:?}",
                origin.display()
            ));
        }
    }
    .map_err(|e| format!("{}: not a usable RSA private key: {e}", origin.display()))?;
    if pair.public_modulus_len() * 8 < MIN_RSA_BITS {
        return Err(format!(
            "{}: RSA keys must have at least {MIN_RSA_BITS} bits",
            origin.display()
        ));
    }
    signing_key(&pair, pem_text, origin)
}

fn signing_key(pair: &KeyPair, pem_text: &[u8], origin: &Path) -> Result<SigningKey, String> {
    let public = pair.public_key();
    let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
    let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
    // RFC 7638: the thumbprint of the required members in lexicographic order.
    let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
    let kid = URL_SAFE_NO_PAD.encode(crate::util::sha256(canonical.as_bytes()));
    let encoding = EncodingKey::from_rsa_pem(pem_text)
        .map_err(|e| format!("{}: cannot be used for signing: {e}", origin.display()))?;
    let jwk =
        serde_json::json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": n, "e": e});
    Ok(SigningKey { kid, encoding, jwk })
}

/// Generates a 2048-bit RSA key and its PKCS#8 PEM text.
fn generate() -> Result<(KeyPair, String), String> {
    let pair =
        KeyPair::generate(KeySize::Rsa2048).map_err(|_| "RSA key generation failed".to_string())?;
    let der = pair
        .as_der()
        .map_err(|_| "RSA key encoding failed".to_string())?;
    let text = pem::encode(&pem::Pem::new("PRIVATE KEY", der.as_ref().to_vec()));
    Ok((pair, text))
}

/// Writes `text` to `path` with mode 0600, atomically (a temporary file renamed into place).
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    let dir = crate::util::parent_dir(path);
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

impl KeyRing {
    /// Opens the ring at `path` without writing anything: loads the current key and every
    /// retired key still to be published. A missing key is generated in memory, so a key that
    /// will be created on first start is not an error for `tollgate check`; [`KeyRing::persist`]
    /// writes it. Refuses an unreadable or unusable key file.
    pub fn open(path: &Path) -> Result<KeyRing, String> {
        let mut unsaved = None;
        let current = match std::fs::read(path) {
            Ok(text) => {
                if let Ok(meta) = std::fs::metadata(path)
                    && meta.permissions().mode() & 0o077 != 0
                {
                    tracing::warn!(path = %path.display(), "issuer signing key is readable by group or others; chmod 600 it");
                }
                parse_key(&text, path)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (pair, text) = generate()?;
                let key = signing_key(&pair, text.as_bytes(), path)?;
                unsaved = Some(text);
                key
            }
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let retired = Self::load_retired(path);
        let ring = KeyRing {
            path: path.to_path_buf(),
            writable: std::sync::atomic::AtomicBool::new(false),
            unsaved: Mutex::new(unsaved),
            ring: ArcSwap::from_pointee(Ring {
                current: Arc::new(current),
                retired: Vec::new(),
            }),
            jwks: ArcSwap::from_pointee(Bytes::new()),
            verify: Arc::new(ArcSwap::from_pointee(Loaded::default())),
            rotating: Mutex::new(()),
        };
        let current = ring.ring.load().current.clone();
        ring.install(Ring { current, retired });
        Ok(ring)
    }

    /// Makes the ring its files' owner, once a gateway is about to serve with it: writes a key
    /// [`KeyRing::open`] generated (0600), deletes retired keys past their publication, and
    /// allows rotation. Later calls do nothing. Refuses when the key cannot be written.
    pub fn persist(&self) -> Result<(), String> {
        let mut unsaved = self.unsaved.lock().expect("not poisoned");
        if self.writable.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        if let Some(text) = unsaved.as_ref() {
            write_private(&self.path, text)?;
            tracing::info!(path = %self.path.display(), "created the issuer signing key");
        }
        *unsaved = None;
        let prefix = Self::retired_prefix(&self.path);
        let now = now_unix();
        if let Ok(entries) = std::fs::read_dir(crate::util::parent_dir(&self.path)) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name
                    .strip_prefix(&prefix)
                    .and_then(|t| t.parse::<u64>().ok())
                    .is_some_and(|until| until <= now)
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        self.writable
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    fn retired_prefix(path: &Path) -> String {
        format!(
            "{}.retired-",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        )
    }

    /// Retired keys beside `path` that are still to be published (expired ones are deleted by
    /// [`KeyRing::persist`]).
    fn load_retired(path: &Path) -> Vec<(Arc<SigningKey>, u64)> {
        let dir = crate::util::parent_dir(path);
        let prefix = Self::retired_prefix(path);
        let now = now_unix();
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return out;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(until) = name
                .strip_prefix(&prefix)
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            if until <= now {
                continue;
            }
            match std::fs::read(entry.path())
                .map_err(|e| e.to_string())
                .and_then(|t| parse_key(&t, &entry.path()))
            {
                Ok(k) => out.push((Arc::new(k), until)),
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "ignoring unreadable retired issuer key")
                }
            }
        }
        out
    }

    /// Makes `ring` current: the signing key, the published JWKS, and the keys `issuer: self`
    /// authorizers verify with (generation bumped so cached verdicts are re-checked).
    fn install(&self, ring: Ring) {
        let mut keys: Vec<&serde_json::Value> = vec![&ring.current.jwk];
        keys.extend(ring.retired.iter().map(|(k, _)| &k.jwk));
        let doc = serde_json::json!({ "keys": keys }).to_string();
        let generation = self.verify.load().generation + 1;
        match KeySet::from_jwks(doc.as_bytes()) {
            Ok(set) => self.verify.store(Arc::new(Loaded {
                keys: set,
                generation,
            })),
            Err(e) => tracing::error!(error = %e, "issuer keys could not be turned into a key set"),
        }
        self.jwks.store(Arc::new(Bytes::from(doc)));
        self.ring.store(Arc::new(ring));
    }

    /// The key new tokens are signed with.
    pub fn current(&self) -> Arc<SigningKey> {
        self.ring.load().current.clone()
    }

    /// The published JWKS document (current and retired keys); retired keys whose time has
    /// passed are dropped first.
    pub fn jwks(&self) -> Bytes {
        let ring = self.ring.load();
        let now = now_unix();
        if ring.retired.iter().any(|(_, until)| *until <= now) {
            let _guard = self.rotating.lock().expect("not poisoned");
            let ring = self.ring.load();
            let retired = ring
                .retired
                .iter()
                .filter(|(_, u)| *u > now)
                .cloned()
                .collect();
            self.install(Ring {
                current: ring.current.clone(),
                retired,
            });
        }
        self.jwks.load().as_ref().clone()
    }

    /// The keys `issuer: self` authorizers verify with.
    pub fn verify_keys(&self) -> Arc<ArcSwap<Loaded>> {
        self.verify.clone()
    }

    /// Rotates: a new key signs from now on; the old one stays published for the longest token
    /// lifetime plus [`RETIRE_MARGIN`], so tokens it signed keep verifying until they expire.
    /// Returns the new key id. Refuses when the ring is read-only or the files cannot be
    /// written; the current key is unchanged then.
    pub fn rotate(&self) -> Result<String, String> {
        if !self.writable.load(std::sync::atomic::Ordering::Acquire) {
            return Err("the key ring is read-only".into());
        }
        let _guard = self.rotating.lock().expect("not poisoned");
        // Tokens signed so far may have been minted under any lifetime the config allowed
        // (a reload may have shortened it since), so the old key stays for the longest one.
        let until = now_unix() + MAX_TOKEN_TTL.as_secs() + RETIRE_MARGIN.as_secs();
        let retired_path = self
            .path
            .with_file_name(format!("{}{until}", Self::retired_prefix(&self.path)));
        // The new key is on disk before the old one moves, so a failure leaves a current key.
        let (pair, text) = generate()?;
        let staged = self.path.with_extension("next");
        write_private(&staged, &text)?;
        let new = Arc::new(signing_key(&pair, text.as_bytes(), &self.path)?);
        std::fs::rename(&self.path, &retired_path)
            .map_err(|e| format!("cannot retire {}: {e}", self.path.display()))?;
        if let Err(e) = std::fs::rename(&staged, &self.path) {
            let _ = std::fs::rename(&retired_path, &self.path);
            return Err(format!(
                "cannot install the new key at {}: {e}",
                self.path.display()
            ));
        }
        let old = self.ring.load();
        let mut retired = vec![(old.current.clone(), until)];
        retired.extend(old.retired.iter().cloned());
        let kid = new.kid.clone();
        self.install(Ring {
            current: new,
            retired,
        });
        tracing::info!(kid = %kid, retired_until = until, "issuer signing key rotated");
        Ok(kid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring as a running gateway has it: opened, then persisted.
    fn opened(path: &Path) -> Result<KeyRing, String> {
        let ring = KeyRing::open(path)?;
        ring.persist()?;
        Ok(ring)
    }

    #[test]
    fn created_once_with_mode_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/issuer.pem");
        let a = opened(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = opened(&path).unwrap();
        assert_eq!(
            a.current().kid,
            b.current().kid,
            "the key survives a restart"
        );
    }

    #[test]
    fn rotation_publishes_both_until_the_old_one_retires() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("issuer.pem");
        let ring = opened(&path).unwrap();
        let old = ring.current().kid.clone();
        let gen_before = ring.verify_keys().load().generation;
        let new = ring.rotate().unwrap();
        assert_ne!(old, new);
        let jwks: serde_json::Value = serde_json::from_slice(&ring.jwks()).unwrap();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids, vec![new.as_str(), old.as_str()]);
        assert!(ring.verify_keys().load().generation > gen_before);
        // A restart sees the same ring.
        let again = opened(&path).unwrap();
        assert_eq!(again.current().kid, new);
        let jwks: serde_json::Value = serde_json::from_slice(&again.jwks()).unwrap();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn expired_retired_keys_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("issuer.pem");
        let ring = opened(&path).unwrap();
        let old = ring.current();
        // A retired file whose time has passed.
        let text = std::fs::read(&path).unwrap();
        let stale = dir
            .path()
            .join(format!("issuer.pem.retired-{}", now_unix() - 1));
        std::fs::write(&stale, &text).unwrap();
        ring.rotate().unwrap();
        let again = opened(&path).unwrap();
        assert!(!stale.exists(), "expired retired key files are removed");
        let jwks: serde_json::Value = serde_json::from_slice(&again.jwks()).unwrap();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert!(
            kids.contains(&old.kid.as_str()),
            "retired for ttl + margin, still published"
        );
    }

    #[test]
    fn bad_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("issuer.pem");
        std::fs::write(&path, "not a pem").unwrap();
        assert!(opened(&path).unwrap_err().contains("not a PEM file"));
        std::fs::write(
            &path,
            pem::encode(&pem::Pem::new("CERTIFICATE", vec![1, 2, 3])),
        )
        .unwrap();
        assert!(
            opened(&path)
                .unwrap_err()
                .contains("expected an RSA private key")
        );
    }
}
