//! The server's TCP edge: accepts connections and serves HTTP/1.1 on them through hyper,
//! within the limits an operator sets (`server.*` keys in docs/api.md):
//!
//! - a request's head must arrive within `headerReadTimeoutMs` (hyper's timer; a keep-alive
//!   connection waiting for its next request is closed after the same time);
//! - a connection that neither reads nor writes a byte for `idleTimeoutMs` is closed, upgraded
//!   WebSockets included;
//! - at most `maxConnections` connections in all and `maxConnectionsPerIp` from one address
//!   (generous by default: a NAT'd runner host or a proxy holds many); a connection beyond either
//!   cap is closed as soon as it is accepted;
//! - HTTP/1.1 only: nothing Village serves needs HTTP/2, so an HTTP/2 preface is refused.
//!
//! The routes read the request's peer address with [`client_addr`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, Sleep};
use warp::filters::BoxedFilter;
use warp::reply::Response;

use super::{access_log, download};
use crate::config::ServerConfig;
use crate::metrics::Metrics;

/// The peer of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

tokio::task_local! {
    /// The peer of the request being answered: set around the routes' future, so a request
    /// carries it without an extension (an allocation) of its own.
    static PEER: SocketAddr;
}

/// The peer of the connection the request came on (`None` for routes served without the
/// edge).
pub fn client_addr()
-> impl warp::Filter<Extract = (Option<ClientAddr>,), Error = Infallible> + Clone {
    use warp::Filter;
    warp::any().map(|| PEER.try_with(|peer| ClientAddr(*peer)).ok())
}

/// How long a stopping server waits for open requests before it drops their connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection caps and the connections counted against them (`/metrics` reads the count).
pub struct Connections {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Woken when the last connection closes.
    drained: Notify,
    /// Connections turned away since the last warning (logged at most every 10 s).
    refused: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
}

/// A connection's place under the caps, given back when its socket is dropped (for an upgraded
/// WebSocket, when the socket's task ends).
struct Slot {
    connections: Arc<Connections>,
    ip: IpAddr,
}

impl Connections {
    pub fn new(limits: &ServerConfig) -> Arc<Self> {
        Arc::new(Self {
            max_total: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            drained: Notify::new(),
            refused: AtomicU64::new(0),
            last_warning: Mutex::new(None),
        })
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let from_ip = per_ip.get(&ip).copied().unwrap_or(0);
        if self.total.load(Ordering::Relaxed) >= self.max_total || from_ip >= self.max_per_ip {
            drop(per_ip);
            self.refused_one(ip);
            return None;
        }
        per_ip.insert(ip, from_ip + 1);
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(Slot {
            connections: self.clone(),
            ip,
        })
    }

    fn refused_one(&self, ip: IpAddr) {
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            self.refused.store(0, Ordering::Relaxed);
            tracing::warn!(
                %ip,
                refused,
                max_connections = self.max_total,
                max_connections_per_ip = self.max_per_ip,
                "connections refused: over the connection cap (server.maxConnections, server.maxConnectionsPerIp)"
            );
        }
    }

    /// Connections open now, upgraded WebSockets included.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let c = &self.connections;
        let mut per_ip = c.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        drop(per_ip);
        if c.total.fetch_sub(1, Ordering::Relaxed) == 1 {
            c.drained.notify_waiters();
        }
    }
}

/// A TCP stream that fails with `TimedOut` once it has neither read nor written a byte for the
/// idle timeout. The check rides on reads: hyper and every WebSocket task always have a read
/// pending, so the timer wakes whoever would read next. Activity only stamps a time; the timer
/// is reset when it fires early, not on every byte.
struct EdgeStream {
    stream: TcpStream,
    idle_timeout: Duration,
    last_active: Instant,
    timer: Pin<Box<Sleep>>,
    _slot: Slot,
}

impl EdgeStream {
    fn new(stream: TcpStream, idle_timeout: Duration, slot: Slot) -> Self {
        let now = Instant::now();
        Self {
            stream,
            idle_timeout,
            last_active: now,
            timer: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
            _slot: slot,
        }
    }

    /// Pending until the connection has been idle for the whole timeout.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let deadline = self.last_active + self.idle_timeout;
            if deadline <= Instant::now() {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle (server.idleTimeoutMs)",
                ));
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

impl AsyncRead for EdgeStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.last_active = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.poll_idle(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for EdgeStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write(cx, data);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.last_active = Instant::now();
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.last_active = Instant::now();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Serves `routes` on `listener` until `stop` turns true; then stops accepting, lets open
/// requests finish (up to [`DRAIN_TIMEOUT`]) and returns.
pub async fn serve(
    listener: TcpListener,
    routes: BoxedFilter<(Response,)>,
    hot: super::EdgeRoutes,
    limits: &ServerConfig,
    connections: Arc<Connections>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let idle_timeout = limits.idle_timeout;
    let service = warp::service(routes);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        let Some(slot) = connections.admit(peer.ip()) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(EdgeStream::new(stream, idle_timeout, slot));
        let service = service.clone();
        let metrics = metrics.clone();
        let hot = hot.clone();
        let handler = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut service = service.clone();
            let metrics = metrics.clone();
            let hot = hot.clone();
            PEER.scope(peer, async move {
                let (mut head, body) = request.into_parts();
                let seen = access_log::Request::begin(&mut head);
                let (response, caller) = if super::EdgeRoutes::answers(&head) {
                    let body = http_body_util::BodyDataStream::new(body);
                    seen.scope(hot.answer(&head, body, peer)).await
                } else {
                    let request = hyper::Request::from_parts(head, body);
                    let (routed, caller) = seen
                        .scope(tower_service::Service::call(&mut service, request))
                        .await;
                    let Ok(response) = routed;
                    (response, caller)
                };
                let (mut parts, body) = download::finish(response).await.into_parts();
                seen.finish(&mut parts, caller, &metrics);
                Ok::<_, Infallible>(hyper::Response::from_parts(parts, body))
            })
        });
        let connection = http.serve_connection(io, handler).with_upgrades();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = stopped(&mut stop) => {
                    connection.as_mut().graceful_shutdown();
                    connection.as_mut().await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if connections.open() > 0 {
        let drained = connections.drained.notified();
        if connections.open() > 0 {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, drained).await;
        }
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// Out of descriptors (or another resource) the listener fails at once on every call: pause so
/// the loop does not spin, and say so.
async fn accept_failed(e: &io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    ) {
        return;
    }
    tracing::warn!(error = %e, "accepting a connection failed; pausing 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}
