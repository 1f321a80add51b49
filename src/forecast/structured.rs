//! Structured demand forecast: demand one hour ahead is mostly the jobs the
//! state already holds, so forecast *those* from how long jobs like them
//! stay, and forecast only what is unknown — new arrivals.
//!
//! Demand in a bucket is the time-averaged size of the jobs outstanding
//! (submitted, not completed) during it (see [`super::series`]). At a
//! forecast origin `t` it splits exactly into
//!
//! - **R** — jobs outstanding at `t` that are still outstanding later. The
//!   state knows each one's size, submission time and requested walltime,
//!   but not whether it has started (the events carry no start), so the
//!   model is the *sojourn* (submission → completion, queue wait included)
//!   survival function `S(d) = P(D > d)`, fitted by Kaplan–Meier per
//!   environment and class of requested walltime (no request is its own
//!   class: the "learned runtime distribution" where nothing was asked).
//!   A job of age `a` is still there `x` later with probability
//!   `S(a + x) / S(a)`.
//! - **A** — jobs submitted after `t` (arrivals): the unknown part. Forecast
//!   as an empirical distribution of the arrival paths `A_1..A_H` realised
//!   at past origins (the same time of day over the last two weeks, plus the
//!   last two hours, because batch arrivals follow the working day and come
//!   in bursts). A past path carries the sizes, the burstiness and how long
//!   new jobs stay all at once, with no parametric assumption.
//!
//! The two are combined by simulation: each sample path draws every large
//! job's completion from its conditional survival, adds the many small
//! jobs as a normal with their exact mean and variance (a sum of hundreds of
//! independent Bernoulli-sized terms), and adds one sampled arrival path.
//! Quantiles per step are the empirical quantiles of the paths. The random
//! stream is seeded from the series key and the origin, so a forecast is a
//! pure function of its inputs.

use super::{sorted_quantile, tidy_rows, Forecast, Forecaster, History, Known};
use crate::events::{Event, Millis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap};

/// One job of a trace, as the demand series counts it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub environment: String,
    pub submitted_at: Millis,
    /// `None`: never completed in the data (counts to the end, as the
    /// series does).
    pub finished_at: Option<Millis>,
    /// vCPU, memory MiB, GPUs (indexed like [`super::series::Metric::ALL`]).
    pub size: [f64; 3],
    /// Requested walltime (`estimated_runtime_s`), when the job gave one.
    pub requested_s: Option<i64>,
    /// The submitting user ([`user_key`]).
    pub user: u64,
}

/// A job outstanding at a forecast origin, in one series' unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActiveJob {
    pub submitted_at: Millis,
    pub size: f64,
    pub requested_s: Option<i64>,
    /// vCPUs (the size class, whatever the series' unit).
    pub vcpus: f64,
    pub user: u64,
}

/// A stable key for a user name (FNV-1a).
pub fn user_key(user: &str) -> u64 {
    fnv(user.bytes())
}

