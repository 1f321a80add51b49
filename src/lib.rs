//! prescale: forecasts batch demand from scheduler events and decides, ahead of
//! need, the cheapest capacity that keeps deadlines and budgets.
//!
//! The pure decision core (`events`, `state`, `forecast`, `pricing`,
//! `policy`, `budget`, `engine`, `planner`) does no I/O, so the live service
//! and the backtest (`sim`) run exactly the same code. Adapters (`import`,
//! `io`, `store`, `telemetry`, `api`, `checkpoint`) sit around it, and
//! `wiring` builds engines from configuration. `tests/layers.rs` holds the
//! layers (docs/architecture.md).

pub mod api;
pub mod budget;
pub mod checkpoint;
pub mod engine;
pub mod events;
pub mod forecast;
pub mod import;
pub mod io;
pub mod limits;
pub mod model_file;
pub mod planner;
pub mod policy;
pub mod pricing;
pub mod report;
pub mod sim;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod wiring;
