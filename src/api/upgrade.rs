//! The WebSocket upgrade both sockets use (dashboard stream and runner channel). warp 0.4's
//! own upgrade fixes tungstenite's 128 KiB read buffer, zero-filled on every read: with
//! thousands of mostly idle runners and dashboards that is most of the server's memory, so
//! the handshake is done here and the socket built with small buffers.

use std::future::Future;

use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use warp::http::{HeaderMap, HeaderValue, StatusCode, header};
use warp::reply::Response;

use super::error::{ApiError, reject};

/// A connection's socket after the upgrade.
pub type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Output buffered for one peer beyond what its socket took; past this it is too slow.
pub const MAX_BUFFERED_BYTES: usize = 8 * 1024 * 1024;
/// Frames up to `websocket.maxFrameBytes` are read; each endpoint answers a larger one with an
/// error frame and keeps the connection, up to twice the limit. Beyond that the frame is a
/// protocol error that closes the connection (1009) before it is buffered: a peer cannot make
/// the server hold more than this per socket.
pub fn hard_frame_limit(max_frame_bytes: usize) -> usize {
    max_frame_bytes.saturating_mul(2)
}

fn socket_config(max_frame_bytes: usize) -> WebSocketConfig {
    let hard = hard_frame_limit(max_frame_bytes);
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_BUFFERED_BYTES)
        .max_message_size(Some(hard))
        .max_frame_size(Some(hard))
}

fn header_is(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(token))
}

/// A valid WebSocket upgrade request, not yet answered.
pub struct Handshake {
    accept: String,
    upgrade: hyper::upgrade::OnUpgrade,
}

impl Handshake {
    /// Checks the upgrade headers (400 `INVALID_REQUEST` when they are not a WebSocket handshake).
    pub fn check(
        headers: &HeaderMap,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Result<Handshake, warp::Rejection> {
        let key = headers.get(header::SEC_WEBSOCKET_KEY);
        let valid = header_is(headers, header::CONNECTION, "upgrade")
            && header_is(headers, header::UPGRADE, "websocket")
            && headers
                .get(header::SEC_WEBSOCKET_VERSION)
                .is_some_and(|v| v == "13");
        match (key, valid, upgrade) {
            (Some(key), true, Some(upgrade)) => Ok(Handshake {
                accept: derive_accept_key(key.as_bytes()),
                upgrade,
            }),
            _ => Err(reject(ApiError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                "This is a WebSocket endpoint: send a WebSocket upgrade request",
            ))),
        }
    }

    /// Answers 101 and runs `serve` on the socket once the connection is upgraded.
    pub fn accept<F, Fut>(self, max_frame_bytes: usize, serve: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let upgrade = self.upgrade;
        tokio::spawn(async move {
            match upgrade.await {
                Ok(upgraded) => {
                    let socket = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(socket_config(max_frame_bytes)),
                    )
                    .await;
                    serve(socket).await;
                }
                Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
            }
        });
        let mut response = Response::new(bytes::Bytes::new().into());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = response.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(&self.accept) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        response
    }
}