fn fnv(bytes: impl Iterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Jobs of a trace: the first submission per id, its completion (the
/// state keeps the first of each too). A completion before its submission
/// counts as completing at submission.
pub fn job_records(events: &[Event]) -> Vec<JobRecord> {
    let mut idx: HashMap<&str, usize> = HashMap::new();
    let mut out: Vec<JobRecord> = Vec::new();
    let mut done: HashMap<&str, Millis> = HashMap::new();
    for ev in events {
        match ev {
            Event::JobSubmitted(j) => {
                if idx.contains_key(j.job_id.as_str()) {
                    continue;
                }
                idx.insert(j.job_id.as_str(), out.len());
                out.push(JobRecord {
                    environment: j.compute_environment.to_string(),
                    submitted_at: j.submitted_at,
                    finished_at: None,
                    size: [j.vcpus, j.memory_mib as f64, f64::from(j.gpus)],
                    requested_s: j.estimated_runtime_s.filter(|&s| s > 0),
                    user: user_key(&j.user),
                });
            }
            Event::JobCompleted(c) => {
                done.entry(c.job_id.as_str()).or_insert(c.finished_at);
            }
            _ => {}
        }
    }
    for (id, f) in done {
        if let Some(&i) = idx.get(id) {
            out[i].finished_at = Some(f.max(out[i].submitted_at));
        }
    }
    out.sort_by_key(|j| j.submitted_at);
    out
}

/// Kaplan–Meier survival function of sojourn durations (ms), with a
/// table on a fine grid for the many lookups of the normal part.
#[derive(Debug, Clone, PartialEq)]
pub struct Survival {
    /// Distinct event times, ascending.
    times: Vec<i64>,
    /// `S` just after each event time.
    surv: Vec<f64>,
    /// Completed (uncensored) durations it was fitted on.
    pub events: usize,
    /// `table[g] = S(g·step_ms)` up to the table's end (empty: none).
    step_ms: i64,
    table: Vec<f64>,
}

impl Survival {
    /// Fit from `(duration, completed)` pairs; `completed = false` is a
    /// right-censored duration (still outstanding when observation ended).
    pub fn fit(obs: &mut [(i64, bool)]) -> Self {
        Self::fit_tabulated(obs, 0, 0)
    }

    /// As [`Survival::fit`], plus a table every `step_ms` up to `max_ms`.
    pub fn fit_tabulated(obs: &mut [(i64, bool)], step_ms: i64, max_ms: i64) -> Self {
        // at equal times, events before censorings (the KM convention)
        obs.sort_by_key(|&(d, e)| (d, !e));
        let mut at_risk = obs.len() as f64;
        let (mut times, mut surv) = (Vec::new(), Vec::new());
        let mut s = 1.0;
        let mut events = 0;
        let mut i = 0;
        while i < obs.len() {
            let d = obs[i].0;
            let (mut dead, mut gone) = (0.0, 0.0);
            while i < obs.len() && obs[i].0 == d {
                if obs[i].1 {
                    dead += 1.0;
                }
                gone += 1.0;
                i += 1;
            }
            if dead > 0.0 {
                s *= 1.0 - dead / at_risk;
                times.push(d);
                surv.push(s);
                events += dead as usize;
            }
            at_risk -= gone;
        }
        let mut out = Self {
            times,
            surv,
            events,
            step_ms,
            table: Vec::new(),
        };
        if step_ms > 0 {
            out.table = (0..=max_ms / step_ms)
                .map(|g| out.at(g * step_ms))
                .collect();
        }
        out
    }

    /// `S(d)` from the table, linear between its points (exact beyond it).
    fn at_fast(&self, d: i64) -> f64 {
        if self.step_ms > 0 && d >= 0 {
            let g = (d / self.step_ms) as usize;
            if g + 1 < self.table.len() {
                let w = (d % self.step_ms) as f64 / self.step_ms as f64;
                return self.table[g] * (1.0 - w) + self.table[g + 1] * w;
            }
        }
        self.at(d)
    }

    /// Remaining time `x` of a job of age `a` at draw `u ∈ [0, 1)`: the
    /// first completion time `T > a` with `S(T) <= u·S(a)` (inverse-CDF
    /// sampling of `D − a | D > a`, exact on the Kaplan–Meier steps).
    /// `None` when the data has no completion that late (it stays).
    pub fn residual(&self, a: i64, u: f64) -> Option<i64> {
        let sa = self.at(a);
        if sa <= 0.0 {
            return None;
        }
        let thr = u * sa;
        let i = self.surv.partition_point(|&v| v > thr);
        self.times.get(i).map(|&t| (t - a).max(0))
    }

    /// `P(D > d)`.
    pub fn at(&self, d: i64) -> f64 {
        match self.times.partition_point(|&t| t <= d) {
            0 => 1.0,
            i => self.surv[i - 1],
        }
    }

    /// `P(D > a + x | D > a)`; 1 when nothing observed outlived `a` (a job
    /// older than every completed one is assumed to stay).
    pub fn conditional(&self, a: i64, x: i64) -> f64 {
        let sa = self.at(a);
        if sa <= 0.0 {
            1.0
        } else {
            (self.at(a + x) / sa).clamp(0.0, 1.0)
        }
    }
}

/// Upper bounds (s) of the requested-walltime classes; class 0 is "no
/// request", class `i + 1` is "at most `WALLTIME_CLASSES[i]`", the last
/// class everything longer.
const WALLTIME_CLASSES: [i64; 6] = [900, 3_600, 4 * 3_600, 12 * 3_600, 86_400, 3 * 86_400];
const CLASSES: usize = WALLTIME_CLASSES.len() + 2;

/// Class of a requested walltime.
pub fn walltime_class(requested_s: Option<i64>) -> usize {
    match requested_s {
        None => 0,
        Some(r) => 1 + WALLTIME_CLASSES.partition_point(|&b| b < r),
    }
}

/// Size class of a job by vCPUs (powers of 4: ≤ 1, ≤ 4, …, ≤ 1024, more).
pub fn size_class(vcpus: f64) -> usize {
    let mut c = 0;
    let mut b = 1.0;
    while vcpus > b && c < 6 {
        b *= 4.0;
        c += 1;
    }
    c
}

/// One sojourn observation: walltime class, size class, user, duration,
/// completed (else censored).
type Obs = (usize, usize, u64, i64, bool);

/// Survival functions of one environment (or of all): per walltime class,
/// per (user, walltime class) and (size class, walltime class) where those
/// have enough completions, and pooled.
#[derive(Debug, Clone, PartialEq)]
struct ClassSurvival {
    classes: Vec<Option<Survival>>,
    by_user: HashMap<(u64, usize), Survival>,
    by_size: HashMap<(usize, usize), Survival>,
    pooled: Survival,
}

/// Fitting settings shared by every stratum.
#[derive(Debug, Clone, Copy)]
struct FitSettings {
    min_events: usize,
    step_ms: i64,
    max_ms: i64,
}

impl FitSettings {
    /// Fit, tabulating only large samples (small ones have few steps, and
    /// the exact lookup is as fast as the table's).
    fn fit(&self, o: &mut [(i64, bool)]) -> Survival {
        if o.len() > 2_000 {
            Survival::fit_tabulated(o, self.step_ms, self.max_ms)
        } else {
            Survival::fit(o)
        }
    }

    /// Fit each group with enough completions.
    fn fit_groups<K: std::hash::Hash + Eq>(
        &self,
        groups: HashMap<K, Vec<(i64, bool)>>,
    ) -> HashMap<K, Survival> {
        groups
            .into_iter()
            .filter(|(_, o)| o.iter().filter(|x| x.1).count() >= self.min_events)
            .map(|(k, mut o)| (k, self.fit(&mut o)))
            .collect()
    }
}

impl ClassSurvival {
    fn fit(obs: &[Obs], set: FitSettings) -> Self {
        let mut by: Vec<Vec<(i64, bool)>> = vec![Vec::new(); CLASSES];
        let mut users: HashMap<(u64, usize), Vec<(i64, bool)>> = HashMap::new();
        let mut sizes: HashMap<(usize, usize), Vec<(i64, bool)>> = HashMap::new();
        let mut all = Vec::with_capacity(obs.len());
        for &(wc, sc, user, d, e) in obs {
            let wc = wc.min(CLASSES - 1);
            by[wc].push((d, e));
            users.entry((user, wc)).or_default().push((d, e));
            sizes.entry((sc, wc)).or_default().push((d, e));
            all.push((d, e));
        }
        let classes = by
            .iter_mut()
            .map(|o| Some(set.fit(o)).filter(|s| s.events >= set.min_events))
            .collect();
        Self {
            classes,
            by_user: set.fit_groups(users),
            by_size: set.fit_groups(sizes),
            pooled: set.fit(&mut all),
        }
    }

    fn class(&self, wc: usize) -> Option<&Survival> {
        self.classes.get(wc).and_then(Option::as_ref)
    }
}

/// Settings of the structured forecaster.
#[derive(Debug, Clone, PartialEq)]
pub struct StructuredConfig {
    /// Sample paths per forecast.
    pub paths: usize,
    /// Jobs simulated one by one (the largest); the rest enter as a normal.
    pub exact_jobs: usize,
    /// Past arrival paths considered: this many days back...
    pub arrival_days: i64,
    /// ... at the origin's time of day ± this much...
    pub arrival_tod_ms: i64,
    /// ... plus every origin in the last this-many ms.
    pub arrival_recent_ms: i64,
    /// Completed jobs a class needs for its own survival function.
    pub min_class_events: usize,
    /// Keep only this many of the candidate past origins: those whose
    /// arrivals in the hour before them were closest to the arrivals in
    /// the hour before this origin (analogues: bursts go on, quiet spells
    /// stay quiet). 0 = all candidates.
    pub arrival_analogs: usize,
    /// Prefer the survival function of the job's user (then of its size
    /// class) within its walltime class, where it has `min_class_events`
    /// completions: users run similar jobs, and large jobs run longer.
    pub by_user: bool,
    pub by_size: bool,
    /// Arrivals answer completions: per step, `A_k = β_k·D_k + ε_k`, with
    /// `D_k` the demand of the outstanding jobs completed by step `k`,
    /// `β_k` fitted by least squares through the origin on the candidate
    /// past origins, and `ε` sampled from their residual paths. Off:
    /// arrivals independent of completions (`β = 0`).
    pub arrival_response: bool,
    /// Fit on the jobs submitted this long before the fitting time (0: all
    /// of them).
    pub fit_window_ms: i64,
    /// Grid of the survival tables the normal part reads (and how finely
    /// a bucket is split for its moments).
    pub survival_step_ms: i64,
    /// Tables reach this far; longer sojourns are looked up exactly.
    pub survival_table_ms: i64,
}

impl Default for StructuredConfig {
    fn default() -> Self {
        Self {
            paths: 400,
            exact_jobs: 48,
            arrival_days: 14,
            arrival_tod_ms: 3_600_000,
            arrival_recent_ms: 2 * 3_600_000,
            min_class_events: 30,
            arrival_analogs: 0,
            by_user: true,
            by_size: true,
            arrival_response: true,
            fit_window_ms: 0,
            survival_step_ms: 60_000,
            survival_table_ms: 30 * super::DAY_MS,
        }
    }
}

/// The structured forecaster: sojourn survival per environment and class,
/// fitted on jobs before a cut; arrivals from the [`Known`] view at each
/// call. Without a [`Known`] view (a caller that has only the series) it
/// forecasts persistence with the empirical lag-`h` errors.
#[derive(Debug, Clone)]
pub struct Structured {
    pub cfg: StructuredConfig,
    by_env: BTreeMap<String, ClassSurvival>,
    global: ClassSurvival,
    fallback: super::naive::Naive,
}

impl Structured {
    /// Fit the survival functions on the jobs submitted before `cut`
    /// (a job still outstanding at `cut` is censored there, so nothing after
    /// the cut is seen).
    pub fn fit(jobs: &[JobRecord], cut: Millis, cfg: StructuredConfig) -> Self {
        let from = match cfg.fit_window_ms {
            0 => Millis::MIN,
            w => cut.saturating_sub(w),
        };
        let mut per_env: BTreeMap<&str, Vec<Obs>> = BTreeMap::new();
        let mut all = Vec::new();
        for j in jobs
            .iter()
            .filter(|j| j.submitted_at < cut && j.submitted_at >= from)
        {
            let (end, done) = match j.finished_at {
                Some(f) if f <= cut => (f, true),
                _ => (cut, false),
            };
            let o = (
                walltime_class(j.requested_s),
                size_class(j.size[0]),
                j.user,
                end - j.submitted_at,
                done,
            );
            per_env.entry(j.environment.as_str()).or_default().push(o);
            all.push(o);
        }
        let set = FitSettings {
            min_events: cfg.min_class_events,
            step_ms: cfg.survival_step_ms,
            max_ms: cfg.survival_table_ms,
        };
        let fit = |o: &[Obs]| ClassSurvival::fit(o, set);
        let by_env = per_env
            .into_iter()
            .map(|(e, o)| (e.to_string(), fit(&o)))
            .collect();
        Self {
            global: fit(&all),
            by_env,
            cfg,
            fallback: super::naive::Naive::default(),
        }
    }

    /// The most specific survival function with enough data: the user's,
    /// the size class's, the walltime class's (the environment's, then
    /// all environments'), the environment's pooled one.
    fn survival<'s>(&'s self, env: Option<&'s ClassSurvival>, j: &ActiveJob) -> &'s Survival {
        let wc = walltime_class(j.requested_s);
        let sc = size_class(j.vcpus);
        let from_env = env.and_then(|m| {
            let u = self
                .cfg
                .by_user
                .then(|| m.by_user.get(&(j.user, wc)))
                .flatten();
            let s = self.cfg.by_size.then(|| m.by_size.get(&(sc, wc))).flatten();
            u.or(s).or_else(|| m.class(wc))
        });
        from_env
            .or_else(|| self.global.class(wc))
            .unwrap_or_else(|| env.map_or(&self.global.pooled, |m| &m.pooled))
    }

    /// Each outstanding job's size, survival function and age at `origin`.
    fn exact_jobs<'s>(
        &'s self,
        env: &str,
        jobs: &[ActiveJob],
        origin: Millis,
    ) -> Vec<ExactJob<'s>> {
        let m = self.by_env.get(env);
        jobs.iter()
            .filter(|j| j.size > 0.0)
            .map(|j| ExactJob {
                size: j.size,
                survival: self.survival(m, j),
                age: (origin - j.submitted_at).max(0),
            })
            .collect()
    }

    /// Rows of `known.arrivals` the arrival part samples from.
    fn arrival_candidates(&self, known: &Known<'_>, origin: Millis, bucket_ms: i64) -> Vec<usize> {
        let day = super::DAY_MS;
        let from = origin - self.cfg.arrival_days * day;
        let mut out = Vec::new();
        for i in 0..known.arrivals.len() {
            let o = known.arrivals_start + i as i64 * bucket_ms;
            if o < from || o >= origin {
                continue;
            }
            let d = (origin - o).rem_euclid(day);
            let tod = d.min(day - d);
            if tod <= self.cfg.arrival_tod_ms || origin - o <= self.cfg.arrival_recent_ms {
                out.push(i);
            }
        }
        self.analogues(known, out)
    }

    /// The `arrival_analogs` candidates whose preceding arrivals (the last
    /// value of the path one horizon earlier: demand at the origin of the
    /// jobs submitted in the horizon before it) are closest to the current
    /// one's (the newest row is the path one horizon before this origin).
    fn analogues(&self, known: &Known<'_>, mut rows: Vec<usize>) -> Vec<usize> {
        let k = self.cfg.arrival_analogs;
        let Some(h) = known.arrivals.last().map(Vec::len) else {
            return rows;
        };
        if k == 0 || rows.len() <= k || h == 0 {
            return rows;
        }
        let feature = |i: usize| i.checked_sub(h).map(|j| known.arrivals[j][h - 1]);
        let Some(now) = known.arrivals.last().and_then(|r| r.last().copied()) else {
            return rows;
        };
        rows.retain(|&i| feature(i).is_some());
        rows.sort_by(|&a, &b| {
            let da = (feature(a).unwrap_or(0.0) - now).abs();
            let db = (feature(b).unwrap_or(0.0) - now).abs();
            da.total_cmp(&db).then(b.cmp(&a))
        });
        rows.truncate(k);
        rows
    }
}

