//! Scheduling: a QUEUED session goes to an online, non-draining, connected runner of its org or
//! shared, that offers its provider and every required feature, has a free slot, and has the
//! lowest utilisation; oldest session first. Event-driven: the task wakes when something that
//! may free or add capacity happens (session created or ended, runner registered, online,
//! undrained, connected), not on a polling interval.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use uuid::Uuid;

use super::model::RunnerRecord;
use super::{PlacementView, RunnerService};
use crate::error::DomainError;
use crate::sessions::{self, model::Session};
use crate::store::{PlacementStep, Store, WriteTxn};

/// How many sessions one pass assigns at most (the next pass follows at once).
const PASS_SIZE: usize = 256;
/// How far down the queue one pass looks.
const MAX_QUEUE_SCAN: usize = 100_000;
/// How far down the queue the placement step looks (it runs in every batch that queues a
/// session, so it must stay cheap when the head of the queue is sessions no runner can take).
const IN_BATCH_SCAN: usize = 256;

/// Whether `runner` may take `session` at all: its org (or shared, for the orgs shared runners
/// serve), the provider and every required feature. `shared_orgs`: `None` is every org.
fn eligible(
    session: &Session,
    runner: &RunnerRecord,
    shared_orgs: Option<&HashSet<String>>,
) -> bool {
    let org_fits = match &runner.org_id {
        Some(org) => *org == session.org_id,
        None => shared_orgs.is_none_or(|orgs| orgs.contains(&session.org_id)),
    };
    org_fits
        && runner.capabilities.providers.contains(&session.provider)
        && session
            .options
            .required_features
            .iter()
            .all(|f| runner.capabilities.features.contains(f))
}

/// A runner's place in an [`EligibleIndex`] heap: ordered by utilisation (sessions held over
/// capacity, compared exactly), then hostname and id, least first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot<'r> {
    load: u64,
    capacity: u64,
    hostname: &'r str,
    id: Uuid,
}

impl Ord for Slot<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // load/capacity against other.load/other.capacity, without rounding.
        (u128::from(self.load) * u128::from(other.capacity))
            .cmp(&(u128::from(other.load) * u128::from(self.capacity)))
            .then_with(|| (self.hostname, self.id).cmp(&(other.hostname, other.id)))
    }
}

impl PartialOrd for Slot<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// What decides which runners may take a session: its org, provider and required features.
type Shape = (String, crate::sessions::model::Provider, Vec<String>);

/// The runners a pass may use, indexed per session shape as a min-heap, so picking a runner
/// for one more session of a burst costs a heap operation, not a scan of the fleet. Entries
/// go stale when a runner takes a session (its load grows): they are refreshed when they reach
/// the top.
struct EligibleIndex<'r> {
    runners: &'r [Arc<RunnerRecord>],
    shared_orgs: Option<&'r HashSet<String>>,
    heaps: HashMap<Shape, BinaryHeap<Reverse<Slot<'r>>>>,
    /// Runners found drained or deregistered since the pass's snapshot.
    excluded: HashSet<Uuid>,
}

impl<'r> EligibleIndex<'r> {
    fn new(runners: &'r [Arc<RunnerRecord>], shared_orgs: Option<&'r HashSet<String>>) -> Self {
        Self {
            runners,
            shared_orgs,
            heaps: HashMap::new(),
            excluded: HashSet::new(),
        }
    }

