//! PROXY protocol v1/v2 headers read before HTTP on listeners behind network load balancers.
//!
//! A listener with `proxy_protocol: true` calls [`read_header`] on every accepted connection
//! before handing it to HTTP. The header's source address replaces the TCP peer (the load
//! balancer) as the connection's peer; `UNKNOWN` (v1) and `LOCAL` (v2) headers, which load
//! balancers send on their own health checks, keep the TCP peer. A connection without a valid
//! header is refused.
//!
//! [`read_header`] reads exactly the header's bytes and nothing more, so whatever follows (the
//! HTTP request) is still in the stream for the HTTP server.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// How long a connection may take to send its whole PROXY header: a load balancer sends it in
/// its first segment, so anything slower is a stalled or hostile client holding a socket.
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest v1 header, `\r\n` included (the protocol's own limit).
const V1_MAX_LEN: usize = 107;
/// The v1 signature.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The shortest v1 header (`PROXY UNKNOWN\r\n`), which is also no longer than the fixed part of
/// a v2 header, so this many bytes can always be read without reading past any valid header.
const MIN_LEN: usize = 15;
/// The fixed part of a v2 header: signature, version/command, family/protocol, length.
const V2_FIXED_LEN: usize = 16;
/// The longest v2 address-and-TLV part accepted: addresses take at most 216 bytes (unix) and
/// load balancers' TLVs (AWS VPC endpoint id, TLS details) a few dozen more.
const V2_MAX_PAYLOAD: usize = 512;

/// Why a connection's PROXY header was refused.
#[derive(Debug)]
pub enum ProxyHeaderError {
    /// The header was not complete within [`PROXY_HEADER_TIMEOUT`].
    Timeout,
    /// No header, a truncated one, or one that does not parse.
    Invalid(String),
    /// The connection failed while the header was being read.
    Io(std::io::Error),
}

impl fmt::Display for ProxyHeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyHeaderError::Timeout => write!(
                f,
                "no complete PROXY protocol header within {PROXY_HEADER_TIMEOUT:?}"
            ),
            ProxyHeaderError::Invalid(m) => write!(f, "invalid PROXY protocol header: {m}"),
            ProxyHeaderError::Io(e) => write!(f, "reading the PROXY protocol header: {e}"),
        }
    }
}

impl std::error::Error for ProxyHeaderError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProxyHeaderError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Reads one PROXY protocol header (v1 text or v2 binary) from the start of `stream`, within
/// [`PROXY_HEADER_TIMEOUT`], consuming exactly its bytes.
///
/// Returns the client's address (the header's source) for v1 `TCP4`/`TCP6` and v2 `PROXY` over
/// IPv4/IPv6, and `None` for v1 `UNKNOWN`, v2 `LOCAL` and v2 `PROXY` with an unspecified address
/// family: the caller then uses the TCP peer, as the protocol asks.
///
/// # Errors
/// [`ProxyHeaderError::Invalid`] when the stream does not start with a complete, valid header
/// (including when it closes first), [`ProxyHeaderError::Timeout`] when the header is not complete
/// in time, [`ProxyHeaderError::Io`] when reading fails.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    read_header_within(stream, PROXY_HEADER_TIMEOUT).await
}

/// [`read_header`] with another time limit.
async fn read_header_within<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    tokio::time::timeout(limit, read_unbounded(stream))
        .await
        .map_err(|_| ProxyHeaderError::Timeout)?
}

fn invalid(m: impl Into<String>) -> ProxyHeaderError {
    ProxyHeaderError::Invalid(m.into())
}

/// `read_exact`, with a connection closed early reported as a truncated header.
async fn fill<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
) -> Result<(), ProxyHeaderError> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(invalid(
            "the connection closed before the header was complete",
        )),
        Err(e) => Err(ProxyHeaderError::Io(e)),
    }
}

async fn read_unbounded<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    // The first bytes, checked against both signatures as they arrive, so a client that sends
    // something else is refused at once rather than after the timeout.
    let mut buf = Vec::with_capacity(V1_MAX_LEN);
    let mut first = [0u8; MIN_LEN];
    let mut got = 0;
    while got < MIN_LEN {
        let n = stream
            .read(&mut first[got..])
            .await
            .map_err(ProxyHeaderError::Io)?;
        if n == 0 {
            return Err(if got == 0 {
                invalid("the connection closed without sending a header")
            } else {
                invalid("the connection closed before the header was complete")
            });
        }
        got += n;
        let seen = &first[..got];
        let v1 = V1_PREFIX.starts_with(&seen[..got.min(V1_PREFIX.len())]);
        let v2 =
            ppp::v2::PROTOCOL_PREFIX.starts_with(&seen[..got.min(ppp::v2::PROTOCOL_PREFIX.len())]);
        if !v1 && !v2 {
            return Err(invalid("the connection does not start with a PROXY header"));
        }
    }
    buf.extend_from_slice(&first);
    if buf.starts_with(V1_PREFIX) {
        read_v1(stream, buf).await
    } else {
        read_v2(stream, buf).await
    }
}