/// A job simulated one by one: its completion is drawn from its
/// survival function given its age.
#[derive(Debug, Clone, Copy)]
pub struct ExactJob<'a> {
    pub size: f64,
    pub survival: &'a Survival,
    pub age: i64,
}

/// Conditional survival of a job of age `a`, `sub` points per bucket over
/// `horizon` buckets (`horizon·sub + 1` values, the first 1), from the
/// survival table.
fn survival_grid(j: &ExactJob<'_>, bucket_ms: i64, sub: usize, horizon: usize) -> Vec<f64> {
    let sa = j.survival.at_fast(j.age);
    let n = horizon * sub;
    (0..=n)
        .map(|i| {
            if sa <= 0.0 {
                1.0
            } else {
                let x = i as i64 * bucket_ms / sub as i64;
                (j.survival.at_fast(j.age + x) / sa).min(1.0)
            }
        })
        .collect()
}

/// Mean and second moment of a job's time-averaged share of each bucket,
/// from its conditional survival on a grid of `sub` points per bucket
/// (linear between points). The share `c` of bucket `k` is the part of the
/// bucket before the completion, so `E[c] = (1/Δ)∫ S` over the bucket and
/// `E[c²] = (2/Δ²)∫ (x − x_k) S(x) dx`, both exact for a piecewise linear
/// `S` (trapezoid and the closed form of a linear times a linear).
pub fn share_moments(s: &[f64], sub: usize) -> Vec<(f64, f64)> {
    let sub = sub.max(1);
    let horizon = (s.len().saturating_sub(1)) / sub;
    let r = sub as f64;
    (0..horizon)
        .map(|k| {
            let (mut m, mut m2) = (0.0, 0.0);
            for j in 0..sub {
                let (s0, s1) = (s[k * sub + j], s[k * sub + j + 1]);
                m += (s0 + s1) / 2.0;
                // ∫_0^1 (j + t)(s0 + (s1 − s0)t) dt
                m2 += j as f64 * (s0 + s1) / 2.0 + s0 / 2.0 + (s1 - s0) / 3.0;
            }
            (m / r, 2.0 * m2 / (r * r))
        })
        .collect()
}

