//! Event-time state: windowed demand per compute environment and job type.
//!
//! Demand is *concurrent* resources of outstanding jobs (submitted and not yet
//! completed): vCPU, memory and GPUs, averaged over fixed buckets (default
//! 5 min), plus submission counts. Buckets close when the watermark (maximum
//! event time seen minus the allowed lateness) passes their end; each closed
//! bucket boundary is a decision tick. Nothing here reads a clock, so the same
//! events give the same series and ticks from a file or from Kafka.
//!
//! Late events (older than an already-closed bucket) are counted and applied
//! to the oldest open bucket, so the demand level stays right and nothing is
//! lost. Input is delivered at least once, so a submission or completion
//! seen again (same job id) with the same content is counted and changes
//! nothing; one with *different* content is a conflict: refused (the state
//! keeps the first), counted, and reported as [`Applied::Conflict`] naming the
//! field, so the adapter can dead-letter it.

use crate::events::{Event, JobCompleted, JobSubmitted, Millis};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Hash maps keyed by job id (hot per event): foldhash, seeded per process
/// (iteration order was never relied on: see `map_as_vec` and
/// `environment_summary`).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A job id as the state's maps hold it: the events' own inline string, so
/// ids up to 24 bytes sit in the table and a lookup in a large state costs
/// no extra cache miss.
type JobId = crate::events::Text;

/// Resources tracked per series.
pub const VCPU: usize = 0;
pub const MEMORY_MIB: usize = 1;
pub const GPUS: usize = 2;
type Res = [f64; 3];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StateConfig {
    /// Bucket width (and decision tick interval).
    pub bucket_ms: i64,
    /// How far behind the newest event the watermark trails.
    pub allowed_lateness_ms: i64,
    /// Closed buckets kept per series (for forecasting).
    pub history_buckets: usize,
    /// How long completed job ids are remembered to catch duplicates.
    pub dedup_window_ms: i64,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            bucket_ms: 5 * 60_000,
            allowed_lateness_ms: 60_000,
            history_buckets: 14 * 288,
            dedup_window_ms: 24 * 3_600_000,
        }
    }
}

/// What happened to the events the state saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StateCounters {
    pub submissions: u64,
    pub completions: u64,
    /// Arrived after their bucket had closed (applied to the oldest open bucket).
    pub late: u64,
    pub duplicate_submissions: u64,
    pub duplicate_completions: u64,
    /// Completions that arrived before their submission (held until it comes).
    pub early_completions: u64,
    /// Seen again with different content (refused, see [`Applied::Conflict`]).
    #[serde(default)]
    pub conflicting_submissions: u64,
    #[serde(default)]
    pub conflicting_completions: u64,
}

/// A job that has been submitted and not completed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutstandingJob {
    /// Boxed: the table of outstanding jobs is the state's largest, and
    /// every event probes it; entries of a pointer instead of the whole
    /// record (~200 bytes) keep a large state's probes in cache.
    pub job: Box<JobSubmitted>,
    /// Index into the state's series; `u32` keeps a job-table entry at 40
    /// bytes instead of 48 (the table is the state's largest).
    pub series: u32,
    /// Held by a budget command (see [`DemandState::set_held`]).
    #[serde(default)]
    pub held: bool,
}

/// Outstanding work of one environment (see [`DemandState::environment_summary`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnvSummary {
    pub jobs: u64,
    pub vcpus: f64,
    pub memory_mib: f64,
    pub gpus: f64,
    pub top_priority: Option<i32>,
    /// Some job's deadline is within the lead time plus its estimated run time.
    pub deadline_pressure: bool,
}

/// Closed bucket values of one series, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Series {
    pub compute_environment: String,
    pub job_type: String,
    /// Start time of `values[0]`.
    pub start: Millis,
    /// Time-averaged concurrent demand per bucket.
    pub values: Vec<Res>,
    /// Submissions per bucket.
    pub submissions: Vec<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Acc {
    /// Level change within the bucket.
    delta: Res,
    /// ∫ (change applied from its time to the bucket end) dt, in resource·ms.
    area: Res,
    submissions: u32,
}

/// Running totals of one series' outstanding, not-held jobs, kept as jobs
/// come and go: a decision tick reads them in O(log n) instead of scanning
/// every outstanding job of every environment (that scan was a sixth of a
/// dense replay). Indexed like `series`, so the hot path finds them by the
/// series id it already has, without hashing the environment name. Integer sums, so the totals do not depend on
/// the order jobs arrived in. Derived data: not checkpointed, rebuilt from
/// the outstanding jobs on restore.
#[derive(Debug, Clone, Default, PartialEq)]
struct EnvTotals {
    jobs: u64,
    milli_vcpus: i64,
    memory_mib: i64,
    gpus: i64,
    /// (priority, jobs at it), ascending: the top one is the last. A
    /// sorted vector, not a map: an environment has a handful of
    /// priorities, and every submission and completion counts here.
    priorities: Vec<(i32, u32)>,
    /// Latest start that still meets the deadline (deadline − estimated run
    /// time) → jobs, for jobs with a deadline.
    latest_start: BTreeMap<Millis, u32>,
}

