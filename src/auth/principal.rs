//! Who is calling: the [`Principal`] every authorizer establishes (for a JWT, its verified
//! [`Identity`]), what the scope check reads, and the identity headers the upstream is told.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::token_error::TokenError;
use super::{external, sigv4};

/// A verified caller, as the upstream will be told about it.
#[derive(Debug)]
pub struct Identity {
    /// `sub`.
    pub subject: Option<Box<str>>,
    /// `client_id` (or single `aud`).
    pub client_id: Option<Box<str>>,
    /// Granted scopes.
    pub scopes: Vec<Box<str>>,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
    /// Generation of the key set that verified it.
    pub key_generation: u64,
    /// Ready-made `x-tollgate-*` headers for the upstream.
    pub upstream_headers: Vec<(HeaderName, HeaderValue)>,
}

impl Identity {
    /// Whether the identity holds at least one of `required` (an empty list requires nothing).
    pub fn has_any_scope(&self, required: &[Box<str>]) -> bool {
        required.is_empty() || required.iter().any(|r| self.scopes.iter().any(|s| s == r))
    }

    /// The same identity holding only `scopes`, its `x-tollgate-scopes` header rebuilt (or
    /// dropped when `scopes` is empty).
    pub(super) fn with_scopes(&self, scopes: Vec<Box<str>>) -> Result<Identity, TokenError> {
        let mut upstream_headers: Vec<(HeaderName, HeaderValue)> = self
            .upstream_headers
            .iter()
            .filter(|(name, _)| *name != headers::SCOPES)
            .cloned()
            .collect();
        if !scopes.is_empty() {
            let joined = scopes.join(" ");
            let value = HeaderValue::from_str(&joined).map_err(|_| TokenError::BadClaim)?;
            upstream_headers.push((headers::SCOPES, value));
        }
        Ok(Identity {
            subject: self.subject.clone(),
            client_id: self.client_id.clone(),
            scopes,
            expires_at: self.expires_at,
            key_generation: self.key_generation,
            upstream_headers,
        })
    }
}

/// Names of the identity headers the upstream receives.
pub mod headers {
    use http::HeaderName;
    /// `sub`
    pub const PRINCIPAL: HeaderName = HeaderName::from_static("x-tollgate-principal");
    /// `client_id`
    pub const CLIENT_ID: HeaderName = HeaderName::from_static("x-tollgate-client-id");
    /// space-separated scopes
    pub const SCOPES: HeaderName = HeaderName::from_static("x-tollgate-scopes");
    /// authorizer name
    pub const AUTHORIZER: HeaderName = HeaderName::from_static("x-tollgate-authorizer");
}

/// `Bearer error="insufficient_scope", scope="a b"` for a route's scopes. Scope strings are
/// validated at config load to be header-safe.
pub fn insufficient_scope_header(scopes: &[Box<str>]) -> Result<HeaderValue, String> {
    let joined = scopes.iter().map(|s| &**s).collect::<Vec<_>>().join(" ");
    HeaderValue::from_str(&format!(
        "Bearer error=\"insufficient_scope\", scope=\"{joined}\""
    ))
    .map_err(|_| format!("scopes {joined:?} cannot be sent in a header"))
}

/// Who is calling, as the route's authorizer established it: what the scope check reads and
/// what the upstream is told.
#[derive(Debug, Clone)]
pub enum Principal {
    /// The route is open.
    Anonymous,
    /// A verified JWT.
    Jwt(Arc<Identity>),
    /// Allowed by an external authorizer, with the context it returned.
    External {
        /// The authorizer's answer.
        decision: Arc<external::Decision>,
        /// The authorizer's name, for `x-tollgate-authorizer`.
        authorizer: HeaderValue,
    },
    /// A request signed (SigV4) with a configured access key.
    SigV4 {
        /// The key that signed.
        identity: Arc<sigv4::SigV4Identity>,
        /// The authorizer's name, for `x-tollgate-authorizer`.
        authorizer: HeaderValue,
    },
}

impl Principal {
    /// Sets the `x-tollgate-*` identity headers the upstream receives (the client's own copies
    /// were removed before, `crate::headers`). A JWT's were made once, when it was verified.
    pub fn insert_upstream_headers(&self, h: &mut HeaderMap) {
        match self {
            Principal::Anonymous => {}
            Principal::Jwt(id) => {
                for (k, v) in &id.upstream_headers {
                    h.insert(k.clone(), v.clone());
                }
            }
            Principal::SigV4 {
                identity,
                authorizer,
            } => {
                if let Ok(v) = HeaderValue::from_str(&identity.access_key_id) {
                    h.insert(headers::PRINCIPAL, v);
                }
                if !identity.scopes.is_empty()
                    && let Ok(v) = HeaderValue::from_str(&identity.scopes.join(" "))
                {
                    h.insert(headers::SCOPES, v);
                }
                h.insert(headers::AUTHORIZER, authorizer.clone());
            }
            Principal::External {
                decision,
                authorizer,
            } => {
                for (k, v) in &decision.context_headers {
                    h.insert(k.clone(), v.clone());
                }
                h.insert(headers::AUTHORIZER, authorizer.clone());
            }
        }
    }

    /// Whether the caller holds at least one of `required` (empty: nothing is required). An
    /// external authorizer grants no scopes, and an open route's caller has none.
    pub fn has_any_scope(&self, required: &[Box<str>]) -> bool {
        match self {
            Principal::Jwt(id) => id.has_any_scope(required),
            Principal::SigV4 { identity, .. } => identity.has_any_scope(required),
            Principal::Anonymous | Principal::External { .. } => required.is_empty(),
        }
    }

    /// The caller's client id for a trace: a JWT's `client_id` (or single `aud`), a SigV4
    /// access key id.
    pub fn client_id(&self) -> Option<&str> {
        match self {
            Principal::Jwt(id) => id.client_id.as_deref(),
            Principal::SigV4 { identity, .. } => Some(identity.access_key_id.as_str()),
            Principal::Anonymous | Principal::External { .. } => None,
        }
    }

    /// The caller's name for the access log: a JWT's `sub`, a SigV4 access key id.
    pub fn log_name(&self) -> Option<&str> {
        match self {
            Principal::Jwt(id) => id.subject.as_deref(),
            Principal::SigV4 { identity, .. } => Some(identity.access_key_id.as_str()),
            Principal::Anonymous | Principal::External { .. } => None,
        }
    }
}
