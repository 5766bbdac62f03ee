//! The HTTP/1.1 client webhook and notification deliveries use: one connection per attempt,
//! `http://` or `https://` (rustls, the Mozilla roots compiled in plus `webhooks.caFile`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
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
    /// `https://`: the connection is TLS, the host's certificate checked.
    pub tls: bool,
}

impl Target {
    pub fn parse(url: &str) -> Option<Target> {
        let (rest, tls) = match url.strip_prefix("https://") {
            Some(rest) => (rest, true),
            None => (url.strip_prefix("http://")?, false),
        };
        let default_port = if tls { 443 } else { 80 };
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
                "" => (host, default_port),
                _ => (host, rest.strip_prefix(':')?.parse().ok()?),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().ok()?),
                None => (authority, default_port),
            }
        };
        if host.is_empty() {
            return None;
        }
        Some(Target {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
            tls,
        })
    }

    /// The `Host` header: the port only when it is not the scheme's default.
    fn host_header(&self) -> String {
        match (self.tls, self.port) {
            (true, 443) | (false, 80) => self.host.clone(),
            _ => format!("{}:{}", self.host, self.port),
        }
    }
}

/// How deliveries check `https://` targets: the Mozilla roots, plus the authorities of
/// `webhooks.caFile` (an internal CA, or a test's).
pub type TlsConfig = Arc<rustls::ClientConfig>;

/// The TLS client configuration, with the PEM certificates in `ca_file` trusted too. An error
/// names the file and what is wrong with it.
pub fn tls_config(ca_file: Option<&std::path::Path>) -> Result<TlsConfig, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no PEM certificate in it", path.display()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
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
    tls: &TlsConfig,
) -> Outcome {
    let attempt = async {
        let addrs = resolve(target, allow_private).await?;
        let stream = tokio::net::TcpStream::connect(addrs.as_slice())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        if target.tls {
            let host = target.host.trim_start_matches('[').trim_end_matches(']');
            let name = rustls_pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| format!("tls: {host}: {e}"))?;
            let stream = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, stream)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            exchange(target, headers, body, stream).await
        } else {
            exchange(target, headers, body, stream).await
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// One request and its answer on a connected stream (plain or TLS).
async fn exchange<S>(
    target: &Target,
    headers: &[(&str, String)],
    body: String,
    stream: S,
) -> Outcome
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = hyper::Request::post(target.path.as_str())
            .header("host", target.host_header())
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_and_https_urls() {
        assert_eq!(
            Target::parse("http://127.0.0.1:9000/hooks?x=1"),
            Some(Target {
                host: "127.0.0.1".into(),
                port: 9000,
                path: "/hooks?x=1".into(),
                tls: false,
            })
        );
        assert_eq!(
            Target::parse("http://ci.local").map(|t| (t.port, t.host_header(), t.path)),
            Some((80, "ci.local".into(), "/".into()))
        );
        assert_eq!(
            Target::parse("https://hooks.slack.com/services/T0/B0/x").map(|t| (
                t.port,
                t.tls,
                t.host_header()
            )),
            Some((443, true, "hooks.slack.com".into()))
        );
        assert_eq!(
            Target::parse("https://ci.local:8443/x").map(|t| t.host_header()),
            Some("ci.local:8443".into())
        );
        assert!(Target::parse("ftp://ci.local/x").is_none());
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
