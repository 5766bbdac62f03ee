//! The runner's one REST call, `POST /api/v1/runners/register`, over a plain HTTP/1 connection.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// A server address: `http://host:port[/prefix]`.
#[derive(Clone, Debug)]
pub struct ServerUrl {
    pub host: String,
    pub port: u16,
    /// Without a trailing slash; empty at the root.
    pub prefix: String,
}

impl ServerUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("--server must be an http:// URL (put TLS in front of both sides): {url:?}")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p.parse::<u16>()
                    .map_err(|_| format!("bad port in --server {url:?}"))?,
            ),
            _ => (authority.to_string(), 80),
        };
        if host.is_empty() {
            return Err(format!("no host in --server {url:?}"));
        }
        Ok(Self {
            host,
            port,
            prefix: path.to_string(),
        })
    }

    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The WebSocket URL of a path under the API.
    pub fn ws(&self, path: &str) -> String {
        format!("ws://{}{}{}", self.authority(), self.prefix, path)
    }
}

/// A REST answer: status and the parsed body (Null when it is not JSON).
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

/// POSTs JSON with a bearer token.
pub async fn post_json(
    server: &ServerUrl,
    path: &str,
    token: &str,
    body: &Value,
) -> Result<Reply, String> {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect((server.host.as_str(), server.port))
            .await
            .map_err(|e| format!("connect to {}: {e}", server.authority()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::post(format!("{}{}", server.prefix, path))
            .header("host", server.authority())
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .header(
                "user-agent",
                concat!("village-runner/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| format!("request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let status = resp.status().as_u16();
        let bytes = Limited::new(resp.into_body(), 1024 * 1024)
            .collect()
            .await
            .map_err(|e| format!("read: {e}"))?
            .to_bytes();
        Ok(Reply {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        })
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// The envelope's error message, for logs.
pub fn error_message(reply: &Reply) -> String {
    let e = &reply.body["error"];
    match (e["code"].as_str(), e["message"].as_str()) {
        (Some(c), Some(m)) => format!("{} {c}: {m}", reply.status),
        _ => format!("HTTP {}", reply.status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_urls() {
        let u = ServerUrl::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("127.0.0.1", 8080, "")
        );
        let u = ServerUrl::parse("http://village.example/base/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("village.example", 80, "/base")
        );
        assert_eq!(u.ws("/api/v1/x"), "ws://village.example:80/base/api/v1/x");
        let u = ServerUrl::parse("http://[::1]:9000").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9000));
        assert!(ServerUrl::parse("https://x").is_err());
        assert!(ServerUrl::parse("http://:80").is_err());
    }
}
