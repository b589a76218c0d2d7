//! The claim rules of a JWT authorizer, checked after the signature: issuer, audience (else
//! `client_id`), expiry, not-before, issued-at, `token_use`, and the shape of `scope`/`scp`.
//! Pure functions over a clock value, so the time arithmetic is unit-tested with a fake clock.

use serde::Deserialize;

use super::token_error::TokenError;

/// The claims tollgate reads. Everything is optional at parse time so that a missing claim is
/// reported as the rule it breaks, not as a parse failure.
#[derive(Debug, Default, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: Option<String>,
    /// Subject (for client-credentials tokens, the client id).
    pub sub: Option<serde_json::Value>,
    /// Audience: a string or an array of strings.
    pub aud: Option<serde_json::Value>,
    /// The OAuth client the token was issued to (Cognito access tokens carry this, not `aud`).
    pub client_id: Option<serde_json::Value>,
    /// Expiry, seconds since the epoch.
    pub exp: Option<serde_json::Value>,
    /// Not before.
    pub nbf: Option<serde_json::Value>,
    /// Issued at.
    pub iat: Option<serde_json::Value>,
    /// `access` or `id` (Cognito).
    pub token_use: Option<serde_json::Value>,
    /// Space-separated scopes.
    pub scope: Option<serde_json::Value>,
    /// Scopes as an array (some providers).
    pub scp: Option<serde_json::Value>,
}

/// What one authorizer requires of a token's claims.
#[derive(Debug, Clone)]
pub struct ClaimRules {
    /// Required `iss`.
    pub issuer: String,
    /// Accepted audiences; empty means not checked.
    pub audience: Vec<String>,
    /// Required `token_use`.
    pub token_use: Option<String>,
    /// Tolerated clock skew in seconds.
    pub leeway: u64,
}

/// The parts of a verified token the gateway keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedClaims {
    /// `sub`.
    pub subject: Option<String>,
    /// `client_id`, else a single-valued `aud`.
    pub client_id: Option<String>,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
}

fn as_time(v: &Option<serde_json::Value>) -> Result<Option<u64>, TokenError> {
    match v {
        None => Ok(None),
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| *f >= 0.0 && f.is_finite())
                    .map(|f| f as u64)
            })
            .map(Some)
            .ok_or(TokenError::BadClaim),
        Some(_) => Err(TokenError::BadClaim),
    }
}

fn as_opt_str(v: &Option<serde_json::Value>) -> Result<Option<&str>, TokenError> {
    match v {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(TokenError::BadClaim),
    }
}

/// Checks `claims` against `rules` at time `now` (seconds since the epoch).
pub fn check(claims: &Claims, rules: &ClaimRules, now: u64) -> Result<CheckedClaims, TokenError> {
    // Types first: a claim of the wrong type is malformed whatever its value.
    let exp = as_time(&claims.exp)?.ok_or(TokenError::BadClaim)?;
    let nbf = as_time(&claims.nbf)?;
    let iat = as_time(&claims.iat)?;
    let subject = as_opt_str(&claims.sub)?.map(str::to_string);
    let client_id = as_opt_str(&claims.client_id)?;
    let token_use = as_opt_str(&claims.token_use)?;
    let scopes = scopes(claims)?;

    if exp.saturating_add(rules.leeway) <= now {
        return Err(TokenError::Expired);
    }
    if nbf.is_some_and(|nbf| nbf > now.saturating_add(rules.leeway)) {
        return Err(TokenError::NotYetValid);
    }
    if iat.is_some_and(|iat| iat > now.saturating_add(rules.leeway)) {
        return Err(TokenError::NotYetValid);
    }
    if claims.iss.as_deref() != Some(rules.issuer.as_str()) {
        return Err(TokenError::WrongIssuer);
    }
    let auds: Vec<&str> = match &claims.aud {
        None => Vec::new(),
        Some(serde_json::Value::String(s)) => vec![s.as_str()],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().ok_or(TokenError::BadClaim))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(TokenError::BadClaim),
    };
    if !rules.audience.is_empty() {
        let ok = if claims.aud.is_some() {
            auds.iter().any(|a| rules.audience.iter().any(|x| x == a))
        } else {
            client_id.is_some_and(|c| rules.audience.iter().any(|x| x == c))
        };
        if !ok {
            return Err(TokenError::WrongAudience);
        }
    }
    if let Some(required) = &rules.token_use
        && token_use != Some(required.as_str())
    {
        return Err(TokenError::WrongTokenUse);
    }
    let client_id = client_id
        .map(str::to_string)
        .or_else(|| (auds.len() == 1).then(|| auds[0].to_string()));
    Ok(CheckedClaims {
        subject,
        client_id,
        scopes,
        expires_at: exp,
    })
}

