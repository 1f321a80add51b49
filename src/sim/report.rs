//! The backtest's result: per-policy metrics (JSON and a table) and the time
//! series behind the plot. JSON holds no wall-clock field and uses ordered
//! maps, so two runs with the same seed give identical bytes.

use super::cluster::{RunStats, Series};
use serde::Serialize;
use std::collections::BTreeMap;

/// What was replayed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TraceInfo {
    pub file: String,
    pub format: String,
    pub prices: String,
    pub catalog: String,
    pub jobs: u64,
    pub events: u64,
    pub price_ticks: u64,
    pub compute_environments: u64,
    pub start_ms: i64,
    pub end_ms: i64,
    pub span_s: f64,
    /// Bad records skipped with `--skip-bad` (0 otherwise: a bad record fails).
    pub skipped_records: u64,
    /// Records the importer handled by rule (cancelled before start, etc.).
    pub import_notes: BTreeMap<String, u64>,
    pub seed: u64,
}

/// One policy's outcome.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PolicyReport {
    pub cost_usd: f64,
    pub deadline_miss_rate: f64,
    pub queue_wait_p50_s: f64,
    pub queue_wait_p95_s: f64,
    /// Busy vCPU-seconds over billed vCPU-seconds.
    pub utilization: f64,
    pub jobs: u64,
    pub jobs_completed: u64,
    pub cost_by_market: BTreeMap<String, f64>,
    /// Job interruptions by spot reclaims (each restarts or resumes the job).
    /// Budget preemptions are counted apart, in `budget_preemptions`.
    pub preemptions: u64,
    /// Σ over budget scopes (and windows of periodic budgets) of
    /// max(0, simulated spend − allocation); spend per job is its vCPU share
    /// of the instances it ran on (see `sim::budget`). 0 without budgets.
    pub budget_overrun_usd: f64,
    /// Where `budget_overrun_usd` comes from: each overrun scope (with
    /// `@YYYY-MM-DD`, its window's first day, for periodic budgets) and by
    /// how much. Left out of the JSON when nothing overran.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub budget_overrun_by_scope: BTreeMap<String, f64>,
    /// Σ over budget scopes and windows of the simulated spend.
    pub budget_spent_usd: f64,
    /// Running jobs stopped by a budget PREEMPT (predictive/oracle only).
    pub budget_preemptions: u64,
    /// Jobs held by a budget command at least once (QUEUE at submission,
    /// or PREEMPT before they started).
    pub budget_held_jobs: u64,
    /// Preemption commands (QUEUE/PREEMPT/RESUME/MIGRATE) the engine issued.
    pub budget_commands: u64,
    /// Elastic jobs moved to cheaper capacity by MIGRATE.
    pub migrations: u64,
    pub instances_launched: u64,
    pub vcpu_hours: f64,
    /// Scaling commands applied (predictive and oracle).
    pub commands: u64,
    /// Instance-mix entries naming a pool the simulator has no price for.
    pub unknown_pools: u64,
    /// Traced spot pools (`--spot-traces`): reclaims and refused launches
    /// per `type/region`. Left out of the JSON without traces.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub spot_pools: BTreeMap<String, super::spot_market::SpotPoolStats>,
    /// The instance types (per market) that cost the most, most first (at
    /// most [`TOP_TYPES`]): where the money went.
    pub top_instance_types: Vec<TypeSpend>,
}

/// How many instance types `PolicyReport::top_instance_types` lists.
pub const TOP_TYPES: usize = 8;

/// Spend on one instance type in one market over a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TypeSpend {
    pub instance_type: String,
    pub market: String,
    pub usd: f64,
    pub vcpu_hours: f64,
    pub instances: u64,
}

/// Round to 6 decimals so tiny float noise never shows in reports.
fn r6(x: f64) -> f64 {
    // `+ 0.0` turns a negative zero (a sum of nothing below zero) into the
    // zero a reader expects to see in the JSON.
    (x * 1e6).round() / 1e6 + 0.0
}

