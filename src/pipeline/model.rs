//! The update pipeline's records and rules (contract §5), as a pure in-memory state machine:
//! versions, builds, rollouts, channels and org runtime configs. Every change goes through a
//! method of [`PipelineState`] that checks the rules, mutates the state and notes what changed,
//! so the service only persists what the rules decided, and the property tests can drive the
//! very same code without a server.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::clock::Millis;
use crate::error::{Conflict, DomainError, DomainResult, Entity};
use crate::sessions::model::Provider;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Channel {
    Stable,
    Beta,
    Pinned,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stable => "stable",
            Self::Beta => "beta",
            Self::Pinned => "pinned",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Stable, Self::Beta, Self::Pinned]
            .into_iter()
            .find(|c| c.as_str() == s)
    }

    /// The stages a rollout on this channel goes through when none are given.
    pub fn default_stages(self) -> Vec<u8> {
        match self {
            Self::Stable => vec![1, 10, 50, 100],
            Self::Beta => vec![10, 50, 100],
            Self::Pinned => Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BuildStatus {
    Testing,
    KnownGood,
    KnownBad,
    Deprecated,
}

impl BuildStatus {
    pub const ALL: [BuildStatus; 4] = [
        Self::Testing,
        Self::KnownGood,
        Self::KnownBad,
        Self::Deprecated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Testing => "testing",
            Self::KnownGood => "known_good",
            Self::KnownBad => "known_bad",
            Self::Deprecated => "deprecated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == s)
    }

    /// What a status recommends unless the operator says otherwise.
    pub fn default_recommendation(self) -> Recommendation {
        match self {
            Self::Testing => Recommendation::Acceptable,
            Self::KnownGood => Recommendation::Recommended,
            Self::KnownBad => Recommendation::Blocked,
            Self::Deprecated => Recommendation::NotRecommended,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Recommendation {
    Recommended,
    Acceptable,
    NotRecommended,
    Blocked,
}

impl Recommendation {
    pub const ALL: [Recommendation; 4] = [
        Self::Recommended,
        Self::Acceptable,
        Self::NotRecommended,
        Self::Blocked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Recommended => "recommended",
            Self::Acceptable => "acceptable",
            Self::NotRecommended => "not_recommended",
            Self::Blocked => "blocked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RolloutState {
    Pending,
    CanaryTesting,
    CanaryPassed,
    CanaryFailed,
    RollingOut,
    Paused,
    Completed,
    RolledBack,
}

impl RolloutState {
    pub const ALL: [RolloutState; 8] = [
        Self::Pending,
        Self::CanaryTesting,
        Self::CanaryPassed,
        Self::CanaryFailed,
        Self::RollingOut,
        Self::Paused,
        Self::Completed,
        Self::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::CanaryTesting => "canary_testing",
            Self::CanaryPassed => "canary_passed",
            Self::CanaryFailed => "canary_failed",
            Self::RollingOut => "rolling_out",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::RolledBack => "rolled_back",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// `completed`, `rolled_back` and `canary_failed` never change again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::RolledBack | Self::CanaryFailed
        )
    }
}

/// A provider CLI version, registered by an operator or first seen in a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub provider: Provider,
    pub version: String,
    pub released_at: Millis,
    pub canary_passed: bool,
    pub canary_passed_at: Option<Millis>,
    pub source_url: Option<String>,
    pub first_seen_at: Millis,
}

/// A runner build: a runner version bundling provider CLI versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildRecord {
    pub build_id: String,
    pub runner_version: String,
    pub built_at: Millis,
    pub status: BuildStatus,
    pub recommendation: Recommendation,
    /// Provider id → version.
    pub runtime_versions: BTreeMap<String, String>,
    pub metadata_json: Option<String>,
    pub registered_at: Millis,
}

impl BuildRecord {
    pub fn bundles(&self, provider: Provider) -> bool {
        self.runtime_versions.contains_key(provider.as_str())
    }
}

/// Sessions that ended during the current stage, on runners of the new build and of the
/// previous one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageCounts {
    pub new_ended: u64,
    pub new_failed: u64,
    pub previous_ended: u64,
    pub previous_failed: u64,
}

impl StageCounts {
    pub fn add(&mut self, other: StageCounts) {
        self.new_ended += other.new_ended;
        self.new_failed += other.new_failed;
        self.previous_ended += other.previous_ended;
        self.previous_failed += other.previous_failed;
    }

    pub fn is_empty(&self) -> bool {
        *self == StageCounts::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Healthy,
    Unhealthy,
    /// Too few sessions to judge: the stage is held.
    Insufficient,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
            Self::Insufficient => "insufficient_data",
        }
    }
}

/// The last health verdict on a rollout, with the figures it was based on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub at: Millis,
    pub outcome: Outcome,
    pub reason: String,
    pub stage_percentage: u8,
    pub counts: StageCounts,
    /// Runners reporting the new build, and how many of them are offline.
    pub new_runners: u64,
    pub new_runners_offline: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: Uuid,
    /// 1 for the first rollout ever created, and so on: lists are in this order (ids made in
    /// the same millisecond do not sort by time).
    pub number: u64,
    pub target_build_id: String,
    pub previous_build_id: Option<String>,
    pub channel: Channel,
    pub state: RolloutState,
    /// The state a paused rollout resumes to.
    pub paused_from: Option<RolloutState>,
    pub stages: Vec<u8>,
    /// Index into `stages` of the stage being held; `None` while pending.
    pub stage_index: Option<usize>,
    pub current_percentage: u8,
    pub started_at: Millis,
    pub last_updated_at: Millis,
    /// When the current stage began (its hold time counts from here; pauses restart it).
    pub stage_started_at: Millis,
    pub error: Option<String>,
    pub counts: StageCounts,
    pub verdict: Option<Verdict>,
    /// The last verdict of each earlier stage, oldest first: what justified moving on.
    pub past_verdicts: Vec<Verdict>,
    pub created_by: String,
}

impl Rollout {
    pub fn is_active(&self) -> bool {
        !self.state.is_final()
    }

    /// The state a rollout is in, looking through a pause.
    pub fn underlying_state(&self) -> RolloutState {
        match (self.state, self.paused_from) {
            (RolloutState::Paused, Some(s)) => s,
            (s, _) => s,
        }
    }

