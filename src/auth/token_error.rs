//! Why a bearer token was refused.

/// Why a token was refused. Each maps to 401 `invalid_token` with its own description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not three base64url parts of JSON, or too long.
    Malformed,
    /// `alg` not allowed for this authorizer or this key.
    BadAlgorithm,
    /// `kid` names no key, even after a refetch.
    UnknownKey,
    /// Signature does not verify.
    BadSignature,
    /// `exp` has passed.
    Expired,
    /// `nbf` or `iat` lies in the future.
    NotYetValid,
    /// `iss` differs from the authorizer's issuer.
    WrongIssuer,
    /// Neither `aud` nor `client_id` is an accepted audience.
    WrongAudience,
    /// `token_use` differs from the required one.
    WrongTokenUse,
    /// A claim has the wrong type, or a required claim is missing.
    BadClaim,
    /// The protected header has a `crit` member: it names extensions the recipient must
    /// understand (RFC 7515 §4.1.11), and tollgate understands none.
    CriticalHeader,
    /// `issuer: self` only: the token's `client_id` is no longer one of the issuer's clients, or
    /// the client may no longer hold any of the token's scopes.
    RevokedClient,
}

impl TokenError {
    /// The `error_description` sent in `www-authenticate`.
    pub fn description(self) -> &'static str {
        match self {
            TokenError::Malformed => "the token is malformed",
            TokenError::BadAlgorithm => "the token's signing algorithm is not accepted",
            TokenError::UnknownKey => "the token's signing key is not known",
            TokenError::BadSignature => "the token's signature is invalid",
            TokenError::Expired => "the token has expired",
            TokenError::NotYetValid => "the token is not valid yet",
            TokenError::WrongIssuer => "the token's issuer is not accepted",
            TokenError::WrongAudience => "the token does not have a valid audience",
            TokenError::WrongTokenUse => "the token's token_use is not accepted",
            TokenError::BadClaim => "the token's claims are malformed",
            TokenError::CriticalHeader => "the token requires an unsupported extension",
            TokenError::RevokedClient => "the token's client is not allowed",
        }
    }

    /// The `reason` label for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Malformed => "token_malformed",
            TokenError::BadAlgorithm => "token_algorithm",
            TokenError::UnknownKey => "token_unknown_kid",
            TokenError::BadSignature => "token_signature",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::WrongIssuer => "token_issuer",
            TokenError::WrongAudience => "token_audience",
            TokenError::WrongTokenUse => "token_use",
            TokenError::BadClaim => "token_claims",
            TokenError::CriticalHeader => "token_crit_header",
            TokenError::RevokedClient => "token_client_revoked",
        }
    }
}
