//! Upstreams over TLS and HTTP/2: `https://` targets verified against a configured CA (and
//! refused when their certificate chains elsewhere), `protocol: h2` over TLS and `protocol: h2c`
//! in clear text (the upstream records the HTTP version it was spoken to in), and the config
//! errors for a protocol that cannot be spoken over a target's scheme and for CA files that
//! cannot be used.

use std::time::{Duration, Instant};

use crate::support::gateway::{self, TestGateway};
use crate::support::test_ca::TestCa;
use crate::support::upstream;

/// How long a changed CA file may take to be served (debounce plus a reload).
const RELOAD_DEADLINE: Duration = Duration::from_secs(5);

/// One open route to upstream `app` with targets `targets` and the extra upstream keys `extra`
/// (each starting with `, `).
fn config(targets: &str, extra: &str) -> String {
    format!(
        "upstreams:\n  app: {{ targets: [\"{targets}\"], timeout: 5s{extra} }}\nroutes:\n  - {{ route: \"ANY /{{proxy+}}\", upstream: app, authorizer: none }}\n"
    )
}

async fn gateway_with_ca(targets: &str, extra: &str, ca_pem: &str) -> TestGateway {
    gateway::start_with_files(
        &config(targets, &format!(", tls: {{ ca: upstream-ca.pem }}{extra}")),
        &[("upstream-ca.pem", ca_pem)],
    )
    .await
}

#[tokio::test]
async fn https_upstream_is_verified_against_the_configured_ca() {
    let ca = TestCa::new("tollgate test upstream CA");
    let up = upstream::start_tls("secure", ca.server_config()).await;
    let gw = gateway_with_ca(&up.url(), "", &ca.pem()).await;

    let a = gw.get("/things?x=1", &[]).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.text(), r#"{"upstream":"secure"}"#);
    let seen = up.last();
    assert_eq!(seen.uri.path_and_query().unwrap().as_str(), "/things?x=1");
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(
        seen.sni.as_deref(),
        Some("localhost"),
        "the target's host is the TLS server name"
    );
    assert_eq!(
        seen.headers["host"],
        format!("localhost:{}", up.addr.port()).as_str()
    );
    gw.stop().await;
}

#[tokio::test]
async fn https_upstream_with_a_certificate_from_another_ca_gets_502_and_sees_nothing() {
    let trusted = TestCa::new("the CA the gateway trusts");
    let other = TestCa::new("some other CA");
    let up = upstream::start_tls("imposter", other.server_config()).await;

    let gw = gateway_with_ca(&up.url(), "", &trusted.pem()).await;
    let a = gw.get("/things", &[]).await;
    assert_eq!(a.status, 502);
    assert_eq!(a.text(), r#"{"message":"Bad Gateway"}"#);
    gw.stop().await;

    // Without `tls.ca`, the system's roots are trusted, and they do not include a test CA.
    let gw = gateway::start(&config(&up.url(), "")).await;
    let a = gw.get("/things", &[]).await;
    assert_eq!(a.status, 502);
    gw.stop().await;

    assert!(
        up.seen().is_empty(),
        "no request may reach an unverified upstream"
    );
}

#[tokio::test]
async fn a_changed_ca_file_is_seen_without_a_restart() {
    let old = TestCa::new("old CA");
    let new = TestCa::new("new CA");
    let up = upstream::start_tls("rotated", new.server_config()).await;
    let gw = gateway_with_ca(&up.url(), "", &old.pem()).await;
    assert_eq!(gw.get("/x", &[]).await.status, 502);

    let ca_file = gw.dir.path().join("upstream-ca.pem");
    let tmp = ca_file.with_extension("swp");
    std::fs::write(&tmp, new.pem()).unwrap();
    std::fs::rename(&tmp, &ca_file).unwrap();
    let since = Instant::now();
    loop {
        let a = gw.get("/x", &[]).await;
        if a.status == 200 {
            break;
        }
        assert!(
            since.elapsed() < RELOAD_DEADLINE,
            "the new CA was not used within {RELOAD_DEADLINE:?}: {}",
            a.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up.last().uri.path(), "/x");
    gw.stop().await;
}

#[tokio::test]
async fn h2_upstream_is_spoken_to_in_http2_over_tls() {
    let ca = TestCa::new("h2 CA");
    let up = upstream::start_tls("h2", ca.server_config()).await;
    let gw = gateway_with_ca(&up.url(), ", protocol: h2", &ca.pem()).await;

    let a = gw.get("/hello", &[]).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.text(), r#"{"upstream":"h2"}"#);
    assert_eq!(up.last().version, http::Version::HTTP_2);
    assert_eq!(up.last().sni.as_deref(), Some("localhost"));

    let a = gw.send("POST", "/echo", &[], "a body over h2").await;
    assert_eq!(a.text(), "a body over h2");
    assert_eq!(up.last().version, http::Version::HTTP_2);
    assert_eq!(up.last().body, "a body over h2");
    gw.stop().await;
}

#[tokio::test]
async fn h2c_upstream_is_spoken_to_in_http2_without_tls_and_http1_stays_http1() {
    let up = upstream::start_h2c("clear").await;
    let gw = gateway::start(&format!(
        "upstreams:\n  h2c: {{ targets: [\"{url}\"], protocol: h2c }}\n  h1: {{ targets: [\"{url}\"] }}\n\
         routes:\n  - {{ route: \"POST /echo\", upstream: h2c, authorizer: none }}\n\
         \x20 - {{ route: \"GET /plain\", upstream: h1, authorizer: none }}\n",
        url = up.url()
    ))
    .await;

    let a = gw.send("POST", "/echo", &[], "prior knowledge").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), "prior knowledge");
    assert_eq!(up.last().version, http::Version::HTTP_2);

    let a = gw.get("/plain", &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        up.last().version,
        http::Version::HTTP_11,
        "the default protocol is HTTP/1.1 even to a server that speaks h2c"
    );
    gw.stop().await;
}