    /// `currentStage` as the API shows it: 1-based, 0 while pending.
    pub fn stage_number(&self) -> usize {
        self.stage_index.map_or(0, |i| i + 1)
    }
}

/// What a channel runs when no rollout is moving it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChannelRecord {
    /// Builds that completed a rollout on this channel, oldest first. The newest one that is
    /// not `known_bad` is the channel's current build.
    pub history: Vec<String>,
    pub active_rollout: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrgRuntimeConfig {
    pub org_id: String,
    pub channel: Channel,
    pub beta_opt_in: bool,
    pub auto_upgrade: bool,
    pub pinned_build_id: Option<String>,
    pub updated_at: Option<Millis>,
}

impl OrgRuntimeConfig {
    /// How an org without a stored config reads.
    pub fn default_for(org_id: &str, default_channel: Channel) -> Self {
        Self {
            org_id: org_id.to_owned(),
            channel: default_channel,
            beta_opt_in: false,
            auto_upgrade: true,
            pinned_build_id: None,
            updated_at: None,
        }
    }
}

/// A new build as registered.
#[derive(Debug, Clone)]
pub struct NewBuild {
    pub build_id: String,
    pub runner_version: String,
    pub built_at: Millis,
    pub runtime_versions: BTreeMap<String, String>,
    pub metadata_json: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutVerb {
    Advance,
    Pause,
    Resume,
    Cancel,
}

impl RolloutVerb {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Advance => "advance",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Cancel => "cancel",
        }
    }
}

/// Keys of records a change touched, and the events it makes known once durable.
#[derive(Debug, Default)]
pub struct Changes {
    pub versions: BTreeSet<(Provider, String)>,
    pub builds: BTreeSet<String>,
    pub rollouts: BTreeSet<Uuid>,
    pub channels: BTreeSet<Channel>,
    pub org_configs: BTreeSet<String>,
    pub events: Vec<(&'static str, Value)>,
    /// Decisions the server made by itself, for the audit log: (action, target).
    pub audit: Vec<(&'static str, String)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
            && self.builds.is_empty()
            && self.rollouts.is_empty()
            && self.channels.is_empty()
            && self.org_configs.is_empty()
    }
}

/// Health rules of a stage (config `pipeline.*`).
#[derive(Debug, Clone, Copy)]
pub struct HealthRules {
    pub max_failure_rate: f64,
    pub min_sessions: u64,
    pub max_offline_rate: f64,
    pub hold_ms: i64,
    pub auto_advance: bool,
}

/// What the fleet says about the runners of one build right now.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildFleet {
    pub runners: u64,
    pub offline: u64,
}

/// Build ids and versions: 1–128 characters of letters, digits and `. _ + - : ~` (they appear
/// in URLs and logs).
pub fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+-:~".contains(c))
}

/// A runner's place in 0..100, stable for its id: it enters a rollout when this is below the
/// rollout's percentage. Since percentages only grow, a runner never flips back and forth.
pub fn runner_bucket(runner_id: Uuid) -> u8 {
    let digest = Sha256::digest(runner_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % 100) as u8
}

/// The whole pipeline. Small (builds, rollouts, configs): held in memory, persisted per record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PipelineState {
    pub versions: BTreeMap<(Provider, String), VersionRecord>,
    pub builds: BTreeMap<String, BuildRecord>,
    /// Rollout ids are time-ordered: iteration is oldest first.
    pub rollouts: BTreeMap<Uuid, Rollout>,
    pub channels: BTreeMap<Channel, ChannelRecord>,
    pub org_configs: BTreeMap<String, OrgRuntimeConfig>,
}

fn rollout_conflict(message: impl Into<String>) -> DomainError {
    DomainError::conflict(Conflict::InvalidRolloutState, message)
}

fn rollout_event(r: &Rollout, reason: Option<&str>) -> Value {
    let mut data = json!({
        "rolloutId": r.id,
        "buildId": r.target_build_id,
        "previousBuildId": r.previous_build_id,
        "channel": r.channel.as_str(),
        "state": r.state.as_str(),
        "currentStage": r.stage_number(),
        "currentPercentage": r.current_percentage,
    });
    if let (Some(reason), Value::Object(m)) = (reason, &mut data) {
        m.insert("reason".into(), json!(reason));
    }
    data
}

impl PipelineState {
    // ---- versions ---------------------------------------------------------------------------

    /// `POST /providers/{p}/versions`: registers a version, or updates the release facts of one
    /// seen before. Returns whether it is new.
    pub fn register_version(
        &mut self,
        provider: Provider,
        version: &str,
        released_at: Option<Millis>,
        source_url: Option<String>,
        now: Millis,
        changes: &mut Changes,
    ) -> bool {
        let key = (provider, version.to_owned());
        changes.versions.insert(key.clone());
        match self.versions.get_mut(&key) {
            Some(v) => {
                if let Some(at) = released_at {
                    v.released_at = at;
                }
                if source_url.is_some() {
                    v.source_url = source_url;
                }
                false
            }
            None => {
                self.versions.insert(
                    key,
                    VersionRecord {
                        provider,
                        version: version.to_owned(),
                        released_at: released_at.unwrap_or(now),
                        canary_passed: false,
                        canary_passed_at: None,
                        source_url,
                        first_seen_at: now,
                    },
                );
                true
            }
        }
    }

    /// A version reported by a runner: recorded (with `version_discovered`) if new.
    pub fn discover_version(
        &mut self,
        provider: Provider,
        version: &str,
        runner_id: Uuid,
        now: Millis,
        changes: &mut Changes,
    ) {
        if self.versions.contains_key(&(provider, version.to_owned())) {
            return;
        }
        self.register_version(provider, version, None, None, now, changes);
        changes.events.push((
            "version_discovered",
            json!({"providerId": provider.as_str(), "version": version, "runnerId": runner_id}),
        ));
    }

