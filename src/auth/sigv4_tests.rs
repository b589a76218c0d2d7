//! Vectors from AWS's SigV4 signing test suite (as shipped in the `aws-sigv4` crate's
//! `aws-signing-test-suite/v4`): credentials AKIDEXAMPLE, 2015-08-30T12:36:00Z, us-east-1,
//! service `service`. Each vector names its directory.
use super::*;

#[test]
fn non_ascii_dates_are_malformed_not_a_panic() {
    assert_eq!(parse_amz_date("aaa\u{e9}aaaTaaaaaaZ"), None);
    assert_eq!(parse_amz_date("2015083\u{e9}T123600Z"), None);
    assert!(parse_amz_date("20150830T123600Z").is_some());
}

const AKID: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
/// 2015-08-30T12:36:00Z, the suite's signing time.
const SUITE_TIME: u64 = 1_440_938_160;
const SCOPE: &str = "AKIDEXAMPLE/20150830/us-east-1/service/aws4_request";
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn verifier() -> SigV4Verifier {
    SigV4Verifier::new(
        "us-east-1".into(),
        "service".into(),
        vec![(AKID.into(), SECRET.into(), vec!["orders/read".into()])],
    )
}

fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn auth(signed_headers: &str, signature: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential={SCOPE}, SignedHeaders={signed_headers}, Signature={signature}"
    )
}

/// The canonical request, string to sign and signature (hex) the verifier computes.
fn computed(p: &Parts, body: &[u8], secret: &str) -> (String, String, String) {
    let query = parse_query(p.uri.query());
    let pr = presented(p, &query).unwrap();
    let creq = canonical_request(
        p,
        p.uri.path(),
        &query,
        &pr,
        &payload_hash(p, body).unwrap(),
    )
    .unwrap();
    let sts = string_to_sign(&pr, &creq);
    let key = signing_key(secret, &pr.scope_date, &pr.scope_region, &pr.scope_service);
    let sig = hex::encode(hmac::sign(&key, sts.as_bytes()));
    (String::from_utf8(creq).unwrap(), sts, sig)
}

fn ok(p: &Parts, body: &[u8]) {
    let id = verifier().verify(p, body, at(SUITE_TIME)).unwrap();
    assert_eq!(id.access_key_id, AKID);
    assert_eq!(id.scopes, vec![Box::from("orders/read")]);
}

fn refused(p: &Parts, body: &[u8]) -> SigV4Error {
    verifier().verify(p, body, at(SUITE_TIME)).unwrap_err()
}

const VANILLA_SIG: &str = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";

fn vanilla() -> Parts {
    parts(
        "GET",
        "/",
        &[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
            ("authorization", &auth("host;x-amz-date", VANILLA_SIG)),
        ],
    )
}

#[test]
fn get_vanilla_canonical_request_string_to_sign_and_signature() {
    let p = vanilla();
    let (creq, sts, sig) = computed(&p, b"", SECRET);
    assert_eq!(
        creq,
        "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n\
         host;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        sts,
        "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n\
         bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
    );
    assert_eq!(sig, VANILLA_SIG);
    ok(&p, b"");
    assert!(is_signed(&p));
}

#[test]
fn get_vanilla_presigned() {
    let p = parts(
        "GET",
        "/?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request\
         &X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600\
         &X-Amz-Signature=e93c787ed7f371d5c6b165c1b38ede9550f4dce4144713e844b25b7192d3865d",
        &[("host", "example.amazonaws.com")],
    );
    let (creq, sts, _) = computed(&p, b"", SECRET);
    assert_eq!(
        creq,
        "GET\n/\nX-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request\
         &X-Amz-Date=20150830T123600Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host\n\
         host:example.amazonaws.com\n\nhost\n"
            .to_string()
            + EMPTY_SHA256
    );
    assert!(sts.ends_with("bb7705b4aa3cb8e8f5e1e0b3d4c0b64030797a313c8ceee43e33117cc43eadc5"));
    assert!(is_signed(&p));
    ok(&p, b"");
    // Valid until X-Amz-Expires has passed, and not before the clock-skew window.
    let v = verifier();
    assert!(v.verify(&p, b"", at(SUITE_TIME + 3600)).is_ok());
    assert_eq!(
        v.verify(&p, b"", at(SUITE_TIME + 3601)),
        Err(SigV4Error::Stale)
    );
    assert!(v.verify(&p, b"", at(SUITE_TIME - 300)).is_ok());
    assert_eq!(
        v.verify(&p, b"", at(SUITE_TIME - 301)),
        Err(SigV4Error::Stale)
    );
}

