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
    /// The instance types (per market) that cost the most, most first (at
    /// most [`TOP_TYPES`]): where the money went.
    pub top_instance_types: Vec<TypeSpend>,
    /// The part of `cost_usd` that jobs ran on (their vCPU share of each
    /// instance, lost work included).
    pub busy_usd: f64,
    /// `cost_usd − busy_usd`: capacity booting, idle or unused beside jobs.
    pub idle_usd: f64,
    /// Of `idle_usd`, an estimate of the boot time billed: launches × boot
    /// delay × each type's mean hourly price over the run.
    pub boot_usd: f64,
    /// Of `busy_usd`, the runs of rigid jobs that were cut short (spot
    /// reclaims, budget preemptions) and started over.
    pub lost_work_usd: f64,
    /// Spot launches that failed for want of capacity.
    pub spot_launch_failures: u64,
    /// Nodes removed or replaced by consolidation (`karpenter`).
    pub consolidations: u64,
    /// `cost_usd ÷` the trace's `lower_bound_usd` (null when it is 0).
    pub cost_vs_lower_bound: Option<f64>,
    /// `cost_usd ÷` the cost of `best_peer` (null when no peer ran with at
    /// most this policy's deadline miss rate).
    pub cost_vs_best_peer: Option<f64>,
    /// The cheapest of `batch_spot`, `karpenter`, `ec2_predictive` whose
    /// deadline miss rate is at most this policy's.
    pub best_peer: Option<String>,
}

/// The peer baselines `cost_vs_best_peer` compares against.
pub const PEERS: [&str; 3] = ["batch_spot", "karpenter", "ec2_predictive"];

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
    /// The part of `usd` jobs ran on (the rest was idle or booting).
    pub busy_usd: f64,
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
            busy_usd: r6(c.busy_usd),
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
        let busy: f64 = st.cost_by_type.values().map(|c| c.busy_usd).sum();
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
            top_instance_types: top_types(st),
            busy_usd: r6(busy),
            idle_usd: r6(cost - busy),
            boot_usd: 0.0,
            lost_work_usd: r6(st.lost_work_usd),
            spot_launch_failures: st.spot_launch_failures,
            consolidations: st.consolidations,
            cost_vs_lower_bound: None,
            cost_vs_best_peer: None,
            best_peer: None,
        }
    }

    /// Estimate the boot time billed: per type and market, launches × boot
    /// delay × its mean price per instance-hour over the run.
    pub fn with_boot_estimate(
        mut self,
        st: &RunStats,
        prices: &super::prices::SimPrices,
        boot_delay_ms: i64,
    ) -> Self {
        let vcpus: std::collections::HashMap<&str, f64> = prices
            .types
            .iter()
            .map(|t| (t.name.as_str(), t.vcpus.max(1) as f64))
            .collect();
        let mut boot = 0.0;
        for ((ty, _), c) in &st.cost_by_type {
            let inst_hours = c.vcpu_hours / vcpus.get(ty.as_str()).copied().unwrap_or(1.0);
            if inst_hours > 0.0 {
                let per_hour = c.usd / inst_hours;
                boot += c.instances as f64 * boot_delay_ms as f64 / 3.6e6 * per_hour;
            }
        }
        self.boot_usd = r6(boot.min(self.idle_usd.max(0.0)));
        self
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
    /// The physical limit: every job on the cheapest capacity of the price
    /// data that fits it, spot never interrupted, perfectly packed, no idle
    /// or boot time (see `sim::bound`).
    pub lower_bound_usd: f64,
    /// The same limit on on-demand capacity only.
    pub lower_bound_on_demand_usd: f64,
    /// Demand as the trace recorded it (outstanding vCPUs) in `busy_vcpus`.
    #[serde(skip)]
    pub demand: Series,
}

