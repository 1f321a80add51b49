//! Project and user budgets across instances: one owner per budget account
//! splits it between the compute environments that spend it.
//!
//! With several `prescale run` instances in a group, a project's (or a
//! user's) jobs run in
//! environments owned by different instances, and each instance's ledger sees
//! only its own share of the spend. Letting every instance enforce the whole
//! allocation would let N instances spend it N times. Instead, spend is
//! re-keyed by project on an internal topic:
//!
//! Below, "project" stands for either: records name the account
//! (`project:climate`, `user:alice`).
//!
//! 1. each instance reports, per (account, environment) it owns, what the
//!    environment has used (spent + committed in the current window) and
//!    what it still wants (expected cost of held work) — a [`Usage`] record
//!    keyed by project, so it reaches the project's owner;
//! 2. the owner [`split`]s the allocation: each environment keeps what it has
//!    used, and what is left is shared in proportion to what they want — a
//!    [`Share`] record per environment, keyed by environment, so it reaches
//!    the environment's owner;
//! 3. the environment's owner enforces its shares (QUEUE / PREEMPT / RESUME,
//!    by priority) with its own ledger, which knows the jobs.
//!
//! Shares never add up to more than the allocation, and a share is only
//! lowered *before* the dollars it frees are granted elsewhere: every usage
//! report says which share (by sequence number) the environment holds, and
//! the owner counts an environment at the highest share it may hold — the
//! one it acknowledged or any sent since — until it acknowledges a lower
//! one. So, however late records travel, the shares environments hold never
//! add up to more than the budget. Records are "latest wins" per (account,
//! environment); the topic is re-read from its beginning on every
//! assignment, so no offsets need checkpointing.
//!
//! Pure: no I/O; the service moves the records.

use crate::events::Millis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What one environment has used of a project's budget, as its owner sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// The budget account, `project:<id>` or `user:<id>`.
    pub account: String,
    pub environment: String,
    /// Start of the budget window the figures belong to (event time).
    pub window_start: Millis,
    /// Spent plus committed (expected cost of admitted work) in the window.
    pub used_usd: f64,
    /// Expected cost of the project's held (queued or preempted) work here.
    pub wanted_usd: f64,
    /// The share this environment holds (what it enforces), and its
    /// sequence number: the acknowledgement the owner waits for before it
    /// grants elsewhere what a lower share frees. 0 and 0 before any.
    #[serde(default)]
    pub held_usd: f64,
    #[serde(default)]
    pub held_seq: u64,
    pub at: Millis,
}

/// The part of a project's budget one environment may use in the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Share {
    /// The budget account, `project:<id>` or `user:<id>`.
    pub account: String,
    pub environment: String,
    pub window_start: Millis,
    pub usd: f64,
    /// Increasing per owner and across owners (the owner's wall clock, in
    /// ms, or one more than the last): an environment ignores a share older
    /// than the one it holds.
    pub seq: u64,
    pub at: Millis,
}

/// A record of the internal topic (JSON, tagged by `type`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum SpendRecord {
    Usage(Usage),
    Share(Share),
}

impl SpendRecord {
    /// The Kafka key: usage travels to the project's owner, shares to the
    /// environment's owner.
    pub fn key(&self) -> &str {
        match self {
            SpendRecord::Usage(u) => &u.account,
            SpendRecord::Share(s) => &s.environment,
        }
    }
}

/// Split `allocated` between the environments that reported usage in the
/// same window: each keeps what it has used, and the rest (if any) goes in
/// proportion to what each wants (equally when nobody wants anything). When
/// usage already exceeds the allocation, each environment's share is cut in
/// proportion to its usage, so the sum is exactly the allocation and owners
/// preempt to fit.
pub fn split(allocated: f64, usages: &BTreeMap<String, Usage>) -> BTreeMap<String, f64> {
    let allocated = allocated.max(0.0);
    let used: f64 = usages.values().map(|u| u.used_usd.max(0.0)).sum();
    let n = usages.len() as f64;
    if used > allocated {
        return usages
            .iter()
            .map(|(e, u)| (e.clone(), allocated * u.used_usd.max(0.0) / used))
            .collect();
    }
    let left = allocated - used;
    let wanted: f64 = usages.values().map(|u| u.wanted_usd.max(0.0)).sum();
    usages
        .iter()
        .map(|(e, u)| {
            let w = if wanted > 0.0 {
                u.wanted_usd.max(0.0) / wanted
            } else {
                1.0 / n
            };
            (e.clone(), u.used_usd.max(0.0) + left * w)
        })
        .collect()
}

