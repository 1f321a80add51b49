//! Budget ledgers: per job, project and user, per period, the amount
//! allocated, the amount committed (expected cost of admitted work not yet
//! spent) and the amount spent (running instance-seconds × price).
//!
//! The ledger decides, and says why, as commands: a submission that would
//! overrun a budget is queued (QUEUE) or refused (PREEMPT of the pending job,
//! when the policy says `refuse`); when spend plus commitments overrun, the
//! scope's work is preempted, elastic jobs first and then lowest priority
//! first; queued or preempted work is resumed (RESUME) when budget frees up;
//! elastic work moves (MIGRATE) when a clearly cheaper market appears.
//!
//! Pure and deterministic: BTreeMaps only, event time only, command ids from
//! `events::command_id` over the decision's inputs. Serde-serialisable so the
//! engine can checkpoint it.

use crate::events::{
    command_id, BudgetAllocation, BudgetScope, JobCompleted, JobSubmitted, Millis,
    PreemptionAction, PreemptionCommand,
};
use crate::policy::OverBudget;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub mod file;
pub mod share;
pub use file::{BudgetFile, BudgetFileError};
use share::{Share, Usage};

const EPS: f64 = 1e-9;
const HOUR_MS: f64 = 3_600_000.0;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BudgetError {
    #[error("budget allocation {scope}:{id}: field `period`: unknown period `{period}` (expected total, day, week or month)")]
    Period {
        scope: String,
        id: String,
        period: String,
    },
    #[error(
        "budget allocation {scope}:{id}: field `usd`: must be a finite amount >= 0, got {usd}"
    )]
    Amount { scope: String, id: String, usd: f64 },
}

/// Budget periods are part of the `budget-allocation` record, so the event
/// model owns them (its decoder refuses an unknown one).
pub use crate::events::Period;

/// Expected cost of a job at a plan's `usd_per_vcpu_hour`: what the budget
/// ledger commits on admission.
pub fn expected_job_cost(vcpus: f64, runtime_s: Option<i64>, usd_per_vcpu_hour: f64) -> f64 {
    let hours = runtime_s.unwrap_or(3600).max(0) as f64 / 3600.0;
    vcpus.max(0.0) * hours * usd_per_vcpu_hour.max(0.0)
}

/// One budget: a scope and id, e.g. `project:climate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub scope: BudgetScope,
    pub id: String,
    pub period: Period,
    pub window_start: Millis,
    pub allocated: f64,
    /// Expected cost of admitted work, not yet spent.
    pub committed: f64,
    pub spent: f64,
    /// Project and user accounts: spent and committed per compute
    /// environment, which the account's owner needs to split the budget
    /// between instances (see [`share`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_env: BTreeMap<String, EnvUse>,
}

/// One environment's part of a project account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct EnvUse {
    pub spent: f64,
    pub committed: f64,
}

impl Account {
    /// Move `spent` and `committed` of the account by the given amounts,
    /// attributing them to `env` for project accounts.
    fn add(&mut self, env: &str, spent: f64, committed: f64) {
        self.spent = (self.spent + spent).max(0.0);
        self.committed = (self.committed + committed).max(0.0);
        if shared(self.scope) {
            let e = self.by_env.entry(env.to_string()).or_default();
            e.spent = (e.spent + spent).max(0.0);
            e.committed = (e.committed + committed).max(0.0);
        }
    }

    pub fn remaining(&self) -> f64 {
        self.allocated - self.spent - self.committed
    }
    pub fn overrun(&self) -> f64 {
        (self.spent + self.committed - self.allocated).max(0.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    /// Admitted, committed, not yet started.
    Admitted,
    Running,
    /// Held for budget (QUEUE).
    Queued,
    /// Stopped for budget (PREEMPT); may be resumed.
    Preempted,
    Refused,
    Done,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    pub compute_environment: String,
    pub project: String,
    pub user: String,
    pub priority: i32,
    pub elastic: bool,
    pub vcpus: f64,
    pub submitted_at: Millis,
    /// Expected cost of the whole job when admitted.
    pub expected_cost: f64,
    /// Part of `expected_cost` still committed in the job's accounts.
    pub committed: f64,
    pub spent: f64,
    pub state: JobState,
    /// Current spend rate while running (instances × price).
    pub usd_per_hour: f64,
    pub accrued_to: Millis,
}

/// What happened to a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    Admit,
    Queue,
    Refuse,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    /// The account that blocked it (`project:x`), if any.
    pub scope: Option<String>,
    pub reason: String,
    /// QUEUE for a queued job; PREEMPT (of the pending job) for a refusal.
    pub command: Option<PreemptionCommand>,
}

/// The ledger. Accounts are keyed `scope:id` (`job:…`, `project:…`, `user:…`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    pub accounts: BTreeMap<String, Account>,
    pub jobs: BTreeMap<String, JobRecord>,
    /// How far ahead `enforce` looks: a running job is counted for at least
    /// its spend rate over this window, even beyond its commitment, so a job
    /// costlier than expected is stopped *before* its scope overruns. Set it
    /// to the decision tick (the engine's bucket width); 0 disables.
    #[serde(default)]
    pub lookahead_ms: i64,
    /// Project and user allocations as announced, by account key, before any
    /// split between instances.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub announced: BTreeMap<String, f64>,
    /// Shares of project and user budgets granted to this instance's
    /// environments by their owners, by account key, as (usd, seq), the
    /// newest per environment; while split, an account's allocation is the
    /// sum of its shares.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shares: BTreeMap<String, BTreeMap<String, (f64, u64)>>,
    /// Set while project budgets are split between instances: a project
    /// with no share granted yet may spend nothing here (its work waits for
    /// the owner's first split), so two instances never both spend the
    /// whole budget at start-up.
    #[serde(default)]
    pub split: bool,
}

