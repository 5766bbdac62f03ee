//! The update pipeline: provider versions, builds, rollouts and their health verdicts, org
//! runtime configs, and the build a runner should run.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::stored_json;
use crate::pipeline::model::{BuildRecord, OrgRuntimeConfig, Verdict};
use crate::pipeline::{RolloutView, VersionView};
use crate::sessions::timestamp;

/// A provider runtime version.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Version<'a> {
    canary_passed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    canary_passed_at: Option<String>,
    first_seen_at: String,
    provider_id: &'static str,
    released_at: String,
    runner_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_url: Option<&'a str>,
    version: &'a str,
}

impl<'a> From<&'a VersionView> for Version<'a> {
    fn from(v: &'a VersionView) -> Self {
        let r = &v.record;
        Self {
            canary_passed: r.canary_passed,
            canary_passed_at: r.canary_passed_at.map(timestamp),
            first_seen_at: timestamp(r.first_seen_at),
            provider_id: r.provider.as_str(),
            released_at: timestamp(r.released_at),
            runner_count: v.runner_count,
            source_url: r.source_url.as_deref(),
            version: &r.version,
        }
    }
}

/// A runner build.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Build<'a> {
    build_id: &'a str,
    built_at: String,
    /// What the build was registered with, as it was sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Value>,
    recommendation: &'static str,
    registered_at: String,
    runner_version: &'a str,
    runtime_versions: &'a BTreeMap<String, String>,
    status: &'static str,
}

impl<'a> From<&'a BuildRecord> for Build<'a> {
    fn from(b: &'a BuildRecord) -> Self {
        Self {
            build_id: &b.build_id,
            built_at: timestamp(b.built_at),
            metadata: stored_json(b.metadata_json.as_deref()),
            recommendation: b.recommendation.as_str(),
            registered_at: timestamp(b.registered_at),
            runner_version: &b.runner_version,
            runtime_versions: &b.runtime_versions,
            status: b.status.as_str(),
        }
    }
}

/// A rollout with its fleet figures and health.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout<'a> {
    affected_orgs_count: u64,
    channel: &'static str,
    created_by: &'a str,
    current_percentage: u8,
    current_stage: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    /// The current stage's latest verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<Health<'a>>,
    health_history: Vec<Health<'a>>,
    last_updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    paused_from: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_build_id: Option<&'a str>,
    rollout_id: Uuid,
    runners_converged: u64,
    runners_targeted: u64,
    stage_started_at: String,
    stages: &'a [u8],
    started_at: String,
    state: &'static str,
    target_build_id: &'a str,
}

impl<'a> From<&'a RolloutView> for Rollout<'a> {
    fn from(v: &'a RolloutView) -> Self {
        let r = &v.rollout;
        Self {
            affected_orgs_count: v.affected_orgs,
            channel: r.channel.as_str(),
            created_by: &r.created_by,
            current_percentage: r.current_percentage,
            current_stage: r.stage_number(),
            error: r.error.as_deref(),
            health: r.verdict.as_ref().map(Health::from),
            health_history: r.past_verdicts.iter().map(Health::from).collect(),
            last_updated_at: timestamp(r.last_updated_at),
            paused_from: r.paused_from.map(|s| s.as_str()),
            previous_build_id: r.previous_build_id.as_deref(),
            rollout_id: r.id,
            runners_converged: v.runners_converged,
            runners_targeted: v.runners_targeted,
            stage_started_at: timestamp(r.stage_started_at),
            stages: &r.stages,
            started_at: timestamp(r.started_at),
            state: r.state.as_str(),
            target_build_id: &r.target_build_id,
        }
    }
}

/// A health verdict on a stage: the new build against the one it replaces.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health<'a> {
    at: String,
    new_build: NewBuildHealth,
    outcome: &'static str,
    previous_build: PreviousBuildHealth,
    reason: &'a str,
    stage_percentage: u8,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct NewBuildHealth {
    failed: u64,
    /// `null` with no sessions ended.
    failure_rate: Option<f64>,
    /// `null` with no runners.
    offline_rate: Option<f64>,
    runners: u64,
    runners_offline: u64,
    sessions: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PreviousBuildHealth {
    failed: u64,
    failure_rate: Option<f64>,
    sessions: u64,
}

/// `part / whole`, none of nothing.
fn rate(part: u64, whole: u64) -> Option<f64> {
    (whole != 0).then(|| part as f64 / whole as f64)
}

impl<'a> From<&'a Verdict> for Health<'a> {
    fn from(v: &'a Verdict) -> Self {
        let c = &v.counts;
        Self {
            at: timestamp(v.at),
            new_build: NewBuildHealth {
                failed: c.new_failed,
                failure_rate: rate(c.new_failed, c.new_ended),
                offline_rate: rate(v.new_runners_offline, v.new_runners),
                runners: v.new_runners,
                runners_offline: v.new_runners_offline,
                sessions: c.new_ended,
            },
            outcome: v.outcome.as_str(),
            previous_build: PreviousBuildHealth {
                failed: c.previous_failed,
                failure_rate: rate(c.previous_failed, c.previous_ended),
                sessions: c.previous_ended,
            },
            reason: &v.reason,
            stage_percentage: v.stage_percentage,
        }
    }
}