#[test]
fn get_vanilla_query_order_encoded() {
    let p = parts(
        "GET",
        "/?Param-3=Value3&Param=Value2&%E1%88%B4=Value1",
        &[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
            (
                "authorization",
                &auth(
                    "host;x-amz-date",
                    "371d3713e185cc334048618a97f809c9ffe339c62934c032af5a0e595648fcac",
                ),
            ),
        ],
    );
    let (creq, _, _) = computed(&p, b"", SECRET);
    assert!(creq.starts_with("GET\n/\n%E1%88%B4=Value1&Param=Value2&Param-3=Value3\n"));
    ok(&p, b"");
    // Tampered query: a changed value, an added pair, a dropped pair.
    for q in [
        "/?Param-3=Value3&Param=Value3&%E1%88%B4=Value1",
        "/?Param-3=Value3&Param=Value2&%E1%88%B4=Value1&x=1",
        "/?Param-3=Value3&Param=Value2",
    ] {
        let mut t = p.clone();
        t.uri = q.parse().unwrap();
        assert_eq!(refused(&t, b""), SigV4Error::BadSignature, "{q}");
    }
}

#[test]
fn get_vanilla_query_order_encoded_presigned() {
    let p = parts(
        "GET",
        "/?Param-3=Value3&Param=Value2&%E1%88%B4=Value1&X-Amz-Algorithm=AWS4-HMAC-SHA256\
         &X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request\
         &X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600\
         &X-Amz-Signature=c5f1848ceec943ac2ca68ee720460c23aaae30a2300586597ada94c4a65e4787",
        &[("host", "example.amazonaws.com")],
    );
    ok(&p, b"");
}

#[test]
fn get_vanilla_utf8_query() {
    // The suite sends the key raw (`/?ሴ=bar`); on the wire it is percent-encoded.
    let p = parts(
        "GET",
        "/?%E1%88%B4=bar",
        &[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
            (
                "authorization",
                &auth(
                    "host;x-amz-date",
                    "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04",
                ),
            ),
        ],
    );
    ok(&p, b"");
}

#[test]
fn get_header_value_trim() {
    let p = parts(
        "GET",
        "/",
        &[
            ("host", "example.amazonaws.com"),
            ("my-header1", "value1"),
            ("my-header2", "\"a   b   c\""),
            ("x-amz-date", "20150830T123600Z"),
            (
                "authorization",
                &auth(
                    "host;my-header1;my-header2;x-amz-date",
                    "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
                ),
            ),
        ],
    );
    let (creq, _, _) = computed(&p, b"", SECRET);
    assert!(
        creq.contains("\nmy-header1:value1\nmy-header2:\"a b c\"\n"),
        "{creq}"
    );
    ok(&p, b"");
    // Tampered header.
    let mut t = p.clone();
    t.headers.insert("my-header1", "value2".parse().unwrap());
    assert_eq!(refused(&t, b""), SigV4Error::BadSignature);
    // A signed header that went missing.
    let mut t = p.clone();
    t.headers.remove("my-header2");
    assert_eq!(refused(&t, b""), SigV4Error::Malformed);
    // Unsigned headers may be added freely.
    let mut t = p;
    t.headers
        .insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
    ok(&t, b"");
}

#[test]
fn get_header_key_duplicate() {
    let p = parts(
        "GET",
        "/",
        &[
            ("host", "example.amazonaws.com"),
            ("my-header1", "value2"),
            ("my-header1", "value2"),
            ("my-header1", "value1"),
            ("x-amz-date", "20150830T123600Z"),
            (
                "authorization",
                &auth(
                    "host;my-header1;x-amz-date",
                    "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea",
                ),
            ),
        ],
    );
    let (creq, _, _) = computed(&p, b"", SECRET);
    assert!(
        creq.contains("\nmy-header1:value2,value2,value1\n"),
        "{creq}"
    );
    ok(&p, b"");
}

