//! Budgets and spend.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::spend::UsageReport;
use crate::spend::model::{Budget, BuildOutcomes, UsageTotals, format_day, format_month};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetView<'a> {
    monthly_usd: Option<f64>,
    org_id: &'a str,
    session_tokens: Option<u64>,
    session_usd: Option<f64>,
}

impl<'a> BudgetView<'a> {
    pub fn new(org_id: &'a str, b: &Budget) -> Self {
        Self {
            monthly_usd: b.monthly_usd,
            org_id,
            session_tokens: b.session_tokens,
            session_usd: b.session_usd,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    cost_usd: f64,
    sessions: u64,
    tokens_in: u64,
    tokens_out: u64,
}

impl From<&UsageTotals> for Totals {
    fn from(t: &UsageTotals) -> Self {
        Self {
            // Sums of floats: rounded to a millionth of a dollar so 0.1 + 0.2 reads 0.3.
            cost_usd: round_micros(t.cost_usd),
            sessions: t.sessions,
            tokens_in: t.tokens_in,
            tokens_out: t.tokens_out,
        }
    }
}

fn round_micros(usd: f64) -> f64 {
    (usd * 1e6).round() / 1e6
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DayUsage<'a> {
    by_provider: BTreeMap<&'a str, Totals>,
    #[serde(flatten)]
    totals: Totals,
    date: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildUsage<'a> {
    build_id: &'a str,
    completed: u64,
    cost_per_completed_usd: Option<f64>,
    cost_usd: f64,
    failed: u64,
    failure_rate: Option<f64>,
    sessions: u64,
}

impl<'a> BuildUsage<'a> {
    fn new(build_id: &'a str, o: &BuildOutcomes) -> Self {
        Self {
            build_id,
            completed: o.completed,
            cost_per_completed_usd: (o.completed > 0)
                .then(|| round_micros(o.completed_cost_usd / o.completed as f64)),
            cost_usd: round_micros(o.cost_usd),
            failed: o.failed,
            failure_rate: (o.sessions > 0).then(|| o.failed as f64 / o.sessions as f64),
            sessions: o.sessions,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage<'a> {
    by_build: Vec<BuildUsage<'a>>,
    by_day: Vec<DayUsage<'a>>,
    by_provider: BTreeMap<&'a str, Totals>,
    #[serde(flatten)]
    totals: Totals,
    month: String,
    org_id: &'a str,
}

impl<'a> From<&'a UsageReport> for Usage<'a> {
    fn from(r: &'a UsageReport) -> Self {
        let split = |m: &'a BTreeMap<String, UsageTotals>| {
            m.iter()
                .map(|(k, v)| (k.as_str(), Totals::from(v)))
                .collect()
        };
        Self {
            by_build: r
                .by_build
                .iter()
                .map(|(b, o)| BuildUsage::new(b, o))
                .collect(),
            by_day: r
                .by_day
                .iter()
                .map(|(day, t, by)| DayUsage {
                    by_provider: split(by),
                    totals: Totals::from(t),
                    date: format_day(*day),
                })
                .collect(),
            by_provider: split(&r.by_provider),
            totals: Totals::from(&r.totals),
            month: format_month(r.month),
            org_id: &r.org_id,
        }
    }
}
