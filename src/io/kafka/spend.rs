//! The service's side of project budgets shared between instances: moves
//! [`crate::budget::share`] records over the internal `prescale.budget-spend`
//! topic, which the instances read as part of their consumer group.
//!
//! Usage records are keyed by budget account (`project:…`, `user:…`) and
//! shares by environment; with the
//! topic partitioned like the input topics and range assignment, partition
//! `k` of every group topic goes to the same instance, so a project's usage
//! reaches its owner and an environment's share reaches the instance that
//! owns that environment's jobs. The records are "latest wins", so the
//! topic is read from its beginning on every assignment and its offsets are
//! not checkpointed.

use super::publish::Publisher;
use super::worker::Worker;
use super::KafkaError;
use crate::budget::share::{Owner, Share, SpendRecord, Usage};
use crate::events::Millis;
use std::collections::BTreeMap;

/// A record of the internal topic that is not one (wrong JSON): the
/// caller dead-letters it. Retrying the same bytes fails the same way.
#[derive(Debug, thiserror::Error)]
#[error("budget-spend record: {0}")]
pub struct SpendError(#[from] serde_json::Error);

/// Per assignment: the usage this instance last reported, and the owner's
/// view of the projects whose partitions it holds.
#[derive(Default)]
pub struct Exchange {
    reported: BTreeMap<(String, String), (Millis, f64, f64, u64)>,
    owner: Owner,
}

impl Exchange {
    /// Take one record of the internal topic: a usage report is kept (as
    /// owner); a share is returned for the caller to grant to its brain. A
    /// record that is not one (wrong JSON) is an error naming what is
    /// wrong; the caller dead-letters it.
    pub fn on_record(&mut self, payload: &[u8]) -> Result<Option<Share>, SpendError> {
        let r: SpendRecord = serde_json::from_slice(payload)?;
        Ok(match r {
            SpendRecord::Usage(u) => {
                self.owner.on_usage(u);
                None
            }
            SpendRecord::Share(s) => Some(s),
        })
    }

    /// One exchange round (on the service's timer): report changed usage,
    /// and, as owner, publish the shares that changed. Asks the brain's
    /// [`BudgetShare`](super::port::BudgetShare) (one call, in its turn
    /// after the events already sent) for its usage and for the allocations
    /// of the accounts whose usage changed; a brain without budgets reports
    /// none. Returns how
    /// many records were sent.
    pub fn round(
        &mut self,
        worker: &mut Worker,
        publisher: &Publisher,
        topic: &str,
    ) -> Result<usize, KafkaError> {
        let accounts: Vec<String> = self.owner.changed().map(str::to_string).collect();
        let (usage, allocations) = worker.call(move |b| {
            let Some(b) = b.budgets() else {
                return (Vec::new(), BTreeMap::new());
            };
            let allocations: BTreeMap<String, Option<f64>> = accounts
                .into_iter()
                .map(|p| {
                    let v = b.allocation(&p);
                    (p, v)
                })
                .collect();
            (b.usage(), allocations)
        })?;
        let allocation = |p: &str| allocations.get(p).copied().flatten();
        let mut sent = 0;
        let mut now = 0;
        for u in usage {
            now = now.max(u.at);
            if self.changed(&u) {
                send(publisher, topic, &SpendRecord::Usage(u))?;
                sent += 1;
            }
        }
        let clock = chrono::Utc::now().timestamp_millis().max(0) as u64;
        for s in self.owner.shares(allocation, clock) {
            send(publisher, topic, &SpendRecord::Share(s))?;
            sent += 1;
        }
        Ok(sent)
    }

    fn changed(&mut self, u: &Usage) -> bool {
        let v = (u.window_start, u.used_usd, u.wanted_usd, u.held_seq);
        let k = (u.account.clone(), u.environment.clone());
        let same = self
            .reported
            .get(&k)
            .is_some_and(|o| o.0 == v.0 && (o.1 - v.1).abs() < 1e-6 && (o.2 - v.2).abs() < 1e-6);
        if !same {
            self.reported.insert(k, v);
        }
        !same
    }
}

fn send(publisher: &Publisher, topic: &str, r: &SpendRecord) -> Result<(), KafkaError> {
    let value = serde_json::to_vec(r).map_err(|e| KafkaError::Topic {
        topic: topic.to_string(),
        message: format!("encoding a budget-spend record: {e}"),
    })?;
    publisher.send(topic, r.key().as_bytes(), &value, &[], None)
}
