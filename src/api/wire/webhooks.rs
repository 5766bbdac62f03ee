//! Webhook registrations and their deliveries.

use serde::Serialize;
use uuid::Uuid;

use crate::sessions::timestamp;
use crate::webhooks::{Delivery as DeliveryRecord, Webhook as WebhookRecord};

/// A registered webhook (never its secret: only whether it has one).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Webhook<'a> {
    created_at: String,
    events: &'a [String],
    has_secret: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    org_id: Option<&'a str>,
    url: &'a str,
    webhook_id: Uuid,
}

impl<'a> From<&'a WebhookRecord> for Webhook<'a> {
    fn from(h: &'a WebhookRecord) -> Self {
        Self {
            created_at: timestamp(h.created_at),
            events: &h.events,
            has_secret: h.secret.is_some(),
            org_id: h.org_id.as_deref(),
            url: &h.url,
            webhook_id: h.id,
        }
    }
}

/// One delivery of an event to a webhook.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery<'a> {
    attempts: u32,
    created_at: String,
    delivery_id: Uuid,
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_attempt_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_status_code: Option<u16>,
    status: &'static str,
}

impl<'a> From<&'a DeliveryRecord> for Delivery<'a> {
    fn from(d: &'a DeliveryRecord) -> Self {
        Self {
            attempts: d.attempts,
            created_at: timestamp(d.created_at),
            delivery_id: d.id,
            event: &d.event,
            last_attempt_at: d.last_attempt_at.map(timestamp),
            last_status_code: d.last_status_code,
            status: d.status.as_str(),
        }
    }
}

/// The answer to a deletion.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Deleted {
    deleted: bool,
    webhook_id: Uuid,
}

impl From<&WebhookRecord> for Deleted {
    fn from(h: &WebhookRecord) -> Self {
        Self {
            deleted: true,
            webhook_id: h.id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::check::sorted_keys;
    use super::*;
    use crate::webhooks::DeliveryStatus;

    #[test]
    fn keys_in_wire_order() {
        for full in [true, false] {
            let hook = WebhookRecord {
                id: Uuid::from_u128(1),
                url: "http://x".into(),
                events: vec!["*".into()],
                org_id: full.then(|| "acme".into()),
                secret: full.then(|| "s".into()),
                created_at: 0,
            };
            sorted_keys(&Webhook::from(&hook));
            sorted_keys(&Deleted::from(&hook));
            let d = DeliveryRecord {
                id: Uuid::from_u128(2),
                webhook_id: hook.id,
                event: "session_created".into(),
                body: "{}".into(),
                status: DeliveryStatus::Failed,
                attempts: 3,
                last_status_code: full.then_some(500),
                last_attempt_at: full.then_some(1),
                next_attempt_at: 2,
                created_at: 0,
            };
            sorted_keys(&Delivery::from(&d));
        }
    }
}
