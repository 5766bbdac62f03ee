//! Runners and the fleet.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::pipeline::DesiredBuild;
use super::stored_json;
use crate::runners::model::RunnerRecord;
use crate::runners::{FleetSummary, HeartbeatReply, RunnerView};
use crate::sessions::timestamp;

/// A runner as the API shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Runner<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    build_id: Option<&'a str>,
    capabilities: Capabilities<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    drained_at: Option<String>,
    draining: bool,
    hostname: &'a str,
    last_heartbeat: String,
    load: Load,
    /// What the runner sent at registration (`{}` when nothing).
    metadata: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    org_id: Option<&'a str>,
    registered_at: String,
    runner_id: Uuid,
    runtime_versions: &'a BTreeMap<String, String>,
    status: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Capabilities<'a> {
    features: &'a [String],
    max_concurrent_sessions: u64,
    providers: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Load {
    active_sessions: u64,
    cpu_percent: f64,
    disk_percent: f64,
    memory_percent: f64,
}

impl<'a> From<&'a RunnerView> for Runner<'a> {
    fn from(v: &'a RunnerView) -> Self {
        let r = &v.record;
        Self {
            build_id: v.live.build_id.as_deref(),
            capabilities: Capabilities {
                features: &r.capabilities.features,
                max_concurrent_sessions: r.capabilities.max_concurrent_sessions,
                providers: r
                    .capabilities
                    .providers
                    .iter()
                    .map(|p| p.as_str())
                    .collect(),
            },
            drained_at: r.drained_at.map(timestamp),
            draining: r.draining,
            hostname: &r.hostname,
            last_heartbeat: timestamp(v.live.last_heartbeat),
            load: Load {
                active_sessions: v.sessions,
                cpu_percent: v.live.load.cpu_percent,
                disk_percent: v.live.load.disk_percent,
                memory_percent: v.live.load.memory_percent,
            },
            metadata: stored_json(r.metadata_json.as_deref())
                .unwrap_or_else(|| Value::Object(Map::new())),
            org_id: r.org_id.as_deref(),
            registered_at: timestamp(r.registered_at),
            runner_id: r.id,
            runtime_versions: &v.live.runtime_versions,
            status: v.status.as_str(),
        }
    }
}

/// The answer to a registration: the runner, its token and how often to beat.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Registered<'a> {
    heartbeat_interval_ms: u64,
    runner: Runner<'a>,
    runner_token: &'a str,
}

impl<'a> Registered<'a> {
    pub fn new(view: &'a RunnerView, token: &'a str, heartbeat_interval_ms: u64) -> Self {
        Self {
            heartbeat_interval_ms,
            runner: Runner::from(view),
            runner_token: token,
        }
    }
}

/// The answer to a heartbeat (REST, and the channel's `heartbeat_ack` frame).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatAck<'a> {
    /// `null` when the runner should keep what it runs.
    desired_build: Option<DesiredBuild<'a>>,
    drain: bool,
    heartbeat_interval_ms: u64,
    status: &'static str,
}

impl<'a> HeartbeatAck<'a> {
    pub fn new(reply: &HeartbeatReply, desired: Option<DesiredBuild<'a>>) -> Self {
        Self {
            desired_build: desired,
            drain: reply.drain,
            heartbeat_interval_ms: reply.heartbeat_interval_ms,
            status: reply.status.as_str(),
        }
    }
}

/// The answer to a deregistration.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Deregistered<'a> {
    deregistered: bool,
    hostname: &'a str,
    runner_id: Uuid,
}

impl<'a> From<&'a RunnerRecord> for Deregistered<'a> {
    fn from(r: &'a RunnerRecord) -> Self {
        Self {
            deregistered: true,
            hostname: &r.hostname,
            runner_id: r.id,
        }
    }
}

/// `GET /fleet`: runners by status, capacity, sessions by state.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fleet<'a> {
    capacity: Capacity,
    draining: u64,
    offline: u64,
    online: u64,
    sessions_by_state: &'a BTreeMap<&'static str, u64>,
}

