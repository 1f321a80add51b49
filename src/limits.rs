//! Named limits on what prescale accepts from outside (trace files, price
//! histories, events, catalogues, checkpoints, flags, the HTTP API).
//!
//! Input is validated once, at the edge, against these physically sensible
//! ranges, so the core never walks an absurd time span, multiplies into an
//! overflow or forecasts from a poisoned model. Each limit says why it has
//! the value it has; a record outside one is an error naming the file, the
//! record and the field (or, with `--skip-bad`, a counted skip).

/// Epoch milliseconds, as `events::Millis` (spelled out here: the limits
/// sit below every other module and import none).
type Millis = i64;

/// Earliest accepted timestamp: 1970-01-01 (epoch ms). Traces whose logs use
/// a relative clock (SWF with no `UnixStartTime`) start here.
pub const MIN_TIME_MS: Millis = 0;
/// Latest accepted timestamp: 2200-01-01 (epoch ms). Far enough for any
/// deadline, near enough that every sum of two timestamps fits an `i64`.
pub const MAX_TIME_MS: Millis = 7_258_118_400_000;
/// Longest accepted duration of one job (run, wait or requested time): 10
/// years. The longest jobs in the Parallel Workloads Archive run weeks.
pub const MAX_DURATION_S: i64 = 10 * 365 * 86_400;
/// Most processors (vCPUs) one job may ask for when no catalogue bounds it:
/// ten million, beyond the largest machine ever listed in the Top500.
pub const MAX_JOB_VCPUS: i64 = 10_000_000;
/// Most memory one job may ask for, MiB (1 EiB): keeps `per-proc × procs`
/// inside an `i64` with room to spare.
pub const MAX_JOB_MEMORY_MIB: i64 = 1 << 40;
/// Most instances one job may span (a gang of equal parts, see
/// `sim::cluster::gang_parts`): a job larger than this many of the
/// catalogue's biggest machines cannot be assembled and is refused.
pub const MAX_GANG_INSTANCES: i64 = 4096;
/// Largest budget one allocation may carry, USD (a trillion): keeps sums
/// of allocations exact in an `f64` to the cent.
pub const MAX_BUDGET_USD: f64 = 1e12;
/// Largest sane hourly price of one instance, USD. The dearest EC2 types
/// list about $100/h; anything a thousand times that is a typo or an attack.
pub const MAX_PRICE_USD_PER_HOUR: f64 = 100_000.0;
/// Largest number of buckets a dense time axis may hold (state windows,
/// series, simulator samples): 4 Mi buckets = 38 years of 5-minute buckets,
/// 32 MiB per `f64` series. Beyond it the span is refused with an error that
/// names both ends, instead of allocating until the machine gives out.
pub const MAX_SPAN_BUCKETS: i64 = 1 << 22;
/// Smallest bucket width, ms (one second): finer buckets multiply memory and
/// work without a scheduler that reports at that resolution.
pub const MIN_BUCKET_MS: i64 = 1_000;
/// A forecast above this multiple of the series' recent maximum (or 1, for a
/// series of zeros) is clamped to it and counted: a trained model's output
/// is bounded near 20x its window mean (its training targets are clipped at
/// 20), so only a poisoned or broken model ever reaches 50x.
pub const FORECAST_MAX_MULTIPLE: f64 = 50.0;
/// Range of an LSTM checkpoint's calibration factors (training clamps them
/// to it; an edited checkpoint outside it is refused at load).
pub const CALIBRATION_RANGE: (f32, f32) = (0.05, 50.0);
/// Largest absolute weight of an LSTM checkpoint. Training with the default
/// settings keeps weights below 10; a weight of 1e4 saturates every unit and
/// only comes from corruption.
pub const MAX_ABS_WEIGHT: f32 = 1e4;
/// Largest LSTM dimensions a checkpoint may declare (window, hidden, head
/// hidden, horizon, season): keeps the shape products far from overflow and
/// a loaded model within memory.
pub const MAX_LSTM_DIM: usize = 1 << 16;
/// Longest name (instance type, zone, environment, job id) accepted, bytes:
/// real ones are under 64; a megabyte "name" is an attack on memory.
pub const MAX_NAME_LEN: usize = 256;

/// The most instances (or refused launches) one spot signal may stand for.
pub const MAX_SPOT_SIGNAL_COUNT: i32 = 1_000_000;
/// Longest value quoted in an error message, in characters; longer values
/// are cut and end in "…" (a 10 MB line is never echoed whole).
pub const MAX_QUOTED_CHARS: usize = 80;

/// A value for an error message: at most [`MAX_QUOTED_CHARS`] characters,
/// with "…" when cut.
pub fn quote(s: &str) -> String {
    let mut it = s.char_indices();
    match it.nth(MAX_QUOTED_CHARS) {
        None => s.to_string(),
        Some((at, _)) => format!("{}…", &s[..at]),
    }
}

/// Whether an epoch-ms timestamp is inside the accepted window.
pub fn time_ok(t: Millis) -> bool {
    (MIN_TIME_MS..=MAX_TIME_MS).contains(&t)
}

/// Why a span is too long for a dense time axis: `None` when `start..=end`
/// in `bucket_ms` buckets fits [`MAX_SPAN_BUCKETS`].
pub fn span_error(start: Millis, end: Millis, bucket_ms: i64) -> Option<String> {
    let buckets = (end as i128 - start as i128) / bucket_ms.max(1) as i128 + 1;
    (buckets > MAX_SPAN_BUCKETS as i128).then(|| {
        format!(
            "the data spans {buckets} buckets of {bucket_ms} ms (from {start} to {end} epoch ms), \
             more than the limit of {MAX_SPAN_BUCKETS}: check the timestamps or use wider buckets"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_cuts_long_values_on_a_char_boundary() {
        assert_eq!(quote("abc"), "abc");
        let long = "é".repeat(10_000_000 / 2);
        let q = quote(&long);
        assert_eq!(q.chars().count(), MAX_QUOTED_CHARS + 1);
        assert!(q.ends_with('…'));
        assert_eq!(quote(&"x".repeat(80)), "x".repeat(80));
    }

    #[test]
    fn span_limit() {
        assert!(span_error(0, 86_400_000 * 365, 300_000).is_none());
        assert!(span_error(0, MAX_TIME_MS, 1_000).is_some());
        assert!(span_error(i64::MIN, i64::MAX, 1).is_some());
    }
}
