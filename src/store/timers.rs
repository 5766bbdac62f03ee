//! Storage of timers (timeouts, approval expiry, purge, assignment lapse), ordered by due time.

use redb::ReadableTable;
use uuid::Uuid;

use super::engine::{StoreResult, Tables, WriteCtx};
use super::tables::*;
use crate::clock::Millis;
use crate::sessions::model::{Timer, TimerKind};

pub trait TimerReads {
    /// Timers due at or before `now`, earliest first.
    fn due_timers(&self, now: Millis, limit: usize) -> StoreResult<Vec<Timer>>;
}

pub trait TimerWrites: TimerReads {
    fn set_timer(&mut self, timer: Timer) -> StoreResult<()>;

    fn clear_timer(&mut self, timer: Timer) -> StoreResult<()>;
}

impl<T: Tables> TimerReads for T {
    fn due_timers(&self, now: Millis, limit: usize) -> StoreResult<Vec<Timer>> {
        let t = self.table(TIMERS)?;
        let end = now.max(0) as u64;
        let mut out = Vec::new();
        for entry in t
            .range((0u64, 0u8, 0u128, 0u128)..=(end, u8::MAX, u128::MAX, u128::MAX))?
            .take(limit)
        {
            let (due, kind, session, other) = entry?.0.value();
            if let Some(kind) = TimerKind::from_u8(kind) {
                out.push(Timer {
                    due: due as Millis,
                    kind,
                    session_id: Uuid::from_u128(session),
                    other_id: Uuid::from_u128(other),
                });
            }
        }
        Ok(out)
    }
}

impl TimerWrites for WriteCtx<'_> {
    fn set_timer(&mut self, timer: Timer) -> StoreResult<()> {
        self.writes += 1;
        self.hot_timers()?.insert(timer_key(&timer), ())?;
        Ok(())
    }

    fn clear_timer(&mut self, timer: Timer) -> StoreResult<()> {
        self.writes += 1;
        self.hot_timers()?.remove(timer_key(&timer))?;
        Ok(())
    }
}

fn timer_key(t: &Timer) -> (u64, u8, u128, u128) {
    (
        t.due.max(0) as u64,
        t.kind as u8,
        t.session_id.as_u128(),
        t.other_id.as_u128(),
    )
}
