//! HTTP edge: thin warp filters that parse a request, call the domain and wrap the answer in
//! the envelope. The only code that knows warp or the JSON wire shapes.

pub mod access_log;
mod admin;
mod audit;
mod budgets;
mod download;
pub mod edge;
mod envelope;
pub mod error;
mod health;
mod input;
pub mod limits;
mod openapi;
mod pipeline;
mod policies;
mod recording;
mod runner_channel;
mod runners;
mod sessions;
mod tokens;
mod upgrade;
mod webhooks;
pub(crate) mod wire;
mod ws;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use futures_util::StreamExt;
use warp::filters::BoxedFilter;
use warp::http::HeaderValue;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::auth::{AuthService, Caller, Principal};
use crate::clock::{SharedClock, SharedIds};
use crate::config::Config;
use crate::events::EventBus;
use crate::metrics::Metrics;
use crate::pipeline::PipelineService;
use crate::realtime::ConnectionLimiter;
use crate::runners::RunnerService;
use crate::sessions::SessionService;
use crate::store::Store;
use crate::webhooks::WebhookService;
pub use envelope::{ApiResult, RequestCtx, Success};
use error::{ApiError, reject};
pub use input::Body;

/// Request bodies above this are refused with 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What every handler can reach; shared, so a request clones one pointer.
pub type AppState = Arc<Services>;

