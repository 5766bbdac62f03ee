//! Budgets and spend: an org's limits, what its sessions spent per day and provider, and how
//! the sessions that ended on each runner build fared. Days and months are UTC.

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::sessions::model::Usage;

/// An org's limits; `None` is no limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// The org's spend per calendar month (UTC), in US dollars.
    pub monthly_usd: Option<f64>,
    /// One session's `costUsd`.
    pub session_usd: Option<f64>,
    /// One session's `tokensIn + tokensOut`.
    pub session_tokens: Option<u64>,
}

/// What reached a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetScope {
    Session,
    Org,
}

impl BudgetScope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Org => "org",
        }
    }
}

/// Which figure reached it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetMetric {
    CostUsd,
    Tokens,
}

impl BudgetMetric {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CostUsd => "costUsd",
            Self::Tokens => "tokens",
        }
    }
}

/// A limit reached: the limit and what was spent against it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overrun {
    pub scope: BudgetScope,
    pub metric: BudgetMetric,
    pub limit: f64,
    pub spent: f64,
}

impl Budget {
    /// The session limit a session's usage has reached, cost first.
    pub fn session_overrun(&self, usage: &Usage) -> Option<Overrun> {
        if let Some(limit) = self.session_usd
            && usage.cost_usd >= limit
        {
            return Some(Overrun {
                scope: BudgetScope::Session,
                metric: BudgetMetric::CostUsd,
                limit,
                spent: usage.cost_usd,
            });
        }
        let tokens = usage.tokens_in.saturating_add(usage.tokens_out);
        match self.session_tokens {
            Some(limit) if tokens >= limit => Some(Overrun {
                scope: BudgetScope::Session,
                metric: BudgetMetric::Tokens,
                limit: limit as f64,
                spent: tokens as f64,
            }),
            _ => None,
        }
    }

    /// The monthly limit, when the org's spend this month has reached it.
    pub fn org_overrun(&self, spent_this_month: f64) -> Option<Overrun> {
        match self.monthly_usd {
            Some(limit) if spent_this_month >= limit => Some(Overrun {
                scope: BudgetScope::Org,
                metric: BudgetMetric::CostUsd,
                limit,
                spent: spent_this_month,
            }),
            _ => None,
        }
    }
}

/// What a session's budget standing is, when it is not the ordinary one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetHold {
    /// Paused because it reached a limit; resuming needs the limit raised (or an admin's force).
    Paused,
    /// An admin resumed it over its limits: it is not paused for budget again.
    Exempt,
}

impl BudgetHold {
    pub fn to_byte(self) -> u8 {
        match self {
            Self::Paused => 1,
            Self::Exempt => 2,
        }
    }

    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Paused),
            2 => Some(Self::Exempt),
            _ => None,
        }
    }
}

/// Spend summed over sessions: a day and provider's, or a month's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageTotals {
    pub cost_usd: f64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Sessions that started (first became RUNNING) then.
    pub sessions: u64,
}

/// A change to spend: the difference between a session's usage before and after a report
/// (reports replace the figures, so a difference may be negative), or a session starting.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UsageDelta {
    pub cost_usd: f64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub sessions: u64,
}

impl UsageDelta {
    pub fn between(before: &Usage, after: &Usage) -> Self {
        Self {
            cost_usd: after.cost_usd - before.cost_usd,
            tokens_in: signed_difference(after.tokens_in, before.tokens_in),
            tokens_out: signed_difference(after.tokens_out, before.tokens_out),
            sessions: 0,
        }
    }

    pub fn one_session() -> Self {
        Self {
            sessions: 1,
            ..Self::default()
        }
    }

    pub fn is_zero(&self) -> bool {
        self.cost_usd == 0.0 && self.tokens_in == 0 && self.tokens_out == 0 && self.sessions == 0
    }
}

fn signed_difference(after: u64, before: u64) -> i64 {
    let d = i128::from(after) - i128::from(before);
    d.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

impl UsageTotals {
    /// Adds a change; a total never goes below zero (a runner may report lower figures than
    /// before, and float sums drift by rounding).
    pub fn apply(&mut self, d: &UsageDelta) {
        self.cost_usd = (self.cost_usd + d.cost_usd).max(0.0);
        self.tokens_in = self.tokens_in.saturating_add_signed(d.tokens_in);
        self.tokens_out = self.tokens_out.saturating_add_signed(d.tokens_out);
        self.sessions = self.sessions.saturating_add(d.sessions);
    }

    pub fn add(&mut self, other: &UsageTotals) {
        self.cost_usd += other.cost_usd;
        self.tokens_in = self.tokens_in.saturating_add(other.tokens_in);
        self.tokens_out = self.tokens_out.saturating_add(other.tokens_out);
        self.sessions = self.sessions.saturating_add(other.sessions);
    }
}

/// How the sessions that ended on runners of one build in one month fared.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BuildOutcomes {
    /// Sessions ended (completed + failed).
    pub sessions: u64,
    pub completed: u64,
    /// FAILED or TIMED_OUT.
    pub failed: u64,
    /// `costUsd` of the ended sessions when they ended.
    pub cost_usd: f64,
    /// `costUsd` of the completed ones.
    pub completed_cost_usd: f64,
}

impl BuildOutcomes {
    pub fn count(&mut self, completed: bool, cost_usd: f64) {
        self.sessions += 1;
        self.cost_usd += cost_usd;
        if completed {
            self.completed += 1;
            self.completed_cost_usd += cost_usd;
        } else {
            self.failed += 1;
        }
    }

