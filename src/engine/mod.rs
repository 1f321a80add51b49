//! The one brain: turns input events into commands. The live service (Kafka)
//! and the backtest feed it the same events in the same order and get the same
//! commands, byte for byte, because it reads no clock and does no I/O:
//! decisions happen on event-time ticks, when the watermark closes a bucket.
//!
//! On each tick, per compute environment (sorted, so output order is stable):
//! forecast demand over the horizon, ask the planner for capacity and an
//! instance mix, and emit a [`ScalingCommand`] when the decision changed.

use crate::budget::{expected_job_cost, Ledger, Verdict};
use crate::events::{
    command_id, Command, Event, Millis, PreemptionAction, QuantileValue, ScalingCommand,
};
use crate::forecast::{Forecast, Forecaster, History};
use crate::pricing::{Catalog, PriceBook};
use crate::state::{Applied, DemandState, StateConfig, StateCounters, VCPU};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

mod memo;
mod port;
mod quiet;
mod report;
pub mod spans;
mod spot;

pub use port::{CapacityPlanner, PlanDecision, PlanRequest, PreviousPlan};
pub use report::{BudgetLine, TickForecast, TickPlan, TickReport};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EngineConfig {
    pub state: StateConfig,
    /// Forecast horizon in buckets.
    pub horizon_buckets: usize,
    /// Quantile levels forecast (ascending).
    pub quantiles: Vec<f64>,
    /// Buckets of history handed to the forecaster at most.
    pub max_history_buckets: usize,
    /// Provisioning lead time (instance boot and scheduler reaction): work
    /// whose deadline falls within it puts the environment under pressure.
    pub lead_time_ms: i64,
    /// USD per vCPU-hour assumed for a job's expected cost before the
    /// environment has a plan (about on-demand general purpose).
    pub default_usd_per_vcpu_hour: f64,
    /// The least USD per vCPU-hour budgets are charged, whatever the plan's
    /// rate: work planned on spot may still run on on-demand (a reclaimed
    /// job's retry, a job too long to be worth spot, a burst beyond the
    /// mix), and a budget charged below what the work really costs would be
    /// overrun before the ledger notices. About on-demand general purpose.
    #[serde(default = "default_budget_floor")]
    pub budget_floor_usd_per_vcpu_hour: f64,
}

/// How long a dear price a completed job paid keeps raising the rate budgets
/// are charged in its environment (see `Engine::learn_paid_rate`): a day,
/// the shortest budget window.
pub const PAID_RATE_MEMORY_MS: Millis = 86_400_000;

fn default_budget_floor() -> f64 {
    0.048
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            state: StateConfig::default(),
            horizon_buckets: 12,
            quantiles: vec![0.1, 0.5, 0.9],
            max_history_buckets: 7 * 288,
            lead_time_ms: 10 * 60_000,
            default_usd_per_vcpu_hour: 0.048,
            budget_floor_usd_per_vcpu_hour: default_budget_floor(),
        }
    }
}

/// Counters the engine keeps (exposed as metrics).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EngineCounters {
    pub events: u64,
    pub ticks: u64,
    pub scaling_commands: u64,
    pub preemption_commands: u64,
    pub rejected_budget_allocations: u64,
    /// Input seen again with the same content (at-least-once delivery):
    /// changed nothing.
    #[serde(default)]
    pub duplicates: u64,
    /// Input seen again with different content: refused (see [`Handled::Conflict`]).
    #[serde(default)]
    pub conflicts: u64,
}

/// What [`Engine::handle`] did with an event. Input arrives at least once
/// (a producer's retry, a replay), so a copy of a record already applied
/// must change nothing, and a record that contradicts one already applied
/// (same job id, or same budget scope and time, with other content) is
/// refused rather than silently changing a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    Applied,
    /// A copy of a record already applied: nothing changed.
    Duplicate,
    /// Contradicts a record already applied; refused, nothing changed. The
    /// reason names the record and the field (for the dead-letter topic).
    Conflict(String),
}