/// Normal summary of the jobs not simulated one by one: per step, the mean
/// and variance of their summed shares (independent jobs).
fn normal_part(
    rest: &[ExactJob<'_>],
    bucket_ms: i64,
    sub: usize,
    horizon: usize,
) -> Vec<(f64, f64)> {
    let mut out = vec![(0.0, 0.0); horizon];
    for j in rest {
        let s = survival_grid(j, bucket_ms, sub, horizon);
        for (o, (m, m2)) in out.iter_mut().zip(share_moments(&s, sub)) {
            o.0 += j.size * m;
            o.1 += j.size * j.size * (m2 - m * m).max(0.0);
        }
    }
    out
}

/// A job's share of each bucket when it completes `x` ms after the origin
/// (`None`: after the horizon).
pub fn shares_for_residual(x: Option<i64>, bucket_ms: i64, out: &mut [f64]) {
    for (k, o) in out.iter_mut().enumerate() {
        *o = match x {
            None => 1.0,
            Some(x) => ((x - k as i64 * bucket_ms) as f64 / bucket_ms as f64).clamp(0.0, 1.0),
        };
    }
}

/// Standard normal draw (Box–Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn seed_for(key: &str, origin: Millis) -> u64 {
    // FNV-1a: stable across processes and platforms
    fnv(key.bytes().chain(origin.to_le_bytes()))
}

