//! The service's counters, shared so a caller (metrics, the run report)
//! can read them live. The decision thread and the loop both write here;
//! neither imports the other for it.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Counters of one service run.
#[derive(Debug, Default)]
pub struct Stats {
    pub messages: AtomicU64,
    pub events: AtomicU64,
    pub dead_letters: AtomicU64,
    pub commands: AtomicU64,
    pub checkpoints: AtomicU64,
    pub rebalances: AtomicU64,
    /// Most messages the merge held at once (checked once per batch).
    pub merge_peak: AtomicU64,
    /// Input partitions (group topics) currently owned.
    pub assigned: AtomicU64,
}

/// Called on the decision thread after each batch of events is applied,
/// with the produce times (ms since the epoch) of those that carried one.
/// The benchmark measures produce→decided latency with it; the service
/// itself sets none.
pub type AppliedHook = Arc<dyn Fn(&[i64]) + Send + Sync>;
