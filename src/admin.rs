//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `/config`, `POST /reload`,
//! `POST /issuer/rotate`. Loopback by default; when a token is configured every request must
//! carry it as a bearer token.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::gateway::Gateway;

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    text(status, "application/json", v.to_string())
}

/// Serves one admin request.
pub async fn handle(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let snap = gw.snapshot();
    if let Some(token) = &snap.admin.token {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let ok = presented.is_some_and(|p| {
            aws_lc_rs::constant_time::verify_slices_are_equal(p.as_bytes(), token.as_bytes())
                .is_ok()
        });
        if !ok {
            let mut r = json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"message": "Unauthorized"}),
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return Ok(r);
        }
    }
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        (&Method::GET, "/readyz") => {
            if gw.is_ready() {
                json(StatusCode::OK, serde_json::json!({"status": "ready"}))
            } else {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": "not ready"}),
                )
            }
        }
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            gw.metrics().render(),
        ),
        (&Method::GET, "/config") => {
            let loaded = snap
                .loaded_at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            json(
                StatusCode::OK,
                serde_json::json!({
                    "generation": snap.generation,
                    "hash": snap.hash,
                    "loaded_at": httpdate::fmt_http_date(snap.loaded_at),
                    "loaded_at_unix": loaded,
                    "path": gw.config_path().display().to_string(),
                    "routes": snap.routes.len(),
                    "last_error": gw.last_error(),
                }),
            )
        }
        (&Method::POST, "/reload") => match gw.reload() {
            Ok(generation) => json(
                StatusCode::OK,
                serde_json::json!({"result": "ok", "generation": generation}),
            ),
            Err(errs) => json(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({"result": "error", "errors": errs.iter().map(ToString::to_string).collect::<Vec<_>>()}),
            ),
        },
        (&Method::POST, "/issuer/rotate") => match &snap.issuer {
            Some(issuer) => match issuer.keys().rotate(issuer.ttl()) {
                Ok(kid) => json(
                    StatusCode::OK,
                    serde_json::json!({"result": "ok", "kid": kid}),
                ),
                Err(e) => json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    serde_json::json!({"result": "error", "error": e}),
                ),
            },
            None => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"message": "no issuer is configured"}),
            ),
        },
        (_, "/healthz" | "/readyz" | "/metrics" | "/config" | "/reload" | "/issuer/rotate") => {
            json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({"message": "Method Not Allowed"}),
            )
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"message": "Not Found"}),
        ),
    };
    Ok(resp)
}
