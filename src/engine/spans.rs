//! Span names and constructors for one decision tick, so the engine, the
//! Kafka service and the backtest emit the same trace shape:
//!
//! ```text
//! decision_tick {tick_at, compute_environment}
//!   ├── forecast
//!   ├── plan
//!   ├── budget
//!   └── publish
//! ```
//!
//! Spans are plain `tracing` spans; they become OpenTelemetry spans when
//! the telemetry adapter (`telemetry::init`) installed the OTLP layer, and
//! cost next to nothing otherwise. Creating a span is not I/O, so the
//! engine owns them; `telemetry::spans` re-exports them for the adapters.

use tracing::Span;

/// Root span of one decision tick.
pub const TICK: &str = "decision_tick";
/// Child span: forecasting demand.
pub const FORECAST: &str = "forecast";
/// Child span: cost-aware planning.
pub const PLAN: &str = "plan";
/// Child span: budget checks.
pub const BUDGET: &str = "budget";
/// Child span: publishing commands (Kafka or file) and store points.
pub const PUBLISH: &str = "publish";
/// Every span name of a tick, root first.
pub const ALL: [&str; 5] = [TICK, FORECAST, PLAN, BUDGET, PUBLISH];

/// The root span of a tick at event time `tick_at` (epoch ms). Pass `""` as
/// environment when one tick covers all environments.
pub fn tick(tick_at: i64, compute_environment: &str) -> Span {
    tracing::info_span!(
        "decision_tick",
        tick_at,
        compute_environment,
        commands = tracing::field::Empty
    )
}

/// `forecast` child span of the current span; `series` = number of series forecast.
pub fn forecast(series: usize) -> Span {
    tracing::info_span!("forecast", series = series as i64)
}

/// `plan` child span of the current span.
pub fn plan() -> Span {
    tracing::info_span!("plan")
}

/// `budget` child span of the current span.
pub fn budget() -> Span {
    tracing::info_span!("budget")
}

/// `publish` child span of the current span; `commands` = commands published.
pub fn publish(commands: usize) -> Span {
    tracing::info_span!("publish", commands = commands as i64)
}

/// Record how many commands a tick produced on its root span.
pub fn record_commands(tick_span: &Span, commands: usize) {
    // i64, not usize: OpenTelemetry has no unsigned type and would export a string.
    tick_span.record("commands", commands as i64);
}
