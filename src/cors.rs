//! CORS (`cors:`): the settings in their response-ready form, compiled once, and what they do to
//! a request: a preflight is answered before any authorization (browsers send no credentials
//! on one), and an actual answer to an allowed origin gets the `access-control-*` headers.
//! Origins not allowed get none.

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::{Either, Full};

use crate::answer::ResponseBody;
use crate::config::schema::CorsCfg;

/// The methods allowed when `cors.allow_methods` is empty.
const DEFAULT_METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// CORS settings in their response-ready form.
#[derive(Debug, Clone)]
pub struct Cors {
    /// Allowed origins; `*` allows any.
    allow_origins: Vec<String>,
    /// `access-control-allow-headers` value, if any.
    allow_headers: Option<HeaderValue>,
    /// `access-control-allow-methods` value.
    allow_methods: HeaderValue,
    /// `access-control-expose-headers` value, if any.
    expose_headers: Option<HeaderValue>,
    /// `access-control-max-age` value, if any.
    max_age: Option<HeaderValue>,
    /// Whether credentials are allowed.
    allow_credentials: bool,
}

impl Cors {
    /// Compiles `cors:`. Refuses credentials for origin `*` and lists that cannot be header
    /// values; each error names the key (under `cors.`) it is about.
    pub(crate) fn compile(c: &CorsCfg) -> Result<Cors, Vec<(&'static str, String)>> {
        let mut errs = Vec::new();
        if c.allow_credentials && c.allow_origins.iter().any(|o| o == "*") {
            errs.push((
                "cors.allow_credentials",
                "credentials cannot be allowed for origin `*`".to_string(),
            ));
        }
        let mut list = |items: &[String], path: &'static str| -> Option<HeaderValue> {
            if items.is_empty() {
                return None;
            }
            HeaderValue::from_str(&items.join(", "))
                .inspect_err(|_| errs.push((path, "values cannot be sent in a header".into())))
                .ok()
        };
        let methods: Vec<String> = if c.allow_methods.is_empty() {
            DEFAULT_METHODS.iter().map(|m| m.to_string()).collect()
        } else {
            c.allow_methods.clone()
        };
        let cors = Cors {
            allow_origins: c.allow_origins.clone(),
            allow_headers: list(&c.allow_headers, "cors.allow_headers"),
            allow_methods: list(&methods, "cors.allow_methods")
                .unwrap_or_else(|| HeaderValue::from_static("GET")),
            expose_headers: list(&c.expose_headers, "cors.expose_headers"),
            max_age: c.max_age.map(|d| HeaderValue::from(d.0.as_secs())),
            allow_credentials: c.allow_credentials,
        };
        if errs.is_empty() { Ok(cors) } else { Err(errs) }
    }

    /// Whether `origin` may call.
    fn allows(&self, origin: &HeaderValue) -> bool {
        origin
            .to_str()
            .is_ok_and(|o| self.allow_origins.iter().any(|a| a == "*" || a == o))
    }

    /// The method a preflight asks about, when `req` is one (`OPTIONS` with `Origin` and a
    /// parseable `access-control-request-method`): the preflight is routed by it.
    pub(crate) fn preflight_method(&self, req: &Parts) -> Option<Method> {
        if req.method != Method::OPTIONS || !req.headers.contains_key(header::ORIGIN) {
            return None;
        }
        let m = req.headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        Method::from_bytes(m.as_bytes()).ok()
    }

    /// The answer to `req` when it is a preflight: 204, with the allowed methods, headers and
    /// max age when its origin is allowed.
    pub(crate) fn preflight(&self, req: &Parts) -> Option<Response<ResponseBody>> {
        self.preflight_method(req)?;
        let origin = req.headers.get(header::ORIGIN)?;
        let mut resp = Response::new(Either::Left(Full::default()));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        if self.allows(origin) {
            let h = resp.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                self.allow_methods.clone(),
            );
            if let Some(v) = &self.allow_headers {
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
            }
            if let Some(v) = &self.max_age {
                h.insert(header::ACCESS_CONTROL_MAX_AGE, v.clone());
            }
        }
        Some(resp)
    }

    /// Adds the CORS headers to an actual (non-preflight) answer for `origin`, when allowed.
    pub(crate) fn add_headers(&self, origin: &HeaderValue, h: &mut HeaderMap) {
        if !self.allows(origin) {
            return;
        }
        let wildcard = !self.allow_credentials && self.allow_origins.iter().any(|o| o == "*");
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            if wildcard {
                HeaderValue::from_static("*")
            } else {
                origin.clone()
            },
        );
        if !wildcard {
            h.append(header::VARY, HeaderValue::from_static("origin"));
        }
        if self.allow_credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(v) = &self.expose_headers {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
    }
}
