//! Decoding input messages, on threads of their own when the machine has
//! cores to spare.
//!
//! Why: once the engine had a thread of its own (`worker`), the loop's
//! thread became the service's bound, and decoding (the Avro value and the
//! producer-sequence header) was about a quarter of that thread's time
//! (`prescale bench kafka`, docs/service.md). The loop takes a batch of
//! messages from one partition queue, they are decoded in parallel, and the
//! loop feeds them to the merge in their order, so order, offsets and dead
//! letters are exactly as when decoded one by one on the loop.
//!
//! On a small machine extra threads only take time from the loop, the
//! engine and librdkafka (and on the benchmark's 2 cores, the broker), so
//! by default there are none below [`SPARE_CORES`] + 1 cores.

use super::KafkaError;
use rayon::prelude::*;

/// Cores the service keeps busy without decode threads: the loop, the
/// engine, librdkafka's fetch threads, and one for the broker or the rest
/// of the machine.
pub const SPARE_CORES: usize = 4;

/// Decode threads when the configuration names none: one per core beyond
/// [`SPARE_CORES`], at most four (the loop cannot feed more).
pub fn auto_threads(cores: usize) -> usize {
    cores.saturating_sub(SPARE_CORES).min(4)
}

/// Batches shorter than this are decoded on the calling thread: handing a
/// few messages over costs more than it saves.
const MIN_PARALLEL: usize = 64;

/// Messages per unit of work handed to a decode thread.
const CHUNK: usize = 32;

/// The decode threads of one service loop (none: decode on the loop).
pub struct Decoders {
    pool: Option<rayon::ThreadPool>,
}

impl Decoders {
    /// `n` threads (0: none; see [`super::KafkaConfig::decode_threads`]).
    pub fn new(n: usize) -> Result<Self, KafkaError> {
        let pool = match n {
            0 => None,
            n => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("prescale-decode-{i}"))
                    .build()
                    .map_err(|e| KafkaError::Engine(format!("starting decode threads: {e}")))?,
            ),
        };
        Ok(Self { pool })
    }

    /// Decode threads running (0: decoding happens on the caller's thread).
    pub fn threads(&self) -> usize {
        self.pool
            .as_ref()
            .map_or(0, rayon::ThreadPool::current_num_threads)
    }

    /// `f` over `items`, results in the items' order: on the decode threads
    /// for a batch worth it, else here.
    pub fn map<T: Sync, R: Send>(&self, items: &[T], f: impl Fn(&T) -> R + Sync + Send) -> Vec<R> {
        match &self.pool {
            Some(pool) if items.len() >= MIN_PARALLEL => {
                pool.install(|| items.par_iter().with_min_len(CHUNK).map(f).collect())
            }
            _ => items.iter().map(f).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_threads_on_small_machines_and_a_few_on_large_ones() {
        assert_eq!(auto_threads(1), 0);
        assert_eq!(auto_threads(2), 0);
        assert_eq!(auto_threads(4), 0);
        assert_eq!(auto_threads(6), 2);
        assert_eq!(auto_threads(16), 4);
    }

    #[test]
    fn results_keep_the_items_order_with_and_without_threads() {
        let items: Vec<u64> = (0..1_000).collect();
        let want: Vec<u64> = items.iter().map(|x| x * 3).collect();
        for threads in [0, 1, 3] {
            let d = Decoders::new(threads).unwrap();
            assert_eq!(d.threads(), threads);
            assert_eq!(d.map(&items, |x| x * 3), want);
            assert_eq!(d.map(&items[..10], |x| x * 3), want[..10]);
        }
    }
}
