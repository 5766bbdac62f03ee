//! The HTTP/1.1 client webhook deliveries use: one connection per attempt, plain `http://`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
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
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse().ok()?),
            _ => (authority, 80),
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

/// POSTs `body` with `headers`, giving up after `timeout`.
pub async fn post(
    target: &Target,
    headers: &[(&str, String)],
    body: String,
    timeout: Duration,
) -> Outcome {
    let attempt = async {
        let host = target.host.trim_start_matches('[').trim_end_matches(']');
        let stream = tokio::net::TcpStream::connect((host, target.port))
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
        // Read the answer so the receiver sees a complete exchange; its content is ignored.
        let _ = resp.into_body().collect().await;
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
    }
}