/// Everything that must survive a restart (checkpointed with input offsets).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineState {
    pub demand: DemandState,
    pub book: PriceBook,
    /// Last decision per environment, to emit only changes.
    last: BTreeMap<String, (i64, i64, i64, String)>,
    previous: BTreeMap<String, PreviousPlan>,
    usd_per_vcpu_hour: BTreeMap<String, f64>,
    /// Per environment, the dearest USD per vCPU-hour a completed job
    /// recently paid above the rate budgets are charged, and when (see
    /// [`Engine::learn_paid_rate`]).
    #[serde(default)]
    paid_usd_per_vcpu_hour: BTreeMap<String, (f64, Millis)>,
    /// Budget allocations applied, by account and time (`<account>@<ms>`),
    /// so a copy is told from a contradicting record.
    #[serde(default)]
    allocations: BTreeMap<String, (f64, Option<String>)>,
    /// Budgets. Jobs are tracked once any budget exists (before that there
    /// is nothing to enforce, and the hot path stays cheap).
    pub ledger: Ledger,
    pub counters: EngineCounters,
    /// Spot risk learned from spot signals (see [`spot`]); left out of the
    /// checkpoint while nothing was learned.
    #[serde(default, skip_serializing_if = "spot::SpotLearner::is_empty")]
    spot: spot::SpotLearner,
}

pub struct Engine {
    cfg: EngineConfig,
    st: EngineState,
    catalog: Arc<Catalog>,
    forecaster: Arc<dyn Forecaster>,
    planner: Arc<dyn CapacityPlanner>,
    ticks: Vec<Millis>,
    /// The span of the last decision tick, kept open so the adapter that
    /// publishes its commands can nest its `publish` span under it.
    tick_span: tracing::Span,
    /// Decisions reused instead of planned (see [`memo`]).
    plans: memo::PlanMemo,
    /// Forecasts of quiet ticks, reused (see [`quiet`]).
    quiet: quiet::QuietForecasts,
    /// The environments' names, kept between ticks.
    env_names: EnvNames,
}

/// The demand state's environment names, listed again only when it gained
/// a series (series are never removed): a decision tick walks them without
/// allocating a list of names.
#[derive(Default)]
struct EnvNames {
    names: Vec<String>,
    /// How many series the state had when `names` was listed.
    series: usize,
}

impl EnvNames {
    /// The names, taken out (put them back in `names` when done).
    fn take(&mut self, demand: &DemandState) -> Vec<String> {
        if demand.series_count() != self.series {
            self.series = demand.series_count();
            self.names = demand
                .environments()
                .into_iter()
                .map(str::to_string)
                .collect();
        }
        std::mem::take(&mut self.names)
    }
}

impl Engine {
    pub fn new(
        cfg: EngineConfig,
        catalog: Arc<Catalog>,
        forecaster: Arc<dyn Forecaster>,
        planner: Arc<dyn CapacityPlanner>,
    ) -> Self {
        let st = EngineState {
            demand: DemandState::new(cfg.state.clone()),
            book: PriceBook::new(),
            last: BTreeMap::new(),
            previous: BTreeMap::new(),
            usd_per_vcpu_hour: BTreeMap::new(),
            paid_usd_per_vcpu_hour: BTreeMap::new(),
            allocations: BTreeMap::new(),
            // Look one decision tick ahead: spend accrues between ticks, so
            // work is stopped before, not after, its scope overruns.
            ledger: Ledger {
                lookahead_ms: cfg.state.bucket_ms,
                ..Ledger::default()
            },
            counters: EngineCounters::default(),
            spot: spot::SpotLearner::default(),
        };
        Self::restore(cfg, st, catalog, forecaster, planner)
    }

    /// Resume from a checkpointed state.
    pub fn restore(
        cfg: EngineConfig,
        st: EngineState,
        catalog: Arc<Catalog>,
        forecaster: Arc<dyn Forecaster>,
        planner: Arc<dyn CapacityPlanner>,
    ) -> Self {
        Engine {
            cfg,
            st,
            catalog,
            forecaster,
            planner,
            ticks: Vec::new(),
            tick_span: tracing::Span::none(),
            plans: memo::PlanMemo::default(),
            quiet: Default::default(),
            env_names: EnvNames::default(),
        }
    }

    /// Decisions of idle ticks taken from the one before instead of
    /// planning again (see [`CapacityPlanner::is_idle`]); they are
    /// also counted in [`EngineCounters::ticks`].
    pub fn plans_reused(&self) -> u64 {
        self.plans.idle_reused
    }

    /// Decisions of busy environments taken from their last plan, all of
    /// whose inputs were the same and whose promise had not run out (see
    /// [`CapacityPlanner::plan_until`]).
    pub fn busy_plans_reused(&self) -> u64 {
        self.plans.busy_reused
    }

