//! What `/metrics` reports, kept with the `prometheus` crate (its registry, types and text
//! encoder: no exposition format of our own).
//!
//! Three kinds of series:
//! - counters and histograms moved where things happen: the edge (HTTP requests), the sockets
//!   (clients, bytes sent), heartbeats, commands sent to runners, webhook deliveries, and the store's writer (its own
//!   histograms, since `store/` depends on no other module);
//! - counters moved by committed events ([`Metrics::observe_event`], called by the event bus):
//!   sessions created and ended, output received, approvals and their time to a decision;
//! - gauges read at scrape time from the state that already holds them ([`Census`], filled by
//!   the scrape): sessions by state, the queue, runners by status, rollouts by channel.
//!
//! Names follow Prometheus' conventions (`_total` counters, base units: seconds and bytes).

use std::collections::HashMap;

use hyper::{Method, StatusCode};
use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::events::model::{BusEvent, DomainEvent, SessionEventData};

/// Buckets of request latencies and decision times are in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// A human's answer takes seconds to hours.
const DECISION_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 86400.0,
];

/// The two sockets of the API.
#[derive(Debug, Clone, Copy)]
pub enum Socket {
    /// `GET /api/v1/ws`, browsers and other dashboard clients.
    Dashboard,
    /// `GET /api/v1/runners/{runnerId}/channel`.
    RunnerChannel,
}

impl Socket {
    fn label(self) -> &'static str {
        match self {
            Self::Dashboard => "dashboard",
            Self::RunnerChannel => "runner_channel",
        }
    }
}

/// How a heartbeat arrived.
#[derive(Debug, Clone, Copy)]
pub enum HeartbeatVia {
    Rest = 0,
    Channel = 1,
}

/// Who wrote a command to a runner's channel.
#[derive(Debug, Clone, Copy)]
pub enum CommandPath {
    /// The store's delivery, right after the commit that made it (the channel had nothing
    /// else in hand).
    Commit = 0,
    /// The channel's own task: it had frames of the runner to answer first, or other commands
    /// ahead of it.
    Channel = 1,
    /// The channel's task as the runner connected: what was still unacknowledged.
    Backlog = 2,
}

/// A request's series: its method, its route template (by address: templates are `'static`
/// strings of one table) and its status.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct HttpKey {
    method: Method,
    route: usize,
    status: u16,
}

/// What became of one webhook delivery attempt.
#[derive(Debug, Clone, Copy)]
pub enum DeliveryOutcome {
    /// The receiver answered 2xx.
    Delivered,
    /// The attempt failed; another one is scheduled.
    Retrying,
    /// The attempt failed and it was the last one.
    Failed,
}

impl DeliveryOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retrying => "retrying",
            Self::Failed => "failed",
        }
    }
}

