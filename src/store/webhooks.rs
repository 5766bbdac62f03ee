//! Storage of webhooks, their delivery logs and the queue of pending deliveries.

use redb::ReadableTable;
use uuid::Uuid;

use super::codec::{decode, encode};
use super::engine::{StoreResult, Tables, WriteCtx};
use super::tables::*;
use crate::clock::Millis;
use crate::webhooks::model::{Delivery, DeliveryStatus, Webhook};

pub trait WebhookReads {
    fn all_webhooks(&self) -> StoreResult<Vec<Webhook>>;

    fn get_delivery(&self, webhook: Uuid, id: Uuid) -> StoreResult<Option<Delivery>>;

    /// A webhook's deliveries, newest first.
    fn webhook_deliveries(&self, webhook: Uuid, limit: usize) -> StoreResult<Vec<Delivery>>;

    /// Pending deliveries due by `now`, earliest first.
    fn due_deliveries(&self, now: Millis, limit: usize) -> StoreResult<Vec<Delivery>> {
        self.due_deliveries_where(now, limit, &mut |_| true)
    }

    /// Like `due_deliveries`, keeping only those whose webhook `take` accepts (asked in due
    /// order, once per delivery, so it can count). Looks at no more than 16 × `limit` due
    /// entries, and decodes only the deliveries it keeps.
    fn due_deliveries_where(
        &self,
        now: Millis,
        limit: usize,
        take: &mut dyn FnMut(Uuid) -> bool,
    ) -> StoreResult<Vec<Delivery>>;
}

pub trait WebhookWrites: WebhookReads {
    fn put_webhook(&mut self, hook: &Webhook) -> StoreResult<()>;

    /// Removes a webhook, its delivery log and its pending deliveries.
    fn delete_webhook(&mut self, id: Uuid) -> StoreResult<()>;

    /// Writes a delivery and keeps the due-queue in step. `previous_due` is the due time its
    /// queue entry was stored under, if it had one.
    fn put_delivery(&mut self, d: &Delivery, previous_due: Option<Millis>) -> StoreResult<()>;

    /// Removes one delivery and its queue entry, whatever its due time.
    fn forget_delivery(&mut self, webhook: Uuid, id: Uuid) -> StoreResult<()>;

    /// Drops a webhook's oldest finished deliveries beyond the newest `keep` (pending ones
    /// always stay).
    fn trim_deliveries(&mut self, webhook: Uuid, keep: usize) -> StoreResult<()>;
}

impl<T: Tables> WebhookReads for T {
    fn all_webhooks(&self) -> StoreResult<Vec<Webhook>> {
        let t = self.table(WEBHOOKS)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            out.push(decode(entry?.1.value())?);
        }
        Ok(out)
    }

    fn get_delivery(&self, webhook: Uuid, id: Uuid) -> StoreResult<Option<Delivery>> {
        let t = self.table(WEBHOOK_DELIVERIES)?;
        let v = t.get((webhook.as_u128(), id.as_u128()))?;
        v.map(|v| decode(v.value())).transpose()
    }

    fn webhook_deliveries(&self, webhook: Uuid, limit: usize) -> StoreResult<Vec<Delivery>> {
        let t = self.table(WEBHOOK_DELIVERIES)?;
        let w = webhook.as_u128();
        let mut out = Vec::new();
        for entry in t.range((w, 0u128)..=(w, u128::MAX))?.rev().take(limit) {
            out.push(decode(entry?.1.value())?);
        }
        Ok(out)
    }

    fn due_deliveries_where(
        &self,
        now: Millis,
        limit: usize,
        take: &mut dyn FnMut(Uuid) -> bool,
    ) -> StoreResult<Vec<Delivery>> {
        let queue = self.table(DELIVERY_QUEUE)?;
        let end = now.max(0) as u64;
        let mut keys = Vec::new();
        for entry in queue
            .range((0u64, 0u128, 0u128)..=(end, u128::MAX, u128::MAX))?
            .take(limit.saturating_mul(16))
        {
            let (_, w, d) = entry?.0.value();
            if take(Uuid::from_u128(w)) {
                keys.push((w, d));
                if keys.len() >= limit {
                    break;
                }
            }
        }
        let mut out = Vec::new();
        for (w, d) in keys {
            if let Some(delivery) = self.get_delivery(Uuid::from_u128(w), Uuid::from_u128(d))? {
                out.push(delivery);
            }
        }
        Ok(out)
    }
}

impl WebhookWrites for WriteCtx<'_> {
    fn put_webhook(&mut self, hook: &Webhook) -> StoreResult<()> {
        let bytes = encode(hook)?;
        self.open_mut(WEBHOOKS)?
            .insert(hook.id.as_u128(), bytes.as_slice())?;
        Ok(())
    }

    fn delete_webhook(&mut self, id: Uuid) -> StoreResult<()> {
        let w = id.as_u128();
        self.open_mut(WEBHOOKS)?.remove(w)?;
        self.open_mut(WEBHOOK_DELIVERIES)?
            .retain_in((w, 0u128)..=(w, u128::MAX), |_, _| false)?;
        self.open_mut(DELIVERY_QUEUE)?
            .retain(|(_, hook, _), _| hook != w)?;
        Ok(())
    }

    fn put_delivery(&mut self, d: &Delivery, previous_due: Option<Millis>) -> StoreResult<()> {
        let (w, id) = (d.webhook_id.as_u128(), d.id.as_u128());
        let bytes = encode(d)?;
        self.open_mut(WEBHOOK_DELIVERIES)?
            .insert((w, id), bytes.as_slice())?;
        let mut queue = self.open_mut(DELIVERY_QUEUE)?;
        if let Some(due) = previous_due {
            queue.remove((due.max(0) as u64, w, id))?;
        }
        if d.status == DeliveryStatus::Pending {
            queue.insert((d.next_attempt_at.max(0) as u64, w, id), ())?;
        }
        Ok(())
    }

    fn forget_delivery(&mut self, webhook: Uuid, id: Uuid) -> StoreResult<()> {
        let (w, d) = (webhook.as_u128(), id.as_u128());
        self.open_mut(WEBHOOK_DELIVERIES)?.remove((w, d))?;
        self.open_mut(DELIVERY_QUEUE)?
            .retain(|(_, hook, delivery), _| hook != w || delivery != d)?;
        Ok(())
    }

    fn trim_deliveries(&mut self, webhook: Uuid, keep: usize) -> StoreResult<()> {
        let w = webhook.as_u128();
        let mut t = self.open_mut(WEBHOOK_DELIVERIES)?;
        let total = t.range((w, 0u128)..=(w, u128::MAX))?.count();
        if total <= keep {
            return Ok(());
        }
        let mut doomed = Vec::new();
        for entry in t.range((w, 0u128)..=(w, u128::MAX))?.take(total - keep) {
            let (k, v) = entry?;
            let d: Delivery = decode(v.value())?;
            if d.status != DeliveryStatus::Pending {
                doomed.push(k.value());
            }
        }
        for k in doomed {
            t.remove(k)?;
        }
        Ok(())
    }
}