impl EnvTotals {
    fn add(&mut self, j: &JobSubmitted, sign: i64) {
        fn count<K: Ord>(m: &mut BTreeMap<K, u32>, k: K, sign: i64) {
            if sign > 0 {
                *m.entry(k).or_insert(0) += 1;
            } else if let std::collections::btree_map::Entry::Occupied(mut e) = m.entry(k) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
        self.jobs = self.jobs.saturating_add_signed(sign);
        self.milli_vcpus += sign * milli(j.vcpus);
        self.memory_mib += sign * j.memory_mib;
        self.gpus += sign * i64::from(j.gpus);
        match self
            .priorities
            .binary_search_by_key(&j.priority, |&(p, _)| p)
        {
            Ok(i) if sign > 0 => self.priorities[i].1 += 1,
            Ok(i) => {
                self.priorities[i].1 -= 1;
                if self.priorities[i].1 == 0 {
                    self.priorities.remove(i);
                }
            }
            Err(i) if sign > 0 => self.priorities.insert(i, (j.priority, 1)),
            Err(_) => {}
        }
        if let Some(d) = j.deadline {
            count(&mut self.latest_start, latest_start(j, d), sign);
        }
    }
}

fn milli(vcpus: f64) -> i64 {
    (vcpus * 1000.0).round() as i64
}

fn latest_start(j: &JobSubmitted, deadline: Millis) -> Millis {
    deadline.saturating_sub(j.estimated_runtime_s.unwrap_or(0).saturating_mul(1000))
}

/// The windowed demand store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "DemandStateData")]
pub struct DemandState {
    cfg: StateConfig,
    max_event_time: Option<Millis>,
    /// Index of the oldest open bucket (time / bucket_ms); `None` before the first event.
    first_open: Option<i64>,
    series: Vec<Series>,
    /// Series id by environment, then job type: found without building a
    /// key per event. Derived from `series` (rebuilt when restored).
    #[serde(skip)]
    series_index: HashMap<String, HashMap<String, usize>>,
    /// Level at the start of the oldest open bucket, per series.
    level: Vec<Res>,
    /// Open buckets: bucket index → per-series accumulators.
    open: BTreeMap<i64, BTreeMap<usize, Acc>>,
    /// Outstanding and recently completed jobs in one table, so each event
    /// probes one table once (a large state's probes are cache misses).
    /// Checkpoints hold them as two lists, `outstanding` and `completed`.
    #[serde(flatten)]
    jobs: Jobs,
    #[serde(with = "map_as_vec")]
    early: HashMap<JobId, JobCompleted>,
    counters: StateCounters,
    /// Whether any bucket has closed (before that, early events extend the window back).
    closed_any: bool,
    /// Per series (same index), derived from the outstanding jobs (see [`EnvTotals`]).
    #[serde(skip)]
    totals: Vec<EnvTotals>,
    /// The first bucket from which the stretch can be quiet (see
    /// `skip_quiet`): a series with `z` trailing zero buckets needs at least
    /// `window - z` more, and later events only add demand. Not kept in a
    /// checkpoint (a restored state looks again at once).
    #[serde(skip)]
    quiet_not_before: Option<i64>,
}

/// What a checkpoint holds of a [`DemandState`]: every field but the
/// derived totals, which are rebuilt on load.
#[derive(Deserialize)]
struct DemandStateData {
    cfg: StateConfig,
    max_event_time: Option<Millis>,
    first_open: Option<i64>,
    series: Vec<Series>,
    level: Vec<Res>,
    open: BTreeMap<i64, BTreeMap<usize, Acc>>,
    #[serde(with = "map_as_vec")]
    outstanding: HashMap<JobId, OutstandingJob>,
    #[serde(with = "map_as_vec")]
    completed: HashMap<JobId, Done>,
    #[serde(with = "map_as_vec")]
    early: HashMap<JobId, JobCompleted>,
    counters: StateCounters,
    closed_any: bool,
}

/// A job the state knows: outstanding, or completed within the dedup window.
#[derive(Debug, Clone)]
enum JobEntry {
    Outstanding(OutstandingJob),
    Completed(Done),
}

/// What the state remembers of a completed job: when it finished, and
/// fingerprints of its submission and completion, so a copy arriving again
/// is told from a conflicting record with the same job id without keeping
/// the records (the table of completed jobs is large). Checkpoints hold it
/// as `[finished_at, fingerprints]`; older ones hold `finished_at` alone,
/// read as fingerprints unknown (0: then a copy counts as a duplicate).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Done {
    at: Millis,
    /// Submission's fingerprint in the high half, completion's in the low.
    fp: u64,
}

impl Done {
    fn new(job: &JobSubmitted, c: &JobCompleted) -> Self {
        Done {
            at: c.finished_at,
            fp: (u64::from(fingerprint::submission(job)) << 32)
                | u64::from(fingerprint::completion(c)),
        }
    }

    /// The field a copy of the submission differs in (`None`: same, or not known).
    fn submission_differs(&self, j: &JobSubmitted) -> Option<&'static str> {
        let known = (self.fp >> 32) as u32;
        (known != 0 && known != fingerprint::submission(j)).then_some("content")
    }

    /// The field a copy of the completion differs in (`None`: same, or not known).
    fn completion_differs(&self, c: &JobCompleted) -> Option<&'static str> {
        if c.finished_at != self.at {
            return Some("finished_at");
        }
        let known = self.fp as u32;
        (known != 0 && known != fingerprint::completion(c)).then_some("content")
    }
}

