//! Budgets and spend: an org's limits (`GET`/`PUT /orgs/{orgId}/budget`) and what it spent
//! (`GET /orgs/{orgId}/usage`). Spend is added up as usage is reported, inside the session
//! write jobs (`sessions/budget.rs`, which also pauses what reaches a limit), so reading a
//! month never sums sessions, and it stays when sessions are purged.
//!
//! How sessions fared per runner build comes from the event bus: a session that ended on a
//! runner is counted against the build that runner last reported, in batches written a few
//! times a second (like the update pipeline's health counts).

pub mod model;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use crate::audit;
use crate::auth::Principal;
use crate::clock::SharedClock;
use crate::error::DomainResult;
use crate::events::EventBus;
use crate::runners::RunnerService;
use crate::store::Store;
use model::{Budget, BuildOutcomes, Day, Month, UsageTotals, days_of_month, month_of};

/// The largest limit accepted (dollars or tokens).
pub const MAX_LIMIT: f64 = 1.0e12;

/// An org's spend in one month.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageReport {
    pub org_id: String,
    pub month: Month,
    pub totals: UsageTotals,
    pub by_provider: BTreeMap<String, UsageTotals>,
    /// Days with spend, oldest first, each with its split by provider.
    pub by_day: Vec<(Day, UsageTotals, BTreeMap<String, UsageTotals>)>,
    /// By build id.
    pub by_build: Vec<(String, BuildOutcomes)>,
}

/// Session endings counted, not yet written: (org, month, build) → outcomes.
type PendingOutcomes = HashMap<(String, Month, String), BuildOutcomes>;

#[derive(Clone)]
pub struct SpendService {
    store: Store,
    clock: SharedClock,
    pending: Arc<Mutex<PendingOutcomes>>,
}

impl SpendService {
    pub fn new(store: Store, clock: SharedClock) -> Self {
        Self {
            store,
            clock,
            pending: Arc::default(),
        }
    }

    /// Org tokens of that org read; admins read and write.
    fn may_read(p: &Principal, org_id: &str) -> DomainResult<()> {
        p.require_org_member_or_admin(org_id, "budget and spend")
    }

    pub async fn budget(&self, p: &Principal, org_id: &str) -> DomainResult<Budget> {
        Self::may_read(p, org_id)?;
        let org = org_id.to_owned();
        let saved = self.store.read(move |r| r.budget(&org)).await?;
        Ok(saved.unwrap_or_default())
    }

    /// Replaces the org's budget (admin). Raising a limit resumes nothing by itself.
    pub async fn put_budget(
        &self,
        p: &Principal,
        org_id: &str,
        budget: Budget,
    ) -> DomainResult<Budget> {
        p.require_admin()?;
        let (who, org, now) = (p.clone(), org_id.to_owned(), self.clock.now_ms());
        let saved = budget.clone();
        self.store
            .write(move |w| {
                w.put_budget(&org, &saved)?;
                audit::record(w, &who, "budget.update", &org, Some(&org), now)
            })
            .await?;
        Ok(budget)
    }

    /// The org's spend in `month` (the current UTC month when `None`).
    pub async fn usage(
        &self,
        p: &Principal,
        org_id: &str,
        month: Option<Month>,
    ) -> DomainResult<UsageReport> {
        Self::may_read(p, org_id)?;
        let month = month.unwrap_or_else(|| month_of(self.clock.now_ms()));
        let org = org_id.to_owned();
        self.store
            .read(move |r| {
                let (first, end) = days_of_month(month);
                let mut by_provider: BTreeMap<String, UsageTotals> = BTreeMap::new();
                let mut by_day: Vec<(Day, UsageTotals, BTreeMap<String, UsageTotals>)> = Vec::new();
                for (day, provider, t) in r.daily_usage(&org, first, end)? {
                    by_provider.entry(provider.clone()).or_default().add(&t);
                    match by_day.last_mut() {
                        Some((d, total, split)) if *d == day => {
                            total.add(&t);
                            split.insert(provider, t);
                        }
                        _ => by_day.push((day, t.clone(), BTreeMap::from([(provider, t)]))),
                    }
                }
                Ok(UsageReport {
                    totals: r.month_usage(&org, month)?,
                    by_build: r.build_outcomes(&org, month)?,
                    org_id: org,
                    month,
                    by_provider,
                    by_day,
                })
            })
            .await
    }

    /// Counts a session that ended on a runner of `build` (written by `flush`).
    fn count_end(
        &self,
        org_id: &str,
        at: crate::clock::Millis,
        build: &str,
        completed: bool,
        cost: f64,
    ) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending
            .entry((org_id.to_owned(), month_of(at), build.to_owned()))
            .or_default()
            .count(completed, cost);
    }

    /// Writes the counted session endings in one write job.
    pub async fn flush(&self) -> DomainResult<()> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if pending.is_empty() {
            return Ok(());
        }
        self.store
            .write(move |w| {
                for ((org, month, build), o) in &pending {
                    w.merge_build_outcomes(org, *month, build, o)?;
                }
                Ok(())
            })
            .await
    }
}

/// Counts session endings per build from the bus and writes them every 250 ms.
pub async fn run(
    service: SpendService,
    bus: EventBus,
    runners: RunnerService,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut events = bus.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                if let Err(e) = service.flush().await {
                    tracing::error!(error = %e, "writing session outcomes per build failed");
                }
                return;
            }
            _ = tick.tick() => {
                if let Err(e) = service.flush().await {
                    tracing::error!(error = %e, "writing session outcomes per build failed");
                }
            }
            event = events.recv() => match event {
                Ok(e) => {
                    if let (Some((runner, completed, cost)), Some(org)) = (e.event.ended_with_cost(), &e.org_id)
                        && let Some((_, Some(build))) = runners.org_and_build(runner)
                    {
                        service.count_end(org, e.at, &build, completed, cost);
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "spend per build fell behind the event bus; some session outcomes were not counted");
                }
                Err(RecvError::Closed) => return,
            },
        }
    }
}