/// The owner's side: the latest usage per (account, environment), and the
/// shares sent but not yet acknowledged.
#[derive(Debug, Clone, Default)]
pub struct Owner {
    usages: BTreeMap<String, BTreeMap<String, Usage>>,
    /// Per (account, environment): shares sent whose acknowledgement has not
    /// come back yet, as (seq, usd).
    unacked: BTreeMap<(String, String), Vec<(u64, f64)>>,
    last_seq: u64,
    changed: std::collections::BTreeSet<String>,
}

impl Owner {
    /// Accounts with usage reported since the last [`Self::shares`]: the
    /// ones it will ask the allocation of.
    pub fn changed(&self) -> impl Iterator<Item = &str> {
        self.changed.iter().map(String::as_str)
    }

    /// Take a usage report; a report from an older window than the latest
    /// one seen for the account replaces nothing.
    pub fn on_usage(&mut self, u: Usage) {
        let per_env = self.usages.entry(u.account.clone()).or_default();
        let newest = per_env.values().map(|x| x.window_start).max();
        if newest.is_some_and(|w| u.window_start < w) {
            return;
        }
        if newest.is_some_and(|w| u.window_start > w) {
            // A new window: last window's figures no longer count.
            per_env.clear();
        }
        self.last_seq = self.last_seq.max(u.held_seq);
        if let Some(v) = self
            .unacked
            .get_mut(&(u.account.clone(), u.environment.clone()))
        {
            v.retain(|&(seq, _)| seq > u.held_seq);
        }
        self.changed.insert(u.account.clone());
        per_env.insert(u.environment.clone(), u);
    }

    /// The most an environment may hold or use right now.
    fn exposure(&self, account: &str, u: &Usage) -> f64 {
        let pending = self
            .unacked
            .get(&(account.to_string(), u.environment.clone()))
            .into_iter()
            .flatten()
            .map(|&(_, usd)| usd)
            .fold(0.0, f64::max);
        u.used_usd.max(u.held_usd).max(pending).max(0.0)
    }

