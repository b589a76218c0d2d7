//! The answers the gateway writes itself (refusals, the issuer's documents, admin endpoints):
//! the one builder of a fixed-body response, and the body type every public response has.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};

/// The body of every response on a public listener: a fixed one the gateway made, or the
/// upstream's stream.
pub type ResponseBody = Either<Full<Bytes>, hyper::body::Incoming>;

/// A response with `status`, `content-type` and a fixed body.
pub(crate) fn fixed(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A JSON response: `status`, `content-type: application/json` and `body`, already JSON.
pub(crate) fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    fixed(status, "application/json", body)
}

/// [`json`] as a public listener's response.
pub(crate) fn json_public(status: StatusCode, body: impl Into<Bytes>) -> Response<ResponseBody> {
    json(status, body).map(Either::Left)
}