impl Serialize for Done {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.at, self.fp).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Done {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Done;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("[finished_at, fingerprints] or finished_at")
            }
            fn visit_i64<E: serde::de::Error>(self, at: i64) -> Result<Done, E> {
                Ok(Done { at, fp: 0 })
            }
            fn visit_u64<E: serde::de::Error>(self, at: u64) -> Result<Done, E> {
                let at = Millis::try_from(at).map_err(E::custom)?;
                Ok(Done { at, fp: 0 })
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> Result<Done, A::Error> {
                use serde::de::Error;
                let at = s
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(0, &self))?;
                let fp = s
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(1, &self))?;
                Ok(Done { at, fp })
            }
        }
        d.deserialize_any(V)
    }
}

/// The job table (see [`DemandState`]'s `jobs`).
#[derive(Debug, Clone, Default)]
struct Jobs(HashMap<JobId, JobEntry>);

impl Jobs {
    fn outstanding(&self) -> impl Iterator<Item = (&JobId, &OutstandingJob)> {
        self.0.iter().filter_map(|(k, e)| match e {
            JobEntry::Outstanding(o) => Some((k, o)),
            JobEntry::Completed(_) => None,
        })
    }
}

impl Serialize for Jobs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let completed = self.0.iter().filter_map(|(k, e)| match e {
            JobEntry::Completed(d) => Some((k, d)),
            JobEntry::Outstanding(_) => None,
        });
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("outstanding", &map_as_vec::sorted(self.outstanding()))?;
        m.serialize_entry("completed", &map_as_vec::sorted(completed))?;
        m.end()
    }
}

/// A checkpoint whose parts disagree (a series id past the series, levels
/// not one per series) is refused with this message rather than restored
/// into a state that panics later (at that job's completion, or at the next
/// bucket close).
impl TryFrom<DemandStateData> for DemandState {
    type Error = String;

    fn try_from(d: DemandStateData) -> Result<Self, String> {
        let n = d.series.len();
        if d.level.len() != n {
            return Err(format!("{} levels for {n} series", d.level.len()));
        }
        if let Some((b, s)) = d
            .open
            .iter()
            .flat_map(|(b, accs)| accs.keys().map(move |s| (b, s)))
            .find(|(_, &s)| s >= n)
        {
            return Err(format!("open bucket {b} names series {s} of {n}"));
        }
        if let Some((id, o)) = d.outstanding.iter().find(|(_, o)| o.series as usize >= n) {
            return Err(format!(
                "outstanding job {id} names series {} of {n}",
                o.series
            ));
        }
        let mut totals = vec![EnvTotals::default(); n];
        for o in d.outstanding.values().filter(|o| !o.held) {
            totals[o.series as usize].add(&o.job, 1);
        }
        let mut series_index: HashMap<String, HashMap<String, usize>> = HashMap::default();
        for (i, s) in d.series.iter().enumerate() {
            series_index
                .entry(s.compute_environment.clone())
                .or_default()
                .insert(s.job_type.clone(), i);
        }
        let mut jobs: HashMap<JobId, JobEntry> = d
            .completed
            .into_iter()
            .map(|(k, d)| (k, JobEntry::Completed(d)))
            .collect();
        jobs.extend(
            d.outstanding
                .into_iter()
                .map(|(k, o)| (k, JobEntry::Outstanding(o))),
        );
        Ok(DemandState {
            cfg: d.cfg,
            max_event_time: d.max_event_time,
            first_open: d.first_open,
            series: d.series,
            series_index,
            level: d.level,
            open: d.open,
            jobs: Jobs(jobs),
            early: d.early,
            counters: d.counters,
            closed_any: d.closed_any,
            totals,
            quiet_not_before: None,
        })
    }
}

/// What applying one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Accepted,
    /// Seen before with the same content: nothing changed.
    Duplicate,
    /// Seen before (same job id) with different content, in the named
    /// field (`content` when only a fingerprint of it is kept): refused,
    /// nothing changed.
    Conflict(&'static str),
    /// Not a job event (prices, budgets): only moves the watermark.
    Ignored,
}

impl DemandState {
    pub fn new(cfg: StateConfig) -> Self {
        assert!(cfg.bucket_ms > 0, "bucket width must be positive");
        DemandState {
            cfg,
            max_event_time: None,
            first_open: None,
            series: Vec::new(),
            series_index: HashMap::default(),
            level: Vec::new(),
            open: BTreeMap::new(),
            jobs: Jobs::default(),
            early: HashMap::default(),
            counters: StateCounters::default(),
            closed_any: false,
            totals: Vec::new(),
            quiet_not_before: None,
        }
    }

    pub fn config(&self) -> &StateConfig {
        &self.cfg
    }

    pub fn counters(&self) -> &StateCounters {
        &self.counters
    }

    /// Current watermark: no event older than this is expected.
    pub fn watermark(&self) -> Option<Millis> {
        self.max_event_time
            .map(|t| t - self.cfg.allowed_lateness_ms)
    }