    pub fn merge(&mut self, other: &BuildOutcomes) {
        self.sessions += other.sessions;
        self.completed += other.completed;
        self.failed += other.failed;
        self.cost_usd += other.cost_usd;
        self.completed_cost_usd += other.completed_cost_usd;
    }
}

const DAY_MS: i64 = 86_400_000;

/// A UTC day: days since 1970-01-01.
pub type Day = u32;
/// A UTC month: `year * 12 + month - 1`.
pub type Month = u32;

pub fn day_of(at: Millis) -> Day {
    at.div_euclid(DAY_MS).clamp(0, i64::from(u32::MAX)) as Day
}

fn date_of(day: Day) -> NaiveDate {
    NaiveDate::default() + chrono::Days::new(u64::from(day))
}

fn day_of_date(date: NaiveDate) -> Day {
    (date - NaiveDate::default())
        .num_days()
        .clamp(0, i64::from(u32::MAX)) as Day
}

pub fn month_of_day(day: Day) -> Month {
    let d = date_of(day);
    (d.year().max(0) as u32) * 12 + d.month0()
}

pub fn month_of(at: Millis) -> Month {
    month_of_day(day_of(at))
}

/// The days of a month: `first..end`.
pub fn days_of_month(month: Month) -> (Day, Day) {
    let first =
        |m: Month| NaiveDate::from_ymd_opt((m / 12) as i32, m % 12 + 1, 1).map_or(0, day_of_date);
    (first(month), first(month + 1))
}

/// `YYYY-MM`, years 1970 to 9999.
pub fn parse_month(s: &str) -> Option<Month> {
    let (y, m) = s.split_once('-')?;
    if y.len() != 4 || m.len() != 2 || !(y.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (y, m): (u32, u32) = (y.parse().ok()?, m.parse().ok()?);
    ((1970..=9999).contains(&y) && (1..=12).contains(&m)).then_some(y * 12 + m - 1)
}

pub fn format_month(month: Month) -> String {
    format!("{:04}-{:02}", month / 12, month % 12 + 1)
}

pub fn format_day(day: Day) -> String {
    date_of(day).format("%Y-%m-%d").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(date: &str, time_ms: i64) -> Millis {
        let d = NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap_or_default();
        i64::from(day_of_date(d)) * DAY_MS + time_ms
    }

    #[test]
    fn months_turn_at_midnight_utc() {
        let last_ms_of_november = at("2026-11-30", DAY_MS - 1);
        let first_ms_of_december = at("2026-12-01", 0);
        assert_eq!(format_month(month_of(last_ms_of_november)), "2026-11");
        assert_eq!(format_month(month_of(first_ms_of_december)), "2026-12");
        assert_eq!(format_day(day_of(last_ms_of_november)), "2026-11-30");
        let (first, end) = days_of_month(month_of(first_ms_of_december));
        assert_eq!(format_day(first), "2026-12-01");
        assert_eq!(format_day(end), "2027-01-01");
        let (first, end) = days_of_month(parse_month("2024-02").unwrap_or_default());
        assert_eq!(end - first, 29, "a leap February");
    }

    #[test]
    fn months_parse_strictly() {
        assert_eq!(
            parse_month("2026-12").map(format_month).as_deref(),
            Some("2026-12")
        );
        for bad in [
            "2026-13", "2026-00", "26-12", "2026-1", "2026/12", "1969-12", "2026-1x", "",
        ] {
            assert_eq!(parse_month(bad), None, "{bad}");
        }
    }

    #[test]
    fn limits_are_reached_at_equality_cost_first() {
        let b = Budget {
            monthly_usd: Some(10.0),
            session_usd: Some(2.0),
            session_tokens: Some(1000),
        };
        let mut u = Usage {
            cost_usd: 1.99,
            tokens_in: 600,
            tokens_out: 399,
            ..Usage::default()
        };
        assert_eq!(b.session_overrun(&u), None);
        u.tokens_out = 400;
        assert_eq!(
            b.session_overrun(&u).map(|o| (o.metric, o.limit, o.spent)),
            Some((BudgetMetric::Tokens, 1000.0, 1000.0))
        );
        u.cost_usd = 2.0;
        assert_eq!(
            b.session_overrun(&u).map(|o| o.metric),
            Some(BudgetMetric::CostUsd)
        );
        assert_eq!(b.org_overrun(9.99), None);
        assert_eq!(b.org_overrun(10.0).map(|o| o.scope), Some(BudgetScope::Org));
        assert_eq!(Budget::default().session_overrun(&u), None);
    }

    #[test]
    fn totals_follow_replacing_reports_and_never_go_negative() {
        let mut t = UsageTotals::default();
        let first = Usage {
            cost_usd: 1.5,
            tokens_in: 100,
            ..Usage::default()
        };
        t.apply(&UsageDelta::between(&Usage::default(), &first));
        let lower = Usage {
            cost_usd: 1.0,
            tokens_in: 40,
            ..Usage::default()
        };
        t.apply(&UsageDelta::between(&first, &lower));
        assert_eq!((t.cost_usd, t.tokens_in), (1.0, 40));
        t.apply(&UsageDelta {
            cost_usd: -5.0,
            tokens_in: -500,
            ..UsageDelta::default()
        });
        assert_eq!((t.cost_usd, t.tokens_in), (0.0, 0));
    }
}
