//! Budget periods: the windows a budget allocation's spend resets in. Part
//! of the `budget-allocation` record (its decoder refuses an unknown period),
//! so the event model owns them; the budget ledger uses them.

use super::Millis;
use serde::{Deserialize, Serialize};

const HOUR_MS: f64 = 3_600_000.0;
const DAY_MS: i64 = 86_400_000;

/// Budget period: spend resets at each UTC window start; `Total` never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    #[default]
    Total,
    Day,
    Week,
    Month,
}

impl Period {
    pub fn parse(s: Option<&str>) -> Option<Period> {
        match s.map(|x| x.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("total") | Some("all") => Some(Period::Total),
            Some("day") | Some("daily") => Some(Period::Day),
            Some("week") | Some("weekly") => Some(Period::Week),
            Some("month") | Some("monthly") => Some(Period::Month),
            _ => None,
        }
    }

    /// Start of the window holding `t` (UTC; weeks start on Monday).
    pub fn window_start(self, t: Millis) -> Millis {
        match self {
            Period::Total => i64::MIN,
            Period::Day => t.div_euclid(DAY_MS) * DAY_MS,
            // 1970-01-01 was a Thursday: Monday-based weeks are offset 3 days.
            Period::Week => (t + 3 * DAY_MS).div_euclid(7 * DAY_MS) * 7 * DAY_MS - 3 * DAY_MS,
            Period::Month => {
                use chrono::{DateTime, Datelike, TimeZone, Utc};
                let d = DateTime::<Utc>::from_timestamp_millis(t).unwrap_or_default();
                Utc.with_ymd_and_hms(d.year(), d.month(), 1, 0, 0, 0)
                    .single()
                    .map(|x| x.timestamp_millis())
                    .unwrap_or(t)
            }
        }
    }

    /// End (exclusive) of the window starting at `start` (`Total`: never).
    pub fn window_end(self, start: Millis) -> Millis {
        match self {
            Period::Total => i64::MAX,
            Period::Day => start + DAY_MS,
            Period::Week => start + 7 * DAY_MS,
            // 32 days after a month's start always lies in the next month.
            Period::Month => Period::Month.window_start(start + 32 * DAY_MS),
        }
    }

    /// Hours left in the window holding `t` (Total: one hour — a total
    /// budget may be spent at most at the rate that uses it up in an hour).
    pub fn hours_left(self, t: Millis) -> f64 {
        let end = match self {
            Period::Total => return 1.0,
            Period::Day => self.window_start(t) + DAY_MS,
            Period::Week => self.window_start(t) + 7 * DAY_MS,
            // 32 days after a month's start always lies in the next month.
            Period::Month => Period::Month.window_start(self.window_start(t) + 32 * DAY_MS),
        };
        ((end - t) as f64 / HOUR_MS).max(1.0 / 60.0)
    }
}