    /// Apply one event and append to `ticks` the end time of every bucket the
    /// watermark closed (in order). Each is a decision tick.
    pub fn apply(&mut self, ev: &Event, ticks: &mut Vec<Millis>) -> Applied {
        let t = ev.time();
        if self.first_open.is_none() {
            self.first_open = Some(t.div_euclid(self.cfg.bucket_ms));
        }
        let r = match ev {
            Event::JobSubmitted(j) => self.submit(j),
            Event::JobCompleted(c) => self.complete(c),
            _ => Applied::Ignored,
        };
        // A refused record moves no watermark: its time is not news.
        let refused = matches!(r, Applied::Conflict(_));
        if !refused && self.max_event_time.is_none_or(|m| t > m) {
            self.max_event_time = Some(t);
        }
        self.close_until(self.watermark().unwrap_or(Millis::MIN), ticks);
        r
    }

    /// Close every bucket (end of input): flushes all ticks up to and
    /// including the bucket holding the newest event.
    pub fn flush(&mut self, ticks: &mut Vec<Millis>) {
        if let Some(m) = self.max_event_time {
            let end = (m.div_euclid(self.cfg.bucket_ms) + 1) * self.cfg.bucket_ms;
            self.close_until(end, ticks);
        }
    }

    /// The series of an environment and job type, if it exists.
    fn find_series(&self, env: &str, job_type: &str) -> Option<usize> {
        self.series_index.get(env)?.get(job_type).copied()
    }

    /// The series of an environment and job type, made if new.
    fn series_id(&mut self, env: &str, job_type: &str) -> usize {
        if let Some(i) = self.find_series(env, job_type) {
            return i;
        }
        let i = self.series.len();
        let start = self.first_open.unwrap_or(0) * self.cfg.bucket_ms;
        self.series.push(Series {
            compute_environment: env.to_string(),
            job_type: job_type.to_string(),
            start,
            values: Vec::new(),
            submissions: Vec::new(),
        });
        self.level.push([0.0; 3]);
        self.totals.push(EnvTotals::default());
        self.series_index
            .entry(env.to_string())
            .or_default()
            .insert(job_type.to_string(), i);
        i
    }

    /// Add `sign × job` to the level from time `t` on.
    fn change(
        &mut self,
        series: usize,
        t: Millis,
        job: &JobSubmitted,
        sign: f64,
        submission: bool,
    ) {
        let b = self.cfg.bucket_ms;
        let first_open = self.first_open.expect("set on first event");
        let mut bucket = t.div_euclid(b);
        let mut t = t;
        if bucket < first_open && !self.closed_any {
            // Nothing decided yet: the window simply starts earlier.
            self.first_open = Some(bucket);
            for s in &mut self.series {
                s.start = bucket * b;
            }
        } else if bucket < first_open {
            self.counters.late += 1;
            bucket = first_open;
            t = first_open * b;
        }
        let end = (bucket + 1) * b;
        let res = [job.vcpus, job.memory_mib as f64, job.gpus as f64];
        let acc = self
            .open
            .entry(bucket)
            .or_default()
            .entry(series)
            .or_default();
        for ((d, a), r) in acc.delta.iter_mut().zip(&mut acc.area).zip(res) {
            *d += sign * r;
            *a += sign * r * (end - t) as f64;
        }
        if submission {
            acc.submissions += 1;
        }
    }

    fn submit(&mut self, j: &JobSubmitted) -> Applied {
        use std::collections::hash_map::Entry;
        // One probe of the job table on the common path (its series exists):
        // the duplicate check and the insert are the same entry. A job of a
        // new series is checked before the series is made, so a copy never
        // creates one. Known = outstanding, or completed within the dedup
        // window.
        let (env, ty) = (&j.compute_environment, &j.job_type);
        let s = match self.find_series(env, ty) {
            Some(s) => s,
            None => match self
                .jobs
                .0
                .get(j.job_id.as_str())
                .map(|k| resubmission(k, j))
            {
                Some(differs) => return self.resubmitted(differs),
                None => self.series_id(env, ty),
            },
        };
        let v = match self.jobs.0.entry(j.job_id.clone()) {
            Entry::Vacant(v) => v,
            Entry::Occupied(o) => {
                let differs = resubmission(o.get(), j);
                return self.resubmitted(differs);
            }
        };
        v.insert(JobEntry::Outstanding(OutstandingJob {
            // A copy, not an allocation per string: job events hold their
            // ids and names inline (`events::Text`).
            job: Box::new(j.clone()),
            series: s as u32,
            held: false,
        }));
        self.counters.submissions += 1;
        self.change(s, j.submitted_at, j, 1.0, true);
        self.totals[s].add(j, 1);
        if let Some(c) = self.early.remove(j.job_id.as_str()) {
            self.complete(&c);
        }
        Applied::Accepted
    }

    /// A submission of a known job: a duplicate, or a conflict in `differs`.
    fn resubmitted(&mut self, differs: Option<&'static str>) -> Applied {
        match differs {
            None => {
                self.counters.duplicate_submissions += 1;
                Applied::Duplicate
            }
            Some(field) => {
                self.counters.conflicting_submissions += 1;
                Applied::Conflict(field)
            }
        }
    }

    /// A completion seen before: a duplicate, or a conflict in `differs`.
    fn recompleted(&mut self, differs: Option<&'static str>) -> Applied {
        match differs {
            None => {
                self.counters.duplicate_completions += 1;
                Applied::Duplicate
            }
            Some(field) => {
                self.counters.conflicting_completions += 1;
                Applied::Conflict(field)
            }
        }
    }