/// The rest of a v1 line: up to `\r\n`, never past it, at most [`V1_MAX_LEN`] bytes.
async fn read_v1<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut buf: Vec<u8>,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    loop {
        if let Some(cr) = buf.iter().position(|&b| b == b'\r')
            && cr + 1 < buf.len()
        {
            if buf[cr + 1] != b'\n' || cr + 2 != buf.len() {
                return Err(invalid("a v1 header must end with a single CRLF"));
            }
            break;
        }
        if buf.contains(&b'\n') {
            return Err(invalid("a v1 header must end with CRLF"));
        }
        if buf.len() >= V1_MAX_LEN {
            return Err(invalid(format!(
                "a v1 header is at most {V1_MAX_LEN} bytes"
            )));
        }
        // Without a trailing `\r`, the end is at least two bytes away; reading two then cannot
        // overshoot it.
        let want = if buf.last() == Some(&b'\r') { 1 } else { 2 };
        let want = want.min(V1_MAX_LEN - buf.len());
        let start = buf.len();
        buf.resize(start + want, 0);
        fill(stream, &mut buf[start..]).await?;
    }
    let header =
        ppp::v1::Header::try_from(buf.as_slice()).map_err(|e| invalid(format!("v1: {e}")))?;
    Ok(match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Unknown => None,
    })
}