pub fn scope_str(s: BudgetScope) -> &'static str {
    match s {
        BudgetScope::Job => "job",
        BudgetScope::Project => "project",
        BudgetScope::User => "user",
    }
}

pub fn account_key(s: BudgetScope, id: &str) -> String {
    format!("{}:{id}", scope_str(s))
}

fn usd(x: f64) -> String {
    format!("${x:.2}")
}

fn cmd(
    now: Millis,
    job: &JobRecord,
    action: PreemptionAction,
    reason: String,
) -> PreemptionCommand {
    let a = format!("{action:?}");
    PreemptionCommand {
        command_id: command_id(&["preemption", &a, &job.job_id, &now.to_string()]),
        issued_at: now,
        job_id: job.job_id.clone(),
        compute_environment: job.compute_environment.clone(),
        action,
        reason,
    }
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn account(&self, scope: BudgetScope, id: &str) -> Option<&Account> {
        self.accounts.get(&account_key(scope, id))
    }

    /// Sets (replaces) an allocation. Changing the period restarts the
    /// window; spend within the current window is kept otherwise.
    pub fn on_allocation(&mut self, a: &BudgetAllocation) -> Result<&Account, BudgetError> {
        let period = Period::parse(a.period.as_deref()).ok_or_else(|| BudgetError::Period {
            scope: scope_str(a.scope).into(),
            id: a.id.clone(),
            period: a.period.clone().unwrap_or_default(),
        })?;
        if !(a.usd.is_finite() && a.usd >= 0.0) {
            return Err(BudgetError::Amount {
                scope: scope_str(a.scope).into(),
                id: a.id.clone(),
                usd: a.usd,
            });
        }
        let key = account_key(a.scope, &a.id);
        if !self.accounts.contains_key(&key) {
            let mut acc = Account {
                scope: a.scope,
                id: a.id.clone(),
                period,
                window_start: period.window_start(a.at),
                allocated: 0.0,
                committed: 0.0,
                spent: 0.0,
                by_env: BTreeMap::new(),
            };
            for j in self.jobs.values().filter(|j| job_scopes(j).contains(&key)) {
                acc.add(&j.compute_environment, 0.0, j.committed);
            }
            self.accounts.insert(key.clone(), acc);
        }
        let mut usd = a.usd;
        if shared(a.scope) {
            self.announced.insert(key.clone(), a.usd);
            usd = self.shared_allocation(&key);
        }
        let acc = self
            .accounts
            .get_mut(&key)
            .unwrap_or_else(|| unreachable!("inserted above"));
        if acc.period != period {
            acc.period = period;
            acc.window_start = period.window_start(a.at);
            acc.spent = 0.0;
            acc.by_env.values_mut().for_each(|e| e.spent = 0.0);
        }
        acc.allocated = usd;
        Ok(acc)
    }

    /// Decides a submission whose expected cost is `expected_cost`.
    pub fn on_submit(
        &mut self,
        job: &JobSubmitted,
        expected_cost: f64,
        over: OverBudget,
    ) -> Decision {
        let now = job.submitted_at;
        self.roll(now);
        if let Some(b) = job.budget_usd {
            let key = account_key(BudgetScope::Job, &job.job_id);
            self.accounts.entry(key).or_insert_with(|| Account {
                scope: BudgetScope::Job,
                id: job.job_id.to_string(),
                period: Period::Total,
                window_start: i64::MIN,
                allocated: b.max(0.0),
                committed: 0.0,
                spent: 0.0,
                by_env: BTreeMap::new(),
            });
        }
        let expected_cost = expected_cost.max(0.0);
        let mut rec = JobRecord {
            job_id: job.job_id.to_string(),
            compute_environment: job.compute_environment.to_string(),
            project: job.project.to_string(),
            user: job.user.to_string(),
            priority: job.priority,
            elastic: job.elasticity,
            vcpus: job.vcpus,
            submitted_at: now,
            expected_cost,
            committed: 0.0,
            spent: 0.0,
            state: JobState::Admitted,
            usd_per_hour: 0.0,
            accrued_to: now,
        };
        match self.blocking_account(&rec, expected_cost) {
            None => {
                self.commit(&mut rec, expected_cost);
                self.jobs.insert(rec.job_id.clone(), rec);
                Decision {
                    verdict: Verdict::Admit,
                    scope: None,
                    reason: format!("admitted: expected cost {}", usd(expected_cost)),
                    command: None,
                }
            }
            Some((key, remaining)) => {
                let (verdict, action, state, what) = match over {
                    OverBudget::Queue => (
                        Verdict::Queue,
                        PreemptionAction::Queue,
                        JobState::Queued,
                        "queued until budget frees up",
                    ),
                    OverBudget::Refuse => (
                        Verdict::Refuse,
                        PreemptionAction::Preempt,
                        JobState::Refused,
                        "refused by policy (over_budget = refuse)",
                    ),
                };
                let reason = format!(
                    "budget: {key} has {} left, job expects {}: {what}",
                    usd(remaining),
                    usd(expected_cost)
                );
                rec.state = state;
                let c = cmd(now, &rec, action, reason.clone());
                self.jobs.insert(rec.job_id.clone(), rec);
                Decision {
                    verdict,
                    scope: Some(key),
                    reason,
                    command: Some(c),
                }
            }
        }
    }

    /// A job started running at `usd_per_hour` (instances × price).
    pub fn on_start(&mut self, job_id: &str, at: Millis, usd_per_hour: f64) {
        if let Some(j) = self.jobs.get_mut(job_id) {
            j.state = JobState::Running;
            j.usd_per_hour = usd_per_hour.max(0.0);
            j.accrued_to = at;
        }
    }

    /// Charges running work of `env` at no less than `usd_per_vcpu_hour`
    /// from its last accrual on (call [`Ledger::accrue`] first): what a job
    /// there was found to pay, when the ledger charged less.
    pub fn raise_rates(&mut self, env: &str, usd_per_vcpu_hour: f64) {
        for j in self.jobs.values_mut() {
            if j.compute_environment == env && j.state == JobState::Running {
                j.usd_per_hour = j.usd_per_hour.max(j.vcpus * usd_per_vcpu_hour);
            }
        }
    }

    /// Charges `usd` of spend to a job's accounts (moving it from committed
    /// to spent). Unknown jobs are ignored (returns false).
    pub fn on_spend(&mut self, job_id: &str, usd_amount: f64, at: Millis) -> bool {
        self.roll(at);
        let Some(mut j) = self.jobs.remove(job_id) else {
            return false;
        };
        self.charge(&mut j, usd_amount.max(0.0));
        self.jobs.insert(j.job_id.clone(), j);
        true
    }

    /// Accrues running jobs' spend up to `now` (rate × elapsed).
    pub fn accrue(&mut self, now: Millis) {
        let ids: Vec<String> = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Running && j.accrued_to < now)
            .map(|j| j.job_id.clone())
            .collect();
        for id in ids {
            if let Some(mut j) = self.jobs.remove(&id) {
                let amount = j.usd_per_hour * (now - j.accrued_to) as f64 / HOUR_MS;
                j.accrued_to = now;
                self.charge(&mut j, amount);
                self.jobs.insert(id, j);
            }
        }
    }

    /// A job finished: accrue to its end, release what stays committed.
    pub fn on_complete(&mut self, c: &JobCompleted) {
        self.on_complete_priced(c, None);
    }

    /// A job finished and what it really cost is known (`actual_usd`, e.g.
    /// its vCPU-seconds at the price of the pool it ran on): after accruing
    /// to its end, its spend is trued up to that amount — a refund when the
    /// estimate charged while it ran was higher (queue wait, a floor rate
    /// above the spot price it got), an extra charge when it was lower. A
    /// refund never takes an account below zero in its current window.
    pub fn on_complete_priced(&mut self, c: &JobCompleted, actual_usd: Option<f64>) {
        self.roll(c.finished_at);
        if let Some(j) = self.jobs.get(c.job_id.as_str()) {
            if j.state == JobState::Running && j.accrued_to < c.finished_at {
                let mut j = self
                    .jobs
                    .remove(c.job_id.as_str())
                    .unwrap_or_else(|| unreachable!());
                let amount = j.usd_per_hour * (c.finished_at - j.accrued_to) as f64 / HOUR_MS;
                j.accrued_to = c.finished_at;
                self.charge(&mut j, amount);
                self.jobs.insert(j.job_id.clone(), j);
            }
        }
        if let Some(mut j) = self.jobs.remove(c.job_id.as_str()) {
            if let Some(actual) = actual_usd.filter(|x| x.is_finite() && *x >= 0.0) {
                let delta = actual - j.spent;
                if delta > 0.0 {
                    self.charge(&mut j, delta);
                } else if delta < 0.0 {
                    for k in job_scopes(&j) {
                        if let Some(a) = self.accounts.get_mut(&k) {
                            a.add(&j.compute_environment, delta, 0.0);
                        }
                    }
                    j.spent = actual;
                }
            }
            self.release(&mut j);
            j.state = JobState::Done;
            // Finished jobs leave the ledger; their spend stays in accounts.
        }
    }

    /// Budget enforcement at `now`: preempt work of overrun scopes (elastic
    /// first, then lowest priority, newest first), then resume held work
    /// (highest priority, oldest first) that now fits.
    pub fn enforce(&mut self, now: Millis) -> Vec<PreemptionCommand> {
        self.roll(now);
        self.accrue(now);
        let mut out = Vec::new();
        let mut touched: Vec<String> = Vec::new();
        // Spend expected within the look-ahead beyond each job's commitment,
        // summed per account in one pass over the jobs.
        let look_h = self.lookahead_ms.max(0) as f64 / HOUR_MS;
        let beyond = |j: &JobRecord| {
            if j.state == JobState::Running {
                (j.usd_per_hour * look_h - j.committed).max(0.0)
            } else {
                0.0
            }
        };
        let mut extra: BTreeMap<String, f64> = BTreeMap::new();
        if look_h > 0.0 {
            for j in self.jobs.values() {
                let x = beyond(j);
                if x > 0.0 {
                    for k in job_scopes(j) {
                        *extra.entry(k).or_default() += x;
                    }
                }
            }
        }
        let keys: Vec<String> = self.accounts.keys().cloned().collect();
        for key in keys {
            while let Some(acc) = self.accounts.get(&key) {
                let ahead = extra.get(&key).copied().unwrap_or(0.0);
                if acc.spent + acc.committed + ahead - acc.allocated <= EPS {
                    break;
                }
                let (allocated, used) = (acc.allocated, acc.spent + acc.committed + ahead);
                let victim = self
                    .jobs
                    .values()
                    .filter(|j| {
                        matches!(j.state, JobState::Running | JobState::Admitted)
                            && job_scopes(j).contains(&key)
                    })
                    .min_by(|a, b| {
                        (
                            !a.elastic,
                            a.priority,
                            std::cmp::Reverse(a.submitted_at),
                            &a.job_id,
                        )
                            .cmp(&(
                                !b.elastic,
                                b.priority,
                                std::cmp::Reverse(b.submitted_at),
                                &b.job_id,
                            ))
                    })
                    .map(|j| j.job_id.clone());
                let Some(id) = victim else { break };
                let Some(mut j) = self.jobs.remove(&id) else {
                    break;
                };
                let x = beyond(&j);
                if x > 0.0 {
                    for k in job_scopes(&j) {
                        if let Some(e) = extra.get_mut(&k) {
                            *e = (*e - x).max(0.0);
                        }
                    }
                }
                self.release(&mut j);
                j.state = JobState::Preempted;
                j.usd_per_hour = 0.0;
                let how = if j.elastic {
                    "shrinking elastic job first (keeps its progress)"
                } else {
                    "preempting lowest-priority work"
                };
                let reason = format!(
                    "budget: {key} would overrun ({} used+committed of {}): {how} (priority {})",
                    usd(used),
                    usd(allocated),
                    j.priority
                );
                out.push(cmd(now, &j, PreemptionAction::Preempt, reason));
                touched.push(id.clone());
                self.jobs.insert(id, j);
            }
        }
        // Resume held work that fits, most important first.
        let mut held: Vec<&JobRecord> = self
            .jobs
            .values()
            .filter(|j| matches!(j.state, JobState::Queued | JobState::Preempted))
            .filter(|j| !touched.contains(&j.job_id))
            .collect();
        held.sort_by(|a, b| {
            (std::cmp::Reverse(a.priority), a.submitted_at, &a.job_id).cmp(&(
                std::cmp::Reverse(b.priority),
                b.submitted_at,
                &b.job_id,
            ))
        });
        let held: Vec<String> = held.into_iter().map(|j| j.job_id.clone()).collect();
        for id in held {
            let Some(mut j) = self.jobs.remove(&id) else {
                continue;
            };
            let need = self.cost_to_finish(&j);
            if self.blocking_account(&j, need).is_none() {
                self.commit(&mut j, need);
                let was = if j.state == JobState::Queued {
                    "queued"
                } else {
                    "preempted"
                };
                j.state = JobState::Admitted;
                let reason = format!(
                    "budget freed: resuming {was} job (expected {} more)",
                    usd(need)
                );
                out.push(cmd(now, &j, PreemptionAction::Resume, reason));
            }
            self.jobs.insert(id, j);
        }
        out
    }

    /// Moves running elastic jobs of `env` to cheaper capacity when the best
    /// current rate per vCPU-hour is at least `min_saving` (fraction) below
    /// what they pay. Non-elastic jobs would lose their work, so stay.
    pub fn migrations(
        &mut self,
        now: Millis,
        env: &str,
        best_usd_per_vcpu_hour: f64,
        best_pool: &str,
        min_saving: f64,
    ) -> Vec<PreemptionCommand> {
        let mut out = Vec::new();
        for j in self.jobs.values_mut() {
            if j.compute_environment != env
                || j.state != JobState::Running
                || !j.elastic
                || j.vcpus <= 0.0
            {
                continue;
            }
            let new_rate = best_usd_per_vcpu_hour * j.vcpus;
            if new_rate < j.usd_per_hour * (1.0 - min_saving) {
                let reason = format!(
                    "cheaper capacity: {best_pool} at {}/h vs {}/h now",
                    usd(new_rate),
                    usd(j.usd_per_hour)
                );
                out.push(cmd(now, j, PreemptionAction::Migrate, reason));
                j.usd_per_hour = new_rate;
            }
        }
        out
    }

    /// What each environment has used of each project and user budget, and
    /// the expected cost of its held work, for the accounts' owners.
    pub fn usage(&self, now: Millis) -> Vec<Usage> {
        let mut wanted: BTreeMap<(String, &str), f64> = BTreeMap::new();
        for j in self.jobs.values() {
            if matches!(j.state, JobState::Queued | JobState::Preempted) {
                let cost = self.cost_to_finish(j);
                for scope in [BudgetScope::Project, BudgetScope::User] {
                    let id = if scope == BudgetScope::Project {
                        &j.project
                    } else {
                        &j.user
                    };
                    *wanted
                        .entry((account_key(scope, id), j.compute_environment.as_str()))
                        .or_default() += cost;
                }
            }
        }
        let mut out = Vec::new();
        for (key, a) in &self.accounts {
            if !shared(a.scope) {
                continue;
            }
            let mut envs: Vec<&str> = a.by_env.keys().map(String::as_str).collect();
            envs.extend(wanted.keys().filter(|(k, _)| k == key).map(|(_, e)| *e));
            envs.sort_unstable();
            envs.dedup();
            for env in envs {
                let e = a.by_env.get(env).copied().unwrap_or_default();
                let (held_usd, held_seq) = self
                    .shares
                    .get(key)
                    .and_then(|s| s.get(env))
                    .copied()
                    .unwrap_or_default();
                out.push(Usage {
                    account: key.clone(),
                    environment: env.to_string(),
                    window_start: a.window_start,
                    used_usd: e.spent + e.committed,
                    wanted_usd: wanted.get(&(key.clone(), env)).copied().unwrap_or(0.0),
                    held_usd,
                    held_seq,
                    at: now,
                });
            }
        }
        out
    }

    /// Take a share of a project or user budget granted to one of this
    /// instance's environments: while budgets are split, the account's
    /// allocation here is the sum of its shares, so `enforce` holds or stops
    /// work to fit it.
    pub fn apply_share(&mut self, s: &Share) {
        let held = self.shares.entry(s.account.clone()).or_default();
        if held
            .get(&s.environment)
            .is_some_and(|&(_, seq)| seq >= s.seq)
        {
            return; // older than the one held
        }
        held.insert(s.environment.clone(), (s.usd.max(0.0), s.seq));
        self.reallocate(&s.account);
    }

    /// Whether project budgets are split between instances (see
    /// [`Ledger::split`]). Off, every project has its whole allocation and
    /// shares are forgotten: the instance owns all of every account's work.
    pub fn set_split(&mut self, split: bool) {
        self.split = split;
        if !split {
            self.shares.clear();
        }
        let keys: Vec<String> = self.announced.keys().cloned().collect();
        for k in keys {
            self.reallocate(&k);
        }
    }

    /// A shared account's allocation here: the announced amount, or while
    /// budgets are split, the sum of the shares granted (none yet: nothing).
    fn shared_allocation(&self, key: &str) -> f64 {
        if !self.split {
            return self.announced.get(key).copied().unwrap_or(0.0);
        }
        self.shares
            .get(key)
            .map_or(0.0, |s| s.values().map(|&(usd, _)| usd).sum())
    }

    fn reallocate(&mut self, key: &str) {
        let usd = self.shared_allocation(key);
        if let Some(a) = self.accounts.get_mut(key) {
            a.allocated = usd;
        }
    }

    /// Sum of spend beyond allocation over all accounts (the backtest's
    /// `budget_overrun_usd`).
    pub fn overrun_usd(&self) -> f64 {
        self.accounts
            .values()
            .map(|a| (a.spent - a.allocated).max(0.0))
            .sum()
    }

    /// USD/h the given accounts can still sustain: for each account, its
    /// remaining budget over the hours left in its window; the tightest
    /// wins. None when none of them has a budget.
    pub fn headroom_usd_per_h(&self, keys: &[String], now: Millis) -> Option<f64> {
        keys.iter()
            .filter_map(|k| self.accounts.get(k))
            .map(|a| a.remaining().max(0.0) / a.period.hours_left(now))
            .reduce(f64::min)
    }

    fn cost_to_finish(&self, j: &JobRecord) -> f64 {
        if j.elastic {
            (j.expected_cost - j.spent).max(0.0)
        } else {
            j.expected_cost
        }
    }

    /// The first of the job's accounts (job, project, user) that cannot
    /// take `amount` more, with its remaining budget.
    fn blocking_account(&self, j: &JobRecord, amount: f64) -> Option<(String, f64)> {
        job_scopes(j).into_iter().find_map(|k| {
            let a = self.accounts.get(&k)?;
            (a.remaining() + EPS < amount).then(|| (k, a.remaining()))
        })
    }

    fn commit(&mut self, j: &mut JobRecord, amount: f64) {
        for k in job_scopes(j) {
            if let Some(a) = self.accounts.get_mut(&k) {
                a.add(&j.compute_environment, 0.0, amount);
            }
        }
        j.committed += amount;
    }

    fn release(&mut self, j: &mut JobRecord) {
        for k in job_scopes(j) {
            if let Some(a) = self.accounts.get_mut(&k) {
                a.add(&j.compute_environment, 0.0, -j.committed);
            }
        }
        j.committed = 0.0;
    }

    fn charge(&mut self, j: &mut JobRecord, amount: f64) {
        let from_commit = amount.min(j.committed);
        for k in job_scopes(j) {
            if let Some(a) = self.accounts.get_mut(&k) {
                a.add(&j.compute_environment, amount, -from_commit);
            }
        }
        j.committed -= from_commit;
        j.spent += amount;
    }

    /// Starts new windows for periodic accounts whose window has passed.
    fn roll(&mut self, now: Millis) {
        for a in self.accounts.values_mut() {
            let w = a.period.window_start(now);
            if w > a.window_start {
                a.window_start = w;
                a.spent = 0.0;
                a.by_env.values_mut().for_each(|e| e.spent = 0.0);
            }
        }
    }
}