/// Combine the parts into per-step quantiles by simulation: `exact` jobs
/// drawn one by one, the normal part (`normal_moments`: mean and variance
/// per step), and one arrival path per sample.
pub struct Combine<'a> {
    pub exact: &'a [ExactJob<'a>],
    pub normal_moments: &'a [(f64, f64)],
    /// Arrival paths (residual paths when `beta` is not all 0).
    pub arrivals: &'a [Vec<f64>],
    /// Demand outstanding at the origin (all known jobs).
    pub level: f64,
    /// Response of arrivals to completions per step (empty: none).
    pub beta: &'a [f64],
    pub bucket_ms: i64,
    pub paths: usize,
    pub seed: u64,
}

impl Combine<'_> {
    pub fn quantiles(&self, horizon: usize, quantiles: &[f64]) -> Vec<Vec<f64>> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let paths = self.paths.max(1);
        let mut totals = vec![Vec::with_capacity(paths); horizon];
        let mut share = vec![0.0; horizon];
        let mut path = vec![0.0; horizon];
        for _ in 0..paths {
            path.iter_mut().for_each(|x| *x = 0.0);
            for j in self.exact {
                let x = j.survival.residual(j.age, rng.random());
                shares_for_residual(x, self.bucket_ms, &mut share);
                for (p, sh) in path.iter_mut().zip(&share) {
                    *p += j.size * sh;
                }
            }
            let z = normal(&mut rng);
            for (p, &(m, var)) in path.iter_mut().zip(self.normal_moments) {
                // one draw for all steps: the same jobs drain over the horizon
                *p += m + var.sqrt() * z;
            }
            for (p, b) in path.iter_mut().zip(self.beta) {
                // arrivals answering this path's completions
                *p += b * (self.level - *p).max(0.0);
            }
            if !self.arrivals.is_empty() {
                let a = &self.arrivals[rng.random_range(0..self.arrivals.len())];
                for (p, x) in path.iter_mut().zip(a) {
                    *p += x;
                }
            }
            for (t, p) in totals.iter_mut().zip(&path) {
                t.push(p.max(0.0));
            }
        }
        let mut values: Vec<Vec<f64>> = totals
            .iter_mut()
            .map(|t| {
                t.sort_by(f64::total_cmp);
                quantiles.iter().map(|&q| sorted_quantile(t, q)).collect()
            })
            .collect();
        tidy_rows(&mut values);
        values
    }
}