    /// Forecasts of quiet ticks answered from one made at the same time of
    /// the week instead of forecasting again (see [`quiet`]).
    pub fn forecasts_reused(&self) -> u64 {
        self.quiet.reused()
    }

    /// The span of the last decision tick (see [`spans`]);
    /// a disabled span before the first tick.
    pub fn tick_span(&self) -> &tracing::Span {
        &self.tick_span
    }

    pub fn state(&self) -> &EngineState {
        &self.st
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// How many plans built their offers and how many reused those of an
    /// earlier plan (see [`CapacityPlanner::offers_built_and_reused`]).
    pub fn offers_built_and_reused(&self) -> (u64, u64) {
        self.planner.offers_built_and_reused()
    }

    pub fn counters(&self) -> &EngineCounters {
        &self.st.counters
    }

    pub fn state_counters(&self) -> &StateCounters {
        self.st.demand.counters()
    }

    /// Swap the forecaster (e.g. after retraining); state is untouched.
    pub fn set_forecaster(&mut self, f: Arc<dyn Forecaster>) {
        self.forecaster = f;
        self.quiet.clear();
    }

    /// Apply one input event; append any commands it triggers. A copy of a
    /// record already applied changes nothing; a contradicting one is
    /// refused (see [`Handled`]).
    pub fn handle(&mut self, ev: &Event, out: &mut Vec<Command>) -> Handled {
        self.handle_reporting(ev, out, None)
    }

    /// [`Engine::handle`], and when `reports` is given, a [`TickReport`]
    /// appended for each decision tick the event closed. Reports cost a
    /// little (names copied), so only adapters that read them ask.
    pub fn handle_reporting(
        &mut self,
        ev: &Event,
        out: &mut Vec<Command>,
        mut reports: Option<&mut Vec<TickReport>>,
    ) -> Handled {
        self.st.counters.events += 1;
        let seen = match ev {
            // Checked and applied at once (one lookup of the pool); the
            // demand state below reads no prices.
            Event::PriceTick(p) if self.st.book.apply_unless_held(p) => Handled::Applied,
            Event::PriceTick(_) => Handled::Duplicate,
            _ => self.seen_before(ev),
        };
        if seen != Handled::Applied {
            if let Handled::Conflict(_) = seen {
                self.st.counters.conflicts += 1;
            } else {
                self.st.counters.duplicates += 1;
            }
            return seen;
        }
        self.ticks.clear();
        let mut ticks = std::mem::take(&mut self.ticks);
        let applied = self.st.demand.apply(ev, &mut ticks);
        if !matches!(ev, Event::PriceTick(_) | Event::SpotSignal(_)) {
            self.quiet.forget_runs();
        }
        // A job the state already knew changed nothing there; nor here.
        let copy = self.job_copy(ev, applied);
        match ev {
            _ if copy.is_some() => {}
            Event::PriceTick(_) => {} // applied above
            Event::SpotSignal(s) => self.st.spot.on_signal(s),
            Event::BudgetAllocation(a) => match self.st.ledger.on_allocation(a) {
                Ok(_) => {
                    let seen = (a.usd, a.period.clone());
                    self.st.allocations.insert(allocation_key(a), seen);
                }
                Err(_) => self.st.counters.rejected_budget_allocations += 1,
            },
            Event::JobSubmitted(j)
                if applied == Applied::Accepted && !self.st.ledger.accounts.is_empty() =>
            {
                let rate = self.env_rate(&j.compute_environment, j.submitted_at);
                let cost = expected_job_cost(j.vcpus, j.estimated_runtime_s, rate);
                let over = self.planner.over_budget(&j.compute_environment);
                let d = self.st.ledger.on_submit(j, cost, over);
                // prescale provisions ahead of demand, so admitted work is
                // charged as running from submission (queue wait included:
                // an upper bound on the time it is billed). Held work is not
                // charged until it is resumed.
                if d.verdict == Verdict::Admit {
                    self.st
                        .ledger
                        .on_start(&j.job_id, j.submitted_at, j.vcpus * rate);
                }
                if let Some(c) = d.command {
                    // Held work is not demand to provision for.
                    self.st.demand.set_held(&j.job_id, true, j.submitted_at);
                    self.st.counters.preemption_commands += 1;
                    out.push(Command::Preemption(c));
                }
            }
            Event::JobCompleted(c) if applied == Applied::Accepted => {
                let actual = self.completion_cost(c);
                self.st.ledger.on_complete_priced(c, actual);
                if let Some(usd) = actual {
                    self.learn_paid_rate(c, usd);
                }
                self.st.spot.on_completed(c, &self.catalog);
            }
            _ => {}
        }
        for &t in &ticks {
            self.decide(t, out, reports.as_deref_mut());
        }
        self.ticks = ticks;
        copy.unwrap_or(Handled::Applied)
    }

    /// Whether a budget allocation is a copy of one already applied (same
    /// account, same time: same content) or contradicts it. Price ticks
    /// are the book's to tell ([`PriceBook::apply_unless_held`]), job
    /// events the demand state's.
    fn seen_before(&self, ev: &Event) -> Handled {
        match ev {
            Event::BudgetAllocation(a) => match self.st.allocations.get(&allocation_key(a)) {
                None => Handled::Applied,
                Some((usd, period)) if usd.to_bits() == a.usd.to_bits() && *period == a.period => {
                    Handled::Duplicate
                }
                Some((usd, period)) => Handled::Conflict(format!(
                    "BudgetAllocation {}@{}: field `{}`: {} differs from the {} applied before",
                    crate::budget::account_key(a.scope, &a.id),
                    a.at,
                    if usd.to_bits() != a.usd.to_bits() {
                        "usd"
                    } else {
                        "period"
                    },
                    if usd.to_bits() != a.usd.to_bits() {
                        a.usd.to_string()
                    } else {
                        format!("{:?}", a.period)
                    },
                    if usd.to_bits() != a.usd.to_bits() {
                        usd.to_string()
                    } else {
                        format!("{period:?}")
                    },
                )),
            },
            Event::SpotSignal(s) if self.st.spot.is_copy(s) => Handled::Duplicate,
            _ => Handled::Applied,
        }
    }

    /// What the demand state said about a job event it did not apply.
    fn job_copy(&mut self, ev: &Event, applied: Applied) -> Option<Handled> {
        let (what, id) = match ev {
            Event::JobSubmitted(j) => ("JobSubmitted", &j.job_id),
            Event::JobCompleted(c) => ("JobCompleted", &c.job_id),
            _ => return None,
        };
        match applied {
            Applied::Accepted | Applied::Ignored => None,
            Applied::Duplicate => {
                self.st.counters.duplicates += 1;
                Some(Handled::Duplicate)
            }
            Applied::Conflict(field) => {
                self.st.counters.conflicts += 1;
                Some(Handled::Conflict(format!(
                    "{what} {id}: field `{field}` differs from the record with this job id applied before"
                )))
            }
        }
    }

    /// End of input: close every open bucket and decide on each tick.
    pub fn finish(&mut self, out: &mut Vec<Command>) {
        self.finish_reporting(out, None);
    }

    /// [`Engine::finish`], with a [`TickReport`] per tick when asked.
    pub fn finish_reporting(
        &mut self,
        out: &mut Vec<Command>,
        mut reports: Option<&mut Vec<TickReport>>,
    ) {
        let mut ticks = Vec::new();
        self.st.demand.flush(&mut ticks);
        for t in ticks {
            self.decide(t, out, reports.as_deref_mut());
        }
    }

    /// Forecast one environment's vCPU demand from its closed history.
    pub fn forecast_environment(&self, env: &str) -> Option<Forecast> {
        self.forecast_from_history(env).map(|(f, _)| f)
    }

    /// [`Engine::forecast_environment`], and where the forecast starts (the
    /// end of its history).
    fn forecast_from_history(&self, env: &str) -> Option<(Forecast, Millis)> {
        self.with_history(env, |h| {
            let f = self
                .forecaster
                .forecast(h, self.cfg.horizon_buckets, &self.cfg.quantiles);
            (f, h.end())
        })
    }

    /// `f` of what the forecaster is shown of `env` (see [`Engine::history`]).
    fn with_history<R>(&self, env: &str, f: impl FnOnce(&History<'_>) -> R) -> Option<R> {
        let (start, values) = self.history(env)?;
        Some(f(&History {
            key: env,
            start,
            bucket_ms: self.cfg.state.bucket_ms,
            values: &values,
        }))
    }

    /// The start and values of what the forecaster is shown of `env`: its
    /// last `max_history_buckets` of closed vCPU history (at least one
    /// bucket, so an environment with history but a `max_history_buckets`
    /// of 0 still forecasts, from nothing). `None` before any bucket closed.
    fn history(&self, env: &str) -> Option<(Millis, Vec<f64>)> {
        let max = self.cfg.max_history_buckets;
        let (start, mut values) = self
            .st
            .demand
            .environment_history_tail(env, VCPU, max.max(1));
        if values.is_empty() {
            return None;
        }
        let off = values.len() - values.len().min(max);
        values.drain(..off);
        Some((start + off as i64 * self.cfg.state.bucket_ms, values))
    }

    /// Every environment's forecast at a decision tick, in `envs`' order:
    /// answered from a quiet forecast of the same time of the week where it
    /// is one (see [`quiet`]), the others in one
    /// [`Forecaster::forecast_batch`] call; a quiet forecast of a settled
    /// environment is kept. The origin is the end of the closed history,
    /// which is the tick's time but for the earlier ticks of an event that
    /// closed several buckets. `None`: no closed history yet.
    fn forecasts_at_tick(&mut self, envs: &[String]) -> Vec<Option<(Arc<Forecast>, Millis)>> {
        let closed = self.st.demand.closed_end();
        let mut got = Vec::with_capacity(envs.len());
        let mut asked: Vec<(usize, Millis, Vec<f64>)> = Vec::new();
        for env in envs {
            let kept = closed.and_then(|o| self.quiet.get(env, o).map(|f| (f, o)));
            if kept.is_none() {
                if let Some((start, values)) = self.history(env) {
                    asked.push((got.len(), start, values));
                }
            }
            got.push(kept);
        }
        let bucket_ms = self.cfg.state.bucket_ms;
        let histories: Vec<History<'_>> = asked
            .iter()
            .map(|(i, start, values)| History {
                key: &envs[*i],
                start: *start,
                bucket_ms,
                values,
            })
            .collect();
        let (horizon, levels) = (self.cfg.horizon_buckets, &self.cfg.quantiles);
        let forecasts = self.forecaster.forecast_batch(&histories, horizon, levels);
        for ((i, _, _), (h, f)) in asked.iter().zip(histories.iter().zip(forecasts)) {
            let f = Arc::new(f);
            let settled = Some(h.end()) == closed && self.st.demand.settled(h.key);
            if let Some(run) = settled
                .then(|| self.forecaster.quiet_ahead(h, horizon, levels))
                .flatten()
            {
                self.quiet.learn(h.key, h.end(), run, bucket_ms, &f);
            }
            got[*i] = Some((f, h.end()));
        }
        got
    }

    fn decide(
        &mut self,
        now: Millis,
        out: &mut Vec<Command>,
        reports: Option<&mut Vec<TickReport>>,
    ) {
        let tick = spans::tick(now, "");
        let entered = tick.enter();
        let n0 = out.len();
        self.st.counters.ticks += 1;
        self.st.spot.advance(now);
        if !self.st.ledger.accounts.is_empty() {
            let _budget = spans::budget().entered();
            self.budget_tick(now, out);
        }
        let mut report = reports.is_some().then(|| TickReport {
            at: now,
            forecasts: Vec::new(),
            plans: Vec::new(),
            commands: n0..n0,
            budget_actions: out.len() - n0,
            budgets: Vec::new(),
        });
        self.decide_environments(now, out, report.as_mut());
        spans::record_commands(&tick, out.len() - n0);
        drop(entered);
        self.tick_span = tick;
        if let (Some(mut r), Some(reports)) = (report, reports) {
            r.commands = n0..out.len();
            r.budgets = self.budget_lines();
            reports.push(r);
        }
    }

    /// Every budget account as it stands, for a [`TickReport`].
    fn budget_lines(&self) -> Vec<BudgetLine> {
        self.st
            .ledger
            .accounts
            .values()
            .map(|a| BudgetLine {
                scope: a.scope,
                id: a.id.clone(),
                allocated: a.allocated,
                committed: a.committed,
                spent: a.spent,
            })
            .collect()
    }

    /// Accrue spend and enforce budgets at a tick.
    fn budget_tick(&mut self, now: Millis, out: &mut Vec<Command>) {
        self.st.ledger.accrue(now);
        for c in self.st.ledger.enforce(now) {
            match c.action {
                PreemptionAction::Resume => {
                    // Resumed work is charged as running again from now,
                    // and is demand again.
                    let rate = self.env_rate(&c.compute_environment, now);
                    let vcpus = self.st.ledger.jobs.get(&c.job_id).map_or(0.0, |j| j.vcpus);
                    self.st.ledger.on_start(&c.job_id, now, vcpus * rate);
                    self.st.demand.set_held(&c.job_id, false, now);
                }
                PreemptionAction::Preempt | PreemptionAction::Queue => {
                    self.st.demand.set_held(&c.job_id, true, now);
                }
                PreemptionAction::Migrate => {}
            }
            self.st.counters.preemption_commands += 1;
            out.push(Command::Preemption(c));
        }
    }

    fn decide_environments(
        &mut self,
        now: Millis,
        out: &mut Vec<Command>,
        mut report: Option<&mut TickReport>,
    ) {
        // Taken out while the tick runs (deciding needs `&mut self`), so a
        // tick allocates no list of names.
        let envs = self.env_names.take(&self.st.demand);
        let forecasts = spans::forecast(envs.len()).in_scope(|| self.forecasts_at_tick(&envs));
        for (env, f) in envs.iter().zip(forecasts) {
            if let Some((forecast, origin)) = f {
                self.decide_environment(env, (forecast, origin), now, out, report.as_deref_mut());
            }
        }
        self.env_names.names = envs;
    }

    /// One environment's plan from its forecast, and (when the plan changed) its command.
    fn decide_environment(
        &mut self,
        env: &str,
        (forecast, origin): (Arc<Forecast>, Millis),
        now: Millis,
        out: &mut Vec<Command>,
        report: Option<&mut TickReport>,
    ) {
        let _plan = spans::plan().entered();
        let summary = self
            .st
            .demand
            .environment_summary(env, now, self.cfg.lead_time_ms);
        let headroom = self.budget_headroom(env, now);
        let budgets = !self.st.ledger.accounts.is_empty();
        let d = self.plans.plan_or_reuse(
            self.planner.as_ref(),
            budgets,
            &PlanRequest {
                compute_environment: env,
                now,
                bucket_ms: self.cfg.state.bucket_ms,
                forecast: &forecast,
                outstanding: &summary,
                book: &self.st.book,
                catalog: &self.catalog,
                budget_headroom_usd_per_h: headroom,
                previous: self.st.previous.get(env).copied(),
                spot_risk: self.st.spot.book(),
            },
            &forecast,
        );
        self.st.remember_plan(env, now, &d);
        self.st.spot.commanded(env, &d.instance_mix);
        let changed = !self.st.last.get(env).is_some_and(|s| same_decision(s, &d));
        if let Some(r) = report {
            r.plans.push(TickPlan {
                compute_environment: env.to_string(),
                min_vcpus: d.min_vcpus,
                desired_vcpus: d.desired_vcpus,
                max_vcpus: d.max_vcpus,
                usd_per_vcpu_hour: d.usd_per_vcpu_hour,
                command: changed.then_some(out.len()),
            });
            r.forecasts.push(TickForecast {
                compute_environment: env.to_string(),
                origin,
                model: self.forecaster.name().to_string(),
                forecast: Forecast::clone(&forecast),
            });
        }
        if changed {
            let sig = (d.min_vcpus, d.desired_vcpus, d.max_vcpus, mix_signature(&d));
            self.st.last.insert(env.to_string(), sig);
            self.st.counters.scaling_commands += 1;
            let d = d.into_owned();
            out.push(Command::Scaling(scaling_command(env, now, d, &forecast)));
        }
    }
}

impl EngineState {
    /// Keep `d` as `env`'s previous plan (raised at `now` unless it asks for
    /// no more than the one before) and its vCPU-hour rate, updating the
    /// entries in place once they exist.
    fn remember_plan(&mut self, env: &str, now: Millis, d: &PlanDecision) {
        match self.previous.get_mut(env) {
            Some(p) => {
                if p.desired_vcpus < d.desired_vcpus {
                    p.raised_at = now;
                }
                p.desired_vcpus = d.desired_vcpus;
            }
            None => {
                let p = PreviousPlan {
                    desired_vcpus: d.desired_vcpus,
                    raised_at: now,
                };
                self.previous.insert(env.to_string(), p);
            }
        }
        if d.usd_per_vcpu_hour > 0.0 {
            match self.usd_per_vcpu_hour.get_mut(env) {
                Some(r) => *r = d.usd_per_vcpu_hour,
                None => {
                    self.usd_per_vcpu_hour
                        .insert(env.to_string(), d.usd_per_vcpu_hour);
                }
            }
        }
    }
}

/// What [`EngineState::last`] keeps of a decision's instance mix, to tell
/// a changed decision (and so a command) from a repeated one.
fn mix_signature(d: &PlanDecision) -> String {
    let mut s = String::new();
    write_mix(&mut s, d).expect("writing to a String cannot fail");
    s
}

fn write_mix(w: &mut impl std::fmt::Write, d: &PlanDecision) -> std::fmt::Result {
    for a in &d.instance_mix {
        write!(
            w,
            "{}:{}:{}:{};",
            a.instance_type, a.market, a.region, a.count
        )?;
    }
    Ok(())
}

/// Whether `d` is the decision `last` signed: the same vCPUs and the same
/// [`mix_signature`], compared as it is written, without writing it out
/// (most ticks repeat the decision before).
fn same_decision(last: &(i64, i64, i64, String), d: &PlanDecision) -> bool {
    /// Matches what is written against `rest`, consuming it.
    struct Against<'a>(&'a str);
    impl std::fmt::Write for Against<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0 = self.0.strip_prefix(s).ok_or(std::fmt::Error)?;
            Ok(())
        }
    }
    let (min, desired, max, mix) = last;
    let mut rest = Against(mix);
    (*min, *desired, *max) == (d.min_vcpus, d.desired_vcpus, d.max_vcpus)
        && write_mix(&mut rest, d).is_ok()
        && rest.0.is_empty()
}

