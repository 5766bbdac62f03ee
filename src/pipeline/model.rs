//! The pipeline's records and value types: channels, build statuses and recommendations,
//! rollout states, the version, build, rollout, channel and org config records, the inputs of a
//! change ([`NewBuild`], [`RolloutVerb`]) and the [`Changes`] it reports. Plain data and their
//! string forms only (with the health figures a rollout carries): the rules that change them
//! are in `pipeline/rules.rs`, `desired.rs` and `verdicts.rs`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::model::DomainEvent;

use crate::clock::Millis;
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
    pub events: Vec<DomainEvent>,
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

/// The longest build id or version label.
pub const MAX_LABEL_CHARS: usize = 128;

/// Build ids and versions: 1–128 characters of letters, digits and `. _ + - : ~` (they appear
/// in URLs and logs).
pub fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL_CHARS
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+-:~".contains(c))
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
