//! Webhook registrations and their deliveries as stored.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clock::Millis;

/// Attempts before a delivery is marked failed.
pub const MAX_ATTEMPTS: u32 = 8;
/// The first retry waits this long; each later one twice the one before.
pub const FIRST_RETRY_MS: i64 = 1_000;
/// Deliveries kept per webhook for its log.
pub const LOG_SIZE: usize = 100;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    /// Event names, or `*` for all.
    pub events: Vec<String>,
    /// `None`: every org's events (admin webhooks only).
    pub org_id: Option<String>,
    /// Kept to sign deliveries; never returned.
    pub secret: Option<String>,
    pub created_at: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: Uuid,
    pub webhook_id: Uuid,
    pub event: String,
    /// The exact body posted on every attempt (so the signature and `id` never change).
    pub body: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub last_status_code: Option<u16>,
    pub last_attempt_at: Option<Millis>,
    pub next_attempt_at: Millis,
    pub created_at: Millis,
}

/// How a notification target wants its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetKind {
    /// A Slack incoming webhook: `text` and blocks.
    Slack,
    /// A Discord webhook: `content`.
    Discord,
    /// The webhook delivery body, with `approvalUrl` on `approval_requested`.
    Generic,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Slack => "slack",
            Self::Discord => "discord",
            Self::Generic => "generic",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "slack" => Some(Self::Slack),
            "discord" => Some(Self::Discord),
            "generic" => Some(Self::Generic),
            _ => None,
        }
    }
}

/// Where an org's people hear of its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationTarget {
    /// The org's name for it (`[a-z0-9_-]{1,64}`), in `resolvedBy: "link:<id>"`.
    pub id: String,
    pub kind: TargetKind,
    pub url: String,
    /// Event names, or `*` for all.
    pub events: Vec<String>,
    /// The id its deliveries are stored and retried under, kept while the target keeps its id.
    pub delivery_id: Uuid,
}

/// An org's notification targets, replaced as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrgNotifications {
    pub org_id: String,
    pub targets: Vec<NotificationTarget>,
}