#[test]
fn get_unreserved_and_slashes() {
    let unreserved = "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    for (path, sig) in [
        (
            unreserved,
            "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f",
        ),
        (
            "//example//",
            "9a624bd73a37c9a373b5312afbebe7a714a789de108f0bdfe846570885f57e84",
        ),
    ] {
        let p = parts(
            "GET",
            path,
            &[
                ("host", "example.amazonaws.com"),
                ("x-amz-date", "20150830T123600Z"),
                ("authorization", &auth("host;x-amz-date", sig)),
            ],
        );
        ok(&p, b"");
    }
    assert_eq!(canonical_uri("//example//"), "/example/");
    assert_eq!(canonical_uri(unreserved), unreserved);
}

const TOKEN: &str = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";

#[test]
fn get_vanilla_with_session_token() {
    let p = parts(
        "GET",
        "/",
        &[
            ("host", "example.amazonaws.com"),
            ("x-amz-security-token", TOKEN),
            ("x-amz-date", "20150830T123600Z"),
            (
                "authorization",
                &auth(
                    "host;x-amz-date;x-amz-security-token",
                    "07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8",
                ),
            ),
        ],
    );
    let (_, sts, _) = computed(&p, b"", SECRET);
    assert!(sts.ends_with("067b36aa60031588cea4a4cde1f21215227a047690c72247f1d70b32fbbfad2b"));
    ok(&p, b"");
    // The token is signed data: changing it breaks the signature.
    let mut t = p;
    t.headers
        .insert("x-amz-security-token", "other".parse().unwrap());
    assert_eq!(refused(&t, b""), SigV4Error::BadSignature);

    // Presigned: the token travels in the query and is signed with it.
    let q = parts(
        "GET",
        &format!(
            "/?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request\
             &X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Security-Token={TOKEN}\
             &X-Amz-Signature=7ff2b50b376cb4d151970630573d6291dc128cc5c2a12ffb237f73cc53f67b6c"
        ),
        &[("host", "example.amazonaws.com")],
    );
    ok(&q, b"");
}

#[test]
fn an_unsigned_security_token_header_is_refused() {
    // get-vanilla, plus a token header the signature does not cover.
    let mut p = vanilla();
    p.headers
        .insert("x-amz-security-token", TOKEN.parse().unwrap());
    assert_eq!(refused(&p, b""), SigV4Error::Malformed);
}

#[test]
fn post_sts_header_before() {
    let token = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";
    let p = parts(
        "POST",
        "/",
        &[
            ("host", "example.amazonaws.com"),
            ("x-amz-security-token", token),
            ("x-amz-date", "20150830T123600Z"),
            (
                "authorization",
                &auth(
                    "host;x-amz-date;x-amz-security-token",
                    "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead",
                ),
            ),
        ],
    );
    ok(&p, b"");
}

const FORM_BODY: &[u8] = b"Param1=value1";
const FORM_SHA256: &str = "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e";

fn form_post() -> Parts {
    parts(
        "POST",
        "/",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("host", "example.amazonaws.com"),
            ("content-length", "13"),
            ("x-amz-date", "20150830T123600Z"),
            ("x-amz-content-sha256", FORM_SHA256),
            (
                "authorization",
                &auth(
                    "content-length;content-type;host;x-amz-content-sha256;x-amz-date",
                    "d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b",
                ),
            ),
        ],
    )
}

#[test]
fn post_x_www_form_urlencoded() {
    let p = form_post();
    let (creq, sts, _) = computed(&p, FORM_BODY, SECRET);
    assert_eq!(
        creq,
        format!(
            "POST\n/\n\ncontent-length:13\ncontent-type:application/x-www-form-urlencoded\n\
             host:example.amazonaws.com\nx-amz-content-sha256:{FORM_SHA256}\n\
             x-amz-date:20150830T123600Z\n\n\
             content-length;content-type;host;x-amz-content-sha256;x-amz-date\n{FORM_SHA256}"
        )
    );
    assert!(sts.ends_with("b1edd1d03544c25390e32085d55b57acc9a3961bb59415ff86c45c3d89d16cfb"));
    ok(&p, FORM_BODY);
    // Tampered body: x-amz-content-sha256 no longer matches it.
    assert_eq!(refused(&p, b"Param1=value2"), SigV4Error::BodyMismatch);
    // UNSIGNED-PAYLOAD is refused even with a matching signature scheme.
    let mut t = p;
    t.headers
        .insert("x-amz-content-sha256", UNSIGNED_PAYLOAD.parse().unwrap());
    assert_eq!(refused(&t, FORM_BODY), SigV4Error::BodyMismatch);
}

