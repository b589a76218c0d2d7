use super::*;
use serde_json::json;

fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::get(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn authorizer(identity: &[&str], ttl: Duration) -> ExternalAuthorizer {
    let identity: Vec<String> = identity.iter().map(|s| s.to_string()).collect();
    ExternalAuthorizer::new(
        "ext",
        "http://127.0.0.1:9/authorize",
        &identity,
        ttl,
        DEFAULT_TIMEOUT,
        &crate::metrics::Metrics::new(),
    )
    .unwrap()
}

#[test]
fn identity_sources_parse() {
    assert_eq!(
        IdentitySource::parse("header:Authorization"),
        Ok(IdentitySource::Header(http::header::AUTHORIZATION))
    );
    assert_eq!(
        IdentitySource::parse(" header: X-Api-Token "),
        Ok(IdentitySource::Header(HeaderName::from_static(
            "x-api-token"
        )))
    );
    assert_eq!(
        IdentitySource::parse("query:token"),
        Ok(IdentitySource::Query("token".into()))
    );
    assert_eq!(IdentitySource::parse("route"), Ok(IdentitySource::RouteKey));
    for bad in [
        "",
        "header:",
        "header:bad name",
        "query:",
        "cookie:session",
        "Authorization",
        "routes",
    ] {
        assert!(IdentitySource::parse(bad).is_err(), "{bad:?} parsed");
    }
}

#[test]
fn new_validates_its_settings() {
    let m = crate::metrics::Metrics::new();
    let id = vec!["header:Authorization".to_string()];
    let new = |url: &str, id: &[String], ttl: u64, timeout_ms: u64| {
        ExternalAuthorizer::new(
            "ext",
            url,
            id,
            Duration::from_secs(ttl),
            Duration::from_millis(timeout_ms),
            &m,
        )
    };
    assert!(new("http://authz:8080/check", &id, 300, 5000).is_ok());
    assert!(new("https://authz.example/check", &id, 3600, 10_000).is_ok());
    assert!(new("ftp://authz/check", &id, 300, 5000).is_err());
    assert!(new("/check", &id, 300, 5000).is_err());
    assert!(new("not a url", &id, 300, 5000).is_err());
    assert!(new("http://authz/", &["nope".to_string()], 300, 5000).is_err());
    assert!(new("http://authz/", &id, 3601, 5000).is_err());
    assert!(new("http://authz/", &id, 300, 0).is_err());
    assert!(new("http://authz/", &id, 300, 10_001).is_err());
    assert!(
        new("http://authz/", &[], 300, 5000).is_err(),
        "caching with no identity would share one answer among all callers"
    );
    assert!(new("http://authz/", &[], 0, 5000).is_ok());
}

#[test]
fn identity_values_in_order_and_missing_ones() {
    let az = authorizer(
        &["header:Authorization", "query:token", "route"],
        DEFAULT_CACHE_TTL,
    );
    let p = parts("/x?token=t%201&token=t2", &[("authorization", "abc")]);
    assert_eq!(
        az.identity_values(&p, "GET /x"),
        Some(vec!["abc".into(), "t 1,t2".into(), "GET /x".into()])
    );
    let p = parts("/x?token=t", &[]);
    assert_eq!(az.identity_values(&p, "GET /x"), None, "header missing");
    let p = parts("/x?token=t", &[("authorization", "  ")]);
    assert_eq!(az.identity_values(&p, "GET /x"), None, "header blank");
    let p = parts("/x?other=1", &[("authorization", "abc")]);
    assert_eq!(az.identity_values(&p, "GET /x"), None, "query missing");
    let p = parts("/x?token=", &[("authorization", "abc")]);
    assert_eq!(az.identity_values(&p, "GET /x"), None, "query empty");
    let p = parts("/x?token=t", &[("authorization", "abc")]);
    assert_eq!(az.identity_values(&p, ""), None, "route key empty");
}

#[test]
fn header_names_are_sanitised() {
    let name = |k: &str| context_header_name(k).map(|h| h.as_str().to_string());
    assert_eq!(name("user").as_deref(), Some("x-tollgate-ctx-user"));
    assert_eq!(name("UserId").as_deref(), Some("x-tollgate-ctx-userid"));
    assert_eq!(
        name("tenant_id.v2").as_deref(),
        Some("x-tollgate-ctx-tenant-id-v2")
    );
    assert_eq!(name("a b:c").as_deref(), Some("x-tollgate-ctx-a-b-c"));
    assert_eq!(name("ümlaut").as_deref(), Some("x-tollgate-ctx--mlaut"));
    assert_eq!(name("x-Key-9").as_deref(), Some("x-tollgate-ctx-x-key-9"));
    assert_eq!(name(""), None);
}

#[test]
fn context_values_convert() {
    let v = |j: Value| context_value(&j).map(|h| h.to_str().unwrap().to_string());
    assert_eq!(v(json!("alice")).as_deref(), Some("alice"));
    assert_eq!(v(json!(3)).as_deref(), Some("3"));
    assert_eq!(v(json!(-2.5)).as_deref(), Some("-2.5"));
    assert_eq!(v(json!(true)).as_deref(), Some("true"));
    assert_eq!(v(json!(false)).as_deref(), Some("false"));
    assert_eq!(
        v(json!({"a": [1, "b"]})).as_deref(),
        Some(r#"{"a":[1,"b"]}"#)
    );
    assert_eq!(v(json!(["x", 2])).as_deref(), Some(r#"["x",2]"#));
    assert_eq!(v(json!(null)), None);
    assert_eq!(v(json!("line\nbreak")), None, "not a header value");
}

#[test]
fn context_headers_skip_bad_entries_and_are_capped() {
    let mut c = Map::new();
    c.insert("user".into(), json!("alice"));
    c.insert("USER".into(), json!("again"));
    c.insert("bad".into(), json!("a\u{0}b"));
    c.insert("none".into(), json!(null));
    c.insert("".into(), json!("empty name"));
    let h = context_headers(&c);
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0].0.as_str(), "x-tollgate-ctx-user");

    let many: Map<String, Value> = (0..100).map(|i| (format!("k{i:03}"), json!(i))).collect();
    assert_eq!(context_headers(&many).len(), MAX_CONTEXT_ENTRIES);
}

#[test]
fn answers_parse() {
    let allowed = parse_answer(br#"{"isAuthorized": true, "context": {"user": "a", "tier": 3}}"#)
        .unwrap()
        .unwrap();
    assert_eq!(allowed.context_headers.len(), 2);
    assert_eq!(
        parse_answer(br#"{"isAuthorized": true}"#).unwrap(),
        Some(Decision::default())
    );
    assert_eq!(
        parse_answer(br#"{"isAuthorized": true, "context": null}"#).unwrap(),
        Some(Decision::default())
    );
    assert_eq!(parse_answer(br#"{"isAuthorized": false}"#).unwrap(), None);
    for bad in [
        &b"not json"[..],
        b"[]",
        b"true",
        b"{}",
        br#"{"isAuthorized": "true"}"#,
        br#"{"isAuthorized": 1}"#,
        br#"{"isAuthorized": true, "context": "x"}"#,
    ] {
        assert!(
            parse_answer(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn cache_key_changes_with_each_identity_value() {
    let salt = [7u8; 32];
    let raw = |v: &[&str]| -> Vec<RawValue<'static>> {
        v.iter()
            .map(|s| vec![Cow::Owned(s.as_bytes().to_vec())])
            .collect()
    };
    let k = |v: &[&str]| cache_key(&salt, &raw(v));
    let base = k(&["a", "b", "GET /x"]);
    assert_eq!(base, k(&["a", "b", "GET /x"]));
    assert_ne!(base, k(&["A", "b", "GET /x"]));
    assert_ne!(base, k(&["a", "c", "GET /x"]));
    assert_ne!(base, k(&["a", "b", "GET /y"]));
    assert_ne!(k(&["ab", "c"]), k(&["a", "bc"]), "value boundaries count");
    assert_ne!(
        k(&["a,b", "c"]),
        k(&["a", "b,c"]),
        "source boundaries count"
    );
    assert_ne!(base, cache_key(&[8u8; 32], &raw(&["a", "b", "GET /x"])));
    let a = authorizer(&["header:Authorization"], DEFAULT_CACHE_TTL);
    let b = ExternalAuthorizer::new(
        "other",
        "http://127.0.0.1:9/authorize",
        &["header:Authorization".to_string()],
        DEFAULT_CACHE_TTL,
        DEFAULT_TIMEOUT,
        &crate::metrics::Metrics::new(),
    )
    .unwrap();
    assert_ne!(a.salt, b.salt, "authorizers never share keys");
}

#[test]
fn payload_has_the_format_2_shape() {
    let p = parts(
        "/orders/7?a=1&a=2&b=x%20y",
        &[
            ("authorization", "allow-me"),
            ("x-multi", "1"),
            ("x-multi", "2"),
            ("user-agent", "test/1"),
        ],
    );
    let ip: IpAddr = "10.1.2.3".parse().unwrap();
    let v = payload(&p, "GET /orders/{id}", ip, "req-1", &["allow-me".into()]);
    assert_eq!(v["version"], "2.0");
    assert_eq!(v["type"], "REQUEST");
    assert_eq!(v["routeKey"], "GET /orders/{id}");
    assert_eq!(v["rawPath"], "/orders/7");
    assert_eq!(v["rawQueryString"], "a=1&a=2&b=x%20y");
    assert_eq!(v["identitySource"], json!(["allow-me"]));
    assert_eq!(v["headers"]["authorization"], "allow-me");
    assert_eq!(v["headers"]["x-multi"], "1,2");
    assert_eq!(v["queryStringParameters"], json!({"a": "1,2", "b": "x y"}));
    let rc = &v["requestContext"];
    assert_eq!(rc["http"]["method"], "GET");
    assert_eq!(rc["http"]["path"], "/orders/7");
    assert_eq!(rc["http"]["protocol"], "HTTP/1.1");
    assert_eq!(rc["http"]["sourceIp"], "10.1.2.3");
    assert_eq!(rc["http"]["userAgent"], "test/1");
    assert_eq!(rc["requestId"], "req-1");
    assert_eq!(rc["routeKey"], "GET /orders/{id}");
    assert!(rc["timeEpoch"].as_u64().unwrap() > 1_600_000_000_000);
}

#[test]
fn payload_headers_are_capped() {
    let big = "v".repeat(40 * 1024);
    let p = parts(
        "/",
        &[
            ("x-a", big.as_str()),
            ("x-b", big.as_str()),
            ("x-c", "small"),
        ],
    );
    let v = payload(&p, "GET /", "127.0.0.1".parse().unwrap(), "r", &[]);
    let h = v["headers"].as_object().unwrap();
    assert!(h.contains_key("x-a"));
    assert!(!h.contains_key("x-b"), "over the budget");
    assert!(h.contains_key("x-c"));
}

#[test]
fn authorize_is_send() {
    fn send<T: Send>(_: &T) {}
    let az = authorizer(&["header:Authorization"], DEFAULT_CACHE_TTL);
    let p = parts("/", &[]);
    send(&az.authorize(&p, "GET /", "127.0.0.1".parse().unwrap(), "r"));
}

#[tokio::test]
async fn missing_identity_is_refused_without_a_call() {
    // The URL points at the discard port; a call would fail, not refuse.
    let az = authorizer(&["header:Authorization"], DEFAULT_CACHE_TTL);
    let p = parts("/", &[]);
    let r = az
        .authorize(&p, "GET /", "127.0.0.1".parse().unwrap(), "r")
        .await;
    assert_eq!(r, Err(ExternalError::MissingIdentity));
}

/// Parts whose header `name` has the raw (possibly non-UTF-8) values `values`, in order.
fn raw_header_parts(name: &'static str, values: &[&[u8]]) -> http::request::Parts {
    let mut p = parts("/", &[]);
    for v in values {
        p.headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_bytes(v).unwrap(),
        );
    }
    p
}

/// The cache key `az` uses for `p` (None: an identity source is missing).
fn key_of(az: &ExternalAuthorizer, p: &http::request::Parts) -> Option<[u8; 32]> {
    az.identity_raw(p, "GET /")
        .map(|raw| cache_key(&az.salt, &raw))
}

#[test]
fn values_that_differ_only_in_bytes_that_are_not_utf8_get_their_own_cache_keys() {
    let az = authorizer(&["header:Authorization"], DEFAULT_CACHE_TTL);
    let fe = raw_header_parts("authorization", &[b"Bearer tok\xfe"]);
    let ff = raw_header_parts("authorization", &[b"Bearer tok\xff"]);
    // The authorizer is shown both alike (JSON strings are text) ...
    assert_eq!(
        az.identity_values(&fe, "GET /"),
        az.identity_values(&ff, "GET /")
    );
    assert_eq!(
        az.identity_values(&fe, "GET /"),
        Some(vec!["Bearer tok\u{fffd}".to_string()])
    );
    // ... but their answers are cached apart.
    assert_ne!(key_of(&az, &fe).unwrap(), key_of(&az, &ff).unwrap());
    assert_eq!(key_of(&az, &fe), key_of(&az, &fe), "and each is stable");
}

#[test]
fn header_lines_are_kept_apart_in_the_cache_key() {
    let az = authorizer(&["header:Authorization"], DEFAULT_CACHE_TTL);
    let one = raw_header_parts("authorization", &[b"a,b", b"c"]);
    let two = raw_header_parts("authorization", &[b"a", b"b,c"]);
    let joined = raw_header_parts("authorization", &[b"a,b,c"]);
    // Shown alike (lines joined with `,`, as the managed gateway does) ...
    assert_eq!(
        az.identity_values(&one, "GET /"),
        Some(vec!["a,b,c".into()])
    );
    assert_eq!(
        az.identity_values(&two, "GET /"),
        Some(vec!["a,b,c".into()])
    );
    // ... cached apart.
    let keys = [&one, &two, &joined].map(|p| key_of(&az, p).unwrap());
    assert_ne!(keys[0], keys[1]);
    assert_ne!(keys[0], keys[2]);
    assert_ne!(keys[1], keys[2]);
}

#[test]
fn query_values_are_keyed_on_their_decoded_bytes() {
    let az = authorizer(&["query:token"], DEFAULT_CACHE_TTL);
    let key = |uri: &str| key_of(&az, &parts(uri, &[])).unwrap();
    assert_ne!(key("/?token=t%FE"), key("/?token=t%FF"), "not text, bytes");
    assert_eq!(
        key("/?token=t%61+b"),
        key("/?token=ta%20b"),
        "one value however it is escaped"
    );
    assert_ne!(key("/?token=a,b&token=c"), key("/?token=a&token=b,c"));
    assert_eq!(
        az.identity_values(&parts("/?token=t%FE", &[]), "GET /"),
        Some(vec!["t\u{fffd}".to_string()])
    );
    // Names are decoded too, and other parameters ignored.
    assert_eq!(key("/?x=1&to%6Ben=v"), key("/?token=v"));
    // A `%` without two hex digits is itself, as form_urlencoded reads it.
    assert_eq!(
        raw_query_values(Some("token=%&token=%4&token=%zz"), "token").len(),
        3
    );
    assert_eq!(
        raw_query_values(Some("token=%&token=%4&token=%zz"), "token"),
        vec![
            Cow::Borrowed(&b"%"[..]),
            Cow::Borrowed(&b"%4"[..]),
            Cow::Borrowed(&b"%zz"[..])
        ]
    );
}

#[test]
fn form_decoding_matches_form_urlencoded_on_text() {
    for q in [
        "token=a%20b",
        "token=a+b",
        "token=%41%62c",
        "token=%",
        "token=%4",
        "token=%G1",
        "token=%e2%82%ac",
        "token=&token=x",
        "token",
        "&&token=y&",
        "to+ken=z&token=w",
    ] {
        let ours: Vec<String> = raw_query_values(Some(q), "token")
            .iter()
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
            .collect();
        let theirs: Vec<String> = query_pairs(Some(q))
            .filter(|(k, _)| k == "token")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(ours, theirs, "{q}");
    }
}