    /// Shares to publish for accounts whose usage changed, given each
    /// account's allocation (`None`: no budget known, nothing to split).
    /// `clock` is the owner's wall clock in ms (share sequence numbers).
    ///
    /// Each environment is moved towards its [`split`] target: a lower
    /// target is sent at once, but what it frees is granted to others only
    /// once the environment acknowledges it; a higher target is granted out
    /// of what no environment may hold, in proportion to what each lacks.
    pub fn shares(&mut self, allocation: impl Fn(&str) -> Option<f64>, clock: u64) -> Vec<Share> {
        let mut out = Vec::new();
        for account in std::mem::take(&mut self.changed) {
            let (Some(per_env), Some(alloc)) = (self.usages.get(&account), allocation(&account))
            else {
                continue;
            };
            let window_start = per_env.values().map(|u| u.window_start).max().unwrap_or(0);
            let exposure: BTreeMap<&str, f64> = per_env
                .iter()
                .map(|(e, u)| (e.as_str(), self.exposure(&account, u)))
                .collect();
            let slack = (alloc.max(0.0) - exposure.values().sum::<f64>()).max(0.0);
            let target = split(alloc, per_env);
            let lack: f64 = target
                .iter()
                .map(|(e, t)| (t - exposure[e.as_str()]).max(0.0))
                .sum();
            let grant = if lack > 0.0 {
                (slack / lack).min(1.0)
            } else {
                0.0
            };
            let mut sends = Vec::new();
            for (env, t) in &target {
                let (x, held) = (exposure[env.as_str()], per_env[env].held_usd);
                let usd = if *t > x { x + (t - x) * grant } else { *t };
                let last = self
                    .unacked
                    .get(&(account.clone(), env.clone()))
                    .and_then(|v| v.last())
                    .map_or(held, |&(_, u)| u);
                if (usd - last).abs() > 1e-6 {
                    sends.push((env.clone(), usd));
                }
            }
            for (env, usd) in sends {
                self.last_seq = (self.last_seq + 1).max(clock);
                let seq = self.last_seq;
                self.unacked
                    .entry((account.clone(), env.clone()))
                    .or_default()
                    .push((seq, usd));
                out.push(Share {
                    account: account.clone(),
                    environment: env,
                    window_start,
                    usd,
                    seq,
                    at: clock as Millis,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(env: &str, used: f64, wanted: f64) -> Usage {
        Usage {
            account: "project:p".into(),
            environment: env.into(),
            window_start: 0,
            used_usd: used,
            wanted_usd: wanted,
            held_usd: 0.0,
            held_seq: 0,
            at: 0,
        }
    }

    fn map(us: &[Usage]) -> BTreeMap<String, Usage> {
        us.iter()
            .map(|x| (x.environment.clone(), x.clone()))
            .collect()
    }

    #[test]
    fn shares_keep_usage_and_split_the_rest_by_want() {
        let s = split(100.0, &map(&[u("a", 30.0, 10.0), u("b", 10.0, 30.0)]));
        assert!((s["a"] - 45.0).abs() < 1e-9, "{s:?}");
        assert!((s["b"] - 55.0).abs() < 1e-9, "{s:?}");
        let s = split(100.0, &map(&[u("a", 30.0, 0.0), u("b", 10.0, 0.0)]));
        assert!((s["a"] - 60.0).abs() < 1e-9 && (s["b"] - 40.0).abs() < 1e-9);
    }

    #[test]
    fn shares_never_sum_above_the_allocation() {
        for (a, b, wa, wb) in [
            (0.0, 0.0, 0.0, 0.0),
            (80.0, 50.0, 5.0, 0.0),
            (5.0, 1.0, 9.0, 2.0),
        ] {
            let s = split(100.0, &map(&[u("a", a, wa), u("b", b, wb)]));
            let sum: f64 = s.values().sum();
            assert!((sum - 100.0).abs() < 1e-9, "{s:?}");
        }
        // Over-used: cut in proportion to use.
        let s = split(100.0, &map(&[u("a", 150.0, 0.0), u("b", 50.0, 0.0)]));
        assert!((s["a"] - 75.0).abs() < 1e-9 && (s["b"] - 25.0).abs() < 1e-9);
    }

    /// A lowered share frees nothing until its environment acknowledges
    /// it: only then does the owner grant the difference elsewhere.
    #[test]
    fn owner_grants_what_a_lower_share_frees_only_after_the_ack() {
        let mut o = Owner::default();
        let alloc = |_: &str| Some(100.0);
        o.on_usage(u("a", 10.0, 0.0));
        let s = o.shares(alloc, 1);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].environment.as_str(), s[0].usd), ("a", 100.0));
        let first = s[0].seq;
        // Same report, not yet acknowledged: nothing new to send.
        o.on_usage(u("a", 10.0, 0.0));
        assert!(o.shares(alloc, 2).is_empty());
        // b appears: a's target drops to 55 and b's is 45, but a may still
        // hold 100, so b gets nothing yet; a is sent 55.
        o.on_usage(u("b", 0.0, 0.0));
        let s = o.shares(alloc, 3);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!((s[0].environment.as_str(), s[0].usd), ("a", 55.0));
        assert!(s[0].seq > first);
        // a acknowledges 55: now b is granted its 45.
        let mut ack = u("a", 10.0, 0.0);
        ack.held_usd = 55.0;
        ack.held_seq = s[0].seq;
        o.on_usage(ack);
        let s = o.shares(alloc, 4);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!((s[0].environment.as_str(), s[0].usd), ("b", 45.0));
        // No budget known: nothing.
        o.on_usage(u("c", 1.0, 0.0));
        assert!(o.shares(|_| None, 5).is_empty());
    }

    #[test]
    fn owner_forgets_old_windows() {
        let mut o = Owner::default();
        o.on_usage(u("a", 10.0, 0.0));
        o.on_usage(u("b", 10.0, 0.0));
        let mut late = u("b", 99.0, 0.0);
        late.window_start = -1;
        o.on_usage(late);
        let s = o.shares(|_| Some(100.0), 1);
        assert_eq!(s.iter().map(|x| x.usd).sum::<f64>(), 100.0, "{s:?}");
        let mut next = u("a", 0.0, 0.0);
        next.window_start = 10;
        o.on_usage(next);
        // Only a reports in the new window; b may still hold its share.
        let s = o.shares(|_| Some(100.0), 2);
        assert!(s.iter().all(|x| x.environment == "a"), "{s:?}");
    }

    #[test]
    fn records_are_keyed_for_their_reader() {
        let r = SpendRecord::Usage(u("env-1", 1.0, 0.0));
        assert_eq!(r.key(), "project:p");
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<SpendRecord>(&json).unwrap(), r);
    }
}