    /// The least utilised eligible runner with a free slot, as `loads` stands now.
    fn best(&mut self, session: &Session, loads: &HashMap<Uuid, u64>) -> Option<Uuid> {
        let load = |id: &Uuid| loads.get(id).copied().unwrap_or(0);
        let mut features = session.options.required_features.clone();
        features.sort();
        let shape = (session.org_id.clone(), session.provider, features);
        let (runners, shared_orgs) = (self.runners, self.shared_orgs);
        let heap = self.heaps.entry(shape).or_insert_with(|| {
            runners
                .iter()
                .filter(|r| eligible(session, r, shared_orgs))
                .map(|r| {
                    Reverse(Slot {
                        load: load(&r.id),
                        capacity: r.capabilities.max_concurrent_sessions,
                        hostname: &r.hostname,
                        id: r.id,
                    })
                })
                .collect()
        });
        while let Some(Reverse(top)) = heap.peek().copied() {
            let now = load(&top.id);
            if self.excluded.contains(&top.id) || now >= top.capacity {
                heap.pop();
            } else if now != top.load {
                heap.pop();
                heap.push(Reverse(Slot { load: now, ..top }));
            } else {
                return Some(top.id);
            }
        }
        None
    }

    fn exclude(&mut self, runner: Uuid) {
        self.excluded.insert(runner);
    }
}

/// Picks the runner for a session, or none: the least utilised eligible runner with a free
/// slot (the rule [`EligibleIndex`] implements with heaps; kept as the tests' reference).
#[cfg(test)]
fn choose<'r>(
    session: &Session,
    runners: &'r [RunnerRecord],
    loads: &HashMap<Uuid, u64>,
    shared_orgs: Option<&HashSet<String>>,
) -> Option<&'r RunnerRecord> {
    let load = |r: &RunnerRecord| loads.get(&r.id).copied().unwrap_or(0);
    runners
        .iter()
        .filter(|r| eligible(session, r, shared_orgs))
        .filter(|r| load(r) < r.capabilities.max_concurrent_sessions)
        .min_by(|a, b| {
            let util =
                |r: &RunnerRecord| load(r) as f64 / r.capabilities.max_concurrent_sessions as f64;
            util(a)
                .total_cmp(&util(b))
                .then_with(|| (&a.hostname, a.id).cmp(&(&b.hostname, b.id)))
        })
}

/// What one pass assigns from: the runners that may take work, as the fleet stood when the pass
/// began (each is checked against the store when first picked), and the pass's clock and ids.
struct Plan {
    candidates: Vec<Arc<RunnerRecord>>,
    /// Each candidate's place in `candidates`, by runner id.
    by_id: HashMap<Uuid, usize>,
    view: PlacementView,
}

impl Plan {
    /// `None` when no runner can take work (nothing to do).
    fn of(view: &PlacementView) -> Option<Plan> {
        let candidates: Vec<Arc<RunnerRecord>> =
            view.schedulable().into_iter().map(|(r, _)| r).collect();
        (!candidates.is_empty()).then(|| Plan {
            by_id: candidates
                .iter()
                .enumerate()
                .map(|(i, r)| (r.id, i))
                .collect(),
            candidates,
            view: view.clone(),
        })
    }

