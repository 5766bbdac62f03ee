//! The HTTP/1.1 client webhook deliveries use: one connection per attempt, plain `http://`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

/// Where a webhook points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Option<Target> {
        let rest = url.strip_prefix("http://")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') || path.contains(char::is_whitespace) {
            return None;
        }
        // `[v6]` or `[v6]:port`; otherwise `host` or `host:port`.
        let (host, port) = if let Some(close) = authority.strip_prefix('[').and(authority.find(']'))
        {
            let (host, rest) = authority.split_at(close + 1);
            match rest {
                "" => (host, 80),
                _ => (host, rest.strip_prefix(':')?.parse().ok()?),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().ok()?),
                None => (authority, 80),
            }
        };
        if host.is_empty() {
            return None;
        }
        Some(Target {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

/// How an attempt ended: the status code, or why there was none.
pub type Outcome = Result<u16, String>;

/// The most of a receiver's answer a delivery reads (its content is ignored).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Addresses a webhook may not reach unless the admin allows private targets: loopback,
/// private and shared (carrier-grade NAT) ranges, link-local (which holds cloud metadata
/// services such as 169.254.169.254), unspecified, broadcast, multicast and documentation
/// ranges; an IPv4-mapped IPv6 address is judged as its IPv4 address.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_private(IpAddr::V4(v4)),
            None => {
                let first = v6.segments()[0];
                v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (first & 0xfe00) == 0xfc00
                    || (first & 0xffc0) == 0xfe80
                    || first == 0x2001 && v6.segments()[1] == 0x0db8
            }
        },
    }
}

/// The addresses `target` names, each checked: an error names the first refused one (or says
/// the host did not resolve). Deliveries connect to these addresses, never resolving again.
pub async fn resolve(target: &Target, allow_private: bool) -> Result<Vec<SocketAddr>, String> {
    let host = target.host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, target.port))
        .await
        .map_err(|e| format!("resolve {host}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("resolve {host}: no address"));
    }
    if !allow_private && let Some(bad) = addrs.iter().find(|a| is_private(a.ip())) {
        return Err(format!("{} is a private or reserved address", bad.ip()));
    }
    Ok(addrs)
}

/// POSTs `body` with `headers`, giving up after `timeout`. The host is resolved and every
/// address checked (see `resolve`) before connecting to the checked addresses.
pub async fn post(
    target: &Target,
    headers: &[(&str, String)],
    body: String,
    timeout: Duration,
    allow_private: bool,
) -> Outcome {
    let attempt = async {
        let addrs = resolve(target, allow_private).await?;
        let stream = tokio::net::TcpStream::connect(addrs.as_slice())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = hyper::Request::post(target.path.as_str())
            .header("host", format!("{}:{}", target.host, target.port))
            .header("content-type", "application/json")
            .header("user-agent", concat!("village/", env!("CARGO_PKG_VERSION")));
        for (name, value) in headers {
            req = req.header(*name, value.as_str());
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let status = resp.status().as_u16();
        // Read the answer so the receiver sees a complete exchange, but no more than
        // MAX_RESPONSE_BYTES of it: its content is ignored, and an endless answer must not
        // grow the server.
        let _ = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await;
        Ok(status)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_urls_only() {
        assert_eq!(
            Target::parse("http://127.0.0.1:9000/hooks?x=1"),
            Some(Target {
                host: "127.0.0.1".into(),
                port: 9000,
                path: "/hooks?x=1".into()
            })
        );
        assert_eq!(
            Target::parse("http://ci.local").map(|t| (t.port, t.path)),
            Some((80, "/".into()))
        );
        assert!(Target::parse("https://ci.local/x").is_none());
        assert!(Target::parse("http://").is_none());
        assert!(Target::parse("http://user@host/").is_none());
        assert!(Target::parse("http://host:notaport/").is_none());
        assert_eq!(
            Target::parse("http://[::1]/x").map(|t| (t.host, t.port)),
            Some(("[::1]".into(), 80))
        );
        assert_eq!(
            Target::parse("http://[::ffff:127.0.0.1]:81/").map(|t| (t.host, t.port)),
            Some(("[::ffff:127.0.0.1]".into(), 81))
        );
        assert!(Target::parse("http://[::1]x/").is_none());
    }

    #[test]
    fn private_and_reserved_addresses_are_recognised() {
        for private in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.1.2.3",
        ] {
            let ip: IpAddr = private.parse().expect("an address");
            assert!(is_private(ip), "{private}");
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            let ip: IpAddr = public.parse().expect("an address");
            assert!(!is_private(ip), "{public}");
        }
    }
}