/// Nearest-rank percentile (`q` in 0..=1); sorts in place. 0 when empty.
pub fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = (q * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

fn top_types(st: &RunStats) -> Vec<TypeSpend> {
    let mut v: Vec<TypeSpend> = st
        .cost_by_type
        .iter()
        .map(|((ty, m), c)| TypeSpend {
            instance_type: ty.clone(),
            market: m.as_str().to_string(),
            usd: r6(c.usd),
            vcpu_hours: r6(c.vcpu_hours),
            instances: c.instances,
        })
        .collect();
    // Ties by name keep the list deterministic.
    v.sort_by(|a, b| {
        b.usd
            .total_cmp(&a.usd)
            .then_with(|| a.instance_type.cmp(&b.instance_type))
            .then_with(|| a.market.cmp(&b.market))
    });
    v.truncate(TOP_TYPES);
    v
}

impl PolicyReport {
    pub fn from_stats(st: &RunStats, commands: u64, unknown_pools: u64) -> Self {
        let cost: f64 = st.cost_by_market.values().sum();
        let mut waits: Vec<f64> = st.waits_ms.iter().map(|&w| w as f64 / 1000.0).collect();
        let p50 = percentile(&mut waits, 0.5);
        let p95 = percentile(&mut waits, 0.95);
        PolicyReport {
            cost_usd: r6(cost),
            deadline_miss_rate: if st.deadline_jobs == 0 {
                0.0
            } else {
                r6(st.deadline_missed as f64 / st.deadline_jobs as f64)
            },
            queue_wait_p50_s: r6(p50),
            queue_wait_p95_s: r6(p95),
            utilization: if st.billed_mcpu_ms > 0.0 {
                r6(st.busy_mcpu_ms / st.billed_mcpu_ms)
            } else {
                0.0
            },
            jobs: st.jobs,
            jobs_completed: st.jobs_completed,
            cost_by_market: st
                .cost_by_market
                .iter()
                .map(|(m, c)| (m.as_str().to_string(), r6(*c)))
                .collect(),
            preemptions: st.preemptions,
            budget_overrun_usd: 0.0,
            budget_overrun_by_scope: BTreeMap::new(),
            budget_spent_usd: 0.0,
            budget_preemptions: st.budget_preemptions,
            budget_held_jobs: st.budget_held,
            budget_commands: 0,
            migrations: st.migrations,
            instances_launched: st.instances_launched,
            vcpu_hours: r6(st.billed_mcpu_ms / 1000.0 / 3_600_000.0),
            commands,
            unknown_pools,
            spot_pools: st.spot_pools.clone(),
            top_instance_types: top_types(st),
        }
    }
}

impl PolicyReport {
    /// Adds the budget outcome of the run.
    pub fn with_budgets(mut self, book: &super::budget::BudgetBook, budget_commands: u64) -> Self {
        self.budget_overrun_usd = r6(book.overrun_usd());
        self.budget_overrun_by_scope = book
            .overrun_by_scope()
            .into_iter()
            .map(|(k, v)| (k, r6(v)))
            .collect();
        self.budget_spent_usd = r6(book.spent_usd());
        self.budget_commands = budget_commands;
        self
    }
}

/// The whole result. `series` and `demand` are kept for plots and HTML
/// reports but left out of the JSON (they would dwarf it on long traces).
#[derive(Debug, Clone, Default, Serialize)]
pub struct BacktestReport {
    pub trace: TraceInfo,
    pub policies: BTreeMap<String, PolicyReport>,
    /// Per policy: capacity, busy, queued vCPUs and cumulative cost per bucket.
    #[serde(skip)]
    pub series: BTreeMap<String, Series>,
    /// Demand as the trace recorded it (outstanding vCPUs) in `busy_vcpus`.
    #[serde(skip)]
    pub demand: Series,
}

impl BacktestReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serialises")
    }

    /// A fixed-width table for the terminal.
    pub fn table(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "{:<11} {:>12} {:>8} {:>10} {:>10} {:>6} {:>7} {:>9} {:>8} {:>10} {:>10}\n",
            "policy",
            "cost_usd",
            "vs_react",
            "miss_rate",
            "wait_p50",
            "wait_p95",
            "util",
            "completed",
            "preempt",
            "spot_usd",
            "od_usd"
        ));
        let base = self.policies.get("reactive").map(|r| r.cost_usd);
        for name in self.ordered_names() {
            let p = &self.policies[name];
            let vs = match base {
                Some(b) if b > 0.0 => format!("{:+.1}%", (p.cost_usd / b - 1.0) * 100.0),
                _ => "-".into(),
            };
            s.push_str(&format!(
                "{:<11} {:>12.2} {:>8} {:>10.4} {:>9.0}s {:>5.0}s {:>7.3} {:>4}/{:<4} {:>8} {:>10.2} {:>10.2}\n",
                name,
                p.cost_usd,
                vs,
                p.deadline_miss_rate,
                p.queue_wait_p50_s,
                p.queue_wait_p95_s,
                p.utilization,
                p.jobs_completed,
                p.jobs,
                p.preemptions,
                p.cost_by_market.get("SPOT").copied().unwrap_or(0.0),
                p.cost_by_market.get("ON_DEMAND").copied().unwrap_or(0.0),
            ));
        }
        s
    }

    /// The budget columns, one line per policy (printed with `--budgets`).
    pub fn budget_table(&self) -> String {
        let mut s = format!(
            "{:<11} {:>12} {:>12} {:>10} {:>8} {:>9} {:>8}\n",
            "policy", "budget_spent", "overrun_usd", "held_jobs", "preempt", "commands", "migrate"
        );
        for name in self.ordered_names() {
            let p = &self.policies[name];
            s.push_str(&format!(
                "{:<11} {:>12.2} {:>12.2} {:>10} {:>8} {:>9} {:>8}\n",
                name,
                p.budget_spent_usd,
                p.budget_overrun_usd,
                p.budget_held_jobs,
                p.budget_preemptions,
                p.budget_commands,
                p.migrations
            ));
        }
        for name in self.ordered_names() {
            for (scope, usd) in &self.policies[name].budget_overrun_by_scope {
                s.push_str(&format!("{name:<11} overrun {scope}: ${usd:.2}\n"));
            }
        }
        s
    }

    fn ordered_names(&self) -> Vec<&String> {
        let order = ["reactive", "static", "predictive", "oracle"];
        let mut names: Vec<&String> = self.policies.keys().collect();
        names.sort_by_key(|n| order.iter().position(|o| o == n).unwrap_or(order.len()));
        names
    }

    /// An SVG with two panels: demand and each policy's capacity (vCPUs),
    /// and each policy's cumulative cost, over hours since the trace start.
    pub fn plot_svg(&self) -> Result<String, String> {
        use plotters::prelude::*;
        let mut buf = String::new();
        {
            let root = SVGBackend::with_string(&mut buf, (1100, 800)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| e.to_string())?;
            let (top, bottom) = root.split_vertically(440);
            let hours = |s: &Series, i: usize| {
                (s.start - self.demand.start + i as i64 * s.bucket_ms) as f64 / 3_600_000.0
            };
            let mut x_max: f64 = 1.0;
            let mut y_max: f64 = 1.0;
            let mut c_max: f64 = 1.0;
            for (i, v) in self.demand.busy_vcpus.iter().enumerate() {
                x_max = x_max.max(hours(&self.demand, i));
                y_max = y_max.max(*v);
            }
            for s in self.series.values() {
                for (i, v) in s.capacity_vcpus.iter().enumerate() {
                    x_max = x_max.max(hours(s, i));
                    y_max = y_max.max(*v);
                }
                for v in &s.cum_cost_usd {
                    c_max = c_max.max(*v);
                }
            }
            let palette = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
            let mut cap = ChartBuilder::on(&top)
                .caption("Demand and capacity (vCPUs)", ("sans-serif", 20))
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(70)
                .build_cartesian_2d(0f64..x_max, 0f64..y_max * 1.05)
                .map_err(|e| e.to_string())?;
            cap.configure_mesh()
                .x_desc("hours since trace start")
                .y_desc("vCPUs")
                .draw()
                .map_err(|e| e.to_string())?;
            let d = &self.demand;
            cap.draw_series(AreaSeries::new(
                d.busy_vcpus
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (hours(d, i), *v)),
                0.0,
                RGBColor(200, 200, 200).mix(0.6),
            ))
            .map_err(|e| e.to_string())?
            .label("demand (outstanding jobs)")
            .legend(|(x, y)| {
                Rectangle::new(
                    [(x, y - 5), (x + 15, y + 5)],
                    RGBColor(200, 200, 200).filled(),
                )
            });
            for (k, (name, s)) in self.series.iter().enumerate() {
                let color = palette[k % palette.len()];
                cap.draw_series(LineSeries::new(
                    s.capacity_vcpus
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (hours(s, i), *v)),
                    color.stroke_width(1),
                ))
                .map_err(|e| e.to_string())?
                .label(format!("{name} capacity"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
            }
            cap.configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
            let mut cost = ChartBuilder::on(&bottom)
                .caption("Cumulative cost (USD)", ("sans-serif", 20))
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(70)
                .build_cartesian_2d(0f64..x_max, 0f64..c_max * 1.05)
                .map_err(|e| e.to_string())?;
            cost.configure_mesh()
                .x_desc("hours since trace start")
                .y_desc("USD")
                .draw()
                .map_err(|e| e.to_string())?;
            for (k, (name, s)) in self.series.iter().enumerate() {
                let color = palette[k % palette.len()];
                cost.draw_series(LineSeries::new(
                    s.cum_cost_usd
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (hours(s, i), *v)),
                    color.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
            }
            cost.configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
            root.present().map_err(|e| e.to_string())?;
        }
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rounding_never_reports_a_negative_zero() {
        assert_eq!(super::r6(-0.0).to_string(), "0");
        assert_eq!(super::r6(-1e-9).to_string(), "0");
        assert_eq!(super::r6(1.2345678).to_string(), "1.234568");
    }
}