/// The rest of a v2 header: the fixed part, then exactly the length it declares.
async fn read_v2<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut buf: Vec<u8>,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let start = buf.len();
    buf.resize(V2_FIXED_LEN, 0);
    fill(stream, &mut buf[start..]).await?;
    if !buf.starts_with(ppp::v2::PROTOCOL_PREFIX) {
        return Err(invalid("wrong v2 signature"));
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX_PAYLOAD {
        return Err(invalid(format!(
            "a v2 header of {len} bytes is over the limit of {V2_MAX_PAYLOAD}"
        )));
    }
    buf.resize(V2_FIXED_LEN + len, 0);
    fill(stream, &mut buf[V2_FIXED_LEN..]).await?;
    let header =
        ppp::v2::Header::try_from(buf.as_slice()).map_err(|e| invalid(format!("v2: {e}")))?;
    match header.command {
        ppp::v2::Command::Local => return Ok(None),
        ppp::v2::Command::Proxy => {}
    }
    match header.addresses {
        ppp::v2::Addresses::IPv4(a) => {
            Ok(Some(SocketAddr::from((a.source_address, a.source_port))))
        }
        ppp::v2::Addresses::IPv6(a) => {
            Ok(Some(SocketAddr::from((a.source_address, a.source_port))))
        }
        ppp::v2::Addresses::Unspecified => Ok(None),
        ppp::v2::Addresses::Unix(_) => Err(invalid("v2: a unix-socket source has no client IP")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::{Builder, Command, Protocol, Type, Version};
    use tokio::io::AsyncWriteExt;

    const HTTP: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";

    /// Runs `read_header` on `bytes` followed by an HTTP request, and returns the result and
    /// what is left in the stream.
    async fn read_all(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyHeaderError>, Vec<u8>) {
        let mut input = bytes.to_vec();
        input.extend_from_slice(HTTP);
        let mut s: &[u8] = &input;
        let r = read_header(&mut s).await;
        (r, s.to_vec())
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn v2(command: Command, src: &str, dst: &str) -> Builder {
        Builder::with_addresses(
            Version::Two | command,
            Protocol::Stream,
            (addr(src), addr(dst)),
        )
    }

    #[tokio::test]
    async fn v1_tcp4() {
        let (r, rest) = read_all(b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 443\r\n").await;
        assert_eq!(r.unwrap(), Some(addr("198.51.100.7:40000")));
        assert_eq!(rest, HTTP, "the bytes after the header stay in the stream");
    }

    #[tokio::test]
    async fn v1_tcp6() {
        let (r, rest) = read_all(b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n").await;
        assert_eq!(r.unwrap(), Some(addr("[2001:db8::7]:40000")));
        assert_eq!(rest, HTTP);
    }

    #[tokio::test]
    async fn v1_longest_headers() {
        let h = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        let (r, rest) = read_all(h).await;
        assert_eq!(
            r.unwrap(),
            Some(addr("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"))
        );
        assert_eq!(rest, HTTP);
        // The protocol's worst case, exactly the limit.
        let h = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(h.len(), V1_MAX_LEN);
        let (r, rest) = read_all(h).await;
        assert_eq!(r.unwrap(), None);
        assert_eq!(rest, HTTP);
    }

    #[tokio::test]
    async fn v1_unknown_means_use_the_peer() {
        let (r, rest) = read_all(b"PROXY UNKNOWN\r\n").await;
        assert_eq!(r.unwrap(), None);
        assert_eq!(rest, HTTP);
        let (r, rest) = read_all(b"PROXY UNKNOWN ::1 ::1 1 2\r\n").await;
        assert_eq!(r.unwrap(), None);
        assert_eq!(rest, HTTP);
    }

    #[tokio::test]
    async fn v2_proxy_ipv4() {
        let h = v2(Command::Proxy, "198.51.100.7:40000", "10.0.0.1:443")
            .build()
            .unwrap();
        let (r, rest) = read_all(&h).await;
        assert_eq!(r.unwrap(), Some(addr("198.51.100.7:40000")));
        assert_eq!(rest, HTTP);
    }

    #[tokio::test]
    async fn v2_proxy_ipv6_with_tlvs() {
        let h = v2(Command::Proxy, "[2001:db8::7]:40000", "[2001:db8::1]:443")
            .write_tlv(Type::Authority, b"api.example.com")
            .unwrap()
            .write_tlv(0xEA_u8, b"\x01vpce-0123456789abcdef0")
            .unwrap()
            .write_tlv(Type::NoOp, &[0; 8])
            .unwrap()
            .build()
            .unwrap();
        let (r, rest) = read_all(&h).await;
        assert_eq!(r.unwrap(), Some(addr("[2001:db8::7]:40000")));
        assert_eq!(rest, HTTP);
    }

    #[tokio::test]
    async fn v2_local_and_unspecified_mean_use_the_peer() {
        let h = Builder::new(Version::Two | Command::Local, 0)
            .build()
            .unwrap();
        let (r, rest) = read_all(&h).await;
        assert_eq!(r.unwrap(), None);
        assert_eq!(rest, HTTP);
        // LOCAL with addresses: they are ignored.
        let h = v2(Command::Local, "198.51.100.7:1", "10.0.0.1:2")
            .build()
            .unwrap();
        let (r, rest) = read_all(&h).await;
        assert_eq!(r.unwrap(), None);
        assert_eq!(rest, HTTP);
        let h = Builder::new(Version::Two | Command::Proxy, 0)
            .build()
            .unwrap();
        let (r, rest) = read_all(&h).await;
        assert_eq!(r.unwrap(), None);
        assert_eq!(rest, HTTP);
    }

    #[tokio::test]
    async fn missing_header_is_invalid() {
        for bytes in [
            HTTP,
            b"G",
            b"PROXX TCP4 1.2.3.4 1.2.3.4 1 2\r\n",
            b"\r\n\r\n\0\r\nQUIX\n!!!!!!",
            b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n",
        ] {
            let mut s: &[u8] = bytes;
            let r = read_header(&mut s).await;
            assert!(
                matches!(r, Err(ProxyHeaderError::Invalid(_))),
                "{:?}: {r:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let mut empty: &[u8] = b"";
        assert!(matches!(
            read_header(&mut empty).await,
            Err(ProxyHeaderError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn a_non_proxy_start_is_refused_without_waiting() {
        // The client sends a short HTTP/0.9-like line and waits: refused at once, not on timeout.
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET /\r\n").await.unwrap();
        let r = read_header_within(&mut server, Duration::from_secs(30)).await;
        assert!(matches!(r, Err(ProxyHeaderError::Invalid(_))), "{r:?}");
    }

    #[tokio::test]
    async fn malformed_v1_is_invalid() {
        for bytes in [
            &b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 443\n"[..],
            b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 443\rX",
            b"PROXY TCP4 198.51.100.7 10.0.0.1 40000\r\n",
            b"PROXY TCP4 2001:db8::1 10.0.0.1 40000 443\r\n",
            b"PROXY TCP6 198.51.100.7 10.0.0.1 40000 443\r\n",
            b"PROXY TCP4 198.51.100.7 10.0.0.1 040000 443\r\n",
            b"PROXY UDP4 198.51.100.7 10.0.0.1 40000 443\r\n",
            b"PROXY TCP4\r\n",
        ] {
            let (r, _) = read_all(bytes).await;
            assert!(
                matches!(r, Err(ProxyHeaderError::Invalid(_))),
                "{:?}: {r:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        // No CRLF within 107 bytes.
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(200, b'a');
        let (r, _) = read_all(&long).await;
        assert!(matches!(r, Err(ProxyHeaderError::Invalid(_))), "{r:?}");
    }

    #[tokio::test]
    async fn truncated_v1_is_invalid() {
        for bytes in [
            &b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 443\r"[..],
            b"PROXY TCP4 198.51.100.7",
            b"PROXY",
            b"PROX",
        ] {
            let mut s: &[u8] = bytes;
            let r = read_header(&mut s).await;
            assert!(
                matches!(&r, Err(ProxyHeaderError::Invalid(m)) if m.contains("closed")),
                "{:?}: {r:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[tokio::test]
    async fn truncated_or_oversized_v2_is_invalid() {
        let h = v2(Command::Proxy, "198.51.100.7:40000", "10.0.0.1:443")
            .write_tlv(Type::NoOp, &[0; 4])
            .unwrap()
            .build()
            .unwrap();
        for cut in [1, 12, 15, 16, 20, h.len() - 1] {
            let mut s: &[u8] = &h[..cut];
            let r = read_header(&mut s).await;
            assert!(
                matches!(&r, Err(ProxyHeaderError::Invalid(m)) if m.contains("closed")),
                "cut at {cut}: {r:?}"
            );
        }
        // A declared length shorter than the addresses need.
        let short = v2(Command::Proxy, "198.51.100.7:40000", "10.0.0.1:443")
            .set_length(4)
            .build()
            .unwrap();
        let (r, _) = read_all(&short).await;
        assert!(matches!(r, Err(ProxyHeaderError::Invalid(_))), "{r:?}");
        // A declared length over the limit is refused before it is read.
        let mut big = h[..16].to_vec();
        big[14..16].copy_from_slice(&60_000u16.to_be_bytes());
        let mut s: &[u8] = &big;
        let r = read_header(&mut s).await;
        assert!(
            matches!(&r, Err(ProxyHeaderError::Invalid(m)) if m.contains("limit")),
            "{r:?}"
        );
        // Version 1 in the binary signature.
        let mut bad_version = h.clone();
        bad_version[12] = 0x11;
        let (r, _) = read_all(&bad_version).await;
        assert!(matches!(r, Err(ProxyHeaderError::Invalid(_))), "{r:?}");
    }

    #[tokio::test]
    async fn a_slow_sender_times_out() {
        let (mut client, mut server) = tokio::io::duplex(256);
        client.write_all(b"PROXY TCP4 198.51.").await.unwrap();
        let started = std::time::Instant::now();
        let r = read_header_within(&mut server, Duration::from_millis(100)).await;
        assert!(matches!(r, Err(ProxyHeaderError::Timeout)), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(ProxyHeaderError::Timeout.to_string().contains("5s"));
        drop(client);
    }

    #[tokio::test]
    async fn a_header_split_across_writes_is_read_and_the_rest_stays() {
        let (mut client, mut server) = tokio::io::duplex(256);
        let reader = tokio::spawn(async move {
            let r = read_header(&mut server).await;
            let mut rest = Vec::new();
            server.read_to_end(&mut rest).await.unwrap();
            (r, rest)
        });
        let h = v2(Command::Proxy, "[2001:db8::7]:40000", "[2001:db8::1]:443")
            .write_tlv(Type::Authority, b"api.example.com")
            .unwrap()
            .build()
            .unwrap();
        let mut all = h.clone();
        all.extend_from_slice(HTTP);
        for chunk in all.chunks(7) {
            client.write_all(chunk).await.unwrap();
            tokio::task::yield_now().await;
        }
        drop(client);
        let (r, rest) = reader.await.unwrap();
        assert_eq!(r.unwrap(), Some(addr("[2001:db8::7]:40000")));
        assert_eq!(rest, HTTP);

        let (mut client, mut server) = tokio::io::duplex(256);
        let reader = tokio::spawn(async move {
            let r = read_header(&mut server).await;
            let mut rest = Vec::new();
            server.read_to_end(&mut rest).await.unwrap();
            (r, rest)
        });
        let mut all = b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 443\r\n".to_vec();
        all.extend_from_slice(HTTP);
        for chunk in all.chunks(3) {
            client.write_all(chunk).await.unwrap();
            tokio::task::yield_now().await;
        }
        drop(client);
        let (r, rest) = reader.await.unwrap();
        assert_eq!(r.unwrap(), Some(addr("198.51.100.7:40000")));
        assert_eq!(rest, HTTP);
    }

    #[test]
    fn errors_display() {
        assert!(
            ProxyHeaderError::Invalid("x".into())
                .to_string()
                .contains("invalid PROXY protocol header: x")
        );
        let io = ProxyHeaderError::Io(std::io::Error::other("boom"));
        assert!(io.to_string().contains("boom"));
    }
}
