//! Scheduling: a QUEUED session goes to an online, non-draining, connected runner of its org or
//! shared, that offers its provider and every required feature, has a free slot, and has the
//! lowest utilisation; oldest session first. Event-driven: the task wakes when something that
//! may free or add capacity happens (session created or ended, runner registered, online,
//! undrained, connected), not on a polling interval.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::RunnerService;
use super::model::RunnerRecord;
use crate::error::DomainError;
use crate::sessions::{self, model::Session};
use crate::store::Store;

/// How many sessions one pass assigns at most (the next pass follows at once).
const PASS_SIZE: usize = 256;
/// How far down the queue one pass looks.
const MAX_QUEUE_SCAN: usize = 100_000;

/// Picks the runner for a session, or none. `loads` is sessions held per runner;
/// `shared_orgs` the orgs shared runners may serve (`None`: all).
pub fn choose<'r>(
    session: &Session,
    runners: &'r [RunnerRecord],
    loads: &HashMap<Uuid, u64>,
    shared_orgs: Option<&HashSet<String>>,
) -> Option<&'r RunnerRecord> {
    runners
        .iter()
        .filter(|r| match &r.org_id {
            Some(org) => *org == session.org_id,
            None => shared_orgs.is_none_or(|orgs| orgs.contains(&session.org_id)),
        })
        .filter(|r| r.capabilities.providers.contains(&session.provider))
        .filter(|r| {
            session
                .options
                .required_features
                .iter()
                .all(|f| r.capabilities.features.contains(f))
        })
        .filter(|r| loads.get(&r.id).copied().unwrap_or(0) < r.capabilities.max_concurrent_sessions)
        .min_by(|a, b| {
            let util = |r: &RunnerRecord| {
                loads.get(&r.id).copied().unwrap_or(0) as f64
                    / r.capabilities.max_concurrent_sessions as f64
            };
            util(a)
                .total_cmp(&util(b))
                .then_with(|| (&a.hostname, a.id).cmp(&(&b.hostname, b.id)))
        })
}

/// One pass over the queue. Returns how many sessions were assigned.
pub async fn pass(store: &Store, runners: &RunnerService) -> Result<usize, DomainError> {
    let candidates: Vec<RunnerRecord> = runners.schedulable().into_iter().map(|(r, _)| r).collect();
    if candidates.is_empty() {
        return Ok(0);
    }
    let now = runners.now();
    let ids = runners.ids.clone();
    let shared_orgs = runners.shared_runner_orgs();
    store
        .write(move |w| {
            let mut loads = w.runner_loads()?;
            // The snapshot was taken outside this transaction: drop runners that were drained
            // or deregistered since.
            let mut fresh = Vec::with_capacity(candidates.len());
            for r in candidates {
                if w.get_runner(r.id)?.is_some_and(|now| !now.draining) {
                    fresh.push(r);
                }
            }
            let candidates = fresh;
            let mut assigned = 0;
            // The whole queue, oldest first: sessions no runner can take must not hide the
            // ones behind them.
            for id in w.queued_sessions(MAX_QUEUE_SCAN)? {
                let any_room = candidates.iter().any(|r| {
                    loads.get(&r.id).copied().unwrap_or(0) < r.capabilities.max_concurrent_sessions
                });
                if !any_room || assigned >= PASS_SIZE {
                    break;
                }
                let Some(mut s) = w.get_session(id)? else {
                    continue;
                };
                let Some(runner) = choose(&s, &candidates, &loads, shared_orgs.as_deref()) else {
                    continue;
                };
                let runner_id = runner.id;
                sessions::assign(w, &mut s, runner_id, ids.uuid(), now)?;
                *loads.entry(runner_id).or_default() += 1;
                assigned += 1;
            }
            Ok(assigned)
        })
        .await
}

/// Runs passes whenever woken, until shutdown.
pub async fn run(
    store: Store,
    runners: RunnerService,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let bus = runners.bus.clone();
    loop {
        tokio::select! {
            _ = bus.scheduler_kicked() => {}
            _ = shutdown.changed() => return,
        }
        loop {
            match pass(&store, &runners).await {
                Ok(n) if n >= PASS_SIZE => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(error = %e, "scheduling pass failed");
                    break;
                }
            }
        }
    }
}