    /// Assigns queued sessions, oldest first, looking at most `scan` sessions down the queue.
    /// Returns how many were assigned.
    fn assign_queued(&self, w: &mut dyn WriteTxn, scan: usize) -> Result<Placed, DomainError> {
        let queue = w.queued_sessions(scan)?;
        let mut placed = Placed {
            assigned: 0,
            // Sessions past the scan, or past one pass's worth, are for another pass.
            more: queue.len() >= scan,
        };
        if queue.is_empty() {
            return Ok(placed);
        }
        let mut loads = w.active_loads()?;
        let mut free: u64 = self
            .candidates
            .iter()
            .map(|r| {
                let held = loads.get(&r.id).copied().unwrap_or(0);
                r.capabilities.max_concurrent_sessions.saturating_sub(held)
            })
            .sum();
        if free == 0 {
            return Ok(placed);
        }
        let shared_orgs = self.view.shared_runner_orgs();
        let now = self.view.now();
        let mut index = EligibleIndex::new(&self.candidates, shared_orgs.as_deref());
        // The candidates were read outside this transaction: a runner is checked against the
        // store the first time it is picked. Drained or deregistered since, it is passed over;
        // so is one re-registered with other capabilities (fewer slots, a feature gone) that
        // the fleet in memory has not caught up with yet: its registration's event starts
        // another pass once it has.
        let mut checked: HashMap<Uuid, bool> = HashMap::new();
        // The queue, oldest first: sessions no runner can take must not hide the ones behind
        // them.
        for id in queue {
            if free == 0 {
                break;
            }
            if placed.assigned >= PASS_SIZE {
                placed.more = true;
                break;
            }
            let Some(mut s) = w.get_session(id)? else {
                continue;
            };
            let runner_id = loop {
                let Some(runner) = index.best(&s, &loads) else {
                    break None;
                };
                let usable = match checked.get(&runner) {
                    Some(usable) => *usable,
                    None => {
                        let usable = w.get_runner(runner)?.is_some_and(|stored| {
                            !stored.draining && self.placed_as_stored(&stored)
                        });
                        checked.insert(runner, usable);
                        usable
                    }
                };
                if usable {
                    break Some(runner);
                }
                index.exclude(runner);
            };
            let Some(runner_id) = runner_id else {
                continue;
            };
            sessions::assign(w, &mut s, runner_id, self.view.ids().uuid(), now)?;
            *loads.entry(runner_id).or_default() += 1;
            free = free.saturating_sub(1);
            placed.assigned += 1;
        }
        Ok(placed)
    }
}

impl Plan {
    /// Whether the pass picked runner `stored.id` on what the store holds now: the same org
    /// and capabilities as its candidate.
    fn placed_as_stored(&self, stored: &RunnerRecord) -> bool {
        self.by_id
            .get(&stored.id)
            .and_then(|&i| self.candidates.get(i))
            .is_some_and(|c| c.org_id == stored.org_id && c.capabilities == stored.capabilities)
    }
}

/// What a pass did.
struct Placed {
    assigned: usize,
    /// It stopped before the end of the queue: another pass may assign more.
    more: bool,
}

/// One pass over the whole queue in a write job of its own. Returns how many sessions were
/// assigned.
pub async fn pass(store: &Store, runners: &RunnerService) -> Result<usize, DomainError> {
    let Some(plan) = Plan::of(&runners.placement_view()) else {
        return Ok(0);
    };
    let placed = store
        .write(move |w| plan.assign_queued(w, MAX_QUEUE_SCAN))
        .await?;
    Ok(placed.assigned)
}

