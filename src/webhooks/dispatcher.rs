//! Posts due deliveries and records each attempt. Failures (non-2xx, timeout, no connection)
//! are retried with exponential backoff; the schedule lives in redb, so a restart resumes it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, broadcast, watch};

use super::{
    Delivery, DeliveryStatus, MAX_ATTEMPTS, WebhookService, client, retry_delay_ms, signature,
};
use crate::error::DomainError;
use crate::events::EventBus;
use crate::metrics::DeliveryOutcome;

/// Attempts in flight at once.
const CONCURRENCY: usize = 16;
/// Attempts in flight at once for one org's webhooks (the admin's org-less ones count as one
/// org): a receiver that hangs every attempt for the whole timeout holds at most this many
/// slots, and the other orgs' deliveries go on in the rest.
const PER_ORG: usize = 4;
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Feeds bus events into the delivery table. With no webhook registered it does not listen
/// to the bus at all (nothing could match), so an install without webhooks pays nothing.
pub async fn intake(service: WebhookService, bus: EventBus, mut shutdown: watch::Receiver<bool>) {
    let registered = service.registered();
    loop {
        if !service.has_hooks() {
            tokio::select! {
                _ = registered.notified() => continue,
                _ = shutdown.changed() => return,
            }
        }
        let mut events = bus.subscribe();
        while service.has_hooks() {
            let first = tokio::select! {
                e = events.recv() => e,
                _ = shutdown.changed() => return,
            };
            let mut batch = match first {
                Ok(e) => vec![e],
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::error!(missed = n, "webhook intake fell behind the event bus");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            while let Ok(e) = events.try_recv() {
                batch.push(e);
            }
            if let Err(e) = service.enqueue(&batch).await {
                tracing::error!(error = %e, "recording webhook deliveries failed");
            }
        }
    }
}

/// Attempts in flight per org.
type InFlight = Arc<std::sync::Mutex<HashMap<Option<String>, usize>>>;

/// An attempt's place in its org's share, given back when the attempt ends.
struct OrgSlot {
    in_flight: InFlight,
    org: Option<String>,
}

impl Drop for OrgSlot {
    fn drop(&mut self) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = in_flight.get_mut(&self.org) {
            *n -= 1;
            if *n == 0 {
                in_flight.remove(&self.org);
            }
        }
    }
}

/// Sends due deliveries until shutdown, at most [`CONCURRENCY`] at once and [`PER_ORG`] of one
/// org's: a scan passes over the deliveries of orgs whose share is taken, so one org's backlog
/// never holds up another's.
pub async fn run(service: WebhookService, mut shutdown: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let in_flight: InFlight = Arc::default();
    let wake = service.wakeup();
    loop {
        let now = service.clock().now_ms();
        let orgs = service.orgs_of_webhooks();
        let mut share = in_flight.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let due = service
            .store()
            .read(move |r| {
                r.due_deliveries_where(now, CONCURRENCY * 4, &mut |webhook| {
                    // Deleted webhooks' deliveries are taken (the attempt drops them).
                    let org = orgs.get(&webhook).cloned().flatten();
                    let taken = share.entry(org).or_default();
                    *taken += 1;
                    *taken <= PER_ORG
                })
            })
            .await
            .unwrap_or_else(|e: crate::store::StoreError| {
                tracing::error!(error = %e, "reading due webhook deliveries failed");
                Vec::new()
            });
        for delivery in due {
            let org = service.webhook(delivery.webhook_id).and_then(|h| h.org_id);
            {
                let mut in_flight = in_flight.lock().unwrap_or_else(|p| p.into_inner());
                let taken = in_flight.entry(org.clone()).or_default();
                if *taken >= PER_ORG {
                    continue;
                }
                *taken += 1;
            }
            let slot = OrgSlot {
                in_flight: in_flight.clone(),
                org,
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let service = service.clone();
            // Claim it: push its next attempt out so the next scan does not send it twice.
            if claim(&service, &delivery).await.is_err() {
                continue;
            }
            tokio::spawn(async move {
                attempt(&service, delivery).await;
                drop((permit, slot));
            });
        }
        let jumped = async {
            match service.clock().jumped() {
                Some(n) => n.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = wake.notified() => {}
            _ = jumped => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn claim(service: &WebhookService, d: &Delivery) -> Result<(), DomainError> {
    let mut claimed = d.clone();
    let previous_due = d.next_attempt_at;
    claimed.next_attempt_at = service.clock().now_ms() + ATTEMPT_TIMEOUT.as_millis() as i64 + 1_000;
    service
        .store()
        .write(move |w| {
            w.put_delivery(&claimed, Some(previous_due))
                .map_err(DomainError::from)
        })
        .await
}

async fn attempt(service: &WebhookService, mut d: Delivery) {
    let Some(hook) = service.webhook(d.webhook_id) else {
        // Deleted while this delivery was due: drop it instead of retrying forever.
        let (webhook, id) = (d.webhook_id, d.id);
        let _ = service
            .store()
            .write(move |w| w.forget_delivery(webhook, id).map_err(DomainError::from))
            .await;
        return;
    };
    let outcome = match client::Target::parse(&hook.url) {
        Some(target) => {
            let mut headers = vec![
                ("x-village-event", d.event.clone()),
                ("x-village-delivery", d.id.to_string()),
            ];
            if let Some(secret) = &hook.secret {
                headers.push(("x-village-signature", signature(secret, d.body.as_bytes())));
            }
            client::post(
                &target,
                &headers,
                d.body.clone(),
                ATTEMPT_TIMEOUT,
                service.allows_private_targets(),
                service.tls(),
            )
            .await
        }
        None => Err("bad url".into()),
    };
    let now = service.clock().now_ms();
    d.attempts += 1;
    d.last_attempt_at = Some(now);
    match outcome {
        Ok(code) => {
            d.last_status_code = Some(code);
            if (200..300).contains(&code) {
                d.status = DeliveryStatus::Delivered;
            }
        }
        Err(why) => tracing::info!(delivery = %d.id, %why, "webhook attempt failed"),
    }
    if d.status == DeliveryStatus::Pending {
        if d.attempts >= MAX_ATTEMPTS {
            d.status = DeliveryStatus::Failed;
        } else {
            d.next_attempt_at = now + retry_delay_ms(d.attempts);
        }
    }
    service.metrics().webhook_delivery(match d.status {
        DeliveryStatus::Delivered => DeliveryOutcome::Delivered,
        DeliveryStatus::Failed => DeliveryOutcome::Failed,
        DeliveryStatus::Pending => DeliveryOutcome::Retrying,
    });
    let id = d.id;
    let webhook = d.webhook_id;
    let result = service
        .store()
        .write(move |w| {
            // The stored copy holds the claimed due time, which keys the queue entry.
            let Some(stored) = w.get_delivery(webhook, id)? else {
                return Ok(());
            };
            w.put_delivery(&d, Some(stored.next_attempt_at))
                .map_err(DomainError::from)
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "recording a webhook attempt failed");
    }
}
