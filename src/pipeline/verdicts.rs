//! Stage health verdicts: the session outcomes counted per stage (`StageCounts`, a record), the
//! health rules ([`HealthRules`]) and what the fleet says about a build ([`BuildFleet`]), the pure
//! [`judge`] of one stage, and [`PipelineState::evaluate`], which acts on the verdicts: an
//! unhealthy stage is stopped and its build marked `known_bad`, a healthy canary passes, and
//! with automation a stage held long enough advances.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::model::*;
use super::rules::rollout_event;
use crate::clock::Millis;
use crate::events::model::RolloutEventKind;

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

impl PipelineState {
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
                        changes.events.push(rollout_event(
                            RolloutEventKind::Advanced,
                            r,
                            Some("canary healthy"),
                        ));
                    }
                    if rules.auto_advance {
                        let _ = self.apply_verb(id, RolloutVerb::Advance, None, now, changes);
                    }
                }
                Outcome::Healthy | Outcome::Insufficient => {}
            }
        }
    }
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
    use crate::pipeline::properties::state_with_builds;

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