/// The command a changed decision becomes; its `forecast` is the first
/// forecast step, its id derived from (kind, environment, tick time).
fn scaling_command(env: &str, now: Millis, d: PlanDecision, forecast: &Forecast) -> ScalingCommand {
    let first_step = forecast.values.first().cloned().unwrap_or_default();
    ScalingCommand {
        command_id: command_id(&["scale", env, &now.to_string()]),
        issued_at: now,
        compute_environment: env.into(),
        min_vcpus: d.min_vcpus,
        desired_vcpus: d.desired_vcpus,
        max_vcpus: d.max_vcpus,
        instance_mix: d.instance_mix,
        constraints: d.constraints,
        forecast: forecast
            .quantiles
            .iter()
            .zip(first_step)
            .map(|(&quantile, vcpus)| QuantileValue { quantile, vcpus })
            .collect(),
        reason: d.reason,
    }
}

/// Where [`EngineState::allocations`] keeps an allocation.
fn allocation_key(a: &crate::events::BudgetAllocation) -> String {
    format!("{}@{}", crate::budget::account_key(a.scope, &a.id), a.at)
}

/// Project budgets shared between instances (see [`crate::budget::share`]).
impl Engine {
    /// What this engine's environments have used of each project and user
    /// budget;
    /// empty when no budget is set.
    pub fn budget_usage(&self) -> Vec<crate::budget::share::Usage> {
        if self.st.ledger.accounts.is_empty() {
            return Vec::new();
        }
        let now = self.st.demand.watermark().unwrap_or(0);
        self.st.ledger.usage(now)
    }