    fn complete(&mut self, c: &JobCompleted) -> Applied {
        let o = match self.jobs.0.get_mut(c.job_id.as_str()) {
            Some(slot @ JobEntry::Outstanding(_)) => {
                let JobEntry::Outstanding(o) = std::mem::replace(
                    slot,
                    JobEntry::Completed(Done {
                        at: c.finished_at,
                        fp: 0,
                    }),
                ) else {
                    unreachable!("matched as outstanding")
                };
                *slot = JobEntry::Completed(Done::new(&o.job, c));
                o
            }
            Some(JobEntry::Completed(done)) => {
                let differs = done.completion_differs(c);
                return self.recompleted(differs);
            }
            None => {
                if let Some(first) = self.early.get(c.job_id.as_str()) {
                    let differs = fingerprint::completion_field(first, c);
                    return self.recompleted(differs);
                }
                self.counters.early_completions += 1;
                self.early.insert(c.job_id.clone(), c.clone());
                return Applied::Accepted;
            }
        };
        self.counters.completions += 1;
        // A job counts as demand until it finishes, and never before it was
        // submitted (a held job already left the level).
        if !o.held {
            let t = c.finished_at.max(o.job.submitted_at);
            let s = o.series as usize;
            self.change(s, t, &o.job, -1.0, false);
            self.totals[s].add(&o.job, -1);
        }
        Applied::Accepted
    }

    fn close_until(&mut self, watermark: Millis, ticks: &mut Vec<Millis>) {
        let b = self.cfg.bucket_ms;
        let Some(mut first) = self.first_open else {
            return;
        };
        let mut check_quiet_at = Some(self.quiet_not_before.map_or(first, |q| q.max(first)));
        while (first + 1) * b <= watermark {
            if check_quiet_at == Some(first) {
                match self.skip_quiet(first, watermark.div_euclid(b) - 1) {
                    Ok(to) => first = to,
                    Err(next) => check_quiet_at = next,
                }
            }
            let accs = self.open.remove(&first).unwrap_or_default();
            for (s, series) in self.series.iter_mut().enumerate() {
                let acc = accs.get(&s);
                let lvl = &mut self.level[s];
                let mut v = *lvl;
                if let Some(a) = acc {
                    for k in 0..3 {
                        v[k] += a.area[k] / b as f64;
                        lvl[k] += a.delta[k];
                    }
                }
                // Clean float dust so an empty environment reads exactly 0.
                for k in 0..3 {
                    if v[k].abs() < 1e-9 {
                        v[k] = 0.0;
                    }
                    if lvl[k].abs() < 1e-9 {
                        lvl[k] = 0.0;
                    }
                }
                series.values.push(v);
                series.submissions.push(acc.map_or(0, |a| a.submissions));
                let cap = self.cfg.history_buckets.max(1);
                if series.values.len() >= cap.saturating_mul(2) {
                    let drop = series.values.len() - cap;
                    series.values.drain(..drop);
                    series.submissions.drain(..drop);
                    series.start += drop as i64 * b;
                }
            }
            first += 1;
            self.closed_any = true;
            ticks.push(first * b);
            if first % 288 == 0 {
                let horizon = first * b - self.cfg.dedup_window_ms;
                self.jobs.0.retain(|_, e| match e {
                    JobEntry::Completed(d) => d.at >= horizon,
                    JobEntry::Outstanding(_) => true,
                });
            }
        }
        self.first_open = Some(first);
    }

    /// Cost grows with events, not with time spans: when every series has
    /// been exactly zero for a whole history window, nothing is outstanding
    /// and nothing is recorded up to bucket `last`, the buckets before
    /// `last` would all close to zeros and give ticks whose forecasts see
    /// nothing but zeros; they are closed at once (no tick each) and the
    /// series keep their window of zeros. `Ok(last)`: go on from `last`
    /// (whose tick still comes); `Err(Some(b))`: not quiet yet, it may be
    /// from bucket `b` on; `Err(None)`: not before another event.
    fn skip_quiet(&mut self, first: i64, last: i64) -> Result<i64, Option<i64>> {
        let cap = self.cfg.history_buckets.max(1);
        let b = self.cfg.bucket_ms;
        if last <= first + 1 {
            return Err(None);
        }
        // Changes still to close (a completion's) move the level: look
        // again a window after the last of them.
        if let Some((&k, _)) = self.open.range(..=last).next_back() {
            return Err(Some(k + 1 + cap as i64));
        }
        // Jobs submitted after `last` (the event that moved the watermark,
        // applied before the close) do not touch the stretch.
        if self.level.iter().flatten().any(|&x| x != 0.0)
            || self
                .jobs
                .outstanding()
                .any(|(_, o)| o.job.submitted_at.div_euclid(b) <= last)
        {
            return Err(None);
        }
        let zeros = self
            .series
            .iter()
            .map(|s| {
                s.values
                    .iter()
                    .rev()
                    .take(cap)
                    .take_while(|v| v.iter().all(|&x| x == 0.0))
                    .count()
            })
            .min()
            .unwrap_or(cap);
        if zeros < cap {
            let at = first + (cap - zeros) as i64;
            self.quiet_not_before = Some(at);
            return Err(Some(at));
        }
        for s in &mut self.series {
            s.values = vec![[0.0; 3]; cap];
            s.submissions = vec![0; cap];
            s.start = (last - cap as i64) * b;
        }
        let horizon = last * b - self.cfg.dedup_window_ms;
        self.jobs.0.retain(|_, e| match e {
            JobEntry::Completed(d) => d.at >= horizon,
            JobEntry::Outstanding(_) => true,
        });
        self.closed_any = true;
        Ok(last)
    }

