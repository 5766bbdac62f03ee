//! The internal event bus. Domain code records events inside its write transaction; the store
//! publishes them here only after the transaction is durable, in commit order. The WebSocket
//! stream, webhooks and the dashboard consume them.
//!
//! Two things ride beside the broadcast because they must never be lost to a lagging reader:
//! runner commands go straight to the connected runner's channel, and events that may let a
//! queued session run wake the scheduler.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::{Notify, broadcast};
use uuid::Uuid;

use crate::runners::model::OutboxEntry;

pub mod model;
pub mod render;
pub use model::{BusEvent, DomainEvent, FLEET_EVENTS, SESSION_EVENTS, is_public};

/// Events after which a queued session may find a runner.
const SCHEDULING_EVENTS: &[&str] = &[
    // A session created or requeued is placed in the commit that queued it (the store's
    // placement step, `runners::scheduler::placement_step`), which wakes the scheduler itself
    // when it leaves work for a whole pass.
    "session_completed",
    "session_failed",
    "runner_registered",
    "runner_online",
    "runner_undrained",
];

/// A connected runner's channel, as the bus hands it each command once it is committed (in
/// commit order, from the store's delivery task: it must not block).
pub trait RunnerLink: Send + Sync {
    fn command(&self, entry: OutboxEntry);
    /// A newer connection of the same runner took this one's place: it gets no more commands
    /// and closes, so that commands never go to a connection the bus no longer knows about.
    fn replaced(&self);
}

/// Where a connected runner's channel receives its new commands.
pub type CommandSender = Arc<dyn RunnerLink>;

/// Sees every event as it is published, before any subscriber (`/metrics` counts them).
pub type Observer = Arc<dyn Fn(&BusEvent) + Send + Sync>;

#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<BusEvent>>,
    channels: Arc<RwLock<HashMap<Uuid, (u64, CommandSender)>>>,
    scheduler: Arc<Notify>,
    /// A wake-up is already pending: a burst of events wakes the scheduler once.
    scheduler_pending: Arc<AtomicBool>,
    observer: Arc<std::sync::OnceLock<Observer>>,
}

impl EventBus {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity);
        Self {
            tx,
            channels: Arc::default(),
            scheduler: Arc::new(Notify::new()),
            scheduler_pending: Arc::new(AtomicBool::new(false)),
            observer: Arc::default(),
        }
    }

    /// Sets the observer of every published event (once; later calls are ignored).
    pub fn observe(&self, observer: Observer) {
        let _ = self.observer.set(observer);
    }

    pub fn publish(&self, event: BusEvent) {
        // Work only goes to runners with a connected channel: with none there is nothing to
        // schedule (a channel that connects kicks the scheduler itself).
        if SCHEDULING_EVENTS.contains(&event.name()) && self.any_runner_attached() {
            self.kick_scheduler();
        }
        if let Some(observe) = self.observer.get() {
            observe(&event);
        }
        // No subscriber is not an error: events are also kept per session in the store.
        let _ = self.tx.send(Arc::new(event));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<BusEvent>> {
        self.tx.subscribe()
    }

    pub fn kick_scheduler(&self) {
        if !self.scheduler_pending.swap(true, Ordering::AcqRel) {
            self.scheduler.notify_one();
        }
    }

    /// Waits for a kick and clears it, so kicks during the pass that follows wake it again.
    /// Yields once first, so that a burst of events from one commit costs one wake-up.
    pub async fn scheduler_kicked(&self) {
        self.scheduler.notified().await;
        tokio::task::yield_now().await;
        self.scheduler_pending.store(false, Ordering::Release);
    }

    fn any_runner_attached(&self) -> bool {
        let channels = self.channels.read().unwrap_or_else(|p| p.into_inner());
        !channels.is_empty()
    }

    /// Hands a committed command to its runner's live channel, if one is connected. The command
    /// is in the outbox either way, so a runner that is away gets it when it reconnects.
    pub fn publish_command(&self, entry: OutboxEntry) {
        let link = {
            let channels = self.channels.read().unwrap_or_else(|p| p.into_inner());
            channels.get(&entry.runner_id).map(|(_, link)| link.clone())
        };
        if let Some(link) = link {
            // It runs in the store's delivery task: a panic here must not take down the
            // delivery of this batch's answers and events, nor of every later batch. The
            // command stays in the outbox; the runner gets it on its next connection.
            let runner = entry.runner_id;
            let handed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                link.command(entry);
            }));
            if handed.is_err() {
                tracing::error!(%runner, "handing a command to a runner's channel panicked");
            }
        }
    }

    /// Registers a runner's live channel; a newer connection replaces an older one, which is
    /// told so and closes (were it left open, it would be cut off from commands for good once
    /// the newer one closed).
    pub fn attach_runner(&self, runner: Uuid, connection: u64, tx: CommandSender) {
        let replaced = {
            let mut channels = self.channels.write().unwrap_or_else(|p| p.into_inner());
            channels.insert(runner, (connection, tx))
        };
        if let Some((_, older)) = replaced {
            older.replaced();
        }
    }

    /// Removes the channel, unless a newer connection already took its place.
    pub fn detach_runner(&self, runner: Uuid, connection: u64) {
        let mut channels = self.channels.write().unwrap_or_else(|p| p.into_inner());
        if channels.get(&runner).is_some_and(|(c, _)| *c == connection) {
            channels.remove(&runner);
        }
    }

    /// The runners with a live channel now.
    pub fn attached_runners(&self) -> Vec<Uuid> {
        let channels = self.channels.read().unwrap_or_else(|p| p.into_inner());
        channels.keys().copied().collect()
    }

    pub fn is_attached(&self, runner: Uuid) -> bool {
        let channels = self.channels.read().unwrap_or_else(|p| p.into_inner());
        channels.contains_key(&runner)
    }
}

impl crate::store::Publisher for EventBus {
    fn publish_command(&self, command: OutboxEntry) {
        EventBus::publish_command(self, command);
    }

    fn publish(&self, event: BusEvent) {
        EventBus::publish(self, event);
    }
}