/// Least-squares response of arrivals to completions per step, through
/// the origin, over the given past origins; clamped to `[0, 2]`.
fn response(known: &Known<'_>, rows: &[usize], horizon: usize) -> Vec<f64> {
    (0..horizon)
        .map(|k| {
            let (mut da, mut dd) = (0.0, 0.0);
            for &i in rows {
                let (d, a) = (known.drains[i][k], known.arrivals[i][k]);
                da += d * a;
                dd += d * d;
            }
            if dd > 0.0 {
                (da / dd).clamp(0.0, 2.0)
            } else {
                0.0
            }
        })
        .collect()
}

/// The environment part of a series key (`"env/vcpus"` → `"env"`).
fn environment_of(key: &str) -> &str {
    key.rsplit_once('/').map_or(key, |(e, _)| e)
}

impl Forecaster for Structured {
    fn name(&self) -> &str {
        "structured"
    }

    fn forecast(&self, history: &History<'_>, horizon: usize, quantiles: &[f64]) -> Forecast {
        self.fallback.forecast(history, horizon, quantiles)
    }

    fn forecast_known(
        &self,
        history: &History<'_>,
        known: Option<&Known<'_>>,
        horizon: usize,
        quantiles: &[f64],
    ) -> Forecast {
        let Some(known) = known else {
            return self.forecast(history, horizon, quantiles);
        };
        let origin = history.end();
        let bucket_ms = history.bucket_ms.max(1);
        let env = environment_of(history.key);
        let mut jobs = self.exact_jobs(env, known.jobs, origin);
        // the largest jobs one by one: they make the distribution lumpy
        jobs.sort_by(|a, b| b.size.total_cmp(&a.size));
        let split = jobs.len().min(self.cfg.exact_jobs);
        let (exact, rest) = jobs.split_at(split);
        let sub = (bucket_ms / self.cfg.survival_step_ms.max(1)).clamp(1, 60) as usize;
        let moments = normal_part(rest, bucket_ms, sub, horizon);
        let rows: Vec<usize> = self
            .arrival_candidates(known, origin, bucket_ms)
            .into_iter()
            .filter(|&i| known.arrivals[i].len() >= horizon)
            .collect();
        let beta = if self.cfg.arrival_response && known.drains.len() == known.arrivals.len() {
            response(known, &rows, horizon)
        } else {
            Vec::new()
        };
        let arrivals: Vec<Vec<f64>> = rows
            .iter()
            .map(|&i| {
                let a = &known.arrivals[i];
                (0..horizon)
                    .map(|k| a[k] - beta.get(k).map_or(0.0, |b| b * known.drains[i][k]))
                    .collect()
            })
            .collect();
        let level = jobs.iter().map(|j| j.size).sum();
        let values = Combine {
            exact,
            normal_moments: &moments,
            arrivals: &arrivals,
            level,
            beta: &beta,
            bucket_ms,
            paths: self.cfg.paths,
            seed: seed_for(history.key, origin),
        }
        .quantiles(horizon, quantiles);
        Forecast {
            quantiles: quantiles.to_vec(),
            values,
        }
    }
}

