//! Which build a runner should run (the heartbeat's `desiredBuild`): the channel its org
//! follows (beta opt-in), its stable hashing bucket against the active rollout's percentage, an
//! org's pin, and `autoUpgrade` holding a runner on what it runs. Read-only over
//! [`PipelineState`], so a heartbeat answers from the in-memory snapshot without touching disk.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::model::*;

/// A runner's place in 0..100, stable for its id: it enters a rollout when this is below the
/// rollout's percentage. Since percentages only grow, a runner never flips back and forth.
pub fn runner_bucket(runner_id: Uuid) -> u8 {
    let digest = Sha256::digest(runner_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % 100) as u8
}

impl PipelineState {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