#[test]
fn post_x_www_form_urlencoded_presigned_signs_the_body_hash() {
    let p = parts(
        "POST",
        "/?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request\
         &X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=content-length%3Bcontent-type%3Bhost&X-Amz-Expires=3600\
         &X-Amz-Signature=89a40deed0f26f9461242825a082d2222717248abc7ab41f552ad84a94ad46e9",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("host", "example.amazonaws.com"),
            ("content-length", "13"),
        ],
    );
    ok(&p, FORM_BODY);
    // No x-amz-content-sha256 here: a tampered body breaks the signature itself.
    assert_eq!(refused(&p, b"Param1=value2"), SigV4Error::BadSignature);
}

#[test]
fn double_encode_path_execute_api_style() {
    // `double-encode-path`, signed by the aws-sigv4 crate's own test with its test keys.
    let v = SigV4Verifier::new(
        "us-east-1".into(),
        "service".into(),
        vec![(
            "ANOTREAL".into(),
            "notrealrnrELgWzOk3IfjzDKtFBhDby".into(),
            vec![],
        )],
    );
    let p = parts(
        "POST",
        "/test/@connections/JBDvjfGEIAMCERw%3D",
        &[
            ("x-amz-date", "20150830T123600Z"),
            (
                "authorization",
                "AWS4-HMAC-SHA256 Credential=ANOTREAL/20150830/us-east-1/service/aws4_request, \
                 SignedHeaders=host;x-amz-date, \
                 Signature=57d157672191bac40bae387e48bbe14b15303c001fdbb01f4abf295dccb09705",
            ),
            ("host", "tj9n5r0m12.execute-api.us-east-1.amazonaws.com"),
        ],
    );
    let id = v.verify(&p, b"", at(SUITE_TIME)).unwrap();
    assert_eq!(id.access_key_id, "ANOTREAL");
    assert!(id.scopes.is_empty());
    assert_eq!(
        canonical_uri("/test/@connections/JBDvjfGEIAMCERw%3D"),
        "/test/%40connections/JBDvjfGEIAMCERw%253D"
    );
}

#[test]
fn the_path_is_encoded_once_more_as_sent() {
    // `double-url-encode`'s canonical path; `get-space-normalized` as the SDKs sign it (the
    // CRT suite's single-encoded `/example%20space/` is what neither SDK produces).
    assert_eq!(
        canonical_uri(
            "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-west-2%3A892717189312%3Afunction%3Amy-rusty-fun/invocations"
        ),
        "/2015-03-31/functions/arn%253Aaws%253Alambda%253Aus-west-2%253A892717189312%253Afunction%253Amy-rusty-fun/invocations"
    );
    assert_eq!(canonical_uri("/example%20space/"), "/example%2520space/");
    assert_eq!(canonical_uri(""), "/");
    assert_eq!(canonical_uri("/a/./b/../c"), "/a/c");
    assert_eq!(canonical_uri("/a/b/.."), "/a/");
    assert_eq!(canonical_uri("/../x"), "/x");
    assert_eq!(canonical_uri("/%2E%2E/x"), "/%252E%252E/x");
}

#[test]
fn the_canonical_query_decodes_then_encodes() {
    let q = parse_query(Some("b=2&a=x+y&a=%2B&c&d=&&e=%zz&f=%c3%a9&=v"));
    assert_eq!(
        canonical_query(&q, false),
        "=v&a=%2B&a=x%20y&b=2&c=&d=&e=%25zz&f=%C3%A9"
    );
    let q = parse_query(Some("X-Amz-Signature=abc&z=1"));
    assert_eq!(canonical_query(&q, true), "z=1");
    assert_eq!(canonical_query(&q, false), "X-Amz-Signature=abc&z=1");
}