/// Per origin bucket `s` of a series (origin time `start + sΔ`), the
/// realised arrival path: `A[s][k]` is the time-averaged demand in bucket
/// `s + k` of the jobs submitted at or after the origin. `jobs` are one
/// environment's, sorted by submission; `end` is the end of the data
/// (jobs with no completion count to it).
pub fn arrival_paths(
    jobs: &[(Millis, Millis, f64)],
    start: Millis,
    bucket_ms: i64,
    n: usize,
    horizon: usize,
) -> Vec<Vec<f64>> {
    let mut out = vec![vec![0.0; horizon]; n];
    let b = bucket_ms as f64;
    for &(u, f, v) in jobs {
        if u < start || v == 0.0 || f <= u {
            continue;
        }
        let bu = ((u - start) / bucket_ms) as usize;
        // origins s with origin time <= u: s <= bu
        let s_from = bu.saturating_sub(horizon - 1);
        for (s, row) in out.iter_mut().enumerate().take(bu + 1).skip(s_from) {
            for (k, a) in row.iter_mut().enumerate() {
                let b0 = start + (s + k) as i64 * bucket_ms;
                let b1 = b0 + bucket_ms;
                let ov = (f.min(b1) - u.max(b0)).max(0);
                if ov > 0 {
                    *a += v * ov as f64 / b;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn kaplan_meier_by_hand() {
        // durations 1,2,2(censored),3,4 → S(1)=4/5, S(2)=4/5·3/4=0.6,
        // (censored 2 leaves), S(3)=0.6·1/2=0.3, S(4)=0
        let mut o = vec![(1, true), (2, true), (2, false), (3, true), (4, true)];
        let s = Survival::fit(&mut o);
        assert_eq!(s.events, 4);
        assert!((s.at(0) - 1.0).abs() < 1e-12);
        assert!((s.at(1) - 0.8).abs() < 1e-12);
        assert!((s.at(2) - 0.6).abs() < 1e-12);
        assert!((s.at(3) - 0.3).abs() < 1e-12);
        assert_eq!(s.at(4), 0.0);
        // a job of age 2 survives one more unit with 0.3/0.6 = 0.5
        assert!((s.conditional(2, 1) - 0.5).abs() < 1e-12);
        // older than every observed completion: assumed to stay
        assert_eq!(s.conditional(5, 10), 1.0);
    }

    #[test]
    fn survival_of_running_jobs_uses_age_and_walltime_class() {
        // class "≤ 1 h": every job takes exactly 30 min; class "no request":
        // every job takes exactly 2 h
        let mut jobs = Vec::new();
        for i in 0..40 {
            let u = i * 10 * MIN;
            jobs.push(JobRecord {
                environment: "q".into(),
                submitted_at: u,
                finished_at: Some(u + 30 * MIN),
                size: [1.0, 0.0, 0.0],
                requested_s: Some(3_000),
                user: 1,
            });
            jobs.push(JobRecord {
                environment: "q".into(),
                submitted_at: u,
                finished_at: Some(u + 120 * MIN),
                size: [1.0, 0.0, 0.0],
                requested_s: None,
                user: 1,
            });
        }
        let m = Structured::fit(&jobs, 1_000 * MIN, StructuredConfig::default());
        let origin = 2_000 * MIN;
        let active = [
            // 20 min old, 30-min class → gone 10 min in (end of bucket 2)
            ActiveJob {
                submitted_at: origin - 20 * MIN,
                size: 4.0,
                requested_s: Some(3_000),
                vcpus: 1.0,
                user: 1,
            },
            // 100 min old, 2-h class → gone 20 min in (end of bucket 4)
            ActiveJob {
                submitted_at: origin - 100 * MIN,
                size: 2.0,
                requested_s: None,
                vcpus: 1.0,
                user: 1,
            },
            // 10 min old, class "≤ 15 min", which has no data
            ActiveJob {
                submitted_at: origin - 10 * MIN,
                size: 1.0,
                requested_s: Some(600),
                vcpus: 1.0,
                user: 1,
            },
        ];
        let ex = m.exact_jobs("q", &active, origin);
        assert_eq!(ex[0].survival.residual(ex[0].age, 0.3), Some(10 * MIN));
        assert_eq!(ex[1].survival.residual(ex[1].age, 0.99), Some(20 * MIN));
        // class "≤ 15 min" has no data: the environment's other classes'
        // pooled function (half 30 min, half 2 h) answers
        assert_eq!(ex[2].survival.residual(ex[2].age, 0.9), Some(20 * MIN));
        assert_eq!(ex[2].survival.residual(ex[2].age, 0.1), Some(110 * MIN));
        // certain paths for the first two: exact at every quantile
        let f = m.forecast_known(
            &History {
                key: "q/vcpus",
                start: origin - 5 * MIN,
                bucket_ms: 5 * MIN,
                values: &[6.0],
            },
            Some(&Known {
                jobs: &active[..2],
                arrivals: &[],
                drains: &[],
                arrivals_start: 0,
            }),
            6,
            &[0.1, 0.5, 0.9],
        );
        let p50: Vec<f64> = f.values.iter().map(|r| r[1]).collect();
        assert_eq!(p50, vec![6.0, 6.0, 2.0, 2.0, 0.0, 0.0]);
        assert!(f.values.iter().all(|r| r[0] == r[2]));
        // the same job through the normal part (1-minute table, linear
        // between its points: the step at 30 min spreads over the minute
        // before it): 1 in bucket 1, 4.5/5 in bucket 2, then 0
        let grid = survival_grid(&ex[0], 5 * MIN, 5, 6);
        let mo = share_moments(&grid, 5);
        let means: Vec<f64> = mo.iter().map(|x| x.0).collect();
        assert!((means[0] - 1.0).abs() < 1e-12 && (means[1] - 0.9).abs() < 1e-12);
        assert!(means[2..].iter().all(|&m| m == 0.0), "{means:?}");
        assert!((mo[0].1 - 1.0).abs() < 1e-12);
    }

    #[test]
    fn classes_of_walltime() {
        assert_eq!(walltime_class(None), 0);
        assert_eq!(walltime_class(Some(900)), 1);
        assert_eq!(walltime_class(Some(901)), 2);
        assert_eq!(walltime_class(Some(10 * 86_400)), CLASSES - 1);
    }

    #[test]
    fn share_moments_by_hand() {
        // survival 1 → 0.5 linearly over one bucket (one grid step): share 1
        // w.p. 0.5, U(0,1) w.p. 0.5 → mean 0.75, E[c²] = 0.5 + 0.5/3
        let m = share_moments(&[1.0, 0.5], 1);
        assert!((m[0].0 - 0.75).abs() < 1e-12);
        assert!((m[0].1 - (0.5 + 0.5 / 3.0)).abs() < 1e-12);
        // the same curve on a finer grid gives the same moments
        let m = share_moments(&[1.0, 0.875, 0.75, 0.625, 0.5], 4);
        assert!((m[0].0 - 0.75).abs() < 1e-12);
        assert!((m[0].1 - (0.5 + 0.5 / 3.0)).abs() < 1e-12, "{m:?}");
        // a residual of 7.5 min in 5-min buckets: full, half, none
        let mut out = [0.0; 3];
        shares_for_residual(Some(450_000), 300_000, &mut out);
        assert_eq!(out, [1.0, 0.5, 0.0]);
        shares_for_residual(None, 300_000, &mut out);
        assert_eq!(out, [1.0; 3]);
    }

    #[test]
    fn combination_of_quantiles() {
        let q = [0.1, 0.5, 0.9];
        // one job of 10 whose sojourn is 5 or 15 min (equal shares), age
        // 0: in the 2nd 5-min bucket it is there (10) or gone (0) with
        // probability 1/2 each → p10 = 0, p90 = 10
        let s = Survival::fit(&mut [(5 * MIN, true), (15 * MIN, true)]);
        let exact = [ExactJob {
            size: 10.0,
            survival: &s,
            age: 0,
        }];
        let c = Combine {
            exact: &exact,
            normal_moments: &[(0.0, 0.0); 3],
            arrivals: &[],
            level: 10.0,
            beta: &[],
            bucket_ms: 5 * MIN,
            paths: 4000,
            seed: 7,
        };
        let v = c.quantiles(3, &q);
        assert_eq!(v[0], vec![10.0; 3], "bucket 1: always there");
        assert_eq!((v[1][0], v[1][2]), (0.0, 10.0), "{v:?}");
        assert_eq!((v[2][0], v[2][2]), (0.0, 10.0), "{v:?}");
        // a certain level plus arrivals 0 or 4 in equal shares: quantiles
        // of the sum are the level plus the arrival quantiles
        let arr = vec![vec![0.0], vec![4.0]];
        let c = Combine {
            exact: &[],
            normal_moments: &[(5.0, 0.0)],
            arrivals: &arr,
            level: 5.0,
            beta: &[],
            bucket_ms: 5 * MIN,
            paths: 4000,
            seed: 3,
        };
        let v = c.quantiles(1, &[0.1, 0.9]);
        assert!(
            (v[0][0] - 5.0).abs() < 1e-9 && (v[0][1] - 9.0).abs() < 1e-9,
            "{v:?}"
        );
        // a normal part with sd 2 around 100: p10/p90 at ±1.2816·2
        let c = Combine {
            exact: &[],
            normal_moments: &[(100.0, 4.0)],
            arrivals: &[],
            level: 100.0,
            beta: &[],
            bucket_ms: 5 * MIN,
            paths: 20_000,
            seed: 11,
        };
        let v = c.quantiles(1, &q);
        assert!((v[0][1] - 100.0).abs() < 0.1, "{v:?}");
        assert!((v[0][2] - 102.563).abs() < 0.15, "{v:?}");
        assert!((v[0][0] - 97.437).abs() < 0.15, "{v:?}");
        // deterministic for a seed
        assert_eq!(v, c.quantiles(1, &q));
        // full response (β = 1): every completion is replaced, so the
        // job of 10 that may end in bucket 2 leaves the level at 10
        let c = Combine {
            exact: &exact,
            normal_moments: &[(0.0, 0.0); 3],
            arrivals: &[],
            level: 10.0,
            beta: &[1.0; 3],
            bucket_ms: 5 * MIN,
            paths: 1000,
            seed: 7,
        };
        assert!(c
            .quantiles(3, &q)
            .iter()
            .flatten()
            .all(|&x| (x - 10.0).abs() < 1e-9));
    }

    #[test]
    fn response_is_least_squares_through_the_origin() {
        // arrivals = 0.5 × drains exactly at both steps
        let a = vec![vec![1.0, 2.0], vec![3.0, 0.0]];
        let d = vec![vec![2.0, 4.0], vec![6.0, 0.0]];
        let k = Known {
            jobs: &[],
            arrivals: &a,
            drains: &d,
            arrivals_start: 0,
        };
        assert_eq!(response(&k, &[0, 1], 2), vec![0.5, 0.5]);
    }

    #[test]
    fn arrival_paths_split_demand_exactly() {
        // bucket 10, start 0: a job submitted at 15 to 40 of size 2
        let jobs = [(15, 40, 2.0)];
        let a = arrival_paths(&jobs, 0, 10, 5, 3);
        // origin 0 (t=0): buckets 0,1,2 → 0, 2·5/10, 2
        assert_eq!(a[0], vec![0.0, 1.0, 2.0]);
        // origin 1 (t=10): buckets 1,2,3 → 1, 2, 2
        assert_eq!(a[1], vec![1.0, 2.0, 2.0]);
        // origin 2 (t=20): submitted before → not an arrival
        assert_eq!(a[2], vec![0.0, 0.0, 0.0]);
    }
}
