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
        (&Method::GET, "/usage") => usage(&gw, &snap, req.uri().query().unwrap_or("")).await,
        (&Method::POST, "/issuer/rotate") => match &snap.issuer {
            Some(issuer) => match issuer.keys().rotate() {
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
        (
            _,
            "/healthz" | "/readyz" | "/metrics" | "/config" | "/reload" | "/issuer/rotate"
            | "/usage",
        ) => json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"message": "Method Not Allowed"}),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"message": "Not Found"}),
        ),
    };
    Ok(resp)
}

/// Longest range `/usage` reports at once.
const MAX_USAGE_DAYS: i64 = 400;

/// `GET /usage?key=ID[&start=YYYY-MM-DD&end=YYYY-MM-DD]`: per-day used and remaining for one key.
/// The range defaults to the current quota period (or the last 7 days without a quota).
/// `remaining` is what was left of the period's quota at the end of that day.
async fn usage(
    gw: &Gateway,
    snap: &crate::snapshot::Snapshot,
    query: &str,
) -> Response<Full<Bytes>> {
    use crate::limits::period::{day_label, parse_day};
    let bad = |m: &str| json(StatusCode::BAD_REQUEST, serde_json::json!({"message": m}));
    let params: std::collections::HashMap<String, String> =
        form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
    let Some(id) = params.get("key") else {
        return bad("key is required: /usage?key=ID");
    };
    let Some(key) = snap.keys.as_ref().and_then(|t| t.by_id(id)) else {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"message": "no such API key"}),
        );
    };
    let Some(plan) = key.plan.map(|i| &snap.plans[i]) else {
        return json(
            StatusCode::OK,
            serde_json::json!({"key": id, "plan": null, "items": []}),
        );
    };
    let now = time::OffsetDateTime::now_utc();
    let (default_start, default_end) = match plan.quota {
        Some(q) => {
            let (s, e) = q.period.bounds(now);
            (
                s.date(),
                (e - time::Duration::days(1)).date().min(now.date()),
            )
        }
        None => (now.date() - time::Duration::days(6), now.date()),
    };
    let parse = |name: &str, default| match params.get(name) {
        Some(v) => parse_day(v).ok_or(()),
        None => Ok(default),
    };
    let (Ok(start), Ok(end)) = (parse("start", default_start), parse("end", default_end)) else {
        return bad("start and end are dates: YYYY-MM-DD");
    };
    if end < start || (end - start).whole_days() >= MAX_USAGE_DAYS {
        return bad("end must not be before start, and the range is at most 400 days");
    }
    // Read from the start of the period containing `start`, so `remaining` is right.
    let from = plan
        .quota
        .map_or(start, |q| {
            q.period.bounds(start.midnight().assume_utc()).0.date()
        })
        .min(start);
    let days = match gw
        .limits()
        .store
        .usage(&plan.name, &key.id, from, end)
        .await
    {
        Ok(d) => d,
        Err(e) => {
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"message": format!("usage unavailable: {e}")}),
            );
        }
    };
    let mut items = Vec::new();
    let mut period = None;
    let mut used_in_period = 0u64;
    for d in days {
        let Some(date) = parse_day(&d.day) else {
            continue;
        };
        if let Some(q) = plan.quota {
            let label = q.period.label(date.midnight().assume_utc());
            if period.as_ref() != Some(&label) {
                period = Some(label);
                used_in_period = 0;
            }
            used_in_period += d.used;
        }
        if date >= start {
            items.push(serde_json::json!({
                "day": day_label(date),
                "used": d.used,
                "remaining": plan.quota.map(|q| q.limit.saturating_sub(used_in_period)),
            }));
        }
    }
    json(
        StatusCode::OK,
        serde_json::json!({
            "key": id,
            "plan": &*plan.name,
            "quota": plan.quota.map(|q| serde_json::json!({"limit": q.limit, "period": format!("{:?}", q.period).to_lowercase()})),
            "start": day_label(start),
            "end": day_label(end),
            "items": items,
        }),
    )
}
