//! A small client of Village's REST API over plain HTTP/1 connections: the runner's registration,
//! `village demo` and the admin commands (`village token`, `backup`, `status`).

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
    /// `Retry-After` in whole seconds, when the answer has one (429, 503).
    pub retry_after_secs: Option<u64>,
}

fn retry_after(headers: &hyper::HeaderMap) -> Option<u64> {
    headers
        .get(hyper::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// How long a REST call may take.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The user agent of every call: the program and its version.
const USER_AGENT: &str = concat!("village/", env!("CARGO_PKG_VERSION"));

/// POSTs JSON with a bearer token.
pub async fn post_json(
    server: &ServerUrl,
    path: &str,
    token: &str,
    body: &Value,
) -> Result<Reply, String> {
    call(server, hyper::Method::POST, path, token, Some(body)).await
}

/// A REST call with a bearer token and, optionally, a JSON body.
pub async fn call(
    server: &ServerUrl,
    method: hyper::Method,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> Result<Reply, String> {
    let attempt = async {
        let resp = send(server, method, path, token, body).await?;
        let status = resp.status().as_u16();
        let retry_after_secs = retry_after(resp.headers());
        let bytes = Limited::new(resp.into_body(), 16 * 1024 * 1024)
            .collect()
            .await
            .map_err(|e| format!("read: {e}"))?
            .to_bytes();
        Ok(Reply {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            retry_after_secs,
        })
    };
    tokio::time::timeout(CALL_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// What `download` wrote.
pub struct Downloaded {
    pub bytes: u64,
    pub headers: hyper::HeaderMap,
}

/// GETs `path` and writes a `200` body to `out` as it arrives (no size limit, no overall
/// timeout: a backup can be large); any other answer is returned as a `Reply` to report.
pub async fn download(
    server: &ServerUrl,
    path: &str,
    token: &str,
    out: &mut tokio::fs::File,
) -> Result<Result<Downloaded, Reply>, String> {
    use tokio::io::AsyncWriteExt;
    let resp = send(server, hyper::Method::GET, path, token, None).await?;
    let status = resp.status().as_u16();
    if status != 200 {
        let retry_after_secs = retry_after(resp.headers());
        let bytes = Limited::new(resp.into_body(), 1024 * 1024)
            .collect()
            .await
            .map_err(|e| format!("read: {e}"))?
            .to_bytes();
        return Ok(Err(Reply {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            retry_after_secs,
        }));
    }
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let mut written = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("read: {e}"))?;
        if let Ok(data) = frame.into_data() {
            out.write_all(&data)
                .await
                .map_err(|e| format!("write: {e}"))?;
            written += data.len() as u64;
        }
    }
    out.flush().await.map_err(|e| format!("write: {e}"))?;
    Ok(Ok(Downloaded {
        bytes: written,
        headers,
    }))
}

/// Sends one request on a new connection.
async fn send(
    server: &ServerUrl,
    method: hyper::Method,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let stream = tokio::net::TcpStream::connect((server.host.as_str(), server.port))
        .await
        .map_err(|e| format!("connect to {}: {e}", server.authority()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("{}{}", server.prefix, path))
        .header("host", server.authority())
        .header("authorization", format!("Bearer {token}"))
        .header("user-agent", USER_AGENT);
    let body = match body {
        Some(json) => {
            req = req.header("content-type", "application/json");
            Bytes::from(json.to_string())
        }
        None => Bytes::new(),
    };
    let req = req
        .body(Full::new(body))
        .map_err(|e| format!("request: {e}"))?;
    sender
        .send_request(req)
        .await
        .map_err(|e| format!("send: {e}"))
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
