//! The internal event bus. Domain code records events inside its write transaction; the store
//! publishes them here only after the transaction is durable, in commit order. The WebSocket
//! stream, webhooks and the dashboard consume them.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::clock::Millis;

/// One thing that happened. `name` is the contract's event name (`session_created`, …).
#[derive(Debug, Clone, PartialEq)]
pub struct BusEvent {
    pub name: &'static str,
    pub at: Millis,
    pub org_id: Option<String>,
    pub session_id: Option<Uuid>,
    pub data: Value,
}

#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<BusEvent>>,
}

impl EventBus {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity);
        Self { tx }
    }

    pub fn publish(&self, event: BusEvent) {
        // No subscriber is not an error: events are also kept per session in the store.
        let _ = self.tx.send(Arc::new(event));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<BusEvent>> {
        self.tx.subscribe()
    }
}