#[test]
fn tampered_requests_are_refused_with_the_right_error() {
    let base = vanilla();

    let mut t = base.clone();
    t.method = http::Method::POST;
    assert_eq!(refused(&t, b""), SigV4Error::BadSignature, "method");

    let mut t = base.clone();
    t.uri = "/other".parse().unwrap();
    assert_eq!(refused(&t, b""), SigV4Error::BadSignature, "path");

    let mut t = base.clone();
    t.uri = "/?a=1".parse().unwrap();
    assert_eq!(refused(&t, b""), SigV4Error::BadSignature, "query");

    let mut t = base.clone();
    t.headers
        .insert("host", "example.amazonaws.com:8443".parse().unwrap());
    assert_eq!(refused(&t, b""), SigV4Error::BadSignature, "host");

    assert_eq!(refused(&base, b"x"), SigV4Error::BadSignature, "body");

    let mut t = base.clone();
    t.headers
        .insert("x-amz-date", "20150830T123601Z".parse().unwrap());
    assert_eq!(refused(&t, b""), SigV4Error::BadSignature, "date, same day");

    let mut t = base.clone();
    t.headers
        .insert("x-amz-date", "20150831T123600Z".parse().unwrap());
    assert_eq!(refused(&t, b""), SigV4Error::WrongScope, "date, other day");

    let v = verifier();
    assert_eq!(
        v.verify(&base, b"", at(SUITE_TIME + 301)),
        Err(SigV4Error::Stale),
        "stale"
    );
    assert_eq!(
        v.verify(&base, b"", at(SUITE_TIME - 301)),
        Err(SigV4Error::Stale),
        "from the future"
    );
    assert!(v.verify(&base, b"", at(SUITE_TIME + 300)).is_ok());
    assert!(v.verify(&base, b"", at(SUITE_TIME - 300)).is_ok());

    for (region, service) in [("us-west-2", "service"), ("us-east-1", "execute-api")] {
        let v = SigV4Verifier::new(
            region.into(),
            service.into(),
            vec![(AKID.into(), SECRET.into(), vec![])],
        );
        assert_eq!(
            v.verify(&base, b"", at(SUITE_TIME)),
            Err(SigV4Error::WrongScope),
            "{region} {service}"
        );
    }

    let v = SigV4Verifier::new(
        "us-east-1".into(),
        "service".into(),
        vec![("AKIDOTHER".into(), SECRET.into(), vec![])],
    );
    assert_eq!(
        v.verify(&base, b"", at(SUITE_TIME)),
        Err(SigV4Error::UnknownKey)
    );

    let v = SigV4Verifier::new(
        "us-east-1".into(),
        "service".into(),
        vec![(AKID.into(), "another-secret".into(), vec![])],
    );
    assert_eq!(
        v.verify(&base, b"", at(SUITE_TIME)),
        Err(SigV4Error::BadSignature)
    );
}

#[test]
fn unsigned_and_malformed_requests() {
    let unsigned = parts("GET", "/", &[("host", "example.amazonaws.com")]);
    assert!(!is_signed(&unsigned));
    assert_eq!(refused(&unsigned, b""), SigV4Error::Unsigned);
    let bearer = parts("GET", "/", &[("authorization", "Bearer abc")]);
    assert!(!is_signed(&bearer));
    assert_eq!(refused(&bearer, b""), SigV4Error::Unsigned);
    let other_alg = parts("GET", "/?X-Amz-Algorithm=AWS4-ECDSA-P256-SHA256", &[]);
    assert!(!is_signed(&other_alg));

    let with_auth = |value: &str| {
        parts(
            "GET",
            "/",
            &[
                ("host", "example.amazonaws.com"),
                ("x-amz-date", "20150830T123600Z"),
                ("authorization", value),
            ],
        )
    };
    let sig = VANILLA_SIG;
    for bad in [
        "AWS4-HMAC-SHA256".to_string(),
        format!("AWS4-HMAC-SHA256Credential={SCOPE}, SignedHeaders=host, Signature={sig}"),
        format!("AWS4-HMAC-SHA256 Credential={SCOPE}, Signature={sig}"),
        format!("AWS4-HMAC-SHA256 Credential={SCOPE}, SignedHeaders=host;x-amz-date"),
        format!(
            "AWS4-HMAC-SHA256 Credential={SCOPE}, SignedHeaders=host, SignedHeaders=host, Signature={sig}"
        ),
        format!(
            "AWS4-HMAC-SHA256 Credential={SCOPE}, SignedHeaders=host;x-amz-date, Signature={sig}, Extra=1"
        ),
        format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws5_request, SignedHeaders=host;x-amz-date, Signature={sig}"
        ),
        format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/2015083/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature={sig}"
        ),
        format!("AWS4-HMAC-SHA256 Credential={SCOPE}, SignedHeaders=x-amz-date, Signature={sig}"),
        format!(
            "AWS4-HMAC-SHA256 Credential={SCOPE}, SignedHeaders=x-amz-date;host, Signature={sig}"
        ),
        format!("AWS4-HMAC-SHA256 Credential={SCOPE}, SignedHeaders=host;Host, Signature={sig}"),
        format!(
            "AWS4-HMAC-SHA256 Credential={SCOPE}, SignedHeaders=host;x-amz-date, Signature=abc"
        ),
    ] {
        let p = with_auth(&bad);
        assert!(is_signed(&p), "{bad}");
        assert_eq!(refused(&p, b""), SigV4Error::Malformed, "{bad}");
    }

    // No date at all; a bad date; both forms at once.
    let mut p = vanilla();
    p.headers.remove("x-amz-date");
    assert_eq!(refused(&p, b""), SigV4Error::Malformed);
    let mut p = vanilla();
    p.headers
        .insert("x-amz-date", "2015-08-30T12:36:00Z".parse().unwrap());
    assert_eq!(refused(&p, b""), SigV4Error::Malformed);
    let mut p = vanilla();
    p.uri = "/?X-Amz-Algorithm=AWS4-HMAC-SHA256".parse().unwrap();
    assert_eq!(refused(&p, b""), SigV4Error::Malformed);
    // A presigned URL missing X-Amz-Expires, or claiming more than 7 days.
    for expires in ["", "&X-Amz-Expires=604801", "&X-Amz-Expires=0"] {
        let p = parts(
            "GET",
            &format!(
                "/?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request\
                 &X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host{expires}&X-Amz-Signature={sig}"
            ),
            &[("host", "example.amazonaws.com")],
        );
        assert_eq!(refused(&p, b""), SigV4Error::Malformed, "{expires}");
    }
}