/// An org's runtime channel settings.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrgConfig<'a> {
    auto_upgrade: bool,
    beta_opt_in: bool,
    channel: &'static str,
    org_id: &'a str,
    /// Always present: `null` unless pinned.
    pinned_build_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    updated_at: Option<String>,
}

impl<'a> From<&'a OrgRuntimeConfig> for OrgConfig<'a> {
    fn from(c: &'a OrgRuntimeConfig) -> Self {
        Self {
            auto_upgrade: c.auto_upgrade,
            beta_opt_in: c.beta_opt_in,
            channel: c.channel.as_str(),
            org_id: &c.org_id,
            pinned_build_id: c.pinned_build_id.as_deref(),
            updated_at: c.updated_at.map(timestamp),
        }
    }
}

/// The build a runner should run (the heartbeat answer's `desiredBuild`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredBuild<'a> {
    build_id: &'a str,
    runner_version: &'a str,
    runtime_versions: &'a BTreeMap<String, String>,
}

impl<'a> From<&'a BuildRecord> for DesiredBuild<'a> {
    fn from(b: &'a BuildRecord) -> Self {
        Self {
            build_id: &b.build_id,
            runner_version: &b.runner_version,
            runtime_versions: &b.runtime_versions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::check::sorted_keys;
    use super::*;
    use crate::pipeline::model::{
        BuildStatus, Channel, Outcome, Recommendation, RolloutState, StageCounts, VersionRecord,
    };
    use crate::sessions::model::Provider;

    fn verdict(ended: u64) -> Verdict {
        Verdict {
            at: 0,
            outcome: Outcome::Insufficient,
            reason: "few".into(),
            stage_percentage: 10,
            counts: StageCounts {
                new_ended: ended,
                new_failed: ended / 2,
                previous_ended: 0,
                previous_failed: 0,
            },
            new_runners: ended,
            new_runners_offline: 0,
        }
    }

    fn rollout(full: bool) -> RolloutView {
        RolloutView {
            rollout: crate::pipeline::model::Rollout {
                id: Uuid::from_u128(1),
                number: 1,
                target_build_id: "b2".into(),
                previous_build_id: full.then(|| "b1".into()),
                channel: Channel::Stable,
                state: RolloutState::Paused,
                paused_from: full.then_some(RolloutState::RollingOut),
                stages: vec![1, 10, 100],
                stage_index: full.then_some(1),
                current_percentage: 10,
                started_at: 0,
                last_updated_at: 1,
                stage_started_at: 2,
                error: full.then(|| "why".into()),
                counts: StageCounts::default(),
                verdict: full.then(|| verdict(4)),
                past_verdicts: vec![verdict(0)],
                created_by: "admin".into(),
            },
            affected_orgs: 1,
            runners_targeted: 2,
            runners_converged: 1,
        }
    }

    #[test]
    fn keys_in_wire_order() {
        for full in [true, false] {
            sorted_keys(&Rollout::from(&rollout(full)));
            let v = VersionView {
                record: VersionRecord {
                    provider: Provider::Codex,
                    version: "1.0".into(),
                    released_at: 0,
                    canary_passed: full,
                    canary_passed_at: full.then_some(1),
                    source_url: full.then(|| "https://x".into()),
                    first_seen_at: 0,
                },
                runner_count: 3,
            };
            sorted_keys(&Version::from(&v));
            let b = BuildRecord {
                build_id: "b".into(),
                runner_version: "1".into(),
                built_at: 0,
                status: BuildStatus::Testing,
                recommendation: Recommendation::Acceptable,
                runtime_versions: [("codex".to_string(), "1".to_string())].into(),
                metadata_json: full.then(|| r#"{"z":1,"a":2}"#.into()),
                registered_at: 0,
            };
            sorted_keys(&Build::from(&b));
            let c = OrgRuntimeConfig {
                org_id: "acme".into(),
                channel: Channel::Pinned,
                beta_opt_in: full,
                auto_upgrade: true,
                pinned_build_id: full.then(|| "b".into()),
                updated_at: full.then_some(5),
            };
            sorted_keys(&OrgConfig::from(&c));
        }
    }

    /// Rates are `null` with nothing to divide, and floats otherwise (`0.0`, not `0`).
    #[test]
    fn rates() {
        let json = serde_json::to_string(&Health::from(&verdict(0))).unwrap();
        assert!(
            json.contains(r#""failureRate":null,"offlineRate":null"#),
            "{json}"
        );
        let json = serde_json::to_string(&Health::from(&verdict(4))).unwrap();
        assert!(
            json.contains(r#""failureRate":0.5,"offlineRate":0.0"#),
            "{json}"
        );
    }
}