impl BacktestReport {
    /// Record the trace's limits and each policy's distance to them and to
    /// the best peer with no more deadline misses.
    pub fn set_limits(&mut self, lb: super::bound::LowerBound) {
        self.lower_bound_usd = r6(lb.usd);
        self.lower_bound_on_demand_usd = r6(lb.on_demand_usd);
        let peers: Vec<(String, f64, f64)> = PEERS
            .iter()
            .filter_map(|n| {
                let p = self.policies.get(*n)?;
                Some((n.to_string(), p.cost_usd, p.deadline_miss_rate))
            })
            .collect();
        for p in self.policies.values_mut() {
            p.cost_vs_lower_bound = (lb.usd > 0.0).then(|| r6(p.cost_usd / lb.usd));
            let best = peers
                .iter()
                .filter(|(_, _, miss)| *miss <= p.deadline_miss_rate + 1e-12)
                .min_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
            p.best_peer = best.map(|b| b.0.clone());
            p.cost_vs_best_peer = best.filter(|b| b.1 > 0.0).map(|b| r6(p.cost_usd / b.1));
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serialises")
    }

    /// A fixed-width table for the terminal.
    pub fn table(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "{:<14} {:>12} {:>8} {:>7} {:>6} {:>10} {:>10} {:>6} {:>7} {:>9} {:>8} {:>10} {:>10}\n",
            "policy",
            "cost_usd",
            "vs_react",
            "vs_peer",
            "vs_lb",
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
            let ratio = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}x"));
            s.push_str(&format!(
                "{:<14} {:>12.2} {:>8} {:>7} {:>6} {:>10.4} {:>9.0}s {:>5.0}s {:>7.3} {:>4}/{:<4} {:>8} {:>10.2} {:>10.2}\n",
                name,
                p.cost_usd,
                vs,
                ratio(p.cost_vs_best_peer),
                ratio(p.cost_vs_lower_bound),
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
        s.push_str(&format!(
            "lower bound: ${:.2} (cheapest capacity, spot uninterrupted, perfectly packed, no idle or boot); on-demand only: ${:.2}\n",
            self.lower_bound_usd, self.lower_bound_on_demand_usd
        ));
        s
    }

    /// Where each policy's money went: busy against idle (boot included),
    /// lost work, on-demand share (printed after the main table).
    pub fn cost_table(&self) -> String {
        let mut s = format!(
            "{:<14} {:>12} {:>12} {:>12} {:>10} {:>10} {:>9} {:>8}\n",
            "policy",
            "busy_usd",
            "idle_usd",
            "(boot_usd)",
            "lost_usd",
            "od_share",
            "spot_fail",
            "consol"
        );
        for name in self.ordered_names() {
            let p = &self.policies[name];
            let od = p.cost_by_market.get("ON_DEMAND").copied().unwrap_or(0.0);
            let share = if p.cost_usd > 0.0 {
                od / p.cost_usd
            } else {
                0.0
            };
            s.push_str(&format!(
                "{:<14} {:>12.2} {:>12.2} {:>12.2} {:>10.2} {:>9.1}% {:>9} {:>8}\n",
                name,
                p.busy_usd,
                p.idle_usd,
                p.boot_usd,
                p.lost_work_usd,
                share * 100.0,
                p.spot_launch_failures,
                p.consolidations
            ));
        }
        s
    }

    /// The budget columns, one line per policy (printed with `--budgets`).
    pub fn budget_table(&self) -> String {
        let mut s = format!(
            "{:<14} {:>12} {:>12} {:>10} {:>8} {:>9} {:>8}\n",
            "policy", "budget_spent", "overrun_usd", "held_jobs", "preempt", "commands", "migrate"
        );
        for name in self.ordered_names() {
            let p = &self.policies[name];
            s.push_str(&format!(
                "{:<14} {:>12.2} {:>12.2} {:>10} {:>8} {:>9} {:>8}\n",
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

    /// Policy names in the order tables and charts show them.
    pub fn ordered_names(&self) -> Vec<&String> {
        let order = [
            "reactive",
            "static",
            "batch_spot",
            "karpenter",
            "ec2_predictive",
            "predictive",
            "oracle",
        ];
        let mut names: Vec<&String> = self.policies.keys().collect();
        names.sort_by_key(|n| order.iter().position(|o| o == n).unwrap_or(order.len()));
        names
    }

    /// An SVG bar per policy of where its money went: one segment per
    /// instance type and market (its [`TOP_TYPES`] dearest, then the rest),
    /// each split into busy (solid) and idle or booting (pale); spot in
    /// blues, on-demand in reds. A last bar is the trace's lower bound, so
    /// the gap to the limit shows at a glance.
    pub fn cost_bars_svg(&self) -> Result<String, String> {
        use plotters::prelude::*;
        let names = self.ordered_names();
        let rows = names.len() + 1;
        let x_max = names
            .iter()
            .map(|n| self.policies[*n].cost_usd)
            .fold(self.lower_bound_usd, f64::max)
            .max(1.0)
            * 1.02;
        let mut buf = String::new();
        {
            let h = 90 + 42 * rows as u32;
            let root = SVGBackend::with_string(&mut buf, (1100, h)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| e.to_string())?;
            let mut chart = ChartBuilder::on(&root)
                .caption(
                    "Where the money goes (USD): per instance type and market, busy (solid) and idle or booting (pale)",
                    ("sans-serif", 17),
                )
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(120)
                .build_cartesian_2d(0f64..x_max, 0f64..rows as f64)
                .map_err(|e| e.to_string())?;
            let label_of = |y: f64| -> String {
                let i = (rows as f64 - y - 0.5).round() as usize;
                if i < names.len() {
                    names[i].clone()
                } else if i == names.len() {
                    "lower bound".into()
                } else {
                    String::new()
                }
            };
            chart
                .configure_mesh()
                .disable_y_mesh()
                .y_labels(rows * 2 + 1)
                .y_label_formatter(&|y| {
                    if (y.fract() - 0.5).abs() < 1e-6 {
                        label_of(*y)
                    } else {
                        String::new()
                    }
                })
                .x_desc("USD")
                .draw()
                .map_err(|e| e.to_string())?;
            let spot = [
                RGBColor(31, 119, 180),
                RGBColor(44, 160, 200),
                RGBColor(23, 190, 207),
                RGBColor(60, 90, 170),
            ];
            let od = [
                RGBColor(214, 39, 40),
                RGBColor(255, 127, 14),
                RGBColor(200, 80, 120),
                RGBColor(170, 60, 30),
            ];
            let other = RGBColor(127, 127, 127);
            for (k, name) in names.iter().enumerate() {
                let p = &self.policies[*name];
                let y0 = (rows - 1 - k) as f64 + 0.15;
                let y1 = y0 + 0.7;
                let mut x = 0.0;
                let mut segs: Vec<(String, RGBColor, f64, f64)> = Vec::new();
                let (mut si, mut oi) = (0, 0);
                let (mut rest_usd, mut rest_busy) = (p.cost_usd, p.busy_usd);
                for t in &p.top_instance_types {
                    let c = if t.market == "SPOT" {
                        si += 1;
                        spot[(si - 1) % spot.len()]
                    } else {
                        oi += 1;
                        od[(oi - 1) % od.len()]
                    };
                    let m = if t.market == "SPOT" { "spot" } else { "od" };
                    segs.push((
                        format!("{} {m}", t.instance_type),
                        c,
                        t.busy_usd,
                        t.usd - t.busy_usd,
                    ));
                    rest_usd -= t.usd;
                    rest_busy -= t.busy_usd;
                }
                if rest_usd > 1e-6 {
                    segs.push((
                        "other".into(),
                        other,
                        rest_busy.max(0.0),
                        (rest_usd - rest_busy).max(0.0),
                    ));
                }
                for (label, c, busy, idle) in segs {
                    for (w, style) in [(busy, c.filled()), (idle, c.mix(0.3).filled())] {
                        if w <= 0.0 {
                            continue;
                        }
                        chart
                            .draw_series(std::iter::once(Rectangle::new(
                                [(x, y0), (x + w, y1)],
                                style,
                            )))
                            .map_err(|e| e.to_string())?;
                        x += w;
                    }
                    let total = busy + idle;
                    if total > x_max * 0.09 {
                        chart
                            .draw_series(std::iter::once(Text::new(
                                label,
                                (x - total + x_max * 0.004, y1 - 0.08),
                                ("sans-serif", 11).into_font().color(&WHITE),
                            )))
                            .map_err(|e| e.to_string())?;
                    }
                }
            }
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(0.0, 0.15), (self.lower_bound_usd, 0.85)],
                    RGBColor(40, 40, 40).filled(),
                )))
                .map_err(|e| e.to_string())?;
            root.present().map_err(|e| e.to_string())?;
        }
        Ok(buf)
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
    use super::*;

    #[test]
    fn best_peer_has_no_more_deadline_misses() {
        let mut r = BacktestReport::default();
        for (name, cost, miss) in [
            ("batch_spot", 10.0, 0.1),
            ("karpenter", 12.0, 0.0),
            ("ec2_predictive", 15.0, 0.0),
            ("predictive", 11.0, 0.0),
            ("static", 30.0, 0.2),
        ] {
            let p = PolicyReport {
                cost_usd: cost,
                deadline_miss_rate: miss,
                ..Default::default()
            };
            r.policies.insert(name.into(), p);
        }
        r.set_limits(crate::sim::bound::LowerBound {
            usd: 5.0,
            on_demand_usd: 20.0,
        });
        let p = &r.policies["predictive"];
        // batch_spot is cheaper but misses deadlines predictive meets.
        assert_eq!(p.best_peer.as_deref(), Some("karpenter"));
        assert_eq!(p.cost_vs_best_peer, Some(r6(11.0 / 12.0)));
        assert_eq!(p.cost_vs_lower_bound, Some(2.2));
        // A policy missing more may be compared with the cheaper peer.
        let s = &r.policies["static"];
        assert_eq!(s.best_peer.as_deref(), Some("batch_spot"));
        assert_eq!(s.cost_vs_best_peer, Some(3.0));
        assert_eq!(r.lower_bound_on_demand_usd, 20.0);
    }

    #[test]
    fn rounding_never_reports_a_negative_zero() {
        assert_eq!(super::r6(-0.0).to_string(), "0");
        assert_eq!(super::r6(-1e-9).to_string(), "0");
        assert_eq!(super::r6(1.2345678).to_string(), "1.234568");
    }
}