    /// A job held by a budget command (QUEUE or PREEMPT) is not demand any
    /// capacity can serve until it is resumed: `held = true` takes it out of
    /// the level from `t` (or the oldest open bucket, if later: the decision
    /// was made on closed history) and out of the summaries; `false` puts it
    /// back. Returns whether anything changed (unknown job, same state: no).
    pub fn set_held(&mut self, job_id: &str, held: bool, t: Millis) -> bool {
        let Some(JobEntry::Outstanding(o)) = self.jobs.0.get_mut(job_id) else {
            return false;
        };
        if o.held == held {
            return false;
        }
        o.held = held;
        let (series, job) = (o.series as usize, o.job.clone());
        let open_start = self.first_open.map_or(t, |f| f * self.cfg.bucket_ms);
        let sign = if held { -1.0 } else { 1.0 };
        self.change(series, t.max(open_start), &job, sign, false);
        self.totals[series].add(&job, if held { -1 } else { 1 });
        true
    }

    /// All series (one per compute environment and job type).
    pub fn series(&self) -> &[Series] {
        &self.series
    }

    /// How many (environment, job type) series the state holds; it only
    /// grows, so a caller can tell when [`DemandState::environments`] changed.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// Compute environments, sorted.
    pub fn environments(&self) -> Vec<&str> {
        let mut envs: Vec<&str> = self
            .series
            .iter()
            .map(|s| s.compute_environment.as_str())
            .collect();
        envs.sort_unstable();
        envs.dedup();
        envs
    }

    /// Total closed history of one environment's resource (summed over job types).
    /// Returns (start, values).
    pub fn environment_history(&self, env: &str, resource: usize) -> (Millis, Vec<f64>) {
        self.environment_history_tail(env, resource, usize::MAX)
    }

    /// The last `max` buckets (at most) of [`DemandState::environment_history`]:
    /// what a forecaster is shown, without summing the older buckets at
    /// every tick (the series keep up to two history windows).
    pub fn environment_history_tail(
        &self,
        env: &str,
        resource: usize,
        max: usize,
    ) -> (Millis, Vec<f64>) {
        let parts: Vec<&Series> = self
            .series
            .iter()
            .filter(|s| s.compute_environment == env)
            .collect();
        let Some(len) = parts.iter().map(|s| s.values.len()).min() else {
            return (0, Vec::new());
        };
        let len = len.min(max);
        let end = parts[0].start + parts[0].values.len() as i64 * self.cfg.bucket_ms;
        let start = end - len as i64 * self.cfg.bucket_ms;
        let mut out = vec![0.0; len];
        for s in parts {
            let off = s.values.len() - len;
            for (o, v) in out.iter_mut().zip(&s.values[off..]) {
                *o += v[resource];
            }
        }
        (start, out)
    }

    /// Outstanding (queued or running) resources of an environment right now.
    pub fn outstanding_in(&self, env: &str) -> Res {
        let s = self.environment_summary(env, 0, 0);
        [s.vcpus, s.memory_mib, s.gpus]
    }

    /// What the planner needs to know about the work waiting or running in
    /// an environment (held jobs excluded), from the running totals.
    pub fn environment_summary(&self, env: &str, now: Millis, lead_ms: i64) -> EnvSummary {
        let mut s = EnvSummary::default();
        let (mut milli, mut memory, mut gpus) = (0i64, 0i64, 0i64);
        let mut latest_start: Option<Millis> = None;
        let parts = self.series.iter().zip(&self.totals);
        for (_, t) in parts.filter(|(x, t)| x.compute_environment == env && t.jobs > 0) {
            s.jobs += t.jobs;
            milli += t.milli_vcpus;
            memory += t.memory_mib;
            gpus += t.gpus;
            let top = t.priorities.last().map(|&(p, _)| p);
            s.top_priority = s.top_priority.max(top);
            let first = t.latest_start.first_key_value().map(|(&l, _)| l);
            latest_start = match (latest_start, first) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        s.vcpus = milli as f64 / 1000.0;
        s.memory_mib = memory as f64;
        s.gpus = gpus as f64;
        s.deadline_pressure = latest_start.is_some_and(|l| l <= now.saturating_add(lead_ms));
        s
    }

    /// End of the closed history (the start of the oldest open bucket):
    /// where every series' values end, and so the origin of the forecasts
    /// made until another bucket closes.
    pub fn closed_end(&self) -> Option<Millis> {
        self.first_open.map(|b| b * self.cfg.bucket_ms)
    }

    /// Whether `env`'s buckets close to zeros from now until its next job
    /// event: nothing of it outstanding (held work included), its level
    /// zero and no change of it waiting in an open bucket. The engine then
    /// knows what its forecaster will be shown (see
    /// `Forecaster::quiet_ahead`).
    pub fn settled(&self, env: &str) -> bool {
        let mine: Vec<usize> = (0..self.series.len())
            .filter(|&s| self.series[s].compute_environment == env)
            .collect();
        let quiet =
            |s: &usize| self.totals[*s].jobs == 0 && self.level[*s].iter().all(|&x| x == 0.0);
        mine.iter().all(quiet)
            && !self
                .open
                .values()
                .any(|accs| mine.iter().any(|s| accs.contains_key(s)))
            && !self
                .jobs
                .outstanding()
                .any(|(_, o)| mine.contains(&(o.series as usize)))
    }

    pub fn outstanding_job(&self, job_id: &str) -> Option<&OutstandingJob> {
        match self.jobs.0.get(job_id)? {
            JobEntry::Outstanding(o) => Some(o),
            JobEntry::Completed(_) => None,
        }
    }

    pub fn outstanding_jobs(&self) -> impl Iterator<Item = &OutstandingJob> {
        self.jobs.outstanding().map(|(_, o)| o)
    }
}

/// The field a submission of a known job differs in from what the state
/// holds of it (`None`: the same).
fn resubmission(known: &JobEntry, j: &JobSubmitted) -> Option<&'static str> {
    match known {
        JobEntry::Outstanding(o) => fingerprint::submission_field(&o.job, j),
        JobEntry::Completed(d) => d.submission_differs(j),
    }
}

