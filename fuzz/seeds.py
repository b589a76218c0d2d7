#!/usr/bin/env python3
"""Writes the seed corpus fuzz/corpus/<target>/seed-* (docs/fuzzing.md).

Run from the repository root with the interop virtualenv (botocore signs the SigV4 seeds):
    .venv-interop/bin/python fuzz/seeds.py
The constants match those of src/fuzzing.rs. `seed-ok-*` seeds must be accepted by their
target and `seed-bad-*` ones refused (the corpus test in src/fuzzing.rs checks both); others
are free. The output is deterministic: re-running it changes nothing.
"""
import base64, hashlib, hmac, json, os, struct, datetime

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
JWT_SECRET = b"tollgate-fuzzing-secret-0123456789"
JWT_ISSUER = "https://issuer.fuzz.test"
SIGV4_KEY = ("AKIDFUZZEXAMPLE", "fuzz/secret/key")
SIGV4_SCOPE = ("eu-west-1", "execute-api")
SIGV4_NOW = datetime.datetime(2026, 12, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
FAR = 4102444800  # 2100-01-01


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(header, claims, secret=JWT_SECRET, sign=True):
    h = b64(json.dumps(header, separators=(",", ":")).encode())
    c = b64(json.dumps(claims, separators=(",", ":")).encode())
    msg = f"{h}.{c}".encode()
    sig = b64(hmac.new(secret, msg, hashlib.sha256).digest()) if sign else ""
    return f"{h}.{c}.{sig}"


def paths():
    ok = {
        "plain": "/products/1",
        "unreserved-escape": "/product%73/1",
        "lower-escape": "/a%2fb%c3%a9",
        "encode-raw": '/a"b{c}|d',
        "utf8": "/caf%C3%A9/x",
        "query": "/search?q=a%20b&x=..",
        "trailing-slash": "/products/",
        "tilde": "/open%7e",
    }
    bad = {
        "dot": "/a/../admin",
        "escaped-dot": "/a/%2e%2E/admin",
        "dot-param": "/a/..;/admin",
        "nul": "/a%00b",
        "control": "/a\x01b",
        "bad-escape": "/a%zz",
        "overlong": "/%C0%AF",
        "lone-continuation": "/%80",
        "not-absolute": "*",
    }
    for k, v in ok.items():
        put("canonical_path", "ok-" + k, v)
    for k, v in bad.items():
        put("canonical_path", "bad-" + k, v)
    for k, v in {"double-slash": "//products/1", "encoded-slash": "/products%2F1",
                 "semicolon": "/a;jsessionid=1", "backslash": "/a%5Cb",
                 "absolute-form": "http://gw.test/%61dmin/users"}.items():
        put("canonical_path", k, v)


def jwts():
    claims = {"iss": JWT_ISSUER, "sub": "user-1", "exp": FAR, "scope": "read write",
              "client_id": "c1"}
    put("jwt", "ok-hs256", jwt({"alg": "HS256", "typ": "JWT"}, claims))
    put("jwt", "ok-kid", jwt({"alg": "HS256", "kid": "k1"}, dict(claims, aud="api")))
    put("jwt", "bad-none", jwt({"alg": "none"}, claims, sign=False))
    put("jwt", "bad-crit", jwt({"alg": "HS256", "crit": ["exp"], "exp": 1}, claims))
    put("jwt", "bad-expired", jwt({"alg": "HS256"}, dict(claims, exp=1000)))
    put("jwt", "bad-issuer", jwt({"alg": "HS256"}, dict(claims, iss="https://evil.test")))
    put("jwt", "bad-secret", jwt({"alg": "HS256"}, claims, secret=b"another-secret"))
    put("jwt", "bad-rs256", jwt({"alg": "RS256"}, claims))
    put("jwt", "bad-two-parts", "eyJhbGciOiJIUzI1NiJ9.e30")
    put("jwt", "bad-not-json", b64(b"{alg") + "." + b64(b"{}") + ".x")
    put("jwt", "bad-nbf", jwt({"alg": "HS256"}, dict(claims, nbf=FAR - 1)))
    put("jwt", "scope-array", jwt({"alg": "HS256"}, dict(claims, scope=["a", 1, None])))


def proxy():
    put("proxy_protocol", "ok-v1-tcp4", b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET / HTTP/1.1\r\n\r\n")
    put("proxy_protocol", "ok-v1-tcp6", b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n")
    put("proxy_protocol", "ok-v1-unknown", b"PROXY UNKNOWN\r\n")
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    v4 = struct.pack("!4s4sHH", bytes([192, 0, 2, 1]), bytes([198, 51, 100, 2]), 56324, 443)
    put("proxy_protocol", "ok-v2-tcp4", sig + b"\x21\x11" + struct.pack("!H", len(v4)) + v4 + b"GET /")
    v6 = bytes(range(16)) + bytes(range(16, 32)) + struct.pack("!HH", 1, 2)
    put("proxy_protocol", "ok-v2-tcp6", sig + b"\x21\x21" + struct.pack("!H", len(v6)) + v6)
    put("proxy_protocol", "ok-v2-local", sig + b"\x20\x00\x00\x00")
    tlv = b"\x04\x00\x03abc"
    put("proxy_protocol", "ok-v2-tlv", sig + b"\x21\x11" + struct.pack("!H", len(v4 + tlv)) + v4 + tlv)
    put("proxy_protocol", "bad-v1-long", b"PROXY TCP4 " + b"1" * 120 + b"\r\n")
    put("proxy_protocol", "bad-v1-port", b"PROXY TCP4 192.0.2.1 198.51.100.2 99999 443\r\n")
    put("proxy_protocol", "bad-v2-short", sig + b"\x21\x11\x00\x0c\x01\x02")
    put("proxy_protocol", "bad-v2-version", sig + b"\x31\x11" + struct.pack("!H", len(v4)) + v4)
    put("proxy_protocol", "bad-http", b"GET / HTTP/1.1\r\n\r\n")


def sigv4():
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    import botocore.auth as ba

    class Fixed(SigV4Auth):
        def _modify_request_before_signing(self, request):
            super()._modify_request_before_signing(request)

    def signed(method, path, body=b"", headers=None, query=""):
        url = "https://api.fuzz.test" + path + (("?" + query) if query else "")
        req = AWSRequest(method=method, url=url, data=body, headers=headers or {})
        creds = Credentials(*SIGV4_KEY)
        real = datetime.datetime

        class Frozen(real):
            @classmethod
            def utcnow(cls):
                return SIGV4_NOW.replace(tzinfo=None)

            @classmethod
            def now(cls, tz=None):
                return SIGV4_NOW if tz else SIGV4_NOW.replace(tzinfo=None)

        ba.datetime.datetime = Frozen
        try:
            Fixed(creds, SIGV4_SCOPE[1], SIGV4_SCOPE[0]).add_auth(req)
        finally:
            ba.datetime.datetime = real
        target = path + (("?" + query) if query else "")
        lines = [f"{method} {target}", "host: api.fuzz.test"]
        lines += [f"{k.lower()}: {v}" for k, v in req.headers.items() if k.lower() != "host"]
        return ("\n".join(lines) + "\n\n").encode() + body

    good = signed("GET", "/pets", query="limit=10&a=%2F")
    put("sigv4", "ok-get", good)
    put("sigv4", "ok-post", signed("POST", "/pets", body=b'{"name":"rex"}',
                                  headers={"content-type": "application/json"}))
    put("sigv4", "ok-escaped-path", signed("GET", "/pets/a%20b"))
    put("sigv4", "bad-tampered-path", good.replace(b"GET /pets", b"GET /pats", 1))
    put("sigv4", "bad-tampered-body", signed("POST", "/pets", body=b"one") [:-3] + b"two")
    put("sigv4", "bad-unsigned", b"GET /pets\nhost: api.fuzz.test\n\n")
    put("sigv4", "bad-two-authorization", good.replace(b"\n\n", b"\nauthorization: AWS4-HMAC-SHA256 Credential=x\n\n", 1))
    put("sigv4", "presigned-query", b"GET /pets?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDFUZZEXAMPLE%2F20261201%2Feu-west-1%2Fexecute-api%2Faws4_request&X-Amz-Date=20261201T120000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Signature=00\nhost: api.fuzz.test\n\n")


def configs():
    base = "listeners:\n  - bind: 127.0.0.1:8080\nroutes:\n  - { route: \"GET /status\", respond: { body: ok } }\n"
    put("config_load", "ok-minimal", base)
    put("config_load", "ok-rich", """listeners:
  - bind: 127.0.0.1:8080
admin: { bind: 127.0.0.1:9901 }
limits: { max_body: 1MiB, header_timeout: 5s, h2_idle_timeout: 30s, max_connections: 100 }
headers: { allow_underscores: false }
authorizers:
  partner: { type: jwt, issuer: partner-idp, algorithms: [HS256], secret: "0123456789abcdef0123456789abcdef" }
policies:
  office: { allow: [192.0.2.0/24], deny: [192.0.2.7/32] }
api_keys:
  keys: [{ id: k1, key: "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" }]
upstreams:
  app: { targets: ["http://127.0.0.1:9000"] }
routes:
  - { route: "DELETE /products/{id}", upstream: app, authorizer: partner, scopes: [delete], policy: office }
  - { route: "POST /products", upstream: app, api_key_required: true, authorizer: none }
  - { route: "ANY /files/{proxy+}", upstream: app, authorizer: none, allow_in_path: [encoded_slash] }
  - { route: "GET /ws", upstream: app, authorizer: none, upgrades: [websocket] }
  - { route: "$default", upstream: app, authorizer: none }
""")
    put("config_load", "bad-unknown-key", base + "nonsense: 1\n")
    put("config_load", "bad-indent", "routes:\n - route: x\n   respond: {\n")
    put("config_load", "bad-h2c-upgrade", "listeners: [{ bind: 127.0.0.1:1 }]\nupstreams:\n  app: { targets: [\"http://127.0.0.1:9\"] }\nroutes:\n  - { route: \"GET /x\", upstream: app, authorizer: none, upgrades: [h2c] }\n")
    put("config_load", "bad-route-literal", "listeners: [{ bind: 127.0.0.1:1 }]\nroutes:\n  - { route: \"GET /a%2fb\", respond: { body: ok } }\n")
    put("config_load", "bad-anchor-bomb", "a: &a [1,1,1,1]\nb: &b [*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b]\nroutes: [*c]\n")
    put("config_load", "bad-not-utf8", b"routes:\n  - { route: \"GET /\xff\", respond: { body: ok } }\n")
    put("config_load", "bad-zero-limit", base + "limits: { max_connections: 0 }\n")


def csvs():
    h = "Name,Key,Description,Enabled,UsagePlanIds\n"
    put("csv_import", "ok-export", h + "alice,sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08,first,true,gold\nbob,a-literal-key-of-bob-000000000000,,FALSE,\n")
    put("csv_import", "ok-reordered", "usageplanids,KEY,name\nsilver,another-literal-key-0000000000,carol\n")
    put("csv_import", "ok-quoted", h + '"dave, jr",literal-key-with-quote-000000000,"said ""hi""",yes,\n')
    put("csv_import", "bad-no-key-column", "Name,Description\nalice,x\n")
    put("csv_import", "bad-two-plans", h + "alice,literal-key-of-alice-0000000000,,true,\"a,b\"\n")
    put("csv_import", "bad-enabled", h + "alice,literal-key-of-alice-0000000000,,maybe,\n")
    put("csv_import", "bad-empty-name", h + ",literal-key-of-nobody-000000000,,true,\n")
    put("csv_import", "bad-not-utf8", h.encode() + b"al\xffice,literal-key-of-alice-0000000000\n")
    put("csv_import", "bom-and-crlf", "\ufeffName,Key\r\nalice,literal-key-of-alice-0000000000\r\n")


if __name__ == "__main__":
    paths(); jwts(); proxy(); sigv4(); configs(); csvs()