/// The store's placement step (`Store::set_placement`): at the end of a write batch that queued
/// a session, a pass over the head of the queue in the same transaction. A session that a
/// runner can take is then assigned in the commit that queued it, and its `assign_session`
/// reaches the runner as its creator hears `201`, instead of one commit later (which, with the
/// writer busy in a burst of creates, was most of a session's wait). So a session created or
/// requeued does not wake the scheduler task; the step wakes it when it leaves sessions it did
/// not look at (a queue longer than `IN_BATCH_SCAN`, more than a pass) or fails.
pub fn placement_step(view: PlacementView) -> PlacementStep {
    Box::new(move |w: &mut dyn WriteTxn| {
        let Some(plan) = Plan::of(&view) else {
            // No runner can take work: one that connects wakes the scheduler.
            return Ok(());
        };
        match plan.assign_queued(w, IN_BATCH_SCAN) {
            Ok(placed) if !placed.more => Ok(()),
            Ok(_) => {
                view.kick_scheduler();
                Ok(())
            }
            Err(e) => {
                view.kick_scheduler();
                Err(e.into())
            }
        }
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runners::model::Capabilities;
    use crate::sessions::model::{Provider, Repo, SessionOptions, SessionState, Usage};
    use proptest::prelude::*;

    const ORGS: [&str; 3] = ["a", "b", "c"];
    const FEATURES: [&str; 2] = ["gpu", "big"];

    fn picks<T: Copy>(all: &[T], mask: u8) -> Vec<T> {
        (0..all.len())
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| all[i])
            .collect()
    }

    fn runner(
        i: usize,
        org: u8,
        providers: u8,
        features: u8,
        capacity: u64,
        host: u8,
    ) -> RunnerRecord {
        RunnerRecord {
            id: Uuid::from_u128(i as u128 + 1),
            hostname: format!("host-{host}"),
            org_id: ORGS.get(usize::from(org)).map(|o| o.to_string()),
            capabilities: Capabilities {
                providers: picks(&Provider::ALL, providers),
                max_concurrent_sessions: capacity,
                features: picks(&FEATURES, features)
                    .into_iter()
                    .map(String::from)
                    .collect(),
            },
            metadata_json: None,
            registered_at: 0,
            token_id: Uuid::nil(),
            draining: false,
            drained_at: None,
            revision: 0,
        }
    }

    fn session(org: u8, provider: u8, features: u8) -> Session {
        Session {
            id: Uuid::nil(),
            org_id: ORGS[usize::from(org) % ORGS.len()].to_string(),
            provider: Provider::ALL[usize::from(provider) % Provider::ALL.len()],
            repo: Repo {
                url: String::new(),
                branch: String::new(),
                commit: String::new(),
            },
            task: None,
            options: SessionOptions {
                timeout_minutes: None,
                env: Default::default(),
                dangerously_skip_permissions: false,
                required_features: picks(&FEATURES, features)
                    .into_iter()
                    .map(String::from)
                    .collect(),
            },
            state: SessionState::Queued,
            created_at: 0,
            started_running_at: None,
            completed_at: None,
            end_reason: None,
            error: None,
            runner_id: None,
            assignment_id: None,
            assigned_at: None,
            runner_history: Vec::new(),
            usage: Usage::default(),
            timeout_ms: 0,
            output_bytes: 0,
            workspace_size_bytes: None,
            updated_at: 0,
        }
    }

    proptest! {
        /// The index picks, session after session, exactly the runner the plain rule picks
        /// (least utilised eligible runner with room; hostname and id break ties), loads
        /// growing as sessions are placed; excluded runners are never picked.
        #[test]
        fn the_index_picks_what_the_rule_picks(
            fleet in prop::collection::vec((0u8..4, 1u8..16, 0u8..4, 1u64..4, 0u8..3, 0u64..3), 1..25),
            queue in prop::collection::vec((0u8..3, 0u8..4, 0u8..4), 1..80),
            shared_only_a in any::<bool>(),
            excluded in prop::collection::vec(0usize..25, 0..3),
        ) {
            let runners: Vec<Arc<RunnerRecord>> = fleet
                .iter()
                .enumerate()
                .map(|(i, &(org, providers, features, capacity, host, _))| {
                    Arc::new(runner(i, org, providers, features, capacity, host))
                })
                .collect();
            let mut loads: HashMap<Uuid, u64> = fleet
                .iter()
                .enumerate()
                .map(|(i, f)| (runners[i].id, f.5))
                .collect();
            let shared: HashSet<String> = ["a".to_string()].into();
            let shared_orgs = shared_only_a.then_some(&shared);
            let excluded: HashSet<Uuid> = excluded
                .iter()
                .filter_map(|i| runners.get(*i).map(|r| r.id))
                .collect();
            let allowed: Vec<RunnerRecord> = runners
                .iter()
                .filter(|r| !excluded.contains(&r.id))
                .map(|r| RunnerRecord::clone(r))
                .collect();
            let mut index = EligibleIndex::new(&runners, shared_orgs);
            for id in &excluded {
                index.exclude(*id);
            }
            for &(org, provider, features) in &queue {
                let s = session(org, provider, features);
                let expected = choose(&s, &allowed, &loads, shared_orgs).map(|r| r.id);
                let got = index.best(&s, &loads);
                prop_assert_eq!(got, expected);
                if let Some(id) = got {
                    *loads.entry(id).or_default() += 1;
                }
            }
        }
    }
}