/// Comparing job records: the first differing field, and stable
/// fingerprints (FNV-1a over the fields, the same in every process and
/// version, since checkpoints keep them). Floats compare by bits: a copy is
/// the same bytes.
mod fingerprint {
    use crate::events::{JobCompleted, JobStatus, JobSubmitted};

    /// The first field `b` differs from `a` in.
    pub(super) fn submission_field(a: &JobSubmitted, b: &JobSubmitted) -> Option<&'static str> {
        let fields = [
            ("submitted_at", a.submitted_at == b.submitted_at),
            (
                "compute_environment",
                a.compute_environment == b.compute_environment,
            ),
            ("job_type", a.job_type == b.job_type),
            ("project", a.project == b.project),
            ("user", a.user == b.user),
            ("priority", a.priority == b.priority),
            ("vcpus", a.vcpus.to_bits() == b.vcpus.to_bits()),
            ("memory_mib", a.memory_mib == b.memory_mib),
            ("gpus", a.gpus == b.gpus),
            (
                "estimated_runtime_s",
                a.estimated_runtime_s == b.estimated_runtime_s,
            ),
            (
                "budget_usd",
                a.budget_usd.map(f64::to_bits) == b.budget_usd.map(f64::to_bits),
            ),
            ("deadline", a.deadline == b.deadline),
            ("elasticity", a.elasticity == b.elasticity),
        ];
        fields.iter().find(|(_, same)| !same).map(|(f, _)| *f)
    }

    /// The first field `b` differs from `a` in.
    pub(super) fn completion_field(a: &JobCompleted, b: &JobCompleted) -> Option<&'static str> {
        let fields = [
            (
                "compute_environment",
                a.compute_environment == b.compute_environment,
            ),
            ("started_at", a.started_at == b.started_at),
            ("finished_at", a.finished_at == b.finished_at),
            ("status", a.status == b.status),
            ("instance_type", a.instance_type == b.instance_type),
            ("market", a.market == b.market),
            ("region", a.region == b.region),
            (
                "vcpu_seconds",
                a.vcpu_seconds.to_bits() == b.vcpu_seconds.to_bits(),
            ),
            ("max_memory_mib", a.max_memory_mib == b.max_memory_mib),
        ];
        fields.iter().find(|(_, same)| !same).map(|(f, _)| *f)
    }

    struct Fnv(u64);

    impl Fnv {
        fn new() -> Self {
            Fnv(0xcbf2_9ce4_8422_2325)
        }
        fn bytes(&mut self, b: &[u8]) -> &mut Self {
            for &x in b {
                self.0 = (self.0 ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3);
            }
            // A separator, so adjacent fields cannot trade bytes.
            self.0 = (self.0 ^ 0xff).wrapping_mul(0x0100_0000_01b3);
            self
        }
        fn int(&mut self, v: i64) -> &mut Self {
            self.bytes(&v.to_le_bytes())
        }
        fn opt(&mut self, v: Option<i64>) -> &mut Self {
            match v {
                Some(v) => self.bytes(&[1]).int(v),
                None => self.bytes(&[0]),
            }
        }
        /// Folded to 32 bits, never 0 (0 means "not known").
        fn finish(&self) -> u32 {
            ((self.0 >> 32) as u32 ^ self.0 as u32).max(1)
        }
    }

    pub(super) fn submission(j: &JobSubmitted) -> u32 {
        let mut h = Fnv::new();
        h.bytes(j.job_id.as_bytes())
            .int(j.submitted_at)
            .bytes(j.compute_environment.as_bytes())
            .bytes(j.job_type.as_bytes())
            .bytes(j.project.as_bytes())
            .bytes(j.user.as_bytes())
            .int(i64::from(j.priority))
            .int(j.vcpus.to_bits() as i64)
            .int(j.memory_mib)
            .int(i64::from(j.gpus))
            .opt(j.estimated_runtime_s)
            .opt(j.budget_usd.map(|u| u.to_bits() as i64))
            .opt(j.deadline)
            .bytes(&[u8::from(j.elasticity)]);
        h.finish()
    }

    /// The status as its `Debug` form, the bytes fingerprints have always
    /// hashed, without formatting a string per completion.
    fn status_name(s: JobStatus) -> &'static str {
        match s {
            JobStatus::Succeeded => "Succeeded",
            JobStatus::Failed => "Failed",
            JobStatus::Preempted => "Preempted",
            JobStatus::Cancelled => "Cancelled",
        }
    }

    #[test]
    fn status_names_are_the_debug_forms() {
        for s in [
            JobStatus::Succeeded,
            JobStatus::Failed,
            JobStatus::Preempted,
            JobStatus::Cancelled,
        ] {
            assert_eq!(status_name(s), format!("{s:?}"));
        }
    }

    pub(super) fn completion(c: &JobCompleted) -> u32 {
        let mut h = Fnv::new();
        h.bytes(c.job_id.as_bytes())
            .bytes(c.compute_environment.as_bytes())
            .int(c.started_at)
            .int(c.finished_at)
            .bytes(status_name(c.status).as_bytes())
            .bytes(c.instance_type.as_deref().unwrap_or("\0").as_bytes())
            .bytes(c.market.map_or("", |m| m.as_str()).as_bytes())
            .bytes(c.region.as_deref().unwrap_or("\0").as_bytes())
            .int(c.vcpu_seconds.to_bits() as i64)
            .opt(c.max_memory_mib);
        h.finish()
    }
}