    pub fn set_canary(
        &mut self,
        provider: Provider,
        version: &str,
        passed: bool,
        now: Millis,
        changes: &mut Changes,
    ) -> DomainResult<()> {
        let key = (provider, version.to_owned());
        let v = self
            .versions
            .get_mut(&key)
            .ok_or(DomainError::NotFound(Entity::Version))?;
        if v.canary_passed != passed || (passed && v.canary_passed_at.is_none()) {
            v.canary_passed = passed;
            v.canary_passed_at = passed.then_some(now);
        }
        changes.versions.insert(key);
        Ok(())
    }

    // ---- builds -----------------------------------------------------------------------------

    pub fn register_build(
        &mut self,
        b: NewBuild,
        now: Millis,
        changes: &mut Changes,
    ) -> DomainResult<()> {
        if self.builds.contains_key(&b.build_id) {
            return Err(DomainError::conflict(
                Conflict::BuildAlreadyExists,
                format!("build `{}` is already registered", b.build_id),
            ));
        }
        changes.builds.insert(b.build_id.clone());
        changes.events.push((
            "build_registered",
            json!({"buildId": b.build_id, "runnerVersion": b.runner_version, "runtimeVersions": b.runtime_versions}),
        ));
        self.builds.insert(
            b.build_id.clone(),
            BuildRecord {
                build_id: b.build_id,
                runner_version: b.runner_version,
                built_at: b.built_at,
                status: BuildStatus::Testing,
                recommendation: Recommendation::Acceptable,
                runtime_versions: b.runtime_versions,
                metadata_json: b.metadata_json,
                registered_at: now,
            },
        );
        Ok(())
    }

    fn build(&self, id: &str) -> DomainResult<&BuildRecord> {
        self.builds
            .get(id)
            .ok_or(DomainError::NotFound(Entity::Build))
    }

    pub fn is_known_bad(&self, id: &str) -> bool {
        self.builds
            .get(id)
            .is_some_and(|b| b.status == BuildStatus::KnownBad)
    }

    /// `POST /builds/{id}/status`. `known_bad` is final, and it stops any active rollout of the
    /// build. Returns whether the build just became `known_good` (automation may start a
    /// rollout of it).
    pub fn set_build_status(
        &mut self,
        id: &str,
        status: BuildStatus,
        recommendation: Option<Recommendation>,
        now: Millis,
        changes: &mut Changes,
    ) -> DomainResult<bool> {
        let build = self.build(id)?;
        let was = build.status;
        if was == BuildStatus::KnownBad && status != BuildStatus::KnownBad {
            return Err(DomainError::invalid_state(
                "a known_bad build stays known_bad: register a fixed build instead",
            ));
        }
        if status == BuildStatus::KnownBad
            && recommendation.is_some_and(|r| r != Recommendation::Blocked)
        {
            return Err(DomainError::invalid(
                "recommendation",
                "a known_bad build can only be blocked",
            ));
        }
        if status != BuildStatus::KnownBad && recommendation == Some(Recommendation::Blocked) {
            return Err(DomainError::invalid(
                "recommendation",
                "only a known_bad build is blocked",
            ));
        }
        if status == BuildStatus::KnownBad {
            self.mark_known_bad(id, "build marked known_bad", now, changes);
        }
        if let Some(b) = self.builds.get_mut(id) {
            b.status = status;
            b.recommendation = recommendation.unwrap_or(status.default_recommendation());
        }
        changes.builds.insert(id.to_owned());
        Ok(was != BuildStatus::KnownGood && status == BuildStatus::KnownGood)
    }

    /// Marks a build bad and rolls back every active rollout of it.
    fn mark_known_bad(&mut self, id: &str, reason: &str, now: Millis, changes: &mut Changes) {
        if let Some(b) = self.builds.get_mut(id) {
            b.status = BuildStatus::KnownBad;
            b.recommendation = Recommendation::Blocked;
            changes.builds.insert(id.to_owned());
        }
        let active: Vec<Uuid> = self
            .rollouts
            .values()
            .filter(|r| r.is_active() && r.target_build_id == id)
            .map(|r| r.id)
            .collect();
        for rollout in active {
            self.finish_rollout(
                rollout,
                RolloutState::RolledBack,
                Some(reason),
                now,
                changes,
            );
        }
    }

    // ---- rollouts ---------------------------------------------------------------------------

    pub fn active_rollout(&self, channel: Channel) -> Option<&Rollout> {
        self.channels
            .get(&channel)
            .and_then(|c| c.active_rollout)
            .and_then(|id| self.rollouts.get(&id))
            .filter(|r| r.is_active())
    }

    /// The build a channel runs outside any rollout: its newest completed, not `known_bad`.
    pub fn channel_build(&self, channel: Channel) -> Option<&str> {
        self.channels.get(&channel).and_then(|c| {
            c.history
                .iter()
                .rev()
                .find(|b| !self.is_known_bad(b))
                .map(String::as_str)
        })
    }

    /// What runners of a channel run outside any rollout: its own current build, or for beta
    /// while it has none, stable's.
    pub fn current_build(&self, channel: Channel) -> Option<&str> {
        self.channel_build(channel).or_else(|| {
            (channel == Channel::Beta)
                .then(|| self.channel_build(Channel::Stable))
                .flatten()
        })
    }

    /// A build some rollout was rolled back from and that no channel has completed: runners
    /// must leave it even when their org holds its builds.
    fn withdrawn(&self, build: &str) -> bool {
        let rolled_back = self.rollouts.values().any(|r| {
            r.target_build_id == build
                && matches!(
                    r.state,
                    RolloutState::RolledBack | RolloutState::CanaryFailed
                )
        });
        rolled_back
            && !self
                .channels
                .values()
                .any(|c| c.history.iter().any(|b| b == build))
            && !self
                .rollouts
                .values()
                .any(|r| r.is_active() && r.target_build_id == build)
    }

