//! Request rate limits (`limits.*` keys in docs/api.md), with `governor`'s GCRA limiters:
//!
//! - per client address, on every `/api` request before authentication (so a flood of bad
//!   tokens is limited too) — generous, since a NAT'd runner host or a proxy is one address;
//! - per token, on every authenticated REST call, in two budgets: runner reports (heartbeats,
//!   output, usage and state, which a busy runner sends many of) and everything else, so a
//!   runner's output never eats into its own or anyone's other calls.
//!
//! Over a limit the answer is 429 `RATE_LIMITED` with `Retry-After` (whole seconds, at least 1).
//! A rate of 0 turns that limit off. Limiters forget idle keys every minute.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use uuid::Uuid;
use warp::http::StatusCode;

use super::error::ApiError;
use crate::config::LimitsConfig;

type OneLock<K> = RateLimiter<K, governor::state::keyed::DefaultKeyedStateStore<K>, DefaultClock>;

/// Limiters a key is spread over by its hash: governor's keyed store is one map behind one
/// mutex, which every request of a busy fleet would take in turn. Each key stays in one shard,
/// so its limit is exactly what one limiter would give it.
const SHARDS: usize = 16;

struct Keyed<K: std::hash::Hash + Eq + Clone> {
    shards: Vec<OneLock<K>>,
}

impl<K: std::hash::Hash + Eq + Clone> Keyed<K> {
    fn shard(&self, key: &K) -> &OneLock<K> {
        use std::hash::BuildHasher;
        // Fixed keys: the spread only has to be even, not secret.
        let hash =
            std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                .hash_one(key);
        &self.shards[(hash as usize) % self.shards.len()]
    }

    fn check_key(
        &self,
        key: &K,
    ) -> Result<(), governor::NotUntil<<DefaultClock as Clock>::Instant>> {
        self.shard(key).check_key(key)
    }

    fn retain_recent(&self) {
        for shard in &self.shards {
            shard.retain_recent();
        }
    }
}

/// What a call is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// Heartbeats, output, usage and state reports.
    RunnerReports,
    Other,
}

pub struct RateLimits {
    per_ip: Option<Keyed<IpAddr>>,
    per_token: Option<Keyed<Uuid>>,
    reports_per_token: Option<Keyed<Uuid>>,
    clock: DefaultClock,
}

/// `per_minute` calls a minute, with bursts of up to `burst`; `None` when off.
fn limiter<K: Clone + std::hash::Hash + Eq>(per_minute: u32, burst: u32) -> Option<Keyed<K>> {
    let rate = NonZeroU32::new(per_minute)?;
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::per_minute(rate).allow_burst(burst);
    Some(Keyed {
        shards: (0..SHARDS).map(|_| RateLimiter::hashmap(quota)).collect(),
    })
}

impl RateLimits {
    pub fn new(config: &LimitsConfig) -> Arc<Self> {
        Arc::new(Self {
            per_ip: limiter(config.per_ip_per_minute, config.per_ip_per_minute / 6),
            per_token: limiter(config.per_token_per_minute, config.per_token_per_minute / 6),
            reports_per_token: limiter(
                config.runner_reports_per_minute,
                config.runner_reports_per_minute / 6,
            ),
            clock: DefaultClock::default(),
        })
    }

    /// A request from `ip`, before anything else is looked at.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), ApiError> {
        match &self.per_ip {
            Some(limiter) => self.verdict(limiter.check_key(&ip), "this address"),
            None => Ok(()),
        }
    }

    /// An authenticated call of `token`.
    pub fn check_token(&self, token: Uuid, budget: Budget) -> Result<(), ApiError> {
        let (limiter, whose) = match budget {
            Budget::RunnerReports => (&self.reports_per_token, "this token's runner reports"),
            Budget::Other => (&self.per_token, "this token"),
        };
        match limiter {
            Some(limiter) => self.verdict(limiter.check_key(&token), whose),
            None => Ok(()),
        }
    }

    fn verdict(
        &self,
        outcome: Result<(), governor::NotUntil<<DefaultClock as Clock>::Instant>>,
        whose: &str,
    ) -> Result<(), ApiError> {
        outcome.map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            rate_limited(wait, whose)
        })
    }

    /// Drops the state of keys that have been quiet long enough to be back at a full burst.
    pub fn forget_idle(&self) {
        for limiter in [&self.per_token, &self.reports_per_token]
            .into_iter()
            .flatten()
        {
            limiter.retain_recent();
        }
        if let Some(limiter) = &self.per_ip {
            limiter.retain_recent();
        }
    }
}

fn rate_limited(wait: Duration, whose: &str) -> ApiError {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let secs = secs.max(1);
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
        format!("Too many requests from {whose}; retry in {secs} s"),
    );
    e.retry_after_secs = std::num::NonZeroU16::new(secs.min(u64::from(u16::MAX)) as u16);
    e
}

/// Forgets idle keys every minute until `stop`.
pub async fn housekeeping(limits: Arc<RateLimits>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = every.tick() => limits.forget_idle(),
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// The budget of a REST call: runner reports are POSTs to a runner's heartbeat or to a
/// session's output, usage or state (with or without a trailing slash, which the routes
/// accept).
pub fn budget_of(method: &warp::http::Method, path: &str) -> Budget {
    let path = path.strip_suffix('/').unwrap_or(path);
    let report = method == warp::http::Method::POST
        && (path.ends_with("/heartbeat")
            || (path.starts_with("/api/v1/sessions/")
                && (path.ends_with("/output")
                    || path.ends_with("/usage")
                    || path.ends_with("/state"))));
    if report {
        Budget::RunnerReports
    } else {
        Budget::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_told_apart_from_other_calls() {
        use warp::http::Method;
        let post = Method::POST;
        for path in [
            "/api/v1/runners/r1/heartbeat",
            "/api/v1/sessions/s1/output",
            "/api/v1/sessions/s1/usage",
            "/api/v1/sessions/s1/state",
            "/api/v1/runners/r1/heartbeat/",
            "/api/v1/sessions/s1/output/",
        ] {
            assert_eq!(budget_of(&post, path), Budget::RunnerReports, "{path}");
        }
        for (method, path) in [
            (Method::GET, "/api/v1/sessions/s1/output"),
            (Method::POST, "/api/v1/sessions"),
            (Method::POST, "/api/v1/sessions/s1/stop"),
            (Method::POST, "/api/v1/sessions/s1/approvals"),
        ] {
            assert_eq!(budget_of(&method, path), Budget::Other, "{method} {path}");
        }
    }

    #[test]
    fn a_burst_then_429_with_a_retry_after_of_whole_seconds() {
        let limits = RateLimits::new(&LimitsConfig {
            per_ip_per_minute: 0,
            per_token_per_minute: 60,
            runner_reports_per_minute: 0,
        });
        let token = Uuid::from_u128(7);
        for _ in 0..10 {
            assert!(limits.check_token(token, Budget::Other).is_ok());
        }
        let refused = limits
            .check_token(token, Budget::Other)
            .expect_err("the burst is 10");
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.code, "RATE_LIMITED");
        assert_eq!(
            refused.retry_after_secs.map(|s| s.get()),
            Some(1),
            "one call a second"
        );
        // Another token has its own budget; reports are not limited here (0 is off).
        assert!(
            limits
                .check_token(Uuid::from_u128(8), Budget::Other)
                .is_ok()
        );
        for _ in 0..100 {
            assert!(limits.check_token(token, Budget::RunnerReports).is_ok());
        }
    }
}