/// Batch helper: the closed demand series of a whole event list, flushed to
/// its end. Used by training and evaluation, which see files, not streams.
pub fn demand_series(events: &[Event], cfg: &StateConfig) -> Vec<Series> {
    let mut st = DemandState::new(cfg.clone());
    let mut ticks = Vec::new();
    for ev in events {
        st.apply(ev, &mut ticks);
        ticks.clear();
    }
    st.flush(&mut ticks);
    st.series
}

/// Per-environment totals of [`demand_series`], sorted by environment:
/// (environment, start, vCPU values).
pub fn environment_vcpu_series(
    series: &[Series],
    bucket_ms: i64,
) -> Vec<(String, Millis, Vec<f64>)> {
    let mut by_env: BTreeMap<&str, (Millis, Vec<f64>)> = BTreeMap::new();
    for s in series {
        let e = by_env
            .entry(&s.compute_environment)
            .or_insert((s.start, Vec::new()));
        // Series of one environment share their end; align on it.
        let end_e = e.0 + e.1.len() as i64 * bucket_ms;
        let end_s = s.start + s.values.len() as i64 * bucket_ms;
        debug_assert!(e.1.is_empty() || end_e == end_s);
        if s.values.len() > e.1.len() {
            let mut v = vec![0.0; s.values.len() - e.1.len()];
            v.extend_from_slice(&e.1);
            e.1 = v;
            e.0 = s.start;
        }
        let off = e.1.len() - s.values.len();
        for (o, v) in e.1[off..].iter_mut().zip(&s.values) {
            *o += v[VCPU];
        }
    }
    by_env
        .into_iter()
        .map(|(k, (s, v))| (k.to_string(), s, v))
        .collect()
}

/// Serialise string-keyed hash maps as sorted pairs, so snapshots are
/// deterministic and JSON-friendly.
mod map_as_vec {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::HashMap;
    use std::hash::{BuildHasher, Hash};

    pub fn serialize<K, V, H, S>(m: &HashMap<K, V, H>, s: S) -> Result<S::Ok, S::Error>
    where
        K: Serialize + AsRef<str>,
        V: Serialize,
        S: Serializer,
    {
        sorted(m.iter()).serialize(s)
    }

    /// Key-value pairs with unique string keys, in key order, as a sequence
    /// of pairs. This runs at every checkpoint over every job the state
    /// remembers, and comparing whole strings was most of a checkpoint: sort
    /// by the first 16 bytes as one integer (zero-padded, so the same order)
    /// and compare the rest only on a tie. Keys are unique, so the unstable
    /// sort gives the one order.
    pub fn sorted<K, V>(pairs: impl Iterator<Item = (K, V)>) -> impl Serialize
    where
        K: Serialize + AsRef<str>,
        V: Serialize,
    {
        let mut v: Vec<(u128, K, V)> = pairs.map(|(k, v)| (prefix(k.as_ref()), k, v)).collect();
        v.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.as_ref().cmp(b.1.as_ref())));
        Sorted(v)
    }

    struct Sorted<K, V>(Vec<(u128, K, V)>);

    impl<K: Serialize, V: Serialize> Serialize for Sorted<K, V> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(self.0.iter().map(|(_, k, v)| (k, v)))
        }
    }

    fn prefix(s: &str) -> u128 {
        let mut b = [0u8; 16];
        let n = s.len().min(16);
        b[..n].copy_from_slice(&s.as_bytes()[..n]);
        u128::from_be_bytes(b)
    }

    pub fn deserialize<'de, K, V, H, D>(d: D) -> Result<HashMap<K, V, H>, D::Error>
    where
        K: Deserialize<'de> + Eq + Hash,
        V: Deserialize<'de>,
        H: BuildHasher + Default,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) mod tests_support {
    pub(crate) use super::tests::{done, job};

    /// A spot price tick of `m5.large` in `us-east-1` (the engine's and the
    /// planner's tests decide over it).
    pub(crate) fn price(at: crate::events::Millis, usd: f64) -> crate::events::Event {
        crate::events::Event::PriceTick(crate::events::PriceTick {
            at,
            provider: "aws".into(),
            region: "us-east-1".into(),
            zone: None,
            instance_type: "m5.large".into(),
            market: crate::events::Market::Spot,
            usd_per_hour: usd,
        })
    }
}