    /// `POST /rollouts`.
    #[allow(clippy::too_many_arguments)]
    pub fn create_rollout(
        &mut self,
        id: Uuid,
        build_id: &str,
        channel: Channel,
        stages: Option<Vec<u8>>,
        start: bool,
        actor: &str,
        now: Millis,
        changes: &mut Changes,
    ) -> DomainResult<Uuid> {
        if channel == Channel::Pinned {
            return Err(DomainError::invalid(
                "channel",
                "pinned orgs move only when their config changes: roll out on stable or beta",
            ));
        }
        let stages = stages.unwrap_or_else(|| channel.default_stages());
        if let Some(problem) = stage_problem(&stages) {
            return Err(DomainError::invalid("stages", problem));
        }
        let build = self.build(build_id)?;
        if build.status == BuildStatus::KnownBad {
            return Err(DomainError::conflict(
                Conflict::BuildNotEligible,
                format!("build `{build_id}` is known_bad"),
            ));
        }
        if let Some(active) = self.active_rollout(channel) {
            return Err(DomainError::Conflict {
                kind: Conflict::RolloutAlreadyActive,
                message: format!("channel {} already has an active rollout", channel.as_str()),
                details: Some(json!({"rolloutId": active.id})),
            });
        }
        let number = self.rollouts.values().map(|r| r.number).max().unwrap_or(0) + 1;
        let mut rollout = Rollout {
            id,
            number,
            target_build_id: build_id.to_owned(),
            previous_build_id: self.current_build(channel).map(str::to_owned),
            channel,
            state: RolloutState::Pending,
            paused_from: None,
            stages,
            stage_index: None,
            current_percentage: 0,
            started_at: now,
            last_updated_at: now,
            stage_started_at: now,
            error: None,
            counts: StageCounts::default(),
            verdict: None,
            past_verdicts: Vec::new(),
            created_by: actor.to_owned(),
        };
        if start {
            enter_stage(&mut rollout, 0, now);
        }
        self.channels.entry(channel).or_default().active_rollout = Some(id);
        changes.channels.insert(channel);
        changes.rollouts.insert(id);
        self.rollouts.insert(id, rollout);
        if start {
            self.after_stage_entered(id, now, changes);
        }
        Ok(id)
    }

    fn rollout_mut(&mut self, id: Uuid) -> DomainResult<&mut Rollout> {
        self.rollouts
            .get_mut(&id)
            .ok_or(DomainError::NotFound(Entity::Rollout))
    }

    /// `advance`, `pause`, `resume`, `cancel`.
    pub fn apply_verb(
        &mut self,
        id: Uuid,
        verb: RolloutVerb,
        reason: Option<&str>,
        now: Millis,
        changes: &mut Changes,
    ) -> DomainResult<()> {
        let r = self.rollout_mut(id)?;
        let state = r.state;
        if state.is_final() {
            return Err(rollout_conflict(format!(
                "the rollout is {}: it cannot {}",
                state.as_str(),
                verb.as_str()
            )));
        }
        match verb {
            RolloutVerb::Advance => {
                if state == RolloutState::Paused {
                    return Err(rollout_conflict("the rollout is paused: resume it first"));
                }
                let next = r.stage_index.map_or(0, |i| i + 1);
                enter_stage(r, next, now);
                changes.rollouts.insert(id);
                self.after_stage_entered(id, now, changes);
            }
            RolloutVerb::Pause => {
                if state == RolloutState::Paused {
                    return Err(rollout_conflict("the rollout is already paused"));
                }
                r.paused_from = Some(state);
                r.state = RolloutState::Paused;
                r.last_updated_at = now;
                changes.rollouts.insert(id);
                let data = rollout_event(r, None);
                changes.events.push(("rollout_paused", data));
            }
            RolloutVerb::Resume => {
                if state != RolloutState::Paused {
                    return Err(rollout_conflict("only a paused rollout can be resumed"));
                }
                r.state = r.paused_from.take().unwrap_or(RolloutState::Pending);
                r.last_updated_at = now;
                // The hold restarts: what happened while paused was not a normal stage.
                r.stage_started_at = now;
                changes.rollouts.insert(id);
                let data = rollout_event(r, None);
                changes.events.push(("rollout_resumed", data));
            }
            RolloutVerb::Cancel => {
                let reason = reason.unwrap_or("cancelled");
                self.finish_rollout(id, RolloutState::RolledBack, Some(reason), now, changes);
            }
        }
        Ok(())
    }

    /// Events and endings that follow from entering a stage.
    fn after_stage_entered(&mut self, id: Uuid, now: Millis, changes: &mut Changes) {
        let Some(r) = self.rollouts.get(&id) else {
            return;
        };
        let first = r.stage_index == Some(0);
        if r.current_percentage >= 100 {
            self.finish_rollout(id, RolloutState::Completed, None, now, changes);
            return;
        }
        let data = rollout_event(r, None);
        changes.events.push((
            if first {
                "rollout_started"
            } else {
                "rollout_advanced"
            },
            data,
        ));
    }

    /// Ends a rollout: completed (the channel now runs its build), rolled back or failed.
    fn finish_rollout(
        &mut self,
        id: Uuid,
        end: RolloutState,
        reason: Option<&str>,
        now: Millis,
        changes: &mut Changes,
    ) {
        let Some(r) = self.rollouts.get_mut(&id).filter(|r| r.is_active()) else {
            return;
        };
        let started = r.stage_index.is_some();
        r.state = end;
        r.paused_from = None;
        r.last_updated_at = now;
        if end == RolloutState::Completed {
            r.current_percentage = 100;
        }
        if end != RolloutState::Completed {
            r.error = reason.map(str::to_owned);
        }
        let (channel, build) = (r.channel, r.target_build_id.clone());
        let data = rollout_event(r, reason);
        changes.rollouts.insert(id);
        let record = self.channels.entry(channel).or_default();
        if record.active_rollout == Some(id) {
            record.active_rollout = None;
        }
        if end == RolloutState::Completed {
            record.history.retain(|b| *b != build);
            record.history.push(build);
            changes.events.push(("rollout_completed", data));
        } else if started || end == RolloutState::RolledBack {
            changes.events.push(("rollout_cancelled", data));
        }
        changes.channels.insert(channel);
    }

    /// Adds session outcomes counted since the last call to each rollout's current stage.
    pub fn add_counts(
        &mut self,
        counts: &BTreeMap<(Uuid, usize), StageCounts>,
        changes: &mut Changes,
    ) {
        for (&(id, stage), c) in counts {
            if let Some(r) = self.rollouts.get_mut(&id)
                && r.is_active()
                && r.stage_index == Some(stage)
                && !c.is_empty()
            {
                r.counts.add(*c);
                changes.rollouts.insert(id);
            }
        }
    }