/// Budgets that span environments, and so are split between instances: a
/// job's own budget lives in the one environment the job runs in.
fn shared(scope: BudgetScope) -> bool {
    matches!(scope, BudgetScope::Project | BudgetScope::User)
}

fn job_scopes(j: &JobRecord) -> [String; 3] {
    [
        account_key(BudgetScope::Job, &j.job_id),
        account_key(BudgetScope::Project, &j.project),
        account_key(BudgetScope::User, &j.user),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::JobStatus;

    const DAY_MS: i64 = 86_400_000;

    fn job(id: &str, prio: i32, elastic: bool, at: Millis) -> JobSubmitted {
        JobSubmitted {
            job_id: id.into(),
            submitted_at: at,
            compute_environment: "ricc".into(),
            job_type: "batch".into(),
            project: "p".into(),
            user: "u".into(),
            priority: prio,
            vcpus: 4.0,
            memory_mib: 4096,
            gpus: 0,
            estimated_runtime_s: Some(3600),
            budget_usd: None,
            deadline: None,
            elasticity: elastic,
        }
    }

    /// Two instances each own one environment of project `p` (budget $100)
    /// and each gets $160 of work. Alone, each would admit $100; with the
    /// owner splitting the budget through usage and share records, the two
    /// together admit no more than $100, and held work is what they want.
    #[test]
    fn shares_keep_two_instances_within_one_project_budget() {
        let mut a = Ledger::new();
        let mut b = Ledger::new();
        alloc(&mut a, 100.0);
        alloc(&mut b, 100.0);
        a.set_split(true);
        b.set_split(true);
        let mut owner = share::Owner::default();
        let mut admitted = 0.0;
        for i in 0..8 {
            for (l, env) in [(&mut a, "a"), (&mut b, "b")] {
                let mut j = job(&format!("{env}{i}"), 1, false, i * 1000);
                j.compute_environment = env.into();
                if l.on_submit(&j, 20.0, OverBudget::Queue).verdict == Verdict::Admit {
                    admitted += 20.0;
                }
            }
            // One exchange round: usage to the owner, shares back.
            for u in a.usage(i * 1000).into_iter().chain(b.usage(i * 1000)) {
                owner.on_usage(u);
            }
            for s in owner.shares(|k| a.announced.get(k).copied(), i as u64 * 1000 + 1) {
                if s.environment == "a" {
                    a.apply_share(&s)
                } else {
                    b.apply_share(&s)
                }
            }
        }
        assert!(admitted <= 100.0 + 1e-9, "admitted ${admitted}");
        assert!(admitted >= 80.0, "the budget is used: ${admitted}");
        let pa = a.account(BudgetScope::Project, "p").unwrap().allocated;
        let pb = b.account(BudgetScope::Project, "p").unwrap().allocated;
        assert!((pa + pb - 100.0).abs() < 1e-6, "shares {pa} + {pb}");
        // Without the exchange, the same work admits $200.
        let (mut c, mut d) = (Ledger::new(), Ledger::new());
        alloc(&mut c, 100.0);
        alloc(&mut d, 100.0);
        let mut alone = 0.0;
        for i in 0..8 {
            for l in [&mut c, &mut d] {
                if l.on_submit(&job(&format!("x{i}"), 1, false, i), 20.0, OverBudget::Queue)
                    .verdict
                    == Verdict::Admit
                {
                    alone += 20.0;
                }
            }
        }
        assert_eq!(alone, 200.0);
    }

    fn alloc(l: &mut Ledger, usd: f64) {
        l.on_allocation(&BudgetAllocation {
            at: 0,
            scope: BudgetScope::Project,
            id: "p".into(),
            usd,
            period: None,
        })
        .unwrap();
    }

    #[test]
    fn submissions_over_budget_queue_or_refuse() {
        let mut l = Ledger::new();
        alloc(&mut l, 10.0);
        let d = l.on_submit(&job("a", 0, false, 1), 6.0, OverBudget::Queue);
        assert_eq!(d.verdict, Verdict::Admit);
        let d = l.on_submit(&job("b", 0, false, 2), 6.0, OverBudget::Queue);
        assert_eq!(d.verdict, Verdict::Queue);
        assert_eq!(d.scope.as_deref(), Some("project:p"));
        let c = d.command.unwrap();
        assert_eq!(c.action, PreemptionAction::Queue);
        assert!(c.reason.contains("project:p"));
        let d = l.on_submit(&job("c", 0, false, 3), 6.0, OverBudget::Refuse);
        assert_eq!(d.verdict, Verdict::Refuse);
        let acc = l.account(BudgetScope::Project, "p").unwrap();
        assert_eq!(acc.committed, 6.0);
        // a job's own budget_usd is a job-scope budget
        let mut j = job("d", 0, false, 4);
        j.budget_usd = Some(1.0);
        let mut l2 = Ledger::new();
        assert_eq!(
            l2.on_submit(&j, 2.0, OverBudget::Queue).verdict,
            Verdict::Queue
        );
    }

    #[test]
    fn completion_frees_budget_and_resumes_by_priority() {
        let mut l = Ledger::new();
        alloc(&mut l, 10.0);
        l.on_submit(&job("a", 0, false, 1), 8.0, OverBudget::Queue);
        l.on_start("a", 1, 4.0);
        l.on_submit(&job("lo", -1, false, 2), 5.0, OverBudget::Queue);
        l.on_submit(&job("hi", 5, false, 3), 5.0, OverBudget::Queue);
        assert!(l.enforce(10).is_empty());
        // a finishes after 30 min: spent $2, releases the rest
        l.on_complete(&JobCompleted {
            job_id: "a".into(),
            compute_environment: "ricc".into(),
            started_at: 1,
            finished_at: 1 + 1_800_000,
            status: JobStatus::Succeeded,
            instance_type: None,
            market: None,
            region: None,
            vcpu_seconds: 0.0,
            max_memory_mib: None,
        });
        let acc = l.account(BudgetScope::Project, "p").unwrap();
        assert!((acc.spent - 2.0).abs() < 1e-9 && acc.committed == 0.0);
        let cmds = l.enforce(1_800_002);
        // $8 left: only one $5 job fits, the high-priority one
        assert_eq!(cmds.len(), 1);
        assert_eq!(cmds[0].job_id, "hi");
        assert_eq!(cmds[0].action, PreemptionAction::Resume);
    }

    #[test]
    fn completion_with_a_known_cost_trues_up_the_estimate() {
        let mut l = Ledger::new();
        alloc(&mut l, 10.0);
        for id in ["a", "b"] {
            l.on_submit(&job(id, 0, false, 0), 4.0, OverBudget::Queue);
            l.on_start(id, 0, 4.0); // $4/h estimated
        }
        let done = |id: &str| JobCompleted {
            job_id: id.into(),
            compute_environment: "ricc".into(),
            started_at: 0,
            finished_at: 3_600_000,
            status: JobStatus::Succeeded,
            instance_type: None,
            market: None,
            region: None,
            vcpu_seconds: 0.0,
            max_memory_mib: None,
        };
        // a ran on spot: $1 instead of the $4 charged while it ran.
        l.on_complete_priced(&done("a"), Some(1.0));
        let acc = l.account(BudgetScope::Project, "p").unwrap();
        assert!((acc.spent - 1.0).abs() < 1e-9, "{}", acc.spent);
        // b cost more than estimated: charged in full.
        l.on_complete_priced(&done("b"), Some(6.0));
        let acc = l.account(BudgetScope::Project, "p").unwrap();
        assert!((acc.spent - 7.0).abs() < 1e-9 && acc.committed == 0.0);
    }

    #[test]
    fn overrun_preempts_elastic_first_then_lowest_priority() {
        let mut l = Ledger::new();
        alloc(&mut l, 100.0);
        for (id, prio, el) in [
            ("hi", 5, false),
            ("lo", -2, false),
            ("el", 3, true),
            ("mid", 0, false),
        ] {
            assert_eq!(
                l.on_submit(&job(id, prio, el, 1), 20.0, OverBudget::Queue)
                    .verdict,
                Verdict::Admit
            );
            l.on_start(id, 1, 25.0);
        }
        // The budget is cut to $45: $80 committed must shrink by >= $35.
        alloc(&mut l, 45.0);
        let cmds = l.enforce(2);
        let ids: Vec<&str> = cmds.iter().map(|c| c.job_id.as_str()).collect();
        assert_eq!(ids, vec!["el", "lo"]);
        assert!(cmds.iter().all(|c| c.action == PreemptionAction::Preempt));
        assert!(cmds[0].reason.contains("elastic"));
        let acc = l.account(BudgetScope::Project, "p").unwrap();
        assert!(acc.spent + acc.committed <= 45.0 + 1e-9);
        // ids are deterministic
        let mut l2 = l.clone();
        assert_eq!(l2.enforce(2), l.clone().enforce(2));
        // Spend accrues beyond expectations: after an hour hi and mid have
        // spent $25 each ($50 > $45): the lower priority goes first.
        let later = l.enforce(2 + 3_600_000);
        let ids: Vec<&str> = later.iter().map(|c| c.job_id.as_str()).collect();
        assert_eq!(ids, vec!["mid", "hi"]);
        assert!(l.overrun_usd() > 0.0);
    }

    #[test]
    fn lookahead_stops_costly_work_before_the_overrun() {
        let mut l = Ledger::new();
        l.lookahead_ms = 300_000;
        alloc(&mut l, 10.0);
        // expected $1, but it burns $60/h: $5 per 5-minute tick
        l.on_submit(&job("burner", 0, false, 0), 1.0, OverBudget::Queue);
        l.on_start("burner", 0, 60.0);
        assert!(l.enforce(300_000).is_empty()); // $5 spent, $5 ahead: fits
        let cmds = l.enforce(360_000); // $6 spent + $5 ahead > $10
        assert_eq!(cmds.len(), 1);
        assert_eq!(cmds[0].action, PreemptionAction::Preempt);
        assert_eq!(l.overrun_usd(), 0.0);
    }

    #[test]
    fn migrate_moves_elastic_to_cheaper_market() {
        let mut l = Ledger::new();
        l.on_submit(&job("el", 0, true, 1), 1.0, OverBudget::Queue);
        l.on_start("el", 1, 0.8);
        l.on_submit(&job("rigid", 0, false, 1), 1.0, OverBudget::Queue);
        l.on_start("rigid", 1, 0.8);
        let cmds = l.migrations(5, "ricc", 0.05, "aws/us-east-1/-/c5.xlarge/SPOT", 0.2);
        assert_eq!(cmds.len(), 1);
        assert_eq!(cmds[0].job_id, "el");
        assert_eq!(cmds[0].action, PreemptionAction::Migrate);
        assert!(l.migrations(6, "ricc", 0.05, "x", 0.2).is_empty());
    }

    #[test]
    fn periods_roll_and_bad_periods_fail() {
        assert_eq!(Period::Day.window_start(DAY_MS + 5), DAY_MS);
        // 1970-01-05 was a Monday
        assert_eq!(Period::Week.window_start(6 * DAY_MS), 4 * DAY_MS);
        assert_eq!(Period::Month.window_start(40 * DAY_MS), 31 * DAY_MS);
        let mut l = Ledger::new();
        let e = l
            .on_allocation(&BudgetAllocation {
                at: 0,
                scope: BudgetScope::User,
                id: "x".into(),
                usd: 1.0,
                period: Some("fortnight".into()),
            })
            .unwrap_err();
        assert!(e.to_string().contains("period"));
        l.on_allocation(&BudgetAllocation {
            at: 0,
            scope: BudgetScope::Project,
            id: "p".into(),
            usd: 10.0,
            period: Some("day".into()),
        })
        .unwrap();
        l.on_submit(&job("a", 0, false, 0), 9.0, OverBudget::Queue);
        l.on_spend("a", 9.0, 10);
        assert_eq!(
            l.on_submit(&job("b", 0, false, 20), 5.0, OverBudget::Queue)
                .verdict,
            Verdict::Queue
        );
        // next day: spend resets, b resumes
        let cmds = l.enforce(DAY_MS + 1);
        assert_eq!(cmds.len(), 1);
        assert_eq!(cmds[0].action, PreemptionAction::Resume);
        let ser = serde_json::to_string(&l).unwrap();
        let back: Ledger = serde_json::from_str(&ser).unwrap();
        assert_eq!(back, l);
    }
}
