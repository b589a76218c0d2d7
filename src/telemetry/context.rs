//! Trace context on the wire: W3C `traceparent`/`tracestate` and AWS X-Ray's
//! `X-Amzn-Trace-Id`, read from a request and written for the upstream. Parsing is strict: a
//! header that is not exactly one well-formed value is ignored, as Trace Context requires, and
//! the request starts a trace of its own.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

/// `traceparent` (W3C Trace Context).
pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate` (W3C Trace Context).
pub(crate) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// `x-amzn-trace-id` (AWS X-Ray).
pub(crate) const XRAY: HeaderName = HeaderName::from_static("x-amzn-trace-id");

/// Longest `tracestate` passed on; Trace Context asks propagators to keep at least 512 bytes,
/// and a longer one is dropped whole rather than cut inside a member.
const MAX_TRACESTATE: usize = 512;

/// The parent a request's headers name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parent {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    /// The caller's sampling decision; `None` when it left the decision to us (X-Ray `Sampled=?`).
    pub(crate) sampled: Option<bool>,
}

/// The parent from `traceparent`, else (with `xray`) from `X-Amzn-Trace-Id`.
pub(crate) fn parent(h: &HeaderMap, xray: bool) -> Option<Parent> {
    if let Some(v) = single(h, &TRACEPARENT) {
        return parse_traceparent(v.as_bytes());
    }
    if xray {
        return single(h, &XRAY).and_then(|v| parse_xray(v.as_bytes()));
    }
    None
}

/// The `tracestate` to carry on (several headers joined by commas, as one list), if it fits.
pub(crate) fn tracestate(h: &HeaderMap) -> Option<String> {
    let mut out = String::new();
    for v in h.get_all(&TRACESTATE) {
        let s = v.to_str().ok()?.trim();
        if s.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(s);
    }
    (!out.is_empty() && out.len() <= MAX_TRACESTATE).then_some(out)
}

/// The one value of `name`; none when absent or sent twice (two parents are no parent).
fn single<'h>(h: &'h HeaderMap, name: &HeaderName) -> Option<&'h HeaderValue> {
    let mut all = h.get_all(name).iter();
    let first = all.next()?;
    all.next().is_none().then_some(first)
}

/// `version-traceid-parentid-flags`, lower-case hex. Version `00` is exactly 55 bytes; a later
/// version may append fields after a `-`; `ff` and all-zero ids are invalid.
pub(crate) fn parse_traceparent(b: &[u8]) -> Option<Parent> {
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let version = hex_byte(&b[0..2])?;
    if version == 0xff || (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    hex_into(&b[3..35], &mut trace_id)?;
    hex_into(&b[36..52], &mut span_id)?;
    let flags = hex_byte(&b[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: Some(flags & 1 == 1),
    })
}

/// `Root=1-{8 hex time}-{24 hex};Parent={16 hex};Sampled={0|1|?}` in any order, other fields
/// ignored. The root's 32 hex digits are the W3C trace id; without a `Parent` there is nothing
/// to continue.
pub(crate) fn parse_xray(b: &[u8]) -> Option<Parent> {
    let s = std::str::from_utf8(b).ok()?;
    let (mut root, mut parent, mut sampled) = (None, None, None);
    for field in s.split(';') {
        let (k, v) = field.trim().split_once('=')?;
        match k {
            "Root" => root = Some(v),
            "Parent" => parent = Some(v),
            "Sampled" => sampled = Some(v),
            _ => {}
        }
    }
    let root = root?.as_bytes();
    if root.len() != 35 || &root[..2] != b"1-" || root[10] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    hex_into(&root[2..10], &mut trace_id[..4])?;
    hex_into(&root[11..35], &mut trace_id[4..])?;
    let mut span_id = [0u8; 8];
    let p = parent?.as_bytes();
    if p.len() != 16 {
        return None;
    }
    hex_into(p, &mut span_id)?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    let sampled = match sampled {
        Some("1") => Some(true),
        Some("0") => Some(false),
        _ => None,
    };
    Some(Parent {
        trace_id,
        span_id,
        sampled,
    })
}

/// `00-{trace}-{span}-{01|00}`.
pub(crate) fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> HeaderValue {
    let mut b = [0u8; 55];
    b[..3].copy_from_slice(b"00-");
    hex_out(trace_id, &mut b[3..35]);
    b[35] = b'-';
    hex_out(span_id, &mut b[36..52]);
    b[52] = b'-';
    b[53] = b'0';
    b[54] = if sampled { b'1' } else { b'0' };
    HeaderValue::from_bytes(&b).expect("hex is a valid header value")
}

/// `Root=1-{trace[0..4]}-{trace[4..]};Parent={span};Sampled={1|0}`.
pub(crate) fn xray(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> HeaderValue {
    let mut b = [0u8; 74];
    b[..7].copy_from_slice(b"Root=1-");
    hex_out(&trace_id[..4], &mut b[7..15]);
    b[15] = b'-';
    hex_out(&trace_id[4..], &mut b[16..40]);
    b[40..48].copy_from_slice(b";Parent=");
    hex_out(span_id, &mut b[48..64]);
    b[64..73].copy_from_slice(b";Sampled=");
    b[73] = if sampled { b'1' } else { b'0' };
    HeaderValue::from_bytes(&b).expect("ascii is a valid header value")
}

/// Lower-case hex of `id`.
#[cfg(test)]
pub(crate) fn hex(id: &[u8]) -> String {
    let mut out = vec![0u8; id.len() * 2];
    hex_out(id, &mut out);
    String::from_utf8(out).expect("hex is ascii")
}

/// Lower-case hex of a trace id, on the stack (for the access log and request ids).
pub(crate) fn trace_hex(id: &[u8; 16]) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex_out(id, &mut out);
    out
}

fn hex_out(src: &[u8], dst: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in src.iter().enumerate() {
        dst[2 * i] = DIGITS[usize::from(byte >> 4)];
        dst[2 * i + 1] = DIGITS[usize::from(byte & 0xf)];
    }
}

fn hex_into(src: &[u8], dst: &mut [u8]) -> Option<()> {
    if src.len() != dst.len() * 2 {
        return None;
    }
    for (i, d) in dst.iter_mut().enumerate() {
        *d = hex_byte(&src[2 * i..2 * i + 2])?;
    }
    Some(())
}

/// Two lower-case hex digits (Trace Context allows no upper case).
fn hex_byte(b: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(b[0])? << 4 | digit(b[1])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_round_trips_and_refuses_malformed_values() {
        let p = parse_traceparent(TP.as_bytes()).unwrap();
        assert_eq!(p.sampled, Some(true));
        assert_eq!(traceparent(&p.trace_id, &p.span_id, true), TP);
        let unsampled = parse_traceparent(&TP.replace("-01", "-00").into_bytes()).unwrap();
        assert_eq!(unsampled.sampled, Some(false));
        for bad in [
            TP.to_uppercase(),
            TP.replace("4bf92f3577b34da6a3ce929d0e0e4736", &"0".repeat(32)),
            TP.replace("00f067aa0ba902b7", &"0".repeat(16)),
            format!("ff{}", &TP[2..]),
            format!("{TP}-extra"),
            TP[..54].to_string(),
            TP.replace('-', "_"),
        ] {
            assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad}");
        }
        // A later version may add fields.
        assert!(parse_traceparent(format!("01{}-what", &TP[2..]).as_bytes()).is_some());
    }

    #[test]
    fn two_traceparents_are_no_parent() {
        let mut h = HeaderMap::new();
        h.append(TRACEPARENT, HeaderValue::from_static(TP));
        assert!(parent(&h, false).is_some());
        h.append(TRACEPARENT, HeaderValue::from_static(TP));
        assert_eq!(parent(&h, false), None);
    }

    #[test]
    fn xray_maps_to_the_same_ids() {
        let v = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
        let p = parse_xray(v.as_bytes()).unwrap();
        assert_eq!(hex(&p.trace_id), "5759e988bd862e3fe1be46a994272793");
        assert_eq!(hex(&p.span_id), "53995c3f42cd8ad8");
        assert_eq!(p.sampled, Some(true));
        assert_eq!(xray(&p.trace_id, &p.span_id, true), v);
        let undecided = parse_xray(
            b"Sampled=?;Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8",
        );
        assert_eq!(undecided.unwrap().sampled, None);
        assert_eq!(
            parse_xray(b"Root=1-5759e988-bd862e3fe1be46a994272793"),
            None
        );
        assert_eq!(
            parse_xray(b"Root=2-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8"),
            None
        );
        let mut h = HeaderMap::new();
        h.insert(XRAY, HeaderValue::from_static(v));
        assert_eq!(parent(&h, false), None);
        assert_eq!(parent(&h, true), Some(p));
    }

    #[test]
    fn tracestate_is_joined_and_bounded() {
        let mut h = HeaderMap::new();
        assert_eq!(tracestate(&h), None);
        h.append(TRACESTATE, HeaderValue::from_static("a=1"));
        h.append(TRACESTATE, HeaderValue::from_static("b=2"));
        assert_eq!(tracestate(&h).as_deref(), Some("a=1,b=2"));
        h.insert(
            TRACESTATE,
            HeaderValue::from_str(&format!("a={}", "x".repeat(600))).unwrap(),
        );
        assert_eq!(tracestate(&h), None);
    }
}