    /// A project or user budget's allocation as announced (what its owner
    /// splits), by account key (`project:…`, `user:…`).
    pub fn budget_allocation(&self, account: &str) -> Option<f64> {
        self.st.ledger.announced.get(account).copied()
    }

    /// Whether project budgets are split with other instances (this one
    /// owns only some environments); see [`crate::budget::Ledger::split`].
    pub fn set_budget_split(&mut self, split: bool) {
        self.st.ledger.set_split(split);
    }

    /// Take a share granted to one of this engine's environments; the next
    /// decision tick enforces it.
    pub fn apply_share(&mut self, s: &crate::budget::share::Share) {
        self.st.ledger.apply_share(s);
    }
}

impl Engine {
    /// USD per vCPU-hour the ledger charges work in `env` at `now`: the
    /// current plan's (the configured default before the first plan), never
    /// below `budget_floor_usd_per_vcpu_hour`, nor below what a job of the
    /// environment paid within the last [`PAID_RATE_MEMORY_MS`].
    fn env_rate(&self, env: &str, now: Millis) -> f64 {
        let paid = match self.st.paid_usd_per_vcpu_hour.get(env) {
            Some(&(rate, at)) if now - at <= PAID_RATE_MEMORY_MS => rate,
            _ => 0.0,
        };
        self.planned_rate(env).max(paid)
    }