#[test]
fn http2_host_comes_from_the_authority() {
    let p = parts(
        "GET",
        "https://example.amazonaws.com/",
        &[
            ("x-amz-date", "20150830T123600Z"),
            ("authorization", &auth("host;x-amz-date", VANILLA_SIG)),
        ],
    );
    ok(&p, b"");
    // Without a Host header or an authority, the signed `host` is missing.
    let p = parts(
        "GET",
        "/",
        &[
            ("x-amz-date", "20150830T123600Z"),
            ("authorization", &auth("host;x-amz-date", VANILLA_SIG)),
        ],
    );
    assert_eq!(refused(&p, b""), SigV4Error::Malformed);
}

#[test]
fn an_http_date_header_stands_in_for_x_amz_date() {
    // get-vanilla's request, dated by `Date` and signed over it (the string to sign still
    // carries the basic-format timestamp, as botocore does when a Date header is present).
    let date = "Sun, 30 Aug 2015 12:36:00 GMT";
    let creq =
        format!("GET\n/\n\ndate:{date}\nhost:example.amazonaws.com\n\ndate;host\n{EMPTY_SHA256}");
    let sts = format!(
        "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n{}",
        crate::util::sha256_hex(creq.as_bytes())
    );
    let key = signing_key(SECRET, "20150830", "us-east-1", "service");
    let sig = hex::encode(hmac::sign(&key, sts.as_bytes()));
    let p = parts(
        "GET",
        "/",
        &[
            ("host", "example.amazonaws.com"),
            ("date", date),
            ("authorization", &auth("date;host", &sig)),
        ],
    );
    assert_eq!(computed(&p, b"", SECRET).0, creq);
    ok(&p, b"");
}

#[test]
fn dates_round_trip() {
    assert_eq!(parse_amz_date("20150830T123600Z"), Some(SUITE_TIME as i64));
    assert_eq!(
        format_amz_date(at(SUITE_TIME)).as_deref(),
        Some("20150830T123600Z")
    );
    for bad in [
        "20150830T123600",
        "20150830 123600Z",
        "20151330T123600Z",
        "2015083aT123600Z",
        "+0150830T123600Z",
    ] {
        assert_eq!(parse_amz_date(bad), None, "{bad}");
    }
}

#[test]
fn reasons_and_scopes() {
    assert_eq!(SigV4Error::Unsigned.reason(), "sigv4_unsigned");
    assert_eq!(SigV4Error::BodyMismatch.reason(), "sigv4_body_mismatch");
    let id = SigV4Identity {
        access_key_id: AKID.into(),
        scopes: vec!["orders/read".into()],
    };
    assert!(id.has_any_scope(&[]));
    assert!(id.has_any_scope(&["orders/write".into(), "orders/read".into()]));
    assert!(!id.has_any_scope(&["orders/write".into()]));
    let dbg = format!("{:?}", verifier());
    assert!(dbg.contains(AKID) && !dbg.contains(SECRET), "{dbg}");
}
