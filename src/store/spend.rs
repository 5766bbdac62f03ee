//! Storage of budgets and spend: each org's limits, its spend per day and provider and per
//! month (kept as usage is reported, never summed from sessions on a read), how sessions
//! fared per build, and which sessions are held for budget.

use redb::{ReadableTable, Table};
use uuid::Uuid;

use super::codec::{decode, encode};
use super::engine::{StoreResult, Tables, WriteCtx};
use super::tables::*;
use crate::spend::model::{
    Budget, BudgetHold, BuildOutcomes, Day, Month, UsageDelta, UsageTotals, month_of_day,
};

pub trait SpendReads {
    fn budget(&self, org_id: &str) -> StoreResult<Option<Budget>>;

    /// The org's spend in a month, all providers (one row).
    fn month_usage(&self, org_id: &str, month: Month) -> StoreResult<UsageTotals>;

    /// The org's spend per day and provider for the days `first..end`, by day.
    fn daily_usage(
        &self,
        org_id: &str,
        first: Day,
        end: Day,
    ) -> StoreResult<Vec<(Day, String, UsageTotals)>>;

    /// How the sessions that ended in a month fared, per build.
    fn build_outcomes(
        &self,
        org_id: &str,
        month: Month,
    ) -> StoreResult<Vec<(String, BuildOutcomes)>>;

    fn budget_hold(&self, session: Uuid) -> StoreResult<Option<BudgetHold>>;
}

pub trait SpendWrites: SpendReads {
    /// The org's budget, as `budget` reads it, through the batch's open handle of the table:
    /// every session create reads it.
    fn budget_in_batch(&mut self, org_id: &str) -> StoreResult<Option<Budget>>;

    fn put_budget(&mut self, org_id: &str, budget: &Budget) -> StoreResult<()>;

    /// Adds a change to the org's spend on `day` for `provider` and to that day's month;
    /// returns the month's total after it.
    fn add_usage(
        &mut self,
        org_id: &str,
        day: Day,
        provider: &str,
        delta: &UsageDelta,
    ) -> StoreResult<UsageTotals>;

    /// Adds counted session endings to a build's outcomes for a month.
    fn merge_build_outcomes(
        &mut self,
        org_id: &str,
        month: Month,
        build: &str,
        counted: &BuildOutcomes,
    ) -> StoreResult<()>;

    fn set_budget_hold(&mut self, session: Uuid, hold: Option<BudgetHold>) -> StoreResult<()>;
}

impl<T: Tables> SpendReads for T {
    fn budget(&self, org_id: &str) -> StoreResult<Option<Budget>> {
        match self.table(ORG_BUDGETS)?.get(org_id)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    fn month_usage(&self, org_id: &str, month: Month) -> StoreResult<UsageTotals> {
        match self.table(USAGE_BY_MONTH)?.get((org_id, month))? {
            Some(v) => decode(v.value()),
            None => Ok(UsageTotals::default()),
        }
    }

    fn daily_usage(
        &self,
        org_id: &str,
        first: Day,
        end: Day,
    ) -> StoreResult<Vec<(Day, String, UsageTotals)>> {
        let t = self.table(USAGE_BY_DAY)?;
        let mut out = Vec::new();
        for entry in t.range((org_id, first, "")..(org_id, end, ""))? {
            let (k, v) = entry?;
            let (_, day, provider) = k.value();
            out.push((day, provider.to_owned(), decode(v.value())?));
        }
        Ok(out)
    }

    fn build_outcomes(
        &self,
        org_id: &str,
        month: Month,
    ) -> StoreResult<Vec<(String, BuildOutcomes)>> {
        let t = self.table(BUILD_OUTCOMES)?;
        let mut out = Vec::new();
        for entry in t.range((org_id, month, "")..(org_id, month + 1, ""))? {
            let (k, v) = entry?;
            out.push((k.value().2.to_owned(), decode(v.value())?));
        }
        Ok(out)
    }

    fn budget_hold(&self, session: Uuid) -> StoreResult<Option<BudgetHold>> {
        Ok(self
            .table(BUDGET_HOLDS)?
            .get(session.as_u128())?
            .and_then(|v| BudgetHold::from_byte(v.value())))
    }
}

impl SpendWrites for WriteCtx<'_> {
    fn budget_in_batch(&mut self, org_id: &str) -> StoreResult<Option<Budget>> {
        match self.hot_budgets()?.get(org_id)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    fn put_budget(&mut self, org_id: &str, budget: &Budget) -> StoreResult<()> {
        let bytes = encode(budget)?;
        self.open_mut(ORG_BUDGETS)?
            .insert(org_id, bytes.as_slice())?;
        Ok(())
    }

    fn add_usage(
        &mut self,
        org_id: &str,
        day: Day,
        provider: &str,
        delta: &UsageDelta,
    ) -> StoreResult<UsageTotals> {
        add_to_day(
            &mut self.open_mut(USAGE_BY_DAY)?,
            org_id,
            day,
            provider,
            delta,
        )?;
        add_to_month(&mut self.open_mut(USAGE_BY_MONTH)?, org_id, day, delta)
    }

    fn merge_build_outcomes(
        &mut self,
        org_id: &str,
        month: Month,
        build: &str,
        counted: &BuildOutcomes,
    ) -> StoreResult<()> {
        let mut t = self.open_mut(BUILD_OUTCOMES)?;
        update(&mut t, (org_id, month, build), |o: &mut BuildOutcomes| {
            o.merge(counted)
        })
        .map(drop)
    }

    fn set_budget_hold(&mut self, session: Uuid, hold: Option<BudgetHold>) -> StoreResult<()> {
        let mut t = self.open_mut(BUDGET_HOLDS)?;
        match hold {
            Some(h) => t.insert(session.as_u128(), h.to_byte())?,
            None => t.remove(session.as_u128())?,
        };
        Ok(())
    }
}

/// Adds a change to one day's row (also used by the migration that fills the tables).
pub(super) fn add_to_day(
    t: &mut Table<'_, (&'static str, u32, &'static str), &'static [u8]>,
    org_id: &str,
    day: Day,
    provider: &str,
    delta: &UsageDelta,
) -> StoreResult<()> {
    update(t, (org_id, day, provider), |totals: &mut UsageTotals| {
        totals.apply(delta)
    })
    .map(drop)
}

/// Adds a change to the row of the month `day` is in; returns the month's total after it.
pub(super) fn add_to_month(
    t: &mut Table<'_, (&'static str, u32), &'static [u8]>,
    org_id: &str,
    day: Day,
    delta: &UsageDelta,
) -> StoreResult<UsageTotals> {
    update(
        t,
        (org_id, month_of_day(day)),
        |totals: &mut UsageTotals| totals.apply(delta),
    )
}

/// Reads the record at `key` (its default when absent), changes it and writes it back.
fn update<K, R>(
    t: &mut Table<'_, K, &'static [u8]>,
    key: K::SelfType<'_>,
    change: impl FnOnce(&mut R),
) -> StoreResult<R>
where
    K: redb::Key + 'static,
    R: super::codec::Record + Default,
    for<'a> K::SelfType<'a>: Copy,
{
    let mut record: R = match t.get(key)? {
        Some(v) => decode(v.value())?,
        None => R::default(),
    };
    change(&mut record);
    let bytes = encode(&record)?;
    t.insert(key, bytes.as_slice())?;
    Ok(record)
}