pub struct Services {
    pub config: Arc<Config>,
    pub clock: SharedClock,
    pub ids: SharedIds,
    pub store: Store,
    pub auth: AuthService,
    pub sessions: SessionService,
    pub runners: RunnerService,
    pub pipeline: PipelineService,
    pub bus: EventBus,
    pub webhooks: WebhookService,
    pub policies: crate::policy::PolicyService,
    pub spend: crate::spend::SpendService,
    /// Open dashboard connections per token.
    pub realtime: ConnectionLimiter,
    /// Open TCP connections, counted against the `server.maxConnections*` caps.
    pub connections: Arc<edge::Connections>,
    /// Request rate limits per address and per token.
    pub limits: Arc<limits::RateLimits>,
    /// What `/metrics` reports.
    pub metrics: Arc<Metrics>,
    /// Turns true when the server is stopping: long-lived sockets close with 1001.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// Every route the server answers.
pub fn routes(state: &AppState) -> BoxedFilter<(Response,)> {
    let api = warp::path("api").and(enveloped(state, api_v1(state)));
    // A fleet's heartbeats are most of the requests a busy server answers: the edge answers
    // them before these routes (`EdgeRoutes`), as it does creates and output.
    health::routes(state)
        .or(openapi::route())
        .unify()
        .or(api)
        .unify()
        .or(crate::ui::routes())
        .unify()
        .map(Reply::into_response)
        .boxed()
}

/// An API answer in the envelope: `routes` settles the request (a rejection becomes its error
/// envelope), with its request id and timing.
fn enveloped(
    state: &AppState,
    routes: BoxedFilter<(ApiResult,)>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + use<> {
    let clock = state.clock.clone();
    request_ctx()
        .and(routes.or_else(|r: Rejection| async move {
            Ok::<_, Infallible>((Err::<Success, _>(error::from_rejection(&r)),))
        }))
        .map(move |ctx: RequestCtx, result: ApiResult| {
            envelope::respond(&ctx, clock.now_ms(), result)
        })
}

/// The API's hottest routes, answered by the edge before warp's filter chain: a fleet's
/// heartbeats, session creates and the output runners send. The chain's per-request work
/// (boxed filters tried one after another, header extraction one filter at a time, futures
/// moved from state to state, rejections) was a fifth of a beat's cost and a tenth of a
/// create's (BENCHMARKS.md, "Hot paths"). The same address and token limits, authentication,
/// body checks, handlers and envelope as every API route, through the same functions. Any
/// other form of these paths (a trailing slash, an escaped id) goes through the route tree,
/// which answers it the same way.
#[derive(Clone)]
pub struct EdgeRoutes(AppState);

/// A request [`EdgeRoutes`] answers.
enum EdgeRoute<'a> {
    /// `POST /api/v1/runners/{runnerId}/heartbeat`
    Heartbeat(&'a str),
    /// `POST /api/v1/sessions`
    CreateSession,
    /// `POST /api/v1/sessions/{sessionId}/output`
    AppendOutput(&'a str),
}

impl<'a> EdgeRoute<'a> {
    fn of(head: &'a warp::http::request::Parts) -> Option<Self> {
        if head.method != warp::http::Method::POST {
            return None;
        }
        let rest = head.uri.path().strip_prefix("/api/v1/")?;
        let id = |id: &'a str| (!id.is_empty() && !id.contains(['/', '%'])).then_some(id);
        if rest == "sessions" {
            Some(Self::CreateSession)
        } else if let Some(runner) = rest.strip_prefix("runners/") {
            id(runner.strip_suffix("/heartbeat")?).map(Self::Heartbeat)
        } else {
            let session = rest.strip_prefix("sessions/")?.strip_suffix("/output")?;
            id(session).map(Self::AppendOutput)
        }
    }
}

impl EdgeRoutes {
    pub fn new(state: &AppState) -> Self {
        Self(state.clone())
    }

    /// Whether this answers the request with head `head`.
    pub fn answers(head: &warp::http::request::Parts) -> bool {
        EdgeRoute::of(head).is_some()
    }

    /// The answer to a request that [`Self::answers`], from `peer`.
    pub async fn answer<B, E>(
        &self,
        head: &warp::http::request::Parts,
        body: B,
        peer: std::net::SocketAddr,
    ) -> Response
    where
        B: futures_util::Stream<Item = Result<bytes::Bytes, E>>,
    {
        let st = &self.0;
        let ctx = RequestCtx {
            request_id: envelope::request_id_from(head.headers.get("x-request-id")),
            started: Instant::now(),
        };
        // Only a request that `answers` accepted is handed here.
        let Some(route) = EdgeRoute::of(head) else {
            return envelope::respond(&ctx, st.clock.now_ms(), Err(ApiError::no_route()));
        };
        let header = |name: &str| head.headers.get(name);
        let admitted = async {
            st.limits.check_ip(peer.ip())?;
            let caller = authenticate(st, header("authorization"))?;
            caller_limit(&st.limits, &caller, &head.method, head.uri.path())?;
            let body =
                read_json_bytes(header("content-length"), header("content-type"), body).await?;
            Ok::<_, ApiError>((caller, body))
        };
        let result = match admitted.await {
            Err(e) => Err(e),
            Ok((caller, body)) => match route {
                EdgeRoute::Heartbeat(id) => runners::heartbeat(id, &caller, st, &body),
                EdgeRoute::CreateSession => match body.parse() {
                    Ok(body) => sessions::create(caller, st.clone(), body).await,
                    Err(e) => Err(e),
                },
                EdgeRoute::AppendOutput(id) => match body.parse() {
                    Ok(body) => {
                        sessions::append_output(id.to_owned(), caller, st.clone(), body).await
                    }
                    Err(e) => Err(e),
                },
            },
        };
        envelope::respond(&ctx, st.clock.now_ms(), result)
    }
}

/// `/api/v1/...`: authentication first (401 before routing), then the domain routes.
fn api_v1(state: &AppState) -> BoxedFilter<(ApiResult,)> {
    // The dashboard stream authenticates by header, `?token=` or its first frame, so it is
    // matched before the bearer-token gate.
    let gated = rate_limited_caller(state)
        .map(|_: Caller| ())
        .untuple_one()
        .and(
            sessions::routes(state)
                .or(tokens::routes(state))
                .unify()
                .or(runners::routes(state))
                .unify()
                .or(audit::routes(state))
                .unify()
                .or(webhooks::routes(state))
                .unify()
                .or(pipeline::routes(state))
                .unify()
                .or(policies::routes(state))
                .unify()
                .or(budgets::routes(state))
                .unify()
                .or(admin::routes(state))
                .unify(),
        );
    warp::path("v1")
        .and(rate_limited_address(state))
        .and(
            ws::route(state)
                .or(policies::link_routes(state))
                .unify()
                .or(gated)
                .unify(),
        )
        .boxed()
}

/// Every `/api` request counts against its client address's rate limit (before its token is
/// looked at, so floods of bad tokens are limited too).
fn rate_limited_address(
    state: &AppState,
) -> impl Filter<Extract = (), Error = Rejection> + Clone + use<> {
    let limits = state.limits.clone();
    edge::client_addr()
        .and_then(move |addr: Option<edge::ClientAddr>| {
            let checked = match addr {
                Some(edge::ClientAddr(addr)) => limits.check_ip(addr.ip()).map_err(reject),
                None => Ok(()),
            };
            std::future::ready(checked)
        })
        .untuple_one()
}

/// The caller (see [`principal`]), whose call counts against its token's rate limit: runner
/// reports against one budget, everything else against another.
fn rate_limited_caller(
    state: &AppState,
) -> impl Filter<Extract = (Caller,), Error = Rejection> + Clone + use<> {
    let limits = state.limits.clone();
    principal(state)
        .and(warp::method())
        .and(warp::path::full())
        .and_then(
            move |caller: Caller, method: warp::http::Method, path: warp::path::FullPath| {
                let checked = caller_limit(&limits, &caller, &method, path.as_str())
                    .map(|()| caller)
                    .map_err(reject);
                std::future::ready(checked)
            },
        )
}

/// The caller's call against its token's rate limit (runner reports and the rest have
/// budgets of their own).
fn caller_limit(
    limits: &limits::RateLimits,
    caller: &Caller,
    method: &warp::http::Method,
    path: &str,
) -> Result<(), ApiError> {
    // With authentication off every caller is the same anonymous admin: the address limit
    // applies instead.
    match caller.token_id.is_nil() {
        true => Ok(()),
        false => limits.check_token(caller.token_id, limits::budget_of(method, path)),
    }
}

/// One header's raw value, if present (never rejects; no copy of the whole header map).
fn header_value(
    name: &'static str,
) -> impl Filter<Extract = (Option<HeaderValue>,), Error = Infallible> + Clone {
    warp::header::optional::<HeaderValue>(name).or_else(|_| async { Ok::<_, Infallible>((None,)) })
}

fn request_ctx() -> impl Filter<Extract = (RequestCtx,), Error = Infallible> + Clone {
    header_value("x-request-id").map(|id: Option<HeaderValue>| RequestCtx {
        request_id: envelope::request_id_from(id.as_ref()),
        started: Instant::now(),
    })
}

/// The caller, from `Authorization: Bearer <token>`; everyone is admin when auth is off.
pub fn principal(
    state: &AppState,
) -> impl Filter<Extract = (Caller,), Error = Rejection> + Clone + use<> {
    let state = state.clone();
    // Authentication is a memory lookup: decide here and hand back a ready future, so a
    // request clones nothing but the caller.
    header_value("authorization").and_then(move |authorization: Option<HeaderValue>| {
        std::future::ready(authenticate(&state, authorization.as_ref()).map_err(reject))
    })
}

/// The caller of a request with this `Authorization` header (401 without a valid token).
fn authenticate(state: &AppState, authorization: Option<&HeaderValue>) -> Result<Caller, ApiError> {
    if state.config.auth.disabled {
        return Ok(Arc::new(Principal::anonymous_admin()));
    }
    authorization
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|token| state.auth.authenticate(token.trim()))
        .inspect(|caller| access_log::note_caller(caller.token_id))
        .ok_or_else(ApiError::unauthorized)
}

pub fn with_state(
    state: &AppState,
) -> impl Filter<Extract = (AppState,), Error = Infallible> + Clone + use<> {
    let state = state.clone();
    warp::any().map(move || state.clone())
}

/// Query parameters as strings (typed reads happen in the handler, collecting issues).
pub fn query() -> impl Filter<Extract = (HashMap<String, String>,), Error = Rejection> + Clone {
    warp::query::<HashMap<String, String>>()
}

/// The JSON body: at most 1 MiB (413), `application/json` when not empty (415), parsable (400
/// `INVALID_JSON`). An empty body is allowed without a Content-Type.
pub fn json_body() -> impl Filter<Extract = (Body,), Error = Rejection> + Clone {
    raw_json_body().and_then(|raw: RawJson| async move { raw.parse().map_err(reject) })
}

/// The body's bytes with `json_body`'s checks of size and type, not yet parsed (the heartbeat
/// reads its fields straight from them).
pub(super) fn raw_json_body() -> impl Filter<Extract = (RawJson,), Error = Rejection> + Clone {
    header_value("content-length")
        .and(header_value("content-type"))
        .and(warp::body::stream())
        .and_then(read_json_body)
}

/// A request body that passed the size and type checks; `None` when empty.
pub struct RawJson(Option<BytesMut>);

impl RawJson {
    pub fn bytes(&self) -> Option<&[u8]> {
        self.0.as_deref()
    }

    /// The body as JSON (400 `INVALID_JSON` when it is not).
    pub fn parse(&self) -> Result<Body, ApiError> {
        match &self.0 {
            None => Ok(Body(None)),
            Some(bytes) => serde_json::from_slice(bytes)
                .map(|v| Body(Some(v)))
                .map_err(|e| ApiError::invalid_json(format!("Body is not valid JSON: {e}"))),
        }
    }
}

async fn read_json_body<S, B>(
    content_length: Option<HeaderValue>,
    content_type: Option<HeaderValue>,
    stream: S,
) -> Result<RawJson, Rejection>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    read_json_bytes(content_length.as_ref(), content_type.as_ref(), stream)
        .await
        .map_err(reject)
}

/// The body of `stream` with `json_body`'s checks of size and type, not yet parsed.
async fn read_json_bytes<S, B, E>(
    content_length: Option<&HeaderValue>,
    content_type: Option<&HeaderValue>,
    stream: S,
) -> Result<RawJson, ApiError>
where
    S: futures_util::Stream<Item = Result<B, E>>,
    B: Buf,
{
    let declared = content_length
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(ApiError::payload_too_large());
    }
    let mut stream = std::pin::pin!(stream);
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::invalid_json("The body could not be read"))?;
        if buf.len() + chunk.remaining() > MAX_BODY_BYTES {
            return Err(ApiError::payload_too_large());
        }
        buf.extend_from_slice(chunk.chunk());
    }
    if buf.is_empty() {
        return Ok(RawJson(None));
    }
    let is_json = content_type
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|v| v == "application/json" || v.ends_with("+json"));
    if !is_json {
        return Err(ApiError::unsupported_media_type());
    }
    Ok(RawJson(Some(buf)))
}

/// Converts a reply that is not enveloped (assets, documents) into a response.
pub fn raw(reply: impl Reply) -> Response {
    reply.into_response()
}