    /// The plan's rate for `env`, floored (see [`Engine::env_rate`]).
    fn planned_rate(&self, env: &str) -> f64 {
        self.st
            .usd_per_vcpu_hour
            .get(env)
            .copied()
            .unwrap_or(self.cfg.default_usd_per_vcpu_hour)
            .max(self.cfg.budget_floor_usd_per_vcpu_hour)
    }

    /// A completion that cost `usd` says what a vCPU-hour of its
    /// environment's capacity really costs. The ledger cannot tell where a
    /// running job is until it ends, so when that is dearer than the rate it
    /// charges, any running job may be on such capacity too (on the whole
    /// RICC trace, one-vCPU jobs of a daily budget ran for days on
    /// on-demand `u7i-12tb.224xlarge` at $0.140 per vCPU-hour while the
    /// ledger charged $0.048, and overran a day by $1.00): running work of
    /// the environment is re-rated to it now, and new work charged at it
    /// for [`PAID_RATE_MEMORY_MS`]. Completions true each job up to what it
    /// really cost, so work on cheaper capacity gets the difference back.
    fn learn_paid_rate(&mut self, c: &crate::events::JobCompleted, usd: f64) {
        let hours = c.vcpu_seconds / 3600.0;
        if hours <= 0.0 || !usd.is_finite() {
            return;
        }
        let (env, now, rate) = (&c.compute_environment, c.finished_at, usd / hours);
        if rate <= self.env_rate(env, now) + 1e-12 {
            return;
        }
        self.st
            .paid_usd_per_vcpu_hour
            .insert(env.to_string(), (rate, now));
        self.st.ledger.accrue(now);
        self.st.ledger.raise_rates(env, rate);
    }