#[test]
fn protocols_that_do_not_fit_the_targets_and_unusable_ca_files_are_located() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.pem"), "no certificates in here\n").unwrap();
    std::fs::write(
        dir.path().join("garbled.pem"),
        "-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    // The upstream's line is line 5.
    let base = "listeners:\n  - bind: 127.0.0.1:0\nroutes: []\nupstreams:\n";
    let cases: &[(&str, &str, &str)] = &[
        // (upstream line, where the error points, message part)
        (
            r#"  a: { targets: ["http://127.0.0.1:1"], protocol: h2 }"#,
            "[",
            r#"protocol h2 needs https:// targets, and "http://127.0.0.1:1" is not one"#,
        ),
        (
            r#"  a: { targets: ["https://127.0.0.1:1"], protocol: h2c }"#,
            "[",
            r#"protocol h2c is HTTP/2 without TLS and needs http:// targets, and "https://127.0.0.1:1" is not one"#,
        ),
        (
            r#"  a: { targets: ["https://127.0.0.1:1"], tls: { ca: missing.pem } }"#,
            "missing.pem",
            "cannot read CA file missing.pem:",
        ),
        (
            r#"  a: { targets: ["https://127.0.0.1:1"], tls: { ca: empty.pem } }"#,
            "empty.pem",
            "CA file empty.pem holds no certificates",
        ),
        (
            r#"  a: { targets: ["https://127.0.0.1:1"], tls: { ca: garbled.pem } }"#,
            "garbled.pem",
            "CA file garbled.pem is not valid PEM",
        ),
        (
            r#"  a: { targets: ["http://127.0.0.1:1"], tls: { ca: empty.pem } }"#,
            "{ ca",
            "`tls` is for https:// targets, and this upstream has none",
        ),
        (
            r#"  a: { targets: ["https://127.0.0.1:1"], protocol: h3 }"#,
            "h3",
            "unknown variant `h3`",
        ),
    ];
    for (line, at, msg) in cases {
        let yaml = format!("{base}{line}\n");
        let (code, out) = crate::config::check_in(dir.path(), &yaml);
        assert_eq!(code, 1, "should fail: {line}\n{out}");
        let col = line.find(at).unwrap() + 1;
        let loc = format!("F:5:{col}:");
        assert!(
            out.starts_with(&format!("{loc} ")) && out.contains(msg),
            "expected {loc} {msg:?} for {line}, got: {out}"
        );
    }
}
