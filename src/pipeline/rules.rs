//! The state transitions of [`PipelineState`]: registering versions and builds, build
//! statuses (`known_bad` is final and stops the build's rollouts), creating rollouts and moving
//! them (advance, pause, resume, cancel, and how they end), what each channel runs, and org
//! runtime configs. Every method checks its rules first, then mutates the state and notes in
//! [`Changes`] what it touched, so the service persists exactly what the rules decided.

use crate::events::model::{DomainEvent, RolloutEventKind, RolloutSummary};
use uuid::Uuid;

use super::model::*;
use crate::clock::Millis;
use crate::error::{Conflict, ConflictDetails, DomainError, DomainResult, Entity};
use crate::sessions::model::Provider;

fn rollout_conflict(message: impl Into<String>) -> DomainError {
    DomainError::conflict(Conflict::InvalidRolloutState, message)
}

pub(super) fn rollout_event(
    kind: RolloutEventKind,
    r: &Rollout,
    reason: Option<&str>,
) -> DomainEvent {
    DomainEvent::Rollout {
        kind,
        rollout: RolloutSummary {
            rollout_id: r.id,
            build_id: r.target_build_id.clone(),
            previous_build_id: r.previous_build_id.clone(),
            channel: r.channel.as_str(),
            state: r.state.as_str(),
            current_stage: r.stage_number(),
            current_percentage: r.current_percentage,
            reason: reason.map(str::to_owned),
        },
    }
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
        changes.events.push(DomainEvent::VersionDiscovered {
            provider,
            version: version.to_owned(),
            runner_id,
        });
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
        changes.events.push(DomainEvent::BuildRegistered {
            build_id: b.build_id.clone(),
            runner_version: b.runner_version.clone(),
            runtime_versions: b.runtime_versions.clone(),
        });
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
    pub(super) fn mark_known_bad(
        &mut self,
        id: &str,
        reason: &str,
        now: Millis,
        changes: &mut Changes,
    ) {
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
                details: Some(ConflictDetails::ActiveRollout(active.id)),
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
                changes
                    .events
                    .push(rollout_event(RolloutEventKind::Paused, r, None));
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
                changes
                    .events
                    .push(rollout_event(RolloutEventKind::Resumed, r, None));
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
        let kind = if first {
            RolloutEventKind::Started
        } else {
            RolloutEventKind::Advanced
        };
        changes.events.push(rollout_event(kind, r, None));
    }

    /// Ends a rollout: completed (the channel now runs its build), rolled back or failed.
    pub(super) fn finish_rollout(
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
        let event = if end == RolloutState::Completed {
            Some(RolloutEventKind::Completed)
        } else if started || end == RolloutState::RolledBack {
            Some(RolloutEventKind::Cancelled)
        } else {
            None
        }
        .map(|kind| rollout_event(kind, r, reason));
        changes.rollouts.insert(id);
        let record = self.channels.entry(channel).or_default();
        if record.active_rollout == Some(id) {
            record.active_rollout = None;
        }
        if end == RolloutState::Completed {
            record.history.retain(|b| *b != build);
            record.history.push(build);
        }
        changes.events.extend(event);
        changes.channels.insert(channel);
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

/// The most stages a rollout may have (the message below names it).
pub const MAX_STAGES: usize = 20;

/// Stages must rise strictly from 1 % to 100 %.
pub fn stage_problem(stages: &[u8]) -> Option<&'static str> {
    if stages.is_empty() || stages.len() > MAX_STAGES {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::properties::state_with_builds;

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
}