    /// Judges every active rollout's current stage: an unhealthy one is stopped and its build
    /// marked `known_bad`; a healthy canary passes; with automation a stage held long enough
    /// advances. Runs with or without automation (`rules.auto_advance`).
    pub fn evaluate(
        &mut self,
        rules: &HealthRules,
        fleet: &dyn Fn(&str, Millis) -> BuildFleet,
        now: Millis,
        changes: &mut Changes,
    ) {
        let active: Vec<Uuid> = self
            .rollouts
            .values()
            .filter(|r| r.is_active() && r.stage_index.is_some())
            .map(|r| r.id)
            .collect();
        for id in active {
            // An earlier verdict in this pass may have ended it (same build on two channels).
            let Some(r) = self.rollouts.get(&id).filter(|r| r.is_active()) else {
                continue;
            };
            let build_fleet = fleet(&r.target_build_id, r.stage_started_at);
            let verdict = judge(r, rules, build_fleet, now);
            let outcome = verdict.outcome;
            let reason = verdict.reason.clone();
            let held = now - r.stage_started_at >= rules.hold_ms;
            let underlying = r.underlying_state();
            let paused = r.state == RolloutState::Paused;
            let changed_verdict = r.verdict.as_ref().is_none_or(|v| {
                (v.outcome, v.counts, v.new_runners, v.new_runners_offline)
                    != (
                        outcome,
                        verdict.counts,
                        verdict.new_runners,
                        verdict.new_runners_offline,
                    )
            });
            if changed_verdict && let Some(r) = self.rollouts.get_mut(&id) {
                r.verdict = Some(verdict);
                changes.rollouts.insert(id);
            }
            match outcome {
                Outcome::Unhealthy => {
                    let target = self
                        .rollouts
                        .get(&id)
                        .map(|r| r.target_build_id.clone())
                        .unwrap_or_default();
                    if underlying == RolloutState::CanaryTesting {
                        self.finish_rollout(
                            id,
                            RolloutState::CanaryFailed,
                            Some(&reason),
                            now,
                            changes,
                        );
                    } else {
                        self.finish_rollout(
                            id,
                            RolloutState::RolledBack,
                            Some(&reason),
                            now,
                            changes,
                        );
                    }
                    self.mark_known_bad(&target, &reason, now, changes);
                }
                Outcome::Healthy if held && !paused => {
                    if underlying == RolloutState::CanaryTesting
                        && let Some(r) = self.rollouts.get_mut(&id)
                    {
                        r.state = RolloutState::CanaryPassed;
                        r.last_updated_at = now;
                        changes.rollouts.insert(id);
                        let data = rollout_event(r, Some("canary healthy"));
                        changes.events.push(("rollout_advanced", data));
                    }
                    if rules.auto_advance {
                        let _ = self.apply_verb(id, RolloutVerb::Advance, None, now, changes);
                    }
                }
                Outcome::Healthy | Outcome::Insufficient => {}
            }
        }
    }

    // ---- org runtime config -----------------------------------------------------------------

    pub fn org_config(&self, org_id: &str, default_channel: Channel) -> OrgRuntimeConfig {
        self.org_configs
            .get(org_id)
            .cloned()
            .unwrap_or_else(|| OrgRuntimeConfig::default_for(org_id, default_channel))
    }

    pub fn put_org_config(
        &mut self,
        mut config: OrgRuntimeConfig,
        now: Millis,
        changes: &mut Changes,
    ) -> DomainResult<()> {
        if config.channel == Channel::Pinned {
            let id = config.pinned_build_id.as_deref().ok_or_else(|| {
                DomainError::invalid("pinnedBuildId", "is required for channel pinned")
            })?;
            if self.build(id)?.status == BuildStatus::KnownBad {
                return Err(DomainError::conflict(
                    Conflict::BuildNotEligible,
                    format!("build `{id}` is known_bad"),
                ));
            }
        } else if config.pinned_build_id.is_some() {
            return Err(DomainError::invalid(
                "pinnedBuildId",
                "only channel pinned takes a pinned build",
            ));
        }
        config.updated_at = Some(now);
        changes.org_configs.insert(config.org_id.clone());
        self.org_configs.insert(config.org_id.clone(), config);
        Ok(())
    }

    // ---- what a runner should run -----------------------------------------------------------

    /// The channel an org follows (shared runners: `default_channel`).
    pub fn effective_channel(&self, org_id: Option<&str>, default_channel: Channel) -> Channel {
        match org_id.and_then(|o| self.org_configs.get(o)) {
            None => default_channel,
            Some(c) if c.channel == Channel::Stable && c.beta_opt_in => Channel::Beta,
            Some(c) => c.channel,
        }
    }

    /// The build on `channel` for a runner: the rollout's target when the runner's bucket is
    /// inside it, else the channel's current build. Beta falls back to stable while it has
    /// nothing of its own.
    fn channel_build_for(&self, channel: Channel, runner_id: Uuid) -> Option<&str> {
        if let Some(r) = self.active_rollout(channel)
            && runner_bucket(runner_id) < r.current_percentage
            && !self.is_known_bad(&r.target_build_id)
        {
            return Some(&r.target_build_id);
        }
        if let Some(b) = self.channel_build(channel) {
            return Some(b);
        }
        if channel == Channel::Beta {
            return self.channel_build_for(Channel::Stable, runner_id);
        }
        None
    }

    /// The heartbeat's `desiredBuild`: never a `known_bad` build.
    pub fn desired_build(
        &self,
        org_id: Option<&str>,
        runner_id: Uuid,
        reported_build: Option<&str>,
        default_channel: Channel,
    ) -> Option<&BuildRecord> {
        let config = org_id.and_then(|o| self.org_configs.get(o));
        let channel = self.effective_channel(org_id, default_channel);
        let usable = |id: &str| {
            self.builds
                .get(id)
                .filter(|b| b.status != BuildStatus::KnownBad)
        };
        if channel == Channel::Pinned {
            // A pin to a build that went bad no longer holds: the org follows the default.
            if let Some(b) = config
                .and_then(|c| c.pinned_build_id.as_deref())
                .and_then(usable)
            {
                return Some(b);
            }
            return self
                .channel_build_for(default_channel, runner_id)
                .and_then(usable);
        }
        if config.is_some_and(|c| !c.auto_upgrade) {
            // Held: stay on what it runs, unless that is bad or was rolled back.
            if let Some(b) = reported_build
                .filter(|b| !self.withdrawn(b))
                .and_then(usable)
            {
                return Some(b);
            }
            return self.current_build(channel).and_then(usable);
        }
        self.channel_build_for(channel, runner_id).and_then(usable)
    }
}