#[derive(Debug, Serialize)]
struct Capacity {
    available: u64,
    total: u64,
    used: u64,
}

impl<'a> From<&'a FleetSummary> for Fleet<'a> {
    fn from(s: &'a FleetSummary) -> Self {
        Self {
            capacity: Capacity {
                available: s.capacity_available,
                total: s.capacity_total,
                used: s.capacity_used,
            },
            draining: s.draining,
            offline: s.offline,
            online: s.online,
            sessions_by_state: &s.sessions_by_state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::check::sorted_keys;
    use super::*;
    use crate::runners::model::{Capabilities as Caps, Liveness, Load as LoadRecord, RunnerStatus};
    use crate::sessions::model::Provider;

    fn view(full: bool) -> RunnerView {
        RunnerView {
            record: RunnerRecord {
                id: Uuid::from_u128(1),
                hostname: "h".into(),
                org_id: full.then(|| "acme".into()),
                capabilities: Caps {
                    providers: vec![Provider::Codex, Provider::ClaudeCode],
                    max_concurrent_sessions: 2,
                    features: vec!["gpu".into()],
                },
                metadata_json: full.then(|| r#"{"z":1,"a":{"y":2,"b":3}}"#.into()),
                registered_at: 0,
                token_id: Uuid::from_u128(2),
                draining: full,
                drained_at: full.then_some(1_000),
                revision: 1,
            },
            live: Liveness {
                last_heartbeat: 500,
                load: LoadRecord {
                    cpu_percent: 12.5,
                    memory_percent: 40.0,
                    disk_percent: 0.0,
                },
                runtime_versions: [("codex".to_string(), "1".to_string())].into(),
                build_id: full.then(|| "b1".into()),
                active_sessions: Vec::new(),
            },
            status: RunnerStatus::Draining,
            sessions: 1,
        }
    }

    #[test]
    fn keys_in_wire_order() {
        for full in [true, false] {
            let v = view(full);
            sorted_keys(&Runner::from(&v));
            sorted_keys(&Registered::new(&v, "vlg_x", 1000));
            sorted_keys(&Deregistered::from(&v.record));
        }
        let reply = HeartbeatReply {
            status: RunnerStatus::Online,
            drain: false,
            heartbeat_interval_ms: 10,
        };
        sorted_keys(&HeartbeatAck::new(&reply, None));
        let desired = crate::pipeline::model::BuildRecord {
            build_id: "b".into(),
            runner_version: "1".into(),
            built_at: 0,
            status: crate::pipeline::model::BuildStatus::Testing,
            recommendation: crate::pipeline::model::Recommendation::Acceptable,
            runtime_versions: [("codex".to_string(), "1".to_string())].into(),
            metadata_json: None,
            registered_at: 0,
        };
        let ack = HeartbeatAck::new(&reply, Some((&desired).into()));
        sorted_keys(&ack);
        let fleet = FleetSummary {
            online: 1,
            offline: 2,
            draining: 3,
            capacity_total: 4,
            capacity_used: 1,
            capacity_available: 3,
            sessions_by_state: [("RUNNING", 1), ("QUEUED", 2)].into(),
        };
        sorted_keys(&Fleet::from(&fleet));
    }

    /// A runner without metadata shows `{}`; absent keys stay absent; null stays null.
    #[test]
    fn empty_values() {
        let v = view(false);
        let json = serde_json::to_string(&Runner::from(&v)).unwrap();
        assert!(json.contains(r#""metadata":{}"#), "{json}");
        assert!(
            !json.contains("orgId") && !json.contains("buildId"),
            "{json}"
        );
        assert!(json.contains(r#""diskPercent":0.0"#), "{json}");
        let reply = HeartbeatReply {
            status: RunnerStatus::Online,
            drain: false,
            heartbeat_interval_ms: 10,
        };
        assert_eq!(
            serde_json::to_string(&HeartbeatAck::new(&reply, None)).unwrap(),
            r#"{"desiredBuild":null,"drain":false,"heartbeatIntervalMs":10,"status":"online"}"#
        );
    }
}
