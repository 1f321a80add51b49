//! Budget accounting of a simulated run: what each budget scope spent in
//! the simulator, window by window, against its allocation.
//!
//! The rule (the same for every policy): a job is charged its vCPU share of
//! each instance it runs on, over the time it runs there (lost work of an
//! interrupted or preempted run included), at that instance's price — the
//! simulator's [`SpendSegment`]s. Idle, booting and pre-booted (floor)
//! capacity is charged to no budget. A job's spend counts in each of its
//! scopes that has an allocation: `job:<id>`, `project:<project>`,
//! `user:<user>`. A periodic budget's spend is split at window boundaries
//! (UTC, as in the ledger).

use super::cluster::SpendSegment;
use super::prices::SimPrices;
use super::trace::SimJob;
use crate::budget::{account_key, Period};
use crate::events::{BudgetAllocation, BudgetScope, Millis};
use std::collections::BTreeMap;

/// Spend per budget scope and window, against the allocations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BudgetBook {
    /// `scope:id` → (period, allocated USD per window).
    allocated: BTreeMap<String, (Period, f64)>,
    /// (`scope:id`, window start) → USD spent.
    spent: BTreeMap<(String, Millis), f64>,
}

impl BudgetBook {
    /// A book for these allocations (a later allocation of the same scope
    /// and id replaces an earlier one; unknown periods count as `total`).
    pub fn new(allocations: &[BudgetAllocation]) -> Self {
        let mut allocated = BTreeMap::new();
        for a in allocations {
            let period = Period::parse(a.period.as_deref()).unwrap_or_default();
            allocated.insert(account_key(a.scope, &a.id), (period, a.usd.max(0.0)));
        }
        BudgetBook {
            allocated,
            spent: BTreeMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.allocated.is_empty()
    }

    /// Charge one environment's segments; `jobs` is that environment's job
    /// list (what [`SpendSegment::job`] indexes).
    pub fn charge(&mut self, jobs: &[&SimJob], segments: &[SpendSegment], prices: &SimPrices) {
        if self.allocated.is_empty() {
            return;
        }
        for seg in segments {
            let Some(job) = jobs.get(seg.job as usize) else {
                continue;
            };
            for key in [
                account_key(BudgetScope::Job, &job.id),
                account_key(BudgetScope::Project, &job.project),
                account_key(BudgetScope::User, &job.user),
            ] {
                let Some(&(period, _)) = self.allocated.get(&key) else {
                    continue;
                };
                let mut ws = period.window_start(seg.start);
                loop {
                    let we = period.window_end(ws);
                    let usd = seg.cost_within(prices, ws, we);
                    if usd > 0.0 {
                        *self.spent.entry((key.clone(), ws)).or_insert(0.0) += usd;
                    }
                    if we >= seg.end {
                        break;
                    }
                    ws = we;
                }
            }
        }
    }

    /// Σ over scopes and windows of max(0, spent − allocated).
    pub fn overrun_usd(&self) -> f64 {
        self.overruns().map(|(_, _, over)| over).sum()
    }

    /// (`scope:id`, window start, USD over) of each window that overran.
    fn overruns(&self) -> impl Iterator<Item = (&str, Millis, f64)> + '_ {
        self.spent.iter().filter_map(|((k, ws), s)| {
            let a = self.allocated.get(k).map_or(0.0, |x| x.1);
            let over = s - a;
            (over > 0.0).then_some((k.as_str(), *ws, over))
        })
    }

    /// The scopes and windows that overran, with by how much (USD): keyed
    /// `scope:id` for total budgets and `scope:id@YYYY-MM-DD` (the window's
    /// first day, UTC) for periodic ones, so a report says where an overrun
    /// comes from, not only its sum ([`BudgetBook::overrun_usd`]).
    pub fn overrun_by_scope(&self) -> BTreeMap<String, f64> {
        self.overruns()
            .map(|(k, ws, over)| {
                let period = self.allocated.get(k).map_or(Period::Total, |x| x.0);
                (window_label(k, period, ws), over)
            })
            .collect()
    }

    /// Σ over scopes and windows of what was spent (a job in two budgeted
    /// scopes counts in both).
    pub fn spent_usd(&self) -> f64 {
        self.spent.values().sum()
    }
}

/// `scope:id`, with `@YYYY-MM-DD` (window start, UTC) for periodic budgets.
fn window_label(key: &str, period: Period, window_start: Millis) -> String {
    if period == Period::Total {
        return key.to_string();
    }
    let day = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(window_start).map_or_else(
        || window_start.to_string(),
        |d| d.format("%Y-%m-%d").to_string(),
    );
    format!("{key}@{day}")
}