fn enter_stage(r: &mut Rollout, index: usize, now: Millis) {
    let index = index.min(r.stages.len().saturating_sub(1));
    r.stage_index = Some(index);
    r.current_percentage = r.current_percentage.max(r.stages[index]);
    r.state = if index == 0 {
        RolloutState::CanaryTesting
    } else {
        RolloutState::RollingOut
    };
    r.last_updated_at = now;
    r.stage_started_at = now;
    r.counts = StageCounts::default();
    if let Some(v) = r.verdict.take() {
        r.past_verdicts.push(v);
    }
}

/// Stages must rise strictly from 1 % to 100 %.
pub fn stage_problem(stages: &[u8]) -> Option<&'static str> {
    if stages.is_empty() || stages.len() > 20 {
        return Some("must list 1 to 20 percentages");
    }
    if stages.iter().any(|&s| s == 0 || s > 100) {
        return Some("percentages must be 1 to 100");
    }
    if stages.windows(2).any(|w| w[0] >= w[1]) {
        return Some("percentages must rise strictly");
    }
    if stages.last() != Some(&100) {
        return Some("the last stage must be 100");
    }
    None
}

fn rate(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn percent(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// Fewer runners of a build than this say nothing about it by going offline (one host being
/// replaced is not a trend).
pub const MIN_RUNNERS_FOR_OFFLINE_VERDICT: u64 = 3;

/// The health of a rollout's current stage.
pub fn judge(r: &Rollout, rules: &HealthRules, fleet: BuildFleet, now: Millis) -> Verdict {
    let c = r.counts;
    let new_rate = rate(c.new_failed, c.new_ended);
    let previous_rate = rate(c.previous_failed, c.previous_ended);
    let previous = if c.previous_ended > 0 {
        format!(
            "; previous build {} of {} sessions",
            percent(previous_rate),
            c.previous_ended
        )
    } else {
        String::new()
    };
    let offline_rate = rate(fleet.offline, fleet.runners);
    let failing = c.new_ended >= rules.min_sessions && new_rate > rules.max_failure_rate;
    // Failures the previous build shows just as much are not the new build's doing (a
    // provider outage, say): they hold the stage instead of condemning the build.
    let previous_as_bad =
        c.previous_ended >= rules.min_sessions.max(1) && previous_rate >= new_rate;
    let failure = format!(
        "failure rate {} of {} sessions on build {} exceeds {}{previous}",
        percent(new_rate),
        c.new_ended,
        r.target_build_id,
        percent(rules.max_failure_rate)
    );
    let (outcome, reason) = if failing && !previous_as_bad {
        (Outcome::Unhealthy, failure)
    } else if fleet.runners >= MIN_RUNNERS_FOR_OFFLINE_VERDICT
        && offline_rate > rules.max_offline_rate
    {
        (
            Outcome::Unhealthy,
            format!(
                "{} of {} runners on build {} are offline ({}), above {}",
                fleet.offline,
                fleet.runners,
                r.target_build_id,
                percent(offline_rate),
                percent(rules.max_offline_rate)
            ),
        )
    } else if failing {
        (
            Outcome::Insufficient,
            format!("{failure}, but the previous build fails as often: holding"),
        )
    } else if c.new_ended < rules.min_sessions {
        (
            Outcome::Insufficient,
            format!(
                "{} of the {} sessions needed for a verdict have ended on build {}",
                c.new_ended, rules.min_sessions, r.target_build_id
            ),
        )
    } else {
        (
            Outcome::Healthy,
            format!(
                "failure rate {} of {} sessions on build {}{previous}",
                percent(new_rate),
                c.new_ended,
                r.target_build_id
            ),
        )
    };
    Verdict {
        at: now,
        outcome,
        reason,
        stage_percentage: r.current_percentage,
        counts: c,
        new_runners: fleet.runners,
        new_runners_offline: fleet.offline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BUILDS: usize = 4;
    const ORGS: [&str; 3] = ["acme", "beta-org", "held"];

    fn build_id(i: usize) -> String {
        format!("b{i}")
    }

    /// One API call (or a tick of the health judge) against the pipeline.
    #[derive(Debug, Clone)]
    enum Op {
        RegisterBuild(usize),
        SetStatus(usize, BuildStatus),
        CreateRollout {
            build: usize,
            beta: bool,
            start: bool,
            custom: bool,
        },
        Verb(usize, RolloutVerb),
        Judge {
            ended: u64,
            failed: u64,
            runners: u64,
            offline: u64,
            wait: i64,
            auto: bool,
        },
        PutConfig {
            org: usize,
            channel: Channel,
            build: usize,
            beta_opt_in: bool,
            auto_upgrade: bool,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let status = prop_oneof![
            Just(BuildStatus::Testing),
            Just(BuildStatus::KnownGood),
            Just(BuildStatus::KnownBad),
            Just(BuildStatus::Deprecated),
        ];
        let verb = prop_oneof![
            Just(RolloutVerb::Advance),
            Just(RolloutVerb::Pause),
            Just(RolloutVerb::Resume),
            Just(RolloutVerb::Cancel),
        ];
        let channel = prop_oneof![
            Just(Channel::Stable),
            Just(Channel::Beta),
            Just(Channel::Pinned)
        ];
        prop_oneof![
            (0..BUILDS).prop_map(Op::RegisterBuild),
            (0..BUILDS, status).prop_map(|(b, s)| Op::SetStatus(b, s)),
            (0..BUILDS, any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
                |(build, beta, start, custom)| Op::CreateRollout {
                    build,
                    beta,
                    start,
                    custom
                }
            ),
            (0..8usize, verb.clone()).prop_map(|(r, v)| Op::Verb(r, v)),
            (0..8usize, verb).prop_map(|(r, v)| Op::Verb(r, v)),
            // Mostly healthy stages, so automation's advance path runs too.
            (
                0..30u64,
                prop_oneof![3 => Just(0u64), 1 => 0..30u64],
                0..5u64,
                prop_oneof![3 => Just(0u64), 1 => 0..5u64],
                0..120_000i64,
                any::<bool>()
            )
                .prop_map(|(ended, failed, runners, offline, wait, auto)| Op::Judge {
                    ended,
                    failed: failed.min(ended),
                    runners,
                    offline: offline.min(runners),
                    wait,
                    auto
                }),
            (
                0..ORGS.len(),
                channel,
                0..BUILDS,
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(|(org, channel, build, beta_opt_in, auto_upgrade)| {
                    Op::PutConfig {
                        org,
                        channel,
                        build,
                        beta_opt_in,
                        auto_upgrade,
                    }
                }),
        ]
    }

    fn apply(s: &mut PipelineState, op: &Op, now: &mut Millis, seq: &mut u128) {
        let mut c = Changes::default();
        match op {
            Op::RegisterBuild(i) => {
                let _ = s.register_build(
                    NewBuild {
                        build_id: build_id(*i),
                        runner_version: format!("1.{i}"),
                        built_at: *now,
                        runtime_versions: BTreeMap::new(),
                        metadata_json: None,
                    },
                    *now,
                    &mut c,
                );
            }
            Op::SetStatus(i, st) => {
                let _ = s.set_build_status(&build_id(*i), *st, None, *now, &mut c);
            }
            Op::CreateRollout {
                build,
                beta,
                start,
                custom,
            } => {
                *seq += 1;
                let channel = if *beta {
                    Channel::Beta
                } else {
                    Channel::Stable
                };
                let stages = custom.then(|| vec![5, 100]);
                let _ = s.create_rollout(
                    Uuid::from_u128(*seq),
                    &build_id(*build),
                    channel,
                    stages,
                    *start,
                    "test",
                    *now,
                    &mut c,
                );
            }
            Op::Verb(i, verb) => {
                if let Some(id) = s.rollouts.keys().nth(*i).copied() {
                    let _ = s.apply_verb(id, *verb, Some("why"), *now, &mut c);
                }
            }
            Op::Judge {
                ended,
                failed,
                runners,
                offline,
                wait,
                auto,
            } => {
                *now += wait;
                let counts: BTreeMap<(Uuid, usize), StageCounts> = s
                    .rollouts
                    .values()
                    .filter_map(|r| r.stage_index.map(|st| (r.id, st)))
                    .map(|k| {
                        (
                            k,
                            StageCounts {
                                new_ended: *ended,
                                new_failed: *failed,
                                previous_ended: *ended,
                                previous_failed: 0,
                            },
                        )
                    })
                    .collect();
                s.add_counts(&counts, &mut c);
                let rules = HealthRules {
                    max_failure_rate: 0.1,
                    min_sessions: 5,
                    max_offline_rate: 0.15,
                    hold_ms: 60_000,
                    auto_advance: *auto,
                };
                let fleet = |_: &str, _: Millis| BuildFleet {
                    runners: *runners,
                    offline: *offline,
                };
                s.evaluate(&rules, &fleet, *now, &mut c);
            }
            Op::PutConfig {
                org,
                channel,
                build,
                beta_opt_in,
                auto_upgrade,
            } => {
                let _ = s.put_org_config(
                    OrgRuntimeConfig {
                        org_id: ORGS[*org].to_owned(),
                        channel: *channel,
                        beta_opt_in: *beta_opt_in,
                        auto_upgrade: *auto_upgrade,
                        pinned_build_id: (*channel == Channel::Pinned).then(|| build_id(*build)),
                        updated_at: None,
                    },
                    *now,
                    &mut c,
                );
            }
        }
        *now += 1;
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn no_sequence_of_calls_breaks_the_rollout_invariants(ops in proptest::collection::vec(op(), 1..60)) {
            let mut s = PipelineState::default();
            let mut now: Millis = 1_000_000;
            let mut seq = 0u128;
            let runners: Vec<Uuid> = (0..64u128).map(|i| Uuid::from_u128(i * 7919 + 1)).collect();
            let mut percentages: BTreeMap<Uuid, u8> = BTreeMap::new();
            // Shared runners following each channel that hold a rollout's target, per rollout.
            let mut exposure: BTreeMap<Uuid, BTreeSet<Uuid>> = BTreeMap::new();
            for op in &ops {
                let was_active: BTreeSet<Uuid> =
                    s.rollouts.values().filter(|r| r.is_active()).map(|r| r.id).collect();
                apply(&mut s, op, &mut now, &mut seq);

                // 4. While a rollout is active, the runners on its target only grow (nobody
                //    flips back); once cancelled or failed, every runner has left it.
                for r in s.rollouts.values() {
                    let on_target: BTreeSet<Uuid> = runners
                        .iter()
                        .filter(|id| {
                            s.desired_build(None, **id, None, r.channel)
                                .is_some_and(|b| b.build_id == r.target_build_id)
                        })
                        .copied()
                        .collect();
                    if r.is_active() {
                        // Those this rollout put there (beta runners may also follow stable's).
                        let mine: BTreeSet<Uuid> = on_target
                            .iter()
                            .filter(|id| runner_bucket(**id) < r.current_percentage)
                            .copied()
                            .collect();
                        let before = exposure.insert(r.id, mine.clone()).unwrap_or_default();
                        let on_target = mine;
                        prop_assert!(before.is_subset(&on_target), "runners left active rollout {} after {op:?}", r.id);
                    } else if was_active.contains(&r.id)
                        && matches!(r.state, RolloutState::RolledBack | RolloutState::CanaryFailed)
                        // (unless another channel is still rolling the same build out)
                        && !s.rollouts.values().any(|o| o.is_active() && o.target_build_id == r.target_build_id)
                        // (or the channel already ran that build before: then it stays)
                        && s.current_build(r.channel) != Some(r.target_build_id.as_str())
                    {
                        prop_assert!(on_target.is_empty(), "{} runners still on cancelled {} after {op:?}", on_target.len(), r.target_build_id);
                        // Stable runners are all back on the channel's build (beta ones may
                        // follow a stable rollout while beta has nothing of its own).
                        let back = s.current_build(r.channel).filter(|b| !s.is_known_bad(b));
                        for id in runners.iter().filter(|_| r.channel == Channel::Stable) {
                            let got = s.desired_build(None, *id, None, r.channel).map(|b| b.build_id.as_str());
                            prop_assert_eq!(got, back, "not back on the previous build after {:?}", op);
                        }
                    }
                }

                // 1. At most one active rollout per channel, and the channel points at it.
                for channel in [Channel::Stable, Channel::Beta, Channel::Pinned] {
                    let active: Vec<&Rollout> =
                        s.rollouts.values().filter(|r| r.channel == channel && r.is_active()).collect();
                    prop_assert!(active.len() <= 1, "two active rollouts on {channel:?}: {op:?}");
                    if let Some(r) = active.first() {
                        prop_assert_eq!(s.channels.get(&channel).and_then(|c| c.active_rollout), Some(r.id));
                    }
                }
                prop_assert!(s.rollouts.values().all(|r| r.channel != Channel::Pinned));

                // 2. Nobody is told to run a known_bad build.
                for (i, runner) in runners.iter().enumerate() {
                    for org in [None, Some(ORGS[i % 3])] {
                        for reported in [None, Some("b0"), Some("b1"), Some("b2")] {
                            for default in [Channel::Stable, Channel::Beta] {
                                if let Some(b) = s.desired_build(org, *runner, reported, default) {
                                    prop_assert!(b.status != BuildStatus::KnownBad, "told to run {} after {op:?}", b.build_id);
                                }
                            }
                        }
                    }
                }
                // No active rollout targets a known_bad build.
                prop_assert!(s.rollouts.values().filter(|r| r.is_active()).all(|r| !s.is_known_bad(&r.target_build_id)));

                // 3. Percentages never go down; exposure ends only by cancel/failure/completion.
                for r in s.rollouts.values() {
                    let before = percentages.insert(r.id, r.current_percentage).unwrap_or(0);
                    prop_assert!(r.current_percentage >= before, "{} went from {before} to {}", r.id, r.current_percentage);
                    prop_assert!(r.stages.contains(&r.current_percentage) || r.current_percentage == 0);
                    if r.state == RolloutState::Completed {
                        prop_assert_eq!(r.current_percentage, 100);
                    }
                    if r.state == RolloutState::Paused {
                        prop_assert!(r.paused_from.is_some_and(|p| !p.is_final() && p != RolloutState::Paused));
                    }
                }
            }
        }
    }

    fn state_with_builds() -> (PipelineState, Changes) {
        let mut s = PipelineState::default();
        let mut c = Changes::default();
        for i in 0..3 {
            s.register_build(
                NewBuild {
                    build_id: build_id(i),
                    runner_version: "1".into(),
                    built_at: 0,
                    runtime_versions: BTreeMap::new(),
                    metadata_json: None,
                },
                0,
                &mut c,
            )
            .unwrap();
        }
        (s, c)
    }

    #[test]
    fn buckets_spread_runners_evenly_and_stay_put() {
        let ids: Vec<Uuid> = (0..10_000u128)
            .map(|i| Uuid::from_u128(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
            .collect();
        let under = |p: u8| ids.iter().filter(|id| runner_bucket(**id) < p).count();
        assert!((60..=140).contains(&under(1)), "{}", under(1));
        assert!((900..=1100).contains(&under(10)), "{}", under(10));
        assert!((4800..=5200).contains(&under(50)), "{}", under(50));
        assert_eq!(under(100), 10_000);
        assert_eq!(runner_bucket(ids[7]), runner_bucket(ids[7]));
    }

    #[test]
    fn a_paused_rollout_resumes_where_it_was_and_refuses_advance() {
        let (mut s, mut c) = state_with_builds();
        let id = Uuid::from_u128(1);
        s.create_rollout(id, "b1", Channel::Stable, None, false, "t", 0, &mut c)
            .unwrap();
        assert_eq!(s.rollouts[&id].state, RolloutState::Pending);
        s.apply_verb(id, RolloutVerb::Pause, None, 1, &mut c)
            .unwrap();
        assert!(
            s.apply_verb(id, RolloutVerb::Advance, None, 2, &mut c)
                .is_err()
        );
        s.apply_verb(id, RolloutVerb::Resume, None, 3, &mut c)
            .unwrap();
        assert_eq!(s.rollouts[&id].state, RolloutState::Pending);
        s.apply_verb(id, RolloutVerb::Advance, None, 4, &mut c)
            .unwrap();
        assert_eq!(s.rollouts[&id].state, RolloutState::CanaryTesting);
        assert_eq!(s.rollouts[&id].current_percentage, 1);
    }

    #[test]
    fn a_bad_canary_fails_and_marks_the_build_bad_even_without_automation() {
        let (mut s, mut c) = state_with_builds();
        let id = Uuid::from_u128(1);
        s.create_rollout(id, "b1", Channel::Stable, None, true, "t", 0, &mut c)
            .unwrap();
        let mut counts = BTreeMap::new();
        counts.insert(
            (id, 0),
            StageCounts {
                new_ended: 20,
                new_failed: 3,
                previous_ended: 40,
                previous_failed: 1,
            },
        );
        s.add_counts(&counts, &mut c);
        let rules = HealthRules {
            max_failure_rate: 0.1,
            min_sessions: 20,
            max_offline_rate: 0.15,
            hold_ms: 60_000,
            auto_advance: false,
        };
        s.evaluate(&rules, &|_, _| BuildFleet::default(), 10, &mut c);
        let r = &s.rollouts[&id];
        assert_eq!(r.state, RolloutState::CanaryFailed);
        assert!(
            r.error.as_deref().is_some_and(|e| e.contains("15.0%")),
            "{:?}",
            r.error
        );
        assert_eq!(
            r.verdict.as_ref().map(|v| v.outcome),
            Some(Outcome::Unhealthy)
        );
        assert!(s.is_known_bad("b1"));
    }
}