/// Scopes from `scope` (a space-separated string) or `scp` (an array of strings, or a string).
fn scopes(claims: &Claims) -> Result<Vec<String>, TokenError> {
    let mut out = Vec::new();
    match &claims.scope {
        None => {}
        Some(serde_json::Value::String(s)) => out.extend(s.split_whitespace().map(str::to_string)),
        Some(_) => return Err(TokenError::BadClaim),
    }
    match &claims.scp {
        None => {}
        Some(serde_json::Value::Array(a)) => {
            for v in a {
                out.push(v.as_str().ok_or(TokenError::BadClaim)?.to_string());
            }
        }
        Some(serde_json::Value::String(s)) => out.extend(s.split_whitespace().map(str::to_string)),
        Some(_) => return Err(TokenError::BadClaim),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;

    fn rules() -> ClaimRules {
        ClaimRules {
            issuer: "https://idp.example".into(),
            audience: vec!["app".into()],
            token_use: Some("access".into()),
            leeway: 30,
        }
    }

    fn claims(v: serde_json::Value) -> Claims {
        serde_json::from_value(v).unwrap()
    }

    fn good() -> serde_json::Value {
        json!({"iss": "https://idp.example", "client_id": "app", "exp": NOW + 60,
               "iat": NOW, "token_use": "access", "scope": "api/read api/write", "sub": "app"})
    }

    fn with(k: &str, v: serde_json::Value) -> Claims {
        let mut g = good();
        g[k] = v;
        claims(g)
    }

    fn without(k: &str) -> Claims {
        let mut g = good();
        g.as_object_mut().unwrap().remove(k);
        claims(g)
    }

    #[test]
    fn a_good_token_passes_and_yields_identity() {
        let c = check(&claims(good()), &rules(), NOW).unwrap();
        assert_eq!(c.scopes, vec!["api/read", "api/write"]);
        assert_eq!(c.client_id.as_deref(), Some("app"));
        assert_eq!(c.subject.as_deref(), Some("app"));
    }

    #[test]
    fn expiry_with_leeway() {
        let r = rules();
        assert!(
            check(&with("exp", json!(NOW - 29)), &r, NOW).is_ok(),
            "inside leeway"
        );
        assert_eq!(
            check(&with("exp", json!(NOW - 30)), &r, NOW),
            Err(TokenError::Expired)
        );
        assert_eq!(check(&without("exp"), &r, NOW), Err(TokenError::BadClaim));
        assert_eq!(
            check(&with("exp", json!("soon")), &r, NOW),
            Err(TokenError::BadClaim)
        );
    }

    #[test]
    fn not_before_and_issued_at_in_the_future() {
        let r = rules();
        assert!(check(&with("nbf", json!(NOW + 30)), &r, NOW).is_ok());
        assert_eq!(
            check(&with("nbf", json!(NOW + 31)), &r, NOW),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(
            check(&with("iat", json!(NOW + 31)), &r, NOW),
            Err(TokenError::NotYetValid)
        );
    }

    #[test]
    fn issuer_must_match_and_be_present() {
        assert_eq!(
            check(&with("iss", json!("https://evil")), &rules(), NOW),
            Err(TokenError::WrongIssuer)
        );
        assert_eq!(
            check(&without("iss"), &rules(), NOW),
            Err(TokenError::WrongIssuer)
        );
    }

    #[test]
    fn audience_then_client_id() {
        let r = rules();
        assert!(check(&with("aud", json!("app")), &r, NOW).is_ok());
        assert!(check(&with("aud", json!(["other", "app"])), &r, NOW).is_ok());
        // aud present but wrong: client_id is not consulted.
        assert_eq!(
            check(&with("aud", json!("other")), &r, NOW),
            Err(TokenError::WrongAudience)
        );
        assert_eq!(
            check(&with("client_id", json!("other")), &r, NOW),
            Err(TokenError::WrongAudience)
        );
        assert_eq!(
            check(&with("aud", json!(7)), &r, NOW),
            Err(TokenError::BadClaim)
        );
        let open = ClaimRules {
            audience: vec![],
            ..rules()
        };
        assert!(check(&with("client_id", json!("anyone")), &open, NOW).is_ok());
    }

    #[test]
    fn token_use() {
        assert_eq!(
            check(&with("token_use", json!("id")), &rules(), NOW),
            Err(TokenError::WrongTokenUse)
        );
        assert_eq!(
            check(&without("token_use"), &rules(), NOW),
            Err(TokenError::WrongTokenUse)
        );
        let any = ClaimRules {
            token_use: None,
            ..rules()
        };
        assert!(check(&with("token_use", json!("id")), &any, NOW).is_ok());
    }

    #[test]
    fn scope_shapes() {
        let c = check(&with("scp", json!(["a", "b"])), &rules(), NOW).unwrap();
        assert!(c.scopes.contains(&"a".to_string()) && c.scopes.contains(&"api/read".to_string()));
        assert_eq!(
            check(&with("scope", json!(["a"])), &rules(), NOW),
            Err(TokenError::BadClaim)
        );
        assert_eq!(
            check(&with("scp", json!([1])), &rules(), NOW),
            Err(TokenError::BadClaim)
        );
        assert_eq!(
            check(&with("sub", json!(5)), &rules(), NOW),
            Err(TokenError::BadClaim)
        );
    }
}