/// Values read at scrape time from the state that holds them.
#[derive(Debug, Default, Clone)]
pub struct Census {
    /// Sessions not in a terminal state, by state name.
    pub sessions_by_state: Vec<(&'static str, u64)>,
    /// Sessions waiting for a runner (QUEUED without one).
    pub queued: u64,
    /// Age of the oldest of them, in seconds (0 when none waits).
    pub oldest_queued_seconds: f64,
    pub approvals_pending: u64,
    /// Registered runners by status name.
    pub runners_by_status: Vec<(&'static str, u64)>,
    /// Per channel: the percentage of the fleet its active rollout has reached (0 without one).
    pub rollout_percentage_by_channel: Vec<(&'static str, u64)>,
    pub connections_open: u64,
    /// 1 while the store's last commit failed.
    pub store_failing: bool,
}

pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    websocket_clients: IntGaugeVec,
    /// Terminal bytes `in` and `out`, resolved once (every chunk, and every chunk sent to
    /// every watcher, counts).
    terminal_bytes: [IntCounter; 2],
    /// Heartbeats by `via`, resolved once (a fleet beats thousands of times a second).
    heartbeats: [IntCounter; 2],
    /// Commands written to runner channels by `path`, resolved once.
    runner_commands: [IntCounter; 3],
    webhook_deliveries: IntCounterVec,
    /// The series of each (method, route, status) met so far, so that a request costs one map
    /// look-up of small keys instead of hashing its label strings twice.
    http_series: arc_swap::ArcSwap<HashMap<HttpKey, (IntCounter, Histogram)>>,
    sessions_created: IntCounter,
    sessions_ended: IntCounterVec,
    approvals_requested: IntCounter,
    approval_decision: HistogramVec,
    // Scrape-time gauges.
    sessions: IntGaugeVec,
    queued: IntGauge,
    oldest_queued: prometheus::Gauge,
    approvals_pending: IntGauge,
    runners: IntGaugeVec,
    rollout_percentage: IntGaugeVec,
    connections_open: IntGauge,
    store_failing: IntGauge,
    /// One scrape at a time sets the gauges and encodes them (two at once would mix their
    /// censuses).
    rendering: std::sync::Mutex<()>,
}

/// Builds a collector and registers it; the names are constants, so a failure is a bug that
/// the first test run shows.
fn registered<C: Collector + Clone + 'static>(registry: &Registry, c: prometheus::Result<C>) -> C {
    let c = c.expect("a metric's definition is valid");
    registry
        .register(Box::new(c.clone()))
        .expect("each metric is registered once");
    c
}

impl Metrics {
    /// The server's metrics; `store_collectors` are the store writer's own (commit latency,
    /// batch size, commits, failures), registered with the rest.
    pub fn new(store_collectors: Vec<Box<dyn Collector>>) -> Self {
        let r = Registry::new();
        for c in store_collectors {
            r.register(c).expect("each store metric is registered once");
        }
        let build = registered(
            &r,
            IntGaugeVec::new(
                Opts::new("village_build_info", "The running build (always 1)."),
                &["version"],
            ),
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let histogram = |name: &str, help: &str, buckets: &[f64], labels: &[&str]| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
        };
        Self {
            http_requests: registered(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "village_http_requests_total",
                        "HTTP requests answered, by method, route template and status.",
                    ),
                    &["method", "route", "status"],
                ),
            ),
            http_duration: registered(
                &r,
                histogram(
                    "village_http_request_duration_seconds",
                    "Time from a request's head to its response's head, by method and route template.",
                    LATENCY_BUCKETS,
                    &["method", "route"],
                ),
            ),
            websocket_clients: registered(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "village_websocket_clients",
                        "WebSocket connections open now, by socket (dashboard, runner_channel).",
                    ),
                    &["socket"],
                ),
            ),
            terminal_bytes: {
                let vec = registered(
                    &r,
                    IntCounterVec::new(
                        Opts::new(
                            "village_terminal_bytes_total",
                            "Terminal output bytes: `in` stored from runners, `out` sent to dashboard clients.",
                        ),
                        &["direction"],
                    ),
                );
                ["in", "out"].map(|direction| vec.with_label_values(&[direction]))
            },
            heartbeats: {
                let vec = registered(
                    &r,
                    IntCounterVec::new(
                        Opts::new(
                            "village_runner_heartbeats_total",
                            "Runner heartbeats answered, by how they came (rest, channel).",
                        ),
                        &["via"],
                    ),
                );
                ["rest", "channel"].map(|via| vec.with_label_values(&[via]))
            },
            runner_commands: {
                let vec = registered(
                    &r,
                    IntCounterVec::new(
                        Opts::new(
                            "village_runner_commands_sent_total",
                            "Commands written to runner channels, by who wrote them (commit, channel, backlog).",
                        ),
                        &["path"],
                    ),
                );
                ["commit", "channel", "backlog"].map(|path| vec.with_label_values(&[path]))
            },
            http_series: Default::default(),
            webhook_deliveries: registered(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "village_webhook_deliveries_total",
                        "Webhook delivery attempts by outcome: delivered, retrying (failed, tried again later), failed (failed, no attempt left).",
                    ),
                    &["outcome"],
                ),
            ),
            sessions_created: registered(
                &r,
                IntCounter::new("village_sessions_created_total", "Sessions created."),
            ),
            sessions_ended: registered(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "village_sessions_ended_total",
                        "Sessions that reached a terminal state, by that state.",
                    ),
                    &["state"],
                ),
            ),
            approvals_requested: registered(
                &r,
                IntCounter::new("village_approvals_requested_total", "Approvals requested."),
            ),
            approval_decision: registered(
                &r,
                histogram(
                    "village_approval_decision_seconds",
                    "Time from an approval's request to its resolution, by decision and by whom (human: a person or API client; system: expiry or the session's end).",
                    DECISION_BUCKETS,
                    &["decision", "by"],
                ),
            ),
            sessions: registered(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "village_sessions",
                        "Sessions not in a terminal state, by state (terminal ones: village_sessions_ended_total).",
                    ),
                    &["state"],
                ),
            ),
            queued: registered(
                &r,
                IntGauge::new(
                    "village_sessions_queued",
                    "Sessions waiting for a runner (QUEUED, not assigned).",
                ),
            ),
            oldest_queued: registered(
                &r,
                prometheus::Gauge::new(
                    "village_sessions_queued_oldest_age_seconds",
                    "How long the oldest session waiting for a runner has waited (0 when none waits).",
                ),
            ),
            approvals_pending: registered(
                &r,
                IntGauge::new(
                    "village_approvals_pending",
                    "Approvals waiting for a decision.",
                ),
            ),
            runners: registered(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "village_runners",
                        "Registered runners by status (online, draining, offline).",
                    ),
                    &["status"],
                ),
            ),
            rollout_percentage: registered(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "village_rollout_stage_percentage",
                        "Per channel, the share of the fleet (%) the active rollout's current stage targets; 0 without an active rollout.",
                    ),
                    &["channel"],
                ),
            ),
            connections_open: registered(
                &r,
                IntGauge::new(
                    "village_http_connections_open",
                    "TCP connections open now, WebSockets included.",
                ),
            ),
            store_failing: registered(
                &r,
                IntGauge::new(
                    "village_store_failing",
                    "1 while the last commit failed (storage unavailable).",
                ),
            ),
            rendering: std::sync::Mutex::new(()),
            registry: r,
        }
    }

    /// One answered HTTP request; `route` is a template (a few dozen of them), never a path.
    pub fn http_request(
        &self,
        method: &Method,
        route: &'static str,
        status: StatusCode,
        seconds: f64,
    ) {
        let key = HttpKey {
            method: method.clone(),
            route: route.as_ptr() as usize,
            status: status.as_u16(),
        };
        if let Some((count, duration)) = self.http_series.load().get(&key) {
            count.inc();
            duration.observe(seconds);
            return;
        }
        let count =
            self.http_requests
                .with_label_values(&[method.as_str(), route, status.as_str()]);
        let duration = self
            .http_duration
            .with_label_values(&[method.as_str(), route]);
        count.inc();
        duration.observe(seconds);
        // A new (method, route, status): copied on write, a few dozen times in a server's life.
        self.http_series.rcu(|known| {
            let mut known = HashMap::clone(known);
            known.insert(key.clone(), (count.clone(), duration.clone()));
            known
        });
    }

    /// Counts a WebSocket client while the returned guard lives.
    pub fn websocket_client(&self, socket: Socket) -> ClientGuard {
        let gauge = self.websocket_clients.with_label_values(&[socket.label()]);
        gauge.inc();
        ClientGuard(gauge)
    }

    /// Terminal output bytes sent to a dashboard client.
    pub fn terminal_bytes_sent(&self, bytes: usize) {
        self.terminal_bytes[1].inc_by(bytes as u64);
    }

    pub fn heartbeat(&self, via: HeartbeatVia) {
        self.heartbeats[via as usize].inc();
    }

    pub fn runner_command_sent(&self, path: CommandPath) {
        self.runner_commands[path as usize].inc();
    }

    pub fn webhook_delivery(&self, outcome: DeliveryOutcome) {
        self.webhook_deliveries
            .with_label_values(&[outcome.label()])
            .inc();
    }

    /// Counts what a committed event tells (called by the event bus for every event).
    pub fn observe_event(&self, e: &BusEvent) {
        match &e.event {
            DomainEvent::TerminalOutput(chunk) => {
                self.terminal_bytes[0].inc_by(chunk.data.len() as u64)
            }
            DomainEvent::Session(SessionEventData::Created { .. }) => self.sessions_created.inc(),
            DomainEvent::Session(SessionEventData::Ended { state, .. }) => self
                .sessions_ended
                .with_label_values(&[state.as_str()])
                .inc(),
            DomainEvent::Session(SessionEventData::ApprovalRequested { .. }) => {
                self.approvals_requested.inc()
            }
            DomainEvent::Session(SessionEventData::ApprovalResolved {
                decision,
                resolved_by,
                requested_at,
                ..
            }) => {
                let by = if resolved_by == "system" {
                    "system"
                } else {
                    "human"
                };
                let seconds = e.at.saturating_sub(*requested_at) as f64 / 1000.0;
                self.approval_decision
                    .with_label_values(&[decision.as_str(), by])
                    .observe(seconds);
            }
            _ => {}
        }
    }

    /// The exposition: sets the scrape-time gauges from `census`, then encodes every series.
    pub fn render(&self, census: &Census) -> String {
        let _one_at_a_time = self.rendering.lock().unwrap_or_else(|p| p.into_inner());
        self.sessions.reset();
        for (state, n) in &census.sessions_by_state {
            self.sessions.with_label_values(&[state]).set(gauge(*n));
        }
        self.queued.set(gauge(census.queued));
        self.oldest_queued.set(census.oldest_queued_seconds);
        self.approvals_pending.set(gauge(census.approvals_pending));
        self.runners.reset();
        for (status, n) in &census.runners_by_status {
            self.runners.with_label_values(&[status]).set(gauge(*n));
        }
        self.rollout_percentage.reset();
        for (channel, pct) in &census.rollout_percentage_by_channel {
            self.rollout_percentage
                .with_label_values(&[channel])
                .set(gauge(*pct));
        }
        self.connections_open.set(gauge(census.connections_open));
        self.store_failing.set(i64::from(census.store_failing));
        let mut out = Vec::new();
        // Encoding into memory fails only on a family without metrics, which `gather` leaves out.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding /metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Keeps a WebSocket client counted until dropped.
pub struct ClientGuard(IntGauge);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::sessions::model::{Decision, OutputChunk, OutputStream};

    fn series(text: &str, name_and_labels: &str) -> Option<f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
    }

    #[test]
    fn events_move_their_counters_and_the_census_sets_the_gauges() {
        let m = Metrics::new(Vec::new());
        let chunk = OutputChunk {
            seq: 1,
            stream: OutputStream::Stdout,
            data: "hello".into(),
            at: 1_000,
            offset: 0,
        };
        m.observe_event(&BusEvent::new(
            1_000,
            None,
            None,
            DomainEvent::TerminalOutput(Arc::new(chunk)),
        ));
        m.observe_event(&BusEvent::new(
            91_000,
            None,
            None,
            DomainEvent::Session(SessionEventData::ApprovalResolved {
                approval_id: uuid::Uuid::nil(),
                decision: Decision::Allow,
                reason: None,
                resolved_by: "alice".into(),
                scope: None,
                requested_at: 1_000,
            }),
        ));
        let _dashboard = m.websocket_client(Socket::Dashboard);
        {
            let _gone = m.websocket_client(Socket::Dashboard);
        }
        let text = m.render(&Census {
            sessions_by_state: vec![("RUNNING", 3)],
            runners_by_status: vec![("online", 2), ("offline", 1)],
            ..Census::default()
        });
        assert_eq!(
            series(&text, "village_terminal_bytes_total{direction=\"in\"}"),
            Some(5.0)
        );
        // 90 s: in the 300 s bucket, not in the 60 s one.
        let bucket = |le: &str| {
            series(
                &text,
                &format!(
                    "village_approval_decision_seconds_bucket{{by=\"human\",decision=\"allow\",le=\"{le}\"}}"
                ),
            )
        };
        assert_eq!((bucket("60"), bucket("300")), (Some(0.0), Some(1.0)));
        assert_eq!(
            series(&text, "village_websocket_clients{socket=\"dashboard\"}"),
            Some(1.0)
        );
        assert_eq!(
            series(&text, "village_sessions{state=\"RUNNING\"}"),
            Some(3.0)
        );
        assert_eq!(
            series(&text, "village_runners{status=\"offline\"}"),
            Some(1.0)
        );
        // A state gone from the census is gone from the output, not left at its last value.
        let text = m.render(&Census::default());
        assert_eq!(series(&text, "village_sessions{state=\"RUNNING\"}"), None);
    }
}