    /// What a finished job cost, when its completion says where it ran:
    /// its vCPU-seconds at the per-vCPU price of that pool as of its end
    /// (spot: the mean over the region's zones; on-demand and reserved: the
    /// on-demand price). None when the pool or the type is unknown; the
    /// ledger then keeps its running estimate.
    fn completion_cost(&self, c: &crate::events::JobCompleted) -> Option<f64> {
        if self.st.ledger.accounts.is_empty() || c.vcpu_seconds <= 0.0 {
            return None;
        }
        let (ty, market, region) = (c.instance_type.as_deref()?, c.market?, c.region.as_deref()?);
        let spec = self.catalog.spec(ty).filter(|s| s.vcpus > 0.0)?;
        let price = match market {
            crate::events::Market::Spot => {
                self.st
                    .book
                    .region_price(region, ty, market, c.finished_at)?
            }
            _ => self
                .st
                .book
                .region_price(region, ty, crate::events::Market::OnDemand, c.finished_at)
                .or_else(|| self.catalog.ondemand_price(region, ty))?,
        };
        Some(c.vcpu_seconds / 3600.0 * price / spec.vcpus)
    }

    /// The budget headroom of the projects and users with live work in
    /// `env` — work held by a budget neither runs nor spends, so it caps
    /// nothing. None (no cap) when no live work is under a project or user
    /// budget, or when some live work is under none: the cap is on the whole
    /// environment's capacity, and a shared environment capped at one
    /// project's headroom starves everyone else's work and, through AWS
    /// Batch's `maxvCpus` (exceeded by at most one instance), forces wide
    /// jobs onto single huge instances (on the whole RICC trace, three
    /// `u7i-12tb.224xlarge` on-demand instances kept busy for months). The
    /// ledger still holds and stops each budgeted job itself.
    fn budget_headroom(&self, env: &str, now: Millis) -> Option<f64> {
        use crate::budget::account_key;
        use crate::events::BudgetScope;
        if self.st.ledger.accounts.is_empty() {
            return None;
        }
        let mut keys: Vec<String> = Vec::new();
        for o in self.st.demand.outstanding_jobs() {
            if o.job.compute_environment != env || o.held {
                continue;
            }
            let before = keys.len();
            for k in [
                account_key(BudgetScope::Project, &o.job.project),
                account_key(BudgetScope::User, &o.job.user),
            ] {
                if self.st.ledger.accounts.contains_key(&k) {
                    keys.push(k);
                }
            }
            if keys.len() == before {
                return None;
            }
        }
        keys.sort_unstable();
        keys.dedup();
        self.st.ledger.headroom_usd_per_h(&keys, now)
    }
}

#[cfg(test)]
mod tests;
